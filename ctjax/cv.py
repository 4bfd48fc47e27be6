"""Cross-validation: `ctjax cv` trains one run per fold and tabulates them.

  ctjax cv --config configs/NAME.py[:ARG] --folds 5 [--stratified]
           [--group-column COL] [--seed S] [--workers N] --workdir DIR
           [--config.a.b=VALUE ...]

Folds are a feature of the data layer (`config.data.cross_validation`, see
ctjax/data/splits.py): the train and validation parts of
`config.data.split_fractions` are pooled and divided into k disjoint folds (by
label with --stratified; keeping each value of a column together with
--group-column, e.g. a patient id); the test part is held out, the same in every
fold. So fold i is an ordinary, resumable run in its own process:

  ctjax train --config ... --workdir DIR/fold_<i> [--config.a.b=VALUE ...]
              --config.data.cross_validation="{'folds': k, 'fold': i, ...}"

The config and data are checked here first, so a mistake stops everything with
one line and exit status 2 before any fold starts. DIR then holds:

  cv.json            the settings; a rerun with other settings is refused
  fold_<i>/          fold i's workdir (config.json, metrics.jsonl, splits.json
                     with the fold's sizes and index digests, checkpoints/, ...)
  fold_<i>/log.txt   the fold's stdout and stderr, each attempt appended
  fold_<i>/cv_result.json
                     written (whole, then renamed) once the fold has finished:
                     its final metrics. A rerun skips these folds and resumes the
                     others from their checkpoints.
  cv.md, cv.csv      per fold the final metrics (validation/*: the held-out fold;
                     test/*: the common test part), and per metric the mean and
                     the sample standard deviation (ddof=1) over the folds

"Finished" is more than exit status 0: a run stopped by SIGTERM saves a
checkpoint and exits 0. A fold has finished when its metrics.jsonl holds the final
evaluation: a record at the last step (config.train_duration resolved against
the fold's training split) with metrics of every split the task's metrics
evaluator evaluates at the end (config.final_eval_splits by default).

A failed fold is reported with the end of its log once the others are done, and
the command exits with status 1. SIGINT or SIGTERM stops the folds that are
running (each saves a checkpoint on SIGTERM); the same command resumes them.

--workers N runs N folds at once, each on its own share of the CPUs or GPUs
(see ctjax/run_pool.py, shared with the sweep driver). On a TPU host, whose
chips one process holds, use --workers 1.
"""
import argparse
import csv
import io
import json
import os
import signal
import sys
from typing import Any, Callable

import ml_collections
import numpy as np

from ctjax import config as config_lib
from ctjax import durations
from ctjax import evaluators as evaluators_lib
from ctjax import run_pool
from ctjax import writers
from ctjax.data import splits as splits_lib
from ctjax.evaluators import metrics as metrics_evaluator
from ctjax.errors import UserError

SETTINGS_FILE = "cv.json"
RESULT_FILE = "cv_result.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The options of `ctjax cv` (its --config.a.b=VALUE overrides come on top)."""
  parser.add_argument("--config", required=True,
                      help="configs/NAME.py, optionally :ARG for get_config(ARG)")
  parser.add_argument("--workdir", required=True,
                      help="the folder of the folds and the tables; rerun to resume")
  parser.add_argument("--folds", type=int, default=5, help="k (default 5)")
  parser.add_argument("--stratified", action="store_true",
                      help="keep each class's share the same in every fold")
  parser.add_argument("--group-column", default="",
                      help="a column whose values (e.g. patient ids) never sit in "
                      "two folds")
  parser.add_argument("--seed", type=int, default=0,
                      help="seeds the division into folds (default 0)")
  parser.add_argument("--workers", type=int, default=1,
                      help="folds trained at once (default 1)")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


def cross_validate(args: argparse.Namespace, overrides: list[str]) -> int:
  """Runs the folds not yet finished, then writes DIR/cv.md and cv.csv.

  Returns the exit status: 0 when every fold has finished, 1 when one failed.
  """
  if args.workers < 1:
    raise UserError(f"--workers {args.workers}: give 1 or more")
  options = {"folds": args.folds, "stratify": args.stratified,
             "group_column": args.group_column, "seed": args.seed}
  config = _check(args.config, overrides, options)
  run_pool.claim(os.path.join(args.workdir, SETTINGS_FILE), "a cross-validation", {
      "command": {"config": args.config, "overrides": overrides, **options},
      "config": json.loads(config_lib.to_json(config))})
  commands, results = {}, {}
  for fold in range(args.folds):
    results[fold] = _read_result(args.workdir, fold)
    if results[fold] is not None:
      print(f"fold {fold}: finished before, skipped", flush=True)
      continue
    commands[fold] = run_pool.train_command(
        args.config, _fold_dir(args.workdir, fold),
        [*overrides, _fold_override(options, fold)], verbose=args.verbose)
  failed = {}

  def on_exit(fold: int, status: int) -> None:
    outcome = _finish_fold(args.workdir, fold, status)
    if isinstance(outcome, str):
      failed[fold] = outcome
    else:
      results[fold] = outcome
    print(f"fold {fold}: {outcome if fold in failed else 'finished'}", flush=True)

  _run_all(args.workdir, commands, args.workers, on_exit)
  if failed:
    for fold, why in sorted(failed.items()):
      log = os.path.join(_fold_dir(args.workdir, fold), run_pool.LOG_FILE)
      print(f"fold {fold}: {why}; the end of {log}:\n"
            f"{run_pool.log_tail(_fold_dir(args.workdir, fold))}", flush=True)
    print(f"ctjax: error: cv: fold(s) {', '.join(map(str, sorted(failed)))} of "
          f"{args.folds} did not finish; fix the cause and rerun the same command "
          "(finished folds are kept)", file=sys.stderr, flush=True)
    return 1
  markdown, table = summarize(results, _title(args, options))
  for name, text in (("cv.md", markdown), ("cv.csv", table)):
    writers.write_atomically(os.path.join(args.workdir, name), text)
  print(markdown, flush=True)
  return 0


def _check(config_spec: str, overrides: list[str],
           options: dict[str, Any]) -> ml_collections.ConfigDict:
  """Loads the config and opens fold 0's data here, so mistakes stop everything;
  returns fold 0's config."""
  config = config_lib.load_config(config_spec, overrides)
  if "cross_validation" in config.data:
    raise UserError("config.data.cross_validation: is set by `ctjax cv` for each "
                    f"fold; remove it from {config_spec} and the overrides")
  config_lib.apply_override(config, _fold_override(options, 0))
  splits_lib.open_splits(config.data)
  return config


def _fold_override(options: dict[str, Any], fold: int) -> str:
  value = {"folds": options["folds"], "fold": fold, **options}
  # One literal for the whole group, which the experiment does not define.
  return f"data.cross_validation={value!r}"


def _fold_dir(workdir: str, fold: int) -> str:
  return os.path.join(workdir, f"fold_{fold}")


def _read_result(workdir: str, fold: int) -> dict[str, float] | None:
  path = os.path.join(_fold_dir(workdir, fold), RESULT_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["metrics"]


def _run_all(workdir: str, commands: dict[int, list[str]], workers: int,
             on_exit: Callable[[int, int], None]) -> None:
  """Runs each fold's command, `workers` at a time; `on_exit(fold, status)` as
  each ends, so that a finished fold is recorded at once."""
  pool = run_pool.Pool(workers)
  waiting = [run_pool.Run(str(fold), commands[fold], _fold_dir(workdir, fold))
             for fold in sorted(commands)]
  # SIGTERM (a scheduler, `kill`) stops the folds as Ctrl-C does.
  previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
  try:
    while waiting or pool.running():
      while waiting and pool.free():
        run = waiting.pop(0)
        pool.start(run)
        print(f"fold {run.name}: started, log "
              f"{os.path.join(run.run_dir, run_pool.LOG_FILE)}", flush=True)
      for run, status in pool.wait():
        on_exit(int(run.name), status)
  except KeyboardInterrupt:
    stopped = pool.stop()  # Each saves a checkpoint and stops.
    print(f"ctjax cv: stopped; folds {', '.join(r.name for r in stopped)} saved "
          "where they were: rerun the same command to resume", file=sys.stderr,
          flush=True)
    sys.exit(130)
  finally:
    signal.signal(signal.SIGTERM, previous)


def _finish_fold(workdir: str, fold: int, status: int) -> dict[str, float] | str:
  """The fold's final metrics, recorded in cv_result.json; or why there are none."""
  if status != 0:
    return f"failed with exit status {status}"
  metrics = final_metrics(_fold_dir(workdir, fold))
  if metrics is None:
    return ("exited before its final evaluation (stopped by SIGTERM?); rerun to "
            "resume it")
  writers.write_atomically(os.path.join(_fold_dir(workdir, fold), RESULT_FILE),
                    json.dumps({"fold": fold, "metrics": metrics}, indent=1))
  return metrics


def planned_steps(run_dir: str) -> tuple[ml_collections.ConfigDict | None, int]:
  """A run's resolved config and its length in steps; (None, 0) before the run
  has written them (config.json, splits.json)."""
  try:
    with open(os.path.join(run_dir, "config.json")) as f:
      config = config_lib.from_json(f.read())
    with open(os.path.join(run_dir, "splits.json")) as f:
      train_examples = json.load(f)["sizes"]["train"]
  except FileNotFoundError:
    return None, 0
  return config, durations.to_steps(
      config["train_duration"], key="train_duration",
      global_batch_size=config["batch_size"], train_examples=train_examples)


def final_metrics(run_dir: str) -> dict[str, float] | None:
  """A finished run's final evaluation from its metrics.jsonl; None if unfinished.

  The metrics (all but train/*) of the records at the last step, later records
  winning; None unless every final split (see the module) has metrics there.
  """
  config, last_step = planned_steps(run_dir)
  if config is None:
    return None
  records = writers.read_metrics(run_dir)
  metrics = {}
  for record in records:
    if record.get("step") == last_step:
      metrics.update({k: float(v) for k, v in record.items()
                      if "/" in k and not k.startswith("train/")
                      and isinstance(v, (int, float)) and not isinstance(v, bool)})
  splits = {k.split("/")[0] for k in metrics}
  wanted = {split for e in evaluators_lib.configured(config)
            if e.get("type") == "metrics" and "name" not in e
            for split in metrics_evaluator.final_splits(e)}
  return metrics if wanted <= splits else None


def summarize(results: dict[int, dict[str, float]], title: str) -> tuple[str, str]:
  """The markdown and CSV tables: each fold's metrics, their mean and sample std.

  Markdown: a row per metric (a column per fold, then mean ± std), readable with
  many metrics. CSV: a row per fold, then "mean" and "std" rows, a column per
  metric, ready for a spreadsheet or pandas.
  """
  folds = sorted(results)
  order = {"validation": 0, "test": 1}
  names = sorted({k for r in results.values() for k in r},
                 key=lambda k: (order.get(k.split("/")[0], 2), k))
  mean, std = {}, {}
  for name in names:
    values = [results[f][name] for f in folds if name in results[f]]
    mean[name] = float(np.mean(values))
    std[name] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
  cell = lambda r, n: f"{r[n]:.4g}" if n in r else ""
  lines = [f"# {title}", "",
           f"| metric | {' | '.join(f'fold {f}' for f in folds)} | mean ± std |",
           f"|---|{'---:|' * len(folds)}---:|"]
  lines += [f"| {n} | {' | '.join(cell(results[f], n) for f in folds)} | "
            f"{mean[n]:.4g} ± {std[n]:.2g} |" for n in names]
  lines += ["", f"Mean ± sample standard deviation (ddof=1) over the {len(folds)} "
            "folds. validation/* is each fold's held-out fold; test/* the test "
            "part, held out from every fold. Each fold's run: fold_<i>/."]
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["fold", *names])
  for f in folds:
    writer.writerow([f, *(results[f].get(n, "") for n in names)])
  writer.writerow(["mean", *(mean[n] for n in names)])
  writer.writerow(["std", *(std[n] for n in names)])
  return "\n".join(lines) + "\n", out.getvalue()


def _title(args: argparse.Namespace, options: dict[str, Any]) -> str:
  how = [w for w, on in (("stratified", options["stratify"]),
                         (f"grouped by {options['group_column']!r}",
                          options["group_column"])) if on]
  return (f"{args.folds}-fold{' ' + ', '.join(how) if how else ''} "
          f"cross-validation of {args.config} (seed {options['seed']})")

