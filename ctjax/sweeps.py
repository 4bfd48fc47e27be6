"""Sweeps: named lists of config overrides, defined next to the config they vary.

  # in configs/default.py, beside get_config:
  from ctjax import sweeps

  def get_sweeps(arg=None):
    return {
        "lr": sweeps.values("optim.lr", [1e-3, 3e-3, 1e-2]),
        "lr_seed": sweeps.product(sweeps.values("optim.lr", [1e-3, 3e-3]),
                                  sweeps.values("seed", [0, 1, 2])),
        "sizes": sweeps.zip(sweeps.values("model.widths", [(16, 32), (32, 64)]),
                            sweeps.values("optim.lr", [3e-3, 1e-3])),
        "both": sweeps.chain([{"optim.lr": 1e-3}], [{"optim.name": "sgd",
                                                     "optim.lr": 0.1}]),
    }

A sweep is plain Python: a list of trials (or a search space for Optuna, see
ctjax/search.py), each a dict of overrides in the
command line's dotted keys (`{"optim.lr": 3e-4, "seed": 1}`), built with any code
or with the helpers below. `load` runs the config file's `get_sweeps(arg)`, picks
one by name and checks every trial against the config (an unknown key or a value
of the wrong type stops with one line naming the sweep, the trial and the key),
before any trial runs. A trial runs as `ctjax train` with `arguments(trial)`, in a
folder named by `trial_name(trial)`.
"""
import builtins
from collections.abc import Iterable, Mapping
import itertools
import os
import re
from typing import Any

from ml_collections import ConfigDict

from ctjax import config as config_lib
from ctjax import search
from ctjax.errors import UserError

Trial = dict[str, Any]


def values(key: str, choices: Iterable[Any]) -> list[Trial]:
  """One key taking each of `choices`: [{key: c} for c in choices]."""
  return [{key: choice} for choice in choices]


def product(*sweeps: list[Trial]) -> list[Trial]:
  """Every combination of one trial from each sweep (the first varies slowest)."""
  return [_merged(combination) for combination in itertools.product(*sweeps)]


def zip(*sweeps: list[Trial]) -> list[Trial]:  # pylint: disable=redefined-builtin
  """Trial i of each sweep merged, for sweeps of one length."""
  lengths = {len(s) for s in sweeps}
  if len(lengths) > 1:
    raise ValueError(f"sweeps.zip of sweeps of lengths {sorted(lengths)}: give "
                     "sweeps of one length (or use sweeps.product)")
  return [_merged(trials) for trials in builtins.zip(*sweeps)]


def chain(*sweeps: list[Trial]) -> list[Trial]:
  """The trials of each sweep, one sweep after the other."""
  return [dict(trial) for sweep in sweeps for trial in sweep]


def _merged(trials: Iterable[Trial]) -> Trial:
  merged = {}
  for trial in trials:
    for key, value in trial.items():
      if key in merged and merged[key] != value:
        raise ValueError(f"sweeps combine {key}={merged[key]!r} with "
                         f"{key}={value!r}: a trial sets a key once")
      merged[key] = value
  return merged


def _text(value: Any) -> str:
  """A value as `--config.KEY=TEXT` takes it: strings as they are, others as
  Python literals, parsed back to the field's type."""
  return value if isinstance(value, str) else repr(value)


def arguments(trial: Trial) -> list[str]:
  """The `ctjax train` arguments of a trial's overrides."""
  return [f"--config.{key}={_text(value)}" for key, value in trial.items()]


def trial_name(trial: Trial) -> str:
  """A folder name that shows the trial's overrides: "optim.lr=0.001,seed=1"
  (keys sorted; characters other than letters, digits and ._=,+- become _)."""
  text = ",".join(f"{key}={_text(trial[key])}" for key in sorted(trial))
  return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text) or "defaults"


def load(config_spec: str, name: str, overrides: Iterable[str] = ()
         ) -> list[Trial] | search.Search:
  """Sweep `name` of the config file's `get_sweeps(arg)`, every trial checked: a
  list of trials, or a search (ctjax/search.py) whose keys are checked with
  their extreme values.

  Args:
    config_spec: "configs/NAME.py[:ARG]", as `ctjax train --config` takes it.
    name: the sweep.
    overrides: "KEY=VALUE" overrides that every trial starts from.
  """
  path, _, arg = config_spec.partition(":")
  if not os.path.isfile(path):
    raise UserError(f"--config {path}: no such file; give a path like "
                    "configs/default.py")
  defined = config_lib.run_experiment_function(
      path, "get_sweeps", arg or None, returning="a dict of sweep name -> trials")
  if not isinstance(defined, Mapping) or name not in defined:
    known = ", ".join(defined) if isinstance(defined, Mapping) else "none"
    raise UserError(f"--sweep {name}: {path}'s get_sweeps() has no sweep of that "
                    f"name; it has {known}")
  trials, where = defined[name], f"--sweep {name}"
  base = config_lib.load_config(config_spec, list(overrides))
  if isinstance(trials, search.Search):
    trials.check(where)
    for trial in trials.examples():
      _check_trial(base, trial, f"{where}, space")
    return trials
  if not isinstance(trials, list) or not trials or not all(
      isinstance(t, Mapping) for t in trials):
    raise UserError(f"--sweep {name}: give a non-empty list of override dicts, "
                    f"such as [{{'optim.lr': 1e-3}}]; got {trials!r:.80}")
  names = {}
  for i, trial in enumerate(trials):
    trial = dict(trial)
    _check_trial(base, trial, f"{where}, trial {i}")
    if trial_name(trial) in names:
      raise UserError(f"{where}, trial {i} ({trial_name(trial)}): the same "
                      f"overrides as trial {names[trial_name(trial)]}; each trial "
                      "must differ")
    names[trial_name(trial)] = i
  return [dict(t) for t in trials]


def _check_trial(base: ConfigDict, trial: Trial, where: str) -> None:
  try:
    apply(base, trial)
  except UserError as e:
    raise UserError(f"{where} ({trial_name(trial)}): {e}") from None


def apply(config: ConfigDict, trial: Trial) -> ConfigDict:
  """`config` with a trial's overrides applied (a copy)."""
  config = ConfigDict(config.to_dict())
  for key, value in trial.items():
    config_lib.apply_override(config, f"{key}={_text(value)}")
  return config
