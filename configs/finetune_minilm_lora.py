"""configs/finetune_minilm.py with LoRA: rank-8 adapters train, the checkpoint stays.

  ctjax train --config configs/finetune_minilm_lora.py --workdir runs/minilm_lora
  ctjax export --workdir runs/minilm_lora --to runs/minilm_lora/hf   # adapters merged

Everything as in configs/finetune_minilm.py (same data, schedule, evaluators),
but the pretrained weights are frozen: rank-8 adapters (alpha 16) on every
attention and MLP kernel of the encoder train, with the new classifier and the
pooler, at a 10x higher learning rate, as LoRA fine-tuning usually needs. Frozen
weights keep no optimizer state, and the checkpoint holds only what trains.

Measured: see the table in configs/finetune_minilm.py.
"""
import os

from ml_collections import ConfigDict

from ctjax.config import run_experiment_file


def get_config(arg: str | None = None) -> ConfigDict:
  c = run_experiment_file(
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_minilm.py"),
      arg)
  c.lora = dict(rank=8, alpha=16.0,
                targets=(r"/layer_\d+/.*kernel$",),
                trainable=("^classifier/", "^pooler/"))
  c.optim.lr = 1e-3
  return c
