"""Synthetic classification data: for smoke tests and benchmarks.

Inputs are standard normal; the label is the argmax of a fixed random linear map of
the inputs, so the task is learnable and a model's progress is meaningful.

  config.data.source = "synthetic"
  config.data.shape = (32, 32, 3); config.data.num_classes = 10
  config.data.splits = {"train": "4096", "validation": "512"}  # examples per split
"""
from typing import Any

import numpy as np

from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError


def open_source(data_config: Any, split: str) -> ArraySource:
  try:
    num_examples = int(split)
  except ValueError:
    raise UserError(f"config.data.splits: synthetic splits are example counts, "
                    f"got {split!r}") from None
  shape = tuple(data_config.shape)
  num_classes = data_config.num_classes
  # The labelling map is shared by all splits; the inputs differ per split.
  projection = np.random.default_rng(0).normal(size=(int(np.prod(shape)), num_classes))
  rng = np.random.default_rng([data_config.get("seed", 0), num_examples])
  inputs = rng.normal(size=(num_examples, *shape)).astype(np.float32)
  labels = np.argmax(inputs.reshape(num_examples, -1) @ projection, axis=1)
  return ArraySource({"inputs": inputs, "label": labels.astype(np.int32)})
