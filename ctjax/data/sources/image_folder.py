"""Image folders: one subfolder per class, holding JPEG or PNG files.

  data/train/benign/0001.jpg        config.data.source = "image_folder"
  data/train/malignant/0002.png     config.data.splits = {"train": "data/train",
  data/val/benign/0003.jpg                              "validation": "data/val"}
  ...                               # or config.data.path = "data/all" with
                                    # config.data.split_fractions
  config.data.image_size = 64       # int, or (height, width): every image is
                                    # resized to it (bilinear; aspect not kept)
  config.data.channels = 3          # 1 for greyscale
  config.data.dtype = "float32"     # floats in [0, 1], or "uint8" (then
                                    # normalise with ops, or in the model)
  config.data.verify = True         # decode every image when opening

Class ids are the sorted names of the training split's class folders (saved in
WORKDIR/data_state.json); another split may hold only some of them. Files with
other extensions are ignored. Each example is {"inputs": [H, W, C], "label": int32};
images are decoded when their batch is read, in `config.data.num_threads` threads.

With `verify`, a file that does not decode stops the run when the data opens, naming
it (or is skipped with `config.data.skip_bad_records=True`); this costs one pass
over the images, on every process. Without it, such a file stops the run when it is
first read, still naming it.
"""
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
import os
from typing import Any

import numpy as np

from ctjax.data import images
from ctjax.data import records
from ctjax.errors import UserError

DEFAULTS = {"image_size": 224, "channels": 3, "dtype": "float32", "verify": True}
EXTENSIONS = (".jpg", ".jpeg", ".png")


def _option(data_config: Any, key: str) -> Any:
  value = data_config.get(key, DEFAULTS[key])
  return tuple(value) if isinstance(value, list) else value


class Folder:
  """The image files of a split and their class folder names, not yet decoded."""

  def __init__(self, paths: list[str], class_names: list[str], data_config: Any):
    self.paths = paths
    self.labels = np.array(class_names, dtype=object)
    self.load = _loader(data_config)

  def __len__(self) -> int:
    return len(self.paths)

  def location(self, i: int) -> str:
    return self.paths[i]

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"path": self.paths[i], "label": self.labels[i]}

  def encode(self, state: dict[str, Any]) -> "Images":
    return Images(self, state["label_names"])


class Images:
  """Model-ready examples: the decoded, resized image and its class id."""

  def __init__(self, folder: Folder, label_names: list[str]):
    self.paths = folder.paths
    self.load = folder.load
    self.label_names = label_names
    self.labels = records.encode_labels(folder.labels, label_names)

  def __len__(self) -> int:
    return len(self.paths)

  def location(self, i: int) -> str:
    return self.paths[i]

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    path = self.paths[i]
    try:
      image = self.load(path)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"{path}: cannot decode the image ({e}); replace or delete "
                      "the file (config.data.verify=True finds every such file "
                      "before training)") from None
    return {"inputs": image, "label": self.labels[i]}


def _loader(data_config: Any) -> Callable[[str], np.ndarray]:
  """path -> the image as the model gets it; raises PIL's errors on a bad file."""
  size, channels = _option(data_config, "image_size"), _option(data_config, "channels")
  dtype = _option(data_config, "dtype")
  if channels not in (1, 3) or dtype not in ("float32", "uint8"):
    raise UserError(f"config.data: channels={channels!r}, dtype={dtype!r}: give "
                    "channels 1 or 3 and dtype 'float32' or 'uint8'")

  def load(path: str) -> np.ndarray:
    with open(path, "rb") as f:
      image = images.decode(f.read(), channels, size)
    return image if dtype == "uint8" else image.astype(np.float32) / 255.0
  return load


def _problem(load: Callable[[str], np.ndarray], path: str) -> str | None:
  """Why `path` does not load, or None."""
  try:
    load(path)
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises several types (OSError, ValueError, SyntaxError, ...).
    return f"cannot decode the image ({e}); replace or delete the file"
  return None


def _list(folder: str) -> tuple[list[str], list[str]]:
  if not os.path.isdir(folder):
    raise UserError(f"{folder}: no such folder; an image folder holds one "
                    "subfolder of images per class")
  paths, names = [], []
  for name in sorted(os.listdir(folder)):
    class_dir = os.path.join(folder, name)
    if not os.path.isdir(class_dir):
      continue
    for root, _, files in sorted(os.walk(class_dir)):
      for file in sorted(files):
        if file.lower().endswith(EXTENSIONS):
          paths.append(os.path.join(root, file))
          names.append(name)
  return paths, names


def open_source(data_config: Any, split: str) -> Folder:
  folder = records.split_path(data_config, split)
  paths, names = _list(folder)
  source = Folder(paths, names, data_config)
  if not _option(data_config, "verify"):
    return source
  bad = records.BadRecords(data_config, folder)
  with ThreadPoolExecutor(max(1, data_config.get("num_threads", 4))) as pool:
    problems = list(pool.map(lambda p: _problem(source.load, p), paths))
  for path, problem in zip(paths, problems):
    if problem:
      bad(path, problem)
  bad.report()
  keep = [i for i, problem in enumerate(problems) if not problem]
  return Folder([paths[i] for i in keep], [names[i] for i in keep], data_config)


def fit(data_config: Any, train: Folder) -> dict[str, Any]:
  """The class names of the training split, sorted: class id = position."""
  del data_config
  return {"label_names": records.fit_label_names(train.labels,
                                                 integers_are_ids=False)}
