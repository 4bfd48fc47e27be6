"""Tests for ctjax.slices: per-group metrics against scikit-learn, the bootstrap's
invariance to batching and sharding, and its intervals against the normal
approximation."""
import functools
import json
import math
import warnings

import jax
import numpy as np
import scipy.special
import scipy.stats
from sklearn import metrics as skm

import tolerances
from ctjax import metrics
from ctjax import slices

NUM_CLASSES = 3
NUM_GROUPS = 3
AUC_BINS = 64
FLOAT64_RTOL = 1e-12  # Two float64 computations from the same counts.


def _batch(rng, ids, num_classes=NUM_CLASSES):
  """Examples `ids` of a split, padded with as many rows again.

  Groups run from -1 to NUM_GROUPS (both in no group), weights from 0 to 2. The
  padded rows hold NaN logits, labels -1, groups in range and ids of other real
  examples: none of it may count.
  """
  n = len(ids)
  labels = rng.integers(0, num_classes, n)
  logits = rng.normal(size=(n, num_classes)).astype(np.float32)
  logits += 1.5 * np.eye(num_classes, dtype=np.float32)[labels]
  groups = rng.integers(-1, NUM_GROUPS + 1, n)
  weights = rng.integers(0, 3, n)
  pad = n
  return (np.concatenate([logits, np.full((pad, num_classes), np.nan, np.float32)]),
          np.concatenate([labels, np.full(pad, -1)]),
          np.concatenate([weights, np.zeros(pad, int)]).astype(np.int32),
          np.concatenate([groups, np.zeros(pad, int)]),
          np.concatenate([ids, rng.permutation(ids)[:pad]]))


def _split(rng, size):
  """A whole split of `size` examples in one batch, its real rows first."""
  return _batch(rng, np.arange(size))


def _rebatch(batch, sizes):
  """The real rows of `batch` in batches of `sizes`, each padded differently."""
  logits, labels, weights, groups, ids = batch
  real = np.arange(len(ids) // 2)
  batches, start = [], 0
  for size in sizes:
    rows = real[start:start + size]
    start += size
    pad = 5  # Padding rows: weight 0, group 0, id 0 (a real example's id).
    batches.append((
        np.concatenate([logits[rows], np.full((pad, NUM_CLASSES), np.nan, np.float32)]),
        np.concatenate([labels[rows], np.full(pad, -1)]),
        np.concatenate([weights[rows], np.zeros(pad, np.int32)]),
        np.concatenate([groups[rows], np.zeros(pad, int)]),
        np.concatenate([ids[rows], np.zeros(pad, int)])))
  assert start == len(real)
  return batches


@functools.cache
def _step(resamples, seed, num_classes=NUM_CLASSES):
  stats_fn = functools.partial(metrics.classification_stats, num_classes=num_classes,
                               calibration_bins=5, auc_bins=AUC_BINS)

  def step(logits, labels, weights, groups, ids):
    return slices.slice_stats(stats_fn, logits, labels, weights, groups=groups,
                              num_groups=NUM_GROUPS, example_ids=ids,
                              resamples=resamples, seed=seed)
  return jax.jit(step)


def _merged(batches, resamples=8, seed=0):
  stats = None
  for batch in batches:
    s = jax.device_get(_step(resamples, seed)(*batch))
    stats = s if stats is None else metrics.merge(stats, s)
  return stats


def _assert_stats_equal(got, want):
  """Integer statistics bitwise; float32 sums (losses, confidences) to rounding.

  Each float sum adds weighted terms (weights up to 2·12) over at most 64
  examples, each through a C-term softmax: within sum_rtol of 64·(1 + C) terms.
  """
  assert got.keys() == want.keys()
  for key, value in want.items():
    if np.issubdtype(value.dtype, np.integer):
      np.testing.assert_array_equal(got[key], value, err_msg=key)
    else:
      np.testing.assert_allclose(got[key], value, err_msg=key,
                                 rtol=tolerances.sum_rtol(64 * (1 + NUM_CLASSES)))


def test_each_group_matches_sklearn_on_its_examples():
  rng = np.random.default_rng(0)
  batch = _split(rng, 180)
  stats = _merged(_rebatch(batch, (80, 7, 93)))
  logits, labels, weights, groups, _ = (x[:180] for x in batch)  # The real rows.
  for g in range(NUM_GROUPS):
    # A weight of w is w copies of the example, for the independent reference.
    rows = np.repeat(np.flatnonzero(groups == g), weights[groups == g])
    y, scores = labels[rows], logits[rows]
    probabilities = scipy.special.softmax(scores.astype(np.float64), axis=-1)
    got = metrics.summarize({k: v[g, 0] for k, v in stats.items()})
    assert int(stats["count"][g, 0]) == len(rows) > 20
    np.testing.assert_array_equal(
        stats["confusion"][g, 0],
        skm.confusion_matrix(y, scores.argmax(-1), labels=range(NUM_CLASSES)))
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      exact = {"accuracy": skm.accuracy_score(y, scores.argmax(-1)),
               "balanced_accuracy": skm.balanced_accuracy_score(y, scores.argmax(-1)),
               "macro_f1": skm.f1_score(y, scores.argmax(-1), average="macro")}
    for key, value in exact.items():  # Ratios of integer counts.
      np.testing.assert_allclose(got[key], value, rtol=FLOAT64_RTOL, err_msg=key)
    # One float32 sum of the group's weighted losses, each through a softmax.
    np.testing.assert_allclose(
        got["loss"], skm.log_loss(y, probabilities, labels=range(NUM_CLASSES)),
        rtol=tolerances.sum_rtol(len(rows) + 2 * NUM_CLASSES))
    auc = skm.roc_auc_score(np.eye(NUM_CLASSES)[y], probabilities, average="macro")
    assert abs(got["roc_auc_ovr"] - auc) <= (got["roc_auc_ovr_bin_error_bound"]
                                             + FLOAT64_RTOL)


def test_statistics_do_not_depend_on_batching():
  rng = np.random.default_rng(1)
  batch = _split(rng, 60)
  one = _merged(_rebatch(batch, (60,)), resamples=50)
  for sizes in ((1, 29, 30), (17, 17, 17, 9)):
    _assert_stats_equal(_merged(_rebatch(batch, sizes), resamples=50), one)


def test_sharded_over_8_devices_equals_one_device():
  rng = np.random.default_rng(2)
  batch = _split(rng, 32)  # 64 rows: 32 real, 32 padding.
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
  assert mesh.size == 8
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("batch")))
  assert len(sharded[0].sharding.device_set) == 8
  got = jax.device_get(_step(50, 0)(*sharded))
  want = jax.device_get(_step(50, 0)(*jax.device_put(batch, jax.devices()[0])))
  _assert_stats_equal(got, want)


def test_padding_does_not_count():
  """Whatever padded rows hold (finite logits, labels, groups, ids), bitwise equal."""
  rng = np.random.default_rng(3)
  batch = _split(rng, 40)
  logits, labels, weights, groups, ids = (x.copy() for x in batch)
  padded = np.arange(len(ids)) >= 40
  logits[padded] = 1e4 * rng.normal(size=(padded.sum(), NUM_CLASSES))
  labels[padded] = rng.integers(0, NUM_CLASSES, padded.sum())
  groups[padded] = rng.integers(0, NUM_GROUPS, padded.sum())
  ids[padded] = rng.integers(1000, 2000, padded.sum())
  want = jax.device_get(_step(8, 0)(*batch))
  got = jax.device_get(_step(8, 0)(logits, labels, weights, groups, ids))
  for key, value in want.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_counts_are_independent_poisson_1_stable_as_resamples_grow():
  draw = jax.jit(slices.poisson_counts, static_argnums=2)
  counts = np.asarray(draw(7, np.arange(4000), 10))           # 40000 draws
  frequency = np.bincount(counts.ravel(), minlength=5)[:5] / counts.size
  pmf = scipy.stats.poisson.pmf(np.arange(5), 1.0)
  # Each frequency within 5 binomial standard deviations of Poisson's pmf.
  np.testing.assert_array_less(np.abs(frequency - pmf),
                               5 * np.sqrt(pmf * (1 - pmf) / counts.size))
  # Uncorrelated between resamples and between neighbouring ids: |r| < 5/sqrt(n).
  assert abs(np.corrcoef(counts[0], counts[1])[0, 1]) < 5 / math.sqrt(4000)
  assert abs(np.corrcoef(counts[:, :-1].ravel(), counts[:, 1:].ravel())[0, 1]
             ) < 5 / math.sqrt(counts.size)
  fewer = np.asarray(draw(7, np.arange(4000), 3))
  np.testing.assert_array_equal(fewer, counts[:3])


def _binary_group(rng, n, errors, positives=None):
  """n two-class examples, exactly `errors` of them misclassified.

  `positives` of class 1 (half by default); scores are noisy so that ROC-AUC is
  neither 0 nor 1.
  """
  positives = n // 2 if positives is None else positives
  labels = rng.permutation(np.arange(n) < positives).astype(int)
  predictions = labels.copy()
  wrong = rng.choice(n, errors, replace=False)
  predictions[wrong] = 1 - predictions[wrong]
  margin = rng.uniform(0.1, 3.0, n)
  logits = np.stack([np.zeros(n), np.where(predictions == 1, margin, -margin)], 1)
  return logits.astype(np.float32), labels


@functools.cache
def _binary_step(num_groups, resamples):
  """The jitted slice_stats of two-class groups; the seed is traced, not static."""
  stats_fn = functools.partial(metrics.classification_stats, auc_bins=AUC_BINS)

  def step(logits, labels, mask, groups, ids, seed):
    return slices.slice_stats(stats_fn, logits, labels, mask, groups=groups,
                              num_groups=num_groups, example_ids=ids,
                              resamples=resamples, seed=seed)
  return jax.jit(step)


def _binary_summary(sizes_and_errors, resamples, seed, positives=()):
  """summarize_slices over groups of (n, errors), one group id each."""
  rng = np.random.default_rng(4)
  positives = list(positives) + [None] * (len(sizes_and_errors) - len(positives))
  parts = [_binary_group(rng, n, e, p)
           for (n, e), p in zip(sizes_and_errors, positives)]
  logits = np.concatenate([l for l, _ in parts])
  labels = np.concatenate([y for _, y in parts])
  groups = np.concatenate([np.full(len(y), g) for g, (_, y) in enumerate(parts)])
  stats = _binary_step(len(parts), resamples)(
      logits, labels, np.ones(len(labels), np.int32), groups,
      np.arange(len(labels)), seed)
  names = [f"group{g}" for g in range(len(parts))]
  return slices.summarize_slices(jax.device_get(stats), metrics.summarize, names,
                                 seed=seed, metrics=["accuracy", "roc_auc", "loss"])


def test_accuracy_interval_agrees_with_normal_approximation():
  """n = 400 at accuracy p = 0.75: ends within their Monte-Carlo error of p ± 1.96σ.

  σ = sqrt(p(1 - p)/n), which is also the Poisson bootstrap's standard deviation
  of a ratio of weighted sums, to first order (delta method). Each end is an
  order statistic of R resamples, of standard error se = sqrt(q(1 - q)/R)/f(x_q)
  for q = 2.5% and the normal density f = φ(1.96)/σ there: 0.042·σ at R = 4000.
  The binomial's skew (γ = (1 - 2p)/sqrt(n·p(1 - p)) = -0.058) moves the ends by
  (1.96² - 1)·γ/6·σ = 0.03·σ (Cornish-Fisher). Allowed: 4·se + 0.03·σ per end,
  4·sqrt(2)·se for the width (the ends' errors are nearly independent).
  """
  n, p, resamples = 400, 0.75, 4000
  summary = _binary_summary([(n, int(n * (1 - p)))], resamples, seed=0)
  accuracy = summary["groups"][0]["metrics"]["accuracy"]
  assert accuracy["value"] == p
  sigma = math.sqrt(p * (1 - p) / n)
  z, q = scipy.stats.norm.ppf(0.975), 0.025
  se = math.sqrt(q * (1 - q) / resamples) / (scipy.stats.norm.pdf(z) / sigma)
  assert abs(accuracy["low"] - (p - z * sigma)) <= 4 * se + 0.03 * sigma
  assert abs(accuracy["high"] - (p + z * sigma)) <= 4 * se + 0.03 * sigma
  width = accuracy["high"] - accuracy["low"]
  assert abs(width - 2 * z * sigma) <= 4 * math.sqrt(2) * se
  assert summary["groups"][0]["warning"] is None


def test_same_seed_same_intervals_other_seed_other_intervals():
  groups = [(200, 40), (150, 45)]
  one, again = (_binary_summary(groups, 100, seed=1) for _ in range(2))
  assert one == again
  other = _binary_summary(groups, 100, seed=2)
  assert (one["seed"], other["seed"], one["resamples"]) == (1, 2, 100)
  for mine, theirs in zip(one["groups"], other["groups"]):
    for metric, value in mine["metrics"].items():
      assert value["value"] == theirs["metrics"][metric]["value"]  # The data.
      assert value["low"] != theirs["metrics"][metric]["low"], metric


def test_small_and_degenerate_groups_are_flagged_and_left_out_of_the_gap():
  summary = _binary_summary(
      [(200, 40),   # accuracy 0.80: the best comparable group
       (200, 80),   # accuracy 0.60: the worst
       (10, 0),     # accuracy 1.00, but only 10 examples
       (200, 0),    # accuracy 1.00 on 200: every resample says 1.0
       (200, 60),   # accuracy 0.70, 2 positives: ROC-AUC undefined in e^-2 ≈ 14%
       (200, 50)],  # no positives: ROC-AUC undefined
      resamples=400, seed=0, positives=[None] * 4 + [2, 0])
  groups = {g["name"]: g for g in summary["groups"]}
  assert groups["group0"]["warning"] is None
  assert groups["group1"]["warning"] is None
  assert "10 examples, fewer than 30" in groups["group2"]["warning"]
  assert "accuracy is exactly 1" in groups["group3"]["warning"]
  assert "roc_auc undefined in 1" in groups["group4"]["warning"]
  assert "roc_auc undefined" == groups["group5"]["warning"]
  assert groups["group5"]["metrics"]["roc_auc"] == {"value": None, "low": None,
                                                   "high": None}
  gap = summary["gap"]["accuracy"]
  # Groups 2 and 3 would be the best; groups 4 and 5 count for accuracy.
  assert (gap["best"], gap["worst"]) == ("group0", "group1")
  assert gap["value"] == 0.8 - 0.6
  assert 0 < gap["low"] < gap["value"] < gap["high"]  # A real difference.
  assert summary["gap"]["roc_auc"]["best"] in ("group0", "group1")
  # Lower is better for the loss: the best group is the one of least loss among
  # those large enough (the loss is not flagged in groups 3 to 5).
  loss = {name: g["metrics"]["loss"]["value"] for name, g in groups.items()
          if g["count"] >= slices.MIN_COUNT}
  assert summary["gap"]["loss"]["best"] == min(loss, key=loss.get)
  assert summary["gap"]["loss"]["value"] > 0


def test_summary_is_plain_json_and_formats_as_a_table():
  summary = _binary_summary([(100, 20), (5, 1)], resamples=20, seed=0,
                            positives=[None, 0])
  assert json.loads(json.dumps(summary, allow_nan=False)) == summary
  assert summary["gap"]["accuracy"] == {"value": None, "best": None, "worst": None,
                                        "low": None, "high": None}
  table = slices.format_slices(summary).splitlines()
  assert table[0] == "20 bootstrap resamples (seed 0), 95% percentile intervals."
  assert table[2] == "| group | n | accuracy | roc_auc | loss | warning |"
  low, high = (summary["groups"][0]["metrics"]["accuracy"][k] for k in ("low", "high"))
  assert table[4].startswith(f"| group0 | 100 | 0.800 [{low:.3f}, {high:.3f}] |")
  assert table[5].startswith("| group1 | 5 | 0.800 [") and "| – |" in table[5]
  assert table[6].startswith("| gap (best − worst) | | – |")
  without = _binary_summary([(100, 20), (5, 1)], resamples=0, seed=0)
  assert without["groups"][0]["metrics"]["accuracy"] == {"value": 0.8, "low": None,
                                                         "high": None}
  assert slices.format_slices(without).startswith("No bootstrap resamples")
