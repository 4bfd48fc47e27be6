"""Opening the splits a config names, and dividing one source by fractions.

Two ways to get train/validation/test:

  config.data.splits = {"train": "train[:90%]", "validation": "train[90%:]"}
      each value is handed to the source's `open_source` (TFDS split strings,
      file paths, ...);
  config.data.split_fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
      the source is opened once (split spec "all") and divided by a permutation
      seeded by `config.data.split_seed`, stratified by label when
      `config.data.stratify` is set.

Either way `describe` gives a record (sizes, specs and a digest of the indices)
that the trainer writes to WORKDIR/splits.json, so a split can be reproduced and
checked.
"""
import hashlib
import importlib
from typing import Any

import numpy as np

from ctjax.errors import UserError


class Subset:
  """The examples `indices` of `source`, in that order."""

  def __init__(self, source: Any, indices: np.ndarray):
    self.source = source
    self.indices = np.asarray(indices, np.int64)
    if hasattr(source, "get_batch"):
      self.get_batch = lambda idx: source.get_batch(self.indices[idx])
    if getattr(source, "labels", None) is not None:
      self.labels = np.asarray(source.labels)[self.indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return self.source[int(self.indices[i])]


def fraction_indices(num_examples: int, fractions: dict[str, float], *,
                     seed: int, labels: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
  """Divides range(num_examples) into named parts by fraction.

  With `labels`, each class is divided separately (stratified), so every part keeps
  the class balance of the whole; parts are then shuffled with the same seed.
  """
  names = list(fractions)
  rng = np.random.default_rng(seed)
  groups = ([np.arange(num_examples)] if labels is None else
            [np.flatnonzero(labels == c) for c in np.unique(labels)])
  parts = {name: [] for name in names}
  for group in groups:
    group = rng.permutation(group)
    bounds = np.round(np.cumsum([fractions[n] for n in names]) * len(group))
    for name, lo, hi in zip(names, np.r_[0, bounds[:-1]], bounds):
      parts[name].append(group[int(lo):int(hi)])
  return {name: rng.permutation(np.concatenate(p)) for name, p in parts.items()}


def _source_module(data_config: Any):
  name = data_config.source
  try:
    return importlib.import_module(f"ctjax.data.sources.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"ctjax.data.sources.{name}":
      raise
    import pkgutil  # pylint: disable=g-import-not-at-top
    import ctjax.data.sources  # pylint: disable=g-import-not-at-top
    known = sorted(m.name for m in pkgutil.iter_modules(ctjax.data.sources.__path__))
    raise UserError(f"config.data.source={name!r}: no module "
                    f"ctjax/data/sources/{name}.py; choose one of "
                    f"{', '.join(known)}") from None


def open_splits(data_config: Any) -> dict[str, Any]:
  """Opens every split the config names: {"train": source, "validation": ...}."""
  module = _source_module(data_config)
  fractions = data_config.get("split_fractions")
  if fractions:
    fractions = dict(fractions)
    total = sum(fractions.values())
    if any(f <= 0 for f in fractions.values()) or total > 1 + 1e-9:
      raise UserError(f"config.data.split_fractions={fractions}: fractions must be "
                      "positive and sum to at most 1")
    whole = module.open_source(data_config, "all")
    labels = getattr(whole, "labels", None) if data_config.get("stratify") else None
    if data_config.get("stratify") and labels is None:
      raise UserError(f"config.data.stratify=True: source {data_config.source!r} "
                      "has no labels to stratify by; set stratify=False")
    parts = fraction_indices(len(whole), fractions,
                             seed=data_config.get("split_seed", 0), labels=labels)
    splits = {name: Subset(whole, idx) for name, idx in parts.items()}
  else:
    splits = {name: module.open_source(data_config, spec)
              for name, spec in dict(data_config.splits).items()}
  for name, source in splits.items():
    if len(source) == 0:
      raise UserError(f"config.data: split {name!r} is empty; check its spec or "
                      "fractions")
  return splits


def describe(data_config: Any, splits: dict[str, Any]) -> dict[str, Any]:
  """What WORKDIR/splits.json records: enough to rebuild and verify each split."""
  record = {"source": data_config.source}
  for key in ("splits", "split_fractions", "split_seed", "stratify"):
    if data_config.get(key) is not None:
      value = data_config.get(key)
      record[key] = value.to_dict() if hasattr(value, "to_dict") else value
  record["sizes"] = {name: len(s) for name, s in splits.items()}
  record["index_sha256"] = {
      name: hashlib.sha256(s.indices.tobytes()).hexdigest()
      for name, s in splits.items() if isinstance(s, Subset)}
  return record
