"""Multi-label classification: each example has any subset of C labels.

Labels are [batch, C] 0/1 vectors (the data layer makes them from a list of label
names in JSON Lines, or from 0/1 columns of a table). The model gives one logit per
label; a label is predicted when its probability (the sigmoid) is at least 0.5.

The statistics (sums over the real examples of a padded batch; C labels), what
turns each on, and their size:

  always               loss_sum, count, exact_match, true_positives,
                       false_positives, false_negatives [C], ranking_precision_sum
                                                                 12·C + 20 bytes
  top_k=(k, ...)       hits_at{k}, recall_at{k}_sum, with_labels   12 bytes each k
  auc_bins=B           auc_histogram [C, 2, B] int32               8·C·B bytes

`summarize` turns them into the scikit-learn metrics named in its docstring.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ctjax import metrics


# The metrics a final summary line and the slices report, where present.
HEADLINE = ("subset_accuracy", "micro_f1", "macro_f1",
            "label_ranking_average_precision", "mean_average_precision")

def per_example_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Sigmoid cross-entropy, the mean over the C labels: [batch]."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), labels.astype(jnp.float32)), axis=-1)


def predict(logits: jax.Array) -> dict[str, jax.Array]:
  """Per-label probabilities, and the labels predicted (probability >= 0.5)."""
  return {"scores": jax.nn.sigmoid(logits.astype(jnp.float32)),
          "prediction": (logits >= 0).astype(jnp.int32)}


def check_labels(label: np.ndarray) -> str | None:
  if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
    return (f"labels have shape {label.shape[1:]} and dtype {label.dtype}; "
            "multilabel needs a 0/1 vector of the labels per example (see the data "
            "source's label options)")
  return None


def stats(logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
          top_k: tuple[int, ...] = (), auc_bins: int | None = None
          ) -> dict[str, jax.Array]:
  """Sums over the real examples of a padded batch.

  Args:
    logits: [B, C] scores.
    labels: [B, C] 0/1; ignored at padded positions, whatever they hold.
    mask: [B] weights: 1 real, 0 padding (or integer counts; see ctjax.tasks).
    top_k: for each k, precision@k and recall@k: how many of the k highest-scored
      labels are true.
    auc_bins: per-label histograms of the probability over this many bins of
      [0, 1], for per-label ROC-AUC and average precision (and their mean, mAP).
  """
  logits = logits.astype(jnp.float32)
  weight = jnp.asarray(mask).astype(jnp.int32)
  real = weight > 0
  truth = jnp.where(real[:, None], labels, 0).astype(bool)
  predicted = real[:, None] & (logits >= 0)
  w = weight[:, None]
  loss = per_example_loss(logits, truth)
  result = {
      "loss_sum": jnp.sum(jnp.where(real, loss * weight, 0.0)),
      "count": jnp.sum(weight),
      "exact_match": jnp.sum(jnp.where(
          real & jnp.all(predicted == truth, axis=1), weight, 0)),
      "true_positives": jnp.sum(jnp.where(predicted & truth, w, 0), axis=0),
      "false_positives": jnp.sum(jnp.where(predicted & ~truth, w, 0), axis=0),
      "false_negatives": jnp.sum(jnp.where(~predicted & truth, w, 0), axis=0),
      "ranking_precision_sum": jnp.sum(
          jnp.where(real, _ranking_precision(logits, truth) * weight, 0.0)),
  }
  if top_k:
    # Rank of each label: how many labels score strictly above it (ties favour it).
    rank = jnp.sum(logits[:, None, :] > logits[:, :, None], axis=-1)
    num_true = jnp.sum(truth, axis=1)
    for k in top_k:
      hits = jnp.sum(truth & (rank < k), axis=1)
      result[f"hits_at{k}"] = jnp.sum(jnp.where(real, hits * weight, 0))
      result[f"recall_at{k}_sum"] = jnp.sum(jnp.where(
          num_true > 0, hits / jnp.maximum(num_true, 1) * weight, 0.0))
    result["with_labels"] = jnp.sum(jnp.where(num_true > 0, weight, 0))
  if auc_bins:
    # metrics' per-class histograms, with each label's own positives: [C, 2, B].
    probabilities = jnp.where(real[:, None], jax.nn.sigmoid(logits), 0.0)
    num_labels = logits.shape[1]
    labels_index = jnp.broadcast_to(jnp.arange(num_labels), logits.shape)
    result["auc_histogram"] = jnp.zeros((num_labels, 2, auc_bins), jnp.int32).at[
        labels_index, truth.astype(jnp.int32),
        metrics.bin_index(probabilities, auc_bins)].add(
            jnp.broadcast_to(w, logits.shape), mode="drop")
  return result


def _ranking_precision(logits: jax.Array, truth: jax.Array) -> jax.Array:
  """[B] scikit-learn's label ranking average precision of each example.

  For each true label j: of the labels scored at least as high as j, the fraction
  that are true; averaged over the true labels. 1 for an example with no true
  label or with all labels true (scikit-learn's convention). O(C²) per example.
  """
  at_least = logits[:, None, :] >= logits[:, :, None]  # [B, j, l]: s_l >= s_j
  above = jnp.sum(at_least, axis=-1)
  true_above = jnp.sum(at_least & truth[:, None, :], axis=-1)
  precision = jnp.where(truth, true_above / above, 0.0)
  num_true = jnp.sum(truth, axis=1)
  trivial = (num_true == 0) | (num_true == truth.shape[1])
  return jnp.where(trivial, 1.0,
                   jnp.sum(precision, axis=1) / jnp.maximum(num_true, 1))


def per_class(stats: dict) -> dict[str, np.ndarray]:
  """Per label: "precision", "recall", "f1", "support" (true examples),
  "predicted", and with auc_bins "roc_auc", "average_precision" and their
  "..._bin_error_bound" (see metrics.per_class; NaN for a label without positives
  or without negatives)."""
  stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  tp, fp, fn = (stats[k] for k in ("true_positives", "false_positives",
                                   "false_negatives"))
  confusion_like = {"precision": metrics.ratio(tp, tp + fp),
                    "recall": metrics.ratio(tp, tp + fn),
                    "f1": metrics.ratio(2 * tp, 2 * tp + fp + fn),
                    "support": tp + fn, "predicted": tp + fp}
  if "auc_histogram" in stats:
    confusion_like.update(metrics.binned_ranking(stats["auc_histogram"]))
  return confusion_like


def summarize(stats: dict) -> dict[str, float]:
  """Scalar metrics (n real examples, C labels), scikit-learn's definitions:

    loss: mean over examples of the mean sigmoid cross-entropy over labels.
    subset_accuracy: fraction of examples whose predicted label set is exact
      (accuracy_score).
    hamming_loss: fraction of (example, label) pairs predicted wrong.
    micro_precision, micro_recall, micro_f1: from the counts summed over labels;
    macro_precision, macro_recall, macro_f1: means over all labels (0 for 0/0,
      precision_recall_fscore_support with zero_division=0).
    label_ranking_average_precision: label_ranking_average_precision_score, exact.
    precision_at{k}: mean over examples of (true labels among the k highest) / k.
    recall_at{k}: mean over examples with a true label of (true labels among the
      k highest) / (true labels).
    mean_average_precision, roc_auc_macro (auc_bins): means over the labels with
      positives and negatives of per_class's, from binned scores, and their
      "..._bin_error_bound" (the mean of the labels' bounds).
  """
  labels = per_class(stats)
  s = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  n, num_labels = s["count"], s["true_positives"].shape[0]
  tp, fp, fn = (s[k].sum() for k in ("true_positives", "false_positives",
                                     "false_negatives"))
  with np.errstate(invalid="ignore", divide="ignore"):
    results = {"loss": s["loss_sum"] / n, "subset_accuracy": s["exact_match"] / n,
               "hamming_loss": (fp + fn) / (n * num_labels),
               "label_ranking_average_precision": s["ranking_precision_sum"] / n}
    for key in s:
      if key.startswith("hits_at"):
        k = int(key.removeprefix("hits_at"))
        results[f"precision_at{k}"] = s[key] / (n * k)
        results[f"recall_at{k}"] = s[f"recall_at{k}_sum"] / s["with_labels"]
  results.update(micro_precision=metrics.ratio(tp, tp + fp),
                 micro_recall=metrics.ratio(tp, tp + fn),
                 micro_f1=metrics.ratio(2 * tp, 2 * tp + fp + fn))
  for name in ("precision", "recall", "f1"):
    results[f"macro_{name}"] = labels[name].mean()
  if "auc_histogram" in s:
    for name, label_key in (("mean_average_precision", "average_precision"),
                            ("roc_auc_macro", "roc_auc")):
      for suffix in ("", "_bin_error_bound"):
        values = labels[label_key + suffix]
        results[name + suffix] = metrics.mean_over(values, ~np.isnan(values),
                                                   empty=math.nan)
  return {k: float(v) for k, v in results.items()}
