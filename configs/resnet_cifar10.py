"""A ResNet-18-style CNN (GroupNorm) on CIFAR-10 from TFDS, for a GPU or TPU.

  ctjax train --config configs/resnet_cifar10.py --workdir runs/resnet_cifar10
  ctjax train --config configs/resnet_cifar10.py:size=tiny,steps=20   # smoke test

Reads `cifar10` through TFDS by name; the first run downloads (about 160 MB) and prepares
it as ArrayRecord in ~/tensorflow_datasets (see ctjax/data/sources/tfds.py; set
--config.data.data_dir to use a copy you have). 49,000 training images, the last
1,000 of the train split for validation, and the 10,000 test images. Augmentation
is the classic pad-4 random crop and horizontal flip; inputs are normalised with
the training set's per-channel mean and standard deviation.

Sizes (`:size=NAME`):
  base   widths 64-128-256-512, two blocks per stage (ResNet-18's layout, 11.2M
         parameters), batch 512, 100 epochs of SGD with Nesterov momentum.
  tiny   two stages of width 8: for tests (with tfds.testing.mock_data).

Measured: not yet. The machine this was written on has no internet to download
CIFAR-10 and no GPU; tests/test_configs.py trains, evaluates and checkpoints the
tiny size for a few steps on TFDS's mock data. Replace this paragraph with the
measured command, result and hardware.
"""
from ml_collections import ConfigDict

from ctjax.config import parse_arg
from ctjax.errors import UserError

# CIFAR-10's training-set channel statistics, in pixel units (0-255).
_MEAN = (125.3, 123.0, 113.9)
_STD = (63.0, 62.1, 66.7)

_SIZES = {
    # widths, blocks per stage, norm groups, batch size
    "base": ((64, 128, 256, 512), 2, 32, 512),
    "tiny": ((8, 16), 1, 4, 16),
}


def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, size="base", steps=0)
  if arg.size not in _SIZES:
    raise UserError(f"config argument size={arg.size!r}: choose one of "
                    f"{', '.join(_SIZES)}")
  widths, blocks, groups, batch = _SIZES[arg.size]
  c = ConfigDict()
  c.seed = 0
  c.data = dict(
      source="tfds", name="cifar10", input_key="image", label_key="label",
      splits={"train": "train[:49000]", "validation": "train[49000:]",
              "test": "test"},
      preprocess=("random_crop(32, padding=4)", "flip_lr",
                  f"normalize(mean={_MEAN}, std={_STD})"),
      num_threads=8, prefetch=4)
  c.model = dict(name="cnn", num_classes=10, widths=widths,
                 blocks_per_stage=blocks, norm_groups=groups)
  c.batch_size = batch
  c.train_duration = arg.steps or "100 epochs"
  # ctjax's weight decay is decoupled (not carried in the momentum), so the
  # classic coupled 5e-4 with momentum 0.9 corresponds to about 10x that here.
  c.optim = dict(name="momentum", lr=0.1 * batch / 256, momentum=0.9,
                 nesterov=True, weight_decay=5e-3, clip_norm=0.0,
                 # A short run (steps=N) warms up for a tenth of it.
                 schedule=dict(name="warmup_cosine",
                               warmup=arg.steps // 10 if arg.steps else "2 epochs"))
  c.log_every = "100 steps"
  c.eval_every = "5 epochs"
  c.checkpoint = dict(every="5 epochs", keep=2, best_metric="validation/accuracy")
  return c
