"""The multi-label and regression tasks' metrics against scikit-learn, and the losses."""
import functools
import warnings

import jax
import numpy as np
import pytest
import scipy.special
from sklearn import metrics as skm

import tolerances
from ctjax import tasks
from ctjax.tasks import multilabel
from ctjax.tasks import regression

NUM_LABELS = 7
TOP_K = (1, 3)
AUC_BINS = 4096
FLOAT64_RTOL = 1e-12


def _multilabel_batch(rng, n):
  """Logits correlated with random label sets; padded rows hold NaN and -1."""
  labels = (rng.random((n, NUM_LABELS)) < 0.3).astype(np.int32)
  labels[: n // 8] = 0  # Some examples without any label: LRAP counts them as 1.
  logits = (rng.normal(size=(n, NUM_LABELS)) + 1.5 * labels - 0.8).astype(np.float32)
  mask = (rng.random(n) < 0.8).astype(np.float32)
  logits[mask == 0] = np.nan
  labels[mask == 0] = -1
  return logits, labels, mask


@functools.cache
def _jitted_multilabel():
  return jax.jit(functools.partial(multilabel.stats, top_k=TOP_K, auc_bins=AUC_BINS))


def _merge(stats_fn, batches):
  total = None
  for batch in batches:
    s = stats_fn(*batch)
    total = s if total is None else jax.tree.map(np.add, total, jax.device_get(s))
  return jax.device_get(total)


def _precision_recall_at_k(labels, scores, k):
  """precision@k and recall@k by sorting (scikit-learn has neither): ties cannot
  occur in continuous random scores."""
  top = np.argsort(-scores, axis=1)[:, :k]
  hits = np.take_along_axis(labels, top, axis=1).sum(1)
  has = labels.sum(1) > 0
  return hits.mean() / k, (hits[has] / labels.sum(1)[has]).mean()


def test_multilabel_matches_sklearn_over_padded_batches():
  rng = np.random.default_rng(0)
  batches = [_multilabel_batch(rng, n) for n in (64, 9, 33)]
  stats = _merge(_jitted_multilabel(), batches)
  got = multilabel.summarize(stats)
  real = [m > 0 for *_, m in batches]
  logits = np.concatenate([l[r] for (l, _, _), r in zip(batches, real)])
  labels = np.concatenate([y[r] for (_, y, _), r in zip(batches, real)])
  scores = scipy.special.expit(logits.astype(np.float64))
  predicted = (logits >= 0).astype(int)
  expected = {
      "subset_accuracy": skm.accuracy_score(labels, predicted),
      "hamming_loss": skm.hamming_loss(labels, predicted),
      "label_ranking_average_precision":
          skm.label_ranking_average_precision_score(labels, logits),
      "loss": np.mean([skm.log_loss(labels[:, j], scores[:, j], labels=[0, 1])
                       for j in range(NUM_LABELS)]),
  }
  for average in ("micro", "macro"):
    p, r, f, _ = skm.precision_recall_fscore_support(
        labels, predicted, average=average, zero_division=0)
    expected.update({f"{average}_precision": p, f"{average}_recall": r,
                     f"{average}_f1": f})
  for k in TOP_K:
    expected[f"precision_at{k}"], expected[f"recall_at{k}"] = (
        _precision_recall_at_k(labels, logits, k))
  # float32 sums over the examples (and a mean over labels) against float64.
  rtol = tolerances.sum_rtol(len(labels) + NUM_LABELS)
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=rtol, err_msg=key)
  # Ranking from binned scores: within the bound summarize states.
  for key, sk in (("mean_average_precision", skm.average_precision_score),
                  ("roc_auc_macro", skm.roc_auc_score)):
    want = sk(labels, scores, average="macro")
    bound = got[f"{key}_bin_error_bound"]
    assert abs(got[key] - want) <= bound + FLOAT64_RTOL, key
    assert 0 < bound < 0.01, key
  per_label = multilabel.per_class(stats)
  np.testing.assert_array_equal(per_label["support"], labels.sum(0))


def test_multilabel_stats_are_the_same_on_8_devices():
  rng = np.random.default_rng(1)
  batch = _multilabel_batch(rng, 64)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
  assert mesh.size == 8
  sharded = jax.device_put(batch, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec("batch")))
  got = jax.device_get(_jitted_multilabel()(*sharded))
  want = jax.device_get(_jitted_multilabel()(*jax.device_put(batch, jax.devices()[0])))
  rtol = tolerances.sum_rtol(64 * NUM_LABELS)  # Each sum's terms, reordered.
  for key, value in want.items():
    if np.issubdtype(value.dtype, np.integer):
      np.testing.assert_array_equal(got[key], value, err_msg=key)
    else:
      np.testing.assert_allclose(got[key], value, rtol=rtol, err_msg=key)


def _regression_batch(rng, n, targets):
  labels = rng.normal(size=(n, targets)).astype(np.float32)
  outputs = (0.7 * labels + 0.5 * rng.normal(size=(n, targets))).astype(np.float32)
  mask = (rng.random(n) < 0.8).astype(np.float32)
  outputs[mask == 0] = np.nan
  labels[mask == 0] = np.nan
  if targets == 1:
    labels = labels[:, 0]
  return outputs, labels, mask


@pytest.mark.parametrize("targets", [1, 3])
def test_regression_matches_sklearn_in_original_units(targets):
  rng = np.random.default_rng(2)
  batches = [_regression_batch(rng, n, targets) for n in (50, 7, 31)]
  stats = _merge(jax.jit(regression.stats), batches)
  std = np.array([2.5, 0.1, 40.0][:targets])  # The data's standardisation scale.
  got = regression.summarize(stats, label_std=std)
  outputs = np.concatenate([o[m > 0] for o, _, m in batches]).astype(np.float64)
  labels = np.concatenate([y[m > 0] for _, y, m in batches]).astype(np.float64)
  labels = labels.reshape(outputs.shape)
  # Back to original units (the mean shift cancels in every metric).
  outputs, labels = outputs * std + 3.0, labels * std + 3.0
  mse = skm.mean_squared_error(labels, outputs)
  expected = {"mse": mse, "rmse": np.sqrt(mse),
              "mae": skm.mean_absolute_error(labels, outputs),
              "r2": skm.r2_score(labels, outputs)}
  # float32 sums of n terms against float64; R² subtracts two sums of standardised
  # labels whose difference (the variance) is of their size, so no cancellation.
  rtol = tolerances.sum_rtol(len(labels))
  for key, value in expected.items():
    np.testing.assert_allclose(got[key], value, rtol=rtol, err_msg=key)


def test_losses_are_zero_only_for_perfect_predictions():
  labels = np.array([[1, 0, 1]], np.int32)
  confident = np.array([[30.0, -30.0, 30.0]], np.float32)
  assert float(multilabel.per_example_loss(confident, labels)[0]) < 1e-12
  assert float(multilabel.per_example_loss(-confident, labels)[0]) > 10
  np.testing.assert_allclose(
      regression.per_example_loss(np.array([[1.0], [3.0]]), np.array([1.0, 1.0])),
      [0.0, 4.0])


def test_every_task_module_is_found_and_a_typo_is_named():
  assert tasks.names() == ["classification", "multilabel", "regression"]
  with pytest.raises(Exception, match=r"config.task='regresion'.*regression"):
    tasks.get("regresion")
