"""A CNN from scratch on a small folder of images: the README's image walkthrough.

  ctjax train --config configs/digit_images_cnn.py --workdir runs/digits_cnn
  ctjax train --config configs/digit_images_cnn.py:data=DIR --workdir runs/my_cnn

The images are the digit-image folder of `ctjax.data.example_sets`: scikit-learn's
real 8x8 handwritten digits drawn as 32x32 RGB PNGs at a random size (24-32 px),
place and colour, 50 a class split 30/10/10 (300 training images); on first use
the config writes it to ~/.cache/ctjax/digit_images. `:data=DIR` takes any folder
with train/validation/test class folders, which is what a new user has.

The model is `cnn` with its defaults, which follow the image size (32 px: 3x3
stem, stages of 16, 32 and 64 channels ending at 8x8; ctjax/models/cnn.py). What
a few hundred images need is many small steps: batch 32 for 150 epochs (1,350
steps). Images are normalised, then cropped at random from a 4-pixel zero border
(zero is the mean after `normalize`, so the border is grey, not black).

Measured (2026-11-30, 2-core AMD EPYC, 1 CPU device, jax 0.10.2; the first
command above, 3 min 20 s): test accuracy 0.80, validation 0.83, training loss
0.016 at the end. scikit-learn's logistic regression on the raw pixels of the same
split: test 0.73, validation 0.67 (C=1; C=0.1: 0.70 / 0.65). The same recipe in a
plain Adam loop gave 0.81, 0.66 and 0.85 test accuracy for three seeds: with 30
images a class and 100 to test on, expect that spread.
"""
import os

from ml_collections import ConfigDict

from ctjax.config import parse_arg
from ctjax.data import example_sets



def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, data="~/.cache/ctjax/digit_images", epochs=150)
  data = example_sets.folder(arg.data)

  c = ConfigDict()
  c.seed = 0
  c.data = dict(
      source="image_folder",
      splits={s: os.path.join(data, s) for s in ("train", "validation", "test")},
      image_size=32, channels=3, dtype="float32",
      preprocess=("normalize(mean=0.5, std=0.25)", "random_crop(32, padding=4)"),
      num_threads=2)
  c.model = dict(name="cnn", num_classes=10)
  c.batch_size = 32
  c.train_duration = f"{arg.epochs} epochs"
  c.optim = dict(name="adamw", lr=3e-3, weight_decay=1e-4, clip_norm=1.0,
                 schedule=dict(name="warmup_cosine", warmup="1 epochs"))
  c.log_every = 90
  c.eval_every = "25 epochs"
  c.checkpoint = dict(every="25 epochs", keep=1, best_metric="validation/accuracy")
  return c
