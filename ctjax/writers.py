"""Where metrics go: WORKDIR/metrics.jsonl, stdout, and TensorBoard.

Only process 0 writes. metrics.jsonl is the contract that sweeps, plots and tests
read: one JSON object per logged step, {"step": N, "train/loss": ..., ...}.
TensorBoard event files (WORKDIR/tensorboard) need TensorFlow; without it the run
says so once and carries on with jsonl and stdout.
"""
import contextlib
import json
import logging
import os
import sys
from typing import Any, IO, Iterator

import jax


class MetricWriter:
  """Writes scalar metrics to every sink this process has."""

  def __init__(self, workdir: str, *, start_step: int = 0,
               enabled: bool | None = None, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    self._last_line = None  # (step, record, file offset) of the last jsonl line
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _drop_records_after(path, start_step)
    self._jsonl = open(path, "ab")
    if not tensorboard:  # config.tensorboard = False
      return
    try:
      # clu's TensorBoard writer is built on tf.summary.
      from clu.metric_writers import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      logging.warning("TensorFlow is not installed: no TensorBoard files; metrics go "
                      "to metrics.jsonl and stdout")

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    record = {"step": int(step), **scalars}
    if self._last_line is not None and self._last_line[0] == step:
      # Training and evaluation metrics of one step share its line: the contract
      # is one object per logged step. Rewrite that line with both.
      _, previous, offset = self._last_line
      record = {**previous, **record}
      self._jsonl.truncate(offset)
    self._jsonl.seek(0, os.SEEK_END)
    offset = self._jsonl.tell()
    self._jsonl.write((json.dumps(record) + "\n").encode("utf-8"))
    self._jsonl.flush()
    self._last_line = (step, record, offset)
    if self._tensorboard is not None:
      self._tensorboard.write_scalars(int(step), scalars)
      self._tensorboard.flush()

  def write_text(self, step: int, name: str, text: str) -> None:
    if self._tensorboard is not None:
      self._tensorboard.write_texts(int(step), {name: text})

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


def _drop_records_after(path: str, step: int) -> None:
  """Forgets records of steps after `step`, the step a run resumes from.

  A run killed after its last checkpoint logged steps that the resumed run will
  log again; keeping both would give those steps two records.
  """
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  kept = [l for l in lines if l.strip() and json.loads(l)["step"] <= step]
  if len(kept) != len(lines):
    with atomic_file(path) as f:
      f.writelines(kept)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "w", **open_args: Any) -> Iterator[IO[Any]]:
  """A file (text, or bytes with mode "wb") written whole, then renamed into
  place: a reader (another process, a browser) or a crash never finds half of
  it."""
  if "b" not in mode:
    open_args.setdefault("encoding", "utf-8")
  with open(path + ".tmp", mode, **open_args) as f:
    yield f
  os.replace(path + ".tmp", path)


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` whole (see `atomic_file`)."""
  with atomic_file(path) as f:
    f.write(text)


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The records of WORKDIR/metrics.jsonl; [] when there is none yet. A line cut
  short by a crash (the last one) is skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        continue
  return records


def info(message: Any = "") -> None:
  """Prints on process 0 only, flushed, so progress shows up promptly in logs."""
  if jax.process_index() == 0:
    print(message, flush=True, file=sys.stdout)


def format_scalars(scalars: dict[str, float]) -> str:
  return "  ".join(f"{k}={v:.4g}" for k, v in scalars.items())
