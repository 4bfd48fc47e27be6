"""Configs: every field's default, loading an experiment file, overrides, validation.

An experiment is `configs/NAME.py` with `get_config(arg: str | None)` returning a
ConfigDict that sets only what differs from `base_config()` below. So this file is
the reference of every option there is. Loading merges the experiment into the
base, applies `--config.a.b=VALUE` overrides, and validates; every mistake is a
`UserError` naming the key, raised before anything compiles.

Two ways to write an experiment, both supported:

  c = ConfigDict()                      c = base_config()
  c.optim = dict(lr=1e-3)               c.optim.lr = 1e-3

On the left the file holds only the differences (a group set as a dict is merged
into its defaults, so the other optim fields keep theirs); on the right it starts
from every default and sets fields one by one. Typos fail alike in both: a key the
base lacks is refused when the experiment is merged.

`config.model` and `config.data` are open: their keys are the chosen model's fields
(checked against `ctjax.models.NAME.Model`) and the chosen source's options.
"""
import ast
import importlib.util
import inspect
import json
import os
import re
import traceback
from typing import Any

from ml_collections import ConfigDict

from ctjax import tasks
from ctjax.errors import UserError

# Subtrees whose keys depend on the chosen model or source; checked elsewhere.
OPEN_KEYS = ("model", "data", "privacy", "federated")
# Fields that hold durations: an int means steps; strings like "3 epochs" allowed.
DURATION_KEYS = ("train_duration", "log_every", "eval_every", "checkpoint.every",
                 "optim.schedule.warmup")


def base_config() -> ConfigDict:
  """Every option with its default. Experiments override what they need."""
  c = ConfigDict()
  c.seed = 0
  # What the model learns (ctjax/tasks/): "classification" (one class per example
  # or token), "multilabel" (a 0/1 vector of labels), "regression" (real targets).
  # The model's num_classes is its number of outputs for each.
  c.task = "classification"
  c.model = ConfigDict({"name": "mlp"})
  c.data = ConfigDict({
      "source": "synthetic",
      "splits": {},              # split name -> spec handed to the source
      "num_threads": 4,          # parallel decode threads per process
      "prefetch": 2,             # batches prepared ahead in a thread; 0: inline
  })
  c.batch_size = 128             # global, over all processes and devices
  c.grad_accum_steps = 1         # microbatches per step; same update, less memory
  c.train_duration = "1000 steps"

  c.optim = ConfigDict({
      "name": "adamw", "lr": 1e-3, "weight_decay": 0.0, "clip_norm": 1.0,
      "momentum": 0.9, "nesterov": False, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
      "schedule": {"name": "warmup_cosine", "warmup": "0 steps",
                   "end_fraction": 0.0, "timescale": 10000},
      # Parameter groups (ctjax/peft.py): ordered (regex over the parameter's path,
      # options) pairs, the first match winning; options are "frozen" (no gradient,
      # no optimizer state, not in checkpoints) or a dict of lr_mult and/or
      # wd_mult. E.g. (("^embeddings/", "frozen"), ("classifier/", {"lr_mult": 10.0})).
      "groups": (),
      # Layer-wise lr decay: layer_{i} of L trains at lr * layer_decay**(L - i),
      # embeddings at layer_decay**(L + 1), the rest (head) at lr. 0 is off.
      "layer_decay": 0.0,
  })
  # LoRA (ctjax/peft.py): rank-`rank` adapters A [in, r], B [r, out] on the kernels
  # matching `targets`; the model computes with W + (alpha / rank) A B. Only the
  # adapters and the parameters matching `trainable` (say a new classifier head)
  # train; the base is frozen. rank 0 is off.
  c.lora = ConfigDict({"rank": 0, "alpha": 16.0,
                       "targets": ("attention/(query|value)/kernel$",),
                       "trainable": ()})

  # Mesh axis sizes; -1 takes the devices left over. Logical axis names used by
  # the models map to mesh axes through these rules (first match wins).
  c.mesh = ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.sharding_rules = (
      ("batch", ("data", "fsdp")),
      ("embed", "fsdp"),
      ("channels_in", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("vocab", "tensor"),
      ("channels_out", "tensor"),
  )

  c.log_every = "50 steps"
  # The task's metrics on whole splits, when config.evaluators lists no
  # dict(type="metrics", ...) (which says more: which statistics, slices, ...).
  c.eval_every = "500 steps"     # and always at the end; 0 means only at the end
  c.eval_splits = ("validation",)  # evaluated periodically
  c.final_eval_splits = ("validation", "test")  # evaluated once at the end
  c.eval_batch_size = 0          # 0: same as batch_size
  # Evaluations, each a dict with a `type` naming ctjax/evaluators/TYPE.py
  # (metrics, linear_probe, fewshot, zeroshot), `every` (a duration; 0: only at
  # the end) and that type's options; see ctjax/evaluators/__init__.py.
  c.evaluators = ()
  c.bits_per_byte = False        # byte-level LMs: also report loss in bits/byte

  c.checkpoint = ConfigDict({
      "every": "500 steps",      # also at the end and on SIGTERM
      "every_minutes": 0.0,      # 0 disables the wall-clock trigger
      "keep": 3,                 # the last k checkpoints ...
      "best_metric": "",         # ... plus the best by this, e.g. "validation/accuracy"
      "best_mode": "max",
      "async_save": True,
  })
  # Resume order: WORKDIR/checkpoints, else `resume` (another run's workdir or
  # checkpoint folder: full state), else `model_init` (params only, from a ctjax
  # workdir or checkpoint; parameters matching a `model_init_skip` regex keep their
  # fresh initialisation), else from scratch. `model_init_step` picks a ctjax
  # model_init's checkpoint (0: its newest readable one).
  c.resume = ""
  c.model_init = ""
  c.model_init_skip = ()
  c.model_init_step = 0
  # A hung run (no training step or evaluation batch for this many minutes) prints
  # every thread's stack and exits with status 3, for a scheduler to restart it.
  # Set it above the longest step, evaluation batch or checkpoint write; 0 is off.
  # See ctjax/watchdog.py.
  c.watchdog_minutes = 0.0
  # The device's peak FLOP/s, for the MFU in the log; 0 takes it from the table of
  # known chips in ctjax/throughput.py (no MFU where neither knows it: CPUs).
  c.peak_flops = 0.0
  # TensorBoard event files in WORKDIR/tensorboard. clu writes them with
  # TensorFlow, whose import costs a few seconds of every run's start-up; off,
  # metrics still go to metrics.jsonl and stdout.
  c.tensorboard = True
  # Plots in WORKDIR/plots/ and WORKDIR/report.html after the final evaluation
  # (and after `ctjax eval`). Drawing them takes a few seconds of matplotlib;
  # off, the evaluation's files (WORKDIR/eval/) are still written.
  c.report = True
  # At the end of training, statistics of (a subsample of) the training inputs and
  # predictions in WORKDIR/reference/, which `ctjax monitor` compares new data
  # against (ctjax/monitor.py); seconds of forward passes.
  c.reference_statistics = True
  # A jax.profiler trace of `steps` train steps from `start_step` (after
  # compilation and warm-up), in WORKDIR/profile with a summary of where the time
  # went (ctjax/profiling.py); 0 steps: none.
  c.profile = ConfigDict({"start_step": 10, "steps": 0})
  # Differentially private training (DP-SGD; ctjax/privacy.py lists the keys):
  # clip_norm, noise_multiplier or target_epsilon, delta. Empty: none.
  c.privacy = ConfigDict({})
  # Federated learning, simulated (ctjax/federated.py lists the keys): clients,
  # rounds, local_steps, algorithm, ... Empty: ordinary training.
  c.federated = ConfigDict({})
  return c


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses a config argument like "size=small,debug=True" into typed values.

  The type of each value is the type of its default, so `debug=True` is a bool and
  `layers=4` an int; a key that has no default is an error naming it.
  """
  parsed = ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep or key not in defaults:
      raise UserError(f"config argument {item!r}: expected key=value with key one "
                      f"of {', '.join(defaults)}")
    parsed[key] = _parse_value(value, defaults[key], f"config argument {key}")
  return parsed


def _parse_value(text: str, like: Any, name: str) -> Any:
  """Parses `text` as a value of the same type as `like`, like config flags do."""
  try:
    if isinstance(like, bool):
      if text.lower() in ("true", "1", "yes"):
        return True
      if text.lower() in ("false", "0", "no"):
        return False
      raise ValueError
    if isinstance(like, int):
      return int(text)
    if isinstance(like, float):
      return float(text)
    if isinstance(like, str):
      return text
    value = ast.literal_eval(text)
    if like is not None and isinstance(like, (tuple, list)):
      value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return value
  except (ValueError, SyntaxError):
    if like is None:
      return text
    raise UserError(f"{name}={text!r}: expected {_a(like)}") from None


def _check_and_merge(base: ConfigDict, update: ConfigDict, prefix: str = "") -> None:
  """Writes `update` into `base`, refusing keys and types that `base` lacks."""
  for key, value in update.items():
    path = f"{prefix}{key}"
    if path in OPEN_KEYS:
      # Any keys, on top of the defaults (data.num_threads, data.prefetch, ...).
      value = value.to_dict() if isinstance(value, ConfigDict) else dict(value)
      base[key] = ConfigDict({**base[key].to_dict(), **value})
      continue
    if key not in base:
      raise UserError(f"config.{path}: unknown key; see ctjax/config.py for every "
                      f"option (close: {', '.join(_close(key, base.keys()))})")
    current = base[key]
    if isinstance(current, ConfigDict):
      if not isinstance(value, (ConfigDict, dict)):
        raise UserError(f"config.{path}: expected a dict of options, got {value!r}")
      _check_and_merge(current, ConfigDict(value), prefix=f"{path}.")
      continue
    base[key] = _coerce(path, value, current)


def _coerce(path: str, value: Any, current: Any) -> Any:
  """Checks that `value` may replace `current` at config.`path`."""
  if path in DURATION_KEYS and isinstance(value, (int, str)) and not isinstance(value, bool):
    return str(value)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(current, tuple) and isinstance(value, (list, tuple)):
    # JSON turns nested tuples such as sharding_rules' ("batch", ("data", "fsdp"))
    # into lists at every level; restore them all.
    return _tuples(value)
  if type(value) is not type(current) and not (isinstance(current, str) and value is None):
    raise UserError(f"config.{path}={value!r}: expected {_a(current)} "
                    f"(default {current!r})")
  return value


def _a(value: Any) -> str:
  """'an int', 'a float': the type of `value`, for error messages."""
  name = type(value).__name__
  return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _tuples(value: Any) -> Any:
  """Lists (and lists within them) as tuples."""
  return tuple(map(_tuples, value)) if isinstance(value, (list, tuple)) else value


def _close(key: str, candidates) -> list[str]:
  import difflib  # pylint: disable=g-import-not-at-top
  return difflib.get_close_matches(key, list(candidates), n=3, cutoff=0.5) or ["none"]


def validate(config: ConfigDict, *, device_count: int, process_count: int) -> None:
  """Checks the task, and the shapes of the run against the devices: mesh and
  batch sizes."""
  tasks.get(config.task)
  sizes = dict(config.mesh)
  if set(sizes) != {"data", "fsdp", "tensor"}:
    raise UserError(f"config.mesh={sizes}: give exactly data, fsdp and tensor sizes")
  fixed = 1
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise UserError(f"config.mesh.{name}={size}: use a positive size or -1 (fill)")
    fixed *= max(size, 1)
  fills = [name for name, size in sizes.items() if size == -1]
  if len(fills) > 1:
    raise UserError(f"config.mesh: only one axis may be -1, got {', '.join(fills)}")
  if fixed > device_count or (not fills and fixed != device_count) or device_count % fixed:
    raise UserError(f"config.mesh={sizes}: needs {fixed} devices"
                    f"{' or a multiple' if fills else ''}, but {device_count} are "
                    "visible; change the mesh sizes")
  batch_shards = (sizes["data"] if sizes["data"] > 0 else device_count // fixed) * \
      (sizes["fsdp"] if sizes["fsdp"] > 0 else device_count // fixed)
  micro, rem = divmod(config.batch_size, config.grad_accum_steps)
  if config.grad_accum_steps < 1 or rem:
    raise UserError(f"config.grad_accum_steps={config.grad_accum_steps}: must be >= 1 "
                    f"and divide config.batch_size={config.batch_size}")
  if micro % batch_shards or config.batch_size % process_count:
    raise UserError(f"config.batch_size={config.batch_size}: each microbatch "
                    f"({micro}) must divide evenly over the {batch_shards} "
                    f"data-parallel shards and {process_count} processes; use a "
                    f"multiple of {batch_shards * config.grad_accum_steps}")
  eval_batch = config.eval_batch_size or config.batch_size
  if eval_batch % batch_shards or eval_batch % process_count:
    raise UserError(f"config.eval_batch_size={eval_batch}: must be a multiple of "
                    f"{batch_shards} (data-parallel shards)")


def load_config(spec: str, overrides: list[str] = ()) -> ConfigDict:
  """Loads "configs/NAME.py[:ARG]", merges it into the defaults, applies overrides.

  Each override is "a.b=VALUE" (the text after `--config.`), parsed as the type of
  the field it replaces.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config {path}: no such file; give a path like "
                    "configs/default.py")
  experiment = run_experiment_file(path, arg or None)
  config = base_config()
  _check_and_merge(config, experiment)
  for override in overrides:
    apply_override(config, override)
  return config


def run_experiment_file(path: str, arg: str | None) -> ConfigDict:
  """Runs the experiment file's `get_config(arg)`; returns what it returns.

  The file is Python and runs as code. Its own mistakes (a syntax error, a name
  error, a field of a group it has not set, a `get_config` that cannot take the
  argument) become one UserError naming the file and line and what to do; the
  original exception is kept as its cause, for `--verbose`.
  """
  experiment = run_experiment_function(path, "get_config", arg,
                                       returning="a ConfigDict")
  if not isinstance(experiment, (ConfigDict, dict)):
    raise UserError(f"{path}: get_config returned {type(experiment).__name__}; "
                    "return a ConfigDict (or a dict)")
  return ConfigDict(experiment) if isinstance(experiment, dict) else experiment


def run_experiment_function(path: str, name: str, arg: str | None, *,
                            returning: str) -> Any:
  """Runs function `name(arg)` of an experiment file (get_config, get_sweeps).

  Mistakes in the file become one UserError naming the file and line, as in
  `run_experiment_file`; `returning` says what the function should return.
  """
  try:
    module_spec = importlib.util.spec_from_file_location("ctjax_experiment", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    function = getattr(module, name, None)
    if not callable(function):
      raise UserError(f"--config {path}: defines no {name}(arg); add "
                      f"`def {name}(arg=None):` returning {returning}")
    return function(*_get_config_args(function, arg, path))
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(_describe_experiment_error(path, e)) from e


def _get_config_args(get_config: Any, arg: str | None, path: str) -> tuple[Any, ...]:
  """The arguments to call `get_config` with: (arg,), or () for `get_config()`."""
  signature = inspect.signature(get_config)
  for args in ((arg,), ()) if arg is None else ((arg,),):
    try:
      signature.bind(*args)
      return args
    except TypeError:
      pass
  given = f"the argument {arg!r} (from --config {path}:{arg})" if arg else "no argument"
  raise UserError(f"{path}: {get_config.__name__}{signature} cannot be called with "
                  f"{given}; define it as `def {get_config.__name__}(arg=None):`")


def _describe_experiment_error(path: str, error: Exception) -> str:
  """One line for an exception raised by an experiment file: where, what, what to do."""
  if isinstance(error, SyntaxError):
    return (f"{error.filename or path}:{error.lineno}: {type(error).__name__}: "
            f"{error.msg}; fix the file (python -m py_compile {path} shows where)")
  where, line = path, ""
  for frame in reversed(traceback.extract_tb(error.__traceback__)):
    if os.path.abspath(frame.filename) == os.path.abspath(path):
      where, line = f"{path}:{frame.lineno}", (frame.line or "").strip()
      break
  message = str(error).strip("\"'")
  missing_group = re.fullmatch(r"'?(\w+)'?", message)
  if (isinstance(error, (AttributeError, KeyError)) and missing_group
      and missing_group[1] in base_config()):
    # `c.optim.lr = 1e-3` on an experiment's own ConfigDict, which has no `optim`
    # until the file sets one: experiments hold only what differs from the base.
    group = missing_group[1]
    assignment = re.fullmatch(rf"(\w+)\.{group}\.(\w+)\s*=\s*(.+)", line)
    example = (f"{assignment[1]}.{group} = dict({assignment[2]}={assignment[3]})"
               if assignment else f"c.{group} = dict(...)")
    return (f"{where}: config.{group} is not set in this file's ConfigDict, so its "
            f"fields cannot be set one by one; a config holds only what differs "
            f"from base_config(): write `{example}` (the other {group} fields keep "
            "their defaults), or start from `c = base_config()` (from "
            "ctjax.config import base_config)")
  return (f"{where}: {type(error).__name__}: {message}; fix the config file "
          "(ctjax train --verbose shows the traceback)")


def apply_override(config: ConfigDict, override: str) -> None:
  """Applies one "a.b.c=VALUE" override in place."""
  path, sep, text = override.partition("=")
  if not sep:
    raise UserError(f"--config.{override}: expected --config.KEY=VALUE")
  *parents, leaf = path.split(".")
  node = config
  for i, key in enumerate(parents):
    if key not in node or not isinstance(node[key], ConfigDict):
      raise UserError(f"--config.{path}: unknown key {'.'.join(parents[:i + 1])!r}")
    node = node[key]
  open_subtree = parents and parents[0] in OPEN_KEYS
  if leaf not in node:
    if not open_subtree:
      raise UserError(f"--config.{path}: unknown key; close: "
                      f"{', '.join(_close(leaf, node.keys()))}")
    # A model field or source option the experiment left at its default.
    node[leaf] = _parse_value(text, None, f"--config.{path}")
    return
  current = node[leaf]
  if isinstance(current, ConfigDict):
    raise UserError(f"--config.{path}: is a group of options; set its fields")
  if path in DURATION_KEYS:
    node[leaf] = text
    return
  value = _parse_value(text, current, f"--config.{path}")
  with node.ignore_type():
    node[leaf] = value


def to_json(config: ConfigDict) -> str:
  """The resolved config as JSON, for WORKDIR/config.json."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ConfigDict:
  """Inverse of `to_json`, back onto the defaults (lists become tuples)."""
  config = base_config()
  _check_and_merge(config, ConfigDict(json.loads(text)))
  return config

