"""A small ResNet with GroupNorm, for images from 8x8 digits up to CIFAR and beyond.

Normalisation is GroupNorm, as in BiT (Kolesnikov et al. 2020): it uses no batch
statistics, so a model gives the same result however the batch is split across
devices or gradient-accumulation steps, and there is no mutable state to carry.

Parameters: `stem_conv`, `stem_norm`, then `stage{i}_block{j}/{conv1, norm1, conv2,
norm2}` (plus `shortcut_conv`, `shortcut_norm` where the shape changes), and
`classifier`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.errors import UserError
from ctjax.models import layers

_CONV_AXES = (None, None, "channels_in", "channels_out")


def group_norm(num_groups: int, *, name: str, dtype: layers.Dtype,
               param_dtype: layers.Dtype,
               scale_init: nn.initializers.Initializer = nn.initializers.ones
               ) -> nn.GroupNorm:
  """GroupNorm with per-channel scale and bias named `channels_out`."""
  return nn.GroupNorm(
      num_groups=num_groups,
      scale_init=nn.with_logical_partitioning(scale_init, ("channels_out",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                             ("channels_out",)),
      dtype=dtype, param_dtype=param_dtype, name=name)


class ResidualBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (ResNet's basic block).

  Attributes:
    width: output channels.
    stride: stride of the first convolution (and of the shortcut).
    norm_groups: GroupNorm groups; must divide width.
  """
  width: int
  stride: int = 1
  norm_groups: int = 8
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(
        nn.Conv, self.width, use_bias=False,  # the norm that follows adds a bias
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.he_normal(), _CONV_AXES),
        dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(group_norm, self.norm_groups, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    y = conv((3, 3), strides=self.stride, name="conv1")(x)
    y = nn.relu(norm(name="norm1")(y))
    y = conv((3, 3), name="conv2")(y)
    # A zero scale makes each block start as the identity on its shortcut, which
    # lets deep stacks train from the first step (Goyal et al. 2017).
    y = norm(name="norm2", scale_init=nn.initializers.zeros)(y)
    if x.shape != y.shape:
      x = conv((1, 1), strides=self.stride, name="shortcut_conv")(x)
      x = norm(name="shortcut_norm")(x)
    return nn.relu(x + y)


class Model(nn.Module):
  """Stem convolution, residual stages, global average pool, linear classifier.

  Stages after the first halve the resolution (stride 2) and change the width;
  the stem has stride 1 and no pooling, so 8x8 inputs keep enough resolution.

  Attributes:
    num_classes: number of output logits.
    widths: channels of each stage (the stem has widths[0]).
    blocks_per_stage: residual blocks per stage: one int for all, or one per stage.
    norm_groups: GroupNorm groups; must divide every width.
    dropout: dropout rate on the pooled features before the classifier.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_classes: int = 10
  widths: tuple[int, ...] = (32, 64)
  blocks_per_stage: int | tuple[int, ...] = 1
  norm_groups: int = 8
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """inputs: float images [batch, height, width, channels]; returns float32
    logits [batch, num_classes]."""
    blocks = self.blocks_per_stage
    if isinstance(blocks, int):
      blocks = (blocks,) * len(self.widths)
    if len(blocks) != len(self.widths):
      raise UserError(f"config.model.blocks_per_stage={blocks}: give one int, or "
                      f"one per stage of config.model.widths={self.widths}")
    if any(width % self.norm_groups for width in self.widths):
      raise UserError(f"config.model.norm_groups={self.norm_groups} must divide "
                      f"every width in config.model.widths={self.widths}")

    x = nn.Conv(self.widths[0], (3, 3), use_bias=False,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.he_normal(), _CONV_AXES),
                dtype=self.dtype, param_dtype=self.param_dtype,
                name="stem_conv")(inputs.astype(self.dtype))
    x = group_norm(self.norm_groups, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="stem_norm")(x)
    x = nn.relu(x)
    for i, (width, num_blocks) in enumerate(zip(self.widths, blocks)):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = ResidualBlock(width, stride, self.norm_groups, dtype=self.dtype,
                          param_dtype=self.param_dtype,
                          name=f"stage{i}_block{j}")(x)
    x = x.mean(axis=(1, 2))
    self.sow("intermediates", "pooled", x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return layers.classifier_logits(x, self.num_classes, dtype=self.dtype,
                                    param_dtype=self.param_dtype)
