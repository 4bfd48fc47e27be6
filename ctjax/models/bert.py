"""BERT (Devlin et al. 2019) for sequence classification, laid out like Hugging Face's.

Post-norm encoder with exact (erf) GELU (by default) and learned absolute positions. Parameter
names mirror `BertForSequenceClassification` so checkpoints map one to one:

  embeddings/{word_embeddings, position_embeddings, token_type_embeddings}/embedding
  embeddings/layer_norm/{scale, bias}
  encoder/layer_{i}/attention/{query, key, value, output}/{kernel, bias}
  encoder/layer_{i}/{attention_norm, intermediate, output, output_norm}/...
  pooler/{kernel, bias}, classifier/{kernel, bias}

Attention kernels are [hidden, heads, head_dim] (output: [heads, head_dim, hidden])
where Hugging Face has [hidden, hidden] matrices; a converter reshapes them.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.errors import UserError
from ctjax.models import layers


class Embeddings(nn.Module):
  """Sum of token, position and token-type embeddings, then LayerNorm and dropout."""
  vocab_size: int
  hidden_size: int
  max_position_embeddings: int
  type_vocab_size: int
  layer_norm_eps: float
  dropout: float
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool) -> jax.Array:
    length = tokens.shape[1]
    if length > self.max_position_embeddings:
      raise UserError(f"sequence length {length} exceeds "
                      f"config.model.max_position_embeddings="
                      f"{self.max_position_embeddings}; truncate the inputs or "
                      f"raise it")

    def embed(num, axes, name):
      return nn.Embed(num, self.hidden_size,
                      embedding_init=nn.with_logical_partitioning(
                          layers.transformer_init, axes),
                      dtype=self.dtype, param_dtype=self.param_dtype, name=name)

    # Position and type tables are small; only their embed axis is worth sharding.
    x = embed(self.vocab_size, ("vocab", "embed"), "word_embeddings")(tokens)
    x += embed(self.max_position_embeddings, (None, "embed"),
               "position_embeddings")(jnp.arange(length))
    # Single-segment inputs: every token has type 0, as Hugging Face's default.
    x += embed(self.type_vocab_size, (None, "embed"),
               "token_type_embeddings")(jnp.zeros_like(tokens))
    x = layers.norm_layer("layernorm", epsilon=self.layer_norm_eps,
                          dtype=self.dtype, param_dtype=self.param_dtype,
                          name="layer_norm")(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class Model(nn.Module):
  """BERT encoder, tanh pooler on the first ([CLS]) token, linear classifier.

  Attributes:
    num_classes: number of output logits.
    vocab_size: token vocabulary size.
    hidden_size: width of the residual stream.
    num_layers: transformer blocks.
    num_heads: attention heads; must divide hidden_size.
    intermediate_size: hidden size of each block's MLP.
    max_position_embeddings: longest supported sequence.
    type_vocab_size: rows of the token-type table (2 in pretrained BERTs).
    dropout: dropout rate on embeddings, residual branches and the pooled output.
    pad_token_id: the token id marking padding; other tokens never attend to it.
    layer_norm_eps: epsilon of every LayerNorm.
    activation: the MLP's nonlinearity, by its Hugging Face name (see
      `layers.ACTIVATIONS`): "gelu" is BERT's exact (erf) GELU.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_classes: int = 2
  vocab_size: int = 1000
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  intermediate_size: int = 128
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  dropout: float = 0.1
  pad_token_id: int = 0
  layer_norm_eps: float = 1e-12
  activation: str = "gelu"
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """inputs: int token ids [batch, length], [CLS] first; returns float32 logits
    [batch, num_classes]."""
    x = Embeddings(self.vocab_size, self.hidden_size,
                   self.max_position_embeddings, self.type_vocab_size,
                   self.layer_norm_eps, self.dropout, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="embeddings")(
                       inputs, train=train)
    x = nn.with_logical_constraint(x, layers.ACTIVATION_AXES)
    # Keys that are padding are hidden from every query: [batch, 1, 1, length].
    mask = (inputs != self.pad_token_id)[:, None, None, :]
    block = functools.partial(
        layers.TransformerBlock, num_heads=self.num_heads,
        mlp_dim=self.intermediate_size, dropout=self.dropout, pre_norm=False,
        norm_epsilon=self.layer_norm_eps,
        activation=layers.activation(self.activation), dtype=self.dtype,
        param_dtype=self.param_dtype)
    x = layers.TransformerStack(block, self.num_layers, name="encoder")(
        x, mask, train=train)
    self.sow("intermediates", "last_hidden_state", x)

    dense = functools.partial(layers.dense, dtype=self.dtype,
                              param_dtype=self.param_dtype)
    pooled = jnp.tanh(dense(self.hidden_size, ("embed", None),
                            name="pooler")(x[:, 0]))
    self.sow("intermediates", "pooled", pooled)
    pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    logits = dense(self.num_classes, ("embed", "classes"),
                   name="classifier", float32_output=True)(pooled)
    return logits.astype(jnp.float32)
