"""Hyperparameter search with Optuna: a search space next to the config, and the
pruning hook a trial's trainer calls.

  # in configs/default.py's get_sweeps, beside the plain lists of trials:
  from ctjax import search

  "tune": search.Search(
      space={"optim.lr": search.log_uniform(1e-4, 3e-2),
             "optim.name": search.categorical(["adamw", "momentum"]),
             "optim.momentum": search.uniform(0.8, 0.99,
                                              when={"optim.name": "momentum"}),
             "model.blocks_per_stage": search.integer(1, 2)},
      objectives={"validation/accuracy": "max"},
      sampler="tpe", pruner="median", trials=16),

Each trial draws one value per key of `space`, in order (a key with `when` only if
the keys it names took those values), and runs as an ordinary `ctjax train` with
them as overrides (see ctjax/sweep_driver.py). `objectives` are metrics of the
trial's final evaluation (as in its metrics.jsonl), each maximised or minimised:
one for the usual search, two for a Pareto front with NSGA-II (accuracy against
examples per second, say).

Samplers: "grid" (every combination of categorical and integer keys, queued in
the study in order), "random",
"tpe" (Bayesian), "cmaes" (evolution strategy, for continuous and integer keys),
"nsga2" (evolutionary; any number of objectives). `sampler_options` go to the
Optuna sampler's constructor; `seed` seeds it.

Pruners stop a trial early when its intermediate values (the first objective at
each periodic evaluation, config.eval_every) are poor against the other trials':
"median" (worse than the median of earlier trials at the same step) or "asha"
(asynchronous successive halving). `pruner_options` go to Optuna's pruner. Only a
single objective can be pruned on. Inside the trial the trainer calls
`trial_pruning()` after each evaluation: process 0 reports the value to the study's
storage and asks whether to stop, and broadcasts the answer, so the processes of a
multi-host trial stop together and only one of them talks to the database. A
pruned run saves a checkpoint and records `search/pruned` in its metrics.jsonl.

Optuna is imported only where a study is used, so config files that define
spaces, and runs outside a search, do not pay for it.
"""
import dataclasses
import itertools
import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

from ctjax.errors import UserError

SAMPLERS = ("grid", "random", "tpe", "cmaes", "nsga2")
PRUNERS = ("none", "median", "asha")
DIRECTIONS = {"max": "maximize", "min": "minimize"}
# The environment variable that makes a `ctjax train` a search's trial: JSON with
# the storage URL, the study's name, the trial's id, the pruner and the metric.
TRIAL_ENV = "CTJAX_SEARCH_TRIAL"
PRUNED_METRIC = "search/pruned"


@dataclasses.dataclass(frozen=True)
class Uniform:
  """A float in [low, high], drawn uniformly or (log=True) log-uniformly."""
  low: float
  high: float
  log: bool = False
  when: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Integer:
  """An integer in [low, high] (both included), every `step`-th."""
  low: int
  high: int
  step: int = 1
  log: bool = False
  when: Mapping[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Categorical:
  """One of `choices` (numbers, strings, booleans or None)."""
  choices: tuple[Any, ...]
  when: Mapping[str, Any] | None = None


Distribution = Uniform | Integer | Categorical


def uniform(low: float, high: float, *, when: Mapping[str, Any] | None = None
            ) -> Uniform:
  return Uniform(float(low), float(high), False, when)


def log_uniform(low: float, high: float, *, when: Mapping[str, Any] | None = None
                ) -> Uniform:
  return Uniform(float(low), float(high), True, when)


def integer(low: int, high: int, *, step: int = 1, log: bool = False,
            when: Mapping[str, Any] | None = None) -> Integer:
  return Integer(int(low), int(high), int(step), log, when)


def categorical(choices, *, when: Mapping[str, Any] | None = None) -> Categorical:
  return Categorical(tuple(choices), when)


@dataclasses.dataclass(frozen=True)
class Search:
  """A search: its space, what it optimises, and how (see the module docstring)."""
  space: Mapping[str, Distribution]
  objectives: Mapping[str, str]  # metric -> "max" | "min"
  sampler: str = "tpe"
  pruner: str = "none"
  trials: int = 16
  seed: int = 0
  sampler_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  pruner_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def check(self, where: str) -> None:
    """One-line errors for a search that cannot run, named by `where`."""
    def fail(problem: str) -> None:
      raise UserError(f"{where}: {problem}")

    if not self.space:
      fail("the search space is empty; give space={'optim.lr': "
           "search.log_uniform(1e-4, 1e-1), ...}")
    if self.sampler not in SAMPLERS:
      fail(f"sampler={self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if self.pruner not in PRUNERS:
      fail(f"pruner={self.pruner!r}: choose one of {', '.join(PRUNERS)}")
    if not self.objectives or any(d not in DIRECTIONS
                                  for d in self.objectives.values()):
      fail(f"objectives={dict(self.objectives)!r}: give metric -> 'max' or 'min', "
           "e.g. {'validation/accuracy': 'max'}")
    if any("/" not in metric for metric in self.objectives):
      fail(f"objectives={dict(self.objectives)!r}: name metrics as SPLIT/NAME, as "
           "in metrics.jsonl, e.g. validation/accuracy")
    if self.pruner != "none" and len(self.objectives) > 1:
      fail(f"pruner={self.pruner!r} with {len(self.objectives)} objectives: Optuna "
           "prunes on one objective only; use pruner='none'")
    if self.trials < 1:
      fail(f"trials={self.trials}: give 1 or more")
    for key, distribution in self.space.items():
      if not isinstance(distribution, (Uniform, Integer, Categorical)):
        fail(f"space[{key!r}]={distribution!r}: use search.uniform, log_uniform, "
             "integer or categorical")
      for other in (distribution.when or {}):
        if other not in self.space or list(self.space).index(other) >= list(
            self.space).index(key):
          fail(f"space[{key!r}]: when={dict(distribution.when)!r} names "
               f"{other!r}, which must be a key of the space listed before it")
      if isinstance(distribution, (Uniform, Integer)) and not (
          distribution.low <= distribution.high and
          (not distribution.log or distribution.low > 0)):
        fail(f"space[{key!r}]: needs low <= high{' and low > 0 (log)' if distribution.log else ''}")
      if self.sampler == "grid" and (isinstance(distribution, Uniform)
                                     or distribution.when):
        fail(f"sampler='grid' and space[{key!r}]={distribution!r}: a grid takes "
             "categorical and integer keys without `when`; list the values with "
             "search.categorical([...])")

  def examples(self) -> list[dict[str, Any]]:
    """Trials with each key's extreme values, to check the keys against the config
    before anything runs."""
    def values(d: Distribution) -> tuple[Any, ...]:
      return d.choices if isinstance(d, Categorical) else (d.low, d.high)
    return [{key: values(d)[min(i, len(values(d)) - 1)]
             for key, d in self.space.items()}
            for i in range(max(len(values(d)) for d in self.space.values()))]

  def suggest(self, trial) -> dict[str, Any]:
    """The overrides of an Optuna trial: one value per active key."""
    overrides = {}
    for key, d in self.space.items():
      if d.when and any(overrides.get(k, _INACTIVE) != v for k, v in d.when.items()):
        continue
      if isinstance(d, Uniform):
        overrides[key] = trial.suggest_float(key, d.low, d.high, log=d.log)
      elif isinstance(d, Integer):
        overrides[key] = trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
      else:
        overrides[key] = trial.suggest_categorical(key, d.choices)
    return overrides

  def describe(self) -> dict[str, Any]:
    """A JSON description, recorded in the study so that a driver joining it with
    another search is refused."""
    return json.loads(json.dumps({
        "space": {k: {"type": type(d).__name__, **dataclasses.asdict(d)}
                  for k, d in self.space.items()},
        "objectives": dict(self.objectives), "sampler": self.sampler,
        "pruner": self.pruner, "pruner_options": dict(self.pruner_options)},
        default=repr))

  def make_sampler(self, offset: int = 0):
    """The Optuna sampler, seeded with seed + offset. The driver passes the
    number of trials the study already has, so that drivers joining a study (or
    resuming one) do not draw the same values as the first one did. A grid's
    points are queued in the study instead (see `grid`), whose trials then need
    no sampler: Optuna's GridSampler stops the
    study from inside `tell`, which only its own optimize loop allows."""
    import optuna  # pylint: disable=g-import-not-at-top
    options = dict(self.sampler_options)
    if self.sampler == "grid":
      return optuna.samplers.RandomSampler(seed=self.seed + offset)
    sampler = {"random": optuna.samplers.RandomSampler,
               "tpe": optuna.samplers.TPESampler,
               "cmaes": optuna.samplers.CmaEsSampler,
               "nsga2": optuna.samplers.NSGAIISampler}[self.sampler]
    return sampler(seed=self.seed + offset, **options)

  def grid(self) -> list[dict[str, Any]]:
    """Every combination of the keys' values, the first key varying slowest
    ([] unless the sampler is "grid")."""
    if self.sampler != "grid":
      return []
    values = [d.choices if isinstance(d, Categorical)
              else range(d.low, d.high + 1, d.step) for d in self.space.values()]
    return [dict(zip(self.space, point)) for point in itertools.product(*values)]


_INACTIVE = object()


def make_pruner(name: str, options: Mapping[str, Any]):
  import optuna  # pylint: disable=g-import-not-at-top
  if name == "none":
    return optuna.pruners.NopPruner()
  if name == "median":
    return optuna.pruners.MedianPruner(**options)
  return optuna.pruners.SuccessiveHalvingPruner(**options)


def make_storage(url: str, *, workers: int, heartbeat_s: int = 0):
  """Optuna storage from a URL or a path.

  A path (the default DIR/optuna.journal): a journal file, which processes on
  one machine share through file locks. postgresql://... (or mysql://): a
  database that drivers on many machines share; with heartbeat_s > 0 each
  driver's running trials send heartbeats, and a trial whose driver died (no
  heartbeat for 3 * heartbeat_s) is failed and retried with the same
  values by another driver, resuming from its checkpoints when its folder is on
  shared storage. sqlite:/// is refused with more than one worker: SQLite's
  locking gives "database is locked" errors under concurrent writers.
  """
  import optuna  # pylint: disable=g-import-not-at-top
  if url.startswith("sqlite:"):
    if workers > 1:
      raise UserError(f"--storage {url}: SQLite cannot take {workers} workers "
                      "writing at once (its locks fail with 'database is "
                      "locked'); use the default journal file for one machine, "
                      "or postgresql://USER@HOST/DB for several")
    return optuna.storages.RDBStorage(url)
  if "://" in url:
    if not heartbeat_s:
      return optuna.storages.RDBStorage(url)
    with warnings.catch_warnings():  # Heartbeats are "experimental" in Optuna 5.
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      return optuna.storages.RDBStorage(
          url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s,
          heartbeat_stale_trial_callback=(
              optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)))
  from optuna.storages import journal  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(url)), exist_ok=True)
  return optuna.storages.JournalStorage(journal.JournalFileBackend(url))


class TrialPruning:
  """Reports a trial's intermediate values and asks its study whether to stop."""

  def __init__(self, spec: dict[str, Any]):
    import jax  # pylint: disable=g-import-not-at-top
    self.metric = spec["metric"]
    self._trial = None
    if jax.process_index() == 0:  # Only process 0 talks to the storage.
      import optuna  # pylint: disable=g-import-not-at-top
      study = optuna.load_study(
          study_name=spec["study"], pruner=make_pruner(spec["pruner"],
                                                       spec["pruner_options"]),
          storage=make_storage(spec["storage"], workers=1))
      self._trial = optuna.Trial(study, spec["trial_id"])

  def should_stop(self, step: int, metrics: Mapping[str, float]) -> bool:
    """After an evaluation at `step` (on every process): report and decide."""
    import jax  # pylint: disable=g-import-not-at-top
    if self.metric not in metrics:
      return False  # Every process evaluated the same metrics: all agree.
    stop = False
    if self._trial is not None:
      self._trial.report(float(metrics[self.metric]), step)
      stop = self._trial.should_prune()
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      stop = bool(multihost_utils.broadcast_one_to_all(stop))
    return stop


def trial_pruning() -> TrialPruning | None:
  """The pruning hook of a search's trial (CTJAX_SEARCH_TRIAL set by the sweep
  driver), or None for an ordinary run or a search without a pruner."""
  spec = os.environ.get(TRIAL_ENV)
  if not spec:
    return None
  spec = json.loads(spec)
  return TrialPruning(spec) if spec["pruner"] != "none" else None
