"""`ctjax launch tpu`: a run on a Cloud TPU VM, from creating it to deleting it.

  ctjax launch tpu --name NAME --zone ZONE --type v5litepod-16 \\
      --config configs/X.py[:ARG] --workdir gs://BUCKET/runs/X \\
      [--queued] [--spot | --best-effort] [--project P] [--runtime VERSION] \\
      [--delete] [--dry-run] [--config.a.b=VALUE ...]
  ctjax launch tpu delete --name NAME --zone ZONE [--queued] [--project P]

The steps, each a gcloud command printed as it runs (--dry-run prints them only):

  1. create  `gcloud compute tpus tpu-vm create`, which returns once the VM is
             ready; or, with --queued, a queued resource (it waits for capacity;
             --spot or --best-effort for cheaper, preemptible capacity), whose
             `describe` is polled until ACTIVE (--queue-timeout-minutes). A TPU of
             that name that exists is used as it is: run the command again after
             editing the code and it copies, installs and runs again.
  2. copy    this checkout's files (`git ls-files`: tracked ones and untracked ones
             git does not ignore, so uncommitted edits go too) as one tarball, to
             every host (`scp --worker=all`).
  3. install on every host: the files unpacked into ~/ctjax (over the previous
             copy, so that a workdir inside it survives), a virtual environment
             ~/ctjax-venv with this machine's Python version (uv fetches it: TPU
             VM images have Python 3.10), and `pip install -c constraints.txt -e
             '.[tpu]'`: jax[tpu] and ctjax pinned as here.
  4. run     `ctjax train --config ... --workdir ...` on every host at once
             (`ssh --worker=all`); each host's output streams here. On a pod slice
             the hosts find each other from the TPU metadata, and a host that
             never starts is named after CTJAX_JOIN_TIMEOUT_S (ctjax/distributed.py).
  5. delete  with --delete, after the run whatever its outcome (or Ctrl-C).

A pod slice of several hosts (v5litepod-16: 4 hosts of 4 chips) writes one
workdir from all of them, so it must be shared storage: --workdir gs://BUCKET/PATH.
A one-host TPU VM may use a path on its own disk, which goes with the VM: not
with --delete. The command's exit status is the run's (or the failed step's).
"""
import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

from ctjax import config as config_lib
from ctjax import launch as runner
from ctjax.errors import UserError

# Default runtime (--version) per generation: the TPU VM images that Google's docs
# name for JAX on each.
RUNTIMES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base",
            "v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
# How an accelerator type's number counts. v2 to v5p count TensorCores, 2 per
# chip, with 4 chips (8 cores) per host: v4-8 is one host, v4-32 four. v5e
# (v5litepod) and v6e count chips: 1, 4 and 8 chips are one host, larger slices are
# hosts of 4 chips (v5litepod-16: 4 hosts).
CORES_PER_HOST = {"v2": 8, "v3": 8, "v4": 8, "v5p": 8}
CHIPS_PER_HOST = {"v5litepod": 4, "v6e": 4}
SINGLE_HOST_CHIPS = 8

REMOTE_DIR = "ctjax"           # the checkout on each host, under the home folder
REMOTE_VENV = "~/ctjax-venv"
ARCHIVE = "ctjax-code.tar.gz"
# Between `describe` calls while a queued resource waits for capacity.
POLL_S = 30.0
READY_STATES = {"READY", "ACTIVE"}
WAITING_STATES = {"WAITING_FOR_RESOURCES", "PROVISIONING", "ACCEPTED", "CREATING",
                  "STARTING", "RESTARTING"}


@dataclasses.dataclass(frozen=True)
class Tpu:
  """Which TPU, and how to get one."""
  name: str
  zone: str
  accelerator_type: str = ""
  runtime: str = ""
  project: str = ""
  queued: bool = False
  capacity: str = ""  # "", "spot" or "best-effort"


def hosts(accelerator_type: str) -> int | None:
  """The number of hosts (TPU VMs) of an accelerator type; None if unknown."""
  generation, _, size = accelerator_type.rpartition("-")
  if not size.isdigit():
    return None
  if generation in CORES_PER_HOST:
    return max(1, int(size) // CORES_PER_HOST[generation])
  if generation in CHIPS_PER_HOST:
    chips = int(size)
    return 1 if chips <= SINGLE_HOST_CHIPS else chips // CHIPS_PER_HOST[generation]
  return None


def _gcloud(tpu: Tpu, *args: str) -> list[str]:
  """`gcloud compute tpus ARGS --zone Z [--project P]`."""
  project = ["--project", tpu.project] if tpu.project else []
  return ["gcloud", "compute", "tpus", *args, "--zone", tpu.zone, *project]


def create_command(tpu: Tpu) -> list[str]:
  if tpu.queued:
    capacity = [f"--{tpu.capacity}"] if tpu.capacity else []
    return _gcloud(tpu, "queued-resources", "create", tpu.name, "--node-id", tpu.name,
                   "--accelerator-type", tpu.accelerator_type,
                   "--runtime-version", tpu.runtime, *capacity)
  spot = ["--spot"] if tpu.capacity == "spot" else []
  return _gcloud(tpu, "tpu-vm", "create", tpu.name, "--accelerator-type",
                 tpu.accelerator_type, "--version", tpu.runtime, *spot)


def describe_command(tpu: Tpu) -> list[str]:
  """Prints the state alone: READY (a VM), ACTIVE (a queued resource), ..."""
  if tpu.queued:
    return _gcloud(tpu, "queued-resources", "describe", tpu.name,
                   "--format=value(state.state)")
  return _gcloud(tpu, "tpu-vm", "describe", tpu.name, "--format=value(state)")


def copy_command(tpu: Tpu, archive: str) -> list[str]:
  return _gcloud(tpu, "tpu-vm", "scp", archive, f"{tpu.name}:{ARCHIVE}",
                 "--worker=all")


def _ssh(tpu: Tpu, script: str) -> list[str]:
  return _gcloud(tpu, "tpu-vm", "ssh", tpu.name, "--worker=all", "--command", script)


def install_command(tpu: Tpu) -> list[str]:
  """Unpacks the code over the previous copy (a workdir inside it survives) and
  installs it, with this machine's Python version, in a venv kept between runs."""
  python = f"{sys.version_info.major}.{sys.version_info.minor}"
  uv, venv_python = "~/.local/bin/uv", f"{REMOTE_VENV}/bin/python"
  return _ssh(tpu, " && ".join([
      f"mkdir -p {REMOTE_DIR}", f"tar -xzf {ARCHIVE} -C {REMOTE_DIR}",
      "python3 -m pip install -q --user 'uv>=0.5'",
      f"(test -x {venv_python} || {uv} venv -q --python {python} {REMOTE_VENV})",
      f"cd {REMOTE_DIR}",
      f"{uv} pip install -q --python {venv_python} -c constraints.txt -e '.[tpu]'"]))


def run_command(tpu: Tpu, config: str, workdir: str, overrides: list[str]
                ) -> list[str]:
  """`ctjax train` on every host; `config` relative to the checkout's root."""
  train = [f"{REMOTE_VENV}/bin/ctjax", "train", "--config", config, "--workdir",
           workdir, *(f"--config.{o}" for o in overrides)]
  # The venv's path keeps its ~ unquoted, for the remote shell to expand.
  return _ssh(tpu, f"cd {REMOTE_DIR} && {train[0]} {shlex.join(train[1:])}")


def delete_command(tpu: Tpu) -> list[str]:
  if tpu.queued:  # --force: the queued resource with its TPU VM.
    return _gcloud(tpu, "queued-resources", "delete", tpu.name, "--force", "--quiet")
  return _gcloud(tpu, "tpu-vm", "delete", tpu.name, "--quiet")


def check_workdir(workdir: str, accelerator_type: str, delete: bool) -> None:
  """Refuses a workdir that not every host (or not the result) would keep."""
  if workdir.startswith("gs://"):
    return
  count = hosts(accelerator_type)
  if count != 1:
    what = f"{count} hosts" if count else "an unknown number of hosts"
    raise UserError(f"--workdir {workdir}: a {accelerator_type} has {what}, which "
                    "must all write one workdir: give shared storage, --workdir "
                    "gs://BUCKET/PATH")
  if delete:
    raise UserError(f"--workdir {workdir} is on the TPU VM's disk, which --delete "
                    "deletes with the run's results: give --workdir gs://BUCKET/PATH")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("action", nargs="?", choices=("run", "delete"), default="run",
                      help="run (default): create if needed, copy, install, train; "
                      "delete: delete the TPU")
  parser.add_argument("--name", required=True, help="the TPU VM's name")
  parser.add_argument("--zone", required=True, help="e.g. us-west4-a")
  parser.add_argument("--project", default="",
                      help="the Google Cloud project (default: gcloud's)")
  parser.add_argument("--type", dest="accelerator_type", default="", metavar="TYPE",
                      help="accelerator type, e.g. v5litepod-16, v4-8, v6e-8")
  parser.add_argument("--runtime", default="",
                      help="TPU VM software version (default: " + ", ".join(
                          f"{g}: {r}" for g, r in RUNTIMES.items()) + ")")
  parser.add_argument("--queued", action="store_true",
                      help="create a queued resource, which waits for capacity")
  capacity = parser.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_const", dest="capacity",
                        const="spot", default="",
                        help="preemptible spot capacity (rerun to resume)")
  capacity.add_argument("--best-effort", action="store_const", dest="capacity",
                        const="best-effort", help="best-effort capacity (--queued)")
  parser.add_argument("--queue-timeout-minutes", type=float, default=24 * 60,
                      metavar="MINUTES",
                      help="how long --queued waits for ACTIVE (default 1 day)")
  parser.add_argument("--config", default="",
                      help="configs/NAME.py[:ARG], inside this checkout")
  parser.add_argument("--workdir", default="",
                      help="the run's folder: gs://BUCKET/PATH for a pod slice")
  parser.add_argument("--delete", action="store_true",
                      help="delete the TPU after the run, whatever its outcome")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the gcloud commands and run nothing")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


def launch(args: argparse.Namespace, overrides: list[str]) -> int:
  """`ctjax launch tpu`; returns the exit status."""
  tpu = Tpu(args.name, args.zone, args.accelerator_type, project=args.project,
            queued=args.queued, capacity=args.capacity)
  if args.action == "delete":
    if overrides:
      raise UserError("ctjax launch tpu delete takes no --config.* overrides")
    if args.dry_run:
      runner.show([delete_command(tpu)])
      return 0
    return runner.execute(delete_command(tpu)).returncode
  missing = [option for option, value in (("--type", args.accelerator_type),
                                          ("--config", args.config),
                                          ("--workdir", args.workdir)) if not value]
  if missing:
    raise UserError(f"ctjax launch tpu: give {', '.join(missing)}")
  if args.capacity == "best-effort" and not args.queued:
    raise UserError("--best-effort is for queued resources: add --queued (or use "
                    "--spot)")
  generation = args.accelerator_type.rpartition("-")[0]
  runtime = args.runtime or RUNTIMES.get(generation, "")
  if not runtime:
    raise UserError(f"--type {args.accelerator_type}: no default runtime for "
                    f"{generation or 'it'}; give --runtime VERSION (see `gcloud "
                    "compute tpus versions list`)")
  tpu = dataclasses.replace(tpu, runtime=runtime)
  check_workdir(args.workdir, args.accelerator_type, args.delete)
  # Mistakes in the config or the overrides stop here, before a TPU is paid for.
  config_lib.load_config(args.config, overrides)
  root, files = _checkout()
  config = _in_checkout(args.config, root, files)
  with tempfile.TemporaryDirectory(prefix="ctjax-launch-") as folder:
    archive = os.path.join(folder, ARCHIVE)
    steps = [copy_command(tpu, archive), install_command(tpu),
             run_command(tpu, config, args.workdir, overrides)]
    if args.dry_run:
      runner.show([create_command(tpu), *([describe_command(tpu)] if tpu.queued
                                          else []),
                   *steps, *([delete_command(tpu)] if args.delete else [])])
      return 0
    _write_archive(root, files, archive)
    try:
      _ensure_ready(tpu, args.queue_timeout_minutes * 60)
      for command in steps:
        status = runner.execute(command).returncode
        if status:
          print(f"ctjax launch: exit status {status} from: {shlex.join(command[:6])} "
                "...", file=sys.stderr, flush=True)
          return status
      return 0
    finally:  # Also after a failed step or Ctrl-C: an idle TPU costs as much.
      if args.delete:
        runner.execute(delete_command(tpu))


def _ensure_ready(tpu: Tpu, timeout_s: float) -> None:
  """Creates the TPU unless it exists, and waits until it is ready."""
  state = _state(tpu)
  if state is None:
    if runner.execute(create_command(tpu)).returncode:
      raise UserError(f"creating TPU {tpu.name} failed (gcloud's message above): "
                      "fix what it says, or try another --zone")
    state = _state(tpu) if tpu.queued else "READY"
  else:
    print(f"TPU {tpu.name} exists ({state}): using it", flush=True)
  deadline = time.monotonic() + timeout_s
  while state in WAITING_STATES and time.monotonic() < deadline:
    print(f"TPU {tpu.name}: {state}", flush=True)
    time.sleep(POLL_S)
    state = _state(tpu)
  if state not in READY_STATES:
    raise UserError(
        f"TPU {tpu.name} is {state or 'gone'}" +
        (f" after {timeout_s / 60:g} minutes (--queue-timeout-minutes)"
         if state in WAITING_STATES else "") +
        f": delete it with `ctjax launch tpu delete --name {tpu.name} --zone "
        f"{tpu.zone}{' --queued' if tpu.queued else ''}` and run again")


def _state(tpu: Tpu) -> str | None:
  """The TPU's state from `describe`; None when there is no such TPU."""
  result = runner.execute(describe_command(tpu), capture=True)
  if result.returncode == 0:
    return result.stdout.strip()
  if "NOT_FOUND" in result.stderr:
    return None
  last = (result.stderr.strip().splitlines() or ["no message"])[-1]
  raise UserError(f"{shlex.join(describe_command(tpu)[:6])} failed: {last}; check "
                  "`gcloud auth list`, --project and --zone")


def _checkout() -> tuple[str, list[str]]:
  """The git checkout around the current folder, and the files to copy from it."""
  try:
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], text=True,
                          capture_output=True, check=True).stdout.strip()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    raise UserError("ctjax launch tpu copies the git checkout it runs in to the "
                    "TPU VM: run it inside one (cd to your ctjax checkout)") from None
  # --cached lists deleted files too, until the deletion is committed.
  files = [f for f in listed.decode().split("\0")
           if f and os.path.lexists(os.path.join(root, f))]
  return root, files


def _in_checkout(config: str, root: str, files: list[str]) -> str:
  """--config as a path relative to the checkout's root (kept :ARG), for the
  hosts, which run from their copy of it."""
  path, colon, arg = config.partition(":")
  relative = os.path.relpath(os.path.abspath(path), root)
  if relative not in set(files):
    raise UserError(f"--config {path}: not among the files copied to the TPU VM "
                    f"(those of the checkout {root} that git does not ignore): put "
                    "it there")
  return relative + colon + arg


def _write_archive(root: str, files: list[str], path: str) -> None:
  with tarfile.open(path, "w:gz") as archive:
    for name in files:
      archive.add(os.path.join(root, name), arcname=name, recursive=False)
