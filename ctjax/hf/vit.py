"""ViT: Hugging Face `ViTModel` / `ViTForImageClassification` <-> `ctjax.models.vit`
with pool="cls".

Hugging Face feeds images as [batch, channels, height, width]; ctjax as [batch,
height, width, channels]: transpose pixel_values with (0, 2, 3, 1). Patches are
flattened row by row in both. Fine-tuning at another resolution resizes the
patch-grid part of the position table during import (`PatchGridPositions`).
"""
import dataclasses
import math
from typing import Any

import jax
import numpy as np

from ctjax import writers
from ctjax.errors import UserError
from ctjax.hf import CONV, Field, HEADS_LAST, LINEAR, LINEAR_FROM_HEADS
from ctjax.hf import LINEAR_TO_HEADS, Layout, Rule, per_layer

MODEL_NAME = "vit"
PREFIX = "vit."
HF_CLASS = "ViTForImageClassification"

FIELDS = (
    Field("hidden_size", "hidden_size", 768),
    Field("num_layers", "num_hidden_layers", 12),
    Field("num_heads", "num_attention_heads", 12),
    Field("mlp_dim", "intermediate_size", 3072),
    Field("layer_norm_eps", "layer_norm_eps", 1e-12),
    Field("activation", "hidden_act", "gelu"),
    Field("patch_size", "patch_size", 16),
)
FIXED = {"pool": "cls"}

IGNORED = (
    (r"(^|\.)pooler\.dense\.", "ViTModel's pooler, unused by ViTForImageClassification"),
)


def _grid(tokens: int) -> int | None:
  """The side of the square patch grid of a table of `tokens` rows ([CLS] first)."""
  side = math.isqrt(tokens - 1)
  return side if side * side == tokens - 1 else None


@dataclasses.dataclass(frozen=True)
class PatchGridPositions(Layout):
  """The [1, 1 + grid**2, hidden] position table; at another image size, the grid
  part is resized bicubically as an image of `hidden` channels, the [CLS] row kept."""

  def fits(self, hf_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    return (len(hf_shape) == len(shape) == 3 and hf_shape[0] == shape[0] == 1
            and hf_shape[2] == shape[2] and _grid(hf_shape[1]) is not None
            and _grid(shape[1]) is not None)

  def to_ctjax(self, x: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    if x.shape == tuple(shape):
      return x
    old, new = _grid(x.shape[1]), _grid(shape[1])
    grid = x[0, 1:].reshape(old, old, -1)
    resized = np.asarray(jax.image.resize(grid, (new, new, grid.shape[-1]),
                                          method="bicubic"), x.dtype)
    writers.info(f"{name}: resized the position table's {old}x{old} patch grid to "
                 f"{new}x{new} (bicubic) for this image size")
    return np.concatenate([x[:, :1], resized.reshape(1, new * new, -1)], axis=1)


_RULES = (
    Rule("embeddings.cls_token", "cls_token"),
    Rule("embeddings.position_embeddings", "position_embeddings", PatchGridPositions()),
    Rule("embeddings.patch_embeddings.projection.weight", "patch_embedding/kernel",
         CONV),
    Rule("embeddings.patch_embeddings.projection.bias", "patch_embedding/bias"),
    Rule("layernorm.weight", "final_norm/scale"),
    Rule("layernorm.bias", "final_norm/bias"),
    Rule("classifier.weight", "classifier/kernel", LINEAR, head=True),
    Rule("classifier.bias", "classifier/bias", head=True),
)
_LAYER_RULES = (
    *(rule for proj in ("query", "key", "value") for rule in (
        Rule(f"encoder.layer.{{i}}.attention.attention.{proj}.weight",
             f"encoder/layer_{{i}}/attention/{proj}/kernel", LINEAR_TO_HEADS),
        Rule(f"encoder.layer.{{i}}.attention.attention.{proj}.bias",
             f"encoder/layer_{{i}}/attention/{proj}/bias", HEADS_LAST))),
    Rule("encoder.layer.{i}.attention.output.dense.weight",
         "encoder/layer_{i}/attention/output/kernel", LINEAR_FROM_HEADS),
    Rule("encoder.layer.{i}.attention.output.dense.bias",
         "encoder/layer_{i}/attention/output/bias"),
    Rule("encoder.layer.{i}.layernorm_before.weight",
         "encoder/layer_{i}/attention_norm/scale"),
    Rule("encoder.layer.{i}.layernorm_before.bias", "encoder/layer_{i}/attention_norm/bias"),
    Rule("encoder.layer.{i}.intermediate.dense.weight",
         "encoder/layer_{i}/intermediate/kernel", LINEAR),
    Rule("encoder.layer.{i}.intermediate.dense.bias",
         "encoder/layer_{i}/intermediate/bias"),
    Rule("encoder.layer.{i}.output.dense.weight", "encoder/layer_{i}/output/kernel",
         LINEAR),
    Rule("encoder.layer.{i}.output.dense.bias", "encoder/layer_{i}/output/bias"),
    Rule("encoder.layer.{i}.layernorm_after.weight", "encoder/layer_{i}/output_norm/scale"),
    Rule("encoder.layer.{i}.layernorm_after.bias", "encoder/layer_{i}/output_norm/bias"),
)


def rules(model: dict[str, Any]) -> list[Rule]:
  return [*_RULES, *per_layer(_LAYER_RULES, model["num_layers"])]


def check_supported(hf_config: dict[str, Any], fields: dict[str, Any]) -> None:
  del fields
  if not hf_config.get("qkv_bias", True):
    raise UserError("config.json qkv_bias=false: ctjax's ViT has query, key and "
                    "value biases")


def hf_config(model: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  positions = tensors[PREFIX + "embeddings.position_embeddings"]
  kernel = tensors[PREFIX + "embeddings.patch_embeddings.projection.weight"]
  return {"architectures": [HF_CLASS], "model_type": "vit",
          "image_size": _grid(positions.shape[1]) * model["patch_size"],
          "num_channels": int(kernel.shape[1]), "qkv_bias": True,
          "hidden_dropout_prob": model["dropout"],
          "attention_probs_dropout_prob": 0.0}
