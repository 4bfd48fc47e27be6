"""Every experiment in configs/ loads and builds its model; the real configs train.

The TFDS configs train on `tfds.testing.mock_data` (random images in the dataset's
real feature shapes), read by index as TFDS data sources; the GPT config trains on
the real standard-library text, through the command line.
"""
import math

import flax.linen as nn
import pytest

import run_util
from ctjax import config as config_lib
from ctjax import models
from ctjax import train as train_lib

CONFIGS = sorted((run_util.REPO / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_builds_its_model(path):
  config = config_lib.load_config(str(path))
  config_lib.validate(config, device_count=8, process_count=1)
  assert isinstance(models.get_model(config.model), nn.Module)


def test_gpt_stdlib_reports_bits_per_byte_that_decrease(tmp_path):
  run_util.train(str(run_util.REPO / "configs/gpt_stdlib.py") + ":size=tiny",
                 tmp_path, devices=1)
  evals = [r for r in run_util.metrics(tmp_path) if "validation/bits_per_byte" in r]
  assert len(evals) >= 2
  for record in evals:  # A byte-level loss in nats, converted to bits.
    assert record["validation/bits_per_byte"] == pytest.approx(
        record["validation/loss"] / math.log(2))
  assert evals[-1]["validation/bits_per_byte"] < evals[0]["validation/bits_per_byte"]
  assert evals[-1]["validation/bits_per_byte"] < 7  # a uniform guess is 8
  assert "test/bits_per_byte" in evals[-1]


@pytest.mark.parametrize("name", ["resnet_cifar10", "vit_imagenet"])
def test_tfds_config_trains_evaluates_and_checkpoints_on_mock_data(name, tmp_path):
  import tensorflow_datasets as tfds  # A dependency: missing is a failure, not a skip.
  config = config_lib.load_config(
      str(run_util.REPO / f"configs/{name}.py") + ":size=tiny,steps=4",
      ["log_every=2", "eval_every=2", "checkpoint.every=2"])
  with tfds.testing.mock_data(num_examples=24):
    final = train_lib.train(config, str(tmp_path))
  records = run_util.metrics(tmp_path)
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4]
  assert [r["step"] for r in records if "validation/accuracy" in r] == [2, 4]
  assert all(math.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
  assert "test/accuracy" in final and 0 <= final["test/accuracy"] <= 1
  assert run_util.checkpoint_steps(tmp_path) == [2, 4]
