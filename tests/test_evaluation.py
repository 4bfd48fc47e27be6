"""Evaluation end to end: regression and multi-label runs, slices, the files a run
leaves in WORKDIR/eval/, each checked against scikit-learn on the run's own
exported predictions."""
import csv
import json
import math

import numpy as np
import pytest
from sklearn import datasets
from sklearn import metrics as skm

import run_util
import tolerances

# Predictions are written with 6 decimals and metrics come from float32 sums:
# scikit-learn on the exported predictions agrees to well within this.
EXPORT_RTOL = 1e-4


def _eval_files(workdir, split="test"):
  folder = workdir / "eval" / "final" / split
  summary = json.loads((folder / "metrics.json").read_text())
  predictions = [json.loads(line) for line in
                 (folder / "predictions.jsonl").read_text().splitlines()]
  return summary, predictions


def test_regression_trains_on_diabetes_and_reports_in_original_units(tmp_path):
  config = run_util.write_config(tmp_path, dict(
      task="regression", seed=0,
      data=dict(source="sklearn_datasets", name="diabetes", stratify=False,
                split_fractions={"train": 0.7, "validation": 0.15, "test": 0.15},
                num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=1, hidden_sizes=()),
      batch_size=16, train_duration="40 epochs", log_every=100, eval_every=0,
      optim=dict(lr=0.05, clip_norm=0.0, schedule=dict(name="constant")),
      checkpoint=dict(every=0)))
  run_util.train(config, tmp_path / "run", devices=2)
  logged = run_util.metrics(tmp_path / "run")[-1]
  summary, predictions = _eval_files(tmp_path / "run")
  labels = np.array([p["label"] for p in predictions])
  predicted = np.array([p["prediction"] for p in predictions]).reshape(labels.shape)
  # Original units: diabetes' targets are integers from 25 to 346 (standardised
  # in float32 and back: within float32 rounding of 346).
  assert labels.min() >= 25 and labels.max() <= 346 and len(labels) == 66
  assert np.abs(labels - np.round(labels)).max() < 1e-4
  for name, value in (("r2", skm.r2_score(labels, predicted)),
                      ("mse", skm.mean_squared_error(labels, predicted)),
                      ("mae", skm.mean_absolute_error(labels, predicted))):
    assert logged[f"test/{name}"] == pytest.approx(value, rel=EXPORT_RTOL), name
    assert summary["metrics"][name] == logged[f"test/{name}"]
  # A linear model of the ten features: scikit-learn's least squares scores about
  # 0.4 to 0.5 on held-out patients; the trained one must be of that kind.
  assert logged["test/r2"] > 0.3


def _tickets(path, rng, n):
  """A multi-label table: two numeric features decide labels 'a' and 'b', a third
  label 'c' is noise; the label column joins names with '|', empty for none."""
  x = rng.normal(size=(n, 3))
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["x0", "x1", "x2", "site", "tags"])
    for i, row in enumerate(x):
      tags = [t for t, on in (("a", row[0] > 0), ("b", row[1] > 0.5),
                              ("c", rng.random() < 0.2)) if on]
      writer.writerow([*(f"{v:.4f}" for v in row), f"site{i % 3}", "|".join(tags)])


def test_multilabel_csv_trains_and_its_metrics_match_sklearn(tmp_path):
  _tickets(tmp_path / "tickets.csv", np.random.default_rng(0), 400)
  config = run_util.write_config(tmp_path, dict(
      task="multilabel", seed=0,
      data=dict(source="csv", path=str(tmp_path / "tickets.csv"),
                label_column="tags", label_type="multilabel",
                numeric_columns=("x0", "x1", "x2"), slices={"site": "site"},
                split_fractions={"train": 0.6, "validation": 0.2, "test": 0.2},
                num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=3, hidden_sizes=(16,)),
      batch_size=32, train_duration="30 epochs", log_every=100,
      evaluators=[dict(type="metrics", splits=["validation"], every="10 epochs",
                       final_splits=["test"], top_k=[1, 2], auc_bins=1024,
                       resamples=100)],
      checkpoint=dict(every=0, best_metric="validation/mean_average_precision")))
  run_util.train(config, tmp_path / "run", devices=2)
  logged = run_util.metrics(tmp_path / "run")[-1]
  summary, predictions = _eval_files(tmp_path / "run")
  assert summary["class_names"] == ["a", "b", "c"]
  labels = np.array([p["label"] for p in predictions])
  scores = np.array([p["scores"] for p in predictions])
  predicted = np.array([p["prediction"] for p in predictions])
  assert labels.shape == (80, 3) and set(np.unique(labels)) <= {0, 1}
  np.testing.assert_array_equal(predicted, (scores >= 0.5).astype(int))
  assert logged["test/micro_f1"] == pytest.approx(
      skm.f1_score(labels, predicted, average="micro"), rel=1e-12)
  assert logged["test/hamming_loss"] == pytest.approx(
      skm.hamming_loss(labels, predicted), rel=1e-12)
  assert logged["test/label_ranking_average_precision"] == pytest.approx(
      skm.label_ranking_average_precision_score(labels, scores), rel=EXPORT_RTOL)
  want_map = skm.average_precision_score(labels, scores, average="macro")
  assert abs(logged["test/mean_average_precision"] - want_map) <= (
      logged["test/mean_average_precision_bin_error_bound"] + EXPORT_RTOL)
  # The learnable labels are learnt; 'c' is noise.
  assert summary["per_class"]["roc_auc"][0] > 0.9
  # Slices by site: every group's value is the metric of its own rows.
  groups = summary["slices"]["site"]["groups"]
  assert [g["name"] for g in groups] == ["site0", "site1", "site2"]
  assert sum(g["count"] for g in groups) == len(predictions)


def _breast_cancer_csv(path, rng):
  """scikit-learn's breast-cancer table with two made-up columns to slice by: a
  site (three hospitals) and an age."""
  bunch = datasets.load_breast_cancer()
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*bunch.feature_names, "site", "age", "diagnosis"])
    for features, target in zip(bunch.data, bunch.target):
      writer.writerow([*(f"{x:g}" for x in features), rng.choice(["A", "B", "C"]),
                       int(rng.integers(25, 85)), bunch.target_names[target]])


def test_slices_on_breast_cancer_match_sklearn_per_group(tmp_path):
  _breast_cancer_csv(tmp_path / "bc.csv", np.random.default_rng(1))
  features = [str(f) for f in datasets.load_breast_cancer().feature_names]
  config = run_util.write_config(tmp_path, dict(
      seed=0,
      data=dict(source="csv", path=str(tmp_path / "bc.csv"), label_column="diagnosis",
                numeric_columns=features,
                slices={"site": "site", "age": {"column": "age", "edges": [50, 65]},
                        "diagnosis": "label"},
                split_fractions={"train": 0.5, "validation": 0.1, "test": 0.4},
                stratify=True, num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=2, hidden_sizes=(16,)),
      batch_size=32, train_duration=150, log_every=50, eval_every=0,
      evaluators=[dict(type="metrics", final_splits=["test"], auc_bins=256,
                       calibration_bins=10, resamples=300, slice_seed=7),
                  # Another evaluator at checkpoints that the metrics one skips:
                  # those checkpoints go unranked by the best metric.
                  dict(type="linear_probe", every=50, l2_regs=[1.0])],
      checkpoint=dict(every=50, keep=1, best_metric="test/accuracy")))
  run_util.train(config, tmp_path / "run", devices=8)
  records = run_util.metrics(tmp_path / "run")
  assert [r["step"] for r in records if "linear_probe/accuracy" in r] == [50, 100, 150]
  # Kept: the last (150, also the only one ranked: the best).
  assert run_util.checkpoint_steps(tmp_path / "run") == [150]
  summary, predictions = _eval_files(tmp_path / "run")
  rows = list(csv.DictReader(open(tmp_path / "bc.csv")))
  line_of = lambda p: int(p["id"].rsplit(":", 1)[1]) - 2  # header is line 1
  site = np.array([rows[line_of(p)]["site"] for p in predictions])
  age = np.array([int(rows[line_of(p)]["age"]) for p in predictions])
  labels = np.array([p["label"] for p in predictions])
  predicted = np.array([p["prediction"] for p in predictions])
  report = summary["slices"]
  assert report["site"]["resamples"] == 300 and report["site"]["seed"] == 7
  for name, members in (("A", site == "A"), ("B", site == "B"), ("C", site == "C"),
                        ("< 50", age < 50), ("50 to < 65", (age >= 50) & (age < 65)),
                        (">= 65", age >= 65), ("benign", labels == 0),
                        ("malignant", labels == 1)):
    slice_name = ("site" if name in "ABC" else "diagnosis"
                  if name in ("benign", "malignant") else "age")
    [group] = [g for g in report[slice_name]["groups"] if g["name"] == name]
    assert group["count"] == members.sum(), name
    accuracy = group["metrics"]["accuracy"]
    assert accuracy["value"] == pytest.approx(
        skm.accuracy_score(labels[members], predicted[members]), rel=1e-12), name
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"], name
  # Per class: recall of the class is accuracy on its own examples.
  recall = summary["per_class"]["recall"]
  [malignant] = [g for g in report["diagnosis"]["groups"] if g["name"] == "malignant"]
  assert malignant["metrics"]["accuracy"]["value"] == pytest.approx(recall[1])
  assert set(report["site"]["gap"]) >= {"accuracy"}


def _cli(*args, devices):
  """`ctjax ARGS...` on `devices` fake CPU devices; the completed process."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return subprocess.run([sys.executable, "-m", "ctjax", *map(str, args)],
                        cwd=run_util.REPO, env=run_util.env(devices),
                        capture_output=True, text=True, timeout=run_util.TIMEOUT_S)


def test_eval_on_another_device_count_and_on_a_new_file(tmp_path):
  """Trained on 8 devices, evaluated on 2: the same metrics; then a new file of the
  same schema, evaluated whole with the run's saved encoding, exported to CSV."""
  _breast_cancer_csv(tmp_path / "bc.csv", np.random.default_rng(2))
  features = [str(f) for f in datasets.load_breast_cancer().feature_names]
  config = run_util.write_config(tmp_path, dict(
      seed=0,
      data=dict(source="csv", path=str(tmp_path / "bc.csv"), label_column="diagnosis",
                numeric_columns=features, slices={"site": "site"},
                split_fractions={"train": 0.6, "validation": 0.2, "test": 0.2},
                stratify=True, num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=2, hidden_sizes=(16,)),
      batch_size=32, eval_batch_size=24, train_duration=80, log_every=40,
      eval_every=40, checkpoint=dict(every=40, best_metric="validation/loss",
                                     best_mode="min"), report=True))
  workdir = tmp_path / "run"
  run_util.train(config, workdir, devices=8)
  trained = run_util.metrics(workdir)[-1]

  result = _cli("eval", "--workdir", workdir, "--split", "test", devices=2)
  assert result.returncode == 0, result.stderr
  evaluated = run_util.metrics(workdir)[-1]
  assert evaluated["step"] == 80
  # Another device count and batch: the same predictions (accuracy is exact for a
  # model this far from its decision boundary) and a loss summed in another order.
  assert evaluated["test/accuracy"] == trained["test/accuracy"]
  assert evaluated["test/loss"] == pytest.approx(
      trained["test/loss"], rel=tolerances.sum_rtol(32 * 2 * 30 + 114))
  assert (workdir / "eval" / "step_80" / "test" / "stats.npz").exists()
  assert (workdir / "report.html").stat().st_size > 10_000
  assert any((workdir / "plots").glob("step_80_test_*.png"))

  rows = (tmp_path / "bc.csv").read_text().splitlines()
  (tmp_path / "new.csv").write_text("\n".join(rows[:1] + rows[100:150]) + "\n")
  result = _cli("eval", "--workdir", workdir, "--data.path", tmp_path / "new.csv",
                "--predictions", "csv", "--checkpoint", "40", devices=1)
  assert result.returncode == 0, result.stderr
  with open(workdir / "eval" / "step_40" / "new" / "predictions.csv") as f:
    exported = list(csv.DictReader(f))
  assert len(exported) == 50
  assert exported[0]["id"] == f"{tmp_path / 'new.csv'}:2"
  labels = [r["label"] for r in exported]
  assert set(labels) <= {"benign", "malignant"}
  assert [r["label"] for r in exported] == [r.rsplit(",", 1)[1] for r in rows[100:150]]
  logged = run_util.metrics(workdir)[-1]
  assert logged["step"] == 40
  assert logged["new/accuracy"] == pytest.approx(skm.accuracy_score(
      labels, [r["prediction"] for r in exported]), rel=1e-12)

  result = _cli("eval", "--workdir", workdir, "--checkpoint", "7", devices=1)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "ctjax: error: --checkpoint=7: no checkpoint of that step")


def test_slices_by_class_on_digits_are_per_class_recall(tmp_path):
  config = run_util.write_config(tmp_path, dict(
      seed=0,
      data=dict(source="sklearn_datasets", name="digits", slices={"digit": "label"},
                split_fractions={"train": 0.8, "validation": 0.1, "test": 0.1},
                num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=10, hidden_sizes=(32,)),
      batch_size=64, train_duration=40, log_every=20, eval_every=0,
      evaluators=[dict(type="metrics", final_splits=["test"], resamples=100)],
      checkpoint=dict(every=0)))
  run_util.train(config, tmp_path / "run", devices=8)
  summary, predictions = _eval_files(tmp_path / "run")
  groups = summary["slices"]["digit"]["groups"]
  assert [g["name"] for g in groups] == [str(d) for d in range(10)]
  support, recall = summary["per_class"]["support"], summary["per_class"]["recall"]
  labels = np.array([p["label"] for p in predictions])
  for digit, group in enumerate(groups):
    assert group["count"] == support[digit] == (labels == digit).sum()
    assert group["metrics"]["accuracy"]["value"] == pytest.approx(recall[digit])
    # About 18 examples a digit: too few to say much, and the report says so.
    assert "fewer than 30" in group["warning"]


def _eval_processes(workdir, num_processes, devices_per_process):
  """`ctjax eval --split test` as one run of `num_processes` processes; the
  metrics.json it writes."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import multiprocess_util  # pylint: disable=g-import-not-at-top
  address = f"127.0.0.1:{multiprocess_util.free_port()}"
  coordinator = ({} if num_processes == 1 else
                 {"JAX_COORDINATOR_ADDRESS": address,
                  "JAX_NUM_PROCESSES": str(num_processes)})
  processes = [subprocess.Popen(
      [sys.executable, "-m", "ctjax", "eval", "--workdir", str(workdir),
       "--split", "test"], cwd=run_util.REPO,
      env=run_util.env(devices_per_process, **coordinator,
                       **({"JAX_PROCESS_ID": str(i)} if coordinator else {})),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(num_processes)]
  for process in processes:
    _, stderr = process.communicate(timeout=run_util.TIMEOUT_S)
    assert process.returncode == 0, stderr
  [step] = [p.name for p in (workdir / "eval").iterdir() if p.name != "final"]
  return json.loads((workdir / "eval" / step / "test" / "metrics.json").read_text())


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_two_processes_evaluate_a_checkpoint_as_one_does(tmp_path, task):
  """The same checkpoint evaluated by 1 process of 8 devices and by 2 of 4: every
  example's outputs are computed alike; only the sums cross processes (gloo)."""
  if task == "multilabel":
    _tickets(tmp_path / "tickets.csv", np.random.default_rng(3), 200)
    data = dict(source="csv", path=str(tmp_path / "tickets.csv"),
                label_column="tags", label_type="multilabel",
                numeric_columns=("x0", "x1", "x2"))
    evaluator = dict(top_k=[2], auc_bins=256)
  else:
    data = dict(source="sklearn_datasets", name="diabetes")
    evaluator = {}
  config = run_util.write_config(tmp_path, dict(
      task=task, seed=0,
      data=dict(**data, split_fractions={"train": 0.6, "validation": 0.2,
                                         "test": 0.2}, num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=3 if task == "multilabel" else 1,
                 hidden_sizes=(8,)),
      batch_size=16, eval_batch_size=24, train_duration=20, log_every=20,
      evaluators=[dict(type="metrics", splits=["test"], resamples=0, **evaluator)],
      checkpoint=dict(every=0)))
  workdir = tmp_path / "run"
  run_util.train(config, workdir, devices=8)
  one = _eval_processes(workdir, 1, 8)["metrics"]
  two = _eval_processes(workdir, 2, 4)["metrics"]
  assert one.keys() == two.keys()
  # Float sums over the split (at most 89 examples, each through 3 labels or one
  # target) in another order; counts and what follows from them exactly.
  rtol = tolerances.sum_rtol(89 * 3)
  floats = ("loss", "mse", "rmse", "mae", "r2", "label_ranking_average_precision",
            "recall_at2")
  for key, value in one.items():
    if key in floats:
      assert two[key] == pytest.approx(value, rel=rtol), key
    else:
      assert two[key] == value, key
