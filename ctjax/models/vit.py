"""Vision Transformer (Dosovitskiy et al. 2021): patches through a pre-norm encoder.

Parameters: `patch_embedding` (a conv with stride = kernel = patch_size),
`cls_token` (pool="cls" only), `position_embeddings` [1, tokens, hidden],
`encoder/layer_{i}/...` (see `layers.TransformerBlock`), `final_norm`, `classifier`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.errors import UserError
from ctjax.models import layers


class Model(nn.Module):
  """ViT classifier.

  Attributes:
    num_classes: number of output logits.
    patch_size: side of the square patches; must divide the image height and width.
    hidden_size: width of the residual stream.
    num_layers: transformer blocks.
    num_heads: attention heads; must divide hidden_size.
    mlp_dim: hidden size of each block's MLP.
    dropout: dropout rate after the embeddings and on each residual branch.
    layer_norm_eps: epsilon of every LayerNorm (Hugging Face's ViT: 1e-12).
    activation: the MLP's nonlinearity, by its Hugging Face name (see
      `layers.ACTIVATIONS`).
    pool: "cls" classifies from a learned [CLS] token, "gap" from the mean of the
      patch tokens.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_classes: int = 10
  patch_size: int = 4
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128
  dropout: float = 0.0
  layer_norm_eps: float = 1e-6
  activation: str = "gelu"
  pool: str = "cls"
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """inputs: float images [batch, height, width, channels]; returns float32
    logits [batch, num_classes]."""
    if self.pool not in ("cls", "gap"):
      raise UserError(f"config.model.pool={self.pool!r}: choose 'cls' or 'gap'")
    height, width = inputs.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise UserError(f"config.model.patch_size={self.patch_size} must divide the "
                      f"image size {height}x{width}")

    x = nn.Conv(
        self.hidden_size, (self.patch_size, self.patch_size),
        strides=self.patch_size, padding="VALID",
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, "channels_in", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        dtype=self.dtype, param_dtype=self.param_dtype,
        name="patch_embedding")(inputs.astype(self.dtype))
    batch = x.shape[0]
    x = x.reshape(batch, -1, self.hidden_size)
    if self.pool == "cls":
      cls = self.param(
          "cls_token",
          nn.with_logical_partitioning(nn.initializers.zeros,
                                       (None, None, "embed")),
          (1, 1, self.hidden_size), self.param_dtype)
      cls = jnp.broadcast_to(cls.astype(self.dtype), (batch, 1, self.hidden_size))
      x = jnp.concatenate([cls, x], axis=1)
    positions = self.param(
        "position_embeddings",
        nn.with_logical_partitioning(layers.transformer_init,
                                     (None, None, "embed")),
        (1, x.shape[1], self.hidden_size), self.param_dtype)
    x = x + positions.astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.with_logical_constraint(x, layers.ACTIVATION_AXES)

    block = functools.partial(
        layers.TransformerBlock, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
        dropout=self.dropout, pre_norm=True, norm_epsilon=self.layer_norm_eps,
        activation=layers.activation(self.activation), dtype=self.dtype,
        param_dtype=self.param_dtype)
    x = layers.TransformerStack(block, self.num_layers, name="encoder")(
        x, train=train)
    x = layers.norm_layer("layernorm", epsilon=self.layer_norm_eps, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="final_norm")(x)
    self.sow("intermediates", "last_hidden_state", x)
    x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
    self.sow("intermediates", "pooled", x)
    logits = layers.dense(self.num_classes, ("embed", "classes"),
                          name="classifier", dtype=self.dtype,
                          param_dtype=self.param_dtype, float32_output=True)(x)
    return logits.astype(jnp.float32)
