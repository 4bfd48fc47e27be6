"""Sweeps defined next to a config: the helpers, loading, and checking trials."""
import pytest

import run_util
from ctjax import config as config_lib
from ctjax import sweeps
from ctjax.errors import UserError

CONFIG = '''
from ml_collections import ConfigDict
from ctjax import sweeps


def get_config(arg=None):
  return ConfigDict(dict(model=dict(name="mlp", num_classes=10), seed=0))


def get_sweeps(arg=None):
  lr = sweeps.values("optim.lr", [1e-3, 3e-3])
  return {
      "lr_seed": sweeps.product(lr, sweeps.values("seed", [0, 1, 2])),
      "paired": sweeps.zip(lr, sweeps.values("model.hidden_sizes", [(8,), (16, 8)])),
      "typo": [{"optim.lrr": 0.1}],
      "wrong_type": [{"seed": "one"}],
      "twice": sweeps.chain(lr, lr),
      "schedule": [{"optim.schedule.name": "constant", "data.name": "digits"}],
  }
'''


def test_product_zip_and_chain_build_trials_in_order():
  lr, seed = sweeps.values("optim.lr", [1, 2]), sweeps.values("seed", [0, 1])
  assert sweeps.product(lr, seed) == [
      {"optim.lr": 1, "seed": 0}, {"optim.lr": 1, "seed": 1},
      {"optim.lr": 2, "seed": 0}, {"optim.lr": 2, "seed": 1}]
  assert sweeps.zip(lr, seed) == [{"optim.lr": 1, "seed": 0},
                                  {"optim.lr": 2, "seed": 1}]
  assert sweeps.chain(lr, seed) == lr + seed
  with pytest.raises(ValueError, match="lengths"):
    sweeps.zip(lr, sweeps.values("seed", [0]))
  with pytest.raises(ValueError, match="sets a key once"):
    sweeps.product(lr, sweeps.values("optim.lr", [3]))


def test_trial_names_show_the_overrides_and_are_safe_folder_names():
  trial = {"seed": 1, "optim.lr": 0.001, "model.widths": (16, 32),
           "optim.schedule.name": "warmup_cosine"}
  assert sweeps.trial_name(trial) == (
      "model.widths=_16,_32_,optim.lr=0.001,optim.schedule.name=warmup_cosine,seed=1")
  assert sweeps.trial_name({}) == "defaults"
  assert "/" not in sweeps.trial_name({"data.path": "/tmp/x.csv"})


def test_a_loaded_sweep_applies_to_the_config_as_the_command_line_does(tmp_path):
  path = tmp_path / "config.py"
  path.write_text(CONFIG)
  trials = sweeps.load(str(path), "lr_seed")
  assert len(trials) == 6 and trials[1] == {"optim.lr": 1e-3, "seed": 1}
  config = sweeps.apply(config_lib.load_config(str(path)), trials[5])
  assert config.optim.lr == 3e-3 and config.seed == 2
  # The same as `ctjax train --config.KEY=VALUE` for each of arguments(trial).
  overrides = [a.removeprefix("--config.") for a in sweeps.arguments(trials[5])]
  assert config == config_lib.load_config(str(path), overrides)
  paired = sweeps.load(str(path), "paired")
  assert sweeps.apply(config_lib.load_config(str(path)),
                      paired[1]).model.hidden_sizes == (16, 8)
  # Open subtrees (data, model) take new keys, as on the command line.
  assert sweeps.apply(config_lib.load_config(str(path)),
                      sweeps.load(str(path), "schedule")[0]).data.name == "digits"


@pytest.mark.parametrize("name, message", [
    ("typo", r"^--sweep typo, trial 0 \(optim.lrr=0.1\): --config.optim.lrr"),
    ("wrong_type", r"^--sweep wrong_type, trial 0 \(seed=one\): .*seed"),
    ("twice", r"^--sweep twice, trial 2 \(optim.lr=0.001\): the same overrides as "
              r"trial 0"),
    ("nothing", r"^--sweep nothing: .* has no sweep of that name; it has lr_seed"),
])
def test_a_bad_sweep_is_named_before_any_trial_runs(tmp_path, name, message):
  path = tmp_path / "config.py"
  path.write_text(CONFIG)
  with pytest.raises(UserError, match=message):
    sweeps.load(str(path), name)


def test_a_config_without_sweeps_says_how_to_add_them():
  with pytest.raises(UserError, match=r"defines no get_sweeps\(arg\); add "
                                      r"`def get_sweeps\(arg=None\):`"):
    sweeps.load(str(run_util.REPO / "configs" / "clinical_csv.py"), "lr")


def test_the_default_configs_sweeps_load_and_check():
  spec = str(run_util.REPO / "configs" / "default.py")
  assert [t["optim.lr"] for t in sweeps.load(spec, "lr")] == [1e-3, 3e-3, 1e-2]
  assert len(sweeps.load(spec, "lr_seed")) == 6
  assert sweeps.load(spec, "width")[0] == {"model.widths": (16, 32), "optim.lr": 3e-3}
