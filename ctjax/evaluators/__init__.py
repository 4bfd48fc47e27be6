"""Evaluators: one module per evaluation type, chosen by `type` in the config.

  config.evaluators = (
      dict(type="linear_probe", every="1000 steps"),
      dict(type="fewshot", shots=(1, 5, 10), repeats=3),
      dict(type="zeroshot", classes=("billing question", "technical problem")),
  )

`type="NAME"` imports `ctjax/evaluators/NAME.py` and builds its `Evaluator` with
the other keys as keyword options; adding an evaluation type is adding one file.
Two more keys belong to every evaluator and are read here:

  every   a duration ("500 steps", "1 epoch", an int of steps); 0, the default,
          runs it only at the end of training
  name    the prefix of its metrics (default: the type), so that two evaluators of
          one type (say probes of two splits) report apart; the task's own
          metrics (type "metrics") are named by split unless given a name

The task's own metrics on whole splits are the `metrics` evaluator (metrics.py);
a config that lists none gets one from config.eval_splits and eval_every (see
`configured`). An evaluator may also define `run_final(params)`, run instead of
`run` at the end of training (more splits, files written).

A module's `Evaluator(context, **options)` takes the shared `Context` and its own
options (keyword arguments with defaults; the signature is the reference of its
options), checks them at once, raising a one-line UserError naming
`config.evaluators[i].KEY`, and has `run(params) -> {metric: float}`. Construction
compiles nothing, so every mistake stops the run before the first compilation.
`run` is called by every process together (it runs compiled programs on global
arrays) and returns the same numbers on each.
"""
import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax

from ctjax import by_name
from ctjax import durations
from ctjax import sharding
from ctjax.data import pipeline
from ctjax.errors import UserError

# Keys of every evaluator's config, read by `make_evaluators`, not the module.
COMMON_KEYS = ("type", "every", "name")


@dataclasses.dataclass(frozen=True)
class Context:
  """What every evaluator may use, built once per run.

  Attributes:
    model: the run's model.
    loaders: split name -> the run's BatchLoader of that split.
    mesh: the run's mesh; features are computed on it, batches split over it.
    batch_size: the global evaluation batch size (a multiple of the batch shards).
    data_config: `config.data`, for what the data was made with (the tokenizer).
    key: "config.evaluators[i]", the prefix of this evaluator's error messages.
    model_params: what `run` is given -> the tree `model.apply` takes; called
      inside the compiled programs, so that (say) LoRA adapters are added into
      their kernels there, as in the train step, not in a second copy of the
      parameters.
    on_batch: called as each batch is dispatched (the trainer's hang watchdog
      marks progress).
    task: `config.task` (ctjax/tasks/).
    output_dir: where the evaluation at the end writes its files (process 0),
      WORKDIR/eval/final for a training run; None: nowhere.
  """
  model: nn.Module
  loaders: Mapping[str, pipeline.BatchLoader]
  mesh: jax.sharding.Mesh
  batch_size: int
  data_config: Any
  key: str
  model_params: Callable[[Any], Any] = lambda params: params
  on_batch: Callable[[], None] = lambda: None
  task: str = "classification"
  output_dir: str | None = None


class Evaluator(Protocol):
  """What an evaluator module's `Evaluator(context, **options)` gives."""

  def run(self, params: Any) -> dict[str, float]:
    """Metrics of `params` (see `Context.model_params`), without the evaluator's
    name (say {"accuracy": ...})."""


@dataclasses.dataclass(frozen=True)
class Scheduled:
  """An evaluator with its name and schedule, as the trainer uses it."""
  prefix: str  # of its metrics' names: "NAME/", or "" (see make_evaluators)
  every: int  # steps; 0: only at the end
  evaluator: Evaluator

  def due(self, step: int, last_step: int) -> bool:
    return step == last_step or bool(self.every and step % self.every == 0)

  def run(self, params: Any, final: bool = False) -> dict[str, float]:
    """{"NAME/metric": value}, the same on every process. At the end of training
    an evaluator's `run_final`, where it has one, runs instead of `run`."""
    run = getattr(self.evaluator, "run_final", self.evaluator.run) if final else (
        self.evaluator.run)
    # Process 0 may be behind, writing logs and reports, as an evaluation's
    # programs start (see sharding.sync_processes).
    sharding.sync_processes(f"evaluation {self.prefix}")
    return {f"{self.prefix}{k}": v for k, v in run(params).items()}


def types() -> list[str]:
  """Names of the modules in ctjax/evaluators/ that define an `Evaluator`."""
  return by_name.names(__name__, "Evaluator")


def make_evaluators(evaluator_configs: Sequence[Any], *, model: nn.Module,
                    loaders: Mapping[str, pipeline.BatchLoader],
                    mesh: jax.sharding.Mesh, batch_size: int, data_config: Any,
                    train_batch_size: int, train_examples: int | None,
                    model_params: Callable[[Any], Any] = lambda params: params,
                    on_batch: Callable[[], None] = lambda: None,
                    task: str = "classification", output_dir: str | None = None
                    ) -> list[Scheduled]:
  """Builds `config.evaluators`; raises UserError on the first mistake.

  The metrics of an evaluator are named NAME/METRIC, but those of a `metrics`
  evaluator without a `name`, which are SPLIT/METRIC (validation/accuracy).

  Args:
    evaluator_configs: `config.evaluators`, dicts (or ConfigDicts) with `type`;
      see `configured`.
    model, loaders, mesh, batch_size, data_config, model_params, on_batch, task,
      output_dir: see `Context`.
    train_batch_size, train_examples: the training batch and split size, which
      turn `every` given in epochs or examples into steps.
  """
  built, names = [], set()
  for i, evaluator_config in enumerate(evaluator_configs):
    key = f"config.evaluators[{i}]"
    if hasattr(evaluator_config, "to_dict"):
      evaluator_config = evaluator_config.to_dict()
    if not isinstance(evaluator_config, Mapping):
      raise UserError(f"{key}={evaluator_config!r}: expected a dict with a 'type', "
                      f"one of {', '.join(types())}")
    options = {k: tuple(v) if isinstance(v, list) else v
               for k, v in evaluator_config.items() if k not in COMMON_KEYS}
    type_name = evaluator_config.get("type")
    module_class = _evaluator_class(type_name, key)
    name = evaluator_config.get("name", type_name)
    if not isinstance(name, str) or not name or "/" in name:
      raise UserError(f"{key}.name={name!r}: give a non-empty name without '/'")
    if name in names:
      raise UserError(f"{key}.name={name!r}: another evaluator has this name; give "
                      "each evaluator of the same type its own name")
    names.add(name)
    every = durations.to_steps(evaluator_config.get("every", 0),
                               key=f"evaluators[{i}].every",
                               global_batch_size=train_batch_size,
                               train_examples=train_examples)
    _check_options(module_class, options, key, type_name)
    context = Context(model=model, loaders=loaders, mesh=mesh,
                      batch_size=batch_size, data_config=data_config, key=key,
                      model_params=model_params, on_batch=on_batch, task=task,
                      output_dir=output_dir)
    by_split = type_name == "metrics" and "name" not in evaluator_config
    built.append(Scheduled(prefix="" if by_split else f"{name}/", every=every,
                           evaluator=module_class(context, **options)))
  return built


def configured(config: Any) -> list[dict[str, Any]]:
  """`config.evaluators`, with a `metrics` evaluator from the older keys
  (eval_splits every eval_every, final_eval_splits at the end) when it lists none.
  That one draws no bootstrap intervals (resamples=0), which cost a compilation
  and seconds per run: list a `metrics` evaluator to have them."""
  # Copies: callers adjust them (`ctjax eval` sets the splits).
  listed = [e.to_dict() if hasattr(e, "to_dict") else
            dict(e) if isinstance(e, Mapping) else e for e in config.evaluators]
  if any(isinstance(e, Mapping) and e.get("type") == "metrics" for e in listed):
    return listed
  default = {"type": "metrics", "every": config.eval_every,
             "splits": tuple(config.eval_splits),
             "final_splits": tuple(config.final_eval_splits),
             "bits_per_byte": bool(config.bits_per_byte), "resamples": 0}
  return [default] + listed


def _evaluator_class(type_name: Any, key: str) -> type:
  module = by_name.find(__name__, type_name, "Evaluator")
  if module is None:
    raise UserError(f"{key}.type={type_name!r}: no module "
                    f"ctjax/evaluators/{type_name}.py with an Evaluator; choose one "
                    f"of {', '.join(types())}")
  return module.Evaluator


def _check_options(module_class: type, options: Mapping[str, Any], key: str,
                   type_name: str) -> None:
  """Unknown and missing options, named before the evaluator is built."""
  parameters = list(inspect.signature(module_class).parameters.values())[1:]
  valid = [p.name for p in parameters]
  for option in options:
    if option not in valid:
      raise UserError(f"{key}.{option}: not an option of {type_name}; valid options: "
                      f"{', '.join(list(COMMON_KEYS[1:]) + valid)}")
  for p in parameters:
    if p.default is inspect.Parameter.empty and p.name not in options:
      raise UserError(f"{key}.{p.name}: {type_name} needs this option; add it")
