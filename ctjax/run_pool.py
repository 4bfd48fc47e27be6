"""Runs `ctjax train` processes a few at a time: cross-validation's folds and a
sweep's trials.

  pool = run_pool.Pool(workers=2, devices_per_run=1)
  pool.start(run_pool.Run("lr=0.001", command, run_dir))   # while pool.free()
  for run, status in pool.wait():                          # as runs end
    ...
  pool.stop()                                              # SIGTERM all, wait

Each run is an ordinary resumable `ctjax train` in its own folder; its stdout and
stderr go to RUN_DIR/log.txt, each attempt appended under a header line.

Sharing the machine. Each worker slot gets its own devices:
- GPUs (those of an inherited CUDA_VISIBLE_DEVICES, else all nvidia-smi lists):
  slot i sees the i-th d of them through CUDA_VISIBLE_DEVICES, with d =
  devices_per_run; XLA_PYTHON_CLIENT_PREALLOCATE
  =false (unless set) so that runs sharing a GPU do not each reserve 75% of it.
- CPUs: each slot is pinned to a disjoint share of this process's CPUs (XLA sizes
  its thread pools to the CPUs a process may use, so N runs do not each start a
  thread per core and fight over them); devices_per_run > 1 gives each run that
  many host devices (--xla_force_host_platform_device_count), for trying a mesh.
- A TPU host's chips are held by one process: use one worker per host there (and
  `ctjax launch tpu` for a trial per TPU VM).

Stopping. SIGINT or SIGTERM to the caller reaches `wait` as KeyboardInterrupt; the
caller then calls `stop`, which sends SIGTERM to every run (each saves a checkpoint
and exits) and waits. If the caller is killed outright (SIGKILL, an OOM kill), each
run gets SIGTERM from the kernel (PR_SET_PDEATHSIG on Linux) and saves likewise, so
no run outlives its driver and nothing is lost.
"""
import ctypes
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from ctjax import writers
from ctjax.errors import UserError

LOG_FILE = "log.txt"
# Lines of a failed run's log shown on the terminal.
TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass
class Run:
  """One `ctjax train` process to run: `name` for messages, its folder, and
  environment variables to add."""
  name: str
  command: list[str]
  run_dir: str
  env: dict[str, str] = dataclasses.field(default_factory=dict)
  started: float = 0.0  # time.monotonic() at start, set by Pool.start.


def train_command(config_spec: str, run_dir: str, overrides: list[str],
                  verbose: bool = False) -> list[str]:
  """`python -m ctjax train` for a run, with --config.KEY=VALUE overrides."""
  return [sys.executable, "-m", "ctjax", "train", "--config", config_spec,
          "--workdir", run_dir, *(f"--config.{o}" for o in overrides),
          *(["--verbose"] if verbose else [])]


def gpu_count() -> int:
  """GPUs on this machine per nvidia-smi (0 without it), without starting JAX: the
  driver must not hold the devices its runs need."""
  if not shutil.which("nvidia-smi"):
    return 0
  try:
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True,
                             timeout=30, check=True).stdout
  except (subprocess.SubprocessError, OSError):
    return 0
  return sum(line.startswith("GPU ") for line in listing.splitlines())


class Pool:
  """At most `workers` runs at once, each on its own share of the devices."""

  def __init__(self, workers: int, devices_per_run: int = 1):
    self.workers = workers
    # The GPUs this process may use: those of an inherited CUDA_VISIBLE_DEVICES
    # (a scheduler's share of the machine), else all that nvidia-smi lists.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = ([g for g in visible.split(",") if g.strip()] if visible else
            [str(g) for g in range(gpu_count())])
    if gpus:
      if workers * devices_per_run > len(gpus):
        raise UserError(f"--workers {workers} x --devices-per-trial "
                        f"{devices_per_run} need {workers * devices_per_run} GPUs; "
                        f"{len(gpus)} are visible ({','.join(gpus)})")
      self._slot_env = [{"CUDA_VISIBLE_DEVICES": ",".join(
          gpus[w * devices_per_run:(w + 1) * devices_per_run])}
                        for w in range(workers)]
      self._cpus = [None] * workers
    else:
      flags = os.environ.get("XLA_FLAGS", "")
      if devices_per_run > 1:
        flags = " ".join(f for f in flags.split()
                         if "xla_force_host_platform_device_count" not in f)
        flags += f" --xla_force_host_platform_device_count={devices_per_run}"
      self._slot_env = [{"XLA_FLAGS": flags.strip()} if devices_per_run > 1 else {}
                        for _ in range(workers)]
      self._cpus = _cpu_shares(workers)
    self._env = dict(os.environ, PYTHONUNBUFFERED="1")  # log.txt fills as it goes.
    if workers > 1:
      self._env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    self._free = list(range(workers))
    self._running: dict[int, tuple[Run, subprocess.Popen]] = {}  # slot -> run

  def free(self) -> int:
    """Slots free for another run."""
    return len(self._free)

  def running(self) -> list[Run]:
    return [run for run, _ in self._running.values()]

  def start(self, run: Run) -> None:
    """Starts `run` on a free slot, its output appended to RUN_DIR/log.txt."""
    slot = self._free.pop(0)
    cpus = self._cpus[slot]
    os.makedirs(run.run_dir, exist_ok=True)
    env = dict(self._env, **self._slot_env[slot], **run.env)
    with open(os.path.join(run.run_dir, LOG_FILE), "a") as log:
      devices = self._slot_env[slot].get("CUDA_VISIBLE_DEVICES")
      log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}"
                f"{f' on CPUs {sorted(cpus)}' if cpus else ''}"
                f"{f' on GPUs {devices}' if devices else ''}: "
                f"{shlex.join(run.command)}\n")
      log.flush()
      # The child holds its own copy of the log file; ours closes here.
      process = subprocess.Popen(
          run.command, stdout=log, stderr=subprocess.STDOUT,
          stdin=subprocess.DEVNULL, env=env,
          preexec_fn=lambda: _prepare_child(cpus))
    run.started = time.monotonic()
    self._running[slot] = (run, process)

  def wait(self, timeout_s: float = 1.0) -> Iterator[tuple[Run, int]]:
    """(run, exit status) for each run that ended, waiting up to `timeout_s` for
    one; each ended run's slot is free again."""
    deadline = time.monotonic() + timeout_s
    while True:
      ended = [(slot, run, process.returncode)
               for slot, (run, process) in self._running.items()
               if process.poll() is not None]
      if ended or not self._running or time.monotonic() >= deadline:
        break
      time.sleep(0.1)
    for slot, run, status in ended:
      del self._running[slot]
      self._free.append(slot)
      yield run, status

  def stop(self) -> list[Run]:
    """SIGTERM to every run (each saves a checkpoint and exits); waits for them.
    Returns the runs that were stopped."""
    stopped = self.running()
    for _, process in self._running.values():
      process.send_signal(signal.SIGTERM)
    for _, process in self._running.values():
      process.wait()
    self._free.extend(self._running)
    self._running.clear()
    return stopped


def _prepare_child(cpus: set[int] | None) -> None:
  """In the child between fork and exec (no other thread runs in the driver, so
  this is safe): its CPU share, and SIGTERM when the driver dies."""
  if cpus:
    os.sched_setaffinity(0, cpus)
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _cpu_shares(workers: int) -> list[set[int] | None]:
  """The CPUs of each worker slot: disjoint shares, or one CPU each if too few."""
  if workers == 1 or not hasattr(os, "sched_getaffinity"):
    return [None] * workers
  cpus = sorted(os.sched_getaffinity(0))
  if workers >= len(cpus):
    return [{cpus[w % len(cpus)]} for w in range(workers)]
  return [set(cpus[w * len(cpus) // workers:(w + 1) * len(cpus) // workers])
          for w in range(workers)]


def claim(path: str, what: str, settings: dict[str, Any]) -> None:
  """Records the settings of a folder of runs in `path` (DIR/cv.json,
  DIR/sweep.json), or checks them against those recorded by a previous command.

  Include the resolved config: runs trained from an edited config file would
  otherwise be tabulated together with runs of the old one.
  """
  if os.path.exists(path):
    with open(path) as f:
      before = _flat(json.load(f))
    now = _flat(json.loads(json.dumps(settings)))  # Tuples as JSON has them.
    changed = [f"{k}={before.get(k)!r}" for k in sorted(now | before)
               if now.get(k) != before.get(k)]
    if changed:
      raise UserError(f"{path}: this folder holds {what} with other "
                      f"settings ({', '.join(changed[:4])}"
                      f"{', ...' if len(changed) > 4 else ''}); rerun with those, "
                      "or use another --workdir")
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  writers.write_atomically(path, json.dumps(settings, indent=1))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{"a.b": value} for the leaves of nested dicts."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def log_tail(run_dir: str, lines: int = TAIL_LINES) -> str:
  """The last lines of a run's log, indented, for a failure message."""
  path = os.path.join(run_dir, LOG_FILE)
  try:
    with open(path, errors="replace") as f:
      text = f.read().splitlines()[-lines:]
  except FileNotFoundError:
    return f"  (no {path})"
  return "\n".join("  " + line for line in text)
