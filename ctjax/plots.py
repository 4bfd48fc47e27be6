"""PNG plots of a run and of one evaluation, in WORKDIR/plots/.

  paths = plots.write_plots(workdir, eval_dir)   # eval_dir: WORKDIR/eval/<tag>/<split>

From WORKDIR/metrics.jsonl: the training and validation curves (loss and the main
metrics against the step). From the evaluation folder (metrics.json, stats.npz,
predictions.jsonl; see the README's workdir contract), whichever its statistics
allow:

  classification  ROC and precision-recall curves (from the binned scores of
                  "auc_histogram"), the confusion matrix, the reliability diagram
                  (from the calibration bins)
  multilabel      ROC and precision-recall curves per label, ROC-AUC per label
  regression      predicted against true values, and the residuals' histogram
  any task        per-slice metrics with their confidence intervals

A plot whose statistics are absent is skipped, and the reason is logged (and
appended to `skipped` when given): the evaluation decides what it measures, the
plots show what there is.

Figures are `matplotlib.figure.Figure` objects drawn by the Agg canvas, never
pyplot's: pyplot keeps every figure in global state until closed, and picks an
interactive backend where a display exists. Matplotlib is imported as the
first figure is drawn: it costs most commands (and every test process) 0.7 s.
"""
from __future__ import annotations

import json
import logging
import os
import re
from typing import TYPE_CHECKING

import numpy as np

from ctjax import metrics as metrics_lib
from ctjax import writers
from ctjax.errors import UserError

if TYPE_CHECKING:
  from matplotlib.figure import Figure

# The metrics plotted against the step, besides the loss, in this order of
# preference; the first few present are shown.
MAIN_METRICS = ("accuracy", "subset_accuracy", "roc_auc", "roc_auc_ovr",
                "roc_auc_macro", "average_precision", "average_precision_ovr",
                "mean_average_precision", "macro_f1", "r2", "rmse", "mae",
                "perplexity", "bits_per_byte")
_MAX_CURVE_PANELS = 4
# Beyond this many classes a legend (or a confusion matrix's numbers) is clutter.
_MAX_LEGEND_CLASSES = 10
_MAX_ANNOTATED_CLASSES = 20
_DPI = 100


def write_plots(workdir: str, eval_dir: str | None,
                skipped: list[str] | None = None) -> list[str]:
  """Writes every plot the files allow into WORKDIR/plots/; returns their paths.

  Args:
    workdir: the run's folder (metrics.jsonl, and plots/ is written there).
    eval_dir: an evaluation folder, WORKDIR/eval/<tag>/<split>; None for the
      training curves alone.
    skipped: when given, one line is appended per plot left out, saying why.

  Returns:
    The paths of the PNG files written, training curves first.
  """
  skipped = [] if skipped is None else skipped
  out_dir = os.path.join(workdir, "plots")
  os.makedirs(out_dir, exist_ok=True)
  written = []

  def save(figure: Figure | None, name: str, why_not: str) -> None:
    if figure is None:
      skipped.append(f"{name}: {why_not}")
      logging.info("plots: no %s plot: %s", name, why_not)
      return
    path = os.path.join(out_dir, f"{name}.png")
    figure.savefig(path, dpi=_DPI)
    written.append(path)

  save(training_curves(writers.read_metrics(workdir)),
       "training_curves", "metrics.jsonl has no loss or metric to plot")
  if eval_dir is None:
    return written
  evaluation = read_evaluation(eval_dir)
  prefix = _file_prefix(eval_dir, evaluation["metrics"])
  title = _eval_title(evaluation["metrics"])
  stats, info = evaluation["stats"], evaluation["metrics"]
  names = info.get("class_names")
  task = info.get("task", "classification")
  no_histogram = ("stats.npz has no auc_histogram (set auc_bins in the "
                  "config.evaluators entry)")
  if task in ("classification", "multilabel"):
    multilabel = task == "multilabel"
    save(roc_curves(stats, names, title, multilabel=multilabel), f"{prefix}_roc",
         no_histogram)
    save(precision_recall_curves(stats, names, title, multilabel=multilabel),
         f"{prefix}_precision_recall", no_histogram)
  if task == "classification":
    save(confusion_matrix(stats, names, title), f"{prefix}_confusion_matrix",
         "stats.npz has no confusion matrix")
    save(reliability_diagram(stats, title), f"{prefix}_reliability",
         "stats.npz has no calibration bins (set calibration_bins in the "
         "config.evaluators entry)")
  elif task == "multilabel":
    save(per_label_auc(info, title), f"{prefix}_per_label_auc",
         "metrics.json has no per-label roc_auc")
  elif task == "regression":
    pairs = _regression_pairs(evaluation["predictions"])
    save(None if pairs is None else predicted_vs_true(*pairs, title),
         f"{prefix}_predicted_vs_true", "no predictions.jsonl")
    save(None if pairs is None else residual_histogram(*pairs, title),
         f"{prefix}_residuals", "no predictions.jsonl")
  slices = info.get("slices") or {}
  if not slices:
    save(None, f"{prefix}_slices", "metrics.json has no slices")
  for slice_name, summary in slices.items():
    save(slice_metrics(slice_name, summary, title),
         f"{prefix}_slice_{safe_name(slice_name)}", "no groups with metrics")
  return written


# Reading the files.


def read_evaluation(eval_dir: str) -> dict:
  """{"metrics": metrics.json, "stats": stats.npz arrays, "predictions": [...]}.

  stats.npz and predictions.jsonl may be absent ({} and None).
  """
  path = os.path.join(eval_dir, "metrics.json")
  if not os.path.exists(path):
    raise UserError(f"{path}: no such file; give an evaluation folder, "
                    "WORKDIR/eval/<tag>/<split>, that an evaluation wrote")
  with open(path, encoding="utf-8") as f:
    info = json.load(f)
  stats = {}
  stats_path = os.path.join(eval_dir, "stats.npz")
  if os.path.exists(stats_path):
    with np.load(stats_path, allow_pickle=False) as npz:
      stats = {k: npz[k] for k in npz.files}
  predictions = None
  predictions_path = os.path.join(eval_dir, "predictions.jsonl")
  if os.path.exists(predictions_path):
    with open(predictions_path, encoding="utf-8") as f:
      predictions = [json.loads(line) for line in f if line.strip()]
  return {"metrics": info, "stats": stats, "predictions": predictions}


def _file_prefix(eval_dir: str, info: dict) -> str:
  """'<tag>_<split>' from WORKDIR/eval/<tag>/<split>: plots of two evaluations
  share plots/ without overwriting each other."""
  tag = os.path.basename(os.path.dirname(os.path.normpath(eval_dir)))
  return safe_name(f"{tag}_{info.get('split', os.path.basename(eval_dir))}")


def safe_name(text: str) -> str:
  """`text` as a file name: runs of other characters than letters, digits and
  _ . - become one "-"."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "unnamed"


def _eval_title(info: dict) -> str:
  step = f", step {info['step']}" if info.get("step") is not None else ""
  return f"{info.get('split', '?')} split{step}"


def _class_name(names: list[str] | None, c: int) -> str:
  return str(names[c]) if names and c < len(names) else str(c)


def new_figure(width: float, height: float) -> Figure:
  """An empty figure of this size in inches, laid out to fit its labels."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top,redefined-outer-name
  return Figure(figsize=(width, height), layout="constrained")


# Training curves.


def training_curves(records: list[dict]) -> Figure | None:
  """Loss and the main metrics against the step, one panel each, one line per split.

  Keys are "<split>/<metric>" (train/loss, validation/accuracy, ...); training
  throughput, learning rate and bin error bounds are not curves a reader compares.
  """
  series: dict[str, dict[str, tuple[list, list]]] = {}
  for record in records:
    step = record.get("step")
    for key, value in record.items():
      if "/" not in key or not isinstance(value, (int, float)):
        continue
      split, name = key.split("/", 1)
      steps, values = series.setdefault(name, {}).setdefault(split, ([], []))
      steps.append(step)
      values.append(value)
  names = [n for n in ("loss",) + MAIN_METRICS if n in series][:_MAX_CURVE_PANELS]
  if not names:
    return None
  # One colour per split in every panel, training first.
  splits = sorted({s for name in names for s in series[name]},
                  key=lambda s: (s != "train", s))
  colours = {split: f"C{i}" for i, split in enumerate(splits)}
  figure = new_figure(4.2 * len(names), 3.6)
  axes = figure.subplots(1, len(names), squeeze=False)[0]
  for ax, name in zip(axes, names):
    for split in sorted(series[name], key=splits.index):
      steps, values = series[name][split]
      # Evaluations are sparse: markers show where each was taken.
      ax.plot(steps, values, label=split, color=colours[split],
              marker=None if len(steps) > 50 else "o", markersize=3)
    ax.set_title(name.replace("_", " "))
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  figure.suptitle("Training and evaluation curves")
  return figure


# Ranking: ROC and precision-recall from the binned scores.


def roc_from_histogram(histogram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(false positive rates, true positive rates) of one class's [2, B] histogram.

  One point per non-empty bin, thresholds from the highest bin down, after (0, 0):
  exactly scikit-learn's roc_curve(drop_intermediate=False) of the scores rounded
  to their bins.
  """
  negatives, positives = np.asarray(histogram, np.float64)
  occupied = (negatives + positives)[::-1] > 0
  tp = np.cumsum(positives[::-1])[occupied]
  fp = np.cumsum(negatives[::-1])[occupied]
  return (np.r_[0.0, fp / max(negatives.sum(), 1)],
          np.r_[0.0, tp / max(positives.sum(), 1)])


def precision_recall_from_histogram(histogram: np.ndarray
                                    ) -> tuple[np.ndarray, np.ndarray]:
  """(precision, recall) of one class's [2, B] histogram, recall decreasing.

  scikit-learn's precision_recall_curve of the binned scores: one point per
  non-empty bin from the lowest threshold up, then (precision 1, recall 0).
  """
  negatives, positives = np.asarray(histogram, np.float64)
  occupied = (negatives + positives)[::-1] > 0
  tp = np.cumsum(positives[::-1])[occupied]
  fp = np.cumsum(negatives[::-1])[occupied]
  precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
  recall = tp / max(positives.sum(), 1)
  return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def _ranking_figure(stats: dict, names: list[str] | None, title: str, kind: str,
                    multilabel: bool) -> Figure | None:
  """ROC ("roc") or precision-recall ("pr") curves from stats["auc_histogram"].

  Two classes: class 1 against class 0, as the metrics report it. More classes:
  each against the rest; multilabel: each label. Classes without positives or
  without negatives have no curve.
  """
  histogram = stats.get("auc_histogram")
  if histogram is None:
    return None
  binary = not multilabel and histogram.shape[0] == 2
  has_both = (histogram.sum(-1) > 0).all(-1)
  classes = [1] if binary else [int(c) for c in np.flatnonzero(has_both)]
  per_class = metrics_lib.per_class({"auc_histogram": histogram})
  many = len(classes) > _MAX_LEGEND_CLASSES
  # Precision-recall curves of several classes fill the square: legend beside it.
  legend_beside = kind == "pr" and not binary and not many
  figure = new_figure(8 if legend_beside else 6, 5.2)
  ax = figure.subplots()
  for c in classes:
    label = (f"{_class_name(names, c)}: AUC {per_class['roc_auc'][c]:.3f}"
             if kind == "roc" else
             f"{_class_name(names, c)}: AP {per_class['average_precision'][c]:.3f}")
    style = {"color": "tab:blue", "alpha": 0.3, "linewidth": 1} if many else {}
    if kind == "roc":
      ax.plot(*roc_from_histogram(histogram[c]), label=label, **style)
    else:
      precision, recall = precision_recall_from_histogram(histogram[c])
      ax.step(recall, precision, where="post", label=label, **style)
  what = ("each label" if multilabel else
          f"class {_class_name(names, 1)} vs {_class_name(names, 0)}" if binary
          else "one class vs the rest")
  binned = f"scores binned in {histogram.shape[-1]} bins"
  if kind == "roc":
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1,
            label="chance")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC, {what}\n{title}; {binned}")
  else:
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall, {what}\n{title}; {binned}")
  ax.set_xlim(-0.01, 1.01)
  ax.set_ylim(-0.01, 1.01)
  ax.grid(alpha=0.3)
  if legend_beside:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
  elif not many:
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize="small")
  return figure


def roc_curves(stats: dict, names: list[str] | None, title: str, *,
               multilabel: bool = False) -> Figure | None:
  """ROC curves from "auc_histogram", legend with each class's ROC-AUC."""
  return _ranking_figure(stats, names, title, "roc", multilabel)


def precision_recall_curves(stats: dict, names: list[str] | None, title: str, *,
                            multilabel: bool = False) -> Figure | None:
  """Precision-recall curves from "auc_histogram", legend with average precision."""
  return _ranking_figure(stats, names, title, "pr", multilabel)


# Confusion matrix and calibration.


def confusion_matrix(stats: dict, names: list[str] | None,
                     title: str) -> Figure | None:
  """Counts, true classes as rows and predictions as columns (scikit-learn's)."""
  confusion = stats.get("confusion")
  if confusion is None:
    return None
  num_classes = confusion.shape[0]
  size = min(4 + 0.45 * num_classes, 14)
  figure = new_figure(size + 1, size)
  ax = figure.subplots()
  image = ax.imshow(confusion, cmap="Blues")
  figure.colorbar(image, ax=ax, label="examples", shrink=0.8)
  labels = [_class_name(names, c) for c in range(num_classes)]
  if num_classes <= _MAX_ANNOTATED_CLASSES:
    ax.set_xticks(range(num_classes), labels, rotation=45, ha="right")
    ax.set_yticks(range(num_classes), labels)
    threshold = confusion.max() / 2
    for t in range(num_classes):
      for p in range(num_classes):
        ax.text(p, t, str(int(confusion[t, p])), ha="center", va="center",
                fontsize="small",
                color="white" if confusion[t, p] > threshold else "black")
  ax.set_xlabel("predicted class")
  ax.set_ylabel("true class")
  accuracy = np.trace(confusion) / max(confusion.sum(), 1)
  ax.set_title(f"Confusion matrix ({title})\n{int(confusion.sum())} examples, "
               f"accuracy {accuracy:.3f}")
  return figure


def reliability_diagram(stats: dict, title: str) -> Figure | None:
  """Accuracy against confidence per bin, the diagonal, and each bin's count."""
  if "calibration_count" not in stats:
    return None
  count = np.asarray(stats["calibration_count"], np.float64)
  confidence = np.asarray(stats["calibration_confidence"], np.float64)
  correct = np.asarray(stats["calibration_correct"], np.float64)
  bins = len(count)
  edges = np.linspace(0, 1, bins + 1)
  occupied = count > 0
  accuracy = np.divide(correct, count, out=np.zeros_like(count), where=occupied)
  mean_confidence = np.divide(confidence, count, out=np.zeros_like(count),
                              where=occupied)
  # The same sum as metrics.summarize's expected_calibration_error.
  ece = np.abs(correct - confidence).sum() / max(count.sum(), 1)
  figure = new_figure(6, 6.4)
  top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  top.bar(edges[:-1][occupied], accuracy[occupied], width=1 / bins, align="edge",
          edgecolor="black", color="tab:blue", alpha=0.7, label="accuracy in bin")
  top.plot(mean_confidence[occupied], accuracy[occupied], "o", color="tab:red",
           markersize=4, label="mean confidence in bin")
  top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
  top.set_ylabel("accuracy")
  top.set_ylim(0, 1)
  top.legend(loc="upper left", fontsize="small")
  top.grid(alpha=0.3)
  top.set_title(f"Reliability diagram ({title})\nexpected calibration error "
                f"{ece:.4f} over {bins} bins")
  bottom.bar(edges[:-1], count, width=1 / bins, align="edge", edgecolor="black",
             color="tab:grey")
  bottom.set_xlabel("confidence (highest class probability)")
  bottom.set_ylabel("examples")
  bottom.set_xlim(0, 1)
  return figure


# Multilabel and regression.


def per_label_auc(info: dict, title: str) -> Figure | None:
  """A bar per label: its ROC-AUC (from metrics.json's per_class)."""
  auc = (info.get("per_class") or {}).get("roc_auc")
  if not auc:
    return None
  names = [_class_name(info.get("class_names"), c) for c in range(len(auc))]
  values = np.array([np.nan if v is None else v for v in auc], np.float64)
  figure = new_figure(max(5, 0.4 * len(auc) + 2), 4.5)
  ax = figure.subplots()
  ax.bar(range(len(auc)), np.nan_to_num(values), color="tab:blue")
  ax.axhline(0.5, linestyle="--", color="grey", linewidth=1, label="chance")
  ax.set_xticks(range(len(auc)), names, rotation=45, ha="right")
  ax.set_ylim(0, 1)
  ax.set_ylabel("ROC-AUC")
  ax.set_xlabel("label")
  ax.legend()
  ax.set_title(f"ROC-AUC per label ({title})")
  return figure


def _regression_pairs(predictions: list[dict] | None
                      ) -> tuple[np.ndarray, np.ndarray] | None:
  if not predictions:
    return None
  # Several targets per example: every target's values, together.
  true = np.array([p["label"] for p in predictions], np.float64)
  predicted = np.array([p["prediction"] for p in predictions], np.float64)
  return true.ravel(), predicted.ravel()


def predicted_vs_true(true: np.ndarray, predicted: np.ndarray,
                      title: str) -> Figure:
  """A scatter of predicted against true values, with the line y = x."""
  figure = new_figure(5.5, 5.5)
  ax = figure.subplots()
  ax.scatter(true, predicted, s=8, alpha=0.5, rasterized=True)
  low, high = min(true.min(), predicted.min()), max(true.max(), predicted.max())
  ax.plot([low, high], [low, high], "--", color="grey", label="prediction = truth")
  ax.set_xlabel("true value")
  ax.set_ylabel("predicted value")
  ax.legend()
  ax.grid(alpha=0.3)
  ax.set_title(f"Predicted vs true ({title}), {len(true)} examples")
  return figure


def residual_histogram(true: np.ndarray, predicted: np.ndarray,
                       title: str) -> Figure:
  """The distribution of prediction - truth."""
  residuals = predicted - true
  figure = new_figure(6, 4.5)
  ax = figure.subplots()
  ax.hist(residuals, bins=min(50, max(10, len(residuals) // 10)), color="tab:blue",
          edgecolor="black")
  ax.axvline(0, color="grey", linestyle="--")
  ax.set_xlabel("residual (predicted - true)")
  ax.set_ylabel("examples")
  ax.set_title(f"Residuals ({title})\nmean {residuals.mean():.4g}, "
               f"std {residuals.std():.4g}")
  return figure


# Slices.


def slice_metric_names(summary: dict, limit: int) -> list[str]:
  """The metrics of a slice summary's groups worth showing, at most `limit`.

  The loss and MAIN_METRICS first, in that order, then the others; bin error
  bounds are not metrics to compare groups by.
  """
  names = []
  for group in summary.get("groups") or []:
    names += [n for n in group.get("metrics", {})
              if n not in names and not n.endswith("_bin_error_bound")]
  preferred = [n for n in ("loss",) + MAIN_METRICS if n in names]
  return (preferred + [n for n in names if n not in preferred])[:limit]


def slice_metrics(slice_name: str, summary: dict, title: str) -> Figure | None:
  """Each group's metrics with their bootstrap intervals, one panel per metric.

  `summary` is ctjax.slices' summary of one slice: groups with values and
  intervals, warnings for groups too small to say much, and the best-worst gap.
  A group with a warning is drawn hollow and marked "(!)".
  """
  groups = summary.get("groups") or []
  names = slice_metric_names(summary, _MAX_CURVE_PANELS)
  if not names:
    return None
  labels = [f"{g['name']} (n={g['count']})" + (" (!)" if g.get("warning") else "")
            for g in groups]
  figure = new_figure(4 * len(names) + 1.5, max(3.2, 1.6 + 0.45 * len(groups)))
  axes = figure.subplots(1, len(names), squeeze=False, sharey=True)[0]
  positions = np.arange(len(groups))
  for ax, name in zip(axes, names):
    for y, group in zip(positions, groups):
      metric = group.get("metrics", {}).get(name)
      if metric is None or metric.get("value") is None:
        continue
      value = metric["value"]
      low = value if metric.get("low") is None else metric["low"]
      high = value if metric.get("high") is None else metric["high"]
      warned = bool(group.get("warning"))
      ax.errorbar(value, y, xerr=[[value - low], [high - value]], fmt="o",
                  capsize=4, color="tab:orange" if warned else "tab:blue",
                  markerfacecolor="white" if warned else "tab:blue")
    # One group has no gap to speak of.
    gap = (summary.get("gap") or {}).get(name) if len(groups) > 1 else None
    ax.set_title(name.replace("_", " ") + (
        f"\ngap {gap['value']:.3g} (best {gap['best']}, worst {gap['worst']})"
        if gap and gap.get("value") is not None else ""), fontsize="medium")
    ax.set_xlabel(name)
    ax.grid(alpha=0.3, axis="x")
  axes[0].set_yticks(positions, labels)
  axes[0].invert_yaxis()
  confidence = summary.get("confidence", 0.95)
  figure.suptitle(f"Slice '{slice_name}' ({title}): {confidence:.0%} bootstrap "
                  f"intervals, {summary.get('resamples', '?')} resamples")
  return figure
