"""Plots, the review queue, example views and report.html, on real evaluations.

The evaluation folders are built the way an evaluation writes them: statistics
from `metrics.classification_stats` on logits for the real digits test split,
metrics from `metrics.summarize`, slices with bootstrap intervals computed here by
hand. Curves are checked against scikit-learn, the page in a real headless
Chromium (skipped, saying so, where none is installed).
"""
import base64
import csv
import html
import io
import json
import os
import re
import shutil
import subprocess

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets
from sklearn import metrics as sk_metrics

from ctjax import metrics
from ctjax import plots
from ctjax import report
from ctjax import review
from ctjax.data import splits as splits_lib
from ctjax.data.sources import memory

BINS = 32
# Class 0's name holds HTML: the page must show it as text.
CLASS_NAMES = ['<b>zero</b> & "nil"'] + [str(d) for d in range(1, 10)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _digits_test_split():
  return splits_lib.open_splits(ConfigDict({
      "source": "sklearn_datasets", "name": "digits",
      "split_fractions": {"train": 0.8, "test": 0.2}, "split_seed": 0}))["test"]


def _logits(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
  """A model better than chance, wrong and unsure often enough to review."""
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(len(labels), num_classes)) * 1.5 +
          2.0 * np.eye(num_classes)[labels]).astype(np.float32)


def _bootstrap_slice(labels, logits, groups, *, resamples=200, seed=0):
  """A slice's summary in metrics.json, by hand: percentile intervals."""
  correct = logits.argmax(1) == labels
  log_p = jax.nn.log_softmax(logits)
  loss = -np.asarray(log_p)[np.arange(len(labels)), labels]
  rng = np.random.default_rng(seed)
  summary = {"resamples": resamples, "seed": seed, "confidence": 0.95,
             "groups": [], "gap": {}}
  draws = {}
  for name in sorted(set(groups)):
    members = np.flatnonzero(groups == name)
    group = {"name": name, "count": len(members), "metrics": {},
             "warning": (f"only {len(members)} examples: too few to compare"
                         if len(members) < 30 else None)}
    for metric, values in (("accuracy", correct), ("loss", loss)):
      draws[name, metric] = rng.choice(values[members],
                                       (resamples, len(members))).mean(1)
      group["metrics"][metric] = {
          "value": float(values[members].mean()),
          "low": float(np.percentile(draws[name, metric], 2.5)),
          "high": float(np.percentile(draws[name, metric], 97.5))}
    summary["groups"].append(group)
  for metric, higher_is_better in (("accuracy", True), ("loss", False)):
    by_value = sorted(summary["groups"], key=lambda g: g["metrics"][metric]["value"],
                      reverse=higher_is_better)
    best, worst = by_value[0]["name"], by_value[-1]["name"]
    difference = np.abs(draws[best, metric] - draws[worst, metric])
    summary["gap"][metric] = {
        "value": abs(by_value[0]["metrics"][metric]["value"] -
                     by_value[-1]["metrics"][metric]["value"]),
        "best": best, "worst": worst,
        "low": float(np.percentile(difference, 2.5)),
        "high": float(np.percentile(difference, 97.5))}
  return summary


def _write_jsonl(path, records):
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def _write_run(workdir, config: dict, steps: int = 30) -> None:
  """config.json and a metrics.jsonl of a run's training and validation curves."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(config, f)
  records = []
  for step in range(1, steps + 1):
    record = {"step": step, "train/loss": 2.3 * 0.95 ** step, "train/lr": 0.001,
              "train/steps_per_s": 20.0}
    if step % 10 == 0:
      record.update({"validation/loss": 2.4 * 0.96 ** step,
                     "validation/accuracy": 1 - 0.9 * 0.97 ** step})
    records.append(record)
  _write_jsonl(os.path.join(workdir, "metrics.jsonl"), records)


def _write_classification_eval(eval_dir, labels, logits, *, names, slices=None,
                               with_stats=True):
  """metrics.json, stats.npz and predictions.jsonl as an evaluation writes them."""
  num_classes = logits.shape[1]
  stats = metrics.classification_stats(
      jnp.asarray(logits), jnp.asarray(labels), jnp.ones(len(labels)),
      num_classes=num_classes, brier=True, calibration_bins=10, auc_bins=BINS)
  stats = {k: np.asarray(v) for k, v in stats.items()}
  info = {"step": 300, "split": "test", "task": "classification",
          "class_names": names, "metrics": metrics.summarize(stats),
          "per_class": {k: v.tolist() for k, v in metrics.per_class(stats).items()}}
  if slices:
    info["slices"] = slices
  os.makedirs(eval_dir, exist_ok=True)
  with open(os.path.join(eval_dir, "metrics.json"), "w") as f:
    json.dump(info, f)
  if with_stats:
    np.savez(os.path.join(eval_dir, "stats.npz"), **stats)
  probabilities = np.asarray(jax.nn.softmax(logits))
  _write_jsonl(os.path.join(eval_dir, "predictions.jsonl"), [
      {"index": i, "id": f"test:{i}", "label": int(labels[i]),
       "prediction": int(p.argmax()), "scores": p.tolist(),
       "confidence": float(p.max())} for i, p in enumerate(probabilities)])
  return stats


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A run evaluated on the real digits test split, with a slice by site."""
  workdir = str(tmp_path_factory.mktemp("run"))
  test = _digits_test_split()
  labels = np.asarray(test.labels)
  logits = _logits(labels, 10, seed=0)
  sites = np.random.default_rng(1).choice(["north", "south", "island"],
                                          len(labels), p=[0.55, 0.4, 0.05])
  _write_run(workdir, {"model": {"name": "cnn", "num_classes": 10},
                       "data": {"source": "sklearn_datasets", "name": "digits"},
                       "train_duration": "300", "batch_size": 64, "seed": 0,
                       "optim": {"name": "adamw", "lr": 0.003}})
  eval_dir = os.path.join(workdir, "eval", "final", "test")
  # "all": every example in one group, the overall metrics' intervals.
  slices = {"site": _bootstrap_slice(labels, logits, sites),
            report.OVERALL_SLICE: _bootstrap_slice(
                labels, logits, np.full(len(labels), "every example"))}
  _write_classification_eval(eval_dir, labels, logits, names=CLASS_NAMES,
                             slices=slices)
  return {"workdir": workdir, "eval_dir": eval_dir, "split": test}


def _check_png(path, low=8_000, high=600_000):
  with open(path, "rb") as f:
    data = f.read()
  assert data.startswith(PNG_MAGIC), path
  assert low < len(data) < high, (path, len(data))
  image = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
  assert image.shape[0] >= 300 and image.shape[1] >= 300, (path, image.shape)
  assert image.std() > 5, f"{path}: a blank picture"


# Curves from binned scores.


@pytest.mark.parametrize("num_classes", [2, 4])
def test_curves_from_histogram_are_scikit_learns_on_binned_scores(num_classes):
  rng = np.random.default_rng(num_classes)
  labels = rng.integers(0, num_classes, 400)
  logits = _logits(labels, num_classes, seed=num_classes)
  histogram = np.asarray(metrics.classification_stats(
      jnp.asarray(logits), jnp.asarray(labels), jnp.ones(len(labels)),
      auc_bins=BINS)["auc_histogram"])
  probabilities = np.asarray(jax.nn.softmax(jnp.asarray(logits)))
  binned = np.minimum((probabilities * BINS).astype(np.int32), BINS - 1)
  for c in ([1] if num_classes == 2 else range(num_classes)):
    fpr, tpr, _ = sk_metrics.roc_curve(labels == c, binned[:, c],
                                       drop_intermediate=False)
    ours_fpr, ours_tpr = plots.roc_from_histogram(histogram[c])
    np.testing.assert_allclose(ours_fpr, fpr)
    np.testing.assert_allclose(ours_tpr, tpr)
    precision, recall, _ = sk_metrics.precision_recall_curve(labels == c,
                                                             binned[:, c])
    ours_precision, ours_recall = plots.precision_recall_from_histogram(
        histogram[c])
    np.testing.assert_allclose(ours_precision, precision)
    np.testing.assert_allclose(ours_recall, recall)


# Plots.


def test_write_plots_draws_every_plot_the_evaluation_allows(digits_run):
  skipped = []
  paths = plots.write_plots(digits_run["workdir"], digits_run["eval_dir"], skipped)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(["training_curves.png", "final_test_roc.png",
                          "final_test_precision_recall.png",
                          "final_test_confusion_matrix.png",
                          "final_test_reliability.png",
                          "final_test_slice_site.png",
                          "final_test_slice_all.png"]), names
  assert skipped == []
  for path in paths:
    assert os.path.dirname(path) == os.path.join(digits_run["workdir"], "plots")
    _check_png(path)


def test_plots_without_statistics_are_skipped_with_the_reason(tmp_path):
  labels = np.arange(40) % 3
  _write_run(str(tmp_path), {})
  eval_dir = tmp_path / "eval" / "step_30" / "validation"
  _write_classification_eval(str(eval_dir), labels, _logits(labels, 3, seed=2),
                             names=None, with_stats=False)
  skipped = []
  paths = plots.write_plots(str(tmp_path), str(eval_dir), skipped)
  assert [os.path.basename(p) for p in paths] == ["training_curves.png"]
  text = "\n".join(skipped)
  for what in ("auc_histogram", "confusion", "calibration", "slices"):
    assert what in text, skipped


def test_regression_and_multilabel_plots(tmp_path):
  rng = np.random.default_rng(3)
  true = rng.normal(size=200)
  predicted = true + 0.3 * rng.normal(size=200)
  _write_run(str(tmp_path), {})
  regression_dir = tmp_path / "eval" / "final" / "test"
  regression_dir.mkdir(parents=True)
  (regression_dir / "metrics.json").write_text(json.dumps({
      "step": 30, "split": "test", "task": "regression", "class_names": None,
      "metrics": {"mse": float(np.mean((predicted - true) ** 2))}}))
  _write_jsonl(regression_dir / "predictions.jsonl", [
      {"index": i, "id": f"test:{i}", "label": float(t), "prediction": float(p),
       "scores": [float(p)], "confidence": None}
      for i, (t, p) in enumerate(zip(true, predicted))])
  paths = plots.write_plots(str(tmp_path), str(regression_dir))
  assert sorted(os.path.basename(p) for p in paths) == [
      "final_test_predicted_vs_true.png", "final_test_residuals.png",
      "training_curves.png"]
  for path in paths:
    _check_png(path)

  # Multilabel: per label, a histogram of its probability for the examples that
  # have it ([l, 1]) and those that do not ([l, 0]), as for one class vs the rest.
  targets = rng.integers(0, 2, (100, 5))
  scores = np.clip(targets * 0.6 + rng.uniform(size=(100, 5)) * 0.5, 0, 1)
  histogram = np.zeros((5, 2, BINS), np.int32)
  bins = np.minimum((scores * BINS).astype(int), BINS - 1)
  for label in range(5):
    np.add.at(histogram[label], (targets[:, label], bins[:, label]), 1)
  auc = metrics.per_class({"auc_histogram": histogram})["roc_auc"].tolist()
  multilabel_dir = tmp_path / "eval" / "final" / "validation"
  multilabel_dir.mkdir(parents=True)
  np.savez(multilabel_dir / "stats.npz", auc_histogram=histogram)
  (multilabel_dir / "metrics.json").write_text(json.dumps({
      "step": 30, "split": "validation", "task": "multilabel",
      "class_names": ["fever", "cough", "rash", "pain", "fatigue"],
      "metrics": {"roc_auc_macro": float(np.mean(auc))},
      "per_class": {"roc_auc": auc}}))
  paths = plots.write_plots(str(tmp_path), str(multilabel_dir))
  assert sorted(os.path.basename(p) for p in paths) == [
      "final_validation_per_label_auc.png", "final_validation_precision_recall.png",
      "final_validation_roc.png", "training_curves.png"]
  for path in paths:
    _check_png(path)


# The review queue.


def test_review_queue_picks_confident_mistakes_and_doubts(digits_run):
  evaluation = plots.read_evaluation(digits_run["eval_dir"])
  predictions = evaluation["predictions"]
  queue = review.review_queue(predictions, 10)
  confidence = np.array([p["confidence"] for p in predictions])
  wrong = np.array([p["prediction"] != p["label"] for p in predictions])
  # By hand: mistakes by decreasing confidence, then the rest by increasing.
  expected_wrong = np.flatnonzero(wrong)[np.argsort(-confidence[wrong],
                                                    kind="stable")][:10]
  assert [r["index"] for r in queue["confidently_wrong"]] == expected_wrong.tolist()
  rest = np.setdiff1d(np.arange(len(predictions)), expected_wrong)
  expected_doubts = rest[np.argsort(confidence[rest], kind="stable")][:10]
  assert [r["index"] for r in queue["least_confident"]] == expected_doubts.tolist()
  assert queue["confidently_wrong"][0]["confidence"] > 0.5 > \
      queue["least_confident"][0]["confidence"]


def test_review_queue_regression_and_multilabel():
  regression = [{"index": i, "id": str(i), "label": t, "prediction": p,
                 "scores": [p], "confidence": None}
                for i, (t, p) in enumerate([(1.0, 1.1), (2.0, 5.0), (0.0, -2.5),
                                            (3.0, 3.0)])]
  queue = review.review_queue(regression, 2)
  assert [(r["index"], r["error"]) for r in queue["largest_errors"]] == [
      (1, 3.0), (2, 2.5)]
  two_targets = [{**r, "label": [r["label"], 0.0], "prediction": [r["prediction"], 1.0]}
                 for r in regression]
  queue = review.review_queue(two_targets, 1)
  assert [(r["index"], r["error"]) for r in queue["largest_errors"]] == [(1, 2.0)]

  # An evaluation writes the highest probability as a multilabel confidence.
  multilabel = [
      {"index": 0, "id": "a", "label": [1, 0], "prediction": [1, 0],
       "scores": [0.9, 0.45], "confidence": 0.9},   # right, unsure of label 1
      {"index": 1, "id": "b", "label": [0, 1], "prediction": [1, 1],
       "scores": [0.95, 0.8], "confidence": 0.95},  # wrong, sure of label 0
      {"index": 2, "id": "c", "label": [0, 0], "prediction": [0, 0],
       "scores": [0.1, 0.2], "confidence": 0.2},   # right, sure
      {"index": 3, "id": "d", "label": [1, 1], "prediction": [0, 1],
       "scores": [0.4, 0.9], "confidence": 0.9}]   # wrong, unsure
  queue = review.review_queue(multilabel, 4)
  assert [r["index"] for r in queue["confidently_wrong"]] == [1, 3]
  assert [r["index"] for r in queue["least_confident"]] == [0, 2]
  assert queue["least_confident"][0]["confidence"] == pytest.approx(0.1)


# Example views.


def _decode(data_uri: str) -> Image.Image:
  prefix = "data:image/png;base64,"
  assert data_uri.startswith(prefix)
  return Image.open(io.BytesIO(base64.b64decode(data_uri[len(prefix):])))


def test_example_view_draws_an_in_memory_digit_pixel_for_pixel():
  test = _digits_test_split()
  view = review.example_view(test, 5)
  assert view["kind"] == "image"
  image = np.asarray(_decode(view["src"]))
  assert image.shape == (96, 96)  # 8x8, each pixel 12x12.
  digit = datasets.load_digits().images[test.indices[5]]
  np.testing.assert_array_equal(image[::12, ::12], np.round(digit / 16 * 255))


def test_example_view_shows_a_table_row_as_read(tmp_path):
  path = tmp_path / "patients.csv"
  rows = [[f"{30 + i}.5", ["f", "m"][i % 2], ["benign", "malignant"][i % 3 == 0]]
          for i in range(20)]
  rows[3][0] = "NA"  # Missing: filled with the mean for the model, blank here.
  with open(path, "w", newline="") as f:
    csv.writer(f).writerows([["age", "sex", "diagnosis"]] + rows)
  test = splits_lib.open_splits(ConfigDict({
      "source": "csv", "path": str(path), "label_column": "diagnosis",
      "categorical_columns": ("sex",), "missing": "mean",
      "split_fractions": {"train": 0.5, "test": 0.5}, "split_seed": 0}),
      state_dir=str(tmp_path))["test"]
  assert 3 in test.indices
  for i in range(len(test)):
    view = review.example_view(test, i)
    age, sex, diagnosis = rows[test.indices[i]]
    assert view == {"kind": "table", "location": f"{path}:{test.indices[i] + 2}",
                    "columns": {"age": None if age == "NA" else age, "sex": sex,
                                "diagnosis": diagnosis}}

  # scikit-learn's tables: the features by name, before standardising.
  cancer = splits_lib.open_splits(ConfigDict({
      "source": "sklearn_datasets", "name": "breast_cancer",
      "split_fractions": {"train": 0.5, "test": 0.5}}))["test"]
  view = review.example_view(cancer, 7)
  bunch = datasets.load_breast_cancer()
  assert view["kind"] == "table"
  assert list(view["columns"]) == list(bunch.feature_names)
  assert float(view["columns"]["mean radius"]) == pytest.approx(
      bunch.data[cancer.indices[7], 0], rel=1e-5)


def test_example_view_shows_texts_and_image_files(tmp_path):
  texts = ["chest pain <script>", "a rash", "cough for three weeks", "headache"]
  _write_jsonl(tmp_path / "notes.jsonl", [{"text": t, "label": ["a", "b"][i % 2]}
                                          for i, t in enumerate(texts)])
  notes = splits_lib.open_splits(ConfigDict({
      "source": "jsonl", "splits": {"train": str(tmp_path / "notes.jsonl")}}),
      state_dir=str(tmp_path))["train"]
  assert review.example_view(notes, 0) == {
      "kind": "text", "text": texts[0], "location": f"{tmp_path}/notes.jsonl:1"}

  colours = {"benign": (200, 30, 30), "malignant": (30, 30, 200)}
  for name, colour in colours.items():
    (tmp_path / "images" / name).mkdir(parents=True)
    Image.new("RGB", (300, 200), colour).save(tmp_path / "images" / name / "1.png")
  folder = splits_lib.open_splits(ConfigDict({
      "source": "image_folder", "image_size": 32,
      "splits": {"train": str(tmp_path / "images")}}),
      state_dir=str(tmp_path / "images_state"))["train"]
  view = review.example_view(folder, 1)
  assert view["path"] == view["location"] == str(tmp_path / "images/malignant/1.png")
  thumbnail = _decode(view["src"])
  assert thumbnail.size == (96, 64)  # The file's aspect, not the model's 32x32.
  assert thumbnail.convert("RGB").getpixel((10, 10)) == colours["malignant"]


def test_example_view_summarises_inputs_when_nothing_else_is_kept():
  features = np.linspace(-1, 1, 5 * 30, dtype=np.float32).reshape(5, 30)
  source = memory.ArraySource({"inputs": features, "label": np.zeros(5, np.int32)})
  view = review.example_view(source, 1)
  assert view == {"kind": "values", "text": (
      "inputs float32[30], min -0.5973, max -0.2081: [-0.5973, -0.5839, -0.5705, "
      "-0.557, -0.5436, -0.5302, -0.5168, -0.5034, -0.4899, -0.4765, -0.4631, "
      "-0.4497, ...]")}


# The report.


@pytest.fixture(scope="module")
def digits_report(digits_run):
  """report.html of digits_run, each example shown by example_view."""
  return report.write_report(
      digits_run["workdir"], digits_run["eval_dir"],
      lambda i: review.example_view(digits_run["split"], i), queue_size=8)


def test_report_is_one_self_contained_escaped_page(digits_run, digits_report,
                                                   tmp_path):
  assert digits_report == os.path.join(digits_run["workdir"], "report.html")
  page = open(digits_report, encoding="utf-8").read()
  assert 100_000 < len(page) < 5_000_000
  # Every plot is embedded, and nothing is fetched from elsewhere.
  assert page.count('class=plot alt=') == 7
  assert not re.search(r'(src|href)="(?!data:)', page)
  assert "<link" not in page and "<script src" not in page
  # The class name with HTML in it is text, not markup.
  assert "<b>zero</b>" not in page
  assert html.escape(CLASS_NAMES[0]) in page
  assert page.count("<tr class=item") == 16
  assert "north" in page and "only 20 examples: too few to compare" in page
  # The overall accuracy's bootstrap interval, from the "all" slice.
  accuracy = json.load(open(os.path.join(digits_run["eval_dir"], "metrics.json"))
                       )["slices"]["all"]["groups"][0]["metrics"]["accuracy"]
  assert (f"<td>accuracy</td><td class=num>{accuracy['value']:.4g}</td><td>"
          f"{accuracy['low']:.4g} to {accuracy['high']:.4g} (bootstrap)</td>") in page

  # A text source's review: its texts are escaped too.
  labels = np.array([0, 1, 0, 1, 1, 0])
  texts = [f"note {i} <img src=x onerror=alert({i})>" for i in range(6)]
  _write_run(str(tmp_path), {})
  eval_dir = tmp_path / "eval" / "final" / "test"
  _write_classification_eval(str(eval_dir), labels, _logits(labels, 2, seed=4),
                             names=["benign", "malignant"], with_stats=False)
  page = open(report.write_report(
      str(tmp_path), str(eval_dir), lambda i: {"kind": "text", "text": texts[i]}),
      encoding="utf-8").read()
  assert "<img src=x" not in page
  assert html.escape("<img src=x onerror=alert(0)>") in page


def _chromium() -> str:
  for name in ("chromium", "chromium-browser", "google-chrome",
               "google-chrome-stable"):
    path = shutil.which(name)
    if path:
      return path
  pytest.skip("no Chromium found: install Debian's package `chromium` (`apt-get "
              "install chromium`; .ci/run does) to test report.html in a browser")


# Runs in the page once it has loaded: what a reader would see, and an export
# with one verdict given, written into the DOM for --dump-dom to return.
_PROBE = """<script>
window.addEventListener("load", () => {
  const out = {};
  const images = Array.from(document.images);
  out.plots = images.filter(i => i.classList.contains("plot")).length;
  out.thumbnails = images.filter(i => i.classList.contains("thumb")).length;
  out.decoded = images.filter(i => i.complete && i.naturalWidth > 0).length;
  out.images = images.length;
  out.rows = document.querySelectorAll("tr.item").length;
  const row = document.querySelector("tr.item");
  row.querySelector("select.verdict").value = "model_right";
  row.querySelector("select.verdict").dispatchEvent(new Event("change"));
  row.querySelector("input.note").value = 'label "0" = typo, see chart';
  out.progress = document.getElementById("progress").textContent;
  out.csv = verdictsCsv();
  exportVerdicts();
  out.fetched = performance.getEntriesByType("resource").map(r => r.name);
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script></body>"""


def test_report_renders_in_headless_chromium(digits_run, digits_report, tmp_path):
  browser = _chromium()
  page = open(digits_report, encoding="utf-8").read()
  probe = tmp_path / "probe.html"
  probe.write_text(page.replace("</body>", _PROBE), encoding="utf-8")
  result = subprocess.run(
      [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
       f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
       "--v=0", "--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
      capture_output=True, text=True, timeout=240, check=False)
  # Page errors and console messages reach Chromium's log as CONSOLE lines.
  console = [l for l in result.stderr.splitlines() if "CONSOLE" in l]
  assert not console, console
  found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, re.S)
  assert found, (result.returncode, result.stderr[-2000:])
  out = json.loads(html.unescape(found.group(1)))
  assert out["plots"] == 7
  assert out["thumbnails"] == out["rows"] == 16
  assert out["decoded"] == out["images"] == 23
  assert out["fetched"] == []
  assert out["progress"] == "1 of 16 reviewed"

  queue = review.review_queue(
      plots.read_evaluation(digits_run["eval_dir"])["predictions"], 8)
  lines = list(csv.reader(io.StringIO(out["csv"])))
  assert lines[0] == ["queue", "index", "id", "label", "prediction", "measure",
                      "verdict", "note"]
  expected = [(name, str(r["index"]), r["id"]) for name, records in queue.items()
              for r in records]
  assert [tuple(line[:3]) for line in lines[1:]] == expected
  label = queue["confidently_wrong"][0]["label"]
  assert lines[1][3] == (str(label) if label else f"{CLASS_NAMES[0]} (0)")
  # Escaped in the page, the name with HTML in it comes back as it was.
  assert any(f"{CLASS_NAMES[0]} (0)" in line[3:5] for line in lines[1:])
  assert lines[1][6:] == ["model_right", 'label "0" = typo, see chart']
  assert all(line[6:] == ["", ""] for line in lines[2:])
