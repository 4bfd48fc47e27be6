"""Streaming classification metrics kept as sufficient statistics.

An exact evaluation over a dataset that does not divide into whole batches pads the
last batch and marks real examples with `mask` (1 real, 0 padding). The jitted eval
step turns each batch into sums (`classification_stats`); sums from successive
batches add up (`merge`), and because the step runs on global arrays the sums
already cover every host's share. Only at the end are the sums turned into ratios
(`summarize`), so the result does not depend on how the data was batched or sharded.

  stats = None
  for batch in eval_batches:
    s = eval_step(params, batch)    # jitted; calls classification_stats
    stats = s if stats is None else metrics.merge(stats, s)
  results = metrics.summarize(stats)

Counts are int32 and exact up to 2**31 examples (or tokens); the loss is summed in
float32.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


def classification_stats(logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                         num_classes: int | None = None) -> dict[str, jax.Array]:
  """Sums of loss, correct predictions and real examples over a padded batch.

  Works for one label per example ([B] labels) and one per token ([B, L] labels)
  alike: every leading dimension is summed over.

  Args:
    logits: [..., C] scores.
    labels: [...] integer classes; values at padded positions are ignored, whatever
      they are.
    mask: [...] 1 (or True) for real examples, 0 for padding.
    num_classes: when given, also returns the [C, C] confusion matrix.

  Returns:
    {"loss_sum": float32 sum of softmax cross-entropy, "correct": int32,
     "count": int32 number of real examples} and, with num_classes,
    "confusion": int32 [C, C] where confusion[t, p] counts real examples of true
    class t predicted as p (scikit-learn's layout).
  """
  real = jnp.asarray(mask).astype(bool)
  # jnp.where, not a product, so that a NaN loss at a padded position (garbage
  # logits, or a label such as -1 out of range) cannot leak into the sum.
  loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)
  predictions = jnp.argmax(logits, axis=-1)
  stats = {
      "loss_sum": jnp.sum(jnp.where(real, loss, 0.0)),
      "correct": jnp.sum(real & (predictions == labels), dtype=jnp.int32),
      "count": jnp.sum(real, dtype=jnp.int32),
  }
  if num_classes is not None:
    # confusion[label, prediction] += 1 for every real example. Padded positions
    # add 0 wherever their labels point, and mode="drop" skips out-of-range ones.
    stats["confusion"] = jnp.zeros((num_classes, num_classes), jnp.int32).at[
        jnp.ravel(labels), jnp.ravel(predictions)].add(
            jnp.ravel(real).astype(jnp.int32), mode="drop")
  return stats


def merge(a: dict, b: dict) -> dict:
  """Adds two stats dicts key by key; jax or numpy arrays, jit-able."""
  return jax.tree.map(lambda x, y: x + y, a, b)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator with 0/0 = 0, as scikit-learn's zero_division=0."""
  return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                   where=denominator != 0)


def _mean_over(values: np.ndarray, classes: np.ndarray) -> float:
  """The mean of `values` over the selected classes; 0 when none is selected."""
  return values[classes].mean() if classes.any() else 0.0


def summarize(stats: dict, *, bits_per_byte: bool = False) -> dict[str, float]:
  """Turns merged statistics into metrics.

  Args:
    stats: from `classification_stats`, merged over the whole evaluation.
    bits_per_byte: also report the loss in bits, which for a byte-level language
      model (one token is one byte) is bits per byte.

  Returns:
    {"loss", "accuracy"} (NaN when there were no examples); with a confusion matrix
    also "macro_precision", "macro_recall", "macro_f1" and "balanced_accuracy"; with
    bits_per_byte also "bits_per_byte".

    Macro averages run over the classes that occur among the labels or the
    predictions, and balanced accuracy is the mean recall over the classes that
    occur among the labels: scikit-learn's definitions, so that classes absent from
    a small evaluation set do not count as zeros.
  """
  stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  count = stats["count"]
  with np.errstate(invalid="ignore", divide="ignore"):
    results = {"loss": stats["loss_sum"] / count,
               "accuracy": stats["correct"] / count}
  if bits_per_byte:
    results["bits_per_byte"] = results["loss"] / math.log(2)
  if "confusion" in stats:
    confusion = stats["confusion"]
    true_positives = np.diag(confusion)
    per_label = confusion.sum(axis=1)        # true positives + false negatives
    per_prediction = confusion.sum(axis=0)   # true positives + false positives
    precision = _ratio(true_positives, per_prediction)
    recall = _ratio(true_positives, per_label)
    f1 = _ratio(2 * true_positives, per_label + per_prediction)
    seen = (per_label + per_prediction) > 0
    results["macro_precision"] = _mean_over(precision, seen)
    results["macro_recall"] = _mean_over(recall, seen)
    results["macro_f1"] = _mean_over(f1, seen)
    results["balanced_accuracy"] = _mean_over(recall, per_label > 0)
  return {k: float(v) for k, v in results.items()}
