"""The drift measures (ctjax/drift.py) against hand computations, plain loops and
scipy, and the reference's round trip through a workdir."""
import csv
import json
import math

import numpy as np
import pytest
from scipy import stats

from ctjax import drift
from ctjax.errors import UserError


def test_psi_matches_a_hand_computation():
  # Proportions: reference .1 .2 0 .7, new .2 .2 .1 .5; the empty reference bin
  # counts as PSI_EPSILON = 1e-4.
  expected = (0.1 * math.log(0.2 / 0.1) + 0.0 + (0.1 - 1e-4) * math.log(0.1 / 1e-4)
              + (0.5 - 0.7) * math.log(0.5 / 0.7))
  assert drift.psi([10, 20, 0, 70], [20, 20, 10, 50]) == pytest.approx(
      expected, rel=1e-12)
  assert expected == pytest.approx(0.826694, abs=1e-6)  # By hand.
  # Only proportions count, and the index is symmetric without empty bins.
  assert drift.psi([1, 2, 7], [10, 20, 70]) == pytest.approx(0.0, abs=1e-15)
  assert drift.psi([1, 2, 7], [3, 3, 4]) == pytest.approx(drift.psi([3, 3, 4], [1, 2, 7]))


def test_bins_are_training_quantiles_open_at_both_ends():
  values = np.arange(1000.0)
  edges = drift.quantile_edges(values)
  assert edges == [99.0, 199.0, 299.0, 399.0, 499.0, 599.0, 699.0, 799.0, 899.0]
  assert list(drift.bin_counts(values, edges)) == [100] * 10
  # New values beyond the training range land in the outer bins.
  assert list(drift.bin_counts(np.array([-5.0, 5000.0]), edges)) == [1] + [0] * 8 + [1]
  # A 0/1 column (one-hot) gets a bin per value: (-inf, 0], (0, 1], (1, inf).
  onehot = np.array([0.0] * 70 + [1.0] * 30)
  edges = drift.quantile_edges(onehot)
  assert edges == [0.0, 1.0]
  assert list(drift.bin_counts(onehot, edges)) == [70, 30, 0]


def _rbf_mmd_by_loops(x, y, bandwidth):
  k = lambda a, b: math.exp(-sum((ai - bi) ** 2 for ai, bi in zip(a, b))
                            / (2 * bandwidth**2))
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
  return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)


def test_mmd_equals_the_unbiased_estimator_by_plain_loops():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(5, 3)), rng.normal(0.5, 1.0, size=(4, 3))
  for bandwidth in (0.5, 1.7):
    assert drift.mmd(x, y, bandwidth) == pytest.approx(
        _rbf_mmd_by_loops(x.tolist(), y.tolist(), bandwidth), rel=1e-12)
  # The median heuristic: the median of the distinct rows' distances.
  distances = [math.dist(a, b) for i, a in enumerate(x.tolist())
               for b in x.tolist()[i + 1:]]
  assert drift.median_bandwidth(x) == pytest.approx(float(np.median(distances)))


def test_mmd_permutation_test_flags_a_shift_and_is_calibrated_without_one():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(80, 4))
  bandwidth = drift.median_bandwidth(x)
  _, p_shifted = drift.mmd_test(x, rng.normal(0.6, 1.0, size=(80, 4)), bandwidth)
  assert p_shifted < 0.01
  # Same distribution: p-values spread over (0, 1], rarely below a level.
  p_values = [drift.mmd_test(rng.normal(size=(40, 4)), rng.normal(size=(40, 4)),
                             bandwidth, seed=s)[1] for s in range(40)]
  assert 0.35 < np.mean(p_values) < 0.65
  assert np.mean(np.array(p_values) < 0.1) <= 0.25
  # Seeded: the same permutations give the same p-value.
  y = rng.normal(size=(30, 4))
  assert drift.mmd_test(x, y, bandwidth, seed=3) == drift.mmd_test(x, y, bandwidth,
                                                                   seed=3)


def _binary_probabilities(logits):
  p = 1 / (1 + np.exp(-logits))
  return np.stack([1 - p, p], axis=1)


def _table(rng, n, shift=0.0):
  """Three features (one 0/1), labels and a model's probabilities that follow
  the first feature."""
  x = np.stack([rng.normal(size=n), rng.normal(shift, 1.0, size=n),
                (rng.random(n) < 0.3).astype(float)], axis=1)
  labels = (x[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(int)
  return x, _binary_probabilities(3 * x[:, 0]), labels


def test_compare_tests_each_feature_with_scipys_ks_and_flags_only_the_shifted():
  rng = np.random.default_rng(2)
  x, probabilities, labels = _table(rng, 3000)
  reference = drift.reference_statistics(
      x, kind="table", probabilities=probabilities, labels=labels,
      feature_names=["a", "b", "flag"], reference_metrics={"accuracy": 0.9})
  assert reference["table"]["sample"].shape == (drift.TABLE_SAMPLE, 3)

  same = drift.compare(reference, *_table(rng, 800))
  assert not same.drifted, drift.markdown(same)
  shifted_x, shifted_p, shifted_labels = _table(rng, 800, shift=0.3)
  shifted = drift.compare(reference, shifted_x, shifted_p, shifted_labels)
  assert shifted.drifted
  assert [(r.name, r.crossed) for r in shifted.crossed] == [("b", ("ks",))]
  for j, row in enumerate(r for r in shifted.rows if r.check == "feature"):
    want = stats.ks_2samp(reference["table"]["sample"][:, j], shifted_x[:, j])
    assert (row.statistic, row.p_value) == pytest.approx((want.statistic, want.pvalue))
    assert row.psi == pytest.approx(drift.psi(
        reference["table"]["counts"][j],
        drift.bin_counts(shifted_x[:, j], reference["table"]["edges"][j])))
  # Bonferroni: the KS level is divided by the 3 features.
  b = next(r for r in shifted.rows if r.name == "b")
  assert b.p_value < 0.01 / 3
  loose = drift.compare(reference, shifted_x, shifted_p, shifted_labels,
                        thresholds=drift.Thresholds(ks_pvalue=b.p_value * 2.9))
  assert "ks" not in next(r for r in loose.rows if r.name == "b").crossed


def test_predictions_labels_and_accuracy_are_compared():
  rng = np.random.default_rng(3)
  x, probabilities, labels = _table(rng, 3000)
  accuracy = float(np.mean(np.argmax(probabilities, 1) == labels))
  reference = drift.reference_statistics(
      x, kind="table", probabilities=probabilities, labels=labels,
      reference_metrics={"accuracy": accuracy})
  assert reference["labels"]["counts"] == list(np.bincount(labels, minlength=2))
  assert reference["predictions"]["counts"] == list(
      np.bincount(np.argmax(probabilities, 1), minlength=2))

  # The same inputs, the labels now following the first feature the other way:
  # accuracy falls; inputs, predictions and the label balance do not move.
  new_x, new_p, new_labels = _table(rng, 1000)
  report = drift.compare(reference, new_x, new_p, 1 - new_labels)
  rows = {r.check: r for r in report.rows}
  assert rows["accuracy"].reference == accuracy
  assert rows["accuracy"].new == pytest.approx(np.mean(np.argmax(new_p, 1)
                                                       == 1 - new_labels))
  assert [r.check for r in report.crossed] == ["accuracy"]
  assert rows["predictions"].psi == pytest.approx(drift.psi(
      reference["predictions"]["counts"], np.bincount(np.argmax(new_p, 1))))

  # A model that has become sure of class 1: predictions and scores drift.
  confident = _binary_probabilities(3 * new_x[:, 0] + 3)
  report = drift.compare(reference, new_x, confident)
  assert {r.check for r in report.crossed} == {"predictions", "scores"}
  assert "accuracy" not in {r.check for r in report.rows}  # No labels given.
  scores = {r.check: r for r in report.rows}["scores"]
  want = stats.ks_2samp(reference["scores"]["sample"], confident[:, 1])
  assert (scores.statistic, scores.p_value) == pytest.approx(
      (want.statistic, want.pvalue))


def test_embeddings_are_compared_by_mmd_after_standardising():
  rng = np.random.default_rng(4)
  # Dimensions of very different scales: standardised, each counts.
  scale = np.array([100.0, 1.0, 0.01])
  embed = lambda n, shift=0.0: (rng.normal(size=(n, 3)) + [0, 0, shift]) * scale
  probabilities = lambda n: _binary_probabilities(rng.normal(size=n))
  reference = drift.reference_statistics(embed(3000), kind="embedding",
                                         probabilities=probabilities(3000))
  assert reference["embedding"]["sample"].shape == (drift.EMBEDDING_SAMPLE, 3)
  np.testing.assert_allclose(np.sqrt(reference["embedding"]["variance"]), scale,
                             rtol=0.05)
  same = drift.compare(reference, embed(300), probabilities(300))
  [row] = [r for r in same.rows if r.check == "embedding"]
  assert row.test == "mmd" and not row.crossed and row.p_value > 0.01
  # A shift of 0.5 std in the smallest dimension, invisible on the raw scale.
  shifted = drift.compare(reference, embed(300, shift=0.5), probabilities(300))
  [row] = [r for r in shifted.rows if r.check == "embedding"]
  assert row.crossed == ("mmd",) and row.p_value < 0.01


def test_reference_round_trips_through_the_workdir(tmp_path):
  rng = np.random.default_rng(5)
  x, probabilities, labels = _table(rng, 500)
  reference = drift.reference_statistics(
      x, kind="table", probabilities=probabilities, labels=labels,
      feature_names=["a", "b", "flag"], reference_metrics={"accuracy": 0.875})
  directory = drift.save_reference(str(tmp_path), reference)
  loaded = drift.load_reference(str(tmp_path))
  assert loaded["table"]["names"] == ["a", "b", "flag"]
  assert loaded["metrics"] == {"accuracy": 0.875}
  np.testing.assert_array_equal(loaded["table"]["sample"], reference["table"]["sample"])
  np.testing.assert_array_equal(loaded["scores"]["sample"],
                                reference["scores"]["sample"])
  assert loaded["table"]["edges"] == reference["table"]["edges"]  # Exact floats.
  # People can read the JSON; the arrays are in the .npz.
  small = json.loads((tmp_path / "reference" / "reference.json").read_text())
  assert small["table"]["sample"] == {"array": "table/sample"}

  # Arrays of another save (a crash between the two files) are refused.
  drift.save_reference(str(tmp_path / "other"), drift.reference_statistics(
      x[:100], kind="table", probabilities=probabilities[:100]))
  (tmp_path / "reference" / "arrays.npz").write_bytes(
      (tmp_path / "other" / "reference" / "arrays.npz").read_bytes())
  with pytest.raises(UserError) as error:
    drift.load_reference(str(tmp_path))
  assert str(error.value).startswith(f"{directory}/reference.json: unreadable")
  assert "\n" not in str(error.value)
  with pytest.raises(UserError, match=r"reference\.json: missing.*reference_statistics"):
    drift.load_reference(str(tmp_path / "nothing"))


def test_report_files_mark_the_rows_that_crossed(tmp_path):
  rng = np.random.default_rng(6)
  x, probabilities, _ = _table(rng, 2000)
  reference = drift.reference_statistics(x, kind="table", probabilities=probabilities,
                                         feature_names=["a", "b", "flag"])
  x, probabilities, labels = _table(rng, 500, shift=2.0)
  report = drift.compare(reference, x, probabilities, labels)
  paths = drift.write_report(report, str(tmp_path / "out"))
  assert sorted(paths) == ["csv", "json", "md", "png"]
  with open(paths["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [r["name"] for r in rows] == [r.name for r in report.rows]
  b = next(r for r in rows if r["name"] == "b")
  assert float(b["psi"]) == next(r.psi for r in report.rows if r.name == "b")
  assert b["crossed"] == "psi+ks"
  summary = json.loads(open(paths["json"]).read())
  assert summary["drifted"] is True
  assert summary["thresholds"] == {"psi": 0.2, "ks_pvalue": 0.01, "mmd_pvalue": 0.01,
                                   "accuracy_drop": 0.05}
  md = open(paths["md"]).read()
  assert md.startswith("# Drift: **DRIFT**")
  assert "| **feature** | **b** |" in md and "| feature | a |" in md
  assert open(paths["png"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
