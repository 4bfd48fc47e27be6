"""NumPy arrays: a .npz file, or a folder of .npy files, one row per example.

  config.data.source = "arrays"
  config.data.splits = {"train": "data/train.npz", "validation": "data/val.npz"}
  # or folders: data/train/inputs.npy + data/train/label.npy, ...
  config.data.splits = {"train": "data/train", "validation": "data/val"}
  # or config.data.path = "data/all.npz" with config.data.split_fractions
  config.data.keys = {"inputs": "x", "label": "y"}  # example key -> array name
                                                    # (default: the same names)

A folder's .npy files are memory-mapped: only the rows of each batch are read, so
arrays larger than memory work. A .npz is loaded whole (NumPy cannot map it). Every
array needs the same number of rows; `label` must hold integers (class ids, or
token targets with a `mask` array for language modelling).
"""
import os
from typing import Any
import zipfile

import numpy as np

from ctjax.data import records
from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError

DEFAULT_KEYS = {"inputs": "inputs", "label": "label"}


# NumPy saves 64-bit numbers by default; JAX computes in 32 bits unless x64 is on.
_NARROW = {np.dtype(np.float64): np.float32, np.dtype(np.int64): np.int32}


class Arrays(ArraySource):
  """Rows of arrays as 32-bit examples; errors about a row name the file."""

  def __init__(self, arrays: dict[str, np.ndarray], path: str):
    super().__init__(arrays)
    self.path = path

  def location(self, i: int) -> str:
    return f"{self.path}, row {i}"

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: a[indices].astype(_NARROW.get(a.dtype, a.dtype), copy=False)
            for k, a in self.arrays.items()}

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.get_batch(np.array([i])).items()}


def _load_folder(folder: str, keys: dict[str, str]) -> dict[str, np.ndarray]:
  arrays = {}
  for key, name in keys.items():
    path = os.path.join(folder, f"{name}.npy")
    if not os.path.isfile(path):
      present = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
      raise UserError(f"{path}: no such file (config.data.keys.{key}={name!r}); "
                      f"the folder has {', '.join(present) or 'no .npy files'}")
    with open(path, "rb") as f:
      _refuse_objects(f, path)
    try:
      arrays[key] = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
      raise UserError(f"{path}: not a NumPy .npy array ({e}); save it with "
                      "np.save") from None
  return arrays


def _refuse_objects(f, where: str) -> None:
  """A UserError if the .npy file `f` holds Python objects (a pickle).

  Only the header is read. `allow_pickle=False` on every np.load is the guard;
  this check turns NumPy's terse refusal into a line that says what to do.
  """
  try:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                   np.lib.format.read_array_header_2_0)
    dtype = read_header(f)[2]
  except ValueError:
    return  # Not a .npy header: np.load says why, below.
  if dtype.hasobject:
    raise UserError(f"{where}: holds Python objects (dtype {dtype}), which NumPy "
                    "stores as a pickle; ctjax reads data files as data only "
                    "(unpickling can run code); save numeric arrays, e.g. "
                    "np.asarray(x, np.float32)")


def _load_npz(path: str, keys: dict[str, str]) -> dict[str, np.ndarray]:
  try:
    npz = np.load(path, allow_pickle=False)
    if not isinstance(npz, np.lib.npyio.NpzFile):  # A .npy under another name.
      raise UserError(f"{path}: holds one array, not a .npz archive of named "
                      "arrays; save it with np.savez(path, inputs=..., "
                      "label=...), or give a folder of .npy files")
    with npz:
      for key, name in keys.items():
        if name not in npz.files:
          raise UserError(f"{path}: no array {name!r} (config.data.keys.{key}); it "
                          f"has {', '.join(npz.files)}")
        member = f"{name}.npy" if f"{name}.npy" in npz.zip.namelist() else name
        with npz.zip.open(member) as f:
          _refuse_objects(f, f"{path} (array {name!r})")
      return {key: npz[name] for key, name in keys.items()}
  except (ValueError, OSError, zipfile.BadZipFile) as e:
    raise UserError(f"{path}: not a readable .npz file ({e}); save it with "
                    "np.savez") from None


def open_source(data_config: Any, split: str) -> Arrays:
  path = records.split_path(data_config, split)
  keys = dict(data_config.get("keys") or DEFAULT_KEYS)
  if os.path.isdir(path):
    arrays = _load_folder(path, keys)
  elif os.path.isfile(path) and path.endswith(".npz"):
    arrays = _load_npz(path, keys)
  else:
    raise UserError(f"{path}: no such .npz file or folder of .npy files; check "
                    "config.data.splits (or config.data.path)")
  rows = {key: len(a) if a.ndim else 0 for key, a in arrays.items()}
  if len(set(rows.values())) != 1:
    raise UserError(f"{path}: arrays have different numbers of rows "
                    f"({', '.join(f'{k}: {n}' for k, n in rows.items())}); every "
                    "array needs one row per example")
  label = arrays.get("label")
  if label is not None and not np.issubdtype(label.dtype, np.integer):
    raise UserError(f"{path}: the label array ({keys['label']!r}) has dtype "
                    f"{label.dtype}; save integer class ids (e.g. "
                    "labels.astype(np.int32))")
  return Arrays(arrays, path)
