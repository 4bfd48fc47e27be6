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
