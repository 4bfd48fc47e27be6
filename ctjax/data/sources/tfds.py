"""TensorFlow Datasets: any TFDS dataset by name and split string, or one you built.

  config.data.source = "tfds"
  config.data.name = "cifar10"              # any tfds.builder name ("name/config:1.*")
  config.data.splits = {"train": "train[:98%]", "validation": "train[98%:]",
                        "test": "test"}     # TFDS split strings
  config.data.data_dir = ""                 # where prepared datasets live; "" is
                                            # TFDS's default (~/tensorflow_datasets)
  config.data.builder_dir = ""              # or a prepared dataset's own folder,
                                            # .../NAME/VERSION (tfds.builder_from_directory)
  config.data.download = True               # download and prepare when missing
  config.data.input_key = "image"           # feature -> example["inputs"]
  config.data.label_key = "label"           # feature -> example["label"] (int32)

Examples arrive decoded: an Image feature is a uint8 [H, W, C] array. Scale,
normalise, resize and augment with `config.data.preprocess`, e.g.
("random_crop(32, padding=4)", "flip_lr", "normalize(mean=127.5, std=64.0)").

Two ways of reading, chosen by how the dataset was prepared:

- ArrayRecord (random access, `tfds.data_source`): example i is read and decoded
  from disk when a batch asks for it. Each process reads only its own rows, memory
  stays flat for ImageNet-sized data, and resuming at step k reads step k's
  examples directly. Datasets that this source downloads and prepares itself are
  prepared this way; to convert one prepared as TFRecord, run
  `tfds build NAME --file_format=array_record` (or set another data_dir).
- TFRecord (TFDS's default for `tfds build` and most prepared copies): there is no
  random access, so the split is read once, in file order, into memory as NumPy,
  with a warning giving its size. That suits CIFAR-sized data (cifar10's train
  split is 150 MB); for more, convert to ArrayRecord as above.

Read by index, a split has no `labels` array (reading every label would decode
every example), so `config.data.split_fractions` with `stratify` needs the
in-memory kind; use TFDS split strings instead, which are exact and cheap.

TensorFlow (through tensorflow_datasets) is imported here only, when a config uses
this source; the rest of ctjax runs without it.
"""
import logging
import os
from typing import Any

import numpy as np

from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError

DEFAULTS = {"name": "", "data_dir": "", "builder_dir": "", "download": True,
            "input_key": "image", "label_key": "label"}


def _option(data_config: Any, key: str) -> Any:
  value = data_config.get(key)
  return DEFAULTS[key] if value is None else value


class RandomAccess:
  """A TFDS data source (ArrayRecord), its features mapped to inputs and label."""

  def __init__(self, records: Any, input_key: str, label_key: str):
    self.records = records
    self.input_key = input_key
    self.label_key = label_key

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    example = self.records[int(i)]
    return {"inputs": np.asarray(example[self.input_key]),
            "label": np.asarray(example[self.label_key], np.int32)}


def _import_tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("config.data.source='tfds': tensorflow_datasets is not "
                    "installed; pip install tensorflow-datasets") from None
  return tfds


def _builder(tfds, data_config: Any):
  """The dataset's builder, prepared (downloaded) when needed and allowed."""
  builder_dir = _option(data_config, "builder_dir")
  if builder_dir:
    builder_dir = os.path.expanduser(builder_dir)
    try:
      return tfds.builder_from_directory(builder_dir)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"config.data.builder_dir={builder_dir!r}: not a prepared "
                      f"TFDS dataset ({type(e).__name__}); give the folder that "
                      "holds dataset_info.json, .../NAME/VERSION") from None
  name = _option(data_config, "name")
  if not name:
    raise UserError("config.data.name: not set; give a TFDS dataset name such as "
                    "'cifar10', or config.data.builder_dir")
  data_dir = os.path.expanduser(_option(data_config, "data_dir")) or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f"config.data.name={name!r}: no such TFDS dataset; see "
                    "tfds.list_builders(), or set config.data.builder_dir for one "
                    "you built") from None
  if builder.is_prepared():
    return builder
  if not _option(data_config, "download"):
    raise UserError(f"config.data.name={name!r}: not prepared in "
                    f"{builder.data_dir_root}; set config.data.download=True, or "
                    "config.data.data_dir to where it is")
  # Prepared as ArrayRecord, so that it can be read by index (TFDS's own default,
  # TFRecord, cannot).
  builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return builder


def _check_features(builder, data_config: Any) -> tuple[str, str]:
  keys = (_option(data_config, "input_key"), _option(data_config, "label_key"))
  features = list(builder.info.features.keys())
  for option, key in zip(("input_key", "label_key"), keys):
    if key not in features:
      raise UserError(f"config.data.{option}={key!r}: {builder.info.full_name} has "
                      f"no such feature; choose one of {', '.join(features)}")
  return keys


def _in_memory(tfds, builder, split: str, input_key: str,
               label_key: str) -> ArraySource:
  """Reads a split with no random access into memory once, as NumPy."""
  logging.warning(
      "%s is stored as %s, which has no random access: reading split %r "
      "(%s examples, %.0f MB on disk for all splits) into memory. For large data, "
      "prepare it as ArrayRecord: tfds build %s --file_format=array_record",
      builder.info.full_name, builder.info.file_format.value, split,
      builder.info.splits[split].num_examples, builder.info.dataset_size / 1e6,
      builder.info.name)
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  inputs, labels = [], []
  for example in tfds.as_numpy(dataset):
    inputs.append(example[input_key])
    labels.append(example[label_key])
  if not inputs:
    raise UserError(f"config.data.splits: {split!r} of {builder.info.full_name} "
                    "has no examples; check the split string")
  if len({x.shape for x in inputs}) > 1:
    raise UserError(f"config.data: {builder.info.full_name} split {split!r} has "
                    f"{input_key!r} of different shapes, which cannot be held in "
                    "one array; prepare it as ArrayRecord (tfds build "
                    f"{builder.info.name} --file_format=array_record)")
  return ArraySource({"inputs": np.stack(inputs),
                      "label": np.asarray(labels, np.int32)})


def open_source(data_config: Any, split: str) -> RandomAccess | ArraySource:
  """Split `split` (a TFDS split string; "all" for every split) of the dataset."""
  tfds = _import_tfds()
  builder = _builder(tfds, data_config)
  input_key, label_key = _check_features(builder, data_config)
  if builder.info.splits:  # Empty only under tfds.testing.mock_data.
    try:
      builder.info.splits[split]  # Parses the split string against the real splits.
    except (KeyError, ValueError, AssertionError) as e:
      reason = str(e).strip("'\"").splitlines()[0]
      raise UserError(f"config.data.splits: {split!r} is not a split of "
                      f"{builder.info.full_name}: {reason}") from None
  try:
    records = builder.as_data_source(split=split)
  except NotImplementedError:
    return _in_memory(tfds, builder, split, input_key, label_key)
  return RandomAccess(records, input_key, label_key)
