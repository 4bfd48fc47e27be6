"""`ctjax monitor` end to end: a run trained on a table saves its reference; new
files of the same distribution pass, a shifted one with a changed label
relationship is caught; an image run is compared through its embeddings."""
import argparse
import csv
import json
import shutil

import numpy as np
import pytest
from scipy import stats
from sklearn import datasets

from ctjax import config as config_lib
from ctjax import monitor
from ctjax import train
from ctjax.errors import UserError

import run_util

FEATURES = ("x1", "x2", "x3", "x4")


def _write_table(path, rng, n, *, x3_shift=0.0, flipped=False):
  """Four normal features and a site; the label is x1 + x2/2 > 0 ("yes"), or
  the opposite with `flipped`."""
  x = rng.normal(size=(n, 4))
  x[:, 2] += x3_shift
  site = rng.choice(["north", "south"], size=n)
  positive = (x[:, 0] + 0.5 * x[:, 1] > 0) != flipped
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow([*FEATURES, "site", "outcome"])
    for row, s, p in zip(x, site, positive):
      writer.writerow([*(f"{v:.6f}" for v in row), s, "yes" if p else "no"])
  return x


def _train(config: dict, workdir) -> dict:
  config = {"reference_statistics": True, **config}  # run_util's default is off
  return train.train(config_lib.load_config(
      run_util.write_config(workdir.parent, config, name=f"{workdir.name}.py")),
                     str(workdir))


def _monitor(*argv: str) -> int:
  parser = argparse.ArgumentParser()
  monitor.add_arguments(parser)
  return monitor.monitor_command(parser.parse_args(list(map(str, argv))), [])


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
  folder = tmp_path_factory.mktemp("table")
  _write_table(folder / "train.csv", np.random.default_rng(0), 2000)
  final = _train(dict(
      seed=0,
      data=dict(source="csv", path=str(folder / "train.csv"), label_column="outcome",
                categorical_columns=("site",),
                split_fractions={"train": 0.8, "validation": 0.2}, stratify=True,
                num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=2, hidden_sizes=(16,)),
      batch_size=64, train_duration=60, log_every=60, eval_every=0,
      final_eval_splits=("validation",), optim=dict(lr=0.01),
      checkpoint=dict(every=60)), folder / "run")
  return folder, final


def test_a_file_like_the_training_data_shows_no_drift(table_run, capsys):
  folder, final = table_run
  workdir = folder / "run"
  reference = json.loads((workdir / "reference" / "reference.json").read_text())
  # 1600 training rows, all described; the accuracy is the run's final one.
  assert reference["num_examples"] == 1600 and reference["kind"] == "table"
  assert reference["metrics"]["accuracy"] == final["validation/accuracy"] > 0.9
  assert reference["table"]["names"] == [*FEATURES, "site=(missing or new)",
                                         "site=north", "site=south"]

  x = _write_table(folder / "same.csv", np.random.default_rng(1), 1000)
  assert _monitor("--workdir", workdir, "--data", folder / "same.csv") == 0
  out = workdir / "monitor" / "same"
  summary = json.loads((out / "drift.json").read_text())
  assert summary["drifted"] is False and summary["num_examples"] == 1000
  rows = {r["name"]: r for r in summary["rows"]}
  assert set(rows) == {*reference["table"]["names"], "predicted class", "score",
                       "label", "accuracy"}
  # New rows are encoded with the run's saved means and deviations: KS against
  # the reference's sample, by scipy on the standardised file.
  state = json.loads((workdir / "data_state.json").read_text())["state"]["numeric"]
  sample = np.load(workdir / "reference" / "arrays.npz")["table/sample"]
  for j, name in enumerate(FEATURES):
    standardised = (x[:, j].round(6) - state["mean"][j]) / state["std"][j]
    want = stats.ks_2samp(sample[:, j], standardised)
    assert rows[name]["statistic"] == pytest.approx(want.statistic, abs=1e-6)
  assert rows["accuracy"]["reference"] == final["validation/accuracy"]
  assert rows["accuracy"]["new"] > 0.9
  assert "# Drift: no drift" in capsys.readouterr().out


def test_a_shifted_feature_and_a_changed_label_relationship_are_drift(table_run):
  folder, _ = table_run
  workdir = folder / "run"
  _write_table(folder / "shifted.csv", np.random.default_rng(2), 1000, x3_shift=2.0,
               flipped=True)
  out = folder / "report"
  assert _monitor("--workdir", workdir, "--data", folder / "shifted.csv",
                  "--out", out) == 1
  rows = {r["name"]: r for r in json.loads((out / "drift.json").read_text())["rows"]}
  crossed_features = [name for name, r in rows.items()
                      if r["check"] == "feature" and r["crossed"]]
  assert crossed_features == ["x3"]
  assert "psi" in rows["x3"]["crossed"] and rows["x3"]["psi"] > 1.0
  assert rows["accuracy"]["crossed"] == ["accuracy"] and rows["accuracy"]["new"] < 0.2
  assert "| **feature** | **x3** |" in (out / "drift.md").read_text()
  assert (out / "drift.png").stat().st_size > 10_000
  with open(out / "drift.csv") as f:
    assert [r["name"] for r in csv.DictReader(f)] == list(rows)


def test_mistakes_stop_with_one_line_naming_the_file(table_run, tmp_path):
  folder, _ = table_run
  with pytest.raises(UserError) as error:
    _monitor("--workdir", folder / "run", "--data", tmp_path / "absent.csv")
  message = str(error.value)
  assert message.startswith(f"--data={tmp_path / 'absent.csv'}: no such file")
  assert "\n" not in message
  # A run without a reference (trained with reference_statistics=False, or by an
  # older ctjax) says so, before reading any data.
  shutil.copytree(folder / "run", tmp_path / "run")
  shutil.rmtree(tmp_path / "run" / "reference")
  with pytest.raises(UserError, match=r"^\S+/reference\.json: missing.*"
                     r"config\.reference_statistics=True"):
    _monitor("--workdir", tmp_path / "run", "--data", folder / "train.csv")
  with pytest.raises(UserError, match=r"^--psi=0: give a number above 0$"):
    _monitor("--workdir", folder / "run", "--data", folder / "train.csv", "--psi", 0)


def test_an_image_run_is_compared_through_its_embeddings(tmp_path):
  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)[..., None]
  rng = np.random.default_rng(0)
  order = rng.permutation(len(images))
  train_rows, new_rows = order[:1200], order[1200:]
  np.savez(tmp_path / "train.npz", inputs=images[train_rows],
           label=digits.target[train_rows])
  np.savez(tmp_path / "new.npz", inputs=images[new_rows], label=digits.target[new_rows])
  # The same digits, washed out: a scanner's contrast changed.
  np.savez(tmp_path / "faded.npz", inputs=0.3 + 0.4 * images[new_rows],
           label=digits.target[new_rows])
  _train(dict(
      seed=0,
      data=dict(source="arrays", splits={"train": str(tmp_path / "train.npz")},
                num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=10, hidden_sizes=(32,)),
      batch_size=64, train_duration=40, log_every=40, eval_every=0,
      eval_splits=(), final_eval_splits=(), optim=dict(lr=0.01),
      checkpoint=dict(every=40)), tmp_path / "run")
  reference = json.loads((tmp_path / "run" / "reference" / "reference.json").read_text())
  assert reference["kind"] == "embedding" and reference["num_examples"] == 1200
  assert reference["metrics"] == {}  # No validation split.

  assert _monitor("--workdir", tmp_path / "run", "--data", tmp_path / "new.npz") == 0
  assert _monitor("--workdir", tmp_path / "run", "--data", tmp_path / "faded.npz") == 1
  rows = json.loads((tmp_path / "run" / "monitor" / "faded" / "drift.json").read_text()
                    )["rows"]
  [embedding] = [r for r in rows if r["check"] == "embedding"]
  assert embedding["crossed"] == ["mmd"] and embedding["p_value"] < 0.01
