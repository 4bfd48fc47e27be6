"""Population mode: trials trained in one compiled program equal their lone runs."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from sklearn import datasets

import run_util
import tolerances
from ctjax import config as config_lib
from ctjax import population
from ctjax import runs
from ctjax import sweeps
from ctjax import train
from ctjax.errors import UserError

STEPS = 8
# A regression MLP on scikit-learn's diabetes table (442 rows of 10 features),
# read from a CSV file so that the data fits a state (the features' means and
# standard deviations, WORKDIR/data_state.json): the smallest real model, whose
# evaluation draws one plot (of the training curves).
CONFIG = {
    "seed": 0, "task": "regression",
    "data": {"source": "csv", "label_column": "progression", "label_type": "number",
             "split_seed": 0, "split_fractions": {"train": 0.7, "validation": 0.3},
             "num_threads": 1, "prefetch": 2},
    "model": {"name": "mlp", "num_classes": 1, "hidden_sizes": (16,)},
    "batch_size": 32, "train_duration": STEPS, "log_every": 2,
    "final_eval_splits": ("validation",),
    "optim": {"lr": 3e-3, "weight_decay": 1e-4, "schedule": {"warmup": 2}},
    "checkpoint": {"every": 4, "keep": 3},
    "evaluators": ({"type": "metrics", "splits": ("validation",),
                    "predictions": False, "resamples": 0},),
}
# Every supported key varies; one trial has no weight decay, so that its lone
# run's optimizer state has no decay state while the population's has one.
TRIALS = [
    {"optim.lr": 1e-2, "seed": 0},
    {"optim.lr": 3e-3, "optim.weight_decay": 0.0, "seed": 1},
    {"optim.schedule.warmup": "5 steps", "seed": 2},
]
# Reorderable float32 terms on the path to the loss (tests/tolerances.py): a batch
# of 32, and per example forward the 10- and 16-input products, as many backward.
# The gradient norm adds a sum of the 193 parameters' squares; the validation
# metrics a sum over its 133 examples.
SUM_TERMS = 32 + 2 * (10 + 16)
NORM_TERMS = SUM_TERMS + 193
EVAL_TERMS = SUM_TERMS + 133


def _config(directory):
  """CONFIG, reading the diabetes table written as a CSV file in `directory`."""
  table = datasets.load_diabetes()
  path = directory / "diabetes.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*table.feature_names, "progression"])
    writer.writerows(np.column_stack([table.data, table.target]).tolist())
  config = {**CONFIG, "data": {**CONFIG["data"], "path": str(path)}}
  return config_lib.load_config(run_util.write_config(directory, config))


def _workdirs(root, trials=tuple(TRIALS)):
  return [str(root / sweeps.trial_name(trial)) for trial in trials]


def _train_parameters(records):
  """The records without the timings, which no two runs share."""
  return [{k: v for k, v in r.items() if not k.endswith("_per_s")} for r in records]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The population, and each of its trials trained alone."""
  root = tmp_path_factory.mktemp("population")
  config = _config(root)
  results = population.train_population(config, TRIALS, _workdirs(root / "population"))
  for trial, workdir in zip(TRIALS, _workdirs(root / "alone")):
    train.train(sweeps.apply(config, trial), workdir)
  return root, results


def test_each_trial_equals_its_lone_run(trained):
  root, results = trained
  for trial, together, alone in zip(TRIALS, _workdirs(root / "population"),
                                    _workdirs(root / "alone")):
    for name in ("config.json", "splits.json", "data_state.json",
                 runs.MODEL_INPUTS_FILE):
      with open(os.path.join(together, name)) as a:
        with open(os.path.join(alone, name)) as b:
          assert json.load(a) == json.load(b), (trial, name)
    # TensorBoard files where TensorFlow is installed, as the lone run has them.
    assert (os.path.isdir(os.path.join(together, "tensorboard")) ==
            os.path.isdir(os.path.join(alone, "tensorboard")))
    assert run_util.checkpoint_steps(together) == run_util.checkpoint_steps(alone) == [
        4, 8]
    # The same records, with the same keys, at the same steps.
    got, want = run_util.metrics(together), run_util.metrics(alone)
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    got, want = _train_parameters(got), _train_parameters(want)
    # vmap batches the trials' matrix products, which may sum in another order:
    # the loss and gradient norm of step k within k steps' rounding (bounds at
    # step 8: 5e-5 and 1e-4). Measured on a 2-core EPYC, with XLA's default, AVX2
    # and SSE4.2 code: the losses equal bit for bit, gradient norms within 1e-7,
    # the final states within 2.4e-7 of their scale.
    for key, terms in (("train/loss", SUM_TERMS), ("train/grad_norm", NORM_TERMS)):
      tolerances.assert_curves_close(
          {r["step"]: r[key] for r in got if key in r},
          {r["step"]: r[key] for r in want if key in r}, n=terms)
    assert [r.get("train/lr") for r in got] == [r.get("train/lr") for r in want]
    # Final metrics, returned and recorded, within the rounding of STEPS steps
    # and the evaluation's sums. (r2 is 1 - mse / the labels' variance: its
    # difference is relative to 1 - r2.)
    final = [r for r in got if "validation/loss" in r][-1]
    lone_final = [r for r in want if "validation/loss" in r][-1]
    assert results[TRIALS.index(trial)] == {k: v for k, v in final.items()
                                            if k.startswith("validation/")}
    rtol = tolerances.curve_rtol(STEPS, EVAL_TERMS)
    for metric in ("loss", "mse", "rmse", "mae"):
      np.testing.assert_allclose(final[f"validation/{metric}"],
                                 lone_final[f"validation/{metric}"], rtol=rtol)
    assert abs(final["validation/r2"] - lone_final["validation/r2"]) <= (
        rtol * (1 - lone_final["validation/r2"]))
    # Checkpoints in the lone run's format: the same tree, parameters and
    # optimizer state within STEPS steps' rounding.
    tolerances.assert_close_normwise(
        run_util.saved_state(together), run_util.saved_state(alone),
        tolerances.curve_rtol(STEPS, SUM_TERMS))


def test_trial_checkpoints_restore_as_a_lone_run(trained, tmp_path):
  """`ctjax eval`'s loader reads a trial, and `ctjax train` resumes one alone."""
  root, results = trained
  index = 1  # The trial without weight decay: its optimizer state was reshaped.
  together = _workdirs(root / "population")[index]
  _, _, params, step = runs.load_model(together)
  assert step == STEPS
  run_util.assert_trees_close(params, run_util.saved_state(together)["params"])
  copy = tmp_path / "resumed"
  shutil.copytree(together, copy)
  config = sweeps.apply(_config(tmp_path), TRIALS[index])
  # Finished: the lone run restores the last checkpoint and evaluates it again,
  # the same program on the same parameters.
  assert train.train(config, str(copy)) == results[index]


def _sigterm_at(stop_step):
  """The trainer's SIGTERM watch (train._Preemption), as if the signal came
  during step `stop_step`: the step is chosen, not left to the scheduler."""

  class Preemption:
    def reached(self, step, manager):
      del manager
      return step == stop_step

    def restore(self):
      pass

  return Preemption


def test_preempted_population_resumes_bit_for_bit(trained, tmp_path, monkeypatch):
  root, _ = trained
  config = _config(tmp_path)
  workdirs = _workdirs(tmp_path / "population")
  # Stopped at step 2, a log step between checkpoints: every trial saves it.
  monkeypatch.setattr(population, "_Preemption", _sigterm_at(2))
  assert population.train_population(config, TRIALS, workdirs) == [{}] * len(TRIALS)
  assert all(run_util.checkpoint_steps(w) == [2] for w in workdirs)
  monkeypatch.undo()
  population.train_population(config, TRIALS, workdirs)
  # The same work in the same order as the uninterrupted population.
  for resumed, whole in zip(workdirs, _workdirs(root / "population")):
    assert (_train_parameters(run_util.metrics(resumed)) ==
            _train_parameters(run_util.metrics(whole)))
    run_util.assert_trees_close(run_util.saved_state(resumed),
                                run_util.saved_state(whole))

  # Trials whose checkpoints are of different steps do not resume together.
  shutil.rmtree(os.path.join(workdirs[1], "checkpoints", str(STEPS)))
  with pytest.raises(UserError, match=r"resume from different steps \(.*: 8, .*: 4"):
    population.train_population(config, TRIALS, workdirs)


def test_a_diverging_trial_stops_alone(trained, tmp_path):
  """A trial whose gradient overflows stops as a lone run would; the others
  train on exactly as they did beside it (the same program: only a value differs)."""
  root, results = trained
  trials = [TRIALS[0], {**TRIALS[1], "optim.lr": 1e8}, TRIALS[2]]
  workdirs = _workdirs(tmp_path, trials)
  got = population.train_population(_config(tmp_path), trials, workdirs)
  assert got == [results[0], {}, results[2]]
  # Finite through step 2, not step 3: its records end at the last good log, and
  # no checkpoint (the first is due at step 4) holds a diverged state.
  assert [r["step"] for r in run_util.metrics(workdirs[1])] == [2]
  assert run_util.checkpoint_steps(workdirs[1]) == []
  for i in (0, 2):
    whole = _workdirs(root / "population")[i]
    assert (_train_parameters(run_util.metrics(workdirs[i])) ==
            _train_parameters(run_util.metrics(whole)))
    run_util.assert_trees_close(run_util.saved_state(workdirs[i]),
                                run_util.saved_state(whole))


@pytest.mark.parametrize("key, value", [("model.hidden_sizes", (8,)),
                                        ("model.dropout", 0.1),
                                        ("batch_size", 16)])
def test_trials_differing_in_other_keys_are_refused(tmp_path, key, value):
  trials = [{"optim.lr": 1e-3}, {"optim.lr": 1e-2, key: value}]
  with pytest.raises(UserError, match=(
      rf"population trial {sweeps.trial_name(trials[1])}: config\.{key}=.* differs "
      r".* only in optim\.lr, optim\.weight_decay, optim\.schedule\.warmup and seed")):
    population.train_population(_config(tmp_path), trials,
                                _workdirs(tmp_path, trials))
