"""Configs: typed config arguments, typed overrides, durations, and config.json.

These call ctjax.config directly; tests/test_cli.py checks the same mistakes end to
end through the `ctjax` command.
"""
import pytest

from ctjax import config as config_lib
from ctjax import durations
from ctjax.errors import UserError


def test_config_argument_values_take_the_type_of_their_default():
  arg = config_lib.parse_arg("size=small,debug=True,layers=4,lr=0.5",
                             size="base", debug=False, layers=2, lr=1e-3)
  assert arg.to_dict() == {"size": "small", "debug": True, "layers": 4, "lr": 0.5}
  assert [type(arg[k]) for k in ("size", "debug", "layers", "lr")] == [str, bool, int,
                                                                       float]


def test_config_argument_defaults_hold_for_keys_not_given():
  assert config_lib.parse_arg(None, steps=600).steps == 600
  assert config_lib.parse_arg("", steps=600).steps == 600
  assert config_lib.parse_arg("debug=false", debug=True).debug is False


@pytest.mark.parametrize("arg, named", [
    ("foo=1", "foo"),           # not a key of this config
    ("layers", "layers"),       # no value
    ("layers=four", "layers"),  # not an int
    ("debug=maybe", "debug"),   # not a bool
])
def test_bad_config_argument_is_an_error_naming_it(arg, named):
  with pytest.raises(UserError, match=named):
    config_lib.parse_arg(arg, layers=2, debug=False)


def _overridden(*overrides: str):
  config = config_lib.base_config()
  config.model = {"name": "cnn", "widths": (32, 64)}  # as an experiment would set it
  for override in overrides:
    config_lib.apply_override(config, override)
  return config


def test_override_takes_the_type_of_the_field_it_replaces():
  config = _overridden("optim.lr=1", "batch_size=32", "optim.nesterov=True",
                       "checkpoint.best_metric=validation/accuracy",
                       "eval_splits=('validation', 'test')", "model.widths=(16, 16)",
                       "model.norm_groups=4", "optim.clip_norm=0")
  assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
  assert config.batch_size == 32 and isinstance(config.batch_size, int)
  assert config.optim.nesterov is True
  assert config.checkpoint.best_metric == "validation/accuracy"
  assert config.eval_splits == ("validation", "test")
  assert config.optim.clip_norm == 0.0 and isinstance(config.optim.clip_norm, float)
  # Model fields are checked against the model later; their values parse as Python
  # literals: a tuple stays a tuple, an int an int.
  assert config.model.widths == (16, 16)
  assert config.model.norm_groups == 4


@pytest.mark.parametrize("override, named", [
    ("optim.lrr=1", "optim.lrr"),
    ("optimm.lr=1", "optimm"),
    ("batch_size=abc", "batch_size"),
    ("seed=1.5", "seed"),
    ("optim.nesterov=perhaps", "optim.nesterov"),
    ("optim=1", "optim"),
    ("batch_size", "batch_size"),
])
def test_bad_override_is_an_error_naming_the_key(override, named):
  with pytest.raises(UserError, match=named.replace(".", r"\.")):
    _overridden(override)


@pytest.mark.parametrize("text", ["3 epochs", "3", "1e4 examples", "250 steps"])
def test_duration_override_accepts_any_unit(text):
  config = _overridden(f"train_duration={text}")
  assert config.train_duration == text
  # ... and resolves to a whole number of steps.
  assert durations.to_steps(config.train_duration, key="train_duration",
                            global_batch_size=64, train_examples=1000) > 0


@pytest.mark.parametrize("value, steps", [
    (500, 500),
    ("500", 500),
    ("500 steps", 500),
    ("1 step", 1),
    ("3 epochs", 47),        # 3 * 1000 examples / 64 per step, rounded up
    ("0.5 epoch", 8),        # 500 / 64 = 7.8
    ("1000 examples", 16),   # 15.6
    ("64 examples", 1),
    ("1e6 examples", 15625),
    ("0 steps", 0),
])
def test_durations_convert_to_whole_steps(value, steps):
  assert durations.to_steps(value, key="train_duration", global_batch_size=64,
                            train_examples=1000) == steps


@pytest.mark.parametrize("value", ["3 weeks", "three epochs", "3 epochs extra", "",
                                   "-1 steps", True])
def test_bad_duration_is_an_error_naming_the_key(value):
  with pytest.raises(UserError, match=r"config\.log_every="):
    durations.to_steps(value, key="log_every", global_batch_size=64,
                       train_examples=1000)


def test_epochs_without_a_known_split_size_is_an_error():
  with pytest.raises(UserError, match=r"config\.train_duration=.*epochs need"):
    durations.to_steps("2 epochs", key="train_duration", global_batch_size=64,
                       train_examples=None)


def test_config_json_reloads_to_the_same_config():
  config = _overridden("optim.lr=0.01", "train_duration=3 epochs",
                       "eval_splits=('validation', 'test')")
  text = config_lib.to_json(config)
  reloaded = config_lib.from_json(text)
  assert config_lib.to_json(reloaded) == text
  # Outside config.model and config.data (whose values go to the model and the
  # source as they are), JSON's lists come back as the tuples they were, nested
  # ones included: sharding_rules is a tuple of (name, axis or tuple of axes).
  for key in config:
    if key not in config_lib.OPEN_KEYS:
      assert reloaded[key] == config[key], key
  assert reloaded.sharding_rules[0] == ("batch", ("data", "fsdp"))


def test_experiment_may_start_from_base_config_and_set_fields_one_by_one(tmp_path):
  """`c = base_config(); c.optim.lr = ...` loads to the config of the same
  experiment written as differences (`c.optim = dict(lr=...)`)."""
  header = ("from ml_collections import ConfigDict\n"
            "from ctjax.config import base_config\n\n\n"
            "def get_config(arg=None):\n")
  (tmp_path / "pieces.py").write_text(header + (
      "  c = base_config()\n"
      "  c.optim.lr = 0.5\n"
      "  c.optim.schedule.warmup = '3 steps'\n"
      "  c.model.name = 'cnn'\n"
      "  c.model.num_classes = 3\n"
      "  c.data.source = 'sklearn_datasets'\n"
      "  c.data.name = 'digits'\n"
      "  return c\n"))
  (tmp_path / "differences.py").write_text(header + (
      "  c = ConfigDict()\n"
      "  c.optim = dict(lr=0.5, schedule=dict(warmup='3 steps'))\n"
      "  c.model = dict(name='cnn', num_classes=3)\n"
      "  c.data = dict(source='sklearn_datasets', name='digits')\n"
      "  return c\n"))
  pieces = config_lib.load_config(str(tmp_path / "pieces.py"))
  assert pieces.optim.lr == 0.5 and pieces.optim.name == "adamw"
  assert pieces.data.num_threads == config_lib.base_config().data.num_threads
  assert (config_lib.to_json(pieces) ==
          config_lib.to_json(config_lib.load_config(str(tmp_path / "differences.py"))))
  # A typo is refused as in an experiment of differences.
  with (tmp_path / "pieces.py").open("a") as f:
    f.write("\n\ndef get_config(arg=None):\n  c = base_config()\n"
            "  c.optim.lrr = 0.5\n  return c\n")
  with pytest.raises(UserError, match=r"config\.optim\.lrr: unknown key"):
    config_lib.load_config(str(tmp_path / "pieces.py"))
