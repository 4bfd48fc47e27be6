"""Fine-tune a Hugging Face ViT at a new resolution on a folder of images, offline.

  ctjax train --config configs/finetune_vit.py --workdir runs/finetune_vit
  ctjax train --config configs/finetune_vit.py:init=DIR --workdir runs/my_vit

`:init=` is a Hugging Face ViT directory (config.json + model.safetensors, say
google/vit-base-patch16-224 saved with `save_pretrained`). No pretrained ViT ships
offline, so by default the config makes a stand-in on first use: a randomly
initialised ViT (patch 4, width 64, 4 layers) for 32x32 images, written by
`ctjax.hf.export` to ~/.cache/ctjax/vit_random_32px as transformers would write
it. Everything below works the same with a real checkpoint; only the accuracy
differs.

The images are the digit-image folder of `ctjax.data.example_sets` (500 32x32 RGB
digits of random size, place and colour; ~/.cache/ctjax/digit_images, or
`:data=DIR` with train/validation/test class folders), read at 48x48: the ViT's
8x8 grid of position embeddings is resized (bicubic) to 12x12 when the checkpoint
is loaded, and the run says so. The new classifier starts fresh.

Measured with the random stand-in (2026-11-30, 2-core AMD EPYC, 1 CPU device, the
first command above, 2 min): test accuracy 0.10, validation 0.07-0.14 over the
run, training loss 2.32 -> 2.09 in 282 steps: chance. A ViT from random weights
does not learn from 300 images in 30 epochs (ViTs need far more data or
pretraining; configs/digit_images_cnn.py's CNN reaches 0.80 on the same folder),
so with the stand-in this config shows the mechanics (loading, the resized
position table, a fresh head), not transfer. With a real pretrained ViT, measure
it on your data.
"""
import os

import jax
from ml_collections import ConfigDict

from ctjax.config import parse_arg
from ctjax.data import example_sets

DEFAULT_INIT = "~/.cache/ctjax/vit_random_32px"
STAND_IN = dict(name="vit", num_classes=10, patch_size=4, hidden_size=64,
                num_layers=4, num_heads=4, mlp_dim=128, pool="cls")


def write_stand_in(path: str) -> None:
  """A randomly initialised ViT for 32x32 images, as a Hugging Face directory."""
  from ctjax import hf  # pylint: disable=g-import-not-at-top
  from ctjax import models  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  model = models.get_model(STAND_IN)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0),
                                    jnp.zeros((1, 32, 32, 3)))["params"])
  # Written whole, then renamed: several processes may make it at once.
  temporary = f"{path}.{os.getpid()}.tmp"
  hf.export(params, STAND_IN, temporary)
  os.replace(temporary, path)


def get_config(arg: str | None = None) -> ConfigDict:
  arg = parse_arg(arg, init=DEFAULT_INIT, data="~/.cache/ctjax/digit_images",
                  image_size=48, epochs=30)
  init, data = os.path.expanduser(arg.init), example_sets.folder(arg.data)
  if arg.init == DEFAULT_INIT and not os.path.exists(init):
    write_stand_in(init)

  c = ConfigDict()
  c.seed = 0
  c.data = dict(
      source="image_folder",
      splits={s: os.path.join(data, s) for s in ("train", "validation", "test")},
      image_size=arg.image_size, channels=3, dtype="float32",
      preprocess=(f"random_crop({arg.image_size}, padding={arg.image_size // 8})",
                  "normalize(mean=0.5, std=0.25)"),
      num_threads=2)
  c.model = dict(name="vit", num_classes=10)  # The rest from the checkpoint.
  c.model_init = init
  c.model_init_skip = ("^classifier/",)
  c.batch_size = 32
  c.train_duration = f"{arg.epochs} epochs"
  c.optim = dict(name="adamw", lr=1e-3, weight_decay=0.05, clip_norm=1.0,
                 schedule=dict(name="warmup_cosine", warmup="2 epochs"))
  c.log_every = 20
  c.eval_every = "10 epochs"
  c.checkpoint = dict(every="10 epochs", keep=1, best_metric="validation/accuracy")
  return c
