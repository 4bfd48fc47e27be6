"""Differentially private training, DP-SGD (Abadi et al. 2016): config.privacy.

  c.privacy = dict(clip_norm=1.0, noise_multiplier=1.1, delta=1e-5)
  c.privacy = dict(clip_norm=1.0, target_epsilon=3.0, delta=1e-5)  # noise calibrated

Each step's batch is drawn by Poisson sampling: every training example joins it
independently with probability q = config.batch_size / N, so a batch holds
config.batch_size examples on average. Compiled programs need one shape, so the
sampled examples are padded (mask 0) to `physical_batch_size`, or, in the rare
step that samples more, a random subset of that many is kept; the accounting
covers that truncation exactly (dp-accounting's truncated subsampled Gaussian,
privacy loss distributions). Each real example's gradient is clipped to L2
norm clip_norm (jax-privacy's `clipped_grad`, vmapped over the examples; padding
contributes exactly zero), the clipped gradients are summed over the whole
logical batch (all microbatches), Gaussian noise of standard deviation
noise_multiplier x clip_norm is added once, and the sum is divided by the
expected batch size (the realised size is private). The optimizer then works
as usual.

The guarantee is (epsilon, delta)-DP for the trained parameters with respect to
adding or removing one training example, for the steps taken: `epsilon(steps)`
is logged as privacy/epsilon with every training log and saved with every
checkpoint. With target_epsilon the noise multiplier is calibrated before
training so that the planned steps spend at most that, and a run asked to train past its budget (a longer
train_duration on resume) stops at it. What is not covered: the training
metrics in the logs (losses of the sampled batches), evaluation on private
validation data, and statistics fitted on the training data by the data
pipeline (vocabularies, standardisation) are not privatised.
"""
import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ctjax import writers
from ctjax.errors import UserError

KEYS = ("clip_norm", "noise_multiplier", "target_epsilon", "delta",
        "physical_batch_size")


@dataclasses.dataclass(frozen=True)
class Privacy:
  """A run's DP-SGD parameters, resolved (the noise calibrated if asked)."""
  clip_norm: float
  noise_multiplier: float
  delta: float
  num_examples: int              # N, the training split's size
  expected_batch_size: int       # config.batch_size: q * N
  physical_batch_size: int       # the compiled batch: sampled, padded or truncated
  target_epsilon: float | None   # the budget, when one was given

  @property
  def sampling_rate(self) -> float:
    return self.expected_batch_size / self.num_examples

  def epsilon(self, steps: int) -> float:
    """Epsilon spent by `steps` steps (at this delta); 0 before any."""
    return epsilon(steps, self.noise_multiplier, self)

  def describe(self) -> str:
    return (f"DP-SGD: clip_norm {self.clip_norm:g}, noise_multiplier "
            f"{self.noise_multiplier:.4g}, delta {self.delta:g}; Poisson sampling "
            f"q = {self.expected_batch_size}/{self.num_examples} = "
            f"{self.sampling_rate:.4g}, batches padded or truncated to "
            f"{self.physical_batch_size}")


# The privacy loss distribution's discretisation: coarser is a looser (never an
# optimistic) bound, and 1e-3 moves epsilon in the fifth digit here at a tenth of
# the cost of dp-accounting's default 1e-4 (0.6 s against 5.6 s to build a step's
# distribution on a 2-core CPU).
DISCRETIZATION = 1e-3


@functools.lru_cache(maxsize=64)
def _step_distribution(num_examples: int, sampling_rate: float, physical: int,
                       noise_multiplier: float) -> Any:
  """The privacy loss distribution of one step: the Gaussian mechanism on a
  Poisson-subsampled, truncated batch (built once per noise level)."""
  from dp_accounting.pld import privacy_loss_distribution  # pylint: disable=g-import-not-at-top
  return privacy_loss_distribution.from_truncated_subsampled_gaussian_mechanism(
      dataset_size=num_examples, sampling_probability=sampling_rate,
      truncated_batch_size=physical, noise_multiplier=noise_multiplier,
      value_discretization_interval=DISCRETIZATION)


# Cached: a step that logs and saves asks twice, and calibration then the run's
# start-up ask for the planned steps' epsilon again.
@functools.lru_cache(maxsize=256)
def epsilon(steps: int, noise_multiplier: float, privacy: Privacy) -> float:
  """Epsilon of `steps` steps at this noise, by composing the step's privacy
  loss distribution (dp-accounting's PLD accounting); 0 before any step."""
  if steps <= 0:
    return 0.0
  step = _step_distribution(privacy.num_examples, privacy.sampling_rate,
                            privacy.physical_batch_size, noise_multiplier)
  return float(step.self_compose(steps).get_epsilon_for_delta(privacy.delta))


def calibrate_noise(privacy: Privacy, target_epsilon: float, steps: int) -> float:
  """The smallest noise multiplier (within 0.1%) whose `steps` steps spend at
  most target_epsilon: epsilon falls as the noise grows, so double, then bisect."""
  high = 1.0
  while epsilon(steps, high, privacy) > target_epsilon:
    high *= 2
  low = 0.0 if high == 1.0 else high / 2
  while high - low > 1e-3 * high:
    middle = (low + high) / 2
    if epsilon(steps, middle, privacy) > target_epsilon:
      low = middle
    else:
      high = middle
  return high


def default_physical_batch_size(expected: int, num_examples: int, multiple: int) -> int:
  """Room for the sampled batch's usual spread: its mean plus 4 standard
  deviations (a binomial's), rounded up to `multiple` (what the mesh, the
  processes and the microbatches divide); truncation beyond is rare and
  accounted anyway."""
  q = expected / num_examples
  size = expected + 4 * math.sqrt(num_examples * q * (1 - q))
  return min(multiple * math.ceil(size / multiple),
             multiple * math.ceil(num_examples / multiple))


def configure(config: Any, *, num_examples: int, total_steps: int,
              batch_multiple: int, expected_batch_size: int | None = None,
              unit: str = "training examples") -> Privacy | None:
  """config.privacy checked and resolved (None without it); UserError naming
  the key on a mistake, before anything compiles.

  What is sampled is `num_examples` units (training examples for DP-SGD;
  clients for DP-FedAvg, ctjax/federated.py), `expected_batch_size` of them a
  step (default config.batch_size)."""
  expected = expected_batch_size or config.batch_size
  spec = config.get("privacy")
  if not spec:
    return None
  spec = dict(spec)
  for key in spec:
    if key not in KEYS:
      raise UserError(f"config.privacy.{key}: not an option; use "
                      f"{', '.join(KEYS)}")
  if (spec.get("noise_multiplier") is None) == (spec.get("target_epsilon") is None):
    raise UserError("config.privacy: set exactly one of noise_multiplier (the "
                    "noise, epsilon follows) and target_epsilon (the budget, the "
                    "noise is calibrated to it)")
  for key in ("clip_norm", "delta"):
    if not isinstance(spec.get(key), (int, float)) or not spec[key] > 0:
      raise UserError(f"config.privacy.{key}={spec.get(key)!r}: a positive number "
                      "is required")
  if spec["delta"] >= 1 / num_examples:
    raise UserError(f"config.privacy.delta={spec['delta']:g}: must be below 1/N = "
                    f"{1 / num_examples:.3g} for N={num_examples} {unit} (else "
                    "the guarantee allows leaking one)")
  if expected >= num_examples:
    raise UserError(f"{expected} of {num_examples} {unit} a step: DP samples a "
                    f"fraction of them; take fewer (config.batch_size, or "
                    "config.federated.clients_per_round)")
  physical = spec.get("physical_batch_size") or default_physical_batch_size(
      expected, num_examples, batch_multiple)
  if physical % batch_multiple:
    raise UserError(f"config.privacy.physical_batch_size={physical}: must be a "
                    f"multiple of {batch_multiple} (the batch's shards, processes "
                    "and microbatches)")
  privacy = Privacy(clip_norm=float(spec["clip_norm"]),
                    noise_multiplier=float(spec.get("noise_multiplier") or 0.0),
                    delta=float(spec["delta"]), num_examples=num_examples,
                    expected_batch_size=int(expected),
                    physical_batch_size=int(physical),
                    target_epsilon=spec.get("target_epsilon"))
  if privacy.target_epsilon is not None:
    privacy = dataclasses.replace(privacy, noise_multiplier=calibrate_noise(
        privacy, float(privacy.target_epsilon), total_steps))
  return privacy


def record(workdir: str, privacy: Privacy, *, write: bool) -> None:
  """Keeps WORKDIR/privacy.json, the run's resolved parameters; a resumed run
  must have the same, since its accounting assumes one noise level and sampling
  rate from the first step (a longer train_duration would recalibrate the noise
  of a target_epsilon run). UserError, naming what changed, if not."""
  path = os.path.join(workdir, "privacy.json")
  fields = dataclasses.asdict(privacy)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      before = json.load(f)
    changed = {k: (before.get(k), v) for k, v in fields.items() if before.get(k) != v}
    if changed:
      raise UserError(
          f"{path}: this run started with other privacy parameters ("
          + ", ".join(f"{k} {a!r}, now {b!r}" for k, (a, b) in changed.items())
          + "); its accounting assumes them for every step: restore config.privacy,"
          " config.batch_size and config.train_duration, or start a new workdir")
  elif write:
    writers.write_atomically(path, json.dumps(fields, indent=2) + "\n")


def sampled_indices(step: int, privacy: Privacy, seed: int) -> np.ndarray:
  """Step `step`'s Poisson-sampled batch: example indices, -1 for padding, of
  length physical_batch_size. A function of (seed, step) alone, so a resumed
  run draws the same batches."""
  rng = np.random.default_rng([seed, step, 0x5eed])
  chosen = np.flatnonzero(rng.random(privacy.num_examples) < privacy.sampling_rate)
  if len(chosen) > privacy.physical_batch_size:  # Truncation: a random subset.
    chosen = rng.choice(chosen, privacy.physical_batch_size, replace=False)
  rng.shuffle(chosen)  # Padding goes last; real examples in random order.
  indices = np.full(privacy.physical_batch_size, -1, np.int64)
  indices[:len(chosen)] = chosen
  return indices


def make_private_train_step(model: Any, tx: Any, privacy: Privacy,
                            grad_accum_steps: int,
                            model_params: Callable[[Any, Any], Any],
                            per_example_loss: Callable[[jax.Array, jax.Array],
                                                       jax.Array]):
  """The DP-SGD update, with the metrics of `train.make_train_step`.

  One example's loss is the mean over its positions (one, or a sequence's
  tokens) of the task's loss; its gradient is clipped to clip_norm. With k
  microbatches the clipped gradients are summed over all of them before the
  noise is added, once.
  """
  from jax_privacy import clipping  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  def example_loss(params, frozen, example, rng):
    logits = model.apply({"params": model_params(params, frozen)}, example["inputs"],
                         train=True, rngs={"dropout": rng})
    losses = per_example_loss(logits, example["label"])
    # A fixed divisor (the positions, not the real ones) keeps each example's
    # loss a function of that example alone.
    return jnp.sum(jnp.where(example["mask"] > 0, losses * example["mask"], 0.0)
                   ) / losses.size

  clipped_grad = clipping.clipped_grad(
      example_loss, argnums=0, l2_clip_norm=privacy.clip_norm, batch_argnums=2,
      keep_batch_dim=True, return_values=True, prng_argnum=3,
      microbatch_size=privacy.physical_batch_size // grad_accum_steps)

  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    real = batch["mask"].reshape(batch["mask"].shape[0], -1).max(axis=1) > 0
    grads, aux = clipped_grad(state["params"], state["frozen"], batch,
                              jax.random.fold_in(rng, 0),
                              is_padding_example=~real)
    leaves, treedef = jax.tree.flatten(grads)
    keys = jax.random.split(jax.random.fold_in(rng, 1), len(leaves))
    std = privacy.noise_multiplier * privacy.clip_norm
    noised = [g + std * jax.random.normal(k, g.shape, g.dtype)
              for g, k in zip(leaves, keys)]
    grads = jax.tree.map(lambda g: g / privacy.expected_batch_size,
                         jax.tree.unflatten(treedef, noised))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, step=state["step"] + 1,
                     params=optax.apply_updates(state["params"], updates),
                     opt_state=opt_state)
    loss = jnp.sum(jnp.where(real, aux.values, 0.0)) / jnp.maximum(jnp.sum(real), 1)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step
