"""BERT-family encoders: Hugging Face `BertModel` / `BertForSequenceClassification`
<-> `ctjax.models.bert`.

Names are the base model's (`BertModel`); a `BertFor...` file has them under
"bert.", and its `classifier` at the top. all-MiniLM-L6-v2 and other
sentence-transformers encoders are `BertModel` files.
"""
from typing import Any

from ctjax.errors import UserError
from ctjax.hf import Field, LINEAR, LINEAR_FROM_HEADS, LINEAR_TO_HEADS, HEADS_LAST
from ctjax.hf import Rule, per_layer

MODEL_NAME = "bert"
PREFIX = "bert."
HF_CLASS = "BertForSequenceClassification"

FIELDS = (
    Field("vocab_size", "vocab_size", 30522),
    Field("hidden_size", "hidden_size", 768),
    Field("num_layers", "num_hidden_layers", 12),
    Field("num_heads", "num_attention_heads", 12),
    Field("intermediate_size", "intermediate_size", 3072),
    Field("max_position_embeddings", "max_position_embeddings", 512),
    Field("type_vocab_size", "type_vocab_size", 2),
    Field("layer_norm_eps", "layer_norm_eps", 1e-12),
    Field("activation", "hidden_act", "gelu"),
    Field("pad_token_id", "pad_token_id", 0),
)
FIXED: dict[str, Any] = {}

# Tensors a BERT file may hold that ctjax's BERT has no use for, and why.
IGNORED = (
    (r"(^|\.)embeddings\.position_ids$", "a buffer older transformers saved"),
    (r"^cls\.", "BertForPreTraining's masked-LM and next-sentence heads"),
)

_RULES = (
    Rule("embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding"),
    Rule("embeddings.position_embeddings.weight",
         "embeddings/position_embeddings/embedding"),
    Rule("embeddings.token_type_embeddings.weight",
         "embeddings/token_type_embeddings/embedding"),
    Rule("embeddings.LayerNorm.weight", "embeddings/layer_norm/scale"),
    Rule("embeddings.LayerNorm.bias", "embeddings/layer_norm/bias"),
    Rule("pooler.dense.weight", "pooler/kernel", LINEAR),
    Rule("pooler.dense.bias", "pooler/bias"),
    Rule("classifier.weight", "classifier/kernel", LINEAR, head=True),
    Rule("classifier.bias", "classifier/bias", head=True),
)
_LAYER_RULES = (
    *(rule for proj in ("query", "key", "value") for rule in (
        Rule(f"encoder.layer.{{i}}.attention.self.{proj}.weight",
             f"encoder/layer_{{i}}/attention/{proj}/kernel", LINEAR_TO_HEADS),
        Rule(f"encoder.layer.{{i}}.attention.self.{proj}.bias",
             f"encoder/layer_{{i}}/attention/{proj}/bias", HEADS_LAST))),
    Rule("encoder.layer.{i}.attention.output.dense.weight",
         "encoder/layer_{i}/attention/output/kernel", LINEAR_FROM_HEADS),
    Rule("encoder.layer.{i}.attention.output.dense.bias",
         "encoder/layer_{i}/attention/output/bias"),
    Rule("encoder.layer.{i}.attention.output.LayerNorm.weight",
         "encoder/layer_{i}/attention_norm/scale"),
    Rule("encoder.layer.{i}.attention.output.LayerNorm.bias",
         "encoder/layer_{i}/attention_norm/bias"),
    Rule("encoder.layer.{i}.intermediate.dense.weight",
         "encoder/layer_{i}/intermediate/kernel", LINEAR),
    Rule("encoder.layer.{i}.intermediate.dense.bias",
         "encoder/layer_{i}/intermediate/bias"),
    Rule("encoder.layer.{i}.output.dense.weight", "encoder/layer_{i}/output/kernel",
         LINEAR),
    Rule("encoder.layer.{i}.output.dense.bias", "encoder/layer_{i}/output/bias"),
    Rule("encoder.layer.{i}.output.LayerNorm.weight",
         "encoder/layer_{i}/output_norm/scale"),
    Rule("encoder.layer.{i}.output.LayerNorm.bias",
         "encoder/layer_{i}/output_norm/bias"),
)


def rules(model: dict[str, Any]) -> list[Rule]:
  return [*_RULES, *per_layer(_LAYER_RULES, model["num_layers"])]


def check_supported(hf_config: dict[str, Any], fields: dict[str, Any]) -> None:
  del fields
  kind = hf_config.get("position_embedding_type", "absolute")
  if kind != "absolute":
    raise UserError(f"config.json position_embedding_type={kind!r}: ctjax's BERT has "
                    "absolute positions only")


def hf_config(model: dict[str, Any], tensors: dict[str, Any]) -> dict[str, Any]:
  del tensors
  return {"architectures": [HF_CLASS], "model_type": "bert",
          "position_embedding_type": "absolute",
          "hidden_dropout_prob": model["dropout"],
          # ctjax's attention has no dropout on its probabilities.
          "attention_probs_dropout_prob": 0.0}
