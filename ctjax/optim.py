"""Optax optimizers and learning-rate schedules from `config.optim`.

  optim = dict(
      name="adamw",          # sgd | momentum | adamw | adafactor | lion
      lr=1e-3,               # peak learning rate
      weight_decay=1e-4,     # decoupled, scaled by the learning rate; 0 disables
      momentum=0.9, nesterov=False,   # "momentum" only: "sgd" is plain SGD
      b1=0.9, b2=0.999, eps=1e-8,     # adamw; lion reads b1, b2 (its own defaults
                                      # 0.9, 0.99 when the config has none)
      clip_norm=1.0,         # clip the gradient's global norm first; 0 or None disables
      schedule=dict(name="warmup_cosine", warmup="500 steps", end_fraction=0.0),
  )

Every optimizer is the same three-part chain, applied after gradient clipping:

  direction (the optimizer proper) -> + weight_decay * param -> * -lr(step)

so an update is `-lr(step) * (direction + weight_decay * param)`. This is AdamW's
decoupled decay (Loshchilov & Hutter) and what optax.adamw and optax.lion do; we use
it for SGD, momentum and Adafactor too, so `weight_decay` means the same thing for
every optimizer: with a zero gradient a decayed parameter shrinks by a factor
`1 - lr(step) * weight_decay` per step. Decay is added after the momentum, so it is
not carried in the momentum buffer, as with AdamW.

Adafactor is optax.adafactor's factored second moments and update clipping without
its multiplication by the parameters' scale, so that its lr is an absolute step size
like the others'.

The chain for one set of parameters is built by `_chain(config, learning_rate,
weight_decay)`. Parameter groups (config.optim.groups and layer_decay, resolved by
ctjax/peft.py into a label per parameter and an (lr multiplier, wd multiplier) per
label) wrap one such chain per label in `optax.multi_transform`, inside the
global-norm clip so that clipping still sees the whole gradient. Frozen parameters
are not the optimizer's at all: it is given only the parameters that train.

Population mode (ctjax/population.py) trains many trials in one compiled step,
`jax.vmap`ped over their hyperparameters, so there the learning rate, weight decay
and warmup are traced arrays, one value per trial. `make_optimizer` and
`make_schedule` take them as `hyperparameters`, which replace the config's values
after those are checked; written with `jnp` where a value may be an array, the
schedule computes the same float32 numbers for a Python value as for an array.
"""
from collections.abc import Callable, Mapping
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ctjax import durations
from ctjax.errors import UserError

OPTIMIZERS = ("sgd", "momentum", "adamw", "adafactor", "lion")
SCHEDULES = ("constant", "warmup_cosine", "warmup_linear", "rsqrt")
# What `hyperparameters` may replace: the peak lr, the weight decay, and the warmup
# in steps (durations resolved by the caller).
HYPERPARAMETERS = ("lr", "weight_decay", "warmup_steps")


def _require(ok: bool, key: str, value: Any, problem: str) -> None:
  """Raises a one-line UserError naming `config.<key>` unless `ok`."""
  if not ok:
    raise UserError(f"config.{key}={value!r}: {problem}")


def _get(config, name: str, default: Any) -> Any:
  """`config.<name>`, or `default` when the config leaves it out or sets None."""
  value = config.get(name, None)
  return default if value is None else value


def _unit_interval(config, name: str, default: float) -> float:
  """Reads a decay rate such as momentum or b1, which must lie in [0, 1)."""
  value = _get(config, name, default)
  _require(0 <= value < 1, f"optim.{name}", value, "must be in [0, 1)")
  return value


def _learning_rate(optim_config) -> float:
  """Reads the peak learning rate, which the config must give."""
  lr = optim_config.get("lr", None)
  _require(lr is not None, "optim.lr", lr, "set the peak learning rate, e.g. 1e-3")
  _require(lr >= 0, "optim.lr", lr, "the learning rate cannot be negative")
  return lr


def _check_hyperparameters(hyperparameters: Mapping[str, Any] | None
                           ) -> Mapping[str, Any]:
  unknown = set(hyperparameters or {}) - set(HYPERPARAMETERS)
  if unknown:  # A caller's mistake, not a config's.
    raise ValueError(f"hyperparameters {sorted(unknown)}: only "
                     f"{', '.join(HYPERPARAMETERS)} may be given")
  return hyperparameters or {}


def _warmup_steps(schedule_config, *, global_batch_size: int,
                  train_examples: int | None) -> int:
  return durations.to_steps(
      _get(schedule_config, "warmup", 0), key="optim.schedule.warmup",
      global_batch_size=global_batch_size, train_examples=train_examples)


def config_hyperparameters(optim_config, *, global_batch_size: int,
                           train_examples: int | None) -> dict[str, float]:
  """The config's values of HYPERPARAMETERS, as Python numbers (the warmup in
  steps): what a population stacks, one per trial. Checked by `make_optimizer`."""
  return {"lr": _learning_rate(optim_config),
          "weight_decay": _get(optim_config, "weight_decay", 0.0),
          "warmup_steps": _warmup_steps(_get(optim_config, "schedule", {}),
                                        global_batch_size=global_batch_size,
                                        train_examples=train_examples)}


def make_schedule(optim_config, *, total_steps: int, global_batch_size: int,
                  train_examples: int | None,
                  hyperparameters: Mapping[str, Any] | None = None
                  ) -> optax.Schedule:
  """Returns step -> learning rate for `config.optim.schedule`.

  Every schedule warms up linearly from 0 at step 0 to `lr` at step `warmup`, then:

    constant        lr
    warmup_cosine   cosine from lr to end_fraction * lr at `total_steps`
    warmup_linear   linear from lr to end_fraction * lr at `total_steps`
    rsqrt           lr * sqrt(timescale / (timescale + step - warmup)); timescale
                    defaults to max(warmup, 1), which makes it lr * sqrt(warmup / step)

  Args:
    optim_config: `config.optim`.
    total_steps: the length of training, where the decaying schedules end.
    global_batch_size: to convert a warmup given in examples or epochs to steps.
    train_examples: the training split's size, for a warmup given in epochs.
    hyperparameters: "lr" and "warmup_steps" to use instead of the config's
      (which are still checked), as arrays: one trial's of a population.

  Returns:
    A jit-able function of the step (an int array) giving a float32 learning rate.
  """
  hyperparameters = _check_hyperparameters(hyperparameters)
  lr = _learning_rate(optim_config)
  config = _get(optim_config, "schedule", {})
  name = _get(config, "name", "constant")
  _require(name in SCHEDULES, "optim.schedule.name", name,
           f"unknown schedule; choose one of {', '.join(SCHEDULES)}")
  warmup = _warmup_steps(config, global_batch_size=global_batch_size,
                         train_examples=train_examples)
  _require(warmup <= total_steps, "optim.schedule.warmup", config.get("warmup"),
           f"warmup ({warmup} steps) is longer than training ({total_steps} steps); "
           "shorten it")
  end_fraction = _get(config, "end_fraction", 0.0)
  _require(0 <= end_fraction <= 1, "optim.schedule.end_fraction", end_fraction,
           "must be in [0, 1]: the final learning rate as a fraction of lr")
  timescale = config.get("timescale", None)
  _require(timescale is None or timescale > 0, "optim.schedule.timescale", timescale,
           "must be positive")
  lr = hyperparameters.get("lr", lr)
  warmup = hyperparameters.get("warmup_steps", warmup)
  if timescale is None:
    timescale = jnp.maximum(warmup, 1)

  def progress(step):
    """0 at the end of warmup, 1 at `total_steps`; max(..., 1) for warmup == total."""
    return jnp.clip((step - warmup) / jnp.maximum(total_steps - warmup, 1), 0.0, 1.0)

  # Each decay is 1 during warmup, so the schedule is simply warmup * decay.
  decay = {
      "constant": lambda step: 1.0,
      "warmup_cosine": lambda step: end_fraction + (1 - end_fraction) * 0.5 * (
          1 + jnp.cos(math.pi * progress(step))),
      "warmup_linear": lambda step: end_fraction + (1 - end_fraction) * (
          1 - progress(step)),
      "rsqrt": lambda step: jnp.sqrt(
          timescale / (timescale + jnp.maximum(step - warmup, 0))),
  }[name]

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # Without warmup the ramp is 1 (a `where`, as `warmup` may be an array).
    ramp = jnp.where(warmup > 0, jnp.minimum(step / jnp.maximum(warmup, 1), 1.0),
                     1.0)
    return jnp.asarray(lr * ramp * decay(step), jnp.float32)

  return schedule


def weight_decay_mask(params):
  """True for the leaves that weight decay applies to: those with ndim >= 2.

  Decay is meant for weight matrices (dense and conv kernels, embeddings), not for
  biases or normalisation scales and offsets, which are vectors. Deciding by rank
  rather than by name works for every model family, for imported checkpoints whose
  names follow another library's conventions, and for abstract shapes from
  `jax.eval_shape`.
  """
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def _direction(config) -> optax.GradientTransformation:
  """The optimizer proper: the update direction before decay and learning rate."""
  name = _get(config, "name", "adamw")
  if name == "sgd":
    return optax.identity()
  if name == "momentum":
    return optax.trace(decay=_unit_interval(config, "momentum", 0.9),
                       nesterov=bool(_get(config, "nesterov", False)))
  if name == "adamw":
    return optax.scale_by_adam(b1=_unit_interval(config, "b1", 0.9),
                               b2=_unit_interval(config, "b2", 0.999),
                               eps=_get(config, "eps", 1e-8))
  if name == "lion":
    return optax.scale_by_lion(b1=_unit_interval(config, "b1", 0.9),
                               b2=_unit_interval(config, "b2", 0.99))
  if name == "adafactor":
    # optax.adafactor's defaults without its parameter-scale multiplication, so that
    # lr is an absolute step size as for the other optimizers.
    return optax.chain(optax.scale_by_factored_rms(), optax.clip_by_block_rms(1.0))
  raise UserError(f"config.optim.name={name!r}: unknown optimizer; choose one of "
                  f"{', '.join(OPTIMIZERS)}")


def _chain(config, learning_rate: Callable[[jax.Array], jax.Array],
           weight_decay: float | jax.Array) -> optax.GradientTransformation:
  """direction -> decoupled weight decay -> -learning_rate, for one set of params.

  A weight decay given as an array (a population's trials, some of which may have
  0) always decays, so that every trial's optimizer state has the same structure;
  adding 0 * param changes no update.
  """
  no_decay = isinstance(weight_decay, (int, float)) and weight_decay == 0
  decay = (optax.identity() if no_decay else
           optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
  return optax.chain(_direction(config), decay,
                     optax.scale_by_learning_rate(learning_rate))


def _grouped(config, schedule: optax.Schedule, weight_decay: float | jax.Array,
             groups: tuple[Callable[[Any], Any], dict[str, tuple[float, float]]]
             ) -> optax.GradientTransformation:
  """One chain per label, its lr and weight decay multiplied by the label's pair."""
  labels, multipliers = groups

  def chain(lr_mult: float, wd_mult: float) -> optax.GradientTransformation:
    # lr_mult 1 keeps the schedule itself, so a default group updates bit for bit
    # as an ungrouped optimizer would.
    learning_rate = schedule if lr_mult == 1 else (
        lambda step: lr_mult * schedule(step))
    return _chain(config, learning_rate, weight_decay * wd_mult)

  if len(multipliers) == 1:  # One group: its chain, with no per-label state tree.
    return chain(*next(iter(multipliers.values())))
  return optax.multi_transform(
      {label: chain(*pair) for label, pair in multipliers.items()}, labels)


def make_optimizer(
    optim_config, *, total_steps: int, global_batch_size: int,
    train_examples: int | None,
    groups: tuple[Callable[[Any], Any], dict[str, tuple[float, float]]] | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer for `config.optim` and returns it with its schedule.

  Args:
    optim_config: `config.optim` (see the module docstring).
    total_steps: the length of training.
    global_batch_size: to convert durations in examples or epochs to steps.
    train_examples: the training split's size, for durations in epochs.
    groups: (params -> tree of labels, label -> (lr_mult, wd_mult)), from
      `peft.Plan.labels_and_multipliers`; None: one group, multipliers 1.
    hyperparameters: any of HYPERPARAMETERS, to use instead of the config's
      values (which are still checked): one trial's traced values in population
      mode (ctjax/population.py).

  Returns:
    (optimizer, schedule): the optimizer clips the gradient's global norm, then
    applies the chain described in the module docstring; the schedule gives the
    learning rate at a step, for logging.
  """
  hyperparameters = _check_hyperparameters(hyperparameters)
  schedule = make_schedule(optim_config, total_steps=total_steps,
                           global_batch_size=global_batch_size,
                           train_examples=train_examples,
                           hyperparameters=hyperparameters)
  weight_decay = _get(optim_config, "weight_decay", 0.0)
  _require(weight_decay >= 0, "optim.weight_decay", weight_decay,
           "cannot be negative; 0 disables weight decay")
  weight_decay = hyperparameters.get("weight_decay", weight_decay)
  clip_norm = _get(optim_config, "clip_norm", 0.0)
  _require(clip_norm >= 0, "optim.clip_norm", clip_norm,
           "cannot be negative; 0 or None disables clipping")
  clip = optax.clip_by_global_norm(clip_norm) if clip_norm else optax.identity()
  update = (_chain(optim_config, schedule, weight_decay) if groups is None else
            _grouped(optim_config, schedule, weight_decay, groups))
  return optax.chain(clip, update), schedule
