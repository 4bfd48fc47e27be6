"""scikit-learn's bundled datasets: real data that needs no download.

  config.data.source = "sklearn_datasets"
  config.data.name = "digits"          # or "breast_cancer", "iris", "wine";
                                       # "diabetes" (regression: config.task =
                                       # "regression", model.num_classes = 1)
  config.data.split_fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}

`digits` gives 8x8x1 images scaled to [0, 1]; the tabular ones give float feature
vectors, standardised with statistics of the whole table (they are tiny reference
sets; for a user's own table, see the `csv` source, which uses the training split).
Diabetes' target (disease progression after a year, 25 to 346) is standardised
the same way, and its `label_mean` and `label_std` let evaluation report errors in
the original units.

The tables' feature columns, by scikit-learn's names ("mean radius", "age", ...),
can define evaluation slices (config.data.slices, ctjax/data/slicing.py).
"""
from typing import Any

import numpy as np

from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError

_LOADERS = ("digits", "breast_cancer", "iris", "wine", "diabetes")


def open_source(data_config: Any, split: str) -> ArraySource:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  name = data_config.get("name")
  if name not in _LOADERS:
    raise UserError(f"config.data.name={name!r}: choose one of {', '.join(_LOADERS)}")
  if split != "all":
    raise UserError(f"config.data.splits: sklearn_datasets has one split; use "
                    "config.data.split_fractions to divide it")
  bunch = getattr(datasets, f"load_{name}")(scaled=False) if name == "diabetes" else (
      getattr(datasets, f"load_{name}")())
  if name == "digits":
    return ArraySource({"inputs": (bunch.images / 16.0).astype(np.float32)[..., None],
                        "label": bunch.target.astype(np.int32)})
  x = bunch.data.astype(np.float32)
  columns = dict(zip(bunch.feature_names, bunch.data.T))
  inputs = (x - x.mean(0)) / (x.std(0) + 1e-6)
  if name == "diabetes":
    y = bunch.target.astype(np.float64)
    label_mean, label_std = float(y.mean()), float(y.std())
    source = ArraySource({"inputs": inputs,
                          "label": ((y - label_mean) / label_std).astype(np.float32)},
                         columns=columns)
    source.label_mean, source.label_std = label_mean, label_std
    return source
  source = ArraySource({"inputs": inputs, "label": bunch.target.astype(np.int32)},
                       columns=columns)
  source.label_names = [str(n) for n in bunch.target_names]
  source.feature_names = [str(n) for n in bunch.feature_names]
  return source
