"""CSV and TSV tables: a label column plus numeric and categorical feature columns.

  config.data.source = "csv"
  config.data.path = "data/patients.csv"        # one file (or glob), divided by
  config.data.split_fractions = {"train": 0.8, "validation": 0.1, "test": 0.1}
  # or a file (or glob) per split:
  config.data.splits = {"train": "data/train.csv", "validation": "data/val.csv"}
  config.data.label_column = "diagnosis"        # class names, or integer ids
  config.data.label_type = "class"              # or "number" (regression), or
                                                # "multilabel": names joined by
  config.data.label_separator = "|"             # this ("billing|urgent"); see
                                                # ctjax/data/records.py
  config.data.numeric_columns = ("age", "bmi")  # () = every column not named
                                                # as label or categorical
  config.data.categorical_columns = ("sex", "smoker")
  config.data.missing = "error"                 # a missing number: "error", or
                                                # fill with the training "mean",
                                                # or with "zero"
  config.data.categorical_encoding = "onehot"   # or "ids"
  config.data.standardize = True                # (x - mean) / std per column
  config.data.delimiter = ""                    # "": tab for .tsv/.tab, else ","
  config.data.missing_values = ("", "NA", "NaN", "?")
  config.data.cross_validation.group_column = "patient_id"  # read as text, never
                                                # a feature (see ctjax/cv.py)
  config.data.slices = {"site": "site"}         # columns measured apart; read
                                                # as text unless features (see
                                                # ctjax/data/slicing.py)

The first line of each file names the columns; columns are found by name, so their
order may differ between files, and other columns are ignored.

Each example is {"inputs": float32 [features], "label": int32} (a float32 label for
"number", an int32 0/1 vector for "multilabel"). The features are
the numeric columns in the order given, then each categorical column. A categorical
column becomes, with "onehot" (right for an MLP), V+1 indicator features, or with
"ids" one feature holding the id as a float (for a model that embeds it). Id 0 is
reserved for a value that is missing or that the training split never had; the
training split's values, sorted, are 1..V. Means, standard deviations and
vocabularies come from the training split only and are saved in
WORKDIR/data_state.json with the label names (sorted), so evaluation and a resumed
run use the same mapping (see `ctjax.data.splits`).

Bad rows (a wrong number of fields, a number that does not parse, a missing label,
a missing number when `missing="error"`) stop the run naming the file and line, or
are skipped with `config.data.skip_bad_records=True`. Tables are read into memory.
"""
from collections.abc import Sequence
import csv
import os
from typing import Any

import numpy as np

from ctjax.data import records
from ctjax.data import slicing
from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError

DEFAULTS = {
    "label_column": "label",
    "numeric_columns": (),
    "categorical_columns": (),
    "missing": "error",
    "categorical_encoding": "onehot",
    "standardize": True,
    "delimiter": "",
    "missing_values": ("", "NA", "NaN", "?"),
}
_MISSING_POLICIES = ("error", "mean", "zero")
_ENCODINGS = ("onehot", "ids")


def _option(data_config: Any, key: str) -> Any:
  value = data_config.get(key, DEFAULTS[key])
  return tuple(value) if isinstance(value, list) else value


def _text_columns(data_config: Any) -> list[str]:
  """Columns read as text and never features: the cross-validation group column
  (a patient id, say: folds keep each group together, ctjax/data/splits.py) and
  the columns evaluation slices read (ctjax/data/slicing.py), unless named as
  numeric or categorical features."""
  group = (data_config.get("cross_validation") or {}).get("group_column")
  # A column declared a feature stays one (and is sliced by its parsed values).
  features = {_option(data_config, "label_column"),
              *_option(data_config, "numeric_columns"),
              *_option(data_config, "categorical_columns")}
  return [c for c in dict.fromkeys(([group] if group else []) +
                                   slicing.columns(data_config)) if c not in features]


class _Locations:
  """file:line of each row, kept as indices so that millions of rows stay cheap."""

  def __init__(self, files: list[str], file_index: np.ndarray, lines: np.ndarray):
    self.files, self.file_index, self.lines = files, file_index, lines

  def __call__(self, i: int) -> str:
    return f"{self.files[self.file_index[i]]}:{self.lines[i]}"


class Table:
  """The rows of a split as read: {column name: values}; fit and encode make features.

  Numeric columns are float64 (NaN where missing), categorical and label columns
  are strings (None where a categorical value is missing).
  """

  def __init__(self, columns: dict[str, np.ndarray], data_config: Any,
               location: _Locations):
    self.columns = columns
    self.data_config = data_config
    self.label_column = _option(data_config, "label_column")
    self.options = {k: _option(data_config, k) for k in
                    ("missing", "standardize", "categorical_encoding")}
    self.location = location
    self.labels = columns[self.label_column]

  def __len__(self) -> int:
    return len(self.labels)

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[indices] for k, v in self.columns.items()}

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {k: v[i] for k, v in self.columns.items()}

  def encode(self, state: dict[str, Any]) -> "EncodedTable":
    # Features are taken by the training split's names, in its order; columns
    # that only this split has are ignored.
    for column in state["numeric"]["columns"] + list(state["vocabularies"]):
      if column not in self.columns:
        raise UserError(f"{self.location.files[0]}: no column {column!r}, which the "
                        "training split has (see WORKDIR/data_state.json); add it, "
                        "or use a new workdir if the config changed")
    return EncodedTable(self, state, **self.options)


class EncodedTable(ArraySource):
  """Model-ready rows: {"inputs": float32 features, "label": int32}."""

  def __init__(self, table: Table, state: dict[str, Any], *, missing: str,
               standardize: bool, categorical_encoding: str):
    numeric = state["numeric"]
    mean = np.asarray(numeric["mean"], np.float64)
    std = np.asarray(numeric["std"], np.float64)
    blocks = []
    # Each feature's name, for people reading drift reports (ctjax/drift.py).
    self.feature_names = list(numeric["columns"])
    if numeric["columns"]:
      x = np.stack([table.columns[c] for c in numeric["columns"]], axis=1)
      # Missing values exist only under "mean" or "zero": "error" refused them.
      x = np.where(np.isnan(x), mean if missing == "mean" else 0.0, x)
      blocks.append((x - mean) / std if standardize else x)
    for column, vocabulary in state["vocabularies"].items():
      ids = {value: i + 1 for i, value in enumerate(vocabulary)}
      codes = np.array([ids.get(v, 0) for v in table.columns[column]], np.int64)
      if categorical_encoding == "onehot":
        blocks.append(np.eye(len(vocabulary) + 1)[codes])
        self.feature_names += [f"{column}=(missing or new)"] + [
            f"{column}={value}" for value in vocabulary]
      else:
        blocks.append(codes[:, None])
        self.feature_names.append(column)
    inputs = np.concatenate(blocks, axis=1).astype(np.float32)
    label = records.encode_fitted_labels(table.data_config, table.labels, state)
    super().__init__({"inputs": inputs, "label": label}, columns=table.columns)
    for name, value in records.label_attributes(state).items():
      setattr(self, name, value)
    if label.ndim == 2:  # 0/1 label vectors, checked like class ids.
      self.labels = label
    self.location = table.location


def _delimiter(data_config: Any, path: str) -> str:
  delimiter = _option(data_config, "delimiter")
  if delimiter:
    return delimiter
  return "\t" if os.path.splitext(path)[1].lower() in (".tsv", ".tab") else ","


def _read_file(path: str, data_config: Any, numeric: list[str]
               ) -> tuple[dict[str, list[str]], list[int], dict[int, str]]:
  """The wanted columns of one file as strings, each row's line, bad lines.

  `numeric` empty means every column not named as label or categorical.
  """
  label = _option(data_config, "label_column")
  categorical = list(_option(data_config, "categorical_columns"))
  groups = _text_columns(data_config)
  delimiter = _delimiter(data_config, path)
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.reader(f, delimiter=delimiter)
    try:
      header = [name.strip() for name in next(reader, [])]
      if not header:
        raise UserError(f"{path}: empty; the first line must name the columns")
      if not numeric:
        numeric = [c for c in header
                   if c != label and c not in categorical + groups]
      if not numeric + categorical:
        raise UserError(f"{path}:1: no feature columns besides the label {label!r}; "
                        "check config.data.label_column and the delimiter "
                        f"({delimiter!r})")
      for key, names in (("label_column", [label]), ("numeric_columns", numeric),
                         ("categorical_columns", categorical),
                         ("cross_validation.group_column or slices", groups)):
        for name in names:
          if name not in header:
            raise UserError(f"{path}:1: no column {name!r} (config.data.{key}); the "
                            f"header has {', '.join(header)}; fix the config or "
                            f"the file (delimiter {delimiter!r})")
      wanted = {name: header.index(name)
                for name in numeric + categorical + groups + [label]}
      columns = {name: [] for name in wanted}
      lines, problems = [], {}
      for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
          continue  # Blank lines are not records.
        if len(row) != len(header):
          problems[reader.line_num] = (
              f"{len(row)} fields, but the header has {len(header)}; fix the row "
              f"(quote fields containing {delimiter!r})")
          continue
        for name, index in wanted.items():
          columns[name].append(row[index].strip())
        lines.append(reader.line_num)
    except UnicodeDecodeError as e:
      raise UserError(f"{path}:{reader.line_num + 1}: not UTF-8 text ({e.reason}); "
                      "save the file as UTF-8") from None
    except csv.Error as e:
      raise UserError(f"{path}:{reader.line_num}: unreadable CSV ({e}); fix the "
                      "row") from None
  return columns, lines, problems


def _parse_numbers(values: Sequence[str], missing: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Floats (NaN where missing), and where a value is not a finite number."""
  text = np.where(missing, "nan", np.asarray(values, dtype=str))
  try:
    numbers = text.astype(np.float64)  # Fast path: the whole column at once.
  except ValueError:
    numbers = np.array([_float_or_inf(v) for v in text])
  return numbers, ~missing & ~np.isfinite(numbers)


def _float_or_inf(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    return np.inf  # Flagged as not finite, like "inf" itself.


def _labels(values: Sequence[str], data_config: Any) -> np.ndarray:
  """A label column as config.data.label_type reads it: names, numbers (NaN where
  unparsable), or tuples of names split at config.data.label_separator."""
  kind = records.label_type(data_config)
  if kind == "number":
    return np.array([_float_or_inf(v) if v else np.nan for v in values])
  if kind == "multilabel":
    separator = data_config.get("label_separator", "|")
    label_sets = np.empty(len(values), dtype=object)  # One tuple per row.
    for row, value in enumerate(values):
      label_sets[row] = tuple(n.strip() for n in value.split(separator) if n.strip())
    return label_sets
  return np.asarray(values, dtype=object)


def _parse(path: str, data_config: Any, bad: records.BadRecords,
           numeric: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """One file's typed columns, bad rows reported and dropped, and line numbers."""
  columns, lines, problems = _read_file(path, data_config, numeric)
  label = _option(data_config, "label_column")
  categorical = _option(data_config, "categorical_columns")
  missing_values = list(_option(data_config, "missing_values"))
  refuse_missing = _option(data_config, "missing") == "error"
  # Row -> the first thing wrong with it (`problems` holds rows of the wrong length).
  wrong: dict[int, str] = {}
  typed = {}
  for name, values in columns.items():
    is_missing = np.isin(np.asarray(values, dtype=str), missing_values)
    if name == label:
      typed[name] = _labels(values, data_config)
      # An empty multi-label field is the empty set of labels, not a gap.
      if records.label_type(data_config) == "multilabel":
        is_missing = np.zeros_like(is_missing)
      for row in np.flatnonzero(is_missing):
        wrong.setdefault(row, f"the label (column {name!r}) is missing; fill it in "
                              "or delete the row")
      if records.label_type(data_config) == "number":
        for row in np.flatnonzero(~is_missing & ~np.isfinite(typed[name])):
          wrong.setdefault(row, f"the label (column {name!r}): {values[row]!r} is "
                                "not a finite number (config.data.label_type="
                                "'number'); fix it")
    elif name in categorical or name in _text_columns(data_config):
      typed[name] = np.where(is_missing, None, np.asarray(values, dtype=object))
    else:
      typed[name], unparsable = _parse_numbers(values, is_missing)
      for row in np.flatnonzero(unparsable):
        wrong.setdefault(row, f"column {name!r}: {values[row]!r} is not a finite "
                              "number; fix it")
      if refuse_missing:
        for row in np.flatnonzero(is_missing):
          wrong.setdefault(row, f"column {name!r} is missing; fill it in, or set "
                                "config.data.missing='mean' (or 'zero')")
  problems.update({lines[row]: text for row, text in wrong.items()})
  for line in sorted(problems):  # In file order.
    bad(f"{path}:{line}", problems[line])
  keep = np.setdiff1d(np.arange(len(lines)), list(wrong))
  return {k: v[keep] for k, v in typed.items()}, np.asarray(lines)[keep]


def open_source(data_config: Any, split: str) -> Table:
  if _option(data_config, "missing") not in _MISSING_POLICIES:
    raise UserError(f"config.data.missing={data_config.missing!r}: choose one of "
                    f"{', '.join(_MISSING_POLICIES)}")
  if _option(data_config, "categorical_encoding") not in _ENCODINGS:
    raise UserError(f"config.data.categorical_encoding="
                    f"{data_config.categorical_encoding!r}: choose one of "
                    f"{', '.join(_ENCODINGS)}")
  spec = records.split_path(data_config, split)
  files = records.find_files(spec, "config.data.path" if split == "all" else
                             "config.data.splits")
  bad = records.BadRecords(data_config, spec)
  parts, lines = [], []
  numeric = list(_option(data_config, "numeric_columns"))
  for path in files:
    columns, file_lines = _parse(path, data_config, bad, numeric)
    # The first file settles the default columns; later files must have them.
    label = _option(data_config, "label_column")
    numeric = [c for c in columns if c != label and
               c not in _option(data_config, "categorical_columns") and
               c not in _text_columns(data_config)]
    parts.append(columns)
    lines.append(file_lines)
  bad.report()
  columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
  file_index = np.repeat(np.arange(len(files)), [len(l) for l in lines])
  return Table(columns, data_config,
               _Locations(files, file_index, np.concatenate(lines)))


def fit(data_config: Any, train: Table) -> dict[str, Any]:
  """Statistics and vocabularies of the training split, as JSON-able lists."""
  rows = train.get_batch(np.arange(len(train)))
  label = _option(data_config, "label_column")
  categorical = list(_option(data_config, "categorical_columns"))
  numeric = [c for c in rows
             if c != label and c not in categorical + _text_columns(data_config)]
  mean, std = [], []
  for c in numeric:
    values = rows[c][~np.isnan(rows[c])]
    mean.append(float(values.mean()) if len(values) else 0.0)
    # A constant (or empty) column would divide by zero; leave it unscaled.
    std.append(float(values.std()) if len(values) and values.std() > 0 else 1.0)
  return {
      "numeric": {"columns": numeric, "mean": mean, "std": std},
      "vocabularies": {c: sorted({v for v in rows[c] if v is not None})
                       for c in categorical},
      **records.fit_labels(data_config, rows[label]),
  }
