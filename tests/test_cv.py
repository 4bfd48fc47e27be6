"""Cross-validation: folds (ctjax/data/splits.py) and `ctjax cv` (ctjax/cv.py).

Folds are checked in this process on real data (scikit-learn's digits, and its
breast-cancer table written as a clinical CSV with patient ids): disjoint, covering
the pooled train and validation parts, the test part untouched, class balance
kept, no patient in two folds, against scikit-learn's splitters as the reference.
`ctjax cv` runs for real, as a user would: two folds of a small MLP, one stopped
by SIGTERM partway, then resumed by a rerun that skips the finished fold.
"""
import csv
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from ml_collections import ConfigDict
from sklearn import datasets, model_selection

import run_util
from ctjax import main
from ctjax.data import splits
from ctjax.errors import UserError

FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
DIGITS = dict(source="sklearn_datasets", name="digits", split_fractions=FRACTIONS,
              split_seed=0)


def _open(data: dict, **cross_validation) -> dict:
  """The splits of a data config, with config.data.cross_validation when given."""
  config = ConfigDict(dict(data, cross_validation=cross_validation) if
                      cross_validation else data)
  return splits.open_splits(config)


def _folds(data: dict, folds: int, **options) -> list[dict]:
  return [_open(data, folds=folds, fold=i, **options) for i in range(folds)]


@pytest.fixture(scope="module")
def breast_cancer_csv(tmp_path_factory) -> tuple[str, np.ndarray]:
  """The breast-cancer table as a CSV with a patient_id column; returns its path
  and each row's patient (several rows per patient, 1 to 6 of them)."""
  bunch = datasets.load_breast_cancer()
  rng = np.random.default_rng(0)
  patients = np.repeat(np.arange(len(bunch.data)), rng.integers(1, 7, len(bunch.data)))
  patients = rng.permutation(patients[:len(bunch.data)])
  path = tmp_path_factory.mktemp("csv") / "patients.csv"
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["patient_id", *bunch.feature_names, "diagnosis"])
    for patient, row, target in zip(patients, bunch.data, bunch.target):
      writer.writerow([f"P{patient:03d}", *(f"{x:g}" for x in row),
                       bunch.target_names[target]])
  return str(path), np.array([f"P{p:03d}" for p in patients])


def _csv_data(path: str) -> dict:
  # Every other column is a feature (numeric_columns=()): but not the patient id.
  return dict(source="csv", path=path, label_column="diagnosis",
              split_fractions=FRACTIONS, split_seed=0, stratify=True)


@pytest.mark.parametrize("stratify", [False, True])
def test_folds_are_disjoint_cover_the_pool_and_leave_test_untouched(stratify):
  plain = _open(DIGITS)
  pool = np.sort(np.concatenate([plain["train"].indices, plain["validation"].indices]))
  labels = np.asarray(plain["train"].source.labels)
  folds = _folds(DIGITS, 5, stratify=stratify, seed=3)
  held = [f["validation"].indices for f in folds]
  assert sum(map(len, held)) == len(pool)
  np.testing.assert_array_equal(np.sort(np.concatenate(held)), pool)  # Disjoint.
  # scikit-learn's splitter over the pool (sorted) is the reference assignment.
  kind = model_selection.StratifiedKFold if stratify else model_selection.KFold
  reference = kind(5, shuffle=True, random_state=3).split(pool, labels[pool])
  for fold, (_, want) in zip(folds, reference):
    np.testing.assert_array_equal(fold["validation"].indices, pool[want])
    np.testing.assert_array_equal(
        np.sort(fold["train"].indices), np.setdiff1d(pool, pool[want]))
    np.testing.assert_array_equal(fold["test"].indices, plain["test"].indices)
  if stratify:  # Each class is spread over the folds to within one example.
    counts = np.array([np.bincount(labels[h], minlength=10) for h in held])
    assert (counts.max(0) - counts.min(0)).max() <= 1


def test_stratified_csv_folds_keep_the_diagnosis_balance(breast_cancer_csv):
  path, _ = breast_cancer_csv
  # Not grouped, the patient id is left out by naming the features.
  data = dict(_csv_data(path), numeric_columns=tuple(
      datasets.load_breast_cancer().feature_names))
  folds = _folds(data, 5, stratify=True)
  malignant = [int(np.sum(f["validation"].labels == 1)) for f in folds]
  benign = [int(np.sum(f["validation"].labels == 0)) for f in folds]
  assert max(malignant) - min(malignant) <= 1 and max(benign) - min(benign) <= 1
  assert len({f["test"].indices.tobytes() for f in folds}) == 1
  # The fold is recorded in splits.json's record, with its sizes and digests.
  record = splits.describe(ConfigDict(dict(data, cross_validation=dict(
      folds=5, fold=4, stratify=True))), folds[4])
  assert record["cross_validation"]["fold"] == 4
  assert record["sizes"]["validation"] == len(folds[4]["validation"])


@pytest.mark.parametrize("stratify", [False, True])
def test_grouped_folds_never_split_a_patient(breast_cancer_csv, stratify):
  path, patients = breast_cancer_csv
  folds = _folds(_csv_data(path), 4, stratify=stratify, group_column="patient_id")
  held = [set(patients[f["validation"].indices]) for f in folds]
  for i in range(4):
    for j in range(i + 1, 4):
      assert not held[i] & held[j], (i, j)
  test = set(patients[folds[0]["test"].indices])
  # The test part is drawn by whole patients too: none of them is in any fold.
  assert not test & set().union(*held)
  assert sum(map(len, held)) + len(test) == len(set(patients))
  # The patient id is a grouping, not a feature: the 30 measurements only.
  assert folds[0]["train"][0]["inputs"].shape == (30,)
  kind = (model_selection.StratifiedGroupKFold if stratify else
          model_selection.GroupKFold)
  pool = np.sort(np.concatenate([folds[0]["train"].indices,
                                 folds[0]["validation"].indices]))
  labels = np.asarray(folds[0]["train"].source.labels)
  reference = kind(4, shuffle=True, random_state=0).split(pool, labels[pool],
                                                          patients[pool])
  for fold, (_, want) in zip(folds, reference):
    np.testing.assert_array_equal(fold["validation"].indices, pool[want])


def test_bad_cross_validation_options_name_the_key(breast_cancer_csv, tmp_path):
  path, _ = breast_cancer_csv
  table = _csv_data(path)
  few_patients = tmp_path / "few.csv"
  with open(path) as f, open(few_patients, "w") as out:
    lines = f.read().splitlines()
    out.write("\n".join([lines[0]] + [re.sub("^P[0-9]+", f"P{i % 10}", line)
                                      for i, line in enumerate(lines[1:])]))
  tokens = tmp_path / "tokens.npz"  # Token targets: no class label per example.
  np.savez(tokens, inputs=np.zeros((20, 8), np.int32),
           label=np.zeros((20, 8), np.int32))
  cases = [
      (DIGITS, dict(folds=1), "cross_validation.folds=1"),
      (DIGITS, dict(folds=3, fold=3), "cross_validation.fold=3"),
      (DIGITS, dict(folds=3, folds_=2), "cross_validation.folds_"),
      (dict(source="sklearn_datasets", name="digits", splits={"train": "all"}),
       dict(folds=3), "needs config.data.split_fractions"),
      (table, dict(group_column="patient"), "cross_validation.group_column"),
      (DIGITS, dict(group_column="patient"), "group_column='patient'"),
      # 10 patients: 6 for training, 2 for validation, 2 held out for testing.
      (dict(table, path=str(few_patients)), dict(folds=9, group_column="patient_id"),
       "hold only 8 groups; use at most 8 folds"),
      (dict(source="arrays", path=str(tokens), split_fractions=FRACTIONS),
       dict(folds=2, stratify=True), "no labels to stratify by"),
  ]
  for data, options, expected in cases:
    with pytest.raises(UserError, match=re.escape(expected)):
      _open(data, **options)


MLP = {
    "seed": 0,
    "data": dict(DIGITS, num_threads=1, prefetch=0),
    "model": {"name": "mlp", "num_classes": 10, "hidden_sizes": (16,)},
    "batch_size": 32, "train_duration": 300, "log_every": 1, "eval_every": 0,
    "checkpoint": {"every": 1000, "keep": 1},
}


def _cv(config: str, workdir: pathlib.Path, *args: str) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-m", "ctjax", "cv", "--config", config, "--workdir",
       str(workdir), *args], cwd=run_util.REPO, env=run_util.env(devices=1),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _child(process: subprocess.Popen, fold: int) -> int:
  """The pid of the `ctjax train` process of `fold` that `process` started."""
  with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
    for pid in f.read().split():
      with open(f"/proc/{pid}/cmdline") as cmdline:
        if f"fold_{fold}\0" in cmdline.read():
          return int(pid)
  raise AssertionError(f"no process for fold {fold}")


def _final(run_dir: pathlib.Path) -> dict[str, float]:
  """The final evaluation of a run: its metrics.jsonl's records at the last step."""
  records = run_util.metrics(run_dir)
  last = max(r["step"] for r in records)
  return {k: v for r in records if r["step"] == last for k, v in r.items()
          if k.startswith(("validation/", "test/"))}


@pytest.mark.long
def test_cv_resumes_a_stopped_fold_skips_finished_ones_and_tabulates(tmp_path,
                                                                     capfd):
  config = run_util.write_config(tmp_path, MLP)
  workdir = tmp_path / "cv"
  # 1. Fold 0 is sent SIGTERM partway: it saves a checkpoint and exits 0, but it
  #    has not finished, and `ctjax cv` must not take it for finished.
  first = _cv(config, workdir, "--folds", "2", "--workers", "2")
  deadline = time.monotonic() + run_util.TIMEOUT_S
  metrics = workdir / "fold_0" / "metrics.jsonl"
  while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
    assert first.poll() is None and time.monotonic() < deadline, first.communicate()
    time.sleep(0.02)
  os.kill(_child(first, 0), signal.SIGTERM)
  stdout, stderr = first.communicate(timeout=run_util.TIMEOUT_S)
  assert first.returncode == 1, stdout + stderr
  assert "fold 0: exited before its final evaluation" in stdout
  assert f"the end of {workdir / 'fold_0' / 'log.txt'}:" in stdout
  assert "SIGTERM: saving step" in stdout  # The log's tail, shown.
  assert (workdir / "fold_1" / "cv_result.json").exists()
  assert not (workdir / "fold_0" / "cv_result.json").exists()
  stopped_at = max(r["step"] for r in run_util.metrics(workdir / "fold_0"))
  assert stopped_at < MLP["train_duration"]

  # 2. The rerun resumes fold 0 from its checkpoint and leaves fold 1 alone.
  fold_1_log = workdir / "fold_1" / "log.txt"
  fold_1_written = fold_1_log.stat().st_mtime_ns
  second = _cv(config, workdir, "--folds", "2", "--workers", "2")
  stdout, stderr = second.communicate(timeout=run_util.TIMEOUT_S)
  assert second.returncode == 0, stdout + stderr
  assert "fold 1: finished before, skipped" in stdout
  assert fold_1_log.stat().st_mtime_ns == fold_1_written
  attempts = (workdir / "fold_0" / "log.txt").read_text().split("\n=== ")
  assert len(attempts) == 2
  assert run_util.first_trained_step(attempts[1]) > 1

  # 3. The table: each fold's final metrics, and their mean and sample std.
  per_fold = [_final(workdir / f"fold_{i}") for i in range(2)]
  with open(workdir / "cv.csv") as f:
    rows = {row["fold"]: row for row in csv.DictReader(f)}
  for name in ("validation/accuracy", "test/accuracy", "validation/loss"):
    values = [r[name] for r in per_fold]
    for i, value in enumerate(values):
      assert float(rows[str(i)][name]) == pytest.approx(value, rel=1e-12)
    assert float(rows["mean"][name]) == pytest.approx(np.mean(values))
    assert float(rows["std"][name]) == pytest.approx(np.std(values, ddof=1))
  accuracy = [r["validation/accuracy"] for r in per_fold]
  line = (f"| validation/accuracy | {accuracy[0]:.4g} | {accuracy[1]:.4g} | "
          f"{np.mean(accuracy):.4g} ± {np.std(accuracy, ddof=1):.2g} |")
  assert line in (workdir / "cv.md").read_text() and line in stdout
  # Both folds evaluated on the same test part, each on its own held-out fold.
  sizes = [json.loads((workdir / f"fold_{i}" / "splits.json").read_text())["sizes"]
           for i in range(2)]
  assert sizes[0]["test"] == sizes[1]["test"]
  assert sizes[0]["validation"] + sizes[1]["validation"] == sizes[0]["train"] + \
      sizes[0]["validation"]

  # 4. Other settings on the same folder would mix two cross-validations.
  for other in (["--folds", "3"], ["--folds", "2", "--config.optim.lr=0.1"]):
    with pytest.raises(SystemExit) as exit_info:
      main.main(["cv", "--config", config, "--workdir", str(workdir), *other])
    assert exit_info.value.code == 2
  assert capfd.readouterr().err.splitlines()[-1].startswith(
      f"ctjax: error: {workdir / 'cv.json'}: this folder holds a cross-validation "
      "with other settings (command.overrides=[], config.optim.lr=0.001)")


def test_bad_cv_option_exits_2_with_one_line(tmp_path):
  config = run_util.write_config(tmp_path, MLP)
  process = _cv(config, tmp_path / "cv", "--folds", "1")
  stdout, stderr = process.communicate(timeout=run_util.TIMEOUT_S)
  assert process.returncode == 2, stdout + stderr
  assert stderr.strip().splitlines() == [
      "ctjax: error: config.data.cross_validation.folds=1: cross-validation needs "
      "at least 2 folds (ctjax cv --folds 5)"]
  assert not (tmp_path / "cv").exists()
