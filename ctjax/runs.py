"""A run's model from its workdir: what `ctjax export` and `ctjax eval` load.

The trainer writes WORKDIR/config.json (resolved: a Hugging Face model_init's
architecture included) and WORKDIR/model_inputs.json (the shape and dtype of one
model input). From these `load_model` rebuilds the model and the whole parameters
of one checkpoint: what the checkpoint holds (the trained parameters, LoRA
adapters) and what it does not (frozen parameters, made again as the trainer made
them: the seeded initialisation with config.model_init loaded over it), with the
adapters added into their kernels. No data is read.
"""
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from ctjax import checkpoint
from ctjax import config as config_lib
from ctjax import models
from ctjax import peft
from ctjax import sharding
from ctjax import writers
from ctjax.errors import UserError

MODEL_INPUTS_FILE = "model_inputs.json"


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json, the run's resolved config."""
  path = os.path.join(workdir, "config.json")
  try:
    with open(path) as f:
      return config_lib.from_json(f.read())
  except OSError as e:
    raise UserError(f"{path}: cannot be read ({e.strerror}); give the workdir of "
                    "a ctjax run") from None


def write_model_inputs(workdir: str, inputs: jax.Array) -> None:
  """Records the shape and dtype of one model input (the trainer calls this)."""
  with open(os.path.join(workdir, MODEL_INPUTS_FILE), "w") as f:
    json.dump({"shape": list(inputs.shape),
               "dtype": str(jax.dtypes.canonicalize_dtype(inputs.dtype))}, f)


def _model_inputs(workdir: str) -> jax.ShapeDtypeStruct:
  path = os.path.join(workdir, MODEL_INPUTS_FILE)
  try:
    with open(path) as f:
      spec = json.load(f)
  except OSError:
    raise UserError(f"{path}: missing; it is written when training starts: train "
                    "the run (again) with this version of ctjax") from None
  return jax.ShapeDtypeStruct(tuple(spec["shape"]), jnp.dtype(spec["dtype"]))


def choose_step(workdir: str, manager: ocp.CheckpointManager,
                checkpoint_config: Any, which: str) -> int:
  """The latest checkpoint's step, the best by config.checkpoint.best_metric, or
  the step `which` names (digits).

  The best is read from metrics.jsonl (the workdir contract) at the steps that
  have a checkpoint; of equally good steps, the later, which trained longer.
  """
  steps = list(manager.all_steps())
  if not steps:
    raise UserError(f"{manager.directory}: no checkpoint; train first")
  if which == "latest":
    return max(steps)
  if which.isdigit():
    if int(which) not in steps:
      raise UserError(f"--checkpoint={which}: no checkpoint of that step; "
                      f"{manager.directory} has {', '.join(map(str, sorted(steps)))}")
    return int(which)
  if which != "best":
    raise UserError(f"--checkpoint={which!r}: give 'latest', 'best' or a step")
  metric = checkpoint_config.best_metric
  if not metric:
    raise UserError("--checkpoint best needs the run's config.checkpoint.best_metric "
                    "(say 'validation/accuracy'); use --checkpoint latest")
  scored = {record["step"]: record[metric] for record in writers.read_metrics(workdir)
            if record.get("step") in steps and metric in record}
  if not scored:
    path = os.path.join(workdir, "metrics.jsonl")
    raise UserError(f"{path}: no record of {metric!r} (config.checkpoint."
                    f"best_metric) at a step with a checkpoint "
                    f"({', '.join(map(str, sorted(steps)))}); use --checkpoint latest")
  sign = -1 if checkpoint_config.best_mode == "min" else 1
  return max(scored, key=lambda step: (sign * scored[step], step))


def choose_checkpoint_step(workdir: str, config: ml_collections.ConfigDict,
                           which: str) -> int:
  """`choose_step` for the run in `workdir`, read without writing."""
  manager = checkpoint.make_manager(checkpoint.checkpoint_dir(workdir),
                                    read_only=True)
  try:
    return choose_step(workdir, manager, config.checkpoint, which)
  finally:
    manager.close()


def load_model(workdir: str, which: str = "latest", *,
               config: ml_collections.ConfigDict | None = None
               ) -> tuple[ml_collections.ConfigDict, nn.Module, Any, int]:
  """(config, model, params, step) of a checkpoint of the run in `workdir`.

  The params are the whole model's, as `model.apply` takes them, sharded over the
  mesh of `config.mesh` on this machine's devices (any number).

  Args:
    workdir: the run's folder.
    which: "latest", "best" by config.checkpoint.best_metric, or a step.
    config: the run's config, if the caller changed it (say its evaluators);
      WORKDIR/config.json by default.
  """
  config = config or read_config(workdir)
  model = models.get_model(config.model)
  inputs = _model_inputs(workdir)
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.sharding_rules)
  dummy_inputs = jnp.zeros(inputs.shape, inputs.dtype)
  init = lambda rng: model.init({"params": rng}, dummy_inputs, train=False)["params"]
  rng = jax.random.PRNGKey(config.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed_params = jax.eval_shape(init, rng)
  plan = peft.make_plan(config, boxed_params)
  # Trained and frozen parts, exactly as the trainer's init_state splits them.
  split = lambda r: plan.split(init(r), jax.random.fold_in(r, 2))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(split, rng)
  abstract, shardings = sharding.abstract_state(boxed, mesh, rules)

  manager = checkpoint.make_manager(checkpoint.checkpoint_dir(workdir),
                                    read_only=True)
  step = choose_step(workdir, manager, config.checkpoint, which)
  # Only the trained params are read, not the optimizer state (twice their size).
  trained = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": abstract[0]},
          restore_args={"params": ocp.checkpoint_utils.construct_restore_args(
              abstract[0])},
          partial_restore=True)))["state"]["params"]
  frozen = abstract[1]
  if jax.tree.leaves(frozen):
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      fresh = jax.jit(lambda r: nn.meta.unbox(split(r)), out_shardings=shardings)(rng)
    state = {"params": fresh[0], "frozen": fresh[1]}
    if config.model_init:
      state = checkpoint.load_model_init(
          config, {"params": abstract[0], "frozen": abstract[1]}, state,
          (peft.ADAPTER_PATTERN,))
    frozen = state["frozen"]
  with jax.set_mesh(mesh):
    params = jax.jit(plan.model_params)(trained, frozen)
  return config, model, params, step
