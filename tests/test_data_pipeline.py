"""The input pipeline: resumable without replay, epochs, processes, exact evaluation."""
import json

import numpy as np
import pytest
import scipy.special

import multiprocess_util
import run_util
import tolerances
from ctjax import config as config_lib
from ctjax import models
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.data.sources.memory import ArraySource


def _loader(num_examples: int) -> pipeline.BatchLoader:
  return pipeline.BatchLoader(ArraySource({
      "inputs": np.arange(num_examples, dtype=np.float32)[:, None],
      "label": np.zeros(num_examples, np.int32)}), num_threads=1)


class _CountingSource(ArraySource):
  """An in-memory source that records which examples are read."""

  def __init__(self, num_examples: int):
    super().__init__({"inputs": np.arange(num_examples)[:, None],
                      "label": np.zeros(num_examples, np.int32)})
    self.read: list[int] = []

  def get_batch(self, indices):
    self.read.extend(int(i) for i in indices)
    return super().get_batch(indices)

  def __getitem__(self, i):
    self.read.append(int(i))
    return super().__getitem__(i)


@pytest.mark.parametrize("step", [10, 78, 10**7, 10**7 + 78])
def test_batch_of_any_step_reads_only_its_own_examples(step):
  """Resuming at step k reads step k's examples, however large k is.

  Counted rather than timed: the batch reads exactly its 128 examples and draws
  the permutation of at most the two epochs it spans (step 78 and 10**7 + 78 span
  a boundary: 78 x 128 = 9984), never the epochs before.
  """
  n, batch = 10_000, 128
  source = _CountingSource(n)
  pipeline._epoch_permutation.cache_clear()  # pylint: disable=protected-access
  got = pipeline.train_batch(pipeline.BatchLoader(source, num_threads=1), step,
                             global_batch_size=batch, seed=0)
  assert len(source.read) == batch
  # pylint: disable-next=protected-access
  drawn = pipeline._epoch_permutation.cache_info().misses
  assert drawn == (2 if step % 625 == 78 else 1)  # 625 steps = 8 epochs exactly.
  # The documented scheme by hand: positions [k*B, (k+1)*B) of a stream of
  # epochs, each a permutation of the split seeded by (seed, epoch).
  epochs, within = np.divmod(step * batch + np.arange(batch), n)
  want = np.empty(batch, np.int64)
  for epoch in np.unique(epochs):
    permutation = np.random.default_rng([0, int(epoch)]).permutation(n)
    want[epochs == epoch] = permutation[within[epochs == epoch]]
  np.testing.assert_array_equal(got["inputs"][:, 0], want)
  np.testing.assert_array_equal(source.read, want)


def test_epochs_cover_every_example_once_and_reshuffle_deterministically():
  n, batch = 100, 32  # The batch does not divide the split: batches cross epochs.
  loader = _loader(n)

  def stream(seed, steps):
    return np.concatenate([
        pipeline.train_batch(loader, s, global_batch_size=batch, seed=seed)
        ["inputs"][:, 0].astype(int) for s in range(steps)])

  order = stream(seed=7, steps=13)  # 416 examples: 4 whole epochs
  epochs = order[:4 * n].reshape(4, n)
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert len({tuple(e) for e in epochs}) == 4  # Each epoch has its own order.
  np.testing.assert_array_equal(order, stream(seed=7, steps=13))
  assert not np.array_equal(order, stream(seed=8, steps=13))
  # A run resumed at step 9 starts with exactly what step 9 was.
  np.testing.assert_array_equal(
      pipeline.train_batch(loader, 9, global_batch_size=batch, seed=7)["inputs"][:, 0],
      order[9 * batch:10 * batch])


def test_process_shares_make_up_the_global_batch_and_eval_is_exact():
  loader = _loader(45)
  whole = pipeline.train_batch(loader, 3, global_batch_size=16, seed=0)
  parts = [pipeline.train_batch(loader, 3, global_batch_size=16, seed=0,
                                process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]),
                                whole["inputs"])
  seen = []
  for p in range(2):
    for batch in pipeline.eval_batches(loader, global_batch_size=16,
                                       process_index=p, process_count=2):
      assert len(batch["mask"]) == 8
      seen.extend(batch["inputs"][batch["mask"] > 0, 0].astype(int))
  assert sorted(seen) == list(range(45))  # Every example once; padding masked.


CALIBRATION_BINS = 10


@pytest.mark.long
def test_one_and_two_processes_give_the_same_validation_metrics(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 3))
  colour = rng.choice(["red", "green", "blue"], size=300)
  y = np.argmax(0.5 * x + 3 * (colour[:, None] == ["red", "green", "blue"]), axis=1)
  with open(tmp_path / "table.csv", "w") as f:
    f.write("a,b,c,colour,y\n")
    f.writelines(f"{a:.4f},{b:.4f},{c:.4f},{k},{l}\n"
                 for (a, b, c), k, l in zip(x, colour, y))
  config = run_util.write_config(tmp_path, {
      "data": {"source": "csv", "path": str(tmp_path / "table.csv"),
               "label_column": "y", "categorical_columns": ("colour",),
               # 45 validation rows: the last eval batch is padded.
               "split_fractions": {"train": 0.7, "validation": 0.15, "test": 0.15},
               "stratify": True, "num_threads": 1, "slices": {"colour": "colour"}},
      "model": {"name": "mlp", "num_classes": 3, "hidden_sizes": (16,)},
      "batch_size": 16, "train_duration": 30, "log_every": 10,
      # Every statistic there is, and slices with bootstrap intervals.
      "evaluators": [{"type": "metrics", "final_splits": ("validation", "test"),
                      "top_k": (2,), "brier": True, "calibration_bins": CALIBRATION_BINS,
                      "auc_bins": 512, "resamples": 50}],
      "optim": {"lr": 0.01},
  })
  run_util.train(config, tmp_path / "one", devices=8)
  multiprocess_util.train(config, tmp_path / "two", num_processes=2,
                          devices_per_process=4)
  one, two = ({k: v for k, v in run_util.metrics(tmp_path / d)[-1].items()
               if k.startswith(("validation/", "test/"))} for d in ("one", "two"))
  assert one["validation/accuracy"] > 0.5  # It learned: the metrics mean something.
  assert one.keys() == two.keys()
  # Two processes sum in another order (gloo across them, XLA within): 30 steps
  # and one more forward pass, each through 16 rows and, per row forward and
  # backward, the 6- and 16-input products and the 3-way softmax
  # (tests/tolerances.py).
  rtol = tolerances.curve_rtol(31, n=16 + 2 * (6 + 16 + 3))
  # Predictions whose top two logits are further apart than the logits can move
  # are the same in both runs, so counts and their ratios are exactly equal: the
  # model's margins (from run one's parameters) show that every one is.
  workdir = tmp_path / "one"
  run_config = config_lib.from_json((workdir / "config.json").read_text())
  splits = splits_lib.open_splits(run_config.data, state_dir=str(workdir),
                                  write_state=False)
  model = models.get_model(run_config.model)
  params = run_util.saved_state(workdir)["params"]
  calibration_slack = {}
  for name in ("validation", "test"):
    source = splits[name]
    logits = np.asarray(model.apply({"params": params},
                                    source.get_batch(np.arange(len(source)))["inputs"]))
    # Every class's rank is that far from changing, so top-k counts are too.
    logit_error = rtol * np.abs(logits).max()
    assert np.diff(np.sort(logits, axis=1), axis=1).min() > 2 * logit_error
    # A confidence moves by at most 2·logit_error (softmax is 1-Lipschitz per
    # logit pair); an example that close to a calibration bin's edge may change
    # bins, moving the expected calibration error by at most 2/n.
    confidence = scipy.special.softmax(logits.astype(np.float64), axis=1).max(1)
    edges = np.arange(1, CALIBRATION_BINS) / CALIBRATION_BINS
    near = (np.abs(confidence[:, None] - edges).min(1) <= 2 * logit_error).sum()
    calibration_slack[name] = 2 * near / len(source) + rtol
  for key in one:
    split, metric = key.split("/")
    if metric.endswith(("loss", "brier")):
      assert two[key] == pytest.approx(one[key], rel=rtol), key
    elif metric == "expected_calibration_error":
      assert abs(two[key] - one[key]) <= calibration_slack[split], key
    elif metric in ("roc_auc_ovr", "average_precision_ovr"):
      # Both within their bin error bounds of the exact value (a probability near
      # a bin's edge may land in either bin).
      bound = one[f"{key}_bin_error_bound"] + two[f"{key}_bin_error_bound"]
      assert abs(two[key] - one[key]) <= bound + 1e-12, key
    elif not metric.endswith("_bin_error_bound"):
      assert two[key] == one[key], key
  # Slices: each colour's accuracy and its bootstrap interval, to the bit (the
  # Poisson weights depend on the seed and the example only).
  for name in ("validation", "test"):
    one_slices, two_slices = (json.loads((tmp_path / d / "eval" / "final" / name /
                                          "metrics.json").read_text())["slices"]
                              for d in ("one", "two"))
    assert [g["name"] for g in one_slices["colour"]["groups"]] == [
        "blue", "green", "red"]
    for slice_name in ("all", "colour"):
      for g1, g2 in zip(one_slices[slice_name]["groups"],
                        two_slices[slice_name]["groups"]):
        assert g1["count"] == g2["count"]
        assert g1["metrics"]["accuracy"] == g2["metrics"]["accuracy"]


def _texts_of_many_lengths(tmp_path, count=200):
  """A JSONL split whose texts are 1..120 bytes long, in a seeded order."""
  import json  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  path = tmp_path / "texts.jsonl"
  with open(path, "w") as f:
    for i in range(count):
      f.write(json.dumps({"text": "x" * int(rng.integers(1, 121)),
                          "label": i % 3}) + "\n")
  data = config_lib.ConfigDict(dict(
      source="jsonl", splits={"train": str(path)}, tokenizer="bytes", seq_len=128,
      special_tokens=False, length_buckets=(16, 32, 64)))
  return splits_lib.open_splits(data, state_dir=str(tmp_path), write_state=False,
                                num_classes=3, vocab_size=None)["train"]


def test_length_grouped_epochs_still_cover_every_example_once(tmp_path):
  source = _texts_of_many_lengths(tmp_path)
  loader = pipeline.BatchLoader(source, num_threads=1, group_by_length=True)
  order = loader.epoch_order(seed=3, global_batch_size=8)
  for epoch in range(2):
    assert sorted(order(epoch)) == list(range(len(source)))
  # Within a window, longest first; epochs differ (they start from new permutations).
  window = pipeline.LENGTH_WINDOW_BATCHES * 8
  lengths = source.lengths[order(0)[:window]]
  assert (np.diff(lengths) <= 0).all()
  assert not np.array_equal(order(0), order(1))


def test_batches_pad_to_the_smallest_bucket_holding_their_longest_text(tmp_path):
  source = _texts_of_many_lengths(tmp_path)
  fixed = pipeline.BatchLoader(source, num_threads=1)
  grouped = pipeline.BatchLoader(source, num_threads=1, group_by_length=True)
  widths = []
  for step in range(25):
    indices = pipeline.train_indices(
        step, num_examples=len(source), global_batch_size=8, seed=0,
        epoch_order=grouped.epoch_order(0, 8))
    batch = pipeline.train_batch(grouped, step, global_batch_size=8, seed=0)
    longest = source.lengths[indices].max()
    width = batch["inputs"].shape[1]
    assert width == min(b for b in (16, 32, 64, 128) if b >= longest)
    # The same tokens as the fixed-length batch, cut where only padding follows.
    full = fixed.load(indices, None)["inputs"]
    np.testing.assert_array_equal(batch["inputs"], full[:, :width])
    assert (full[:, width:] == 0).all()
    widths.append(width)
  assert len(set(widths)) > 1 and np.mean(widths) < 128


def test_every_process_pads_its_share_to_the_global_batch_bucket(tmp_path):
  source = _texts_of_many_lengths(tmp_path)
  loader = pipeline.BatchLoader(source, num_threads=1, group_by_length=True)
  for step in range(10):
    whole = pipeline.train_batch(loader, step, global_batch_size=8, seed=0)
    shares = [pipeline.train_batch(loader, step, global_batch_size=8, seed=0,
                                   process_index=p, process_count=2)
              for p in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([s["inputs"] for s in shares]), whole["inputs"])
  eval_loader = pipeline.BatchLoader(source, num_threads=1)
  for whole, *shares in zip(
      pipeline.eval_batches(eval_loader, global_batch_size=64),
      *(pipeline.eval_batches(eval_loader, global_batch_size=64, process_index=p,
                              process_count=2) for p in range(2))):
    np.testing.assert_array_equal(
        np.concatenate([s["inputs"] for s in shares]), whole["inputs"])
