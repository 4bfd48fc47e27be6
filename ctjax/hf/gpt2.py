"""GPT-2: Hugging Face `GPT2Model` / `GPT2LMHeadModel` <-> `ctjax.models.gpt` with
position_embedding="learned".

GPT-2's Conv1D layers keep their weights as [in, out], as flax does, and c_attn
holds query, key and value side by side on its last axis. Names are the base
model's; a `GPT2LMHeadModel` file has them under "transformer.", and its
`lm_head.weight` only when not tied to `wte` (ctjax: tie_embeddings).
"""
from typing import Any

from ctjax.errors import UserError
from ctjax.hf import COPY, Field, HEADS_FIRST, HEADS_LAST, LINEAR, Rule, per_layer

MODEL_NAME = "gpt"
PREFIX = "transformer."
HF_CLASS = "GPT2LMHeadModel"

FIELDS = (
    Field("vocab_size", "vocab_size", 50257),
    Field("hidden_size", "n_embd", 768),
    Field("num_layers", "n_layer", 12),
    Field("num_heads", "n_head", 12),
    # transformers reads n_inner=None as 4 * n_embd.
    Field("mlp_dim", "n_inner", lambda hf_config: 4 * hf_config.get("n_embd", 768)),
    Field("max_position_embeddings", "n_positions", 1024),
    Field("layer_norm_eps", "layer_norm_epsilon", 1e-5),
    Field("activation", "activation_function", "gelu_new"),
    Field("tie_embeddings", "tie_word_embeddings", True),
)
FIXED = {"position_embedding": "learned", "norm": "layernorm"}

IGNORED = (
    (r"\.attn\.(masked_)?bias$", "attention mask buffers older transformers saved"),
    (r"^lm_head\.weight$", "the output layer tied to wte"),
)

_RULES = (
    Rule("wte.weight", "embed/embedding"),
    Rule("wpe.weight", "position_embeddings/embedding"),
    Rule("ln_f.weight", "final_norm/scale"),
    Rule("ln_f.bias", "final_norm/bias"),
)
_ATTENTION = tuple(f"decoder/layer_{{i}}/attention/{p}" for p in ("query", "key", "value"))
_LAYER_RULES = (
    Rule("h.{i}.ln_1.weight", "decoder/layer_{i}/attention_norm/scale"),
    Rule("h.{i}.ln_1.bias", "decoder/layer_{i}/attention_norm/bias"),
    Rule("h.{i}.attn.c_attn.weight", tuple(f"{p}/kernel" for p in _ATTENTION),
         HEADS_LAST),
    Rule("h.{i}.attn.c_attn.bias", tuple(f"{p}/bias" for p in _ATTENTION), HEADS_LAST),
    Rule("h.{i}.attn.c_proj.weight", "decoder/layer_{i}/attention/output/kernel",
         HEADS_FIRST),
    Rule("h.{i}.attn.c_proj.bias", "decoder/layer_{i}/attention/output/bias"),
    Rule("h.{i}.ln_2.weight", "decoder/layer_{i}/output_norm/scale"),
    Rule("h.{i}.ln_2.bias", "decoder/layer_{i}/output_norm/bias"),
    Rule("h.{i}.mlp.c_fc.weight", "decoder/layer_{i}/intermediate/kernel", COPY),
    Rule("h.{i}.mlp.c_fc.bias", "decoder/layer_{i}/intermediate/bias"),
    Rule("h.{i}.mlp.c_proj.weight", "decoder/layer_{i}/output/kernel", COPY),
    Rule("h.{i}.mlp.c_proj.bias", "decoder/layer_{i}/output/bias"),
)


def rules(model: dict[str, Any]) -> list[Rule]:
  if model.get("scan_layers"):
    raise UserError("config.model.scan_layers=True: Hugging Face checkpoints map "
                    "layer by layer; set config.model.scan_layers=False")
  head = () if model["tie_embeddings"] else (
      Rule("lm_head.weight", "lm_head/kernel", LINEAR, head=True),)
  return [*_RULES, *head, *per_layer(_LAYER_RULES, model["num_layers"])]


def check_supported(hf_config: dict[str, Any], fields: dict[str, Any]) -> None:
  del fields
  unsupported = [f"{key}={hf_config[key]!r}" for key, supported in (
      ("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
      ("reorder_and_upcast_attn", False)) if hf_config.get(key, supported) != supported]
  if unsupported:
    raise UserError(f"config.json {', '.join(unsupported)}: ctjax's GPT computes "
                    "attention as GPT-2 does by default only")


def hf_config(model: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  del tensors
  return {"architectures": [HF_CLASS], "model_type": "gpt2",
          "resid_pdrop": model["dropout"], "embd_pdrop": model["dropout"],
          "attn_pdrop": 0.0}
