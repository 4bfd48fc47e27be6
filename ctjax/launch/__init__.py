"""`ctjax launch`: the same `ctjax train`, or a sweep's drivers, on Cloud TPU VMs or
a SLURM cluster.

  ctjax launch tpu --name NAME --zone ZONE --type v5litepod-16 \\
      --config configs/X.py --workdir gs://BUCKET/runs/X [--delete] [--dry-run] \\
      [--config.a.b=VALUE ...]
  ctjax launch tpu --name NAME --zone ZONE --type v5litepod-8 --count 4 \\
      --config configs/X.py --workdir gs://BUCKET/sweeps/X --sweep NAME \\
      --storage postgresql://USER@HOST/DB [--study S] [--heartbeat-s 60] [--delete]
  ctjax launch tpu delete --name NAME --zone ZONE [--count K]
  ctjax launch slurm --config configs/X.py --workdir /shared/runs/X --nodes 2 \\
      --gpus-per-node 8 [--time 24:00:00] [--dry-run] [--config.a.b=VALUE ...]
  ctjax launch slurm ... --sweep NAME --storage postgresql://USER@HOST/DB

The --config.a.b=VALUE overrides go to `ctjax train` (or `ctjax sweep`) on the
target unchanged. Each target builds its commands with pure functions
(ctjax/launch/tpu.py, slurm.py) and runs them here, printing each first; --dry-run
prints them and runs nothing.

Sweeps on many machines (--sweep): each machine runs one sweep driver
(ctjax/sweep_driver.py), and the drivers share one Optuna study in a database that
all of them reach, so the sweep must be a search and --storage a PostgreSQL URL.
Their trial folders, WORKDIR/trials/<name>, are on storage all machines see, so
that a trial retried on another machine (its driver's heartbeats stopped) resumes
from its checkpoints.
"""
import argparse
import shlex
import subprocess
import urllib.parse

from ctjax.errors import UserError

# Seconds between the heartbeats of a driver's running trials (Optuna's RDB
# storage). A trial silent for three of them (its machine was preempted or died) is
# failed and retried by another driver. Off (0) in a local `ctjax sweep`; on here,
# where machines do go away: without it such a trial would stay RUNNING in the study
# for good, never retried, and counted against the search's budget.
HEARTBEAT_S = 60


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """`ctjax launch tpu ...` and `ctjax launch slurm ...`."""
  from ctjax.launch import slurm, tpu  # pylint: disable=g-import-not-at-top
  targets = parser.add_subparsers(dest="target", required=True)
  tpu.add_arguments(targets.add_parser(
      "tpu", help="create Cloud TPU VMs, copy this checkout, install, train or "
      "sweep, delete"))
  slurm.add_arguments(targets.add_parser(
      "slurm", help="submit a run or a sweep to a SLURM cluster; requeued until "
      "it finishes"))


def launch(args: argparse.Namespace, overrides: list[str]) -> int:
  """Runs `ctjax launch TARGET ...`; returns the exit status."""
  from ctjax.launch import slurm, tpu  # pylint: disable=g-import-not-at-top
  return {"tpu": tpu.launch, "slurm": slurm.launch}[args.target](args, overrides)


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
  """--sweep and what the drivers pass on to `ctjax sweep`."""
  parser.add_argument("--sweep", default="", metavar="NAME",
                      help="run a search of the config's get_sweeps() instead of "
                      "one run: a sweep driver per machine, sharing the study in "
                      "--storage")
  parser.add_argument("--storage", default="",
                      help="with --sweep: the study's database, "
                      "postgresql://USER@HOST/DB, reachable from every machine")
  parser.add_argument("--study", default="",
                      help="with --sweep: the study's name (default: CONFIG-SWEEP)")
  parser.add_argument("--heartbeat-s", type=int, default=HEARTBEAT_S,
                      help="with --sweep: seconds between heartbeats of running "
                      "trials; a trial silent for three times that is retried by "
                      f"another driver (default {HEARTBEAT_S}; 0: never)")


def check_sweep(args: argparse.Namespace, overrides: list[str], machines: str
                ) -> None:
  """Refuses, before anything is created or queued, a sweep that drivers on several
  machines could not share. `machines` names them, for the messages."""
  scheme = urllib.parse.urlsplit(args.storage).scheme
  if scheme.partition("+")[0] != "postgresql":
    given = f"--storage {args.storage}" if args.storage else "--sweep without --storage"
    raise UserError(f"{given}: the drivers on {machines} share one study, in a "
                    "database server that all of them reach: give --storage "
                    "postgresql://USER@HOST/DB (a journal file or SQLite is for a "
                    "sweep on one machine: run `ctjax sweep` there)")
  if args.heartbeat_s < 0:
    raise UserError(f"--heartbeat-s {args.heartbeat_s}: give 0 or more seconds")
  from ctjax import search, sweeps  # pylint: disable=g-import-not-at-top
  # The config, the overrides and every trial are checked here too.
  if not isinstance(sweeps.load(args.config, args.sweep, overrides), search.Search):
    raise UserError(f"--sweep {args.sweep} is a list of trials, which each driver "
                    f"would run all of: drivers on {machines} share only a "
                    "search's study; make it a search (sampler=\"grid\" for a "
                    "fixed set of values, ctjax/search.py)")


def train_arguments(config: str, workdir: str, overrides: list[str]) -> list[str]:
  """`ctjax ARGUMENTS` for one run."""
  return ["train", "--config", config, "--workdir", workdir,
          *(f"--config.{o}" for o in overrides)]


def sweep_arguments(args: argparse.Namespace, config: str, workdir: str,
                    overrides: list[str], *, workers: int,
                    devices_per_trial: int | None = None) -> list[str]:
  """`ctjax ARGUMENTS` for one machine's sweep driver."""
  return ["sweep", "--config", config, "--sweep", args.sweep, "--workdir", workdir,
          "--workers", str(workers),
          *(["--devices-per-trial", str(devices_per_trial)]
            if devices_per_trial else []),
          "--storage", args.storage, "--heartbeat-s", str(args.heartbeat_s),
          *(["--study", args.study] if args.study else []),
          *(f"--config.{o}" for o in overrides)]


def show(commands: list[list[str]]) -> None:
  """--dry-run: the commands, one per line, ready to paste into a shell."""
  for command in commands:
    print(shlex.join(command), flush=True)


def execute(command: list[str], *, capture: bool = False, prefix: str = ""
            ) -> subprocess.CompletedProcess:
  """Runs one command, printed first; its output streams to ours unless captured
  (for the answers we parse, such as a state).

  With a `prefix` (commands for several machines at once, from threads), each line
  of its output and of the command itself starts with it, and its input is empty:
  no two of them may wait for the terminal.
  """
  if not capture:
    print(f"{prefix}$ {shlex.join(command)}", flush=True)
  try:
    if capture or not prefix:
      return subprocess.run(command, capture_output=capture, text=True, check=False)
    with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          errors="replace") as process:
      for line in process.stdout:
        print(prefix + line, end="", flush=True)
    return subprocess.CompletedProcess(command, process.returncode)
  except FileNotFoundError:
    raise UserError(f"{command[0]} is not installed here (or not on PATH): "
                    f"install it, or run `ctjax launch` where it is") from None
