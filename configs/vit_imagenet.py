"""A ViT-S/16 on ImageNet-1k (imagenet2012) from TFDS, for GPUs or TPUs.

  ctjax train --config configs/vit_imagenet.py --workdir runs/vit_imagenet
  ctjax train --config configs/vit_imagenet.py:size=tiny,steps=20   # smoke test

ImageNet cannot be downloaded automatically: put ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar in ~/tensorflow_datasets/downloads/manual/ and the first run
prepares `imagenet2012` as ArrayRecord (random access; see
ctjax/data/sources/tfds.py), or point --config.data.data_dir at a prepared copy.
Training uses 99% of the train split; the other 1% (about 12,800 images, "minival") is
the validation split watched during training, and the official 50,000-image
validation set is the test split, evaluated at the end.

The recipe follows the shape of big_vision's plain ViT-S/16 baseline (Beyer et al.
2022, "Better plain ViT baselines for ImageNet-1k": batch 1024, 90 epochs, AdamW at
1e-3 with 10k warm-up steps and cosine decay, global average pooling), in bfloat16,
with only the ops ctjax has: a random 224 crop of the image resized to 256, a
horizontal flip and per-channel normalisation. That paper's 90-epoch result (about
76.5% top-1) also used Inception crops, RandAugment and Mixup, which ctjax lacks,
so expect less.

Sizes (`:size=NAME`):
  base   ViT-S/16: width 384, 12 layers, 6 heads, MLP 1536 (22.0M parameters).
  tiny   a 16-pixel, one-layer ViT: for tests (with tfds.testing.mock_data).

Measured: not yet; the machine this was written on has neither ImageNet nor a GPU.
tests/test_configs.py trains, evaluates and checkpoints the tiny size for a few
steps on TFDS's mock data. Replace this paragraph with the measured command,
result and hardware.
"""
from ml_collections import ConfigDict

from ctjax.config import parse_arg
from ctjax.errors import UserError

# ImageNet's channel statistics, in pixel units (0-255).
_MEAN = (123.7, 116.3, 103.5)
_STD = (58.4, 57.1, 57.4)

_SIZES = {
    # image, patch, hidden, layers, heads, mlp, batch, dtype
    "base": (224, 16, 384, 12, 6, 1536, 1024, "bfloat16"),
    "tiny": (16, 8, 16, 1, 2, 32, 16, "float32"),
}


def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, size="base", steps=0)
  if arg.size not in _SIZES:
    raise UserError(f"config argument size={arg.size!r}: choose one of "
                    f"{', '.join(_SIZES)}")
  image, patch, hidden, num_layers, heads, mlp, batch, dtype = _SIZES[arg.size]
  c = ConfigDict()
  c.seed = 0
  c.data = dict(
      source="tfds", name="imagenet2012", input_key="image", label_key="label",
      splits={"train": "train[:99%]", "validation": "train[99%:]",
              "test": "validation"},
      # ImageNet's images differ in size: resize, then crop (random in training,
      # central in evaluation), so that every example has the same shape.
      preprocess=(f"resize({image * 8 // 7})", f"random_crop({image})", "flip_lr",
                  f"normalize(mean={_MEAN}, std={_STD})"),
      num_threads=16, prefetch=4)
  c.model = dict(name="vit", num_classes=1000, patch_size=patch, hidden_size=hidden,
                 num_layers=num_layers, num_heads=heads, mlp_dim=mlp, pool="gap",
                 dtype=dtype)
  c.batch_size = batch
  c.eval_batch_size = batch
  c.train_duration = arg.steps or "90 epochs"
  # ctjax decays by lr * weight_decay a step, so 0.1 at lr 1e-3 is big_vision's
  # 1e-4, which is scaled by the schedule but not by the base learning rate.
  c.optim = dict(name="adamw", lr=1e-3, weight_decay=0.1, b1=0.9, b2=0.999,
                 clip_norm=1.0,
                 # A short run (steps=N) warms up for a tenth of it.
                 schedule=dict(name="warmup_cosine",
                               warmup=arg.steps // 10 if arg.steps else 10_000))
  c.log_every = "100 steps"
  c.eval_every = "1 epochs"
  c.checkpoint = dict(every="1 epochs", keep=3, best_metric="validation/accuracy")
  return c
