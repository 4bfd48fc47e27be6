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


def _data(rng, shape):
  """Random logits, labels and a padding mask of the given leading shape.

  Labels avoid class 4, which is still predicted, and class 5 is never predicted
  nor a label: the macro averages must treat both as scikit-learn does. Logits at
  padded positions are NaN and their labels -1, which must not leak into the sums.
  """
  labels = rng.choice([0, 1, 2, 3], size=shape)
  logits = rng.normal(size=(*shape, NUM_CLASSES)).astype(np.float32)
  logits += 1.5 * np.eye(NUM_CLASSES, dtype=np.float32)[labels]  # better than chance
  logits[..., 5] = -20.0
  mask = rng.random(shape) < 0.7
  logits[~mask] = np.nan
  labels = np.where(mask, labels, -1)
  return logits, labels, mask.astype(np.float32)


_stats = jax.jit(functools.partial(metrics.classification_stats,
                                   num_classes=NUM_CLASSES))


def _merged(batches):
  stats = None
  for batch in batches:
    s = _stats(*batch)
    stats = s if stats is None else metrics.merge(stats, s)
  return stats


def _sklearn(batches):
  """Every metric computed by scikit-learn on the real examples only."""
  logits = np.concatenate([l[m > 0] for l, _, m in batches])
  labels = np.concatenate([y[m > 0] for _, y, m in batches])
  predictions = logits.argmax(-1)
  probs = scipy.special.softmax(logits.astype(np.float64), axis=-1)
  precision, recall, f1, _ = skm.precision_recall_fscore_support(
      labels, predictions, average="macro", zero_division=0)
  with warnings.catch_warnings():  # "y_pred contains classes not in y_true"
    warnings.simplefilter("ignore")
    balanced = skm.balanced_accuracy_score(labels, predictions)
  loss = skm.log_loss(labels, probs, labels=range(NUM_CLASSES))
  return dict(
      loss=loss, accuracy=skm.accuracy_score(labels, predictions),
      macro_precision=precision, macro_recall=recall, macro_f1=f1,
      balanced_accuracy=balanced, bits_per_byte=loss / math.log(2),
      confusion=skm.confusion_matrix(labels, predictions,
                                     labels=range(NUM_CLASSES)))


def _check_against_sklearn(batches):
  stats = _merged(batches)
  expected = _sklearn(batches)
  np.testing.assert_array_equal(stats["confusion"], expected.pop("confusion"))
  assert int(stats["count"]) == sum(int(m.sum()) for *_, m in batches)
  got = metrics.summarize(stats, bits_per_byte=True)
  assert got.keys() == expected.keys()
  # float32 sums of the examples' losses (each through a 10-way log-softmax)
  # against scikit-learn's float64: one order against exact, so half of sum_rtol
  # (tests/tolerances.py) would do; counts and their ratios are exact.
  rtol = tolerances.sum_rtol(int(stats["count"]) + NUM_CLASSES)
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=rtol, err_msg=key)


def test_classification_matches_sklearn_over_uneven_batches():
  rng = np.random.default_rng(0)
  _check_against_sklearn([_data(rng, (n,)) for n in (32, 7, 50, 1, 19)])


def test_token_level_matches_sklearn():
  rng = np.random.default_rng(1)
  _check_against_sklearn([_data(rng, (b, l)) for b, l in ((4, 16), (3, 9), (5, 1))])


def test_merge_order_does_not_matter():
  rng = np.random.default_rng(2)
  a, b, c = (_stats(*_data(rng, (n,))) for n in (10, 20, 30))
  one = metrics.summarize(metrics.merge(metrics.merge(a, b), c))
  # Other order, and numpy stats as a host would merge them after fetching.
  a, b, c = jax.device_get((a, b, c))
  other = metrics.summarize(metrics.merge(c, metrics.merge(b, a)))
  assert one.keys() == other.keys()
  for key in one:  # Three float32 sums in another order.
    assert one[key] == pytest.approx(other[key], rel=tolerances.sum_rtol(3)), key


def test_merge_is_jittable():
  rng = np.random.default_rng(3)
  a, b = (_stats(*_data(rng, (n,))) for n in (8, 8))
  np.testing.assert_array_equal(jax.jit(metrics.merge)(a, b)["confusion"],
                                a["confusion"] + b["confusion"])


def test_all_padding_contributes_nothing():
  rng = np.random.default_rng(4)
  logits, labels, mask = _data(rng, (8,))
  empty = _stats(logits, labels, np.zeros_like(mask))
  assert float(empty["loss_sum"]) == 0.0
  assert int(empty["count"]) == 0 and int(empty["correct"]) == 0
  assert not np.asarray(empty["confusion"]).any()
  assert math.isnan(metrics.summarize(empty)["loss"])


def test_without_num_classes_no_confusion():
  rng = np.random.default_rng(5)
  stats = metrics.classification_stats(*_data(rng, (8,)))
  assert set(stats) == {"loss_sum", "correct", "count"}
  assert set(metrics.summarize(stats)) == {"loss", "accuracy"}
