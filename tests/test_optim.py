"""Tests for ctjax.optim: schedules, optimizers, weight decay, clipping, errors."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import tolerances
from ctjax import optim
from ctjax.errors import UserError

OPTIMIZERS = ("sgd", "momentum", "adamw", "adafactor", "lion")


def _config(**overrides) -> ml_collections.ConfigDict:
  """An optim config with the documented defaults, then `overrides`."""
  config = dict(name="adamw", lr=1e-3, weight_decay=0.0, momentum=0.9,
                nesterov=False, b1=0.9, b2=0.999, eps=1e-8, clip_norm=0.0,
                schedule=dict(name="constant", warmup=0, end_fraction=0.0))
  schedule = overrides.pop("schedule", {})
  config.update(overrides)
  config["schedule"].update(schedule)
  return ml_collections.ConfigDict(config)


def _schedule(total_steps=100, **overrides):
  return optim.make_schedule(_config(**overrides), total_steps=total_steps,
                             global_batch_size=10, train_examples=100)


def _optimizer(total_steps=100, **overrides):
  tx, _ = optim.make_optimizer(_config(**overrides), total_steps=total_steps,
                               global_batch_size=10, train_examples=100)
  return tx


# (config overrides, total_steps, {step: expected learning rate}); each expectation
# is the schedule's formula written out by hand.
SCHEDULE_CASES = {
    "constant_no_warmup": (
        dict(lr=0.3), 100, {0: 0.3, 50: 0.3, 100: 0.3}),
    "constant_warmup_in_epochs": (  # 2 epochs of 100 examples at batch 10: 20 steps
        dict(lr=0.3, schedule=dict(warmup="2 epochs")), 100,
        {0: 0.0, 5: 0.3 * 5 / 20, 20: 0.3, 99: 0.3}),
    "cosine": (
        dict(lr=0.1, schedule=dict(name="warmup_cosine", warmup="10 steps",
                                   end_fraction=0.1)), 110,
        {0: 0.0, 5: 0.05, 10: 0.1,
         35: 0.1 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
         60: 0.1 * (0.1 + 0.9 * 0.5), 110: 0.01, 500: 0.01}),
    "cosine_warmup_in_examples": (  # 250 examples at batch 10: 25 steps
        dict(lr=1.0, schedule=dict(name="warmup_cosine", warmup="250 examples")), 125,
        {25: 1.0, 75: 0.5, 125: 0.0}),
    "linear": (
        dict(lr=2.0, schedule=dict(name="warmup_linear")), 100,
        {0: 2.0, 25: 1.5, 50: 1.0, 100: 0.0}),
    "linear_warmup_end_fraction": (
        dict(lr=1.0, schedule=dict(name="warmup_linear", warmup=20, end_fraction=0.2)),
        120, {10: 0.5, 20: 1.0, 70: 0.6, 120: 0.2}),
    "rsqrt": (  # lr * sqrt(warmup / step) after warmup
        dict(lr=1.0, schedule=dict(name="rsqrt", warmup=100)), 10_000,
        {50: 0.5, 100: 1.0, 400: 0.5, 1600: 0.25}),
    "rsqrt_timescale": (  # lr * sqrt(timescale / (timescale + step - warmup))
        dict(lr=0.5, schedule=dict(name="rsqrt", warmup=100, timescale=10)), 10_000,
        {100: 0.5, 140: 0.5 * math.sqrt(10 / 50), 1090: 0.05}),
    "rsqrt_no_warmup": (  # timescale 1: lr / sqrt(1 + step)
        dict(lr=1.0, schedule=dict(name="rsqrt")), 10_000,
        {0: 1.0, 3: 0.5, 99: 0.1}),
    "warmup_is_all_of_training": (
        dict(lr=1.0, schedule=dict(name="warmup_cosine", warmup=50)), 50,
        {25: 0.5, 50: 1.0}),
}


@pytest.mark.parametrize("case", SCHEDULE_CASES.values(), ids=SCHEDULE_CASES.keys())
def test_schedule_matches_formula(case):
  overrides, total_steps, expected = case
  schedule = jax.jit(_schedule(total_steps, **overrides))
  for step, value in expected.items():
    np.testing.assert_allclose(schedule(jnp.int32(step)), value, rtol=1e-6,
                               atol=1e-7, err_msg=f"step {step}")


def _quadratic(params):
  """A loss with its minimum at kernel = 1, bias = -1."""
  return (jnp.sum((params["kernel"] - 1.0) ** 2)
          + jnp.sum((params["bias"] + 1.0) ** 2))


def _run(tx, params, steps, grads_fn=jax.grad(_quadratic)):
  state = tx.init(params)
  for _ in range(steps):
    updates, state = tx.update(grads_fn(params), state, params)
    params = optax.apply_updates(params, updates)
  return params


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_decreases_a_quadratic(name):
  params = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))}
  tx = _optimizer(name=name, lr=0.05, weight_decay=1e-4, clip_norm=1.0,
                  schedule=dict(name="warmup_cosine", warmup=2))
  losses = [_quadratic(_run(tx, params, steps)) for steps in (0, 5, 10)]
  assert losses[0] > losses[1] > losses[2]


def test_sgd_is_the_hand_written_update():
  params = {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones((3,))}
  grads = jax.grad(_quadratic)(params)
  lr = 0.1
  # The config's momentum is ignored by "sgd": it is plain gradient descent.
  new = _run(_optimizer(name="sgd", lr=lr), params, steps=1)
  for key in params:
    np.testing.assert_array_equal(new[key], params[key] - lr * grads[key])


def test_sgd_weight_decay_is_decoupled_and_scaled_by_lr():
  params = {"kernel": jnp.arange(6.0).reshape(2, 3), "bias": jnp.ones((3,))}
  grads = jax.grad(_quadratic)(params)
  lr, wd = 0.1, 0.5
  new = _run(_optimizer(name="sgd", lr=lr, weight_decay=wd), params, steps=1)
  np.testing.assert_allclose(
      new["kernel"], params["kernel"] - lr * (grads["kernel"] + wd * params["kernel"]),
      rtol=1e-6)
  np.testing.assert_allclose(new["bias"], params["bias"] - lr * grads["bias"],
                             rtol=1e-6)


# Where optax has the same optimizer with the same decay convention, ours must match
# it step for step.
OPTAX_REFERENCES = {
    "momentum_nesterov": (
        dict(name="momentum", momentum=0.8, nesterov=True),
        optax.sgd(0.05, momentum=0.8, nesterov=True)),
    "adamw": (
        dict(name="adamw", b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1),
        optax.adamw(0.05, b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1,
                    mask=optim.weight_decay_mask)),
    "lion": (
        dict(name="lion", b1=0.95, b2=0.98, weight_decay=0.1),
        optax.lion(0.05, b1=0.95, b2=0.98, weight_decay=0.1,
                   mask=optim.weight_decay_mask)),
    "adafactor": (  # optax's decay is not scaled by lr, so compare without it
        dict(name="adafactor"),
        optax.adafactor(0.05, multiply_by_parameter_scale=False)),
}


@pytest.mark.parametrize("case", OPTAX_REFERENCES.values(),
                         ids=OPTAX_REFERENCES.keys())
def test_matches_optax_reference(case):
  overrides, reference = case
  params = {"kernel": jnp.linspace(-1, 1, 12).reshape(4, 3),
            "bias": jnp.array([0.5, -0.2, 0.1])}
  ours = _run(_optimizer(lr=0.05, **overrides), params, steps=5)
  theirs = _run(reference, params, steps=5)
  # The same elementwise arithmetic composed differently (and adafactor's means
  # over 3 or 4 entries): a few roundings a step, bounded as 5 steps of 4-term sums
  # (tests/tolerances.py), relative to each array's scale.
  tolerances.assert_close_normwise(ours, theirs, tolerances.curve_rtol(5, n=4))


class _Tiny(nn.Module):
  """Embedding, dense, LayerNorm, dense: every kind of parameter a model has."""

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(10, 4, name="embed")(tokens)
    x = nn.Dense(4, name="hidden")(x)
    x = nn.LayerNorm(name="norm")(x)
    return nn.Dense(2, name="head")(x)


def _tiny_params():
  params = _Tiny().init(jax.random.key(0), jnp.zeros((2,), jnp.int32))["params"]
  # Nonzero biases and LayerNorm offsets, so that decaying them would show.
  return jax.tree.map(lambda p: p + 0.5, params)


def test_weight_decay_mask_is_kernels_and_embeddings():
  mask = optim.weight_decay_mask(_tiny_params())
  assert mask == {
      "embed": {"embedding": True},
      "hidden": {"kernel": True, "bias": False},
      "norm": {"scale": False, "bias": False},
      "head": {"kernel": True, "bias": False},
  }
  # Abstract shapes work too, for building the optimizer before init.
  assert optim.weight_decay_mask(jax.eval_shape(_tiny_params)) == mask


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_shrinks_only_kernels(name):
  # With zero gradients every optimizer's direction is zero, so one step is pure
  # decay: the same factor 1 - lr * weight_decay for all of them.
  lr, wd = 0.1, 0.5
  params = _tiny_params()
  new = _run(_optimizer(name=name, lr=lr, weight_decay=wd), params, steps=1,
             grads_fn=lambda p: jax.tree.map(jnp.zeros_like, p))
  decayed = optim.weight_decay_mask(params)
  for path, old in jax.tree_util.tree_leaves_with_path(params):
    factor = (1 - lr * wd) if _leaf(decayed, path) else 1.0
    np.testing.assert_allclose(_leaf(new, path), factor * old, rtol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def _leaf(tree, path):
  for entry in path:
    tree = tree[entry.key]
  return tree


@pytest.mark.parametrize("grad_scale, expected_norm", [(1e6, 1.0), (1e-2, None)])
def test_clipping_bounds_the_update_norm(grad_scale, expected_norm):
  params = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros((3,))}
  grads = jax.tree.map(
      lambda p: grad_scale * jax.random.normal(jax.random.key(1), p.shape), params)
  tx = _optimizer(name="sgd", lr=1.0, clip_norm=1.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  if expected_norm is None:  # below the threshold: untouched
    expected_norm = optax.tree.norm(grads)
  np.testing.assert_allclose(optax.tree.norm(updates), expected_norm, rtol=1e-5)


@pytest.mark.parametrize("overrides, key", [
    (dict(name="adam"), "config.optim.name='adam': unknown optimizer; choose one of "
     "sgd, momentum, adamw, adafactor, lion"),
    (dict(schedule=dict(name="cosine")), "config.optim.schedule.name='cosine'"),
    (dict(lr=-0.1), "config.optim.lr=-0.1"),
    (dict(lr=None), "config.optim.lr=None"),
    (dict(weight_decay=-1.0), "config.optim.weight_decay=-1.0"),
    (dict(clip_norm=-1.0), "config.optim.clip_norm=-1.0"),
    (dict(name="momentum", momentum=1.0), "config.optim.momentum=1.0"),
    (dict(b2=1.5), "config.optim.b2=1.5"),
    (dict(schedule=dict(warmup="200 steps")),
     "config.optim.schedule.warmup='200 steps': warmup (200 steps) is longer than "
     "training (100 steps)"),
    (dict(schedule=dict(warmup="3 parsecs")), "config.optim.schedule.warmup"),
    (dict(schedule=dict(end_fraction=2.0)), "config.optim.schedule.end_fraction"),
    (dict(schedule=dict(name="rsqrt", timescale=-5)),
     "config.optim.schedule.timescale"),
])
def test_config_errors_name_the_key(overrides, key):
  with pytest.raises(UserError) as error:
    _optimizer(**overrides)
  assert str(error.value).startswith(key)
  assert "\n" not in str(error.value)
