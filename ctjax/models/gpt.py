"""A decoder-only language model: GPT-2's pre-norm stack, rotary or learned positions.

With position_embedding="rope" (the default) positions enter only through RoPE on
queries and keys, so there is no position table and no maximum length; "learned"
adds GPT-2's absolute position table to the token embeddings instead, which is
what imported GPT-2 checkpoints need. Parameters:

  embed/embedding                       [vocab, hidden], also the output layer
                                        when tie_embeddings
  position_embeddings/embedding         [max_position_embeddings, hidden], only
                                        when position_embedding="learned"
  decoder/layer_{i}/...                 see `layers.TransformerBlock`; with
  decoder/layers/...                    scan_layers, one tree with a leading
                                        [num_layers] axis named "layers"
  final_norm/{scale, bias}
  lm_head/{kernel, bias}                only when not tie_embeddings
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.errors import UserError
from ctjax.models import layers


class Model(nn.Module):
  """Causal transformer language model.

  Attributes:
    vocab_size: token vocabulary size.
    hidden_size: width of the residual stream.
    num_layers: transformer blocks.
    num_heads: attention heads; with RoPE, hidden_size / num_heads must be even.
    mlp_dim: hidden size of each block's MLP.
    dropout: dropout rate after the embeddings and on each residual branch.
    norm: "layernorm" or "rmsnorm", for the blocks and the final norm.
    layer_norm_eps: epsilon of every norm.
    activation: the MLP's nonlinearity, by its Hugging Face name (see
      `layers.ACTIVATIONS`); GPT-2's "gelu_new" is the tanh approximation.
    position_embedding: "rope" (rotary, no maximum length) or "learned" (GPT-2's
      table of max_position_embeddings rows).
    max_position_embeddings: longest sequence with position_embedding="learned".
    rope_base: RoPE wavelength base.
    attention_impl: `jax.nn.dot_product_attention` implementation: None (JAX
      chooses), "xla", or "cudnn" (fused flash attention; GPU, bf16/fp16 only).
    tie_embeddings: compute logits with the transposed input embedding (GPT-2)
      rather than a separate `lm_head`.
    scan_layers: run the blocks with nn.scan: one block to compile, whatever the
      depth.
    remat: rematerialise each block in the backward pass: "none", "full", or
      "dots" (keep matmul outputs, recompute the rest).
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  vocab_size: int = 256
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  norm: str = "layernorm"
  layer_norm_eps: float = 1e-5
  activation: str = "gelu_new"
  position_embedding: str = "rope"
  max_position_embeddings: int = 1024
  rope_base: float = 10000.0
  attention_impl: str | None = None
  tie_embeddings: bool = True
  scan_layers: bool = False
  remat: str = "none"
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """inputs: int token ids [batch, length]; returns float32 next-token logits
    [batch, length, vocab_size], position t predicting token t + 1."""
    embed = nn.Embed(self.vocab_size, self.hidden_size,
                     embedding_init=nn.with_logical_partitioning(
                         layers.transformer_init, ("vocab", "embed")),
                     dtype=self.dtype, param_dtype=self.param_dtype, name="embed")
    x = embed(inputs)
    if self.position_embedding not in ("rope", "learned"):
      raise UserError(f"config.model.position_embedding={self.position_embedding!r}"
                      ": choose 'rope' or 'learned'")
    if self.position_embedding == "learned":
      length = inputs.shape[1]
      if length > self.max_position_embeddings:
        raise UserError(f"sequence length {length} exceeds "
                        f"config.model.max_position_embeddings="
                        f"{self.max_position_embeddings}; shorten the sequences "
                        "or raise it")
      # Small next to the vocabulary: only its embed axis is worth sharding.
      x += nn.Embed(self.max_position_embeddings, self.hidden_size,
                    embedding_init=nn.with_logical_partitioning(
                        layers.transformer_init, (None, "embed")),
                    dtype=self.dtype, param_dtype=self.param_dtype,
                    name="position_embeddings")(jnp.arange(length))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, layers.ACTIVATION_AXES)

    block = functools.partial(
        layers.TransformerBlock, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout=self.dropout, pre_norm=True, norm=self.norm,
        norm_epsilon=self.layer_norm_eps,
        activation=layers.activation(self.activation), causal=True,
        rope_base=self.rope_base if self.position_embedding == "rope" else None,
        attention_impl=self.attention_impl, dtype=self.dtype,
        param_dtype=self.param_dtype)
    x = layers.TransformerStack(block, self.num_layers,
                                scan_layers=self.scan_layers, remat=self.remat,
                                name="decoder")(x, train=train)
    x = layers.norm_layer(self.norm, epsilon=self.layer_norm_eps, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="final_norm")(x)
    self.sow("intermediates", "last_hidden_state", x)

    # bfloat16 products with float32 results: the softmax and the loss see
    # unrounded logits (see `layers.dense`).
    if self.tie_embeddings:
      logits = jnp.einsum("ble,ve->blv", x, embed.embedding.astype(self.dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = layers.dense(self.vocab_size, ("embed", "vocab"), name="lm_head",
                            dtype=self.dtype, param_dtype=self.param_dtype,
                            float32_output=True)(x)
    return logits.astype(jnp.float32)
