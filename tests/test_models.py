"""Tests of the model zoo: the contract the trainer relies on, and each family's math.

On CPU, compiling JAX's default (threefry) random number generator for each
parameter and activation shape would cost more than everything else here together.
So property tests (causality, masking, dropout, scan/remat equivalence) run on
weights drawn with NumPy, and the keys for real initialisation and for dropout use
the "rbg" implementation: the same distributions, from XLA's own generator, which
compiles in a fraction of the time.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import tolerances
from ctjax.errors import UserError
from ctjax.models import cnn
from ctjax.models import get_model
from ctjax.models import layers

# Reorderable float32 terms on the path to one of the tiny GPT's or BERT's outputs
# (tests/tolerances.py): per token about 250 forward (norms and products over 16
# and 32 features, attention over 8 positions, the 50-way softmax), as many
# backward, and the 16 tokens of the loss.
TINY_SUM_TERMS = 16 + 2 * 250
TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 50, (2, 8)), jnp.int32)

# name -> (config.model, inputs, expected output shape). Tiny sizes: CPU, seconds.
CASES = {
    "mlp": (dict(name="mlp", num_classes=3, hidden_sizes=[16, 16], dropout=0.5),
            jnp.ones((2, 8, 8)), (2, 3)),
    "cnn_digits": (dict(name="cnn", num_classes=10, widths=(8, 16),
                        norm_groups=4, dropout=0.5),
                   jnp.ones((2, 8, 8, 1)), (2, 10)),
    "cnn_cifar": (dict(name="cnn", num_classes=10, widths=(8, 16, 16),
                       blocks_per_stage=(1, 2, 1), norm_groups=4),
                  jnp.ones((2, 32, 32, 3)), (2, 10)),
    "vit_cls": (dict(name="vit", num_classes=5, patch_size=4, hidden_size=16,
                     num_layers=1, num_heads=2, mlp_dim=32, dropout=0.5),
                jnp.ones((2, 8, 8, 3)), (2, 5)),
    "vit_gap": (dict(name="vit", num_classes=5, patch_size=2, hidden_size=16,
                     num_layers=1, num_heads=2, mlp_dim=32, pool="gap"),
                jnp.ones((2, 8, 8, 1)), (2, 5)),
    "bert": (dict(name="bert", num_classes=3, vocab_size=50, hidden_size=16,
                  num_layers=2, num_heads=2, intermediate_size=32,
                  max_position_embeddings=16, dropout=0.5),
             TOKENS, (2, 3)),
    "gpt": (dict(name="gpt", vocab_size=50, hidden_size=16, num_layers=2,
                 num_heads=2, mlp_dim=32, dropout=0.5),
            TOKENS, (2, 8, 50)),
    "gpt_untied_rmsnorm_scan": (
        dict(name="gpt", vocab_size=50, hidden_size=16, num_layers=2,
             num_heads=2, mlp_dim=32, norm="rmsnorm", tie_embeddings=False,
             scan_layers=True, remat="full"),
        TOKENS, (2, 8, 50)),
    "gpt_bfloat16": (dict(name="gpt", vocab_size=50, hidden_size=16,
                          num_layers=1, num_heads=2, mlp_dim=32,
                          dtype="bfloat16"),
                     TOKENS, (2, 8, 50)),
}
WITH_DROPOUT = [name for name, case in CASES.items()
                if case[0].get("dropout", 0) > 0]
GPT = CASES["gpt"][0]


def key(seed):
  return jax.random.key(seed, impl="rbg")


def param_shapes(model, inputs):
  """The trainer's view before init: shapes, dtypes and logical axes, no values."""
  return jax.eval_shape(model.init, key(0), inputs)["params"]


def random_params(model, inputs, seed=0):
  """Plain arrays as the trainer holds them, every one random (from NumPy).

  Leaves that initialisers set to zero or one (biases, norms, the [CLS] token, the
  last norm of each residual block) are random too, so no path through the model
  hides behind a zero.
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda leaf: jnp.asarray(rng.normal(0, 0.2, leaf.shape), leaf.dtype),
      nn.unbox(param_shapes(model, inputs)))


# Compiled once per (model, train): cheaper than running these models eagerly,
# which compiles every operation separately.
@functools.partial(jax.jit, static_argnames=("model", "train"))
def apply(model, params, inputs, train=False, seed=0):
  return model.apply({"params": params}, inputs, train=train,
                     rngs={"dropout": key(seed)})


@pytest.mark.parametrize("case", CASES)
def test_output_shape_and_dtype(case):
  config, inputs, shape = CASES[case]
  model = get_model(config)
  for train in (False, True):
    # Shapes and dtypes only: tracing checks them without running the model.
    logits = jax.eval_shape(lambda: model.apply(
        model.init(key(0), inputs), inputs, train=train,
        rngs={"dropout": key(1)}))
    assert logits.shape == shape
    assert logits.dtype == jnp.float32


@pytest.mark.parametrize("case", CASES)
def test_every_param_has_logical_axes(case):
  config, inputs, _ = CASES[case]
  model = get_model(config)
  boxed = param_shapes(model, inputs)
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves
  for leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), leaf
    assert len(leaf.names) == leaf.value.ndim, leaf
  # What the trainer does: one PartitionSpec per parameter.
  specs = jax.tree.leaves(nn.get_partition_spec(boxed),
                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert len(specs) == len(leaves)


@pytest.mark.parametrize("case", WITH_DROPOUT)
def test_finite_and_dropout_only_when_training(case):
  config, inputs, _ = CASES[case]
  model = get_model(config)
  params = random_params(model, inputs)

  def run(train, seed):
    return apply(model, params, inputs, train=train, seed=seed)

  assert np.isfinite(run(False, 1)).all()
  assert np.isfinite(run(True, 1)).all()
  np.testing.assert_array_equal(run(False, 1), run(False, 2))
  np.testing.assert_array_equal(run(True, 1), run(True, 1))
  assert not np.allclose(run(True, 1), run(True, 2))


def test_parameter_names_are_stable():
  # Fine-tuning patterns and checkpoint converters match these paths.
  bert, inputs, _ = CASES["bert"]
  params = nn.unbox(param_shapes(get_model(bert), inputs))
  assert params["embeddings"]["word_embeddings"]["embedding"].shape == (50, 16)
  layer = params["encoder"]["layer_1"]
  assert layer["attention"]["query"]["kernel"].shape == (16, 2, 8)
  assert layer["attention"]["output"]["kernel"].shape == (2, 8, 16)
  assert set(layer) == {"attention", "attention_norm", "intermediate", "output",
                        "output_norm"}
  assert {"embeddings", "encoder", "pooler", "classifier"} == set(params)

  params = param_shapes(get_model(GPT), TOKENS)
  assert set(params) == {"embed", "decoder", "final_norm"}
  assert set(params["decoder"]) == {"layer_0", "layer_1"}


def test_gpt_is_causal():
  model = get_model(GPT)
  params = random_params(model, TOKENS)
  t = 4
  changed = TOKENS.at[:, t + 1:].set(7)
  logits = apply(model, params, TOKENS)
  logits_changed = apply(model, params, changed)
  np.testing.assert_allclose(logits[:, :t + 1], logits_changed[:, :t + 1],
                             atol=1e-6)
  assert not np.allclose(logits[:, t + 1:], logits_changed[:, t + 1:])


def test_rope_scores_depend_only_on_relative_position():
  q, k = np.random.default_rng(0).normal(size=(2, 1, 6, 2, 8)).astype(np.float32)
  positions = jnp.arange(6)

  def scores(offset):
    rq = layers.apply_rope(q, positions + offset, 10000.0)
    rk = layers.apply_rope(k, positions + offset, 10000.0)
    return jnp.einsum("bqhd,bkhd->bhqk", rq, rk)

  # Equal in exact arithmetic. Angles up to 42 rad are off by up to 42·u, plus a
  # few u from sin and cos; a rotated entry mixes two entries, so it moves by up to
  # 2·that·max|q|, and a score sums 8 products of two rotated entries.
  angle_error = (42 + 4) * tolerances.U32
  atol = 8 * 2 * (2 * angle_error) * 2 * np.abs(q).max() * np.abs(k).max()
  np.testing.assert_allclose(scores(0), scores(37), atol=atol)
  # And it does encode position: unrotated scores differ.
  assert not np.allclose(scores(0), jnp.einsum("bqhd,bkhd->bhqk", q, k),
                         atol=1e-3)


def test_gpt_sees_token_order():
  # Causal attention without positions would see the prefix as a set; with RoPE,
  # swapping two earlier tokens changes the prediction at the last position.
  model = get_model(GPT)
  params = random_params(model, TOKENS)
  swapped = TOKENS.at[:, 0].set(TOKENS[:, 1]).at[:, 1].set(TOKENS[:, 0])
  last = apply(model, params, TOKENS)[:, -1]
  last_swapped = apply(model, params, swapped)[:, -1]
  assert not np.allclose(last, last_swapped, atol=1e-4)


@functools.partial(jax.jit, static_argnames="model")
def lm_loss_and_grads(model, params, tokens):
  """((next-token loss, logits), gradients)."""
  def loss(params):
    logits = model.apply({"params": params}, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens[:, 1:]).mean(), logits
  return jax.value_and_grad(loss, has_aux=True)(params)


def stack_layers(params, num_layers):
  """Unrolled gpt params (decoder/layer_{i}) in the scan layout (decoder/layers)."""
  params = dict(params)
  decoder = [params["decoder"][f"layer_{i}"] for i in range(num_layers)]
  params["decoder"] = {"layers": jax.tree.map(lambda *x: jnp.stack(x), *decoder)}
  return params


# Remat alone, and scan with remat inside it: the transforms change how the
# computation runs, never what it computes.
@pytest.mark.parametrize("scan_layers,remat", [(False, "full"), (True, "dots")])
def test_gpt_scan_and_remat_match_unrolled(scan_layers, remat):
  plain = get_model(GPT)
  variant = get_model(dict(GPT, scan_layers=scan_layers, remat=remat))
  params = random_params(plain, TOKENS)
  convert = (lambda p: stack_layers(p, GPT["num_layers"])) if scan_layers else (
      lambda p: p)

  (plain_loss, plain_logits), plain_grads = lm_loss_and_grads(
      plain, params, TOKENS)
  (variant_loss, variant_logits), variant_grads = lm_loss_and_grads(
      variant, convert(params), TOKENS)

  # The same sums, which XLA may order differently inside a scan or a remat.
  rtol = tolerances.sum_rtol(TINY_SUM_TERMS)
  tolerances.assert_close_normwise(variant_logits, plain_logits, rtol)
  np.testing.assert_allclose(variant_loss, plain_loss, rtol=rtol)
  tolerances.assert_close_normwise(variant_grads, convert(plain_grads), rtol)


def test_gpt_scan_init_has_leading_layers_axis():
  model = get_model(dict(GPT, scan_layers=True))
  kernel = param_shapes(model, TOKENS)["decoder"]["layers"]["attention"]["query"][
      "kernel"]
  assert kernel.value.shape == (2, 16, 2, 8)
  assert kernel.names == ("layers", "embed", "heads", "kv")


def test_gpt_unknown_remat_names_the_key():
  model = get_model(dict(GPT, remat="sometimes"))
  with pytest.raises(UserError, match=r"config\.model\.remat"):
    param_shapes(model, TOKENS)


def test_bert_ignores_padding():
  config, _, _ = CASES["bert"]
  model = get_model(dict(config, pad_token_id=0))
  tokens = TOKENS[:, :5]  # ids are >= 1, so none is padding
  padded = jnp.concatenate([tokens, jnp.zeros((2, 3), jnp.int32)], axis=1)
  params = random_params(model, padded)
  # Masked keys add exact zeros, but the sums over 5 and 8 positions may be
  # ordered differently.
  tolerances.assert_close_normwise(apply(model, params, tokens),
                                   apply(model, params, padded),
                                   tolerances.sum_rtol(TINY_SUM_TERMS))
  # Without the mask the padding would be seen: a different pad id changes it.
  unmasked = get_model(dict(config, pad_token_id=-1))
  assert not np.allclose(apply(model, params, padded),
                         apply(unmasked, params, padded), atol=1e-5)


@pytest.mark.parametrize("case", ["cnn_digits", "vit_cls"])
def test_overfits_a_tiny_batch(case):
  config, inputs, _ = CASES[case]
  model = get_model(dict(config, dropout=0.0))
  images = np.random.default_rng(0).normal(size=(8,) + inputs.shape[1:])
  labels = np.arange(8) % config["num_classes"]
  params = nn.unbox(jax.jit(model.init)(key(0), images)["params"])
  optimizer = optax.adam(1e-2)

  def loss_fn(params):
    logits = model.apply({"params": params}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  losses = []
  for _ in range(40):
    params, opt_state, loss = step(params, opt_state)
    losses.append(loss)
  assert losses[-1] < 0.1 * losses[0]


def test_get_model_accepts_config_dict_with_lists():
  config = ml_collections.ConfigDict(
      dict(name="cnn", widths=[8, 16], norm_groups=4, param_dtype="float32"))
  model = get_model(config)
  assert model.widths == (8, 16)
  assert model.param_dtype == jnp.float32


def test_get_model_unknown_name():
  with pytest.raises(UserError, match=r"config\.model\.name='foo'.*gpt"):
    get_model(dict(name="foo"))
  # A module that is not a family is not a model either.
  with pytest.raises(UserError, match=r"config\.model\.name='layers'"):
    get_model(dict(name="layers"))


def test_get_model_unknown_field():
  with pytest.raises(UserError,
                     match=r"config\.model\.hidden_szie: .*gpt\.Model.*hidden_size"):
    get_model(dict(name="gpt", hidden_szie=8))


def test_invalid_values_name_their_key():
  with pytest.raises(UserError, match=r"config\.model\.norm_groups"):
    model = get_model(dict(name="cnn", widths=(8, 12), norm_groups=8))
    param_shapes(model, jnp.ones((1, 8, 8, 1)))
  with pytest.raises(UserError, match=r"config\.model\.dtype"):
    get_model(dict(name="mlp", dtype="float33"))


@pytest.mark.parametrize("side, stem, widths, final", [
    (8, "small", (16, 32), 4),            # digits
    (32, "small", (16, 32, 64), 8),       # CIFAR: ResNet's 3x3 stem and widths
    (224, "large", (32, 64, 128, 256), 7),  # ImageNet: 7x7/2 stem, max-pool, 4 stages
])
def test_cnn_layout_follows_the_image_size(side, stem, widths, final):
  assert cnn.auto_layout(side, side) == (stem, widths)
  model = get_model(dict(name="cnn", num_classes=3))
  inputs = jnp.zeros((1, side, side, 3))

  def outputs(x):
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), x)["params"])
    return params, model.apply({"params": params}, x, capture_intermediates=True,
                               mutable=["intermediates"])[1]["intermediates"]

  params, intermediates = jax.eval_shape(outputs, inputs)
  assert params["stem_conv"]["kernel"].shape[0] == (7 if stem == "large" else 3)
  last = f"stage{len(widths) - 1}_block0"
  assert f"stage{len(widths)}_block0" not in params
  # The last stage's output: widths[-1] channels on a final x final map.
  assert intermediates[last]["__call__"][0].shape == (1, final, final, widths[-1])
