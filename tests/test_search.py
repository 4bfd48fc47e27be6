"""Search spaces (ctjax/search.py): what they draw, what they refuse, and pruning
inside a two-process trial, where only process 0 talks to the study."""
import json
import math

import optuna
import pytest

import multiprocess_util
import run_util
from ctjax import search
from ctjax import sweeps
from ctjax.errors import UserError

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = {"optim.lr": search.log_uniform(1e-4, 1e-1),
         "optim.name": search.categorical(["adamw", "momentum"]),
         "optim.momentum": search.uniform(0.8, 0.99,
                                          when={"optim.name": "momentum"}),
         "model.hidden_sizes": search.categorical([8, 16]),
         "seed": search.integer(0, 6, step=2)}


def test_conditional_keys_are_drawn_only_when_their_condition_holds():
  space = search.Search(space=SPACE, objectives={"validation/accuracy": "max"},
                        sampler="random")
  space.check("test")
  study = optuna.create_study(sampler=space.make_sampler())
  drawn = [space.suggest(study.ask()) for _ in range(40)]
  for trial in drawn:
    assert ("optim.momentum" in trial) == (trial["optim.name"] == "momentum")
    assert 1e-4 <= trial["optim.lr"] <= 1e-1
    assert trial["seed"] in (0, 2, 4, 6)
    if "optim.momentum" in trial:
      assert 0.8 <= trial["optim.momentum"] <= 0.99
  assert {t["optim.name"] for t in drawn} == {"adamw", "momentum"}
  # Log-uniform: as many draws in each decade, not most in the top one.
  decades = [int(-math.log10(t["optim.lr"])) for t in drawn]
  assert min(decades.count(d) for d in (1, 2, 3)) >= 3


def test_a_grid_is_every_combination_in_order():
  grid = search.Search(space={"optim.lr": search.categorical([0.1, 0.01]),
                              "seed": search.integer(0, 2)},
                       objectives={"validation/loss": "min"}, sampler="grid")
  grid.check("test")
  assert grid.grid() == [{"optim.lr": lr, "seed": s}
                         for lr in (0.1, 0.01) for s in (0, 1, 2)]


@pytest.mark.parametrize("changes, message", [
    ({"sampler": "bayes"}, r"sampler='bayes': choose one of grid, random, tpe"),
    ({"pruner": "median", "objectives": {"validation/accuracy": "max",
                                          "train/examples_per_s": "max"}},
     r"pruner='median' with 2 objectives"),
    ({"objectives": {"accuracy": "max"}}, r"name metrics as SPLIT/NAME"),
    ({"objectives": {"validation/accuracy": "up"}}, r"'max' or 'min'"),
    ({"sampler": "grid"}, r"sampler='grid' and space\['optim.lr'\]"),
    ({"space": {"optim.momentum": search.uniform(0.8, 0.9, when={"optim.name": "sgd"}),
                "optim.name": search.categorical(["sgd"])}},
     r"space\['optim.momentum'\]: when=.*listed before it"),
    ({"space": {"optim.lr": search.log_uniform(0, 1)}}, r"low > 0 \(log\)"),
])
def test_search_mistakes_are_named(changes, message):
  options = dict(space=SPACE, objectives={"validation/accuracy": "max"})
  options.update(changes)
  with pytest.raises(UserError, match=message):
    search.Search(**options).check("--sweep tune")


def test_a_space_key_the_config_lacks_stops_loading(tmp_path):
  path = tmp_path / "c.py"
  path.write_text(
      "from ml_collections import ConfigDict\nfrom ctjax import search\n"
      "def get_config(arg=None):\n"
      "  return ConfigDict(dict(model=dict(name='mlp', num_classes=10), seed=0))\n"
      "def get_sweeps(arg=None):\n"
      "  return {'tune': search.Search(space={'optim.lrr': search.uniform(0, 1)},"
      " objectives={'validation/accuracy': 'max'})}\n")
  with pytest.raises(UserError, match=r"--sweep tune, space .*optim.lrr"):
    sweeps.load(str(path), "tune")


def test_a_two_process_trial_is_pruned_at_one_step_by_process_0(tmp_path):
  """A study whose one finished trial had accuracy 1.0 at every evaluation: a
  median pruner stops the new trial at its first evaluation. The decision is
  process 0's, broadcast, so both processes stop at that step."""
  journal = str(tmp_path / "study.journal")
  storage = search.make_storage(journal, workers=1)
  study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
  distribution = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
  study.add_trial(optuna.trial.create_trial(
      params={"optim.lr": 0.1}, distributions={"optim.lr": distribution},
      value=1.0, intermediate_values={5: 1.0, 10: 1.0, 15: 1.0}))
  trial = study.ask({"optim.lr": distribution})
  config = run_util.write_config(tmp_path, dict(
      run_util.MLP_CONFIG, train_duration=20, eval_every=5, log_every=5,
      checkpoint={"every": 0, "keep": 1}))
  spec = {"storage": journal, "study": "s", "trial_id": trial._trial_id,  # pylint: disable=protected-access
          "pruner": "median", "pruner_options": {"n_startup_trials": 1},
          "metric": "validation/accuracy"}
  address = f"127.0.0.1:{multiprocess_util.free_port()}"
  runs = [run_util.start(config, tmp_path / "run", devices=4, extra_env={
      "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i), search.TRIAL_ENV: json.dumps(spec)})
          for i in range(2)]
  multiprocess_util.finish(runs)
  records = run_util.metrics(tmp_path / "run")
  assert [r["step"] for r in records if r.get(search.PRUNED_METRIC)] == [5]
  assert max(r["step"] for r in records) == 5  # Neither went on.
  assert run_util.checkpoint_steps(tmp_path / "run") == [5]
  accuracy = next(r["validation/accuracy"] for r in records
                  if "validation/accuracy" in r)
  reported = optuna.load_study(study_name="s", storage=storage).trials[1]
  assert reported.intermediate_values == {5: pytest.approx(accuracy)}


@pytest.mark.parametrize("sampler", ["random", "tpe", "cmaes", "nsga2"])
def test_each_sampler_draws_inside_the_space_and_ranks_by_the_directions(sampler):
  """Every sampler runs ask/tell as the driver does, with the study's directions
  from the objectives' "max"/"min": the best trial is the lowest loss, and for
  NSGA-II's two maximised objectives the Pareto front holds only trials no other
  trial beats on both."""
  objectives = ({"validation/accuracy": "max", "train/examples_per_s": "max"}
                if sampler == "nsga2" else {"validation/loss": "min"})
  space = search.Search(space={"optim.lr": search.log_uniform(1e-4, 1e-1),
                               "seed": search.integer(0, 9)},
                        objectives=objectives, sampler=sampler, seed=3)
  space.check("test")
  study = optuna.create_study(
      sampler=space.make_sampler(),
      directions=[search.DIRECTIONS[d] for d in objectives.values()])
  for _ in range(12):
    trial = study.ask()
    drawn = space.suggest(trial)
    assert 1e-4 <= drawn["optim.lr"] <= 1e-1 and 0 <= drawn["seed"] <= 9
    lr = drawn["optim.lr"]
    study.tell(trial, [-abs(math.log10(lr) + 2), 1 / lr]
               if sampler == "nsga2" else abs(math.log10(lr) + 2))
  if sampler == "nsga2":
    values = [t.values for t in study.trials]
    for best in study.best_trials:
      assert not any(v[0] > best.values[0] and v[1] > best.values[1]
                     for v in values)
  else:
    assert study.best_value == min(t.value for t in study.trials)
