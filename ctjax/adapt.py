"""Continual adaptation: `ctjax adapt`, once, or following data as it arrives.

  ctjax adapt --workdir PARENT --data NEW [--out CHILD] [--checkpoint latest|best]
              [--replay 0.3] [--validation-fraction 0.2] [--metric accuracy]
              [--tolerance 0.01] [--min-gain 0] [--config.KEY=VALUE ...]
  ctjax adapt --follow SOURCE --workdir DEPLOYED [--out ROOT] [--once]
              [--poll 60] [--window-rows 1000] [--psi 0.2 ...] (and the above)

Once: the run in CHILD (default PARENT-adapted-NAME, NAME the new file's) is a
`ctjax train` run of PARENT's config (`adapted_config`) with

  - its parameters warm-started from PARENT's chosen checkpoint
    (config.model_init, config.model_init_step) and a fresh optimizer;
  - as data, NEW divided into train and validation (seeded, stratified where
    PARENT's was), with a replay sample of PARENT's own training split mixed into
    train so that --replay of it is old (config.data.replay, see
    ctjax/data/splits.py), all encoded as PARENT's data were;
  - PARENT's schedule and duration, unless --config.* says otherwise.

Then PARENT's checkpoint and the candidate (CHILD's last checkpoint) are both
evaluated, by the task's `metrics` evaluator, on the old validation data
(PARENT's validation split) and the new (CHILD's). The candidate is promoted
when it improves --metric on the new data by more than --min-gain and loses at
most --tolerance of it on the old. CHILD/adapt.json records the decision, both
evaluations and the lineage: PARENT and its step, the sha256 of every data file
(NEW's, PARENT's, and PARENT's own lineage when it was adapted too) and the
replay sample's size and index digest. Exit status 0: promoted; 1: PARENT is
kept; 2: a mistake. Run again, it resumes a killed training, or repeats a made
decision.

Following: SOURCE is a folder where each new file is a window of data (written
whole, then renamed in: names starting with "." or ending in .tmp are not read
yet; files are taken in name order), or a JSONL file being appended, of which
each --window-rows complete lines become a window (written in the run's format,
csv or jsonl, to ROOT/windows/). Each window is compared with the deployed run's
reference (`ctjax monitor`, report in ROOT/monitor/WINDOW/); when a threshold is
crossed the deployed run is adapted to it (in ROOT/adapted/WINDOW/), and a
promoted candidate becomes the deployed run, whose reference the next windows
are compared with. A window that cannot be used (a malformed row, too few rows)
is recorded with its error and passed over; a mistake in the command stops it
before the first window. ROOT/follow.json holds the deployed run and every
window's decision, rewritten whole after each window (a killed follower repeats at most
the window it was in), and ROOT/decisions.md is its table. --once handles the
windows there are and exits (for cron); otherwise SOURCE is polled every --poll
seconds until interrupted.

Only runs whose whole model is in their checkpoints (no frozen parameters, as
with LoRA), trained without privacy or federation, are adapted.
"""
import argparse
import csv
import datetime
import glob
import hashlib
import io
import json
import os
import signal
import time
from typing import Any

import jax
import ml_collections

from ctjax import config as config_lib
from ctjax import drift
from ctjax import models
from ctjax import monitor
from ctjax import runs
from ctjax import sharding
from ctjax import writers
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.errors import UserError
from ctjax.evaluators import configured
from ctjax.evaluators import make_evaluators
from ctjax.evaluators import standalone

DECISION_FILE = "adapt.json"
FOLLOW_FILE = "follow.json"
# The two validation splits every adaptation is judged on.
OLD, NEW = "old_validation", "new_validation"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True,
                      help="the run to adapt (with --follow: the one deployed now)")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--data", help="the new data: a file (or glob) of the run's "
                      "schema, with labels")
  source.add_argument("--follow", help="a folder receiving files of new data, or "
                      "a JSONL file being appended")
  parser.add_argument("--out", default=None,
                      help="the adapted run's folder (default WORKDIR-adapted-NAME); "
                      "with --follow, the follower's (default WORKDIR-follow)")
  parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                      help="the parent's checkpoint that is warm-started from and "
                      "compared with")
  parser.add_argument("--replay", type=float, default=0.3,
                      help="the share of the parent's training examples in the "
                      "adapted run's training split")
  parser.add_argument("--validation-fraction", type=float, default=0.2,
                      help="the share of the new data held out to judge on")
  parser.add_argument("--metric", default=None,
                      help="the metric judged (default: the parent's "
                      "checkpoint.best_metric's, else accuracy, or loss for "
                      "regression); lower is better when its name has 'loss' "
                      "or 'error' in it, unless it is the best_metric, whose "
                      "best_mode says")
  parser.add_argument("--tolerance", type=float, default=0.01,
                      help="how much of --metric the candidate may lose on the "
                      "old validation data")
  parser.add_argument("--min-gain", type=float, default=0.0,
                      help="how much it must gain on the new, at least (strictly "
                      "more than this)")
  parser.add_argument("--once", action="store_true",
                      help="with --follow: handle the windows there are, then exit")
  parser.add_argument("--poll", type=float, default=60.0,
                      help="with --follow: seconds between looks at the source")
  parser.add_argument("--window-rows", type=int, default=1000,
                      help="with --follow of a JSONL file: lines per window")
  monitor.add_threshold_arguments(parser)
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


# --- Adapting once. -------------------------------------------------------------


def file_digests(spec: str) -> dict[str, str]:
  """{path: sha256} of the files a path or glob names ({} for other specs, such as
  TFDS split strings)."""
  digests = {}
  for path in sorted(glob.glob(os.path.expanduser(str(spec)))):
    if os.path.isfile(path):
      sha = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          sha.update(block)
      digests[os.path.abspath(path)] = sha.hexdigest()
  return digests


def data_digests(data_config: ml_collections.ConfigDict) -> dict[str, str]:
  """The sha256 of every file a data config reads directly (its path and its
  splits' specs; a replayed run's files are in that run's lineage)."""
  specs = [data_config.get("path")] + list(dict(data_config.get("splits") or {}).values())
  digests = {}
  for spec in specs:
    if isinstance(spec, str) and spec:
      digests.update(file_digests(spec))
  return digests


def metric_and_mode(config: ml_collections.ConfigDict,
                    metric: str | None) -> tuple[str, str]:
  """The metric judged and whether higher ("max") or lower ("min") is better."""
  best = config.checkpoint.best_metric
  if metric is None and best:
    return best.split("/")[-1], config.checkpoint.best_mode
  metric = metric or ("accuracy" if config.task == "classification" else "loss")
  if best and best.split("/")[-1] == metric:
    return metric, config.checkpoint.best_mode
  return metric, "min" if "loss" in metric or "error" in metric else "max"


def _check_adaptable(config: ml_collections.ConfigDict, parent: str) -> None:
  why = None
  if config.privacy:
    why = ("config.privacy: replaying its training data would spend privacy "
           "budget that no accountant here tracks")
  elif config.federated:
    why = "config.federated: its data is at the sites, not here to replay"
  elif any(options == "frozen" for _, options in config.optim.groups):
    why = ("config.optim.groups freezes parameters, which its checkpoints do not "
           "hold (LoRA); warm-starting needs the whole model")
  if why:
    raise UserError(f"{parent} cannot be adapted: {why}")


def adapted_config(parent_config: ml_collections.ConfigDict, parent: str, step: int,
                   data: str, *, replay: float, validation_fraction: float,
                   overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """PARENT's config turned into its adaptation to `data` (see the module's
  docstring); `overrides` ("KEY=VALUE") apply last."""
  config = ml_collections.ConfigDict(parent_config.to_dict())
  config.resume = ""
  config.model_init = os.path.abspath(parent)
  config.model_init_step = step
  config.model_init_skip = ()  # PARENT's checkpoint holds every parameter.
  data_config = config.data
  data_config.path = os.path.abspath(os.path.expanduser(data))
  data_config.splits = {}
  data_config.split_fractions = {"train": 1 - validation_fraction,
                                 "validation": validation_fraction}
  data_config.cross_validation = None
  data_config.replay = {"workdir": os.path.abspath(parent), "fraction": replay,
                        "seed": int(parent_config.seed)}
  # Only train and validation exist: other splits named are dropped.
  kept = lambda names: tuple(n for n in names if n in ("train", "validation"))
  config.eval_splits = kept(config.eval_splits)
  config.final_eval_splits = kept(config.final_eval_splits)
  evaluators = []
  for evaluator in configured(config):
    for key in ("splits", "final_splits"):
      if key in evaluator:
        evaluator[key] = kept(evaluator[key])
    evaluators.append(evaluator)
  config.evaluators = tuple(evaluators)
  # The next window is compared with what this run saw.
  config.reference_statistics = True
  for override in overrides:
    config_lib.apply_override(config, override)
  return config


def _evaluation_loaders(config: ml_collections.ConfigDict, parent: str,
                        parent_config: ml_collections.ConfigDict
                        ) -> dict[str, pipeline.BatchLoader]:
  """Loaders of the old validation split (PARENT's) and the new (the adapted
  run's), both encoded with PARENT's data_state.json, as the adapted run's are."""
  model = models.get_model(config.model)
  old = standalone.open_saved_splits(parent_config.data, parent, model)
  if "validation" not in old:
    raise UserError(f"{parent}: its data has no 'validation' split "
                    f"({', '.join(old)}) to judge an adaptation on")
  # The replay changes only the training split: left out, PARENT's data are not
  # read a second time.
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.replay = None
  new = standalone.open_saved_splits(data_config, parent, model)
  preprocess = ops.compose(config.data.get("preprocess"))
  return {name: pipeline.BatchLoader(split, preprocess,
                                     num_threads=config.data.num_threads)
          for name, split in ((OLD, old["validation"]), (NEW, new["validation"]))}


def evaluate(config: ml_collections.ConfigDict, workdir: str, which: str,
             loaders: dict[str, pipeline.BatchLoader], output_dir: str
             ) -> dict[str, float]:
  """{"step": N, "old_validation/accuracy": ..., ...}: the task's metrics of the
  checkpoint `which` of the run in `workdir` on both validation splits (with
  predictions and statistics in output_dir/SPLIT/)."""
  metrics = [e for e in configured(config) if e.get("type") == "metrics"][0]
  metrics = {**metrics, "every": 0, "splits": (OLD, NEW), "final_splits": (OLD, NEW)}
  metrics.pop("name", None)
  model = models.get_model(config.model)
  mesh = sharding.make_mesh(config.mesh)
  (evaluator,) = make_evaluators(
      [metrics], model=model, loaders=loaders, mesh=mesh,
      batch_size=standalone.eval_batch_size(config, mesh), data_config=config.data,
      train_batch_size=config.batch_size, train_examples=None, task=config.task,
      output_dir=output_dir)
  _, _, params, step = runs.load_model(workdir, which, config=config)
  return {"step": step, **evaluator.run(params, final=True)}


def decide(parent: dict[str, float], candidate: dict[str, float], *, metric: str,
           mode: str, tolerance: float, min_gain: float) -> tuple[bool, list[str]]:
  """(promoted, reasons): the candidate gains more than `min_gain` of `metric` on
  the new validation data and loses at most `tolerance` on the old."""
  sign = 1.0 if mode == "max" else -1.0
  better = "higher" if mode == "max" else "lower"
  reasons, verdicts = [], []
  for split in (NEW, OLD):
    before, after = parent[f"{split}/{metric}"], candidate[f"{split}/{metric}"]
    gain = sign * (after - before)
    ok = gain > min_gain if split == NEW else gain >= -tolerance
    verdicts.append(ok)
    need = (f"must gain more than {min_gain:.4g}" if split == NEW else
            f"may lose at most {tolerance:.4g}")
    reasons.append(f"{split}/{metric} {before:.4f} -> {after:.4f} ({better} is "
                   f"better; {need}): {'ok' if ok else 'not met'}")
  return all(verdicts), reasons


def _check_options(*, replay: float, validation_fraction: float,
                   tolerance: float) -> None:
  if not 0 <= replay < 1:
    raise UserError(f"--replay={replay:g}: the share of old examples in the "
                    "training data; give 0 <= share < 1")
  if not 0 < validation_fraction < 1:
    raise UserError(f"--validation-fraction={validation_fraction:g}: give a share "
                    "between 0 and 1")
  if tolerance < 0:
    raise UserError(f"--tolerance={tolerance:g}: give a number >= 0")


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def adapt(parent: str, data: str, *, out: str | None = None,
          checkpoint: str = "latest", replay: float = 0.3,
          validation_fraction: float = 0.2, metric: str | None = None,
          tolerance: float = 0.01, min_gain: float = 0.0,
          overrides: list[str] = ()) -> dict[str, Any]:
  """Adapts the run in `parent` to `data` (see the module's docstring); returns
  the record written to OUT/adapt.json."""
  _check_options(replay=replay, validation_fraction=validation_fraction,
                 tolerance=tolerance)
  if not glob.glob(os.path.expanduser(data)):
    raise UserError(f"--data={data}: no such file; give new data of the run's "
                    f"schema (relative paths start at {os.getcwd()})")
  parent_config = runs.read_config(parent)
  _check_adaptable(parent_config, parent)
  name = os.path.splitext(os.path.basename(data.rstrip("/")))[0] or "data"
  child = out or f"{parent.rstrip('/')}-adapted-{name}"
  done = _read_json(os.path.join(child, DECISION_FILE))
  if done is not None:
    writers.info(f"{child}: adapted before; its decision: {done['decision']} "
                 f"(delete {DECISION_FILE} to evaluate and decide again)")
    return done
  metric, mode = metric_and_mode(parent_config, metric)
  step = runs.choose_checkpoint_step(parent, parent_config, checkpoint)
  config = adapted_config(parent_config, parent, step, data, replay=replay,
                          validation_fraction=validation_fraction,
                          overrides=overrides)
  config_lib.validate(config, device_count=jax.device_count(),
                      process_count=jax.process_count())
  earlier = _read_json(os.path.join(child, "config.json"))
  if earlier is not None and (earlier.get("model_init"), earlier["data"].get("path")) != (
      config.model_init, config.data.path):
    raise UserError(f"--out={child}: holds the adaptation of "
                    f"{earlier.get('model_init')} to {earlier['data'].get('path')}; "
                    "give another --out")
  # Every mistake in the data shows here, before anything compiles.
  loaders = _evaluation_loaders(config, parent, parent_config)

  from ctjax import train  # pylint: disable=g-import-not-at-top
  train.train(config, child)
  evaluations = {
      "parent": evaluate(parent_config, parent, str(step), loaders,
                         os.path.join(child, "adapt", "parent")),
      "candidate": evaluate(config, child, "latest", loaders,
                            os.path.join(child, "adapt", "candidate"))}
  for who, results in evaluations.items():
    if f"{NEW}/{metric}" not in results:
      raise UserError(f"--metric={metric}: the task's metrics are "
                      f"{', '.join(k.split('/', 1)[1] for k in results if k.startswith(NEW))}")
  promoted, reasons = decide(evaluations["parent"], evaluations["candidate"],
                             metric=metric, mode=mode, tolerance=tolerance,
                             min_gain=min_gain)
  parent_decision = _read_json(os.path.join(parent, DECISION_FILE))
  record = {
      "decision": "promoted" if promoted else "kept the parent",
      "promoted": promoted, "reasons": reasons,
      "metric": metric, "mode": mode, "tolerance": tolerance, "min_gain": min_gain,
      "evaluations": evaluations,
      "lineage": {
          "parent": {"workdir": os.path.abspath(parent), "checkpoint": checkpoint,
                     "step": step, "data_sha256": data_digests(parent_config.data),
                     "lineage": parent_decision and parent_decision["lineage"]},
          "data_sha256": data_digests(config.data),
          "splits": _read_json(os.path.join(child, "splits.json")),
      },
      "time": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
  }
  if jax.process_index() == 0:
    with writers.atomic_file(os.path.join(child, DECISION_FILE)) as f:
      json.dump(record, f, indent=2)
  writers.info("\n".join([f"{child}: {record['decision']}", *reasons]))
  return record


# --- Following new data. --------------------------------------------------------


def _ready(path: str) -> bool:
  name = os.path.basename(path)
  return os.path.isfile(path) and not (name.startswith(".") or name.endswith(".tmp"))


def _cut_jsonl_windows(source: str, state: dict[str, Any], windows: str,
                       rows: int, data_config: ml_collections.ConfigDict) -> None:
  """Writes each `rows` complete new lines of the JSONL file `source` (from
  state["jsonl_offset"] on) as a window file in `windows`, in the run's format,
  and advances the offset past them."""
  if data_config.source not in ("csv", "jsonl"):
    raise UserError(f"--follow={source}: a JSONL file becomes windows of a csv or "
                    f"jsonl run; this run reads config.data.source="
                    f"{data_config.source!r}: give a folder of its files")
  with open(source, "rb") as f:
    f.seek(state["jsonl_offset"])
    lines = f.read().split(b"\n")[:-1]  # The last one may be cut short.
  os.makedirs(windows, exist_ok=True)
  while len(lines) >= rows:
    window, lines = lines[:rows], lines[rows:]
    line = state["jsonl_lines"]
    name = f"window_{state['jsonl_windows']:05d}"
    if data_config.source == "jsonl":
      text = b"".join(l + b"\n" for l in window).decode()
    else:
      text = _as_csv(window, source, line)
    ext = ".csv" if data_config.source == "csv" else ".jsonl"
    with writers.atomic_file(os.path.join(windows, name + ext)) as f:
      f.write(text)
    state["jsonl_offset"] += sum(len(l) + 1 for l in window)
    state["jsonl_lines"] += rows
    state["jsonl_windows"] += 1


def _as_csv(lines: list[bytes], source: str, first_line: int) -> str:
  """JSON objects of one set of keys as CSV rows, under a header of them."""
  out = io.StringIO()
  writer, keys = csv.writer(out), None
  for number, line in enumerate(lines, first_line + 1):
    try:
      record = json.loads(line)
    except ValueError as e:
      raise UserError(f"{source}:{number}: not JSON ({e}); fix the line") from None
    if not isinstance(record, dict) or (keys is not None and list(record) != keys):
      raise UserError(f"{source}:{number}: expected an object with the keys "
                      f"{keys or 'of a table row'}; fix the line")
    if keys is None:
      keys = list(record)
      writer.writerow(keys)
    writer.writerow(["" if v is None else v for v in record.values()])
  return out.getvalue()


def _decisions_table(state: dict[str, Any]) -> str:
  lines = ["| window | deployed model's accuracy | drift | crossed | adapted | "
           "decision | deployed after |", "|---|---|---|---|---|---|---|"]
  for w in state["windows"]:
    accuracy = "-" if w["accuracy"] is None else f"{w['accuracy']:.3f}"
    drifted = ("error" if w["drifted"] is None else
               "yes" if w["drifted"] else "no")
    lines.append(f"| {w['window']} | {accuracy} | {drifted} | "
                 f"{', '.join(w['crossed']) or '-'} | {w.get('adapted') or '-'} | "
                 f"{w.get('decision') or w.get('error') or '-'} | {w['deployed']} |")
  return "\n".join(lines) + "\n"


def follow(source: str, deployed: str, *, out: str | None, once: bool, poll: float,
           window_rows: int, thresholds: drift.Thresholds, adapt_options: dict[str, Any],
           overrides: list[str] = ()) -> dict[str, Any]:
  """Monitors, and adapts to, each new window of `source` (see the module's
  docstring); returns the follower's state, as in ROOT/follow.json."""
  if not os.path.exists(source):
    raise UserError(f"--follow={source}: no such folder or file")
  jsonl = os.path.isfile(source)
  if jsonl and window_rows < 1:
    raise UserError(f"--window-rows={window_rows}: give a positive number")
  if jax.process_count() > 1:
    raise UserError("--follow runs as one process; start it without "
                    "jax.distributed (a single adaptation may use many)")
  # Mistakes in the command stop it now; a bad window later is only recorded.
  _check_options(**{k: adapt_options[k] for k in
                    ("replay", "validation_fraction", "tolerance")})
  adapted_config(runs.read_config(deployed), deployed, 0, str(source), replay=0.0,
                 validation_fraction=0.5, overrides=overrides)
  drift.load_reference(deployed)
  root = out or f"{deployed.rstrip('/')}-follow"
  state_path = os.path.join(root, FOLLOW_FILE)
  state = _read_json(state_path) or {
      "source": os.path.abspath(source), "deployed": os.path.abspath(deployed),
      "windows": [], "jsonl_offset": 0, "jsonl_lines": 0, "jsonl_windows": 0}
  if state["source"] != os.path.abspath(source):
    raise UserError(f"--out={root}: follows {state['source']}; give another --out")
  os.makedirs(root, exist_ok=True)
  folder = os.path.join(root, "windows") if jsonl else source
  stop = []
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
  try:
    while not stop:
      if jsonl:
        _cut_jsonl_windows(source, state, folder, window_rows,
                           runs.read_config(state["deployed"]).data)
        _save(state_path, state)
      seen = {w["window"] for w in state["windows"]}
      for path in sorted(p for p in glob.glob(os.path.join(folder, "*"))
                         if _ready(p) and os.path.basename(p) not in seen):
        state["windows"].append(_handle_window(
            path, state["deployed"], root, thresholds, adapt_options, overrides))
        state["deployed"] = state["windows"][-1]["deployed"]
        _save(state_path, state)
        if stop:
          break
      if once:
        break
      time.sleep(poll)
  finally:
    signal.signal(signal.SIGTERM, previous)
  writers.info(f"deployed: {state['deployed']}; {len(state['windows'])} windows in "
               f"{state_path}")
  return state


def _handle_window(path: str, deployed: str, root: str, thresholds: drift.Thresholds,
                   adapt_options: dict[str, Any], overrides: list[str]
                   ) -> dict[str, Any]:
  """The record of one window: monitored, and adapted to when it drifted."""
  name = os.path.basename(path)
  stem = os.path.splitext(name)[0]
  record = {"window": name, "sha256": file_digests(path)[os.path.abspath(path)],
            "deployed": deployed}
  writers.info(f"--- window {name}: against {deployed}")
  try:
    return {**record, **_monitor_and_adapt(path, deployed, root, stem, thresholds,
                                           adapt_options, overrides)}
  except UserError as e:
    # A bad window (a malformed row, say) is recorded and passed over: the
    # follower keeps serving the windows after it.
    writers.info(f"window {name}: not used: {e}")
    return {**record, "error": str(e), "drifted": None, "crossed": [],
            "accuracy": None}


def _monitor_and_adapt(path: str, deployed: str, root: str, stem: str,
                       thresholds: drift.Thresholds, adapt_options: dict[str, Any],
                       overrides: list[str]) -> dict[str, Any]:
  report = monitor.check_drift(deployed, path, thresholds=thresholds,
                               out=os.path.join(root, "monitor", stem))
  accuracy = [row.new for row in report.rows if row.check == "accuracy"]
  record = {"drifted": report.drifted,
            # The deployed model's on the window, where it has labels.
            "accuracy": accuracy[0] if accuracy else None,
            "crossed": [f"{row.name} ({'+'.join(row.crossed)})"
                        for row in report.crossed]}
  if report.drifted:
    child = os.path.join(root, "adapted", stem)
    decision = adapt(deployed, path, out=child, overrides=overrides, **adapt_options)
    record.update(adapted=child, decision=decision["decision"],
                  deployed=child if decision["promoted"] else deployed)
  return record


def _save(path: str, state: dict[str, Any]) -> None:
  if jax.process_index() != 0:
    return
  with writers.atomic_file(path) as f:
    json.dump(state, f, indent=2)
  with writers.atomic_file(os.path.join(os.path.dirname(path), "decisions.md")) as f:
    f.write(_decisions_table(state))


def adapt_command(args: argparse.Namespace, overrides: list[str]) -> int:
  """`ctjax adapt`: 0 when promoted (with --follow: always, when stopped), 1 when
  the parent is kept."""
  options = dict(checkpoint=args.checkpoint, replay=args.replay,
                 validation_fraction=args.validation_fraction, metric=args.metric,
                 tolerance=args.tolerance, min_gain=args.min_gain)
  if args.follow:
    follow(args.follow, args.workdir, out=args.out, once=args.once, poll=args.poll,
           window_rows=args.window_rows, thresholds=monitor.thresholds(args),
           adapt_options=options, overrides=overrides)
    return 0
  record = adapt(args.workdir, args.data, out=args.out, overrides=overrides,
                 **options)
  return 0 if record["promoted"] else 1
