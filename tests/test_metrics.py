"""Tests for ctjax.metrics against scikit-learn as the independent reference."""
import functools
import math
import warnings

import jax
import numpy as np
import pytest
import scipy.special
from sklearn import metrics as skm

import tolerances
from ctjax import metrics

NUM_CLASSES = 6
TOP_K = (2, 5, 6)  # 6 = NUM_CLASSES: every example is a hit, as scikit-learn counts
CALIBRATION_BINS = 10
AUC_BINS = 4096
# Two float64 computations of one value from the same counts, in different orders
# (ours and scikit-learn's): a few roundings of 2**-53 apart.
FLOAT64_RTOL = 1e-12


def _data(rng, shape, num_classes=NUM_CLASSES):
  """Random logits, labels and a padding mask of the given leading shape.

  Labels avoid class 4, which is still predicted, and class 5 is never predicted
  nor a label: the macro averages must treat both as scikit-learn does (with two
  classes, both are labels). Logits at padded positions are NaN and their labels
  -1, which must not leak into the sums.
  """
  labels = rng.choice(min(4, num_classes), size=shape)
  logits = rng.normal(size=(*shape, num_classes)).astype(np.float32)
  logits += 1.5 * np.eye(num_classes, dtype=np.float32)[labels]  # beats chance
  logits[..., 5:] = -20.0
  mask = rng.random(shape) < 0.7
  logits[~mask] = np.nan
  labels = np.where(mask, labels, -1)
  return logits, labels, mask.astype(np.float32)


@functools.cache
def _jitted(num_classes, auc_bins):
  return jax.jit(functools.partial(
      metrics.classification_stats, num_classes=num_classes, top_k=TOP_K,
      brier=True, calibration_bins=CALIBRATION_BINS, auc_bins=auc_bins))


def _stats(logits, labels, mask, auc_bins=AUC_BINS):
  """Every statistic of one batch, jitted once per configuration and shape."""
  return _jitted(logits.shape[-1], auc_bins)(logits, labels, mask)


def _merged(batches, **kwargs):
  stats = None
  for batch in batches:
    s = _stats(*batch, **kwargs)
    stats = s if stats is None else metrics.merge(stats, s)
  return stats


def _real(batches):
  """Logits and labels of the real examples only, and float64 probabilities."""
  logits = np.concatenate([l[m > 0] for l, _, m in batches])
  labels = np.concatenate([y[m > 0] for _, y, m in batches])
  return logits, labels, scipy.special.softmax(logits.astype(np.float64), axis=-1)


def _expected_calibration_error(labels, predictions, probabilities, bins):
  """ECE by its definition: sum_b |accuracy_b - confidence_b|·n_b / n."""
  confidence = probabilities.max(-1)
  # The metric bins float32 probabilities, this float64 ones: they agree unless a
  # confidence lies within float32 rounding (~1e-7) of an edge, which this data
  # must not have.
  edges = np.arange(1, bins) / bins
  assert np.abs(confidence[:, None] - edges).min() > 1e-6
  bin_of = np.minimum((confidence * bins).astype(int), bins - 1)
  correct = predictions == labels
  return sum(abs(correct[bin_of == b].mean() - confidence[bin_of == b].mean())
             * np.mean(bin_of == b) for b in np.unique(bin_of))


def _sklearn(batches, num_classes):
  """Every scalar metric but the ranking ones, by scikit-learn on the real examples.

  The expected calibration error, which scikit-learn lacks, by its definition.
  """
  logits, labels, probabilities = _real(batches)
  predictions = logits.argmax(-1)
  classes = np.arange(num_classes)
  expected = dict(
      accuracy=skm.accuracy_score(labels, predictions),
      loss=skm.log_loss(labels, probabilities, labels=classes),  # = cross-entropy
      micro_f1=skm.f1_score(labels, predictions, average="micro", zero_division=0),
      balanced_accuracy=skm.balanced_accuracy_score(labels, predictions),
      expected_calibration_error=_expected_calibration_error(
          labels, predictions, probabilities, CALIBRATION_BINS),
      confusion=skm.confusion_matrix(labels, predictions, labels=classes))
  expected["bits_per_byte"] = expected["loss"] / math.log(2)
  for average in ("macro", "weighted"):
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        labels, predictions, average=average, zero_division=0)
    expected.update({f"{average}_precision": precision,
                     f"{average}_recall": recall, f"{average}_f1": f1})
  if num_classes == 2:
    # The binary Brier score of the positive class's probability. scikit-learn's
    # top-k accuracy wants one score per example for two classes; every k in TOP_K
    # is >= 2 and so a hit for every example.
    expected["brier"] = skm.brier_score_loss(labels, probabilities[:, 1])
    expected.update({f"top{k}_accuracy": 1.0 for k in TOP_K})
  else:  # The multi-class Brier score: scikit-learn >= 1.7.
    expected["brier"] = skm.brier_score_loss(labels, probabilities, labels=classes)
    expected.update({
        f"top{k}_accuracy": skm.top_k_accuracy_score(labels, logits, k=k,
                                                     labels=classes)
        for k in TOP_K})
  return expected


def _sklearn_per_class_ranking(labels, scores):
  """scikit-learn's ROC-AUC and average precision of each class against the rest.

  NaN for a class without positives or without negatives, where roc_auc_score
  raises.
  """
  num_classes = scores.shape[1]
  results = {"roc_auc": np.full(num_classes, np.nan),
             "average_precision": np.full(num_classes, np.nan)}
  for c in range(num_classes):
    positive = labels == c
    if positive.any() and not positive.all():
      results["roc_auc"][c] = skm.roc_auc_score(positive, scores[:, c])
      results["average_precision"][c] = skm.average_precision_score(
          positive, scores[:, c])
  return results


def _sklearn_ranking(labels, probabilities):
  """scikit-learn's ROC-AUC and average precision under summarize's names.

  Two classes: of class 1. More: one-vs-rest macro averages over one-hot labels,
  without the classes that have no positives or no negatives.
  """
  num_classes = probabilities.shape[1]
  if num_classes == 2:
    return {"roc_auc": skm.roc_auc_score(labels, probabilities[:, 1]),
            "average_precision": skm.average_precision_score(
                labels, probabilities[:, 1])}
  one_hot = np.eye(num_classes, dtype=int)[labels]
  both = one_hot.any(axis=0) & ~one_hot.all(axis=0)
  return {"roc_auc_ovr": skm.roc_auc_score(one_hot[:, both],
                                           probabilities[:, both], average="macro"),
          "average_precision_ovr": skm.average_precision_score(
              one_hot[:, both], probabilities[:, both], average="macro")}


def _assert_metrics_close(got, expected, rtol):
  """Each metric within rtol, the rounding of its float32 sums (NaN equals NaN).

  The expected calibration error sums |correct_b - confidence_b| over bins: its
  rounding error is bounded relative to the confidences summed, at most 1 per
  example, so by rtol once divided by the count, not relative to the ECE itself.
  """
  for key, value in expected.items():
    atol = rtol if key == "expected_calibration_error" else 0.0
    np.testing.assert_allclose(got[key], value, rtol=rtol, atol=atol, err_msg=key)


def _check_against_sklearn(batches, num_classes=NUM_CLASSES):
  stats = _merged(batches)
  with warnings.catch_warnings():  # "y_pred contains classes not in y_true", k >= C
    warnings.simplefilter("ignore")
    expected = _sklearn(batches, num_classes)
    ranking = _sklearn_ranking(*_real(batches)[1:])
  np.testing.assert_array_equal(stats["confusion"], expected.pop("confusion"))
  assert int(stats["count"]) == sum(int(m.sum()) for *_, m in batches)
  got = metrics.summarize(stats, bits_per_byte=True)
  bounds = {f"{key}_bin_error_bound" for key in ranking}
  assert got.keys() == expected.keys() | ranking.keys() | bounds
  # float32 sums of the examples' losses, Brier scores and confidences (each
  # through at most two C-term sums: softmax's normaliser, Brier's sum over
  # classes) against scikit-learn's float64: one order against exact, so half of
  # sum_rtol (tests/tolerances.py) would do; counts and their ratios are exact.
  rtol = tolerances.sum_rtol(int(stats["count"]) + 2 * num_classes)
  _assert_metrics_close(got, expected, rtol)
  for key, value in ranking.items():
    bound = got[f"{key}_bin_error_bound"] + FLOAT64_RTOL
    assert abs(got[key] - value) <= bound, key


def test_classification_matches_sklearn_over_uneven_batches():
  rng = np.random.default_rng(0)
  _check_against_sklearn([_data(rng, (n,)) for n in (32, 7, 50, 1, 19)])


def test_token_level_matches_sklearn():
  rng = np.random.default_rng(1)
  _check_against_sklearn([_data(rng, (b, l)) for b, l in ((4, 16), (3, 9), (5, 1))])


def test_binary_matches_sklearn():
  rng = np.random.default_rng(11)
  _check_against_sklearn([_data(rng, (n,), num_classes=2) for n in (32, 7, 50)],
                         num_classes=2)


def test_per_class_matches_sklearn():
  rng = np.random.default_rng(6)
  batches = [_data(rng, (n,)) for n in (32, 7, 50)]
  got = metrics.per_class(_merged(batches))
  logits, labels, probabilities = _real(batches)
  predictions = logits.argmax(-1)
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, predictions, labels=range(NUM_CLASSES), average=None, zero_division=0)
  np.testing.assert_array_equal(got["support"], support)
  np.testing.assert_array_equal(got["predicted"],
                                np.bincount(predictions, minlength=NUM_CLASSES))
  for key, want in (("precision", precision), ("recall", recall), ("f1", f1)):
    np.testing.assert_allclose(got[key], want, rtol=FLOAT64_RTOL, err_msg=key)
  for key, want in _sklearn_per_class_ranking(labels, probabilities).items():
    np.testing.assert_array_equal(np.isnan(got[key]), np.isnan(want), err_msg=key)
    defined = ~np.isnan(want)
    assert defined.sum() == 4, key  # Classes 4 and 5 are never labels.
    error = np.abs(got[key] - want)[defined]
    bound = got[f"{key}_bin_error_bound"][defined] + FLOAT64_RTOL
    assert (error <= bound).all(), key


def _at_bin_centres(rng, batch, bins):
  """The batch with each real example's probabilities moved to bin centres.

  Probabilities (k_c + ½) / bins with integer k_c summing to bins - C/2 (C even),
  drawn around the batch's own. float32 logits log((k_c + ½) / bins) give back
  probabilities within ~1e-6 of them relative, far inside their bins (a half bin is
  ½ / bins of 1).
  """
  logits, labels, mask = batch
  real = mask > 0
  num_classes = logits.shape[-1]
  counts = rng.multinomial(bins - num_classes // 2, scipy.special.softmax(
      logits[real].astype(np.float64), axis=-1))
  logits = logits.copy()
  logits[real] = np.log((counts + 0.5) / bins)
  return logits, labels, mask


@pytest.mark.parametrize("num_classes", [2, NUM_CLASSES])
def test_binned_ranking_equals_sklearn_on_scores_at_bin_centres(num_classes):
  bins = 32  # Few bins, so many tied scores, which both must count alike.
  rng = np.random.default_rng(7)
  batches = [_at_bin_centres(rng, _data(rng, (n,), num_classes), bins)
             for n in (32, 7, 50)]
  got = metrics.per_class(_merged(batches, auc_bins=bins))
  _, labels, probabilities = _real(batches)
  centres = (np.floor(probabilities * bins) + 0.5) / bins
  for key, want in _sklearn_per_class_ranking(labels, centres).items():
    np.testing.assert_allclose(got[key], want, rtol=FLOAT64_RTOL, err_msg=key)


@pytest.mark.parametrize("num_classes", [2, NUM_CLASSES])
def test_binned_ranking_is_within_its_bound_which_is_small(num_classes):
  """About 1000 examples in 4096 bins: exact scores within a small computed bound.

  scikit-learn sees float64 probabilities, the histograms float32 ones. Those order
  two scores differently only within float32 rounding (~1e-7) of each other, and
  then land in different bins only astride an edge (~1e-7 · 4096 of the time): far
  fewer than one such pair expected, each moving the value by 1/(P·N), against a
  bound that counts every tie in a bin as wrong by ½.
  """
  rng = np.random.default_rng(8)
  batches = [_data(rng, (n,), num_classes) for n in [50] * 28 + [32, 7]]
  stats = _merged(batches)
  assert int(stats["count"]) > 950
  got = metrics.summarize(stats)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    want = _sklearn_ranking(*_real(batches)[1:])
  for key, value in want.items():
    bound = got[f"{key}_bin_error_bound"]
    assert abs(got[key] - value) <= bound + FLOAT64_RTOL, key
    assert 0 < bound < 0.01, key


def test_sharded_stats_equal_single_device_stats():
  rng = np.random.default_rng(9)
  batch = _data(rng, (64,))
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
  assert mesh.size == 8
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
  sharded = jax.device_put(batch, sharding)
  assert len(sharded[0].sharding.device_set) == 8
  got = jax.device_get(_stats(*sharded))
  want = jax.device_get(_stats(*jax.device_put(batch, jax.devices()[0])))
  # Float sums of non-negative terms (losses, Brier scores, confidences), each
  # through at most two C-term sums, in another order: each within sum_rtol of it.
  rtol = tolerances.sum_rtol(int(want["count"]) + 2 * NUM_CLASSES)
  for key, value in want.items():
    if np.issubdtype(value.dtype, np.integer):
      np.testing.assert_array_equal(got[key], value, err_msg=key)
    else:
      np.testing.assert_allclose(got[key], value, rtol=rtol, err_msg=key)


def test_padded_positions_do_not_leak():
  """Whatever padded positions hold, the statistics are bitwise the same."""
  rng = np.random.default_rng(10)
  logits, labels, mask = _data(rng, (50,))  # NaN logits and labels -1 there.
  padded = mask == 0
  assert padded.any()
  other_logits, other_labels = logits.copy(), labels.copy()
  # Huge finite logits and labels in range, which would count if they leaked.
  other_logits[padded] = 1e4 * rng.normal(size=(padded.sum(), NUM_CLASSES))
  other_labels[padded] = rng.integers(0, NUM_CLASSES, size=padded.sum())
  want = jax.device_get(_stats(logits, labels, mask))
  got = jax.device_get(_stats(other_logits, other_labels, mask))
  assert got.keys() == want.keys()
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_merge_order_does_not_matter():
  rng = np.random.default_rng(2)
  a, b, c = (_stats(*_data(rng, (n,))) for n in (10, 20, 30))
  one = metrics.summarize(metrics.merge(metrics.merge(a, b), c))
  # Other order, and numpy stats as a host would merge them after fetching.
  a, b, c = jax.device_get((a, b, c))
  other = metrics.summarize(metrics.merge(c, metrics.merge(b, a)))
  assert one.keys() == other.keys()
  _assert_metrics_close(one, other, tolerances.sum_rtol(3))  # Three float32 sums.


def test_merge_is_jittable():
  rng = np.random.default_rng(3)
  a, b = (_stats(*_data(rng, (n,))) for n in (8, 8))
  merged = jax.jit(metrics.merge)(a, b)
  for key in ("confusion", "auc_histogram", "calibration_count"):
    np.testing.assert_array_equal(merged[key], a[key] + b[key], err_msg=key)


def test_all_padding_contributes_nothing():
  rng = np.random.default_rng(4)
  logits, labels, mask = _data(rng, (8,))
  empty = _stats(logits, labels, np.zeros_like(mask))
  for key, value in empty.items():
    assert not np.asarray(value).any(), key
  results = metrics.summarize(empty)
  for key in ("loss", "brier", "expected_calibration_error", "roc_auc_ovr"):
    assert math.isnan(results[key]), key


def test_without_options_only_loss_and_accuracy():
  rng = np.random.default_rng(5)
  stats = metrics.classification_stats(*_data(rng, (8,)))
  assert set(stats) == {"loss_sum", "correct", "count"}
  assert set(metrics.summarize(stats)) == {"loss", "accuracy"}
  assert not metrics.per_class(stats)


def test_integer_weights_count_as_repeated_examples():
  """A weight of w is w copies of the example (what a bootstrap resample needs)."""
  rng = np.random.default_rng(11)
  logits, labels, mask = _data(rng, (40,))
  weights = (mask * rng.integers(0, 4, size=mask.shape)).astype(np.int32)
  repeats = weights.astype(np.int64)
  repeated = (np.repeat(logits, repeats, axis=0), np.repeat(labels, repeats),
              np.ones(repeats.sum(), np.float32))
  got = jax.device_get(_stats(logits, labels, weights))
  want = jax.device_get(_stats(*repeated))
  for key, value in want.items():
    if np.issubdtype(value.dtype, np.integer):
      np.testing.assert_array_equal(got[key], value, err_msg=key)
    else:  # One float32 sum of products against one of repeated terms.
      np.testing.assert_allclose(got[key], value, rtol=tolerances.sum_rtol(
          int(repeats.sum())), err_msg=key)
