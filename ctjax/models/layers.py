"""Building blocks shared by the model families.

The transformer families (vit, bert, gpt) differ in their embeddings and heads, not
in their layers: all three stack the same `TransformerBlock` (self-attention and an
MLP, each with a residual connection) through one `TransformerStack`. A family picks
pre-norm or post-norm, causal or bidirectional attention, RoPE or not.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so the
trainer can turn `jax.eval_shape(model.init, ...)` into partition specs through the
config's rules without materialising anything. Names used here: `embed`, `mlp`,
`heads`, `kv` (per-head dim), `vocab`, `layers` (the scan axis), `classes`,
`channels_in`, `channels_out`; activations also use `batch` and `length`.
"""

from collections.abc import Callable
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.errors import UserError

Dtype = Any

# Hugging Face's BERT, GPT-2 and ViT initialise weights this way (initializer_range
# 0.02), so a model trained from scratch starts where the pretrained ones did.
transformer_init = nn.initializers.normal(stddev=0.02)

ACTIVATION_AXES = ("batch", "length", "embed")


def dense(features: int, axes: tuple[str | None, str | None], *, name: str,
          dtype: Dtype, param_dtype: Dtype,
          kernel_init: nn.initializers.Initializer = transformer_init,
          float32_output: bool = False) -> nn.Dense:
  """Dense with logical axes: kernel `axes` (input, output), bias `axes[1]`.

  With float32_output, a bfloat16 model's product still takes bfloat16 inputs
  but returns the float32 accumulator unrounded: what output heads use, so that
  the softmax and the loss see logits at full precision. Accelerators accumulate
  in float32 anyway, so this costs nothing but the wider output.
  """
  dot_general = (functools.partial(jax.lax.dot_general,
                                   preferred_element_type=jnp.float32)
                 if float32_output else jax.lax.dot_general)
  return nn.Dense(
      features,
      kernel_init=nn.with_logical_partitioning(kernel_init, axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]),
      dtype=dtype, param_dtype=param_dtype, dot_general=dot_general, name=name)


def classifier_logits(x: jax.Array, num_classes: int, *, dtype: Dtype,
                      param_dtype: Dtype) -> jax.Array:
  """The linear `classifier` head of the non-transformer models, float32 logits.

  LeCun-normal, not the transformers' small truncated normal: features arrive
  from a ReLU stack or a pool with unit-scale activations.
  """
  logits = dense(num_classes, ("embed", "classes"), name="classifier",
                 kernel_init=nn.initializers.lecun_normal(),
                 dtype=dtype, param_dtype=param_dtype, float32_output=True)(x)
  return logits.astype(jnp.float32)


# Activations by their Hugging Face `hidden_act` / `activation_function` names, so
# an imported config.json names the very function its checkpoint was trained with.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "gelu_new": functools.partial(jax.nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  """The nonlinearity `config.model.activation` names."""
  if name not in ACTIVATIONS:
    raise UserError(f"config.model.activation={name!r}: choose one of "
                    f"{', '.join(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def norm_layer(kind: str, *, epsilon: float, name: str, dtype: Dtype,
               param_dtype: Dtype) -> nn.Module:
  """LayerNorm or RMSNorm over the last (`embed`) axis."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, ("embed",))
  if kind == "layernorm":
    # The two-pass variance matches PyTorch's LayerNorm, which matters for parity
    # with imported checkpoints (BERT uses epsilon=1e-12, where the one-pass
    # E[x^2] - E[x]^2 formula loses precision).
    return nn.LayerNorm(
        epsilon=epsilon, use_fast_variance=False, scale_init=scale_init,
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        dtype=dtype, param_dtype=param_dtype, name=name)
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=epsilon, scale_init=scale_init, dtype=dtype,
                      param_dtype=param_dtype, name=name)
  raise UserError(f"config.model.norm={kind!r}: choose 'layernorm' or 'rmsnorm'")


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (Su et al. 2021) of x [batch, length, heads, kv].

  Channel pairs (i, i + kv/2) are rotated by angle position * base^(-2i/kv), the
  "rotate half" layout of GPT-NeoX and Llama. Rotating both queries and keys makes
  their dot product depend only on the distance between positions.

  Args:
    x: queries or keys, [batch, length, heads, kv] with kv even.
    positions: [length] or [batch, length] integer positions of the tokens.
    base: the wavelength base, 10000.0 in most models.

  Returns:
    The rotated array, with x's shape and dtype.
  """
  half = x.shape[-1] // 2
  inverse_frequency = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None] * inverse_frequency
  # [..., length, 1, half]: broadcast over batch (if absent) and heads.
  sin = jnp.sin(angles)[..., None, :]
  cos = jnp.cos(angles)[..., None, :]
  # Rotate in float32: bf16 angles lose the position information at long lengths.
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with separate query, key, value, output projections.

  Attributes:
    num_heads: number of heads; the per-head size is embed // num_heads.
    causal: whether each position attends only to itself and earlier positions.
    rope_base: apply RoPE with this base to queries and keys; None for no RoPE.
    implementation: passed to `jax.nn.dot_product_attention` ("xla", "cudnn", or
      None to let JAX choose).
  """
  num_heads: int
  causal: bool = False
  rope_base: float | None = None
  implementation: str | None = None
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: [batch, length, embed]; mask: boolean, broadcastable to [batch, heads,
    length, length], True where a query may attend to a key."""
    embed = x.shape[-1]
    if embed % self.num_heads:
      raise UserError(f"config.model.num_heads={self.num_heads} must divide "
                      f"hidden_size={embed}")
    head_dim = embed // self.num_heads
    # nn.Einsum, not nn.DenseGeneral: DenseGeneral initialises a flattened kernel
    # and unboxes it, applying the 3 logical names to a rank-2 array, which fails
    # whenever a mesh is in context (the sharded trainer).
    project = functools.partial(
        nn.Einsum, (embed, self.num_heads, head_dim), "ble,ehd->blhd",
        kernel_init=nn.with_logical_partitioning(
            transformer_init, ("embed", "heads", "kv")),
        bias_init=nn.with_logical_partitioning(
            nn.initializers.zeros, ("heads", "kv")),
        dtype=self.dtype, param_dtype=self.param_dtype)
    query = project(name="query")(x)
    key = project(name="key")(x)
    value = project(name="value")(x)
    if self.rope_base is not None:
      if head_dim % 2:
        raise UserError(f"RoPE needs an even head size; hidden_size={embed} / "
                        f"config.model.num_heads={self.num_heads} = {head_dim}")
      positions = jnp.arange(x.shape[1])
      query = apply_rope(query, positions, self.rope_base)
      key = apply_rope(key, positions, self.rope_base)
    # The fused call (cuDNN flash attention on GPU) has no attention-probability
    # dropout; models regularise with dropout on the residual branches instead.
    out = jax.nn.dot_product_attention(
        query, key, value, mask=mask, is_causal=self.causal,
        implementation=self.implementation)
    return nn.Einsum(
        (self.num_heads, head_dim, embed), "blhd,hde->ble",
        kernel_init=nn.with_logical_partitioning(
            transformer_init, ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        dtype=self.dtype, param_dtype=self.param_dtype, name="output")(out)


class TransformerBlock(nn.Module):
  """Self-attention then MLP, each added to the residual stream, pre- or post-norm.

  Parameter names follow Hugging Face BERT and ViT, which eases checkpoint mapping:
  `attention/{query,key,value,output}`, `attention_norm`, `intermediate` (embed ->
  mlp), `output` (mlp -> embed) and `output_norm`. Each norm belongs to its
  sub-layer: before it in a pre-norm block, after the residual sum in post-norm.

  Attributes:
    num_heads: attention heads.
    mlp_dim: hidden size of the MLP.
    dropout: dropout rate on each sub-layer's output before the residual sum.
    pre_norm: True for x + f(norm(x)) (GPT-2, ViT); False for norm(x + f(x)) (BERT).
    norm: "layernorm" or "rmsnorm".
    norm_epsilon: epsilon of the norms.
    activation: the MLP's nonlinearity.
    causal, rope_base, attention_impl: see `SelfAttention`.
    train: enables dropout (drawing from the "dropout" rng). A field rather than a
      call argument so that nn.scan and nn.remat see only arrays.
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  pre_norm: bool = True
  norm: str = "layernorm"
  norm_epsilon: float = 1e-6
  activation: Callable[[jax.Array], jax.Array] = functools.partial(
      jax.nn.gelu, approximate=False)
  causal: bool = False
  rope_base: float | None = None
  attention_impl: str | None = None
  train: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """x: [batch, length, embed]; mask: see `SelfAttention`."""
    embed = x.shape[-1]
    norm = functools.partial(norm_layer, self.norm, epsilon=self.norm_epsilon,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    attention_norm = norm(name="attention_norm")
    output_norm = norm(name="output_norm")
    dropout = nn.Dropout(self.dropout, deterministic=not self.train)

    def attention(y):
      y = SelfAttention(
          self.num_heads, causal=self.causal, rope_base=self.rope_base,
          implementation=self.attention_impl, dtype=self.dtype,
          param_dtype=self.param_dtype, name="attention")(y, mask)
      return dropout(y)

    def mlp(y):
      layer = functools.partial(dense, dtype=self.dtype,
                                param_dtype=self.param_dtype)
      y = layer(self.mlp_dim, ("embed", "mlp"), name="intermediate")(y)
      y = self.activation(y)
      y = layer(embed, ("mlp", "embed"), name="output")(y)
      return dropout(y)

    if self.pre_norm:
      x = x + attention(attention_norm(x))
      x = nn.with_logical_constraint(x, ACTIVATION_AXES)
      x = x + mlp(output_norm(x))
    else:
      x = attention_norm(x + attention(x))
      x = nn.with_logical_constraint(x, ACTIVATION_AXES)
      x = output_norm(x + mlp(x))
    return nn.with_logical_constraint(x, ACTIVATION_AXES)


# Rematerialisation policies: which intermediates of a block the backward pass keeps
# (None: keep only the block's input and recompute everything else).
REMAT_POLICIES = {
    "full": None,
    # Keep the projection and MLP matmul outputs, recompute attention scores and
    # elementwise ops: most of the memory saving for a fraction of the recompute.
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class TransformerStack(nn.Module):
  """`num_layers` blocks, unrolled (`layer_{i}`) or scanned (`layers`).

  Scanning compiles one block instead of num_layers, so compile time stays flat as
  models deepen; its parameters get a leading axis with logical name `layers`.
  Remat trades recompute in the backward pass for activation memory. Both change
  how the computation runs, not what it computes.

  Attributes:
    block: builds one layer; a `functools.partial(TransformerBlock, ...)` with all
      fields but `train` and `name`.
    num_layers: number of blocks.
    scan_layers: run the blocks with nn.scan over stacked parameters.
    remat: "none", "full" or "dots" (see `REMAT_POLICIES`).
  """
  block: Callable[..., nn.Module]
  num_layers: int
  scan_layers: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               train: bool = False) -> jax.Array:
    def apply_block(block, x, mask):
      return block(x, mask)

    if self.remat != "none":
      if self.remat not in REMAT_POLICIES:
        raise UserError(f"config.model.remat={self.remat!r}: choose one of "
                        f"none, {', '.join(REMAT_POLICIES)}")
      # Inside a scan the loop already stops XLA from merging the recompute with
      # the forward pass, so the extra barriers of prevent_cse are not needed.
      apply_block = nn.remat(apply_block, policy=REMAT_POLICIES[self.remat],
                             prevent_cse=not self.scan_layers)

    if not self.scan_layers:
      for i in range(self.num_layers):
        x = apply_block(self.block(train=train, name=f"layer_{i}"), x, mask)
      return x

    def scan_body(block, x, mask):
      return apply_block(block, x, mask), None

    scanned = nn.scan(
        scan_body, variable_axes={"params": 0}, in_axes=nn.broadcast,
        split_rngs={"params": True, "dropout": True}, length=self.num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(self.block(train=train, name="layers"), x, mask)
    return x
