"""Drift: how far new data has moved from a run's training data.

A run keeps a small description of its training inputs and predictions, the
*reference* (`reference_statistics`, saved in WORKDIR/reference/ by
`save_reference`); `compare` measures new data against it, one small function per
measure:

  psi   population stability index of binned counts, Σ (a - e) ln(a / e) over the
        bins' proportions (e: reference, a: new). Rules of thumb: below 0.1 stable,
        0.1 to 0.2 a moderate shift, above 0.2 a large one.
  ks    the two-sample Kolmogorov-Smirnov test of raw values (scipy's ks_2samp).
  mmd   the squared maximum mean discrepancy between two samples of vectors, with
        an RBF kernel and a permutation p-value: for embeddings, whose single
        coordinates mean nothing on their own.

What the reference holds, by the kind of input:

  kind="table"      features: the encoded input matrix the model sees. Per feature
                    a histogram whose bin edges are the training quantiles (PSI)
                    and a seeded subsample of the values (KS).
  kind="embedding"  features: the model's pooled representation of texts or
                    images. Its mean and variance per dimension (the new data and
                    the sample are standardised by them, so that no dimension's
                    scale dominates the kernel), a seeded subsample and the
                    kernel bandwidth (MMD).
  both              the label distribution, the predicted-class distribution, the
                    score's (the predicted class's probability, the positive
                    class's for two classes) histogram and subsample, and reference
                    metrics (the validation accuracy).

PSI is biased upwards on few examples, by about (bins - 1)(1/n_new + 1/n_ref) for
unchanged data: 0.09 for 10 bins and 100 new rows. Monitor batches of at least a
few hundred rows, or raise the threshold.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from typing import Any, TYPE_CHECKING

import numpy as np

from ctjax import plots
from ctjax import writers
from ctjax.errors import UserError

if TYPE_CHECKING:
  from matplotlib.figure import Figure

KINDS = ("table", "embedding")
FEATURE_BINS = 10
SCORE_BINS = 10
TABLE_SAMPLE = 2000      # rows of raw feature values kept for KS
EMBEDDING_SAMPLE = 1000  # embeddings kept for MMD: its cost grows as the square
SCORE_SAMPLE = 2000
# A bin that is empty on one side would make PSI infinite; its proportion is
# taken as this instead (the others are left as they are).
PSI_EPSILON = 1e-4
MMD_PERMUTATIONS = 200
REFERENCE_DIR = "reference"
REFERENCE_JSON = "reference.json"
REFERENCE_ARRAYS = "arrays.npz"


# --- Measures. --------------------------------------------------------------------

def quantile_edges(values: np.ndarray, bins: int = FEATURE_BINS) -> list[float]:
  """The inner bin edges at the quantiles 1/bins, ..., (bins-1)/bins of `values`,
  without repeats: a feature of few distinct values (a one-hot column) gets fewer
  bins, one per value. Each edge is a value itself (the inverse of the empirical
  distribution), never one interpolated between two: 0.3 would split no 0/1
  column's values and only make an empty bin."""
  inner = np.quantile(np.asarray(values, np.float64), np.arange(1, bins) / bins,
                      method="inverted_cdf")
  return [float(e) for e in np.unique(inner)]


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
  """Counts of `values` in the len(edges)+1 bins (-inf, e0], (e0, e1], ...,
  (e_last, inf): the outer bins are open, so new values beyond the training range
  still land in a bin."""
  bins = np.searchsorted(np.asarray(edges, np.float64), values, side="left")
  return np.bincount(bins, minlength=len(edges) + 1)


def psi(expected_counts: Sequence[float], actual_counts: Sequence[float],
        epsilon: float = PSI_EPSILON) -> float:
  """Population stability index of two histograms over the same bins.

  Σ (a_i - e_i) ln(a_i / e_i) over the bins' proportions, each proportion below
  `epsilon` taken as `epsilon` (an empty bin would make it infinite).
  """
  expected = np.asarray(expected_counts, np.float64)
  actual = np.asarray(actual_counts, np.float64)
  e = np.maximum(expected / expected.sum(), epsilon)
  a = np.maximum(actual / actual.sum(), epsilon)
  return float(np.sum((a - e) * np.log(a / e)))


def ks(reference: np.ndarray, new: np.ndarray) -> tuple[float, float]:
  """(statistic, p-value) of the two-sample Kolmogorov-Smirnov test."""
  # Imported here: scipy.stats takes a second or two, which every `ctjax`
  # command (this module is imported to parse `ctjax monitor`) would pay.
  from scipy import stats  # pylint: disable=g-import-not-at-top
  result = stats.ks_2samp(reference, new)
  return float(result.statistic), float(result.pvalue)


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  d = (np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :] - 2 * x @ y.T)
  return np.maximum(d, 0.0)  # Rounding can make a zero distance negative.


def median_bandwidth(x: np.ndarray) -> float:
  """The median heuristic: the median distance between two distinct rows of x."""
  x = np.asarray(x, np.float64)
  distances = np.sqrt(_squared_distances(x, x)[np.triu_indices(len(x), k=1)])
  median = float(np.median(distances)) if len(distances) else 0.0
  return median if median > 0 else 1.0  # All rows equal: any scale will do.


def _rbf(squared_distances: np.ndarray, bandwidth: float) -> np.ndarray:
  return np.exp(-squared_distances / (2.0 * bandwidth**2))


def _mmd_from_kernel(kernel: np.ndarray, in_x: np.ndarray) -> np.ndarray:
  """Unbiased squared MMD for each assignment of the pooled rows: `in_x` is
  [assignments, m + n] booleans, True for rows of x."""
  zx = in_x.astype(np.float64)
  zy = 1.0 - zx
  m, n = zx[0].sum(), zy[0].sum()
  kzx, kzy = kernel @ zx.T, kernel @ zy.T  # [m + n, assignments]
  diagonal = np.diag(kernel)
  # Sums over pairs i != j: all pairs less the diagonal.
  xx = np.einsum("ai,ia->a", zx, kzx) - zx @ diagonal
  yy = np.einsum("ai,ia->a", zy, kzy) - zy @ diagonal
  xy = np.einsum("ai,ia->a", zx, kzy)
  return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def mmd(x: np.ndarray, y: np.ndarray, bandwidth: float) -> float:
  """Unbiased estimate of the squared MMD between the distributions of the rows of
  x and y, with the kernel k(a, b) = exp(-|a - b|² / (2 bandwidth²)):

    1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j)
    - 2/(mn) Σ_{i,j} k(x_i, y_j)

  (Gretton et al. 2012, eq. 3); it can be slightly negative when they agree.
  """
  value, _ = mmd_test(x, y, bandwidth, permutations=0)
  return value


def mmd_test(x: np.ndarray, y: np.ndarray, bandwidth: float, *,
             permutations: int = MMD_PERMUTATIONS, seed: int = 0
             ) -> tuple[float, float]:
  """(squared MMD, permutation p-value) of x against y.

  The p-value is (1 + #{permutations with an MMD at least the observed}) /
  (1 + permutations): the rows of x and y pooled and reassigned at random, seeded,
  which needs no assumption about the distributions. 1.0 when permutations=0.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or len(y) < 2:
    raise ValueError(f"MMD needs at least 2 rows on each side; got {len(x)} and "
                     f"{len(y)}")
  pooled = np.concatenate([x, y])
  kernel = _rbf(_squared_distances(pooled, pooled), bandwidth)
  observed_in_x = np.arange(len(pooled)) < len(x)
  observed = float(_mmd_from_kernel(kernel, observed_in_x[None])[0])
  if permutations == 0:
    return observed, 1.0
  rng = np.random.default_rng(seed)
  shuffled = np.stack([rng.permutation(observed_in_x) for _ in range(permutations)])
  null = _mmd_from_kernel(kernel, shuffled)
  return observed, float((1 + np.sum(null >= observed)) / (1 + permutations))


# --- The reference. -------------------------------------------------------------

def predictions_and_scores(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(predicted class, score) of class probabilities [n, classes]: the score is the
  positive class's probability for two classes, else the predicted class's."""
  probabilities = np.asarray(probabilities, np.float64)
  predictions = np.argmax(probabilities, axis=1)
  if probabilities.shape[1] == 2:
    return predictions, probabilities[:, 1]
  return predictions, probabilities[np.arange(len(predictions)), predictions]


def _sample(rng: np.random.Generator, rows: np.ndarray, size: int) -> np.ndarray:
  """At most `size` rows, drawn without replacement, in their original order."""
  if len(rows) <= size:
    return np.asarray(rows)
  return np.asarray(rows)[np.sort(rng.choice(len(rows), size, replace=False))]


def _class_counts(classes: np.ndarray, num_classes: int) -> list[int]:
  return [int(c) for c in np.bincount(classes, minlength=num_classes)[:num_classes]]


def reference_statistics(features: np.ndarray, *, kind: str,
                         probabilities: np.ndarray,
                         labels: np.ndarray | None = None,
                         feature_names: Sequence[str] | None = None,
                         reference_metrics: dict[str, float] | None = None,
                         seed: int = 0) -> dict[str, Any]:
  """What a run keeps of its training data for drift monitoring.

  Args:
    features: [n, f] float: the encoded table the model sees (kind "table"), or
      the model's pooled representation (kind "embedding").
    kind: "table" or "embedding" (see the module's docstring).
    probabilities: [n, classes], the model's class probabilities on those rows.
    labels: [n] class ids of those rows, if known.
    feature_names: a name per table feature (default feature_0, ...).
    reference_metrics: what new labelled data is compared against, e.g.
      {"accuracy": the validation accuracy}.
    seed: seeds the subsamples.

  Returns:
    A dict of JSON values and NumPy arrays (the subsamples), for `save_reference`.
  """
  if kind not in KINDS:
    raise ValueError(f"kind={kind!r}: choose one of {', '.join(KINDS)}")
  features = np.asarray(features)  # Samples keep its dtype: float32 is half the size.
  rng = np.random.default_rng(seed)
  num_classes = int(np.shape(probabilities)[1])
  predictions, scores = predictions_and_scores(probabilities)
  score_edges = quantile_edges(scores, SCORE_BINS)
  reference = {
      "kind": kind, "num_examples": len(features), "num_classes": num_classes,
      "seed": seed,
      "labels": None if labels is None else
                {"counts": _class_counts(np.asarray(labels), num_classes)},
      "predictions": {"counts": _class_counts(predictions, num_classes)},
      "scores": {"edges": score_edges,
                 "counts": [int(c) for c in bin_counts(scores, score_edges)],
                 "sample": _sample(rng, scores, SCORE_SAMPLE)},
      "metrics": {k: float(v) for k, v in (reference_metrics or {}).items()},
  }
  if kind == "table":
    names = list(feature_names or [f"feature_{i}" for i in range(features.shape[1])])
    if len(names) != features.shape[1]:
      raise ValueError(f"{len(names)} feature names for {features.shape[1]} features")
    edges = [quantile_edges(column) for column in features.T]
    reference["table"] = {
        "names": names, "edges": edges,
        "counts": [[int(c) for c in bin_counts(column, e)]
                   for column, e in zip(features.T, edges)],
        "sample": _sample(rng, features, TABLE_SAMPLE)}
  else:
    mean = features.mean(axis=0, dtype=np.float64)
    variance = features.var(axis=0, dtype=np.float64)
    sample = _sample(rng, features, EMBEDDING_SAMPLE)
    reference["embedding"] = {
        "mean": mean, "variance": variance, "sample": sample,
        "bandwidth": median_bandwidth(_standardize(sample, mean, variance))}
  return reference


def _standardize(x: np.ndarray, mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
  # A dimension constant in training is only centred.
  return (x - mean) / np.sqrt(np.where(variance > 0, variance, 1.0))


def _split_arrays(tree: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
  """`tree` with each NumPy array replaced by its key in `arrays`."""
  if isinstance(tree, dict):
    return {k: _split_arrays(v, f"{prefix}{k}/", arrays) for k, v in tree.items()}
  if isinstance(tree, np.ndarray):
    arrays[prefix[:-1]] = tree
    return {"array": prefix[:-1]}
  return tree


def _join_arrays(tree: Any, arrays: Any) -> Any:
  if isinstance(tree, dict):
    if set(tree) == {"array"}:
      return arrays[tree["array"]]
    return {k: _join_arrays(v, arrays) for k, v in tree.items()}
  return tree


def save_reference(workdir: str, stats: dict[str, Any]) -> str:
  """Writes `stats` to WORKDIR/reference/: reference.json (what people read) and
  arrays.npz (the subsamples); returns the folder.

  Each file is written whole and renamed into place, the JSON last, holding the
  arrays' digest: a reader never pairs a JSON with arrays of another save.
  """
  directory = os.path.join(workdir, REFERENCE_DIR)
  os.makedirs(directory, exist_ok=True)
  arrays = {}
  small = _split_arrays(stats, "", arrays)
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  with writers.atomic_file(os.path.join(directory, REFERENCE_ARRAYS), "wb") as f:
    f.write(buffer.getvalue())
  small["arrays_sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
  with writers.atomic_file(os.path.join(directory, REFERENCE_JSON)) as f:
    json.dump(small, f, indent=1)
  return directory


def load_reference(workdir: str) -> dict[str, Any]:
  """What `save_reference` wrote in WORKDIR/reference/."""
  directory = os.path.join(workdir, REFERENCE_DIR)
  json_path = os.path.join(directory, REFERENCE_JSON)
  arrays_path = os.path.join(directory, REFERENCE_ARRAYS)
  retrain = ("train the run with config.reference_statistics=True (the default) "
             "and this version of ctjax; an interrupted run writes it when resumed")
  if not os.path.exists(json_path):
    raise UserError(f"{json_path}: missing, so there is no reference to compare "
                    f"against; {retrain}")
  try:
    with open(json_path, encoding="utf-8") as f:
      small = json.load(f)
    with open(arrays_path, "rb") as f:
      data = f.read()
    if hashlib.sha256(data).hexdigest() != small.pop("arrays_sha256"):
      raise ValueError(f"{REFERENCE_ARRAYS} belongs to another save")
    with np.load(io.BytesIO(data)) as arrays:
      return _join_arrays(small, dict(arrays))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{json_path}: unreadable ({e}); delete {directory} and "
                    f"{retrain}") from None


# --- Comparing new data. ----------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Thresholds:
  """What counts as drift; a row crosses where any of its measures passes."""
  psi: float = 0.2           # PSI above this
  ks_pvalue: float = 0.01    # KS p-value below this, divided by the number of
                             # table features (Bonferroni)
  mmd_pvalue: float = 0.01   # MMD permutation p-value below this
  accuracy_drop: float = 0.05  # accuracy below the reference's by more than this


@dataclasses.dataclass(frozen=True)
class Row:
  """One comparison. `check` is what is compared: "feature" (a table column),
  "embedding", "predictions" (the predicted classes), "scores", "labels" or
  "accuracy"; unmeasured fields are None."""
  check: str
  name: str
  psi: float | None = None
  test: str | None = None        # "ks" or "mmd"
  statistic: float | None = None  # KS statistic or squared MMD
  p_value: float | None = None
  reference: float | None = None  # accuracy of the reference and of the new data
  new: float | None = None
  crossed: tuple[str, ...] = ()  # the measures past their thresholds


@dataclasses.dataclass(frozen=True)
class DriftReport:
  """The rows of a comparison, and the scores for the plot."""
  kind: str
  num_examples: int
  reference_examples: int
  thresholds: Thresholds
  rows: list[Row]
  reference_scores: np.ndarray
  new_scores: np.ndarray

  @property
  def drifted(self) -> bool:
    return any(row.crossed for row in self.rows)

  @property
  def crossed(self) -> list[Row]:
    return [row for row in self.rows if row.crossed]


def _crossed(**conditions: bool) -> tuple[str, ...]:
  return tuple(name for name, crossed in conditions.items() if crossed)


def compare(reference: dict[str, Any], features: np.ndarray,
            probabilities: np.ndarray, labels: np.ndarray | None = None, *,
            thresholds: Thresholds = Thresholds(), seed: int = 0) -> DriftReport:
  """Measures new data against a reference (`reference_statistics`).

  Args:
    reference: the training data's statistics.
    features: [n, f] the new rows' features, of the reference's kind.
    probabilities: [n, classes] the model's class probabilities on them.
    labels: [n] their class ids, if known: the label distribution and the
      accuracy are compared too.
    thresholds: what counts as drift.
    seed: seeds the embeddings' subsample and the MMD permutations.
  """
  features = np.asarray(features, np.float64)
  num_classes = reference["num_classes"]
  if np.shape(probabilities)[1] != num_classes:
    raise UserError(f"the model gives {np.shape(probabilities)[1]} classes, the "
                    f"reference {num_classes}: compare with the run's own model")
  predictions, scores = predictions_and_scores(probabilities)
  rows = []
  if reference["kind"] == "table":
    rows += _table_rows(reference["table"], features, thresholds)
  else:
    rows.append(_embedding_row(reference["embedding"], features, thresholds, seed))
  predicted_psi = psi(reference["predictions"]["counts"],
                      _class_counts(predictions, num_classes))
  rows.append(Row("predictions", "predicted class", psi=predicted_psi,
                  crossed=_crossed(psi=predicted_psi > thresholds.psi)))
  score_psi = psi(reference["scores"]["counts"],
                  bin_counts(scores, reference["scores"]["edges"]))
  statistic, p_value = ks(reference["scores"]["sample"], scores)
  rows.append(Row("scores", "score", psi=score_psi, test="ks", statistic=statistic,
                  p_value=p_value,
                  crossed=_crossed(psi=score_psi > thresholds.psi,
                                   ks=p_value < thresholds.ks_pvalue)))
  if labels is not None:
    labels = np.asarray(labels)
    if reference["labels"] is not None:
      label_psi = psi(reference["labels"]["counts"], _class_counts(labels, num_classes))
      rows.append(Row("labels", "label", psi=label_psi,
                      crossed=_crossed(psi=label_psi > thresholds.psi)))
    accuracy = float(np.mean(predictions == labels))
    reference_accuracy = reference["metrics"].get("accuracy")
    rows.append(Row(
        "accuracy", "accuracy", reference=reference_accuracy, new=accuracy,
        crossed=_crossed(accuracy=reference_accuracy is not None and
                         accuracy < reference_accuracy - thresholds.accuracy_drop)))
  return DriftReport(kind=reference["kind"], num_examples=len(features),
                     reference_examples=reference["num_examples"],
                     thresholds=thresholds, rows=rows,
                     reference_scores=np.asarray(reference["scores"]["sample"]),
                     new_scores=scores)


def _table_rows(table: dict[str, Any], features: np.ndarray,
                thresholds: Thresholds) -> list[Row]:
  names = table["names"]
  if features.ndim != 2 or features.shape[1] != len(names):
    raise UserError(f"the new data has {features.shape[1:]} features per row, the "
                    f"reference {len(names)}: monitor data of the run's schema")
  # Bonferroni: with many features, some p-values are small by chance alone.
  ks_threshold = thresholds.ks_pvalue / len(names)
  rows = []
  for j, name in enumerate(names):
    value = psi(table["counts"][j], bin_counts(features[:, j], table["edges"][j]))
    statistic, p_value = ks(table["sample"][:, j], features[:, j])
    rows.append(Row("feature", name, psi=value, test="ks", statistic=statistic,
                    p_value=p_value,
                    crossed=_crossed(psi=value > thresholds.psi,
                                     ks=p_value < ks_threshold)))
  return rows


def _embedding_row(embedding: dict[str, Any], features: np.ndarray,
                   thresholds: Thresholds, seed: int) -> Row:
  mean, variance = embedding["mean"], embedding["variance"]
  if features.ndim != 2 or features.shape[1] != len(mean):
    raise UserError(f"the new data's embeddings have {features.shape[1:]} "
                    f"dimensions, the reference's {len(mean)}: compare with the "
                    "run's own model")
  new = _sample(np.random.default_rng(seed), features, EMBEDDING_SAMPLE)
  value, p_value = mmd_test(_standardize(embedding["sample"], mean, variance),
                            _standardize(new, mean, variance),
                            embedding["bandwidth"], seed=seed)
  return Row("embedding", "pooled representation", test="mmd", statistic=value,
             p_value=p_value, crossed=_crossed(mmd=p_value < thresholds.mmd_pvalue))


# --- Writing a report. ------------------------------------------------------------

COLUMNS = ("check", "name", "psi", "test", "statistic", "p_value", "reference",
           "new", "crossed")


def _cell(value: Any) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, tuple):
    return "+".join(value)
  return str(value)


def markdown(report: DriftReport) -> str:
  """The report as a markdown table, rows past a threshold in bold."""
  t = report.thresholds
  verdict = (f"**DRIFT**: {len(report.crossed)} of {len(report.rows)} checks "
             "crossed a threshold" if report.drifted else "no drift")
  lines = [
      f"# Drift: {verdict}", "",
      f"{report.num_examples} new examples against {report.reference_examples} "
      f"training examples ({report.kind}). Thresholds: PSI > {t.psi:g}, KS p < "
      f"{t.ks_pvalue:g} (over the features: Bonferroni), MMD p < {t.mmd_pvalue:g}, "
      f"accuracy drop > {t.accuracy_drop:g}.", "",
      "| " + " | ".join(COLUMNS) + " |",
      "|" + "---|" * len(COLUMNS)]
  for row in report.rows:
    cells = [_cell(getattr(row, c)) for c in COLUMNS]
    if row.crossed:
      cells = [f"**{c}**" if c else c for c in cells]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _json_value(value: Any) -> Any:
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return list(value) if isinstance(value, tuple) else value


def write_report(report: DriftReport, out_dir: str) -> dict[str, str]:
  """Writes drift.md, drift.csv, drift.json and drift.png into `out_dir`; returns
  {extension: path}."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {ext: os.path.join(out_dir, f"drift.{ext}")
           for ext in ("md", "csv", "json", "png")}
  writers.write_atomically(paths["md"], markdown(report))
  with writers.atomic_file(paths["csv"], newline="") as f:
    writer = csv.writer(f)
    writer.writerow(COLUMNS)
    for row in report.rows:  # Numbers in full: the CSV is for programs.
      writer.writerow(["" if getattr(row, c) is None else
                       "+".join(row.crossed) if c == "crossed" else getattr(row, c)
                       for c in COLUMNS])
  with writers.atomic_file(paths["json"]) as f:
    json.dump({"drifted": report.drifted, "kind": report.kind,
               "num_examples": report.num_examples,
               "reference_examples": report.reference_examples,
               "thresholds": dataclasses.asdict(report.thresholds),
               "rows": [{c: _json_value(getattr(row, c)) for c in COLUMNS}
                        for row in report.rows]}, f, indent=1)
  with writers.atomic_file(paths["png"], "wb") as f:
    _plot(report).savefig(f, format="png", dpi=100)
  return paths


def _plot(report: DriftReport) -> Figure:
  """PSI per table feature against the threshold, and the score histograms."""
  features = [row for row in report.rows if row.check == "feature"]
  figure = plots.new_figure(11 if features else 5.5, 4)
  axes = figure.subplots(1, 2 if features else 1, squeeze=False)[0]
  if features:
    ax = axes[0]
    ax.bar(range(len(features)), [row.psi for row in features],
           color=["tab:red" if "psi" in row.crossed else "tab:blue" for row in features])
    ax.axhline(report.thresholds.psi, color="black", linestyle="--",
               label=f"threshold {report.thresholds.psi:g}")
    ax.set_xticks(range(len(features)),
                  [row.name for row in features], rotation=90,
                  fontsize=max(4, min(8, 400 // len(features))))
    ax.set_ylabel("PSI")
    ax.set_title("PSI per feature (red: past the threshold)")
    ax.legend()
  ax = axes[-1]
  bins = np.linspace(0.0, 1.0, 21)
  ax.hist(report.reference_scores, bins=bins, density=True, alpha=0.5,
          label=f"training ({len(report.reference_scores)} sampled)")
  ax.hist(report.new_scores, bins=bins, density=True, alpha=0.5,
          label=f"new ({len(report.new_scores)})")
  ax.set_xlabel("score (positive class's probability, or the predicted class's)")
  ax.set_ylabel("density")
  ax.set_title("scores")
  ax.legend()
  return figure
