"""What file sources share: finding files, bad records, and label vocabularies.

A bad record (an unparsable row, a missing value, a corrupt image) stops the run
before training with one line naming the file and the line or record:

  ctjax: error: data/train.csv:17: column 'age': 'abc' is not a finite number;
  fix it, or set config.data.skip_bad_records=True to skip bad records

With `config.data.skip_bad_records = True` such records are dropped instead, and
the run logs how many were dropped and where the first few were.

Labels in files are often names ("benign", "malignant"): a label vocabulary is the
sorted list of the names in the *training* split, and a label's id is its index.
Labels that are all integers ("0", "1", 7) are used as ids directly.

`config.data.label_type` says what a label is, for the tasks of ctjax/tasks/:

  "class"       one class per record (the default)
  "number"      a real number (config.task = "regression"), standardised by the
                training split's mean and standard deviation (saved with the
                vocabularies; `config.data.standardize_label=False` keeps it raw)
  "multilabel"  any set of label names per record (config.task = "multilabel"): a
                JSON list, or in a table names joined by config.data.label_separator
                ("|"); encoded as a 0/1 vector over the training split's names
"""
from collections.abc import Sequence
import glob
import os
import re
from typing import Any

import numpy as np

from ctjax.errors import UserError

# How many skipped records are listed by location in the log.
_SHOWN = 5
_INTEGER = re.compile(r"^[+-]?\d+$")


def find_files(spec: str, key: str = "config.data.splits") -> list[str]:
  """The files a path or glob names, sorted; a UserError when there are none."""
  files = sorted(f for f in glob.glob(os.path.expanduser(spec), recursive=True)
                 if os.path.isfile(f))
  if not files:
    raise UserError(f"{key}: no file matches {spec!r}; check the path (relative "
                    f"paths start at {os.getcwd()})")
  return files


def split_path(data_config: Any, split: str) -> str:
  """The path of a split: `split` itself, or `config.data.path` for "all".

  Files give splits in two ways: a path per split in `config.data.splits`, or one
  `config.data.path` divided by `config.data.split_fractions` (opened as "all").
  """
  if split != "all":
    return split
  path = data_config.get("path")
  if not path:
    raise UserError("config.data.path: not set; give the file to divide by "
                    "config.data.split_fractions, or a path per split in "
                    "config.data.splits")
  return path


class BadRecords:
  """Raises on a bad record, or counts and skips it under skip_bad_records."""

  def __init__(self, data_config: Any, what: str):
    self.skip = bool(data_config.get("skip_bad_records", False))
    self.what = what
    self.count = 0
    self.first: list[str] = []

  def __call__(self, location: str, problem: str) -> None:
    """Reports one bad record; `problem` says what is wrong and how to fix it."""
    if not self.skip:
      raise UserError(f"{location}: {problem}, or set "
                      "config.data.skip_bad_records=True to skip bad records")
    self.count += 1
    if len(self.first) < _SHOWN:
      self.first.append(location)

  def report(self) -> None:
    """Logs the count and first locations of the skipped records, if any."""
    if self.count:
      from ctjax import writers  # pylint: disable=g-import-not-at-top
      more = ", ..." if self.count > len(self.first) else ""
      writers.info(f"skipped {self.count} bad record(s) in {self.what}: "
                   f"{', '.join(self.first)}{more}")


def fit_label_names(raw: Sequence[Any], *, integers_are_ids: bool = True
                    ) -> list[str] | None:
  """The label vocabulary of the training split: sorted names, or None for ids.

  Args:
    raw: the training split's labels, as read (strings or ints).
    integers_are_ids: labels that all look like integers are used as class ids
      (None is returned); False always builds a vocabulary (class folder names).
  """
  names = sorted({str(v) for v in raw})
  if integers_are_ids and all(_INTEGER.match(n) for n in names):
    return None
  return names


def encode_labels(raw: Sequence[Any], names: list[str] | None) -> np.ndarray:
  """Class ids of `raw` labels; -1 where a label is not in `names` (or no int).

  -1 marks a label the training split never had; `splits.check_labels` reports or
  drops such records by location, once all splits are open.
  """
  if names is None:
    return np.array([int(v) if _INTEGER.match(str(v)) else -1 for v in raw],
                    np.int32)
  ids = {name: i for i, name in enumerate(names)}
  return np.array([ids.get(str(v), -1) for v in raw], np.int32)


LABEL_TYPES = ("class", "number", "multilabel")


def label_type(data_config: Any) -> str:
  kind = data_config.get("label_type", "class")
  if kind not in LABEL_TYPES:
    raise UserError(f"config.data.label_type={kind!r}: choose one of "
                    f"{', '.join(LABEL_TYPES)}")
  return kind


def fit_labels(data_config: Any, raw: Sequence[Any]) -> dict[str, Any]:
  """What encoding labels needs, fitted on the training split's raw labels (numbers
  for "number", sequences of names for "multilabel", else names or ids)."""
  kind = label_type(data_config)
  if kind == "number":
    values = np.asarray(raw, np.float64)
    if not data_config.get("standardize_label", True):
      return {"label_mean": 0.0, "label_std": 1.0}
    # A constant target would divide by zero; leave it unscaled.
    return {"label_mean": float(values.mean()),
            "label_std": float(values.std()) if values.std() > 0 else 1.0}
  if kind == "multilabel":
    return {"label_names": sorted({str(n) for names in raw for n in names})}
  return {"label_names": fit_label_names(raw)}


def encode_fitted_labels(data_config: Any, raw: Sequence[Any],
                         state: dict[str, Any]) -> np.ndarray:
  """Labels as the model trains on them: int32 [n] class ids, float32 [n]
  standardised numbers, or int32 [n, C] 0/1 vectors. A class (or any of a
  record's label names) the training split never had is -1 (the whole vector for
  multilabel), which `splits.check_labels` reports by location."""
  kind = label_type(data_config)
  if kind == "number":
    return ((np.asarray(raw, np.float64) - state["label_mean"])
            / state["label_std"]).astype(np.float32)
  if kind == "multilabel":
    ids = {name: i for i, name in enumerate(state["label_names"])}
    vectors = np.zeros((len(raw), len(ids)), np.int32)
    for row, names in enumerate(raw):
      known = [ids.get(str(n), -1) for n in names]
      if -1 in known:
        vectors[row] = -1
      else:
        vectors[row, known] = 1
    return vectors
  return encode_labels(raw, state["label_names"])


def label_attributes(state: dict[str, Any]) -> dict[str, Any]:
  """What a source exposes of its fitted labels: label_names, or label_mean and
  label_std (which evaluation uses to report in the original units)."""
  return {k: state[k] for k in ("label_names", "label_mean", "label_std")
          if k in state}
