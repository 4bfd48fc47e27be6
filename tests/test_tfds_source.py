"""The TFDS source, on small datasets the tests build themselves with TFDS.

One tiny image dataset is prepared twice, as ArrayRecord (read by index) and as
TFRecord (read into memory): both must give exactly the examples written, in the
same order, for the same split string.
"""

from ml_collections import ConfigDict
import numpy as np
import pytest
# Required dependencies (tensorflow-datasets, and TensorFlow in the test extra):
# a broken install must fail here, not skip the module.
import tensorflow_datasets as tfds

from ctjax.data import splits as splits_lib
from ctjax.data.sources import tfds as tfds_source
from ctjax.errors import UserError

NUM_EXAMPLES = 40


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """{file format: builder folder} of a dataset whose image i is filled with i."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = np.arange(NUM_EXAMPLES, dtype=np.uint8)
  images = np.broadcast_to(values[:, None, None, None], (NUM_EXAMPLES, 4, 4, 3))
  folders = {}
  for file_format in ("array_record", "tfrecord"):
    builder = tfds.dataset_builders.TfDataBuilder(
        name="toy", version="1.0.0", file_format=file_format,
        data_dir=str(tmp_path_factory.mktemp(file_format)),
        split_datasets={"train": tf.data.Dataset.from_tensor_slices(
            {"image": images, "label": values % 4})},
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 3)),
            "label": tfds.features.ClassLabel(num_classes=4)}))
    builder.download_and_prepare()
    folders[file_format] = str(builder.data_dir)
  return folders


def _read(source):
  examples = [source[i] for i in range(len(source))]
  return (np.stack([e["inputs"] for e in examples]),
          np.array([e["label"] for e in examples]))


def _config(**options):
  return ConfigDict({"source": "tfds", **options})


def test_array_record_is_read_by_index_and_tfrecord_into_memory_alike(built):
  read = {}
  for file_format, folder in built.items():
    source = tfds_source.open_source(_config(builder_dir=folder), "train[:75%]")
    assert isinstance(source, tfds_source.RandomAccess) == (
        file_format == "array_record")
    read[file_format] = _read(source)
  inputs, labels = read["array_record"]
  assert len(labels) == 30 and inputs.dtype == np.uint8 and labels.dtype == np.int32
  # Every example is one that was written (its image is filled with its number,
  # its label that number mod 4), none twice.
  written = inputs[:, 0, 0, 0]
  assert (inputs == written[:, None, None, None]).all()
  np.testing.assert_array_equal(labels, written % 4)
  assert len(set(written.tolist())) == 30
  # Both formats give the same examples in the same order.
  np.testing.assert_array_equal(read["tfrecord"][0], inputs)
  np.testing.assert_array_equal(read["tfrecord"][1], labels)


def test_split_strings_partition_the_dataset(built):
  config = _config(builder_dir=built["array_record"],
                   splits={"train": "train[:30]", "validation": "train[30:]"})
  opened = splits_lib.open_splits(config)
  seen = {name: set(_read(s)[0][:, 0, 0, 0].tolist()) for name, s in opened.items()}
  assert len(seen["train"]) == 30 and len(seen["validation"]) == 10
  assert seen["train"] | seen["validation"] == set(range(NUM_EXAMPLES))


@pytest.mark.parametrize("options, split, named", [
    ({"input_key": "img"}, "train", "config.data.input_key='img'"),
    ({"label_key": "class"}, "train", "config.data.label_key='class'"),
    ({}, "tets", "'tets' is not a split"),
])
def test_bad_feature_key_or_split_is_an_error_naming_it(built, options, split, named):
  config = _config(builder_dir=built["array_record"], **options)
  with pytest.raises(UserError, match=named) as error:
    tfds_source.open_source(config, split)
  assert "\n" not in str(error.value)


def test_folder_that_is_not_a_dataset_is_an_error_naming_it(tmp_path):
  with pytest.raises(UserError, match="config.data.builder_dir"):
    tfds_source.open_source(_config(builder_dir=str(tmp_path)), "train")


def test_dataset_by_name_under_mock_data_is_read_by_index():
  with tfds.testing.mock_data(num_examples=5):
    source = tfds_source.open_source(_config(name="cifar10"), "train[:50%]")
    assert isinstance(source, tfds_source.RandomAccess) and len(source) == 5
    example = source[3]
  assert example["inputs"].shape == (32, 32, 3)
  assert example["inputs"].dtype == np.uint8
  assert example["label"].dtype == np.int32 and 0 <= example["label"] < 10


def test_unknown_dataset_name_is_an_error_naming_it():
  with pytest.raises(UserError, match="config.data.name='cifar_ten'"):
    tfds_source.open_source(_config(name="cifar_ten"), "train")
