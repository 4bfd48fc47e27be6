"""Streaming classification metrics kept as sufficient statistics.

An exact evaluation over a dataset that does not divide into whole batches pads the
last batch and marks real examples with `mask` (1 real, 0 padding). The jitted eval
step turns each batch into sums (`classification_stats`); sums from successive
batches add up (`merge`), and because the step runs on global arrays the sums
already cover every host's share. Only at the end are the sums turned into ratios
(`summarize` for scalars, `per_class` for one value per class), so the result does
not depend on how the data was batched or sharded.

  stats = None
  for batch in eval_batches:
    s = eval_step(params, batch)    # jitted; calls classification_stats
    stats = s if stats is None else metrics.merge(stats, s)
  results = metrics.summarize(stats)

The statistics, what turns each on, and their size for C classes (the eval step
returns them replicated, so every device holds that much):

  always              loss_sum (float32), correct, count (int32)    12 bytes
  num_classes         confusion [C, C] int32                         4·C² bytes
  top_k=(k, ...)      correct_top{k} int32, one per k                4 bytes each
  brier=True          brier_sum float32                              4 bytes
  calibration_bins=B  calibration_count, _confidence, _correct [B]   12·B bytes
  auc_bins=B          auc_histogram [C, 2, B] int32                  8·C·B bytes

A confusion matrix of 1000 classes takes 4 MB; score histograms of 4096 bins take
320 KiB for 10 classes but 33 MB for 1000, where fewer bins (the error bound that
`summarize` reports says how many are enough) or none will do.

Counts are int32 and exact up to 2**31 examples (or tokens); the loss, Brier score
and confidences are summed in float32. ROC-AUC and average precision come from
histograms of binned scores, so they are those of the scores rounded to their bins;
`summarize` also reports a bound on their distance from the exact values, computed
from the same histograms.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax


def classification_stats(logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                         num_classes: int | None = None,
                         top_k: tuple[int, ...] = (),
                         brier: bool = False,
                         calibration_bins: int | None = None,
                         auc_bins: int | None = None) -> dict[str, jax.Array]:
  """Sums over the real examples of a padded batch, from which metrics follow.

  Works for one label per example ([B] labels) and one per token ([B, L] labels)
  alike: every leading dimension is summed over. Probabilities are the softmax of
  the logits over their C classes.

  Args:
    logits: [..., C] scores.
    labels: [...] integer classes; values at padded positions are ignored, whatever
      they are.
    mask: [...] 1 (or True) for real examples, 0 for padding; or non-negative
      integer weights, an example of weight w counting w times in every statistic
      (a bootstrap resample: see ctjax/slices.py).
    num_classes: when given, also returns the [C, C] confusion matrix.
    top_k: for each k, also counts the examples whose label is among the k
      highest-scored classes.
    brier: also sums the examples' Brier scores.
    calibration_bins: also bins the examples by their highest probability, into
      this many equal-width bins of [0, 1], for the expected calibration error.
    auc_bins: also builds, per class, histograms of that class's probability over
      this many equal-width bins of [0, 1], for ROC-AUC and average precision.

  Returns:
    "loss_sum": float32 sum of softmax cross-entropy.
    "correct": int32 number of examples whose highest-scored class is the label.
    "count": int32 number of real examples.
    With num_classes, "confusion": int32 [C, C] where confusion[t, p] counts real
      examples of true class t predicted as p (scikit-learn's layout).
    With top_k, "correct_top{k}": int32 for each k (see `_top_k_correct`).
    With brier, "brier_sum": float32 (see `_brier_sum`).
    With calibration_bins, "calibration_count", "calibration_confidence" and
      "calibration_correct" (see `_calibration_stats`).
    With auc_bins, "auc_histogram": int32 [C, 2, auc_bins] (see `_auc_histogram`).
  """
  # Every statistic is a sum over examples, so the batch is a flat list of them.
  logits = jnp.reshape(logits, (-1, logits.shape[-1])).astype(jnp.float32)
  labels = jnp.ravel(labels)
  weight = jnp.ravel(jnp.asarray(mask)).astype(jnp.int32)
  real = weight > 0
  # jnp.where, not a product, so that a NaN loss at a padded position (garbage
  # logits, or a label such as -1 out of range) cannot leak into the sum.
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  predictions = jnp.argmax(logits, axis=-1)
  correct = real & (predictions == labels)
  stats = {
      "loss_sum": jnp.sum(jnp.where(real, loss * weight, 0.0)),
      "correct": jnp.sum(jnp.where(correct, weight, 0)),
      "count": jnp.sum(weight),
  }
  if num_classes is not None:
    # confusion[label, prediction] += 1 for every real example. Padded positions
    # add 0 wherever their labels point, and mode="drop" skips out-of-range ones.
    stats["confusion"] = jnp.zeros((num_classes, num_classes), jnp.int32).at[
        labels, predictions].add(weight, mode="drop")
  if top_k:
    stats.update(_top_k_correct(logits, labels, weight, top_k))
  if brier or calibration_bins or auc_bins:
    # Zero at padded positions, whose logits may be NaN: a bin index computed from
    # NaN would be arbitrary.
    probabilities = jnp.where(real[:, None], jax.nn.softmax(logits), 0.0)
    if brier:
      stats["brier_sum"] = _brier_sum(probabilities, labels, weight)
    if calibration_bins:
      stats.update(_calibration_stats(probabilities, correct, weight,
                                      calibration_bins))
    if auc_bins:
      stats["auc_histogram"] = _auc_histogram(probabilities, labels, weight,
                                              auc_bins)
  return stats


def _top_k_correct(logits: jax.Array, labels: jax.Array, weight: jax.Array,
                   top_k: tuple[int, ...]) -> dict[str, jax.Array]:
  """{"correct_top{k}": examples whose label is among the k highest scores}.

  The label's rank is the number of classes scored strictly above it (one pass over
  the logits for every k, no sort), so a class tied with the label counts in the
  label's favour, and a k >= C counts every example, as scikit-learn's
  top_k_accuracy_score (which is 1.0 then) does.
  """
  label_logits = jnp.take_along_axis(logits, labels[:, None], axis=1, mode="clip")
  rank = jnp.sum(logits > label_logits, axis=1)
  return {f"correct_top{k}": jnp.sum(jnp.where(rank < k, weight, 0))
          for k in top_k}


def _brier_sum(probabilities: jax.Array, labels: jax.Array,
               weight: jax.Array) -> jax.Array:
  """Sum over examples of sum_c (p_c - [c == label])², halved when C == 2.

  Halved for two classes because there both classes' terms equal (p_1 - y)², the
  binary Brier score: scikit-learn's brier_score_loss convention, [0, 1] for two
  classes and [0, 2] for more.
  """
  num_classes = probabilities.shape[1]
  one_hot = jax.nn.one_hot(labels, num_classes)
  squares = jnp.sum((probabilities - one_hot) ** 2, axis=1)
  if num_classes == 2:
    squares = squares / 2
  # A padded label in range would add 1 here: probabilities are 0 there, the
  # one-hot label is not.
  return jnp.sum(jnp.where(weight > 0, squares * weight, 0.0))


def bin_index(values: jax.Array, bins: int) -> jax.Array:
  """Index of the equal-width bin of [0, 1] holding each value (1.0: the last)."""
  return jnp.minimum((values * bins).astype(jnp.int32), bins - 1)


def _calibration_stats(probabilities: jax.Array, correct: jax.Array,
                       weight: jax.Array, bins: int) -> dict[str, jax.Array]:
  """Per bin of the highest probability (the confidence): [bins] sums.

  "calibration_count" (int32) counts the examples in each bin,
  "calibration_confidence" (float32) sums their confidences and
  "calibration_correct" (int32) counts those whose prediction is right. Per bin,
  correct / count is the accuracy and confidence / count the mean confidence: a
  reliability diagram, and the expected calibration error.

  A one-hot [examples, bins] reduction rather than a scatter: calibration needs few
  bins (10 to 20), and XLA may add the floats a scatter receives in any order on a
  GPU, while a reduction is deterministic.
  """
  confidence = jnp.max(probabilities, axis=1)
  bins_of = bin_index(confidence, bins)
  in_bin = (weight[:, None] > 0) & (bins_of[:, None] == jnp.arange(bins))
  weight_in_bin = jnp.where(in_bin, weight[:, None], 0)
  return {
      "calibration_count": jnp.sum(weight_in_bin, axis=0),
      "calibration_confidence": jnp.sum(weight_in_bin * confidence[:, None], axis=0),
      "calibration_correct": jnp.sum(jnp.where(correct[:, None], weight_in_bin, 0),
                                     axis=0),
  }


def _auc_histogram(probabilities: jax.Array, labels: jax.Array, weight: jax.Array,
                   bins: int) -> jax.Array:
  """Per class, histograms of its probability: int32 [C, 2, bins].

  histogram[c, 1] bins probability c of the examples of class c (the positives, one
  class against the rest), histogram[c, 0] that of the others (the negatives).
  Integers, so a scatter adds them exactly in any order. Padded positions add 0,
  and mode="drop" skips the arbitrary bin of a NaN probability (a diverged model,
  whose loss is NaN too) rather than writing out of bounds.
  """
  num_classes = probabilities.shape[1]
  classes = jnp.broadcast_to(jnp.arange(num_classes), probabilities.shape)
  positive = (labels[:, None] == classes).astype(jnp.int32)
  weights = jnp.broadcast_to(weight[:, None], probabilities.shape)
  return jnp.zeros((num_classes, 2, bins), jnp.int32).at[
      classes, positive, bin_index(probabilities, bins)].add(weights, mode="drop")


def merge(a: dict, b: dict) -> dict:
  """Adds two stats dicts key by key; jax or numpy arrays, jit-able."""
  return jax.tree.map(lambda x, y: x + y, a, b)


def ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator with 0/0 = 0, as scikit-learn's zero_division=0."""
  numerator, denominator = np.asarray(numerator), np.asarray(denominator)
  return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                   where=denominator != 0)


def mean_over(values: np.ndarray, classes: np.ndarray,
               empty: float = 0.0) -> float:
  """The mean of `values` over the selected classes; `empty` when none is."""
  return values[classes].mean() if classes.any() else empty


def _confusion_rates(confusion: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class precision, recall, F1, support and predictions; see per_class."""
  true_positives = np.diag(confusion)
  support = confusion.sum(axis=1)     # true positives + false negatives
  predicted = confusion.sum(axis=0)   # true positives + false positives
  return {"precision": ratio(true_positives, predicted),
          "recall": ratio(true_positives, support),
          "f1": ratio(2 * true_positives, support + predicted),
          "support": support, "predicted": predicted}


def _above(counts: np.ndarray) -> np.ndarray:
  """For each bin (last axis), the sum of the counts in the bins above it."""
  return np.cumsum(counts[..., ::-1], axis=-1)[..., ::-1] - counts


def binned_ranking(histogram: np.ndarray) -> dict[str, np.ndarray]:
  """Per-class ROC-AUC and average precision from `_auc_histogram`, with bounds.

  Scores in one bin count as tied, as scikit-learn counts equal scores: ROC-AUC
  counts a positive and a negative in the same bin as half a correctly ordered
  pair, and average precision takes one step of the precision-recall curve per
  bin, at the precision of everything from that bin up. Both are then exactly
  scikit-learn's values for the scores rounded to their bins; the bounds say how
  far they can be from those of the exact scores, whatever the order within bins.
  With P positives, N negatives, and p_b, n_b of them in bin b:

  - ROC-AUC: pairs in different bins are ordered as the exact scores order them; a
    pair in one bin counts ½ here and 0, ½ or 1 exactly, so
    |error| <= sum_b p_b·n_b / (2·P·N).
  - Average precision is the mean over positives of the precision at each one's
    threshold. In bin b, with A positives and F negatives in the bins above, the
    exact precision at a positive is (A + j) / (A + F + j + m) for some
    1 <= j <= p_b and 0 <= m <= n_b (at a tie of exact scores too). It and the
    binned value (A + p_b) / (A + F + p_b + n_b) both lie between
    low_b = (A + 1) / (A + F + n_b + 1) and high_b = (A + p_b) / (A + F + p_b), so
    |error| <= sum_b p_b·(high_b - low_b) / P.

  Returns [C] arrays "roc_auc", "average_precision", "roc_auc_bin_error_bound" and
  "average_precision_bin_error_bound", NaN for a class without positives or
  without negatives (scikit-learn's roc_auc_score refuses those).
  """
  negatives, positives = histogram[:, 0], histogram[:, 1]
  num_positives, num_negatives = positives.sum(-1), negatives.sum(-1)
  pairs = num_positives * num_negatives
  positives_above, negatives_above = _above(positives), _above(negatives)
  negatives_below = num_negatives[:, None] - negatives_above - negatives
  ties = (positives * negatives).sum(-1)
  true_positives = positives_above + positives
  precision = ratio(true_positives, true_positives + negatives_above + negatives)
  high = ratio(true_positives, true_positives + negatives_above)
  low = (positives_above + 1) / (positives_above + negatives_above + negatives + 1)
  results = {
      "roc_auc": ratio((positives * negatives_below).sum(-1) + ties / 2, pairs),
      "average_precision": ratio((positives * precision).sum(-1), num_positives),
      "roc_auc_bin_error_bound": ratio(ties / 2, pairs),
      "average_precision_bin_error_bound": ratio(
          (positives * (high - low)).sum(-1), num_positives),
  }
  return {name: np.where(pairs > 0, value, np.nan)
          for name, value in results.items()}


def per_class(stats: dict) -> dict[str, np.ndarray]:
  """Turns merged statistics into one value per class: [C] float64 arrays.

  With a confusion matrix (num_classes): "precision" TP / predicted, "recall"
  TP / support, "f1" 2·TP / (support + predicted), each 0 for 0/0 (scikit-learn's
  precision_recall_fscore_support with average=None, zero_division=0), "support"
  (examples of the class) and "predicted" (examples predicted as it).

  With score histograms (auc_bins): "roc_auc" and "average_precision" of the class
  against the rest, from its binned probability, and their "..._bin_error_bound"s;
  see `_binned_ranking`. NaN for a class without positives or without negatives.
  """
  stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  results = {}
  if "confusion" in stats:
    results.update(_confusion_rates(stats["confusion"]))
  if "auc_histogram" in stats:
    results.update(binned_ranking(stats["auc_histogram"]))
  return results


def summarize(stats: dict, *, bits_per_byte: bool = False) -> dict[str, float]:
  """Turns merged statistics into scalar metrics.

  Args:
    stats: from `classification_stats`, merged over the whole evaluation.
    bits_per_byte: also report the loss in bits, which for a byte-level language
      model (one token is one byte) is bits per byte.

  Returns:
    A dict of floats, each present when its statistics are (n real examples, C
    classes, p the softmax probabilities, y the label). Means over examples are
    NaN when n = 0; ratios of counts are 0 for 0/0 (scikit-learn's zero_division=0).

    loss: mean softmax cross-entropy, which is scikit-learn's log_loss.
    accuracy: fraction of examples whose highest-scored class is y.
    bits_per_byte: loss / ln 2 (with bits_per_byte=True).
    top{k}_accuracy: fraction whose y is among the k highest scores; 1 for k >= C.
    brier: mean of sum_c (p_c - [c == y])², halved when C = 2 to (p_1 - y)²:
      scikit-learn's brier_score_loss.
    expected_calibration_error: sum_b |accuracy_b - confidence_b|·n_b / n over
      the equal-width bins b of the highest probability (the confidence).
    macro_precision, macro_recall, macro_f1: means of per_class's over the classes
      that occur among the labels or the predictions.
    balanced_accuracy: mean recall over the classes that occur among the labels.
    micro_f1: F1 of the counts summed over classes, 2·sum TP / (sum support +
      sum predicted), which is the accuracy.
    weighted_precision, weighted_recall, weighted_f1: means of per_class's
      weighted by support.
    roc_auc, average_precision (C = 2): of the probability of class 1, the
      positive one, from the binned scores (see `_binned_ranking`).
    roc_auc_ovr, average_precision_ovr (C != 2): means of per_class's one class
      against the rest over the classes with positives and negatives.
    <each of the four above>_bin_error_bound: bound on |binned - exact value|. For
      the one-vs-rest means, the mean of the classes' bounds, which bounds the
      mean's error.

    The macro averages and balanced accuracy are scikit-learn's definitions, so
    that classes absent from a small evaluation set do not count as zeros.
  """
  classes = per_class(stats)
  stats = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  # Every per-example mean is a total divided by the number of examples.
  totals = {"loss": stats["loss_sum"], "accuracy": stats["correct"]}
  for key in stats:
    if key.startswith("correct_top"):
      totals[f"top{key.removeprefix('correct_top')}_accuracy"] = stats[key]
  if "brier_sum" in stats:
    totals["brier"] = stats["brier_sum"]
  if "calibration_count" in stats:
    # |accuracy_b - confidence_b|·n_b = |correct_b - confidence sum_b|.
    totals["expected_calibration_error"] = np.abs(
        stats["calibration_correct"] - stats["calibration_confidence"]).sum()
  with np.errstate(invalid="ignore", divide="ignore"):
    results = {name: total / stats["count"] for name, total in totals.items()}
  if bits_per_byte:
    results["bits_per_byte"] = results["loss"] / math.log(2)
  if "confusion" in stats:
    support, predicted = classes["support"], classes["predicted"]
    seen = (support + predicted) > 0
    for name in ("precision", "recall", "f1"):
      results[f"macro_{name}"] = mean_over(classes[name], seen)
      results[f"weighted_{name}"] = ratio((classes[name] * support).sum(),
                                           support.sum())
    results["balanced_accuracy"] = mean_over(classes["recall"], support > 0)
    results["micro_f1"] = ratio(2 * np.trace(stats["confusion"]),
                                 support.sum() + predicted.sum())
  if "auc_histogram" in stats:
    binary = stats["auc_histogram"].shape[0] == 2
    for name in ("roc_auc", "average_precision"):
      for suffix in ("", "_bin_error_bound"):
        values = classes[name + suffix]
        if binary:
          results[name + suffix] = values[1]
        else:
          results[f"{name}_ovr{suffix}"] = mean_over(
              values, ~np.isnan(values), empty=math.nan)
  return {k: float(v) for k, v in results.items()}
