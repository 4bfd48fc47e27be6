"""The sweep driver: every trial of a sweep or a search as an ordinary `ctjax train`.

  experiments/sweep.py --config configs/NAME.py[:ARG] --sweep SWEEP --workdir DIR
      [--workers 2] [--devices-per-trial 1] [--retry-failed] [--report]
      [--population] [--metric validation/accuracy --mode max]
      [--trials N] [--storage URL] [--study NAME] [--heartbeat-s 30]
      [--config.a.b=VALUE ...]                      (also: ctjax sweep ...)

SWEEP names an entry of the config file's get_sweeps(arg): a list of trials
(ctjax/sweeps.py), or a search space that Optuna samples (ctjax/search.py). The
config and every trial (for a search, each key at its extremes) are checked
before anything runs, so a typo stops the sweep with one line, exit status 2.

DIR holds:
  sweep.json                the settings and resolved base config; a rerun with
                            other settings is refused
  trials/<name>/            each trial's workdir, named by its overrides
                            ("optim.lr=0.001,seed=1"), with its log.txt (every
                            attempt appended) and trial.json (overrides, status,
                            final metrics, wall time, attempts)
  optuna.journal            a search's study (unless --storage names another)
  results.md, results.csv,  the table and plots (ctjax/sweep_report.py), at the
  plots/                    end and on demand with --report

Resuming. Rerunning the same command skips finished (and pruned) trials,
resumes interrupted ones from their checkpoints, and reports failed ones with
the end of their log; --retry-failed runs them again. SIGINT or SIGTERM stops
the running trials (each saves a checkpoint); a driver killed outright takes
its trials with it (ctjax/run_pool.py), and their checkpoints stay.

Searches. Each trial is asked of an Optuna study, runs, and is told its
objectives (or that it was pruned, or failed). Workers on several machines join
one study with --storage postgresql://USER@HOST/DB and the same --study; with
--heartbeat-s, a trial whose driver died is failed after the grace period and
retried with the same values by another driver, resuming from its checkpoints
when DIR is shared storage. A trial whose values a finished trial already had
is told that trial's result rather than trained again: the same config and seed
give the same result. With the journal file, a rerun takes over the trials of a
driver on this machine that is no longer alive.

Progress goes to stdout: trials finished, running, pruned, failed and pending,
the best so far, and an ETA from the runs' own step counts.
"""
import argparse
import json
import os
import signal
import socket
import sys
import time
import warnings
from typing import Any

from ctjax import config as config_lib
from ctjax import cv
from ctjax import run_pool
from ctjax import search as search_lib
from ctjax import sweeps
from ctjax import writers
from ctjax.errors import UserError

SETTINGS_FILE = "sweep.json"
TRIAL_FILE = "trial.json"
# Seconds between progress lines while nothing changes.
PROGRESS_EVERY_S = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of the sweep driver (--config.a.b=VALUE overrides come on top)."""
  parser.add_argument("--config", required=True,
                      help="configs/NAME.py, optionally :ARG for get_config(ARG)")
  parser.add_argument("--sweep", required=True,
                      help="a sweep or search of the config file's get_sweeps()")
  parser.add_argument("--workdir", required=True,
                      help="the sweep's folder; rerun the same command to resume")
  parser.add_argument("--workers", type=int, default=1,
                      help="trials run at once on this machine (default 1)")
  parser.add_argument("--devices-per-trial", type=int, default=1,
                      help="GPUs per trial (CUDA_VISIBLE_DEVICES); on a CPU, "
                      "host devices per trial (default 1)")
  parser.add_argument("--retry-failed", action="store_true",
                      help="run trials that failed before again")
  parser.add_argument("--report", action="store_true",
                      help="only write the table and plots of what has run")
  parser.add_argument("--population", action="store_true",
                      help="train a list of trials that differ in numeric "
                      "hyperparameters together, in one program "
                      "(ctjax/population.py)")
  parser.add_argument("--metric", default="",
                      help="the metric the table ranks by (default: a search's "
                      "first objective, else config.checkpoint.best_metric, else "
                      "validation/loss)")
  parser.add_argument("--mode", choices=("max", "min"), default=None,
                      help="whether --metric is better high or low")
  parser.add_argument("--trials", type=int, default=0,
                      help="a search's number of trials (default: the search's)")
  parser.add_argument("--storage", default="",
                      help="a search's Optuna storage: a journal file (default "
                      "DIR/optuna.journal) or postgresql://USER@HOST/DB")
  parser.add_argument("--study", default="",
                      help="the study's name (default: CONFIG-SWEEP)")
  parser.add_argument("--heartbeat-s", type=int, default=0,
                      help="with a database, seconds between heartbeats of "
                      "running trials (0: none); a trial silent for three times "
                      "that is retried by another driver")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


def run_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
  """Runs the sweep's trials not yet done, then writes the table and plots.

  Returns the exit status: 0 when every trial finished or was pruned, 1 when one
  failed or was stopped.
  """
  if args.workers < 1 or args.devices_per_trial < 1:
    raise UserError(f"--workers {args.workers} --devices-per-trial "
                    f"{args.devices_per_trial}: give 1 or more")
  definition = sweeps.load(args.config, args.sweep, overrides)
  is_search = isinstance(definition, search_lib.Search)
  if args.population and is_search:
    raise UserError(f"--population with --sweep {args.sweep}: population mode "
                    "trains a list of trials; this sweep is a search")
  base = config_lib.load_config(args.config, overrides)
  metric, mode = _ranking(args, base, definition)
  run_pool.claim(os.path.join(args.workdir, SETTINGS_FILE), "a sweep", {
      "command": {"config": args.config, "sweep": args.sweep,
                  "overrides": overrides},
      "sweep": definition.describe() if is_search else definition,
      "config": json.loads(config_lib.to_json(base))})
  driver = (_Search(args, overrides, definition) if is_search else
            _List(args, overrides, definition, (metric, mode)))
  try:
    if not args.report:
      if args.population:
        driver.train_population(base)
      else:
        driver.run(run_pool.Pool(args.workers, args.devices_per_trial))
  finally:
    from ctjax import sweep_report  # pylint: disable=g-import-not-at-top
    paths = sweep_report.write(args.workdir, driver.table_rows(), metric, mode,
                               study=driver.study)
    print(f"results: {', '.join(paths[:2])} and {len(paths) - 2} plots in "
          f"{os.path.join(args.workdir, 'plots')}", flush=True)
  if driver.interrupted:
    return 130
  failed = driver.count("failed") + driver.count("stopped")
  if failed and not args.report:
    print(f"ctjax: error: sweep: {failed} trial(s) did not finish; fix the cause "
          "and rerun the same command (with --retry-failed for failed ones)",
          file=sys.stderr, flush=True)
    return 1
  return 0


def _ranking(args, base, definition) -> tuple[str, str]:
  """The metric the results are ranked by, and whether higher is better."""
  if args.metric:
    return args.metric, args.mode or "max"
  if isinstance(definition, search_lib.Search):
    metric, mode = next(iter(definition.objectives.items()))
    return metric, mode
  if base.checkpoint.best_metric:
    return base.checkpoint.best_metric, base.checkpoint.best_mode
  return "validation/loss", "min"


def trial_dir(workdir: str, overrides: dict[str, Any]) -> str:
  return os.path.join(workdir, "trials", sweeps.trial_name(overrides))


def read_trial(run_dir: str) -> dict[str, Any]:
  """A trial's trial.json: its status and what it reached; {} before its first
  attempt ended."""
  try:
    with open(os.path.join(run_dir, TRIAL_FILE)) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


class _Driver:
  """What list sweeps and searches share: trial folders, outcomes, progress."""

  def __init__(self, args: argparse.Namespace, overrides: list[str]):
    self.args, self.overrides = args, overrides
    self.study = None
    self.status: dict[str, str] = {}  # name -> finished|pruned|failed|...
    self.trials: dict[str, dict[str, Any]] = {}  # name -> overrides
    self.numbers: dict[str, int] = {}  # name -> Optuna trial number
    self._last_progress, self._progress_key = 0.0, None
    self._durations: list[float] = []  # This session's finished trials' wall time.
    self.interrupted = False  # By SIGINT or SIGTERM.

  def add(self, overrides: dict[str, Any]) -> str:
    name = sweeps.trial_name(overrides)
    self.trials[name] = overrides
    self.status.setdefault(name, read_trial(self._dir(name)).get("status",
                                                                  "pending"))
    return name

  def _dir(self, name: str) -> str:
    return os.path.join(self.args.workdir, "trials", name)

  def count(self, status: str) -> int:
    return sum(s == status for s in self.status.values())

  def make_run(self, name: str, env: dict[str, str] | None = None) -> run_pool.Run:
    overrides = [*self.overrides, *(argument[len("--config."):] for argument
                                    in sweeps.arguments(self.trials[name]))]
    command = run_pool.train_command(self.args.config, self._dir(name), overrides,
                                     verbose=self.args.verbose)
    return run_pool.Run(name, command, self._dir(name), env or {})

  def start(self, pool: run_pool.Pool, run: run_pool.Run) -> None:
    pool.start(run)
    self.status[run.name] = "running"
    print(f"trial {run.name}: started, log "
          f"{os.path.join(run.run_dir, run_pool.LOG_FILE)}", flush=True)

  def outcome(self, run: run_pool.Run, exit_status: int, failure: str = ""
              ) -> dict[str, Any]:
    """Records how a run ended (its exit status, or `failure` saying why it
    failed) in its trial.json, and returns that record."""
    run_dir, record = run.run_dir, read_trial(run.run_dir)
    metrics = cv.final_metrics(run_dir) if exit_status == 0 else None
    last = (writers.read_metrics(run_dir) or [{}])[-1]
    if exit_status != 0 or failure:
      status, why = "failed", failure or f"exit status {exit_status}"
    elif metrics is not None:
      status, why = "finished", ""
    elif last.get(search_lib.PRUNED_METRIC):
      status, why = "pruned", f"at step {last['step']}"
    else:
      status, why = "stopped", "stopped before its end (SIGTERM?); rerun to resume"
    wall_s = time.monotonic() - run.started
    record = {"overrides": self.trials[run.name], "status": status, "why": why,
              "metrics": metrics or {}, "number": self.numbers.get(run.name),
              "wall_s": record.get("wall_s", 0.0) + wall_s,
              "attempts": record.get("attempts", 0) + 1}
    writers.write_atomically(os.path.join(run_dir, TRIAL_FILE),
                             json.dumps(record, indent=1))
    self.status[run.name] = status
    if status == "finished":
      self._durations.append(wall_s)
    print(f"trial {run.name}: {status}{f' ({why})' if why else ''}", flush=True)
    if status == "failed":
      print(f"  the end of its log:\n{run_pool.log_tail(run_dir)}", flush=True)
    return record

  def progress(self, pool: run_pool.Pool, metric: str, mode: str, total: int
               ) -> None:
    """A progress line when something changed, or every PROGRESS_EVERY_S."""
    key = tuple(sorted(self.status.items()))
    now = time.monotonic()
    if key == self._progress_key and (
        now - self._last_progress < PROGRESS_EVERY_S):
      return
    self._progress_key, self._last_progress = key, now
    counts = {s: self.count(s) for s in ("finished", "running", "pruned",
                                         "failed", "stopped")}
    pending = max(total - sum(counts.values()), 0)
    line = (f"[{time.strftime('%H:%M:%S')}] trials: " + ", ".join(
        f"{n} {s}" for s, n in counts.items() if n or s in ("finished", "running"))
            + f", {pending} pending")
    best = self._best(metric, mode)
    if best:
      line += f"; best {metric}={best[1]:.4g} ({best[0]})"
    eta = self._eta(pool, pending)
    if eta is not None:
      line += f"; ETA {_duration(eta)}"
    print(line, flush=True)

  def _best(self, metric: str, mode: str) -> tuple[str, float] | None:
    values = {name: read_trial(self._dir(name)).get("metrics", {}).get(metric)
              for name, s in self.status.items() if s == "finished"}
    values = {n: v for n, v in values.items() if v is not None}
    if not values:
      return None
    name = (max if mode == "max" else min)(values, key=values.get)
    return name, values[name]

  def _eta(self, pool: run_pool.Pool, pending: int) -> float | None:
    """Seconds left: the pending trials' and the running ones' remaining
    fractions, at the time a trial takes (measured by finished ones, or else
    projected from the running ones' steps), shared among the workers."""
    left, per_trial = float(pending), list(self._durations)
    for run in pool.running():
      _, total = cv.planned_steps(run.run_dir)
      steps = [r["step"] for r in writers.read_metrics(run.run_dir)
               if "train/loss" in r]
      done = steps[-1] / total if steps and total else 0.0
      left += 1 - done
      elapsed = time.monotonic() - run.started
      if done > 0.05 and not self._durations:
        per_trial.append(elapsed / done)
    if not per_trial:
      return None
    return left * (sum(per_trial) / len(per_trial)) / max(pool.workers, 1)

  def table_rows(self) -> list[dict[str, Any]]:
    """The trials as sweep_report.write takes them."""
    return [{"name": name, "overrides": overrides, "status": self.status[name],
             "wall_s": read_trial(self._dir(name)).get("wall_s"),
             "number": self.numbers.get(name)}
            for name, overrides in self.trials.items()]

  def serve(self, pool: run_pool.Pool, next_run, on_exit, total,
            metric: str, mode: str, tick=lambda: None) -> None:
    """Starts runs from `next_run()` (None: none now) while slots are free, and
    calls `on_exit(run, status)` as they end, until none is left."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
      while True:
        while pool.free():
          run = next_run()
          if run is None:
            break
          self.start(pool, run)
        if not pool.running():
          break
        for run, status in pool.wait():
          on_exit(run, status)
        tick()
        self.progress(pool, metric, mode, total())
    except KeyboardInterrupt:
      stopped = pool.stop()  # Each saves a checkpoint and stops.
      for run in stopped:
        on_exit(run, 0)
      print(f"sweep: stopped; {len(stopped)} running trial(s) saved where they "
            "were: rerun the same command to resume", file=sys.stderr, flush=True)
      self.interrupted = True
    finally:
      signal.signal(signal.SIGTERM, previous)


class _List(_Driver):
  """A list of trials, each run once it is neither finished nor failed."""

  def __init__(self, args, overrides, trials: list[dict[str, Any]],
               ranking: tuple[str, str]):
    super().__init__(args, overrides)
    for trial in trials:
      self.add(trial)
    self.metric, self.mode = ranking  # For the progress line's best so far.

  def _todo(self) -> list[str]:
    """The trials to run: not finished or pruned, nor failed (unless retried)."""
    return [n for n, s in self.status.items()
            if s in ("pending", "stopped", "running")
            or (s == "failed" and self.args.retry_failed)]

  def run(self, pool: run_pool.Pool) -> None:
    for name, status in self.status.items():
      if status in ("finished", "pruned"):
        print(f"trial {name}: {status} before, skipped", flush=True)
      elif status == "failed":
        why = read_trial(self._dir(name)).get("why", "")
        print(f"trial {name}: failed before ({why}); "
              f"{'retrying' if self.args.retry_failed else 'skipped (--retry-failed runs it again)'}",
              flush=True)
    todo = self._todo()
    self.serve(pool, lambda: self.make_run(todo.pop(0)) if todo else None,
               self.outcome, lambda: len(self.trials), self.metric, self.mode)

  def train_population(self, base) -> None:
    """The trials not yet done, trained together in this process (SIGTERM saves
    them all); a trial that diverged is failed, the others go on."""
    from ctjax import population  # pylint: disable=g-import-not-at-top
    names = self._todo()
    if not names:
      return
    started = time.monotonic()
    results = population.train_population(base, [self.trials[n] for n in names],
                                          [self._dir(n) for n in names])
    stopped = not any(results)  # By SIGTERM: every trial saved, none finished.
    for name, result in zip(names, results):
      run = run_pool.Run(name, [], self._dir(name), started=started)
      self.outcome(run, 0, failure="" if result or stopped else
                   "diverged: the population's output names the step")


class _Search(_Driver):
  """Trials asked of an Optuna study and told their results."""

  def __init__(self, args, overrides, definition: search_lib.Search):
    import optuna  # pylint: disable=g-import-not-at-top
    super().__init__(args, overrides)
    self.search = definition
    self.total = args.trials or definition.trials
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    self.storage_url = args.storage or os.path.abspath(
        os.path.join(args.workdir, "optuna.journal"))
    self.study_name = args.study or (
        f"{os.path.splitext(os.path.basename(args.config.split(':')[0]))[0]}"
        f"-{args.sweep}")
    self.storage = search_lib.make_storage(self.storage_url, workers=args.workers,
                                           heartbeat_s=args.heartbeat_s)
    # This driver sends the heartbeats itself (see _tick), which Optuna's ask()
    # cannot know.
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
    try:
      before = len(optuna.load_study(study_name=self.study_name,
                                     storage=self.storage).trials)
    except KeyError:  # A new study.
      before = 0
    self.study = optuna.create_study(
        study_name=self.study_name, storage=self.storage, load_if_exists=True,
        sampler=definition.make_sampler(offset=before),
        pruner=search_lib.make_pruner(definition.pruner, definition.pruner_options),
        directions=[search_lib.DIRECTIONS[d]
                    for d in definition.objectives.values()])
    with warnings.catch_warnings():  # Names the objectives in Optuna's plots.
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      self.study.set_metric_names(list(definition.objectives))
    recorded = self.study.user_attrs.get("ctjax")
    mine = {"config": args.config, "overrides": overrides,
            "search": definition.describe()}
    if recorded is None:
      self.study.set_user_attr("ctjax", mine)
    elif recorded != mine:
      raise UserError(f"--study {self.study_name}: that study holds another "
                      f"search (--config {recorded['config']}, overrides "
                      f"{recorded['overrides']}); use the same settings or "
                      "another --study")
    grid = definition.grid()
    if grid:
      self.total = min(self.total, len(grid))
      for point in grid:  # Queued once: a point already in the study is skipped.
        self.study.enqueue_trial(point, skip_if_exists=True)
    self.owner = f"{socket.gethostname()}:{os.getpid()}"
    self.running: dict[str, Any] = {}  # name -> optuna.Trial
    self._last_heartbeat = 0.0
    self._refresh()

  def _refresh(self) -> None:
    """Learns the study's trials (other drivers' too) for the table and counts."""
    import optuna  # pylint: disable=g-import-not-at-top
    states = {optuna.trial.TrialState.COMPLETE: "finished",
              optuna.trial.TrialState.PRUNED: "pruned",
              optuna.trial.TrialState.FAIL: "failed",
              optuna.trial.TrialState.RUNNING: "running",
              optuna.trial.TrialState.WAITING: "pending"}
    latest = {}
    for trial in self.study.get_trials(deepcopy=False):
      name = trial.user_attrs.get("name")
      if name:  # The latest attempt of a name tells its state.
        latest[name] = trial
    for name, trial in latest.items():
      self.trials[name] = trial.user_attrs["overrides"]
      self.numbers[name] = trial.number
      self.status[name] = states[trial.state]

  def _budget_left(self) -> bool:
    import optuna  # pylint: disable=g-import-not-at-top
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
               optuna.trial.TrialState.RUNNING)
    return len(self.study.get_trials(deepcopy=False, states=counted)) < self.total

  def _recover(self) -> None:
    """Trials left RUNNING by a driver that is gone are failed and asked again
    with the same values (which resume from their folders' checkpoints)."""
    import optuna  # pylint: disable=g-import-not-at-top
    if isinstance(self.storage, optuna.storages.RDBStorage) and self.args.heartbeat_s:
      _fail_stale_trials(self.study)  # Retries them, too.
      return
    host = socket.gethostname()
    for trial in self.study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
      owner_host, _, pid = trial.user_attrs.get("driver", "").rpartition(":")
      if owner_host == host and pid.isdigit() and not _alive(int(pid)):
        self._hand_back(trial, "its driver is gone")

  def _hand_back(self, trial, why: str) -> None:
    """Fails a trial that did not end by itself and queues its values again."""
    import optuna  # pylint: disable=g-import-not-at-top
    self.storage.set_trial_user_attr(trial._trial_id, "why", why)  # pylint: disable=protected-access
    self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    self.study.enqueue_trial(trial.params, skip_if_exists=False)

  def _retry_failed(self) -> None:
    """--retry-failed: the values of failed trials that no later trial took up."""
    import optuna  # pylint: disable=g-import-not-at-top
    latest = {}
    for trial in self.study.get_trials(deepcopy=False):
      if "name" in trial.user_attrs:
        latest[trial.user_attrs["name"]] = trial
    for trial in latest.values():
      if trial.state == optuna.trial.TrialState.FAIL:
        self.study.enqueue_trial(trial.params, skip_if_exists=False)

  def run(self, pool: run_pool.Pool) -> None:
    self._recover()
    if self.args.retry_failed:
      self._retry_failed()
    metric, mode = next(iter(self.search.objectives.items()))
    self.serve(pool, self._next_run, self._on_exit, lambda: self.total, metric,
               mode, tick=self._tick)

  def _next_run(self) -> run_pool.Run | None:
    import optuna  # pylint: disable=g-import-not-at-top
    while self._budget_left():
      trial = self.study.ask()
      overrides = self.search.suggest(trial)
      name = sweeps.trial_name(overrides)
      trial.set_user_attr("name", name)
      trial.set_user_attr("overrides", overrides)
      trial.set_user_attr("driver", self.owner)
      self.trials[name], self.numbers[name] = overrides, trial.number
      before = read_trial(self._dir(name))
      if before.get("status") == "finished":  # The same values ran to the end.
        self._tell(trial, name, before)
        continue
      busy = [t.number for t in self.study.get_trials(
          deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
              if t.user_attrs.get("name") == name and t.number != trial.number]
      if busy:  # Another driver is training these values in the same folder.
        trial.set_user_attr("why", f"same values as running trial {busy[0]}")
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        continue
      self.running[name] = trial
      return self.make_run(name, {search_lib.TRIAL_ENV: json.dumps({
          "storage": self.storage_url, "study": self.study_name,
          "trial_id": trial._trial_id,  # pylint: disable=protected-access
          "pruner": self.search.pruner,
          "pruner_options": dict(self.search.pruner_options),
          "metric": next(iter(self.search.objectives))})})
    return None

  def _on_exit(self, run: run_pool.Run, exit_status: int) -> None:
    record = self.outcome(run, exit_status)
    self._tell(self.running.pop(run.name), run.name, record)

  def _tell(self, trial, name: str, record: dict[str, Any]) -> None:
    import optuna  # pylint: disable=g-import-not-at-top
    status = record["status"]
    if status == "finished":
      values, missing = _objectives(self._dir(name), record["metrics"],
                                    self.search.objectives)
      if missing:
        print(f"trial {name}: its run has no {', '.join(missing)} to optimise; "
              f"it has {', '.join(sorted(record['metrics']))}", flush=True)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.status[name] = "failed"
        return
      self.study.tell(trial, values)
    elif status == "pruned":
      self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    elif status == "stopped":
      self._hand_back(trial, "stopped before its end")
    else:
      self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
    self.status[name] = status

  def _tick(self) -> None:
    """Heartbeats of this driver's running trials, for a database with them."""
    import optuna  # pylint: disable=g-import-not-at-top
    if not (self.args.heartbeat_s and isinstance(self.storage,
                                                  optuna.storages.RDBStorage)):
      return
    if time.monotonic() - self._last_heartbeat >= self.args.heartbeat_s:
      for trial in self.running.values():
        self.storage.record_heartbeat(trial._trial_id)  # pylint: disable=protected-access
      self._last_heartbeat = time.monotonic()
      _fail_stale_trials(self.study)

  def table_rows(self) -> list[dict[str, Any]]:
    self._refresh()
    return super().table_rows()


def _objectives(run_dir: str, final: dict[str, float], objectives
                ) -> tuple[list[float], list[str]]:
  """The objectives' values: from the final evaluation, or for train/* metrics
  (examples_per_s, say) their last logged value."""
  values, missing = [], []
  last = {}
  for record in writers.read_metrics(run_dir):
    last.update(record)
  for metric in objectives:
    value = final.get(metric, last.get(metric) if metric.startswith("train/")
                      else None)
    if value is None:
      missing.append(metric)
    else:
      values.append(float(value))
  return values, missing


def _fail_stale_trials(study) -> None:
  """Optuna's: fails trials whose driver stopped sending heartbeats, and (by the
  storage's callback) queues their values again."""
  import optuna  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():  # "Experimental" in Optuna 5, and meant for
    warnings.simplefilter("ignore")  # Study.optimize, which a driver cannot use.
    optuna.storages.fail_stale_trials(study)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f}s"
  if seconds < 7200:
    return f"{seconds / 60:.0f}m"
  return f"{seconds / 3600:.1f}h"


def main(argv: list[str] | None = None) -> None:
  """experiments/sweep.py and `ctjax sweep`."""
  parser = argparse.ArgumentParser(prog="sweep", description=__doc__.split("\n")[0])
  add_arguments(parser)
  args, rest = parser.parse_known_args(argv)
  bad = [r for r in rest if not r.startswith("--config.")]
  if bad:
    parser.error(f"unrecognised argument {bad[0]!r}; overrides look like "
                 "--config.optim.lr=0.01")
  try:
    sys.exit(run_sweep(args, [r[len("--config."):] for r in rest]))
  except UserError as e:
    if args.verbose or os.environ.get("CTJAX_VERBOSE", "") not in ("", "0"):
      import traceback  # pylint: disable=g-import-not-at-top
      traceback.print_exc()
    print(f"ctjax: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)
