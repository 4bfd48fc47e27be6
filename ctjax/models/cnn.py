"""A small ResNet with GroupNorm, for images from 8x8 digits up to CIFAR and beyond.

Its layout follows the input size unless the config fixes it, as ResNet's does
for 32 px (CIFAR) and 224 px (ImageNet) inputs: below 64 px a 3x3 stem keeps full
resolution; from 64 px a 7x7 stride-2 stem and a 3x3 stride-2 max-pool divide it
by 4. Stages then halve the resolution until the last one sees at most 8x8, so
every unit of the pooled features has a receptive field covering most of the
image (a fixed two-stage net sees a 15 px window of a 32 px image, and global
pooling then averages local texture: a digit's shape is lost). Widths double per
stage from 16 with the small stem, as in ResNet's CIFAR nets (He et al. 2016,
16-32-64), and from 32 with the large one, to 256 at most. At 32 px, 16-32-64
costs a quarter of 32-64-128's FLOPs, and a few hundred images do not need more:
on the 300 training images of `ctjax.data.example_sets.digit_images`, 150 epochs
of 16-32-64 (Adam 3e-3, random crops) gave 0.81, 0.66 and 0.85 test accuracy over
three seeds, where logistic regression on the pixels gives 0.73.

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
STEMS = ("auto", "small", "large")


def auto_layout(height: int, width: int, stem: str = "auto"
                ) -> tuple[str, tuple[int, ...]]:
  """The stem ("small" or "large") and stage widths that suit an image size.

  "small": 3x3 stride 1, for inputs under 64 px; "large": 7x7 stride 2 and a 3x3
  stride-2 max-pool. One stage at the stem's resolution, then one more (each
  halving it) until the feature map is at most 8 px on its shorter side, four
  stages at most: 8 px digits get (16, 32), 32 px images (16, 32, 64) as
  ResNet's CIFAR nets, 224 px images (32, 64, 128, 256) ending at 7x7 as
  ResNet-18 does (at half its widths).
  """
  side = min(height, width)
  if stem == "auto":
    stem = "small" if side < 64 else "large"
  side = side // 4 if stem == "large" else side
  stages = 1
  while side > 8 and stages < 4:
    side, stages = (side + 1) // 2, stages + 1
  stages = max(stages, 2)  # One downsampling stage even for tiny images.
  first = 16 if stem == "small" else 32
  return stem, tuple(min(first * 2**i, 256) for i in range(stages))


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

  Stages after the first halve the resolution (stride 2) and change the width.

  Attributes:
    num_classes: number of output logits.
    widths: channels of each stage (the stem has widths[0]); empty (the default)
      chooses them from the input size (see `auto_layout`).
    stem: "small" (3x3, stride 1), "large" (7x7 stride 2, then 3x3 max-pool
      stride 2), or "auto": small below 64 px, large from 64 px.
    blocks_per_stage: residual blocks per stage: one int for all, or one per stage.
    norm_groups: GroupNorm groups; must divide every width.
    dropout: dropout rate on the pooled features before the classifier.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_classes: int = 10
  widths: tuple[int, ...] = ()
  stem: str = "auto"
  blocks_per_stage: int | tuple[int, ...] = 1
  norm_groups: int = 8
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """inputs: float images [batch, height, width, channels]; returns float32
    logits [batch, num_classes]."""
    if self.stem not in STEMS:
      raise UserError(f"config.model.stem={self.stem!r}: choose one of "
                      f"{', '.join(STEMS)}")
    stem, widths = auto_layout(*inputs.shape[1:3], self.stem)
    widths = self.widths or widths
    blocks = self.blocks_per_stage
    if isinstance(blocks, int):
      blocks = (blocks,) * len(widths)
    if len(blocks) != len(widths):
      raise UserError(f"config.model.blocks_per_stage={blocks}: give one int, or "
                      f"one per stage of config.model.widths={widths}")
    if any(width % self.norm_groups for width in widths):
      raise UserError(f"config.model.norm_groups={self.norm_groups} must divide "
                      f"every width in config.model.widths={widths}")

    large = stem == "large"
    x = nn.Conv(widths[0], (7, 7) if large else (3, 3), strides=2 if large else 1,
                use_bias=False,
                kernel_init=nn.with_logical_partitioning(
                    nn.initializers.he_normal(), _CONV_AXES),
                dtype=self.dtype, param_dtype=self.param_dtype,
                name="stem_conv")(inputs.astype(self.dtype))
    x = group_norm(self.norm_groups, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="stem_norm")(x)
    x = nn.relu(x)
    if large:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    for i, (width, num_blocks) in enumerate(zip(widths, blocks)):
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
