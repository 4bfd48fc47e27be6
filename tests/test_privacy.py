"""DP-SGD (ctjax/privacy.py): clipping, noise, sampling and accounting, each against
an independent reference, and a private run that resumes exactly.
"""
import json
import math
import shutil

import dp_accounting
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import run_util
import test_resume
import tolerances
from ctjax import models
from ctjax import optim
from ctjax import privacy
from ctjax import tasks
from ctjax.errors import UserError

FEATURES = 30  # the breast-cancer table's


def _privacy(**changes) -> privacy.Privacy:
  values = dict(clip_norm=0.5, noise_multiplier=0.0, delta=1e-3, num_examples=455,
                expected_batch_size=8, physical_batch_size=10, target_epsilon=None)
  return privacy.Privacy(**{**values, **changes})


def _sgd() -> optax.GradientTransformation:
  """SGD at lr 1: the update is minus the privatised gradient itself."""
  config = ml_collections.ConfigDict(dict(
      name="sgd", lr=1.0, clip_norm=0.0, weight_decay=0.0,
      schedule=dict(name="constant")))
  return optim.make_optimizer(config, total_steps=1, global_batch_size=1,
                              train_examples=None)[0]


def _model_and_params(batch: dict, hidden: tuple[int, ...] = (16,), seed: int = 0):
  model = models.get_model(dict(name="mlp", num_classes=2, hidden_sizes=hidden))
  return model, nn.meta.unbox(model.init(jax.random.PRNGKey(seed),
                                         batch["inputs"][:1])["params"])


def _update(dp: privacy.Privacy, batch: dict, grad_accum_steps: int = 1,
            hidden: tuple[int, ...] = (16,), seed: int = 0):
  """One DP-SGD step of a small MLP from fixed parameters: (update, params)."""
  model, params = _model_and_params(batch, hidden, seed)
  tx = _sgd()
  step = privacy.make_private_train_step(
      model, tx, dp, grad_accum_steps, lambda p, f: p,
      tasks.get("classification").per_example_loss)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "frozen": {},
           "opt_state": tx.init(params), "rng": jax.random.PRNGKey(seed + 1)}
  new_state, _ = jax.jit(step)(state, batch)
  return jax.tree.map(jnp.subtract, new_state["params"], params), params, model


def _batch(rng: np.random.Generator, size: int, real: int) -> dict:
  return {"inputs": rng.normal(size=(size, FEATURES)).astype(np.float32),
          "label": rng.integers(0, 2, size).astype(np.int32),
          "mask": (np.arange(size) < real).astype(np.float32)}


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_each_examples_gradient_is_clipped_and_padding_adds_nothing(grad_accum_steps):
  """Against a hand-written loop: each real example's gradient (jax.grad of its
  own loss), scaled down to norm clip_norm where longer, summed, divided by the
  expected batch size. One example is an outlier (inputs x 1000): its clipped
  gradient moves the update by at most clip_norm / batch."""
  rng = np.random.default_rng(0)
  batch = _batch(rng, 10, real=7)
  batch["inputs"][3] *= 30.0
  # Labelled as the class the model finds least likely: a large loss.
  model, params = _model_and_params(batch)
  batch["label"][3] = np.argmin(model.apply({"params": params}, batch["inputs"][3:4]))
  dp = _privacy()
  update, params, model = _update(dp, batch, grad_accum_steps)

  def loss(p, x, y):
    logits = model.apply({"params": p}, x[None])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0]

  expected = jax.tree.map(jnp.zeros_like, params)
  norms = []
  for i in range(7):
    g = jax.grad(loss)(params, batch["inputs"][i], batch["label"][i])
    norms.append(float(optax.tree.norm(g)))
    g = jax.tree.map(lambda x: x * jnp.minimum(1.0, dp.clip_norm / norms[-1]), g)
    expected = jax.tree.map(jnp.add, expected, g)
  expected = jax.tree.map(lambda g: -g / dp.expected_batch_size, expected)
  # The same float32 sums in another order: 7 examples' gradients through a
  # 30-16-2 network (tests/tolerances.py), the update read back from rounded
  # parameters.
  tolerances.assert_close_normwise(update, expected,
                                   tolerances.sum_rtol(7 + 2 * (30 + 16 + 2)),
                                   params=params)
  assert norms[3] > 10 * dp.clip_norm  # The outlier was clipped, hard.


def test_the_noise_has_the_stated_scale_and_is_added_once():
  """An all-padding batch: no gradient, so the update is the noise alone, divided
  by the expected batch size, N(0, (noise_multiplier x clip_norm / B)^2) in each
  of the n = 30x256 + 256 + 256x2 + 2 parameters. A sample's standard deviation
  from n normal draws is within 6/sqrt(2n) of the true one (relative, six
  standard errors), its mean within 6/sqrt(n) standard deviations of 0. With 2
  microbatches the noise is the same: added once, to the sum."""
  rng = np.random.default_rng(1)
  batch = _batch(rng, 10, real=0)
  dp = _privacy(noise_multiplier=1.3)
  update, _, _ = _update(dp, batch, hidden=(256,))
  values = np.concatenate([np.ravel(x) for x in jax.tree.leaves(update)])
  n, std = values.size, 1.3 * 0.5 / 8
  assert abs(values.std() / std - 1) < 6 / math.sqrt(2 * n)
  assert abs(values.mean()) < 6 * std / math.sqrt(n)
  twice, _, _ = _update(dp, batch, grad_accum_steps=2, hidden=(256,))
  np.testing.assert_array_equal(
      np.concatenate([np.ravel(x) for x in jax.tree.leaves(twice)]), values)


def test_epsilon_is_dp_accountings_for_the_same_mechanism():
  """Ours composes one step's privacy loss distribution; dp-accounting's own PLD
  accountant composes the same event T times: the same numbers (up to its float
  work, ~1e-12). And Poisson sampling without truncation, accounted by its RDP
  accountant, is a looser bound than ours, never a tighter one."""
  dp = _privacy(noise_multiplier=1.1, expected_batch_size=64, physical_batch_size=96)
  for steps in (1, 50, 300):
    accountant = dp_accounting.pld.PLDAccountant(
        value_discretization_interval=privacy.DISCRETIZATION)
    accountant.compose(dp_accounting.TruncatedSubsampledGaussianDpEvent(
        dataset_size=455, sampling_probability=64 / 455, truncated_batch_size=96,
        noise_multiplier=1.1), steps)
    assert dp.epsilon(steps) == pytest.approx(accountant.get_epsilon(1e-3), rel=1e-9)
    rdp = dp_accounting.rdp.RdpAccountant()
    rdp.compose(dp_accounting.PoissonSampledDpEvent(
        64 / 455, dp_accounting.GaussianDpEvent(1.1)), steps)
    assert dp.epsilon(steps) <= rdp.get_epsilon(1e-3)
  assert dp.epsilon(0) == 0.0


def test_the_noise_calibrated_to_a_budget_spends_it():
  dp = _privacy(expected_batch_size=64, physical_batch_size=96)
  sigma = privacy.calibrate_noise(dp, target_epsilon=3.0, steps=200)
  assert privacy.epsilon(200, sigma, dp) <= 3.0
  assert privacy.epsilon(200, sigma * 0.999, dp) > 3.0 * 0.99  # Not far below.
  assert privacy.epsilon(200, sigma / 1.01, dp) > 3.0


def test_poisson_batches_are_reproducible_padded_and_of_the_expected_size():
  dp = _privacy(expected_batch_size=64, physical_batch_size=96)
  batches = [privacy.sampled_indices(step, dp, seed=0) for step in range(400)]
  np.testing.assert_array_equal(batches[7], privacy.sampled_indices(7, dp, seed=0))
  assert not np.array_equal(batches[7], privacy.sampled_indices(7, dp, seed=1))
  sizes = np.array([np.sum(b >= 0) for b in batches])
  for b, size in zip(batches, sizes):
    assert len(b) == 96 and np.all(b[size:] == -1) and np.all(b[:size] >= 0)
    assert len(set(b[:size])) == size  # Without replacement within a step.
  # Binomial(455, 64/455): the mean of 400 sizes within 6 standard errors.
  q = 64 / 455
  assert abs(sizes.mean() - 64) < 6 * math.sqrt(455 * q * (1 - q) / 400)


@pytest.mark.parametrize("spec, says", [
    ({"clip_norm": 1.0, "delta": 1e-5}, "exactly one of noise_multiplier"),
    ({"clip_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 3.0,
      "delta": 1e-5}, "exactly one"),
    ({"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 0.01}, "below 1/N"),
    ({"clip_norm": 0.0, "noise_multiplier": 1.0, "delta": 1e-5}, "clip_norm"),
    ({"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5, "epsilon": 3},
     "config.privacy.epsilon: not an option"),
])
def test_privacy_mistakes_name_the_key(spec, says):
  config = ml_collections.ConfigDict({"batch_size": 64, "privacy": spec})
  with pytest.raises(UserError, match=says):
    privacy.configure(config, num_examples=455, total_steps=10, batch_multiple=8)


# A private run of the breast-cancer table: 12 steps, logs every 3, saves every 6.
DP_CONFIG = {
    "seed": 0,
    "data": run_util.BREAST_CANCER_DATA,
    "model": {"name": "mlp", "num_classes": 2, "hidden_sizes": (16,)},
    "batch_size": 32, "train_duration": 12, "log_every": 3, "eval_every": 0,
    "eval_splits": ("validation",), "final_eval_splits": ("validation",),
    "optim": {"lr": 3e-3},
    "checkpoint": {"every": 6, "keep": 3},
    "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-3},
}


def test_a_private_run_logs_and_saves_epsilon_and_resumes_exactly(tmp_path):
  reference = tmp_path / "reference"
  test_resume.train_in_process(tmp_path, DP_CONFIG, reference)
  recorded = json.loads((reference / "privacy.json").read_text())
  dp = privacy.Privacy(**recorded)
  assert (dp.num_examples, dp.expected_batch_size) == (455, 32)
  spent = run_util.curve(reference, "privacy/epsilon")
  assert sorted(spent) == [3, 6, 9, 12]
  assert all(spent[s] == pytest.approx(dp.epsilon(s), rel=1e-12) for s in spent)
  assert spent[3] < spent[6] < spent[9] < spent[12]
  # Each checkpoint keeps what its state has spent.
  assert run_util.checkpoint_position(reference, 6)["epsilon"] == spent[6]

  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  test_resume.truncate(resumed, 6)
  test_resume.train_in_process(tmp_path, DP_CONFIG, resumed)
  test_resume.assert_bitwise_equal(run_util.saved_state(resumed, 12),
                                   run_util.saved_state(reference, 12))
  assert run_util.curve(resumed, "privacy/epsilon") == spent

  # Other noise on resume would break the accounting: refused, naming the file.
  noisier = {**DP_CONFIG, "privacy": {**DP_CONFIG["privacy"], "noise_multiplier": 2.0}}
  with pytest.raises(UserError, match="privacy.json: this run started with other"):
    test_resume.train_in_process(tmp_path, noisier, resumed)


def test_a_private_run_on_eight_devices_follows_the_single_device_run(tmp_path):
  """DP-SGD on a mesh: the same sampled batches (physical size fixed at 64, which
  8 devices divide), the same noise (JAX's random numbers do not depend on the
  sharding), the float32 sums in another order: the curves agree within
  tests/tolerances.py's bound for 12 steps through the 32-example batches of a
  30-16-2 network."""
  config = {**DP_CONFIG, "privacy": {**DP_CONFIG["privacy"], "physical_batch_size": 64}}
  single = tmp_path / "single"
  run_util.train(run_util.write_config(tmp_path, config), single,
                 {"mesh.data": 1}, devices=1)
  sharded = tmp_path / "sharded"
  test_resume.train_in_process(tmp_path, {**config, "mesh": {"data": 8}}, sharded)
  tolerances.assert_curves_close(run_util.curve(sharded), run_util.curve(single),
                                 n=64 + 2 * (30 + 16 + 2))
  assert run_util.curve(sharded, "privacy/epsilon") == run_util.curve(
      single, "privacy/epsilon")
