"""Checkpoints: Orbax CheckpointManager, the resume order, and model_init.

A checkpoint holds two items:
  state  the train state {step, params, opt_state, rng}, saved sharded from every
         process (asynchronously: training goes on while it is written);
  data   the input position as JSON {step, examples_seen, seed}: the pipeline is a
         function of (seed, step), so this is all it needs to continue exactly.

Orbax writes each step to a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoint intact and the partial one ignored.

Restoring takes the newest checkpoint that reads back whole: it must carry the
markers Orbax writes only once everything is written (`_check_complete`), and then
restore for real, which reads every array and so finds truncated or missing array
files and missing metadata. One that fails is named in one warning line on stderr
and the one before it is tried; in the run's own workdir it is then renamed to
`<step>.damaged`, kept for a person to look at and out of the way of the step
being saved again. If none can be read, a UserError names the folder.

A disk that fills up during a save stops the run with one line naming the folder
and the space a checkpoint needs (a UserError, exit status 2), where Orbax would
print its background thread's tracebacks; the checkpoints already written stay.

For both, importing this module quiets what Orbax, asyncio and TensorStore print
about the failure on their own (log records of a full disk, reports of abandoned
reads and writes), so that ctjax's line is what a person reads.
"""
import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import types
from typing import Any, Callable, Iterator, TypeVar

from flax import traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from orbax.checkpoint._src.metadata import array_metadata_store

from ctjax import hf
from ctjax import sharding
from ctjax import writers
from ctjax.errors import UserError

Restored = TypeVar("Restored")
DAMAGED_SUFFIX = ".damaged"
# What Orbax 0.12 writes last, in this order, before it renames
# `<step>.orbax-checkpoint-tmp` to `<step>`: each item's commit_success.txt (its
# folder is renamed likewise), the commit time in _CHECKPOINT_METADATA, and the
# step's own commit_success.txt. Orbax lists a step once renamed (on a bucket,
# once its commit_success.txt is there); a folder that lacks any of them was
# renamed or copied before it was complete, or has lost files since.
COMMIT_MARKERS = ("state/commit_success.txt", "data/commit_success.txt",
                  "commit_success.txt")
STEP_METADATA = "_CHECKPOINT_METADATA"
_OUT_OF_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class _Damaged(Exception):
  """A checkpoint folder that is incomplete or cannot be read back."""


class _Manager(ocp.CheckpointManager):
  """Orbax's CheckpointManager, reporting a full disk as one line (UserError).

  Saves are asynchronous: a write that fails for lack of space raises from Orbax's
  background thread at the next save, wait or close, which all wait here.
  """
  # The byte size of the last state saved: about what a checkpoint needs on disk.
  checkpoint_bytes = 0

  def wait_until_finished(self) -> None:
    with _full_disk_as_user_error(self):
      super().wait_until_finished()

  def close(self) -> None:
    with _full_disk_as_user_error(self):
      super().close()


def _is_out_of_space(error: BaseException | None) -> bool:
  """Whether `error`, or an error it came from, is a full disk or quota.

  Python's own writes raise OSError(ENOSPC); TensorStore (the array files) raises
  a ValueError carrying the system's message.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _OUT_OF_SPACE_ERRNOS:
      return True
    if any(os.strerror(code) in str(error) for code in _OUT_OF_SPACE_ERRNOS):
      return True
    error = error.__cause__ or error.__context__
  return False


def _without_full_disk_tracebacks(record: logging.LogRecord) -> bool:
  """Orbax logs a failed background save with its traceback before raising it
  (and asyncio the failed writes nobody awaited); a full disk is then reported in
  one line, so these tracebacks are left out."""
  return not (record.exc_info and _is_out_of_space(record.exc_info[1]))


# Checkpoint folders (with a trailing separator) found damaged and named in a
# warning by `_newest_readable`.
_reported_damage: set[str] = set()


def _without_reported_damage(record: logging.LogRecord) -> bool:
  """Orbax reads a checkpoint's arrays in concurrent tasks; the first failure
  ends the restore, and asyncio logs each sibling task that failed too, with its
  traceback, whenever it is collected ("Task exception was never retrieved"),
  often at exit. Reads of a checkpoint already reported damaged are left out."""
  error, text = record.exc_info[1] if record.exc_info else None, ""
  while error is not None:
    text += str(error)
    error = error.__cause__ or error.__context__
  return not any(folder in text for folder in _reported_damage)


for _logger in ("absl", "asyncio"):
  logging.getLogger(_logger).addFilter(_without_full_disk_tracebacks)
  logging.getLogger(_logger).addFilter(_without_reported_damage)
# A periodic save between evaluations has no metrics, as intended: the best-metric
# policy skips it (see make_manager); Orbax's warning about each one is noise.
logging.getLogger("absl").addFilter(
    lambda record: "did not provide metrics" not in record.getMessage())
# `ctjax eval` and `export` open the checkpoints read-only on purpose.
logging.getLogger("absl").addFilter(
    lambda record: not any(notice in record.getMessage() for notice in
                           ("Given directory is read only", "read_only=True")))


_report_unraisable = sys.unraisablehook


def _without_abandoned_io(unraisable: Any) -> None:
  """Once one array of a checkpoint fails to read or write, Orbax abandons the
  others and closes its event loop. Python then reports, whenever they are
  collected, each abandoned read that failed too (with TensorStore's whole spec:
  dozens of lines), and TensorStore each one it finishes on the closed loop. The
  failure itself is reported in one line; these reports are left out."""
  abandoned = (isinstance(unraisable.object, types.CoroutineType)
               and f"{os.sep}orbax{os.sep}" in unraisable.object.cr_code.co_filename)
  finished_late = (isinstance(unraisable.exc_value, RuntimeError)
                   and str(unraisable.exc_value) == "Event loop is closed")
  if not (abandoned or finished_late):
    _report_unraisable(unraisable)


sys.unraisablehook = _without_abandoned_io


@contextlib.contextmanager
def _full_disk_as_user_error(manager: _Manager) -> Iterator[None]:
  """Turns a full disk or quota, however deep, into one line naming the space."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not _is_out_of_space(e):
      raise
    manager.reload()  # The steps on disk: the failed one is not among them.
    last = manager.latest_step()
    directory = str(manager.directory)
    # The state's size is the estimate; the last checkpoint on disk, where there
    # is one, adds what Orbax writes around the arrays (metadata, indices).
    sizes = f"the train state holds {_mib(manager.checkpoint_bytes)}"
    needed = manager.checkpoint_bytes
    if last is not None and os.path.isdir(os.path.join(directory, str(last))):
      on_disk = _folder_bytes(os.path.join(directory, str(last)))
      sizes += f", step {last}'s checkpoint takes {_mib(on_disk)}"
      needed = max(needed, on_disk)
    free = (f"; {_mib(shutil.disk_usage(directory).free)} is free there"
            if os.path.isdir(directory) else "")
    raise UserError(
        f"no space left on the device of {directory} to save a checkpoint: one "
        f"needs about {_mib(needed)} ({sizes}){free}; make room (or lower "
        "config.checkpoint.keep) and run the same command again to resume from "
        f"{'the start' if last is None else f'step {last}'}") from None


def _folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def _mib(num_bytes: int) -> str:
  return f"{num_bytes / 2**20:,.2f} MiB"


def checkpoint_dir(path: str) -> str:
  """Accepts a workdir or its checkpoints folder; returns the checkpoints folder."""
  path = os.path.abspath(path)
  nested = os.path.join(path, "checkpoints")
  return nested if os.path.isdir(nested) else path


# Orbax's defaults but for jax.Array. On CPUs and TPUs Orbax splits each replicated
# array among its replicas to write it ("replica-parallel"), each part cut by a
# small compiled program, one per array shape, device and part, built at a
# process's first save: 1-5 s on 8 CPU devices for a small model whose state then
# takes 0.1 s to write. A part under 1 MiB is copied off any device in well under a
# millisecond, less than its program costs: such arrays are written whole by one
# replica, as Orbax does on GPUs; larger ones are still shared among the replicas
# (and so among the hosts). The rest is Orbax's default handler, including its
# per-array metadata (whose Store Orbax does not export).
_TYPE_HANDLERS = ocp.type_handlers.create_type_handler_registry(
    (jax.Array, ocp.type_handlers.ArrayHandler(
        array_metadata_store=array_metadata_store.Store(),
        min_slice_bytes_for_replica_parallel=2**20)),
    *((t, ocp.type_handlers.get_type_handler(t))
      for t in (int, float, bytes, np.number, np.ndarray, str)))


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
  # With a best_fn Orbax also writes each checkpoint's metrics to disk, so that a
  # resumed run's manager still knows which checkpoint is the best; without one it
  # keeps them in memory only, and the first save after a restart deleted the best.
  best = cfg is not None and cfg.best_metric
  options = ocp.CheckpointManagerOptions(
      preservation_policy=preserve,
      best_fn=(lambda metrics: metrics[cfg.best_metric]) if best else None,
      best_mode=cfg.best_mode if best else "max",
      enable_async_checkpointing=bool(cfg.async_save) if cfg else False,
      read_only=read_only, create=not read_only)
  if not read_only:
    # Creating the folder, Orbax has the processes meet in a collective; they may
    # come here far apart, still compiling (see sharding.sync_processes).
    sharding.sync_processes("checkpoint manager")
  # Handlers named up front, so that a fresh manager (a restarted run, or another
  # run's folder) can read item metadata before anything is restored.
  return _Manager(directory, options=options, item_handlers={
      "state": ocp.PyTreeCheckpointHandler(type_handler_registry=_TYPE_HANDLERS),
      "data": ocp.JsonCheckpointHandler()})


# Parts of the train state that checkpoints leave out: frozen parameters, which
# training never changes (ctjax/peft.py); they come again from their source.
UNSAVED = ("frozen",)


def _saved(state: Any) -> Any:
  return {k: v for k, v in state.items() if k not in UNSAVED}


def save(manager: ocp.CheckpointManager, state: Any, position: dict[str, int], *,
         metrics: dict[str, float] | None = None, force: bool = False) -> None:
  """Starts saving `state` at its step (but its UNSAVED parts); all processes must
  call this together."""
  step = int(position["step"])
  state = _saved(state)
  manager.checkpoint_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  with _full_disk_as_user_error(manager):
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state), data=ocp.args.JsonSave(position)),
                 metrics=metrics, force=force)


def step_bytes(manager: ocp.CheckpointManager, step: int) -> int:
  """The bytes on disk of a finished checkpoint's step folder."""
  return _folder_bytes(os.path.join(str(manager.directory), str(step)))


def restore(manager: ocp.CheckpointManager, abstract_state: Any, *,
            set_aside_damaged: bool = False) -> tuple[Any, dict[str, int]]:
  """Restores the newest readable checkpoint: state (with the shardings of
  `abstract_state`) and input position.

  `abstract_state` leaves are jax.ShapeDtypeStruct with shardings for *this* run's
  mesh, so a checkpoint written on 8 devices restores onto 1 or 4. Damaged
  checkpoints are skipped (see the module's docstring); with `set_aside_damaged`
  (the run's own folder) they are renamed `<step>.damaged`. The UNSAVED parts of
  `abstract_state` are not read, nor returned.
  """
  abstract_state = _saved(abstract_state)

  def restore_step(step: int) -> tuple[Any, dict[str, int]]:
    _check_compatible(manager, step, abstract_state)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=abstract_state,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state)),
        data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"])

  return _newest_readable(manager, restore_step, set_aside_damaged=set_aside_damaged)


def _newest_readable(manager: ocp.CheckpointManager,
                     restore_step: Callable[[int], Restored], *,
                     set_aside_damaged: bool) -> Restored:
  """`restore_step(step)` of the newest checkpoint that is complete and reads back.

  Every process runs this and sees the same files, so all skip the same steps;
  process 0 reports them. (An array shard that only some processes read is the
  exception: a process that fails on it leaves the others waiting in Orbax's
  restore barrier until its timeout.)
  """
  damaged = []  # (step folder, what is wrong), newest first.
  for step in sorted(manager.all_steps(), reverse=True):
    path = manager.directory / str(step)
    try:
      _check_complete(path)
      restored = restore_step(step)
    except UserError:  # Another model's checkpoint: a mistake to fix, not damage.
      raise
    # Orbax and TensorStore raise many types for missing or truncated files.
    except Exception as e:  # pylint: disable=broad-except
      damaged.append((path, _reason(e)))
      _reported_damage.add(os.path.join(str(path), ""))
      continue
    set_aside = (_set_aside(manager, [p for p, _ in damaged]) if set_aside_damaged
                 else {})
    for damaged_path, reason in damaged:
      done = (f"renamed it {set_aside[damaged_path].name}"
              if damaged_path in set_aside else "skipped it")
      _warn(f"checkpoint {damaged_path} is damaged ({reason}); {done}; resuming "
            f"from step {step}")
    return restored
  for damaged_path, reason in damaged:
    _warn(f"checkpoint {damaged_path} is damaged ({reason})")
  raise UserError(f"checkpoint folder {manager.directory}: none of its "
                  f"{len(damaged)} checkpoint(s) can be read (see the warnings "
                  "above); move the folder away to start again, or repair it")


def _warn(message: str) -> None:
  if jax.process_index() == 0:
    print(f"ctjax: warning: {message}", file=sys.stderr, flush=True)


def _check_complete(path) -> None:
  """Raises _Damaged unless Orbax finished writing the step folder `path`."""
  for marker in COMMIT_MARKERS:
    if not (path / marker).exists():
      raise _Damaged(f"{marker} is missing: it was never completely written, or "
                     "files were lost since")
  if not (path / STEP_METADATA).exists():
    raise _Damaged(f"{STEP_METADATA} is missing")
  try:
    committed = json.loads((path / STEP_METADATA).read_text()).get(
        "commit_timestamp_nsecs")
  except (OSError, ValueError) as e:
    raise _Damaged(f"{STEP_METADATA} cannot be read: {e}") from e
  if not committed:
    raise _Damaged(f"{STEP_METADATA} has no commit time: it was never finalised")


def _reason(error: BaseException) -> str:
  """What is wrong, in a line: ours, or the innermost error's first line (those
  of TensorStore name the file and the array)."""
  if isinstance(error, _Damaged):
    return str(error)
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  text = text.split(" [tensorstore_spec=")[0]
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= 300 else text[:297] + "..."


def _set_aside(manager: ocp.CheckpointManager, paths: list) -> dict:
  """Renames damaged step folders `<step>.damaged` (or `.damaged-2`, ...); returns
  {old path: new path} on process 0, which renames. Not deleted, since a person
  may want to look; out of Orbax's way, since it refuses to save a step whose
  folder exists, and skips saving steps below the newest it sees."""
  renamed = {}
  if jax.process_index() == 0:
    for path in paths:
      target, n = path.parent / (path.name + DAMAGED_SUFFIX), 1
      while target.exists():
        n += 1
        target = path.parent / f"{path.name}{DAMAGED_SUFFIX}-{n}"
      path.rename(target)
      renamed[path] = target
  if paths:
    sharding.sync_processes("damaged checkpoints set aside")
    manager.reload()
  return renamed


def _check_compatible(manager: ocp.CheckpointManager, step: int,
                      abstract_state: Any, only: str | None = None) -> None:
  """Refuses a checkpoint of another model with one line naming a parameter."""
  saved = manager.item_metadata(step)["state"]
  if saved is None:
    raise _Damaged("state/_METADATA, the tree's metadata, is missing or unreadable")
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
                   skip: tuple[str, ...] = (), step: int = 0) -> Any:
  """Loads params from another run or a Hugging Face directory (model_init);
  `skip` regexes keep `init_params`; `step` picks a ctjax checkpoint (0: the
  newest readable).

  `path` is a ctjax workdir or checkpoints folder, or a Hugging Face model
  directory (config.json and safetensors, see `ctjax.hf`). Parameters matching a
  skip pattern (say a new classifier head for a different number of classes) are
  neither read nor shape-checked; every other one must be in the checkpoint, or
  one UserError lists those that are not. Damaged checkpoints are skipped for
  older ones, as in `restore`. Prints which parameters were initialised afresh.
  """
  if hf.is_hf_dir(path):
    return hf.load_params(path, abstract_params, init_params, skip)
  manager = make_manager(checkpoint_dir(path), read_only=True)
  if manager.latest_step() is None:
    raise UserError(f"config.model_init={path!r}: no checkpoint there; give a ctjax "
                    "workdir or its checkpoints folder")
  flat = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
  keep = {_path(p): not any(re.search(s, _path(p)) for s in skip) for p, _ in flat}
  wanted = jax.tree_util.tree_map_with_path(
      lambda p, x: x if keep[_path(p)] else None, abstract_params)

  def restore_step(step: int) -> Any:
    hf.check_all_loaded(keep, _saved_params(manager, step), skip, path)
    _check_compatible(manager, step, {"params": wanted}, only="params")
    restore_args = ocp.checkpoint_utils.construct_restore_args(wanted)
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={"params": wanted}, restore_args={"params": restore_args},
            partial_restore=True)))["state"]["params"]

  if step:
    if step not in manager.all_steps():
      raise UserError(f"config.model_init_step={step}: {manager.directory} has no "
                      "checkpoint of that step; it has "
                      f"{', '.join(map(str, sorted(manager.all_steps())))}")
    restored = restore_step(step)
  else:
    restored = _newest_readable(manager, restore_step, set_aside_damaged=False)
  fresh = [name for name, kept in keep.items() if not kept]
  writers.info(f"config.model_init={path}" + (f" step {step}" if step else "") +
               f": loaded {len(keep) - len(fresh)} parameters; initialised "
               f"afresh: {', '.join(fresh) or 'none'}")
  return jax.tree_util.tree_map_with_path(
      lambda p, new, old: new if keep[_path(p)] else old,
      restored, init_params, is_leaf=lambda x: x is None)


def _saved_params(manager: ocp.CheckpointManager, step: int) -> set[str]:
  """Paths of the params that checkpoint `step` holds, from its metadata."""
  saved = manager.item_metadata(step)["state"]
  if saved is None:
    raise _Damaged("state/_METADATA, the tree's metadata, is missing or unreadable")
  return {_path(p) for p, _ in
          jax.tree_util.tree_flatten_with_path(saved.get("params", {}))[0]}


def restore_or_initialize(workdir_manager: ocp.CheckpointManager, config: Any,
                          abstract_state: Any, init_state: Callable[[], Any], *,
                          new_params: tuple[str, ...] = ()
                          ) -> tuple[Any, dict[str, int] | None, str]:
  """Applies the resume order; returns (state, input position or None, origin).

  1. a checkpoint in this run's workdir (the same command, run again);
  2. `config.resume`: the full state of another run;
  3. `config.model_init`: params from another run, fresh optimizer;
  4. from scratch. `init_state` is a function making the fresh, sharded state.

  The state's frozen parameters are in no checkpoint: after 1 or 2 they come from
  their source, the fresh state with config.model_init loaded over it (3 and 4),
  the same arrays the interrupted run trained with. Parameters matching a
  `new_params` regex (LoRA adapters) are never looked for in config.model_init.
  """
  restored = None
  if workdir_manager.latest_step() is not None:
    state, position = restore(workdir_manager, abstract_state,
                              set_aside_damaged=True)
    restored = (state, position,
                f"resumed from {workdir_manager.directory} step {position['step']}")
  elif config.resume:
    other = make_manager(checkpoint_dir(config.resume), read_only=True)
    if other.latest_step() is None:
      raise UserError(f"config.resume={config.resume!r}: no checkpoint there")
    state, position = restore(other, abstract_state)
    restored = state, position, f"resumed from config.resume step {position['step']}"
  unsaved = {k: abstract_state[k] for k in UNSAVED if k in abstract_state}
  if restored and not jax.tree.leaves(unsaved):  # Nothing frozen: empty trees.
    state, position, resumed = restored
    return {**state, **unsaved}, position, resumed

  fresh = init_state()
  origin = "initialised from scratch"
  if config.model_init:
    fresh = load_model_init(config, abstract_state, fresh, new_params)
    origin = f"params from config.model_init={config.model_init}"
  if restored:
    state, position, resumed = restored
    return ({**state, **{k: fresh[k] for k in unsaved}}, position,
            f"{resumed}; frozen parameters {origin.split(' ', 1)[1]}")
  return fresh, None, origin


def load_model_init(config: Any, abstract_state: Any, state: Any,
                     new_params: tuple[str, ...]) -> Any:
  """`state` with config.model_init's params in its params and frozen parts.

  The two parts are one model's parameters split by path, so they are joined for
  `restore_params` (whose paths are the model's) and split again after.
  """
  parts = [k for k in ("params", *UNSAVED) if k in state]
  flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")
  nested = lambda flat_tree: traverse_util.unflatten_dict(flat_tree, sep="/")
  joined = lambda tree: nested({p: x for k in parts for p, x in flat(tree[k]).items()})
  loaded = flat(restore_params(config.model_init, joined(abstract_state),
                               joined(state),
                               tuple(config.model_init_skip) + tuple(new_params),
                               step=config.get("model_init_step", 0)))
  return {**state, **{k: nested({p: loaded[p] for p in flat(state[k])})
                      for k in parts}}
