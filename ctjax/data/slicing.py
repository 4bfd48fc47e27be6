"""Evaluation slices: groups of examples (site, sex, age band) measured apart.

  config.data.slices = {
      "sex": "sex",                                   # one group per value
      "age": {"column": "age", "edges": (40, 60)},    # bands: < 40, 40-60, >= 60
      "diagnosis": "label",                           # one group per class
  }

A slice names a column of the data: a table's column by its header name (a
column used only for slicing is read as text and is not a feature), a bundled
scikit-learn table's feature by name, or "label". Each evaluation batch then holds
"slice/NAME", the group id of every example, and the evaluator reports every
metric per group with a bootstrap interval (ctjax/slices.py).

Groups are the values found in the split being evaluated, sorted (numbers by
value), plus "(missing)" where values are missing; a numeric column with `edges`
is cut into len(edges) + 1 bands. So a split's groups are what it holds: a site
that only the test split has is still measured there.
"""
from collections.abc import Mapping
from typing import Any

import numpy as np

from ctjax.errors import UserError

MISSING = "(missing)"


def specs(data_config: Any) -> dict[str, dict[str, Any]]:
  """config.data.slices as {name: {"column": ..., "edges": (...) or None}}."""
  given = data_config.get("slices") or {}
  if hasattr(given, "to_dict"):
    given = given.to_dict()
  if not isinstance(given, Mapping):
    raise UserError(f"config.data.slices={given!r}: give a dict of slice name -> "
                    "column (or dict(column=..., edges=(...)))")
  result = {}
  for name, spec in given.items():
    key = f"config.data.slices.{name}"
    if isinstance(spec, str):
      spec = {"column": spec}
    if not isinstance(spec, Mapping) or set(spec) - {"column", "edges"} or (
        not isinstance(spec.get("column"), str)):
      raise UserError(f"{key}={spec!r}: give a column name, or dict(column=..., "
                      "edges=(...))")
    edges = spec.get("edges")
    if edges is not None:
      edges = tuple(edges)
      if not edges or not all(isinstance(e, (int, float)) for e in edges) or list(
          edges) != sorted(set(edges)):
        raise UserError(f"{key}.edges={edges!r}: give increasing numbers")
    result[name] = {"column": spec["column"], "edges": edges}
  return result


def columns(data_config: Any) -> list[str]:
  """The table columns the slices read (besides the label)."""
  return sorted({s["column"] for s in specs(data_config).values()} - {"label"})


def _values(source: Any, column: str, key: str) -> np.ndarray:
  if column == "label":
    labels = getattr(source, "labels", None)
    if labels is None or np.asarray(labels).ndim != 1:
      raise UserError(f"{key}='label': this data has no class label per example")
    names = getattr(source, "label_names", None)
    labels = np.asarray(labels)
    return np.array([names[i] if names else str(i) for i in labels], dtype=object)
  table = getattr(source, "columns", None) or {}
  if column not in table:
    raise UserError(f"{key}: no column {column!r} in this data"
                    + (f"; it has {', '.join(table)}" if table else
                       "; slices need a table (csv, sklearn_datasets) or 'label'"))
  return np.asarray(table[column])


def group_ids(values: np.ndarray, edges: tuple[float, ...] | None,
              key: str) -> tuple[np.ndarray, list[str]]:
  """int32 [n] group ids of `values` and the groups' names."""
  missing = np.array([v is None or (isinstance(v, float) and np.isnan(v))
                      for v in values], bool)
  if edges is not None:
    try:
      numbers = np.where(missing, 0.0, values).astype(np.float64)
    except (TypeError, ValueError):
      raise UserError(f"{key}.edges: column holds values that are not numbers; "
                      "remove edges to group by value") from None
    names = ([f"< {edges[0]:g}"] +
             [f"{lo:g} to < {hi:g}" for lo, hi in zip(edges[:-1], edges[1:])] +
             [f">= {edges[-1]:g}"])
    ids = np.searchsorted(np.asarray(edges, np.float64), numbers, side="right")
  else:
    present = sorted({v for v, m in zip(values, missing) if not m},
                     key=lambda v: (isinstance(v, str), v))
    names = [str(v) for v in present]
    position = {v: i for i, v in enumerate(present)}
    ids = np.array([0 if m else position[v] for v, m in zip(values, missing)])
  if missing.any():
    ids = np.where(missing, len(names), ids)
    names = names + [MISSING]
  return ids.astype(np.int32), names


class Sliced:
  """`source` whose examples also hold "slice/NAME" group ids; `slice_names`
  gives each slice's group names. Everything else is the source's."""

  def __init__(self, source: Any, groups: dict[str, tuple[np.ndarray, list[str]]]):
    self._source = source
    self._ids = {f"slice/{name}": ids for name, (ids, _) in groups.items()}
    self.slice_names = {name: names for name, (_, names) in groups.items()}
    if hasattr(source, "get_batch"):
      self.get_batch = self._get_batch

  def __getattr__(self, name: str) -> Any:
    return getattr(self._source, name)

  def __len__(self) -> int:
    return len(self._source)

  def _get_batch(self, indices: np.ndarray, *length: int) -> dict[str, np.ndarray]:
    batch = self._source.get_batch(indices, *length)
    return {**batch, **{k: ids[indices] for k, ids in self._ids.items()}}

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {**self._source[i], **{k: ids[i] for k, ids in self._ids.items()}}


def attach(data_config: Any, splits: dict[str, Any]) -> dict[str, Any]:
  """Every split but "train" with its slices' group ids (config.data.slices)."""
  given = specs(data_config)
  if not given:
    return splits
  result = {}
  for split_name, source in splits.items():
    if split_name == "train":  # Slices are measured, not trained on.
      result[split_name] = source
      continue
    groups = {}
    for name, spec in given.items():
      key = f"config.data.slices.{name}"
      groups[name] = group_ids(_values(source, spec["column"], key), spec["edges"],
                               key)
    result[split_name] = Sliced(source, groups)
  return result
