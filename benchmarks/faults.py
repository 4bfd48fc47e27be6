"""Faults, tried many times: a run is hurt, then run again, and nothing is lost.

  python benchmarks/faults.py --trials 60          # the long version (README figures)
  python benchmarks/faults.py --trials 4 --only kill,damage

Every trial hurts a real `ctjax train` subprocess: a small MLP on scikit-learn's
digits on 8 fake CPU devices, 60 steps, evaluation every 20, an asynchronous
checkpoint every 10 (the last 5 kept). The uninterrupted run, made once, is the
reference. tests/test_faults.py runs the same trials, a few of each.

  kill       SIGKILL at a moment drawn from a seeded RNG, aimed at a phase in
             turn: a step, an evaluation, an asynchronous save, the final save.
             Where it landed is read afterwards from the run's stdout (progress
             lines) and its checkpoints folder (a `*.orbax-checkpoint-tmp*` folder
             is a save in progress; the loop goes on meanwhile, so "asynchronous
             save, during a step"). The same command again must resume from the
             newest checkpoint and end with a train state (params, optimizer
             state, RNG, step) and loss curve bitwise identical to the reference's.
  damage     The newest checkpoints damaged on disk: an array file truncated or
             deleted, the tree metadata or the step metadata deleted, the commit
             marker deleted. The same command must name each in one warning line,
             print no traceback, resume from the newest intact one, and end
             bitwise identical.
  disk-full  The checkpoints folder on a tmpfs of its own (needs permission to
             mount; skipped otherwise), filled up, as another program would, once
             the first checkpoint is written. The run must stop with one line
             `ctjax: error: ...` and exit status 2, naming the folder and the space
             a checkpoint needs, with no traceback; the newest checkpoint must
             read back; with room made, the same command must end bitwise
             identical.
  hang       A training batch that never comes (the input function sleeps), with
             `watchdog_minutes=0.05`: the run must exit with status 3 within
             seconds of the limit, every thread's stack on stderr, the sleeping
             frame among them.
  peer       Two processes (gloo collectives on localhost); one SIGKILLed after the
             first checkpoint (process 1 and process 0, the coordinator, in turn;
             with and without the watchdog). The survivor must exit non-zero
             within a bound (the watchdog's limit, else JAX's heartbeat timeout of
             100 s, plus slack), its stderr saying why; both restarted must resume
             from the newest checkpoint and finish, within float32 rounding of
             the one-process reference (gloo sums in another order).

Kill and damage trials compare bit for bit: the same program on the same 8 devices
is deterministic, and a resumed run sees exactly the batches it would have seen.
"""
import argparse
import collections
import dataclasses
import errno
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable

import numpy as np
import tensorstore as ts

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
# pylint: disable=wrong-import-position
import multiprocess_util
import run_util
# pylint: enable=wrong-import-position

STEPS, EVAL_EVERY, CHECKPOINT_EVERY, KEEP = 60, 20, 10, 5
CONFIG = {**run_util.MLP_CONFIG, "train_duration": STEPS, "eval_every": EVAL_EVERY,
          "checkpoint": {"every": CHECKPOINT_EVERY, "keep": KEEP}}
# TensorBoard files are not what these trials are about: with TensorFlow hidden (as
# tests/test_no_tensorflow.py does) a run starts ~7 s of CPU sooner, and prints
# one line saying so on stderr.
WITHOUT_TENSORFLOW = ("import sys\nfor name in ('tensorflow', 'tensorboard', "
                      "'tensorflow_datasets'):\n  sys.modules[name] = None\n")
KILL_PHASES = ("step", "evaluation", "asynchronous save", "final save")
# Two processes x 4 devices sum gradients in another order than one process with
# 8: after 60 Adam steps the MLP's parameters (magnitudes up to 0.43) differ from
# the reference by at most 3e-8 (measured, uninterrupted); a wrong resume (stale
# optimizer state, other batches) by orders of magnitude more.
PEER_RTOL, PEER_ATOL = 1e-5, 1e-6
# Killed while the other process waits in a collective: gloo's own thread throws
# and the survivor aborts at once. Otherwise JAX's coordination service notices
# the missing heartbeats (its timeout is 100 s) and aborts it; with
# watchdog_minutes set, ctjax's watchdog may end it first.
PEER_ENDINGS = {
    "ctjax watchdog": "ctjax: error: no progress",
    "JAX coordination service": "JAX distributed service detected fatal errors",
    "gloo error (no clear line)": "gloo::",
}
PEER_HEARTBEAT_BOUND_S = 100 + 60


@dataclasses.dataclass
class Trial:
  """One fault and what came of it; `failure` is empty when nothing was lost."""
  fault: str
  phase: str = ""        # where a kill landed, which damage, how a peer ended
  failure: str = ""
  seconds: float = float("nan")  # hang, peer: fault to exit

  def check(self, condition: bool, message: str) -> None:
    if not condition and not self.failure:
      self.failure = message


@dataclasses.dataclass
class Setup:
  """The experiment file and the uninterrupted reference run."""
  config: str
  reference: pathlib.Path

  def start(self, workdir: os.PathLike, overrides: run_util.Overrides = None, *,
            prelude: str = "", devices: int = 8,
            extra_env: dict[str, str] | None = None) -> run_util.Run:
    return run_util.start(self.config, workdir, overrides, devices=devices,
                          extra_env=extra_env, prelude=WITHOUT_TENSORFLOW + prelude)

  def train(self, workdir: os.PathLike, overrides: run_util.Overrides = None
            ) -> subprocess.CompletedProcess:
    return run_util.finish(self.start(workdir, overrides), check=False)

  def check_like_reference(self, trial: Trial, workdir: pathlib.Path,
                           result: subprocess.CompletedProcess,
                           resumes_from: int | None) -> None:
    """`result` (a rerun on `workdir`) resumed from `resumes_from` and ended as
    the reference, bit for bit."""
    trial.check(result.returncode == 0, f"the rerun exited with {result.returncode}: "
                f"{result.stderr[-2000:]}")
    if trial.failure:
      return
    origin = re.search(r"^(resumed from .* step (\d+)|initialised from scratch)",
                       result.stdout, re.M)
    resumed = int(origin[2]) if origin and origin[2] else None
    trial.check(resumed == resumes_from, f"the rerun resumed from step {resumed}, "
                f"not from the newest intact checkpoint {resumes_from}")
    try:
      run_util.assert_trees_close(run_util.saved_state(workdir, STEPS),
                                  run_util.saved_state(self.reference, STEPS))
    except AssertionError as e:
      trial.check(False, f"final state differs from the reference: {e}")
    trial.check(run_util.curve(workdir) == run_util.curve(self.reference),
                "the loss curve differs from the reference")


def make_setup(folder: pathlib.Path) -> Setup:
  """Writes the experiment file and trains the reference in `folder`."""
  setup = Setup(run_util.write_config(folder, CONFIG), folder / "reference")
  result = setup.train(setup.reference)
  if result.returncode != 0:
    raise RuntimeError(f"the reference run failed:\n{result.stderr[-3000:]}")
  return setup


# --- kill ---------------------------------------------------------------------


def _trained_step(stdout: str) -> int:
  steps = re.findall(rf"^step (\d+)/{STEPS} ", stdout, re.M)
  return int(steps[-1]) if steps else 0


def _evaluated(stdout: str, step: int) -> bool:
  return re.search(rf"^step {step}: ", stdout, re.M) is not None


def _partial_saves(workdir: pathlib.Path) -> list[str]:
  directory = workdir / "checkpoints"
  return ([p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
          if directory.is_dir() else [])


def landed_phase(stdout: str, workdir: pathlib.Path) -> str:
  """Where a run was when it died, from its progress lines and checkpoints folder.

  A periodic save is written in the background while the loop goes on, so a kill
  can land in both: "asynchronous save, during a step".
  """
  trained = _trained_step(stdout)
  if trained == 0:
    return "start-up"
  if trained == STEPS and _evaluated(stdout, STEPS):
    return "final save"  # Or closing after it: the final eval line is out.
  # An evaluation step's progress line is out, its results are not.
  evaluating = ((trained % EVAL_EVERY == 0 or trained == STEPS)
                and not _evaluated(stdout, trained))
  if _partial_saves(workdir):
    return "asynchronous save, during " + ("evaluation" if evaluating else "a step")
  return "evaluation" if evaluating else "step"


def _wait_for(run: run_util.Run, condition: Callable[[], bool]) -> None:
  """Polls every 2 ms until `condition` or the run's end."""
  deadline = time.monotonic() + run_util.TIMEOUT_S
  while run.running() and not condition() and time.monotonic() < deadline:
    time.sleep(0.002)


def kill_trial(setup: Setup, workdir: pathlib.Path, rng: np.random.Generator,
               target: str | None = None) -> Trial:
  """SIGKILL aimed at `target` (drawn if None) at a random moment, then rerun."""
  target = target or str(rng.choice(KILL_PHASES))
  run = setup.start(workdir)
  stdout = lambda: run_util.output_so_far(run.stdout)
  if target == "step":
    # Saves run in the background for most of the 10 steps between them on this
    # 2-core machine: aim at a gap between two.
    at_step = int(rng.integers(1, STEPS))
    _wait_for(run, lambda: _trained_step(stdout()) >= at_step
              and not _partial_saves(workdir))
    delay = rng.uniform(0, 0.005)
  elif target == "evaluation":  # It starts as the step's progress line is out.
    at_step = int(rng.choice(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY)))
    _wait_for(run, lambda: _trained_step(stdout()) >= at_step)
    delay = rng.uniform(0, 0.01)
  elif target == "asynchronous save":
    _wait_for(run, lambda: bool(_partial_saves(workdir)))
    delay = rng.uniform(0, 0.02)
  else:
    _wait_for(run, lambda: _evaluated(stdout(), STEPS))
    delay = rng.uniform(0, 0.3)
  time.sleep(delay)
  run.process.send_signal(signal.SIGKILL)
  killed = run_util.finish(run, check=False)
  trial = Trial("kill", phase=landed_phase(killed.stdout, workdir))
  if killed.returncode != -signal.SIGKILL:
    trial.phase = "after exit"  # It finished before the kill: still a rerun.
  steps = run_util.checkpoint_steps(workdir)
  setup.check_like_reference(trial, workdir, setup.train(workdir),
                             resumes_from=steps[-1] if steps else None)
  return trial


# --- damage -------------------------------------------------------------------


def _array_file(step_dir: pathlib.Path) -> tuple[pathlib.Path, int]:
  """The array file with the most bytes in use, and where they end, by the OCDBT
  index that TensorStore keeps in `state/`. (Orbax leaves bytes and files there
  that the index does not use, which a restore rightly never misses; chunks up
  to 1 KiB sit in the index itself.)"""
  state = step_dir / "state"
  kvstore = ts.KvStore.open(f"file://{state}/").result()
  used = collections.Counter()  # file -> end of its last chunk

  def visit(location: str) -> None:
    node = json.dumps(ts.ocdbt.dump(kvstore, location).result(), default=str)
    for prefix, name, offset, length in re.findall(
        r'value:([^:"]*):(d/[0-9a-f]+):(\d+):(\d+)', node):
      path = state / prefix / name
      used[path] = max(used[path], int(offset) + int(length))
    for child in re.findall(r'"(btreenode::[^"]+)"', node):
      visit(child)

  visit(ts.ocdbt.dump(kvstore).result()["versions"][-1]["root"]["location"])
  return used.most_common(1)[0]


def _truncate_array_file(step_dir: pathlib.Path) -> None:
  path, used_bytes = _array_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(used_bytes // 2)


DAMAGES: dict[str, Callable[[pathlib.Path], None]] = {
    "array file truncated": _truncate_array_file,
    "array file deleted": lambda d: _array_file(d)[0].unlink(),
    "tree metadata deleted": lambda d: (d / "state" / "_METADATA").unlink(),
    "step metadata deleted": lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
    "commit marker deleted": lambda d: (d / "commit_success.txt").unlink(),
}


def damage_trial(setup: Setup, workdir: pathlib.Path, kinds: list[str]) -> Trial:
  """A copy of the reference with its newest checkpoints damaged by `kinds`
  (newest first), run again."""
  trial = Trial("damage", phase=" + ".join(kinds))
  shutil.copytree(setup.reference, workdir)
  steps = run_util.checkpoint_steps(workdir)
  damaged = steps[::-1][:len(kinds)]
  for step, kind in zip(damaged, kinds):
    DAMAGES[kind](workdir / "checkpoints" / str(step))
  result = setup.train(workdir)
  warnings = [l for l in result.stderr.splitlines()
              if l.startswith("ctjax: warning: checkpoint")]
  trial.check(len(warnings) == len(kinds), f"{len(warnings)} warning lines for "
              f"{len(kinds)} damaged checkpoints:\n{result.stderr[-3000:]}")
  trial.check("Traceback" not in result.stderr,
              f"a traceback on stderr:\n{result.stderr[-3000:]}")
  for step, line in zip(damaged, warnings):
    trial.check(f"{workdir / 'checkpoints' / str(step)} " in line,
                f"the warning does not name checkpoint {step}: {line}")
    trial.check((workdir / "checkpoints" / f"{step}.damaged").is_dir(),
                f"checkpoint {step} was not set aside as {step}.damaged")
  setup.check_like_reference(trial, workdir, result,
                             resumes_from=steps[-len(kinds) - 1])
  return trial


# --- disk full ----------------------------------------------------------------


def _mount_tmpfs(directory: pathlib.Path, size_bytes: int) -> str:
  """Mounts a tmpfs of `size_bytes` on `directory`; returns why not, or ""."""
  try:
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}",
                             "tmpfs", str(directory)], capture_output=True, text=True)
  except FileNotFoundError:
    return "no mount command"
  return "" if result.returncode == 0 else (result.stderr.strip() or "mount failed")


def _fill(path: pathlib.Path) -> None:
  """Writes zeros to `path` until its device has no room left."""
  with open(path, "wb", buffering=0) as f:
    try:
      while True:
        f.write(bytes(1 << 16))
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise
    try:  # The last pages, smaller than a chunk.
      while True:
        f.write(bytes(512))
    except OSError as e:
      if e.errno != errno.ENOSPC:
        raise


def disk_full_trial(setup: Setup, workdir: pathlib.Path) -> Trial:
  """The checkpoints folder on its own small file system, filled up (as another
  program would) once the first checkpoint is written."""
  trial = Trial("disk full")
  checkpoints = workdir / "checkpoints"
  checkpoints.mkdir(parents=True)
  why_not = _mount_tmpfs(checkpoints, 8 << 20)
  if why_not:
    trial.phase = f"skipped: cannot mount a tmpfs ({why_not})"
    return trial
  filler = checkpoints / "filler"  # Not a step folder: Orbax passes it by.
  try:
    run = setup.start(workdir)
    _wait_for(run, lambda: bool(run_util.checkpoint_steps(workdir)))
    _fill(filler)
    result = run_util.finish(run, check=False)
    errors = [l for l in result.stderr.splitlines() if l.startswith("ctjax: error:")]
    trial.check(result.returncode == 2, f"exit status {result.returncode}, not 2:\n"
                f"{result.stderr[-3000:]}")
    trial.check(len(errors) == 1 and str(checkpoints) in errors[0]
                and re.search(r"needs about \d+\.\d+ MiB", errors[0]) is not None,
                f"not one line naming the folder and the space needed:\n"
                f"{result.stderr[-3000:]}")
    trial.check("Traceback" not in result.stderr,
                f"a traceback on stderr:\n{result.stderr[-3000:]}")
    trial.check(result.stderr.splitlines()[-1:] == errors[:1],
                f"the error is not the last line:\n{result.stderr[-3000:]}")
    steps = run_util.checkpoint_steps(workdir)
    if trial.failure:
      return trial
    trial.phase = f"stopped after checkpoint {steps[-1]}"
    trial.check(int(run_util.saved_state(workdir, steps[-1])["step"]) == steps[-1],
                f"checkpoint {steps[-1]} does not read back as step {steps[-1]}")
    filler.unlink()  # Room made: the same command resumes, ends as the reference.
    setup.check_like_reference(trial, workdir, setup.train(workdir),
                               resumes_from=steps[-1])
  finally:
    subprocess.run(["umount", str(checkpoints)], check=True)
  return trial


# --- hang ---------------------------------------------------------------------

# The input function never returns at step 5 (the batch for the 6th step).
HANG_PRELUDE = """
import time
from ctjax.data import pipeline
real_train_batch = pipeline.train_batch

def sleep_forever():
  while True:
    time.sleep(3600)

def train_batch(loader, step, **kwargs):
  if step == 5:
    sleep_forever()
  return real_train_batch(loader, step, **kwargs)

pipeline.train_batch = train_batch
"""


def hang_trial(setup: Setup, workdir: pathlib.Path, minutes: float = 0.05) -> Trial:
  """A run whose input hangs, with the watchdog on: it must end itself."""
  trial = Trial("hang")
  run = setup.start(workdir, {"watchdog_minutes": minutes}, prelude=HANG_PRELUDE)
  last_progress, last_step = time.monotonic(), 0
  while run.running():
    step = _trained_step(run_util.output_so_far(run.stdout))
    if step != last_step:
      last_progress, last_step = time.monotonic(), step
    time.sleep(0.01)
  trial.seconds = time.monotonic() - last_progress
  result = run_util.finish(run, check=False)
  trial.check(result.returncode == 3, f"exit status {result.returncode}, not 3:\n"
              f"{result.stderr[-3000:]}")
  trial.check(0 < last_step < STEPS, f"trained to step {last_step} before hanging")
  limit = 60 * minutes
  # The last progress line can come up to a step before the last mark.
  trial.check(limit - 1 <= trial.seconds <= limit + 10,
              f"exited {trial.seconds:.1f} s after the last progress (limit {limit} s)")
  errors = [l for l in result.stderr.splitlines() if l.startswith("ctjax: error:")]
  trial.check(len(errors) == 1 and "no progress" in errors[0],
              f"not one line saying the run is hung:\n{result.stderr[-3000:]}")
  trial.check("most recent call first" in result.stderr
              and "in sleep_forever" in result.stderr,
              f"the stacks do not show the sleeping frame:\n{result.stderr[-3000:]}")
  return trial


# --- peer ---------------------------------------------------------------------


def _start_two(setup: Setup, workdir: pathlib.Path, overrides: run_util.Overrides
               ) -> list[run_util.Run]:
  address = f"127.0.0.1:{multiprocess_util.free_port()}"
  return [setup.start(workdir, overrides, devices=4, extra_env={
      "JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": str(i)}) for i in range(2)]


def peer_trial(setup: Setup, workdir: pathlib.Path, rng: np.random.Generator, *,
               victim: int = 1, watchdog_minutes: float = 0.0) -> Trial:
  """Two processes; `victim` SIGKILLed after the first checkpoint; restart both."""
  trial = Trial("peer")
  overrides = {"watchdog_minutes": watchdog_minutes}
  runs = _start_two(setup, workdir, overrides)
  try:
    _wait_for(runs[victim], lambda: bool(run_util.checkpoint_steps(workdir)))
    time.sleep(rng.uniform(0, 0.5))
    runs[victim].process.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    survivor = runs[1 - victim]
    bound = (60 * watchdog_minutes + 30 if watchdog_minutes
             else PEER_HEARTBEAT_BOUND_S)
    while survivor.running() and time.monotonic() - killed_at < bound:
      time.sleep(0.05)
    trial.seconds = time.monotonic() - killed_at
  finally:
    for run in runs:
      run.kill()
  ended = run_util.finish(survivor, check=False)
  run_util.finish(runs[victim], check=False)
  ending = next((name for name, text in PEER_ENDINGS.items()
                 if text in ended.stderr), "no line naming the cause")
  trial.phase = f"process {victim} killed: {ending}"
  trial.check(ended.returncode not in (0, None) and trial.seconds < bound,
              f"the survivor (exit {ended.returncode}) was still running "
              f"{trial.seconds:.0f} s after its peer died")
  trial.check(ending in PEER_ENDINGS, "the survivor's stderr names no cause:"
              f"\n{ended.stderr[-3000:]}")
  steps = run_util.checkpoint_steps(workdir)
  if trial.failure or not steps:
    trial.check(bool(steps), "no checkpoint to resume from")
    return trial
  restarted = [run_util.finish(r, check=False)
               for r in _start_two(setup, workdir, overrides)]
  trial.check(all(r.returncode == 0 for r in restarted),
              "the restarted processes failed:\n" + "\n".join(
                  r.stderr[-2000:] for r in restarted))
  if trial.failure:
    return trial
  origin = re.search(r"^resumed from .* step (\d+)", restarted[0].stdout, re.M)
  trial.check(origin is not None and int(origin[1]) == steps[-1],
              f"the restart did not resume from step {steps[-1]}")
  try:
    run_util.assert_trees_close(
        run_util.saved_state(workdir, STEPS)["params"],
        run_util.saved_state(setup.reference, STEPS)["params"],
        rtol=PEER_RTOL, atol=PEER_ATOL)
  except AssertionError as e:
    trial.check(False, f"final params differ from the reference: {e}")
  return trial


# --- the table ----------------------------------------------------------------


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--trials", type=int, default=60,
                      help="kill trials; each other fault gets a tenth (at least 1)")
  parser.add_argument("--seed", type=int, default=0,
                      help="of the RNG that draws kill moments and peer delays")
  parser.add_argument("--only", default="kill,damage,disk-full,hang,peer",
                      help="the faults to try, comma-separated")
  args = parser.parse_args()
  only = args.only.split(",")
  others = max(1, args.trials // 10)
  rng = np.random.default_rng(args.seed)
  trials: list[Trial] = []
  started = time.monotonic()
  with tempfile.TemporaryDirectory(prefix="ctjax-faults-") as folder:
    folder = pathlib.Path(folder)
    setup = make_setup(folder)
    plan: list[tuple[str, Callable[[pathlib.Path], Trial]]] = []
    if "kill" in only:
      # The targets in turn, so that each phase gets its share.
      plan += [("kill", lambda w, t=KILL_PHASES[i % 4]: kill_trial(setup, w, rng, t))
               for i in range(args.trials)]
    if "damage" in only:
      kinds = list(DAMAGES)
      plan += [("damage", lambda w, i=i: damage_trial(
          setup, w, [kinds[(i + j) % len(kinds)] for j in range(1 + i % 4)]))
               for i in range(others)]
    if "disk-full" in only:
      plan += [("disk-full", lambda w: disk_full_trial(setup, w))] * others
    if "hang" in only:
      plan += [("hang", lambda w: hang_trial(setup, w))] * others
    if "peer" in only:
      # Victims in turn; half the trials with the watchdog (0.5 min), half without.
      plan += [("peer", lambda w, i=i: peer_trial(
          setup, w, rng, victim=i % 2, watchdog_minutes=0.5 if i % 4 >= 2 else 0.0))
               for i in range(max(4, others))]
    for i, (name, run_trial) in enumerate(plan):
      trial = run_trial(folder / f"{name}-{i}")
      shutil.rmtree(folder / f"{name}-{i}", ignore_errors=True)
      trials.append(trial)
      print(f"[{time.monotonic() - started:6.0f} s] {trial.fault}: {trial.phase}"
            f"{'' if np.isnan(trial.seconds) else f' ({trial.seconds:.1f} s)'}"
            f"{'  FAILED: ' + trial.failure if trial.failure else ''}", flush=True)
  print_table(trials)


def print_table(trials: list[Trial]) -> None:
  rows = collections.defaultdict(list)
  for t in trials:
    rows[(t.fault, "")].append(t)
    for phase in filter(None, t.phase.split(" + ")):  # A damage trial has several.
      rows[(t.fault, phase)].append(t)
  print("\n| fault | landed in / kind / ending | trials | failures "
        "| seconds to exit (median, max) |")
  print("| --- | --- | ---: | ---: | --- |")
  for (fault, phase), group in rows.items():
    seconds = [t.seconds for t in group if not np.isnan(t.seconds)]
    timing = (f"{np.median(seconds):.1f}, {max(seconds):.1f}" if seconds else "")
    print(f"| {fault if not phase else ''} | {phase or '**all**'} | {len(group)} | "
          f"{sum(bool(t.failure) for t in group)} | {timing} |")


if __name__ == "__main__":
  main()
