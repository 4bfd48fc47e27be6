"""The input pipeline: which examples each step sees, on which process, prefetched.

Determinism is by construction, not by bookkeeping. The training stream is an
endless sequence of epochs, each a permutation of the split seeded by (seed, epoch);
step k's global batch is positions [k*B, (k+1)*B) of that stream. So:

- resuming at step k computes step k's examples directly: no replay, and resume
  time does not grow with k;
- the global batch does not depend on the number of processes: process p takes
  rows [p*B/P, (p+1)*B/P) of it, so 1 and 2 processes train on identical batches;
- random augmentations draw from a generator seeded by (seed, position in the
  stream), so they too are independent of processes, threads and restarts.

Evaluation walks a split in order and pads the last global batch with masked
copies of example 0, so metrics are exact for any number of processes.

Texts of very different lengths (see `BatchLoader`): with `group_by_length`, each
window of `LENGTH_WINDOW_BATCHES` batches of an epoch's permutation is sorted by
length, longest first (Hugging Face's `group_by_length` does the same), so the
examples of a batch have similar lengths; a source with length buckets then pads
each batch only to the smallest bucket that holds its longest example. The bucket
is chosen from the global batch, so every process pads to the same length.
"""
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
import functools
import queue
import threading
from typing import Any

import numpy as np

Example = dict[str, np.ndarray]
Preprocess = Callable[[Example, np.random.Generator | None], Example]


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
  permutation.flags.writeable = False  # Cached and handed out as slices.
  return permutation


# Batches per window sorted by length. Larger windows pad less but order an epoch
# more (longest first within each window). On the docstring task
# (tools/make_docstring_topics.py, batch 32, buckets 16-32-48-64-96-128) batches
# are padded to 61 tokens on average, against 128 for random batches; the texts
# themselves average 46.
LENGTH_WINDOW_BATCHES = 16


def length_grouped(permutation: np.ndarray, lengths: np.ndarray,
                   window: int) -> np.ndarray:
  """`permutation` with each run of `window` positions sorted by length, longest
  first; ties keep their random order (a stable sort)."""
  grouped = np.array(permutation)
  for start in range(0, len(grouped), window):
    part = grouped[start:start + window]
    grouped[start:start + window] = part[np.argsort(-lengths[part], kind="stable")]
  grouped.flags.writeable = False
  return grouped


def train_indices(step: int, *, num_examples: int, global_batch_size: int,
                  seed: int,
                  epoch_order: Callable[[int], np.ndarray] | None = None
                  ) -> np.ndarray:
  """The source indices of step `step`'s global batch; a pure function.

  `epoch_order(epoch)` gives an epoch's order of the examples; by default the
  seeded permutation (a `BatchLoader` with `group_by_length` passes its own).
  """
  if epoch_order is None:
    epoch_order = functools.partial(_epoch_permutation, num_examples, seed)
  start = step * global_batch_size
  epoch, offset = divmod(start, num_examples)
  if offset + global_batch_size <= num_examples:
    # The batch lies within one epoch (all but about one step per epoch): a slice.
    # This runs once per step on the host, so it must stay cheap next to a step
    # that takes a millisecond on an accelerator.
    return epoch_order(epoch)[offset:offset + global_batch_size]
  epochs, within = np.divmod(start + np.arange(global_batch_size), num_examples)
  indices = np.empty(global_batch_size, np.int64)
  for e in np.unique(epochs):
    sel = epochs == e
    indices[sel] = epoch_order(int(e))[within[sel]]
  return indices


def local_rows(global_batch_size: int, process_index: int,
               process_count: int) -> slice:
  """This process's contiguous share of a global batch."""
  per_process = global_batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


class BatchLoader:
  """Reads and preprocesses the examples of a batch, in parallel threads.

  A source of texts may have `lengths` (each example's token count) and
  `length_buckets` (the padded lengths it offers, ascending), and take
  `get_batch(indices, length)`: the loader then pads each batch to the smallest
  bucket holding its longest example, so a handful of shapes compile and short
  texts do not pay for the longest. `group_by_length` orders training epochs so
  that batches hold texts of similar lengths (see `length_grouped`).
  """

  def __init__(self, source: Any, preprocess: Preprocess | None = None, *,
               num_threads: int = 4, group_by_length: bool = False):
    self.source = source
    self.preprocess = preprocess
    self.group_by_length = group_by_length and hasattr(source, "lengths")
    # Decoding (PIL, tokenizers, NumPy) mostly releases the GIL, so threads overlap.
    self._pool = ThreadPoolExecutor(num_threads) if num_threads > 1 else None

  def epoch_order(self, seed: int, global_batch_size: int
                  ) -> Callable[[int], np.ndarray] | None:
    """epoch -> order of the examples, or None for the plain seeded permutation."""
    if not self.group_by_length:
      return None
    return functools.partial(self._grouped_epoch, seed,
                             LENGTH_WINDOW_BATCHES * global_batch_size)

  @functools.lru_cache(maxsize=2)  # This runs every step; an epoch sorts once.
  def _grouped_epoch(self, seed: int, window: int, epoch: int) -> np.ndarray:
    return length_grouped(_epoch_permutation(len(self.source), seed, epoch),
                          self.source.lengths, window)

  def padded_length(self, global_indices: np.ndarray) -> int | None:
    """The bucket a batch of these examples is padded to; None: the source's own."""
    buckets = getattr(self.source, "length_buckets", None)
    if not buckets or self.preprocess is not None:
      return None
    longest = int(self.source.lengths[global_indices].max())
    return next((b for b in buckets if b >= longest), buckets[-1])

  def load(self, indices: np.ndarray, rng_keys: np.ndarray | None,
           length: int | None = None) -> Example:
    """Stacks examples `indices`; `rng_keys` seed per-example augmentation;
    `length` pads texts to that bucket (see `padded_length`)."""
    if length is not None:
      return self.source.get_batch(indices, length)
    if self.preprocess is None and hasattr(self.source, "get_batch"):
      return self.source.get_batch(indices)

    def one(i: int) -> Example:
      example = self.source[int(indices[i])]
      if self.preprocess is None:
        return example
      rng = None if rng_keys is None else np.random.default_rng(rng_keys[i])
      return self.preprocess(example, rng)

    examples = (list(self._pool.map(one, range(len(indices)))) if self._pool
                else [one(i) for i in range(len(indices))])
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _with_mask(batch: Example, valid: np.ndarray) -> Example:
  """Adds the padding mask, combined with a token-level mask if there is one."""
  batch = dict(batch)
  if "mask" in batch:
    shape = (-1,) + (1,) * (batch["mask"].ndim - 1)
    batch["mask"] = batch["mask"].astype(np.float32) * valid.reshape(shape)
  else:
    batch["mask"] = valid.astype(np.float32, copy=False)
  return batch


def train_batch(loader: BatchLoader, step: int, *, global_batch_size: int,
                seed: int, process_index: int = 0,
                process_count: int = 1) -> Example:
  """This process's share of step `step`'s training batch."""
  global_indices = train_indices(
      step, num_examples=len(loader.source), global_batch_size=global_batch_size,
      seed=seed, epoch_order=loader.epoch_order(seed, global_batch_size))
  return batch_of(loader, global_indices, step, seed=seed,
                  process_index=process_index, process_count=process_count)


def batch_of(loader: BatchLoader, global_indices: np.ndarray, step: int, *,
             seed: int, process_index: int = 0, process_count: int = 1) -> Example:
  """This process's share of the training batch of examples `global_indices`
  (-1: padding, masked out), as step `step`'s: its augmentation draws from
  (seed, position in the step's batch)."""
  rows = local_rows(len(global_indices), process_index, process_count)
  indices = global_indices[rows]
  valid = indices >= 0
  rng_keys = None
  if loader.preprocess is not None:  # Only preprocessing draws random numbers.
    positions = step * len(global_indices) + np.arange(len(global_indices))[rows]
    rng_keys = np.stack([np.full_like(positions, seed), positions], axis=1)
  real = global_indices[global_indices >= 0]
  length = loader.padded_length(real if len(real) else np.zeros(1, np.int64))
  return _with_mask(loader.load(np.where(valid, indices, 0), rng_keys, length),
                    valid.astype(np.float32))


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return -(-num_examples // global_batch_size)


def eval_batches(loader: BatchLoader, *, global_batch_size: int,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[Example]:
  """This process's share of each evaluation batch, in order, padded and masked.

  Each batch also holds "index": each example's position in the split (-1 at
  padding), which names it in exported predictions and seeds its bootstrap
  weights whatever the batching (ctjax/slices.py).
  """
  n = len(loader.source)
  rows = local_rows(global_batch_size, process_index, process_count)
  for b in range(num_eval_batches(n, global_batch_size)):
    global_positions = b * global_batch_size + np.arange(global_batch_size)
    positions = global_positions[rows]
    valid = positions < n
    length = loader.padded_length(global_positions[global_positions < n])
    batch = _with_mask(loader.load(np.where(valid, positions, 0), None, length),
                       valid.astype(np.float32))
    batch["index"] = np.where(valid, positions, -1).astype(np.int32)
    yield batch


def prefetch(batches: Iterator[Any], size: int = 2) -> Iterator[Any]:
  """Runs `batches` (reading and decoding) `size` items ahead in a thread.

  Only host work happens in the thread: on CPU, a host-to-device transfer from a
  second thread while a program with collectives runs can deadlock XLA's
  rendezvous, so `to_device` below runs in the caller's thread. Exceptions in the
  producer (a corrupt record, say) are re-raised in the consumer, at the batch where
  they happened. `size=0` runs everything in the caller's thread.
  """
  if size == 0:
    yield from batches
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def produce():
    try:
      for item in batches:
        if stop.is_set():
          return
        q.put(item)
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  threading.Thread(target=produce, daemon=True).start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


def to_device(batches: Iterator[Any], transfer: Callable[[Any], Any]) -> Iterator[Any]:
  """Transfers one batch ahead: batch k+1 is copied while step k computes."""
  batches = iter(batches)
  try:
    ahead = transfer(next(batches))
  except StopIteration:
    return
  for batch in batches:
    current, ahead = ahead, transfer(batch)
    yield current
  yield ahead
