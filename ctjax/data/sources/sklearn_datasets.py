"""scikit-learn's bundled datasets: real data that needs no download.

  config.data.source = "sklearn_datasets"
  config.data.name = "digits"          # or "breast_cancer", "iris", "wine"
  config.data.split_fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}

`digits` gives 8x8x1 images scaled to [0, 1]; the tabular ones give float feature
vectors, standardised with statistics of the whole table (they are tiny reference
sets; for a user's own table, see the `csv` source, which uses the training split).
"""
from typing import Any

import numpy as np

from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError

_LOADERS = ("digits", "breast_cancer", "iris", "wine")


def open_source(data_config: Any, split: str) -> ArraySource:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  name = data_config.get("name")
  if name not in _LOADERS:
    raise UserError(f"config.data.name={name!r}: choose one of {', '.join(_LOADERS)}")
  if split != "all":
    raise UserError(f"config.data.splits: sklearn_datasets has one split; use "
                    "config.data.split_fractions to divide it")
  bunch = getattr(datasets, f"load_{name}")()
  if name == "digits":
    inputs = (bunch.images / 16.0).astype(np.float32)[..., None]
  else:
    x = bunch.data.astype(np.float32)
    inputs = (x - x.mean(0)) / (x.std(0) + 1e-6)
  return ArraySource({"inputs": inputs, "label": bunch.target.astype(np.int32)})
