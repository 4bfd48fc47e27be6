"""`ctjax launch tpu`: a run, or a sweep, on Cloud TPU VMs, from creating them to
deleting them.

  ctjax launch tpu --name NAME --zone ZONE --type v5litepod-16 \\
      --config configs/X.py[:ARG] --workdir gs://BUCKET/runs/X \\
      [--queued] [--spot | --best-effort] [--project P] [--runtime VERSION] \\
      [--shared-workdir] [--setup LINE] [--delete] [--dry-run] [--config.a.b=VALUE ...]
  ctjax launch tpu --name NAME --zone ZONE --type v5litepod-8 --count K \\
      --config ... --workdir gs://BUCKET/sweeps/X --sweep SWEEP \\
      --storage postgresql://USER@HOST/DB [--study S] [--heartbeat-s 60] [...]
  ctjax launch tpu delete --name NAME --zone ZONE [--count K] [--queued] [--project P]

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
             '.[tpu]'`: jax[tpu] and ctjax pinned as here. With a gs:// workdir,
             also Cloud Storage FUSE (gcsfuse, from Google's apt repository) unless
             the host has it.
  4. run     `ctjax train --config ... --workdir ...` on every host at once
             (`ssh --worker=all`); each host's output streams here. On a pod slice
             the hosts find each other from the TPU metadata, and a host that
             never starts is named after CTJAX_JOIN_TIMEOUT_S (ctjax/distributed.py).
  5. delete  with --delete, after the run whatever its outcome (or Ctrl-C).

The workdir. The trainer writes files with open() and os.makedirs, which know no
gs://, so a gs://BUCKET/PATH workdir is reached through Cloud Storage FUSE, as
Google recommends on TPU VMs: the run step mounts the bucket at ~/gcs/BUCKET on
every host (unless mounted already) and trains with --workdir ~/gcs/BUCKET/PATH.
A pod slice of several hosts (v5litepod-16: 4 hosts of 4 chips) writes one workdir
from all of them, so it must be such shared storage: gs://, or a folder on a file
system that all hosts mount (NFS, Filestore), declared with --shared-workdir (a
--setup line can mount it). A one-host TPU VM may use a path on its own disk, which
goes with the VM: not with --delete. The command's exit status is the run's (or the
failed step's).

A sweep (--sweep SWEEP, a search of the config's get_sweeps()): --count K one-host
TPU VMs, NAME-0 to NAME-(K-1), each created, copied to and installed as above, and
each running one sweep driver with --workers 1 (the VM's chips serve one trial at a
time). The drivers share the study in the --storage database and the trial folders
in the workdir (gs:// through gcsfuse, or --shared-workdir); see ctjax/launch/ and
ctjax/sweep_driver.py. The VMs go through their steps at once, each line of their
output starting with [NAME-i]; with --delete each VM is deleted once its driver
ends. A VM that fails a step (no capacity, say) leaves the sweep to the others;
the exit status is the first non-zero one of the VMs, in order.
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import threading
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
# The exit status of a VM's steps that Ctrl-C stopped (128 + SIGINT, as a shell's).
STOPPED = 130
READY_STATES = {"READY", "ACTIVE"}
WAITING_STATES = {"WAITING_FOR_RESOURCES", "PROVISIONING", "ACCEPTED", "CREATING",
                  "STARTING", "RESTARTING"}

# Where a gs:// workdir's bucket is mounted on each host: MOUNT_ROOT/BUCKET.
MOUNT_ROOT = "~/gcs"
# Cloud Storage FUSE from Google's apt repository, as its install guide gives it
# for Debian and Ubuntu (the repository named after the release's codename, its
# key in a keyring of its own); the lock timeout waits out the apt runs of a VM's
# first boot instead of failing on their lock.
_KEYRING = "/usr/share/keyrings/cloud.google.asc"
GCSFUSE_INSTALL = (
    "(command -v gcsfuse >/dev/null || ("
    f'echo "deb [signed-by={_KEYRING}] https://packages.cloud.google.com/apt '
    'gcsfuse-$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/'
    "gcsfuse.list >/dev/null && curl -fsSL https://packages.cloud.google.com/apt/"
    f"doc/apt-key.gpg | sudo tee {_KEYRING} >/dev/null && sudo apt-get -q update "
    "&& sudo apt-get -q install -y -o DPkg::Lock::Timeout=600 gcsfuse))")
# The mount's options:
# --implicit-dirs: folders that exist only as the prefix of objects written by
#   another host, or by gsutil, are listed (otherwise they look missing).
# --rename-dir-limit: Orbax saves each checkpoint step to a temporary folder and
#   renames it. On a bucket without hierarchical namespace gcsfuse renames a
#   folder object by object, and by default not at all (limit 0): this bound is
#   above any checkpoint's file count.
# --metadata-cache-ttl-secs=0: every host (and every sweep VM) writes into the same
#   folders; with gcsfuse's cache (60 s) one host would not see another's files
#   for a minute: a checkpoint's parts, a trial's trial.json.
GCSFUSE_OPTIONS = ("--implicit-dirs", "--rename-dir-limit=1000000",
                   "--metadata-cache-ttl-secs=0")


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


class _Shell(str):
  """An argument already written for the remote shell: a path whose leading ~ it
  must expand, which shlex.quote would quote."""


def _join(words: list[str]) -> str:
  return " ".join(w if isinstance(w, _Shell) else shlex.quote(w) for w in words)


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


def gcs_location(workdir: str) -> tuple[str, str] | None:
  """(bucket, path inside it) of a gs:// workdir; None for another path."""
  if not workdir.startswith("gs://"):
    return None
  bucket, _, path = workdir[len("gs://"):].partition("/")
  if not bucket:
    raise UserError(f"--workdir {workdir}: name the bucket, gs://BUCKET/PATH")
  return bucket, path.strip("/")


def remote_workdir(workdir: str) -> str:
  """The workdir as the hosts' ctjax sees it: a gs:// one in its mounted bucket."""
  location = gcs_location(workdir)
  if location is None:
    return workdir
  bucket, path = location
  return _Shell(f"{MOUNT_ROOT}/" + shlex.quote(f"{bucket}/{path}" if path else bucket))


def mount_script(bucket: str) -> str:
  """Mounts the bucket at MOUNT_ROOT/BUCKET unless it is mounted (a rerun)."""
  mount_point = f"{MOUNT_ROOT}/{shlex.quote(bucket)}"
  return (f"mkdir -p {mount_point} && (mountpoint -q {mount_point} || gcsfuse "
          f"{' '.join(GCSFUSE_OPTIONS)} {shlex.quote(bucket)} {mount_point})")


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


def install_command(tpu: Tpu, *, gcsfuse: bool = False) -> list[str]:
  """Unpacks the code over the previous copy (a workdir inside it survives) and
  installs it, with this machine's Python version, in a venv kept between runs;
  with `gcsfuse`, installs that too where it is missing."""
  python = f"{sys.version_info.major}.{sys.version_info.minor}"
  uv, venv_python = "~/.local/bin/uv", f"{REMOTE_VENV}/bin/python"
  return _ssh(tpu, " && ".join([
      *([GCSFUSE_INSTALL] if gcsfuse else []),
      f"mkdir -p {REMOTE_DIR}", f"tar -xzf {ARCHIVE} -C {REMOTE_DIR}",
      "python3 -m pip install -q --user 'uv>=0.5'",
      f"(test -x {venv_python} || {uv} venv -q --python {python} {REMOTE_VENV})",
      f"cd {REMOTE_DIR}",
      f"{uv} pip install -q --python {venv_python} -c constraints.txt -e '.[tpu]'"]))


def run_command(tpu: Tpu, arguments: list[str], *, bucket: str = "",
                setup: tuple[str, ...] = ()) -> list[str]:
  """`ctjax ARGUMENTS` on every host, from the checkout, after the --setup lines
  and mounting `bucket` (a gs:// workdir's)."""
  # The venv's path keeps its ~ unquoted, for the remote shell to expand.
  return _ssh(tpu, " && ".join([
      *setup, *([mount_script(bucket)] if bucket else []), f"cd {REMOTE_DIR}",
      f"{REMOTE_VENV}/bin/ctjax {_join(arguments)}"]))


def delete_command(tpu: Tpu) -> list[str]:
  if tpu.queued:  # --force: the queued resource with its TPU VM.
    return _gcloud(tpu, "queued-resources", "delete", tpu.name, "--force", "--quiet")
  return _gcloud(tpu, "tpu-vm", "delete", tpu.name, "--quiet")


def check_workdir(workdir: str, accelerator_type: str, *, delete: bool,
                  shared: bool = False, sweep: bool = False) -> None:
  """Refuses a workdir that not every host (or not the result) would keep."""
  if gcs_location(workdir) or shared:
    return
  shared_storage = ("give shared storage: --workdir gs://BUCKET/PATH (mounted with "
                    "gcsfuse on every host), or --shared-workdir for a folder on a "
                    "file system that all of them mount (NFS, Filestore)")
  if sweep:
    raise UserError(f"--workdir {workdir}: the sweep's TPU VMs keep their trials "
                    "in one folder, so that a trial retried on another VM resumes "
                    f"there: {shared_storage}")
  count = hosts(accelerator_type)
  if count != 1:
    what = f"{count} hosts" if count else "an unknown number of hosts"
    raise UserError(f"--workdir {workdir}: a {accelerator_type} has {what}, which "
                    f"must all write one workdir: {shared_storage}")
  if delete:
    raise UserError(f"--workdir {workdir} is on the TPU VM's disk, which --delete "
                    "deletes with the run's results: give --workdir gs://BUCKET/PATH")


def names(name: str, count: int | None) -> list[str]:
  """The TPU's name, or with --count (a sweep's VMs) NAME-0 to NAME-(count-1)."""
  return [name] if count is None else [f"{name}-{i}" for i in range(count)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("action", nargs="?", choices=("run", "delete"), default="run",
                      help="run (default): create if needed, copy, install, train; "
                      "delete: delete the TPU (with --count, the sweep's TPUs)")
  parser.add_argument("--name", required=True,
                      help="the TPU VM's name (with --count, the VMs' prefix)")
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
                      help="the run's folder: gs://BUCKET/PATH (mounted with "
                      "gcsfuse) for a pod slice or a sweep")
  parser.add_argument("--shared-workdir", action="store_true",
                      help="--workdir is on a file system that every host mounts "
                      "(NFS, Filestore): accept it for a pod slice or a sweep")
  parser.add_argument("--setup", action="append", default=[], metavar="LINE",
                      help="a shell line run on every host before the run, e.g. "
                      "mounting a shared file system; repeatable")
  parser.add_argument("--count", type=int, default=None, metavar="K",
                      help="with --sweep: K one-host TPU VMs, NAME-0 to NAME-(K-1), "
                      "a driver on each (default 1)")
  runner.add_sweep_arguments(parser)
  parser.add_argument("--delete", action="store_true",
                      help="delete the TPU after the run, whatever its outcome")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the gcloud commands and run nothing")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


def launch(args: argparse.Namespace, overrides: list[str]) -> int:
  """`ctjax launch tpu`; returns the exit status."""
  if args.count is not None and args.count < 1:
    raise UserError(f"--count {args.count}: give 1 or more")
  tpu = Tpu(args.name, args.zone, args.accelerator_type, project=args.project,
            queued=args.queued, capacity=args.capacity)
  if args.action == "delete":
    if overrides:
      raise UserError("ctjax launch tpu delete takes no --config.* overrides")
    commands = [delete_command(dataclasses.replace(tpu, name=name))
                for name in names(args.name, args.count)]
    if args.dry_run:
      runner.show(commands)
      return 0
    return max(runner.execute(command).returncode for command in commands)
  missing = [option for option, value in (("--type", args.accelerator_type),
                                          ("--config", args.config),
                                          ("--workdir", args.workdir)) if not value]
  if missing:
    raise UserError(f"ctjax launch tpu: give {', '.join(missing)}")
  if args.capacity == "best-effort" and not args.queued:
    raise UserError("--best-effort is for queued resources: add --queued (or use "
                    "--spot)")
  if args.count is not None and not args.sweep:
    raise UserError(f"--count {args.count} is for a sweep (--sweep NAME), a trial "
                    "per TPU VM; one run takes one TPU: a larger --type for more "
                    "chips")
  generation = args.accelerator_type.rpartition("-")[0]
  runtime = args.runtime or RUNTIMES.get(generation, "")
  if not runtime:
    raise UserError(f"--type {args.accelerator_type}: no default runtime for "
                    f"{generation or 'it'}; give --runtime VERSION (see `gcloud "
                    "compute tpus versions list`)")
  tpu = dataclasses.replace(tpu, runtime=runtime)
  vm_names = names(args.name, (args.count or 1) if args.sweep else None)
  if args.sweep and hosts(args.accelerator_type) != 1:
    raise UserError(f"--type {args.accelerator_type} with --sweep: a trial per TPU "
                    "VM needs one-host VMs (such as v5litepod-8, v6e-8, v4-8); give "
                    "--count for more of them")
  check_workdir(args.workdir, args.accelerator_type, delete=args.delete,
                shared=args.shared_workdir, sweep=bool(args.sweep))
  # Mistakes in the config, the overrides or the sweep stop here, before a TPU is
  # paid for.
  if args.sweep:
    runner.check_sweep(args, overrides, f"{len(vm_names)} TPU VM(s)")
  else:
    config_lib.load_config(args.config, overrides)
  root, files = _checkout()
  config = _in_checkout(args.config, root, files)
  workdir = remote_workdir(args.workdir)
  arguments = (runner.sweep_arguments(args, config, workdir, overrides, workers=1)
               if args.sweep else runner.train_arguments(config, workdir, overrides))
  location = gcs_location(args.workdir)
  vms = [dataclasses.replace(tpu, name=name) for name in vm_names]
  with tempfile.TemporaryDirectory(prefix="ctjax-launch-") as folder:
    archive = os.path.join(folder, ARCHIVE)

    def steps(vm: Tpu) -> list[list[str]]:
      return [copy_command(vm, archive), install_command(vm, gcsfuse=bool(location)),
              run_command(vm, arguments, bucket=location[0] if location else "",
                          setup=tuple(args.setup))]

    if args.dry_run:
      for vm in vms:
        runner.show([create_command(vm), *([describe_command(vm)] if vm.queued
                                           else []),
                     *steps(vm), *([delete_command(vm)] if args.delete else [])])
      return 0
    _write_archive(root, files, archive)
    stop, first_ssh = threading.Event(), threading.Lock()
    timeout_s = args.queue_timeout_minutes * 60
    if len(vms) == 1:
      return _run_on(vms[0], steps(vms[0]), timeout_s=timeout_s, delete=args.delete,
                     stop=stop, first_ssh=first_ssh)
    with concurrent.futures.ThreadPoolExecutor(len(vms)) as pool:
      futures = [pool.submit(_run_on_reporting, vm, steps(vm), timeout_s=timeout_s,
                             delete=args.delete, stop=stop, first_ssh=first_ssh,
                             prefix=f"[{vm.name}] ") for vm in vms]
      try:
        statuses = [future.result() for future in futures]
      except KeyboardInterrupt:
        # The VMs' threads stop after their current command (which Ctrl-C ended
        # too), deleting their VMs with --delete.
        stop.set()
        print("ctjax launch: stopping" + (", deleting the TPU VMs" if args.delete
                                          else ""), file=sys.stderr, flush=True)
        concurrent.futures.wait(futures)
        return STOPPED
  return next((status for status in statuses if status), 0)


def _run_on(tpu: Tpu, steps: list[list[str]], *, timeout_s: float, delete: bool,
            stop: threading.Event, first_ssh: threading.Lock, prefix: str = ""
            ) -> int:
  """Creates the TPU if needed, runs the steps on it and, with `delete`, deletes it
  whatever happened; returns the exit status of the run (or the failed step)."""
  try:
    _ensure_ready(tpu, timeout_s, stop, prefix)
    for i, command in enumerate(steps):
      if stop.is_set():
        return STOPPED
      # gcloud makes this machine's SSH key on its first scp or ssh: the VMs of a
      # sweep copy one at a time, so that they do not each make one at once.
      with first_ssh if i == 0 else contextlib.nullcontext():
        status = runner.execute(command, prefix=prefix).returncode
      if status:
        print(f"{prefix}ctjax launch: exit status {status} from: "
              f"{shlex.join(command[:6])} ...", file=sys.stderr, flush=True)
        return status
    return 0
  finally:  # Also after a failed step or Ctrl-C: an idle TPU costs as much.
    if delete:
      runner.execute(delete_command(tpu), prefix=prefix)


def _run_on_reporting(tpu: Tpu, steps: list[list[str]], *, prefix: str,
                      **kwargs) -> int:
  """_run_on for one of several VMs: its error is its own (the others go on),
  printed as ctjax prints one, with exit status 2."""
  try:
    return _run_on(tpu, steps, prefix=prefix, **kwargs)
  except UserError as e:
    print(f"{prefix}ctjax: error: {e}", file=sys.stderr, flush=True)
    return 2


def _ensure_ready(tpu: Tpu, timeout_s: float, stop: threading.Event,
                  prefix: str = "") -> None:
  """Creates the TPU unless it exists, and waits until it is ready (or `stop`)."""
  state = _state(tpu)
  if state is None:
    if runner.execute(create_command(tpu), prefix=prefix).returncode:
      raise UserError(f"creating TPU {tpu.name} failed (gcloud's message above): "
                      "fix what it says, or try another --zone")
    state = _state(tpu) if tpu.queued else "READY"
  else:
    print(f"{prefix}TPU {tpu.name} exists ({state}): using it", flush=True)
  deadline = time.monotonic() + timeout_s
  while state in WAITING_STATES and time.monotonic() < deadline:
    print(f"{prefix}TPU {tpu.name}: {state}", flush=True)
    if stop.wait(POLL_S):
      return
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
