"""Checkpoints: Orbax CheckpointManager, the resume order, and model_init.

A checkpoint holds two items:
  state  the train state {step, params, opt_state, rng}, saved sharded from every
         process (asynchronously: training goes on while it is written);
  data   the input position as JSON {step, examples_seen, seed}: the pipeline is a
         function of (seed, step), so this is all it needs to continue exactly.

Orbax writes each step to a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact and the partial one ignored.
"""
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from ctjax.errors import UserError


def checkpoint_dir(path: str) -> str:
  """Accepts a workdir or its checkpoints folder; returns the checkpoints folder."""
  path = os.path.abspath(path)
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


def make_manager(directory: str, checkpoint_config: Any | None = None, *,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """A manager keeping the last `keep` checkpoints plus the best by a metric."""
  cfg = checkpoint_config
  preserve = None
  if cfg is not None:
    keep = [policies.LatestN(n=cfg.keep)]
    if cfg.best_metric:
      keep.append(policies.BestN(
          get_metric_fn=lambda metrics: metrics[cfg.best_metric],
          reverse=cfg.best_mode == "min", n=1,
          keep_checkpoints_without_metrics=False))
    preserve = policies.AnyPreservationPolicy(keep)
  options = ocp.CheckpointManagerOptions(
      preservation_policy=preserve,
      enable_async_checkpointing=bool(cfg.async_save) if cfg else False,
      read_only=read_only, create=not read_only)
  # Handlers named up front, so that a fresh manager (a restarted run, or another
  # run's folder) can read item metadata before anything is restored.
  return ocp.CheckpointManager(directory, options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})


def save(manager: ocp.CheckpointManager, state: Any, position: dict[str, int], *,
         metrics: dict[str, float] | None = None, force: bool = False) -> None:
  """Starts saving `state` at its step; all processes must call this together."""
  step = int(position["step"])
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(position)),
               metrics=metrics, force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            step: int | None = None) -> tuple[Any, dict[str, int]]:
  """Restores state (with the shardings of `abstract_state`) and input position.

  `abstract_state` leaves are jax.ShapeDtypeStruct with shardings for *this* run's
  mesh, so a checkpoint written on 8 devices restores onto 1 or 4.
  """
  step = manager.latest_step() if step is None else step
  _check_compatible(manager, step, abstract_state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item=abstract_state,
          restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
      data=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["data"])


def _check_compatible(manager: ocp.CheckpointManager, step: int,
                      abstract_state: Any, only: str | None = None) -> None:
  """Refuses a checkpoint of another model with one line naming a parameter."""
  saved = manager.item_metadata(step)["state"]
  expected = abstract_state if only is None else {only: abstract_state[only]}
  saved = saved if only is None else {only: saved.get(only)}
  saved_shapes = {_path(p): tuple(getattr(x, "shape", ()))
                  for p, x in jax.tree_util.tree_flatten_with_path(saved)[0]}
  # Parameters first: "params/hidden_0/kernel" tells a person more than the same
  # mismatch seen through the optimizer state ("opt_state/1/0/mu/...").
  leaves = sorted(jax.tree_util.tree_flatten_with_path(expected)[0],
                  key=lambda item: _path(item[0]).split("/")[0] != "params")
  for path, leaf in leaves:
    name = _path(path)
    if name not in saved_shapes:
      raise UserError(f"checkpoint {manager.directory}/{step}: has no {name}; it "
                      "belongs to another model or optimizer; point the config at a "
                      "checkpoint of this model")
    if saved_shapes[name] != tuple(leaf.shape):
      raise UserError(f"checkpoint {manager.directory}/{step}: {name} has shape "
                      f"{saved_shapes[name]} but this model needs {tuple(leaf.shape)}; "
                      "check config.model matches the checkpoint's")


def _path(path: tuple) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in path)


def restore_params(path: str, abstract_params: Any, init_params: Any,
                   skip: tuple[str, ...] = ()) -> Any:
  """Loads params from another run (model_init); `skip` regexes keep `init_params`.

  Parameters matching a skip pattern (say a new classifier head for a different
  number of classes) are neither read nor shape-checked.
  """
  manager = make_manager(checkpoint_dir(path), read_only=True)
  step = manager.latest_step()
  if step is None:
    raise UserError(f"config.model_init={path!r}: no checkpoint there; give a ctjax "
                    "workdir or its checkpoints folder")
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  keep = {_path(p): not any(re.search(s, _path(p)) for s in skip) for p, _ in flat}
  wanted = jax.tree_util.tree_map_with_path(
      lambda p, x: x if keep[_path(p)] else None, abstract_params)
  _check_compatible(manager, step, {"params": wanted}, only="params")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": wanted},
          restore_args={"params": ocp.checkpoint_utils.construct_restore_args(wanted)},
          partial_restore=True)))["state"]["params"]
  return jax.tree_util.tree_map_with_path(
      lambda p, new, old: new if keep[_path(p)] else old,
      restored, init_params, is_leaf=lambda x: x is None)


def restore_or_initialize(workdir_manager: ocp.CheckpointManager, config: Any,
                          abstract_state: Any, init_state: Any
                          ) -> tuple[Any, dict[str, int] | None, str]:
  """Applies the resume order; returns (state, input position or None, origin).

  1. a checkpoint in this run's workdir (the same command, run again);
  2. `config.resume`: the full state of another run;
  3. `config.model_init`: params from another run, fresh optimizer;
  4. from scratch. `init_state` is a function making the fresh, sharded state.
  """
  if workdir_manager.latest_step() is not None:
    state, position = restore(workdir_manager, abstract_state)
    return state, position, f"resumed from {workdir_manager.directory} step {position['step']}"
  if config.resume:
    other = make_manager(checkpoint_dir(config.resume), read_only=True)
    if other.latest_step() is None:
      raise UserError(f"config.resume={config.resume!r}: no checkpoint there")
    state, position = restore(other, abstract_state)
    return state, position, f"resumed from config.resume step {position['step']}"
  state = init_state()
  if config.model_init:
    state = dict(state, params=restore_params(
        config.model_init, abstract_state["params"], state["params"],
        tuple(config.model_init_skip)))
    return state, None, f"params from config.model_init={config.model_init}"
  return state, None, "initialised from scratch"
