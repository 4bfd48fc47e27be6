"""Where metrics go: WORKDIR/metrics.jsonl, stdout, and TensorBoard.

Only process 0 writes. metrics.jsonl is the contract that sweeps, plots and tests
read: one JSON object per logged step, {"step": N, "train/loss": ..., ...}.
TensorBoard event files (WORKDIR/tensorboard) need TensorFlow; without it the run
says so once and carries on with jsonl and stdout.
"""
import json
import logging
import os
import sys
from typing import Any

import jax


class MetricWriter:
  """Writes scalar metrics to every sink this process has."""

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tensorboard = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
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
    self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
    self._jsonl.flush()
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


def info(message: Any = "") -> None:
  """Prints on process 0 only, flushed, so progress shows up promptly in logs."""
  if jax.process_index() == 0:
    print(message, flush=True, file=sys.stdout)


def format_scalars(scalars: dict[str, float]) -> str:
  return "  ".join(f"{k}={v:.4g}" for k, v in scalars.items())
