"""The sweep's results table and plots (ctjax/sweep_report.py).

Trial folders are written by hand with known metrics.jsonl records, so every
expected number below is read off the records (no training): a finished trial
whose best evaluation is not its last, one whose best is, a pruned one that
stopped early after a diverged evaluation (NaN), one still running with no
evaluation yet, a failed one with an empty folder and a pending one without a
folder. Optuna's plots are drawn from real in-memory studies.
"""
import csv
import json
import math
import os
import warnings

import matplotlib
import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from PIL import Image
import pytest

from ctjax import sweep_report
from ctjax.errors import UserError

METRIC = "validation/accuracy"
NAN = float("nan")

# name -> (overrides, status, wall_s, records)
TRIALS = {
    "lr=0.01": ({"optim.lr": 0.01, "optim.name": "adam"}, "finished", 61.0, [
        {"step": 10, "train/loss": 0.9, "train/lr": 0.01},
        {"step": 20, "train/loss": 0.5, "train/lr": 0.01, "validation/loss": 0.4,
         METRIC: 0.9},
        {"step": 30, "train/loss": 0.3, "train/lr": 0.005},
        {"step": 40, "train/loss": 0.25, "train/lr": 0.0, "validation/loss": 0.45,
         METRIC: 0.85, "test/loss": 0.5, "test/accuracy": 0.84},
    ]),
    "lr=0.001": ({"optim.lr": 0.001, "optim.name": "sgd"}, "finished", 3725.0, [
        {"step": 20, "train/loss": 1.2, "validation/loss": 1.0, METRIC: 0.6},
        {"step": 40, "train/loss": 0.7, "validation/loss": 0.6, METRIC: 0.8,
         "test/loss": 0.65, "test/accuracy": 0.79},
    ]),
    "lr=0.1": ({"optim.lr": 0.1, "optim.name": "adam"}, "pruned", 9.5, [
        {"step": 10, "train/loss": 2.0, "validation/loss": 1.5, METRIC: 0.5},
        {"step": 20, "train/loss": NAN, "validation/loss": NAN, METRIC: NAN},
    ]),
    "lr=0.003": ({"optim.lr": 0.003, "optim.name": "sgd"}, "running", 4.0, [
        {"step": 10, "train/loss": 1.1},
    ]),
    "lr=1.0": ({"optim.lr": 1.0, "optim.name": "adam"}, "failed", 2.0, None),
    "lr=0.0001": ({"optim.lr": 0.0001, "optim.name": "sgd"}, "pending", None,
                  "no folder"),
}
# Read off the records above: (best, its step, the last step logged).
BEST = {"lr=0.01": (0.9, 20, 40), "lr=0.001": (0.8, 40, 40), "lr=0.1": (0.5, 10, 20)}
NO_METRIC = ["lr=0.003", "lr=1.0", "lr=0.0001"]  # in the order given to write()


def _write_trials(sweep_dir) -> list[dict]:
  trials = []
  for name, (overrides, status, wall_s, records) in TRIALS.items():
    run_dir = os.path.join(sweep_dir, "trials", name)
    if records != "no folder":
      os.makedirs(run_dir)
    if isinstance(records, list):
      with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    trials.append({"name": name, "overrides": overrides, "status": status,
                   "wall_s": wall_s, "number": None})
  return trials


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
  """A sweep folder after `write`: (folder, the paths write returned)."""
  sweep_dir = str(tmp_path_factory.mktemp("sweep"))
  paths = sweep_report.write(sweep_dir, _write_trials(sweep_dir), METRIC, "max")
  return sweep_dir, paths


def _read_csv(path) -> tuple[list[str], list[dict]]:
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


def _markdown_trial_order(path) -> list[str]:
  """The trial names of the table's rows (the last column, in backticks)."""
  with open(path) as f:
    return [line.rsplit("|", 2)[-2].strip().strip("`") for line in f
            if line.startswith("| ") and not line.startswith("| #")]


def _check_png(path) -> None:
  """A PNG that PIL decodes, of a real figure's size, with something drawn."""
  assert os.path.getsize(path) > 5_000, path
  with Image.open(path) as image:
    assert image.format == "PNG"
    pixels = np.asarray(image.convert("L"))
  assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400, (path, pixels.shape)
  # Axes, text and points, not a blank canvas.
  assert (pixels < 200).mean() > 0.01, path


def test_summarize_trial(tmp_path):
  _write_trials(tmp_path)
  for name, (best, best_step, steps) in BEST.items():
    summary = sweep_report.summarize_trial(tmp_path / "trials" / name, METRIC, "max")
    assert (summary["best"], summary["best_step"], summary["steps"]) == (
        best, best_step, steps), name
  finished = sweep_report.summarize_trial(tmp_path / "trials" / "lr=0.01", METRIC,
                                          "max")
  # The last value of each metric; train/* statistics other than the loss are
  # not results (train/lr is left out).
  assert finished["final"] == {"train/loss": 0.25, "validation/loss": 0.45,
                               METRIC: 0.85, "test/loss": 0.5, "test/accuracy": 0.84}
  pruned = sweep_report.summarize_trial(tmp_path / "trials" / "lr=0.1", METRIC, "max")
  assert math.isnan(pruned["final"][METRIC])  # Its last evaluation diverged.
  lowest = sweep_report.summarize_trial(tmp_path / "trials" / "lr=0.01",
                                        "validation/loss", "min")
  assert (lowest["best"], lowest["best_step"]) == (0.4, 20)
  for name in NO_METRIC:
    summary = sweep_report.summarize_trial(tmp_path / "trials" / name, METRIC, "max")
    assert summary["best"] is None and summary["best_step"] is None
  assert sweep_report.summarize_trial(tmp_path / "trials" / "lr=1.0", METRIC,
                                      "max") == {"best": None, "best_step": None,
                                                 "final": {}, "steps": None}
  with pytest.raises(UserError, match="direction 'up'"):
    sweep_report.summarize_trial(tmp_path, METRIC, "up")


def test_results_csv(sweep):
  sweep_dir, paths = sweep
  assert paths[:2] == [os.path.join(sweep_dir, "results.md"),
                       os.path.join(sweep_dir, "results.csv")]
  columns, rows = _read_csv(os.path.join(sweep_dir, "results.csv"))
  finals = ["validation/accuracy", "test/accuracy", "train/loss", "validation/loss",
            "test/loss"]
  assert columns == (["rank", "trial", "optim.lr", "optim.name", f"best {METRIC}",
                      "best step"] + [f"final {k}" for k in finals] +
                     ["steps", "wall_s", "status"])
  # Best first: 0.9 > 0.8 > 0.5, then the trials without the metric as given.
  assert [r["trial"] for r in rows] == ["lr=0.01", "lr=0.001", "lr=0.1", *NO_METRIC]
  assert [r["rank"] for r in rows] == ["1", "2", "3", "", "", ""]
  for row in rows:
    overrides, status, wall_s, _ = TRIALS[row["trial"]]
    assert float(row["optim.lr"]) == overrides["optim.lr"]
    assert row["optim.name"] == overrides["optim.name"]
    assert row["status"] == status
    assert row["wall_s"] == ("" if wall_s is None else repr(wall_s))
    if row["trial"] in BEST:
      best, best_step, steps = BEST[row["trial"]]
      # Floats are written in full (repr), so they read back exactly.
      assert (float(row[f"best {METRIC}"]), int(row["best step"]),
              int(row["steps"])) == (best, best_step, steps)
  by_name = {r["trial"]: r for r in rows}
  assert float(by_name["lr=0.01"][f"final {METRIC}"]) == 0.85
  assert float(by_name["lr=0.001"]["final test/accuracy"]) == 0.79
  assert math.isnan(float(by_name["lr=0.1"][f"final {METRIC}"]))
  assert by_name["lr=0.1"]["final test/accuracy"] == ""  # Pruned before the test.
  assert by_name["lr=0.003"]["final train/loss"] == "1.1"
  assert all(by_name["lr=1.0"][c] == "" for c in columns
             if c.startswith(("best", "final")) or c in ("steps", "rank"))


def test_results_markdown(sweep):
  sweep_dir, _ = sweep
  path = os.path.join(sweep_dir, "results.md")
  with open(path) as f:
    text = f.read()
  lines = text.splitlines()
  assert lines[0] == (f"# Sweep {os.path.basename(sweep_dir)}: {METRIC}, higher "
                      "is better")
  assert ("6 trials: 2 finished, 1 running, 1 pending, 1 pruned, 1 failed. Best: "
          f"`lr=0.01`, {METRIC} 0.9 at step 20.") in text
  assert _markdown_trial_order(path) == ["lr=0.01", "lr=0.001", "lr=0.1", *NO_METRIC]
  header = next(l for l in lines if l.startswith("| #"))
  best_row = next(l for l in lines if l.startswith("| 1 |"))
  cells = dict(zip((c.strip() for c in header.strip("|").split("|")),
                   (c.strip() for c in best_row.strip("|").split("|"))))
  assert cells == {"#": "1", "optim.lr": "0.01", "optim.name": "adam",
                   f"best {METRIC}": "0.9", "at step": "20",
                   f"final {METRIC}": "0.85", "final test/accuracy": "0.84",
                   "final train/loss": "0.25", "final validation/loss": "0.45",
                   "final test/loss": "0.5", "steps": "40", "wall": "1m01s",
                   "status": "finished", "trial": "`lr=0.01`"}
  assert "| 2 | 0.001 | sgd |" in text and "| 1h02m | finished |" in text
  # Every plot is shown by a relative link, so the folder can move.
  for name in ("metric_vs_optim.lr", "metric_vs_optim.name", "learning_curves"):
    assert f"![{name}.png](plots/{name}.png)" in text


def test_ascending_metric_order(tmp_path):
  """direction "min": the lowest validation/loss first (0.4 < 0.6 < 1.5)."""
  # Without overrides there are no metric_vs_<key> plots to draw: the order is
  # this test's subject.
  trials = [dict(t, overrides={}) for t in _write_trials(tmp_path)]
  sweep_report.write(str(tmp_path), trials, "validation/loss", "min")
  _, rows = _read_csv(tmp_path / "results.csv")
  assert [(r["trial"], r["best validation/loss"], r["best step"]) for r in rows[:3]] \
      == [("lr=0.01", "0.4", "20"), ("lr=0.001", "0.6", "40"), ("lr=0.1", "1.5", "10")]
  assert [r["trial"] for r in rows[3:]] == NO_METRIC
  assert _markdown_trial_order(tmp_path / "results.md") == [r["trial"] for r in rows]
  with open(tmp_path / "results.md") as f:
    assert f.readline().endswith("validation/loss, lower is better\n")


def test_plots(sweep):
  sweep_dir, paths = sweep
  plot_dir = os.path.join(sweep_dir, "plots")
  expected = [os.path.join(plot_dir, f"{name}.png") for name in
              ("metric_vs_optim.lr", "metric_vs_optim.name", "learning_curves")]
  assert paths[2:] == expected
  for path in expected:
    _check_png(path)
  # Written whole, then renamed: no temporary file is left behind.
  assert sorted(os.listdir(plot_dir)) == sorted(os.path.basename(p) for p in expected)


def test_plots_left_out_are_explained(tmp_path):
  """A key with one value is not plotted, nor is anything before any metric."""
  os.makedirs(tmp_path / "trials" / "a")
  trials = [{"name": "a", "overrides": {"seed": 0}, "status": "pending",
             "wall_s": None, "number": None}]
  paths = sweep_report.write(str(tmp_path), trials, METRIC, "max")
  assert paths == [str(tmp_path / "results.md"), str(tmp_path / "results.csv")]
  with open(tmp_path / "results.md") as f:
    text = f.read()
  assert "- metric_vs_seed.png: seed takes one value in every trial" in text
  assert "- learning_curves.png: no trial has logged metrics yet" in text


def _accuracy_study(values: list[float]) -> optuna.Study:
  study = optuna.create_study(direction="maximize")
  for i, value in enumerate(values):
    study.add_trial(optuna.trial.create_trial(
        params={"optim.lr": 10.0 ** -(1 + i % 3),
                "optim.name": ("adam", "sgd")[i % 2]},
        distributions={"optim.lr": FloatDistribution(1e-4, 1e-1, log=True),
                       "optim.name": CategoricalDistribution(["adam", "sgd"])},
        value=value))
  return study


def test_optuna_plots(tmp_path):
  style = dict(matplotlib.rcParams)
  # No trial folders: the plots of the trials are test_plots' subject.
  with warnings.catch_warnings():
    # Optuna's ExperimentalWarning about its own plots is not the user's concern.
    warnings.simplefilter("error")
    paths = sweep_report.write(str(tmp_path), [], METRIC, "max",
                               _accuracy_study([0.6, 0.9, 0.8, 0.7]))
  for name in ("optuna_history", "optuna_importance"):
    path = str(tmp_path / "plots" / f"{name}.png")
    assert path in paths
    _check_png(path)
  # Optuna switches pyplot to the ggplot style; that must not leak into the
  # process (every later figure would be grey).
  assert dict(matplotlib.rcParams) == style


def test_optuna_importance_needs_two_completed_trials(tmp_path):
  study = _accuracy_study([0.6])
  study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED,
                                            params={}, distributions={}))
  paths = sweep_report.write(str(tmp_path), [], METRIC, "max", study)
  _check_png(str(tmp_path / "plots" / "optuna_history.png"))
  assert not os.path.exists(tmp_path / "plots" / "optuna_importance.png")
  assert str(tmp_path / "plots" / "optuna_history.png") in paths
  with open(tmp_path / "results.md") as f:
    assert ("- optuna_importance.png: parameter importances need 2 completed "
            "trials or more; the study has 1") in f.read()


def test_optuna_importance_needs_a_varying_parameter(tmp_path):
  study = optuna.create_study(direction="maximize")
  for value in (0.6, 0.7):
    study.add_trial(optuna.trial.create_trial(
        params={"seed": 0}, distributions={"seed": CategoricalDistribution([0, 1])},
        value=value))
  sweep_report.write(str(tmp_path), [], METRIC, "max", study)
  assert not os.path.exists(tmp_path / "plots" / "optuna_importance.png")
  with open(tmp_path / "results.md") as f:
    assert ("- optuna_importance.png: no parameter takes more than one value "
            "among the completed trials") in f.read()


def test_optuna_warnings_become_notes(tmp_path):
  """Trials that all scored the same say nothing about importances: Optuna
  warns, and the reader of results.md sees it beside the plot."""
  sweep_report.write(str(tmp_path), [], METRIC, "max",
                     _accuracy_study([0.7, 0.7, 0.7]))
  _check_png(str(tmp_path / "plots" / "optuna_importance.png"))
  with open(tmp_path / "results.md") as f:
    assert ("- optuna_importance.png: warning: Target and region quantiles select "
            "the same set of trials.") in f.read()


def test_optuna_two_objectives(tmp_path, monkeypatch):
  """The Pareto front instead of the history, and one importance plot per
  objective, each measuring what reaches that objective's *best* values.

  The study is built so that the answer differs with the direction: the highest
  accuracies need optim.name "adam" (any lr), the lowest come with optim.lr
  0.001 (any name); latency, minimised, is the lr. Optuna's default evaluator
  (PED-ANOVA) takes lower targets as better, so a maximised objective must be
  negated; without it accuracy's most important parameter would be the lr.
  Both parameters are categorical: the top 10% of 40 trials are 4, and a density
  estimate of a continuous parameter from 4 points is peaked wherever they lie.
  """
  rng = np.random.default_rng(0)
  rates = (1e-3, 1e-2, 1e-1, 1.0)
  study = optuna.create_study(directions=["maximize", "minimize"])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    study.set_metric_names([METRIC, "latency"])
  for i in range(40):
    lr, name, u = rates[i % 4], ("adam", "sgd")[i // 4 % 2], rng.uniform()
    accuracy = (0.5 + 0.1 * u + 0.3 * (name == "adam" and u > 0.3)
                - 0.3 * (lr == 1e-3))
    study.add_trial(optuna.trial.create_trial(
        params={"optim.lr": lr, "optim.name": name},
        distributions={"optim.lr": CategoricalDistribution(rates),
                       "optim.name": CategoricalDistribution(["adam", "sgd"])},
        values=[accuracy, lr]))

  most_important = {}
  plot_param_importances = optuna.visualization.matplotlib.plot_param_importances

  def recording(study, *args, target=None, target_name="", **kwargs):
    importances = optuna.importance.get_param_importances(study, target=target)
    most_important[target_name] = max(importances, key=importances.get)
    return plot_param_importances(study, *args, target=target,
                                  target_name=target_name, **kwargs)

  monkeypatch.setattr(optuna.visualization.matplotlib, "plot_param_importances",
                      recording)
  paths = sweep_report.write(str(tmp_path), [], METRIC, "max", study)
  assert most_important == {METRIC: "optim.name", "latency": "optim.lr"}
  # The test can tell: accuracy's importance without the negation is lr's.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "PED-ANOVA takes low targets as better"
    unsigned = optuna.importance.get_param_importances(
        study, target=lambda t: t.values[0])
  assert max(unsigned, key=unsigned.get) == "optim.lr"
  expected = [str(tmp_path / "plots" / f"{name}.png") for name in
              ("optuna_pareto_front", "optuna_importance_validation-accuracy",
               "optuna_importance_latency")]
  assert paths[2:] == expected
  for path in expected:
    _check_png(path)
