"""`ctjax launch` against fake gcloud, sbatch, scontrol and srun, and the join check.

The fakes are small programs put first on PATH. Each appends its argv to a log (a
JSON list per line) and answers as the real one would for the calls the launcher
makes: `describe` says NOT_FOUND until a `create`, then the state (a queued
resource WAITING_FOR_RESOURCES for FAKE_QUEUE_POLLS polls, then ACTIVE); `sbatch`
says "Submitted batch job"; `srun` runs the real `ctjax train` it is given and
(unless FAKE_PREEMPT=0) sends it SIGTERM once it has trained a step, as SLURM does
before a time limit or a preemption.

`gcloud ... ssh --command SCRIPT` runs the run step's SCRIPT for real, with bash,
in a home folder of the TPU's own (FAKE_STATE/homes/NAME), where
~/ctjax-venv/bin/ctjax, `gcsfuse` and `mountpoint` are fakes too: so the tests see
what the remote shell makes of it (the ~ it expands, the mount it skips when the
bucket is mounted), in the arguments that the fake ctjax and gcsfuse log.

The join check (ctjax/distributed.py) runs for real: processes on localhost, one
of them missing.
"""
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

import multiprocess_util
import run_util
from ctjax import cv
from ctjax import distributed
from ctjax import main
from ctjax.errors import UserError
from ctjax.launch import slurm
from ctjax.launch import tpu

FAKE = textwrap.dedent("""\
    import json, os, shutil, signal, subprocess, sys, time
    tool, args = os.path.basename(sys.argv[0]), sys.argv[1:]
    with open(os.environ["FAKE_LOG"], "a") as log:
      log.write(json.dumps([tool, *args]) + "\\n")
    state = os.environ["FAKE_STATE"]
    if tool == "sbatch":
      print("Submitted batch job 4242")
    elif tool == "srun":
      while args[0].startswith("-"):  # srun's own options
        args.pop(0)
      process = subprocess.Popen(args)
      if os.environ.get("FAKE_PREEMPT", "1") == "1":
        metrics = os.path.join(args[args.index("--workdir") + 1], "metrics.jsonl")
        while process.poll() is None and not (os.path.exists(metrics) and
                                              os.path.getsize(metrics)):
          time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
      sys.exit(process.wait())
    elif tool == "ctjax":  # ~/ctjax-venv/bin/ctjax on a TPU host
      print("output of the TPU hosts")
      sys.exit(int(os.environ.get("FAKE_TRAIN_STATUS", "0")))
    elif tool == "gcsfuse":  # gcsfuse [OPTIONS] BUCKET MOUNT_POINT
      open(os.path.join(args[-1], ".mounted"), "w").close()
    elif tool == "mountpoint":  # mountpoint -q FOLDER
      sys.exit(0 if os.path.exists(os.path.join(args[-1], ".mounted")) else 1)
    elif tool == "gcloud":  # gcloud compute tpus GROUP VERB NAME ...
      group, verb, name = args[2:5]
      marker = os.path.join(state, name)
      if verb in ("describe", "delete") and not os.path.exists(marker):
        sys.exit(f"ERROR: (gcloud.compute.tpus.{group}.{verb}) NOT_FOUND: "
                 f"{name} was not found")
      if verb == "describe":
        with open(marker) as f:
          waits = int(f.read())
        with open(marker, "w") as f:
          f.write(str(waits - 1))
        print("READY" if group == "tpu-vm" else
              "WAITING_FOR_RESOURCES" if waits > 0 else "ACTIVE")
      elif verb == "create":
        if name in os.environ.get("FAKE_NO_CAPACITY", "").split(","):
          sys.exit(f"ERROR: (gcloud.compute.tpus.{group}.create) There is no more "
                   "capacity in the zone")
        with open(marker, "w") as f:
          f.write(os.environ.get("FAKE_QUEUE_POLLS", "0"))
      elif verb == "delete":
        os.remove(marker)
      elif verb == "scp":
        shutil.copy(args[4], os.path.join(state, "copied.tar.gz"))
      elif verb == "ssh":
        script = args[args.index("--command") + 1]
        if "/bin/ctjax " not in script:  # The install step.
          print("output of the TPU hosts")
          sys.exit(0)
        home = os.path.join(state, "homes", name)
        venv = os.path.join(home, "ctjax-venv", "bin")
        os.makedirs(venv, exist_ok=True)
        os.makedirs(os.path.join(home, "ctjax"), exist_ok=True)
        shutil.copy(sys.argv[0], os.path.join(venv, "ctjax"))
        sys.exit(subprocess.run(["bash", "-c", script], cwd=home,
                                env=dict(os.environ, HOME=home)).returncode)
    """)
TOOLS = ("gcloud", "sbatch", "scontrol", "srun", "gcsfuse", "mountpoint")


class Fakes:
  """The fake tools' folder and the log of their calls."""

  def __init__(self, folder: pathlib.Path):
    self.bin, self.state, self.log = folder / "bin", folder / "state", folder / "log"
    self.bin.mkdir(parents=True)
    self.state.mkdir()
    for tool in TOOLS:
      (self.bin / tool).write_text(f"#!{sys.executable}\n{FAKE}")
      (self.bin / tool).chmod(0o755)

  def env(self) -> dict[str, str]:
    return {"PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "FAKE_LOG": str(self.log), "FAKE_STATE": str(self.state)}

  def calls(self, *tools: str) -> list[list[str]]:
    """The calls, in order; only those of `tools` if given."""
    if not self.log.exists():
      return []
    calls = [json.loads(line) for line in self.log.read_text().splitlines()]
    return [c for c in calls if not tools or c[0] in tools]

  def home(self, name: str) -> pathlib.Path:
    """The home folder of TPU `name`'s host."""
    return self.state / "homes" / name


@pytest.fixture
def fakes(tmp_path, monkeypatch) -> Fakes:
  made = Fakes(tmp_path / "fakes")
  for key, value in made.env().items():
    monkeypatch.setenv(key, value)
  return made


def ctjax(*argv: str) -> int:
  """`ctjax ARGV` in this process; its exit status."""
  with pytest.raises(SystemExit) as exit_:
    main.main(list(argv))
  return exit_.value.code


# --------------------------------------------------------------------- TPU VMs

# A search that drivers on several machines can share, and a plain list of trials,
# which they cannot.
SWEEPS = """
from ctjax import search


def get_sweeps(arg=None):
  return {"lr": search.Search(space={"optim.lr": search.log_uniform(1e-3, 1e-1)},
                              objectives={"validation/accuracy": "max"},
                              sampler="random", trials=8),
          "seeds": [{"seed": 1}, {"seed": 2}]}
"""
STORAGE = "postgresql://ctjax@db.internal/sweeps"


def write_sweep_config(folder: pathlib.Path) -> str:
  path = run_util.write_config(folder, {**run_util.MLP_CONFIG}, "sweep.py")
  with open(path, "a") as f:
    f.write(SWEEPS)
  return path


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> pathlib.Path:
  """A git checkout (the current folder) with configs, constraints.txt, an
  uncommitted file and an ignored one."""
  root = tmp_path / "checkout"
  run_util.write_config(root / "configs", {"seed": 0, "batch_size": 8}, "tiny.py")
  write_sweep_config(root / "configs")
  (root / "constraints.txt").write_text("jax==0.10.2\n")
  (root / ".gitignore").write_text("runs/\n")
  (root / "runs").mkdir()
  (root / "runs" / "old.txt").write_text("ignored")
  subprocess.run(["git", "init", "-q"], cwd=root, check=True)
  subprocess.run(["git", "add", "configs", "constraints.txt", ".gitignore"],
                 cwd=root, check=True)
  (root / "notes.py").write_text("# not added yet, not ignored: copied too\n")
  monkeypatch.chdir(root)
  return root


def tpu_args(*extra: str) -> list[str]:
  return ["launch", "tpu", "--name", "trial", "--zone", "us-west4-a", *extra]


def gcloud(*args: str, project: str = "") -> list[str]:
  """A gcloud command as the launcher writes it (zone and project last)."""
  return ["gcloud", "compute", "tpus", *args, "--zone", "us-west4-a",
          *(["--project", project] if project else [])]


def vm_of(call: list[str]) -> str:
  """The TPU a gcloud call is about."""
  return call[6].partition(":")[0] if call[4] == "scp" else call[5]


def remote_script(call: list[str]) -> str:
  """The shell script of a `gcloud ... ssh --command SCRIPT` call."""
  return call[call.index("--command") + 1]


def gcsfuse_call(fakes: Fakes, name: str, bucket: str) -> list[str]:
  """The mount on TPU `name`'s host, as its shell runs it."""
  return ["gcsfuse", *tpu.GCSFUSE_OPTIONS, bucket,
          str(fakes.home(name) / "gcs" / bucket)]


def test_tpu_pod_slice_run_end_to_end(fakes, checkout, capfd):
  status = ctjax(*tpu_args("--type", "v5litepod-16", "--config", "configs/tiny.py",
                           "--workdir", "gs://bucket/runs/tiny", "--delete",
                           "--config.seed=3", "--config.batch_size=16"))
  assert status == 0
  calls = fakes.calls("gcloud")
  python = f"{sys.version_info.major}.{sys.version_info.minor}"
  assert calls[0] == gcloud("tpu-vm", "describe", "trial", "--format=value(state)")
  assert calls[1] == gcloud("tpu-vm", "create", "trial", "--accelerator-type",
                            "v5litepod-16", "--version", "v2-alpha-tpuv5-lite")
  assert calls[2][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert calls[2][6:] == ["trial:ctjax-code.tar.gz", "--worker=all", "--zone",
                          "us-west4-a"]
  install, run = calls[3], calls[4]
  assert install[:7] == gcloud("tpu-vm", "ssh", "trial", "--worker=all")[:7]
  assert "--worker=all" in install and "--worker=all" in run
  script = remote_script(install)
  assert f"venv -q --python {python} ~/ctjax-venv" in script
  assert ("cd ctjax && ~/.local/bin/uv pip install -q --python "
          "~/ctjax-venv/bin/python -c constraints.txt -e '.[tpu]'") in script
  # gcsfuse from Google's apt repository, where the host lacks it.
  assert script.startswith("(command -v gcsfuse >/dev/null || (")
  assert "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s)" in script
  assert "apt-get -q install -y -o DPkg::Lock::Timeout=600 gcsfuse))" in script
  assert calls[5] == gcloud("tpu-vm", "delete", "trial", "--quiet")
  assert len(calls) == 6
  # The run step, as the host's shell ran it: the bucket mounted in the home
  # folder, and the trainer given the folder in it.
  home = fakes.home("trial")
  assert fakes.calls("gcsfuse", "ctjax") == [
      gcsfuse_call(fakes, "trial", "bucket"),
      ["ctjax", "train", "--config", "configs/tiny.py", "--workdir",
       f"{home}/gcs/bucket/runs/tiny", "--config.seed=3", "--config.batch_size=16"]]
  # What was copied: the tracked and the untracked files, not the ignored ones.
  with tarfile.open(fakes.state / "copied.tar.gz") as archive:
    assert sorted(archive.getnames()) == [
        ".gitignore", "configs/sweep.py", "configs/tiny.py", "constraints.txt",
        "notes.py"]
  # The hosts' output streams through, after the command that made it.
  out = capfd.readouterr().out
  assert out.count("output of the TPU hosts") == 2
  assert out.index("$ " + shlex.join(run)) < out.rindex("output of the TPU hosts")


def test_tpu_queued_resource_is_polled_until_active(fakes, checkout, monkeypatch):
  monkeypatch.setattr(tpu, "POLL_S", 0.0)
  monkeypatch.setenv("FAKE_QUEUE_POLLS", "2")
  status = ctjax(*tpu_args("--type", "v6e-8", "--queued", "--spot", "--project", "p1",
                           "--config", "configs/tiny.py", "--workdir", "runs/tiny"))
  assert status == 0
  calls = fakes.calls()
  describe = gcloud("queued-resources", "describe", "trial",
                    "--format=value(state.state)", project="p1")
  assert calls[0] == describe
  assert calls[1] == gcloud("queued-resources", "create", "trial", "--node-id",
                            "trial", "--accelerator-type", "v6e-8",
                            "--runtime-version", "v2-alpha-tpuv6e", "--spot",
                            project="p1")
  # Polled while waiting for capacity: WAITING, WAITING, ACTIVE.
  assert calls[2:5] == [describe] * 3
  assert [c[4] for c in calls[5:8]] == ["scp", "ssh", "ssh"]  # no delete asked
  # A workdir on the VM's disk: no gcsfuse, to install or to mount.
  assert "gcsfuse" not in remote_script(calls[6])
  assert calls[8:] == [["ctjax", "train", "--config", "configs/tiny.py",
                        "--workdir", "runs/tiny"]]


def test_tpu_existing_vm_is_reused_and_a_failed_run_still_deletes(
    fakes, checkout, monkeypatch):
  (fakes.state / "trial").write_text("0")  # It exists, its bucket mounted.
  mount_point = fakes.home("trial") / "gcs" / "bucket"
  mount_point.mkdir(parents=True)
  (mount_point / ".mounted").touch()
  monkeypatch.setenv("FAKE_TRAIN_STATUS", "7")
  status = ctjax(*tpu_args("--type", "v4-8", "--config", "configs/tiny.py",
                           "--workdir", "gs://bucket/run", "--delete"))
  assert status == 7  # The run's own status.
  verbs = [c[3:5] for c in fakes.calls("gcloud")]
  assert verbs == [["tpu-vm", "describe"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"],
                   ["tpu-vm", "ssh"], ["tpu-vm", "delete"]]
  # Mounted already: not again.
  assert fakes.calls("gcsfuse") == []
  assert fakes.calls("ctjax")[0][4:6] == ["--workdir", f"{mount_point}/run"]


def test_tpu_dry_run_prints_the_commands_and_runs_nothing(fakes, checkout, capfd):
  status = ctjax(*tpu_args("--type", "v5litepod-16", "--queued", "--best-effort",
                           "--config", "configs/tiny.py", "--workdir", "gs://b/r",
                           "--delete", "--dry-run", "--config.seed=1"))
  assert status == 0
  assert fakes.calls() == []
  lines = capfd.readouterr().out.splitlines()
  commands = [shlex.split(line) for line in lines]
  assert [c[3:5] for c in commands] == [
      ["queued-resources", "create"], ["queued-resources", "describe"],
      ["tpu-vm", "scp"], ["tpu-vm", "ssh"], ["tpu-vm", "ssh"],
      ["queued-resources", "delete"]]
  assert commands[0][-3:] == ["--best-effort", "--zone", "us-west4-a"]
  assert remote_script(commands[4]) == (
      "mkdir -p ~/gcs/b && (mountpoint -q ~/gcs/b || gcsfuse --implicit-dirs "
      "--rename-dir-limit=1000000 --metadata-cache-ttl-secs=0 b ~/gcs/b) && cd "
      "ctjax && ~/ctjax-venv/bin/ctjax train --config configs/tiny.py --workdir "
      "~/gcs/b/r --config.seed=1")
  assert commands[5] == gcloud("queued-resources", "delete", "trial", "--force",
                               "--quiet")


def test_tpu_delete_command(fakes, checkout):
  (fakes.state / "trial").write_text("0")
  assert ctjax(*tpu_args("delete", "--queued")) == 0
  assert fakes.calls() == [gcloud("queued-resources", "delete", "trial", "--force",
                                  "--quiet")]


def test_local_workdir_of_a_multi_host_tpu_is_refused(fakes, checkout, capfd):
  status = ctjax(*tpu_args("--type", "v5litepod-16", "--config", "configs/tiny.py",
                           "--workdir", "runs/tiny"))
  assert status == 2
  assert capfd.readouterr().err.splitlines() == [
      "ctjax: error: --workdir runs/tiny: a v5litepod-16 has 4 hosts, which must "
      "all write one workdir: give shared storage: --workdir gs://BUCKET/PATH "
      "(mounted with gcsfuse on every host), or --shared-workdir for a folder on a "
      "file system that all of them mount (NFS, Filestore)"]
  assert fakes.calls() == []


def test_a_declared_shared_workdir_is_used_as_it_is(fakes, checkout, capfd):
  status = ctjax(*tpu_args("--type", "v5litepod-16", "--config", "configs/tiny.py",
                           "--workdir", "/mnt/nfs/runs/tiny", "--shared-workdir",
                           "--setup", "sudo mount -t nfs 10.0.0.2:/vol /mnt/nfs",
                           "--delete", "--dry-run"))
  assert status == 0
  run = shlex.split(capfd.readouterr().out.splitlines()[3])
  assert remote_script(run) == (
      "sudo mount -t nfs 10.0.0.2:/vol /mnt/nfs && cd ctjax && "
      "~/ctjax-venv/bin/ctjax train --config configs/tiny.py --workdir "
      "/mnt/nfs/runs/tiny")


def test_one_host_tpu_may_keep_its_workdir_but_not_delete_it(fakes, checkout, capfd):
  assert ctjax(*tpu_args("--type", "v5litepod-8", "--config", "configs/tiny.py",
                         "--workdir", "runs/tiny", "--dry-run")) == 0
  assert ctjax(*tpu_args("--type", "v5litepod-8", "--config", "configs/tiny.py",
                         "--workdir", "runs/tiny", "--delete")) == 2
  assert "--delete deletes with the run's results" in capfd.readouterr().err
  assert fakes.calls() == []


@pytest.mark.parametrize("accelerator_type,expected", [
    # From the Cloud TPU docs: v2-v5p count TensorCores, 8 per host; v5e and v6e
    # count chips, up to 8 on one host, then hosts of 4 chips.
    ("v2-8", 1), ("v3-32", 4), ("v4-8", 1), ("v4-16", 2), ("v5p-8", 1),
    ("v5p-128", 16), ("v5litepod-1", 1), ("v5litepod-8", 1), ("v5litepod-16", 4),
    ("v5litepod-256", 64), ("v6e-8", 1), ("v6e-32", 8), ("tpu9z-8", None)])
def test_hosts_per_accelerator_type(accelerator_type, expected):
  assert tpu.hosts(accelerator_type) == expected


def tpu_sweep_args(*extra: str) -> list[str]:
  return tpu_args("--type", "v5litepod-8", "--config", "configs/sweep.py",
                  "--sweep", "lr", "--storage", STORAGE, *extra)


def test_tpu_sweep_runs_a_driver_per_vm_and_goes_on_without_a_failed_one(
    fakes, checkout, monkeypatch, capfd):
  monkeypatch.setenv("FAKE_NO_CAPACITY", "trial-1")
  status = ctjax(*tpu_sweep_args("--count", "3", "--workdir", "gs://bucket/sweep",
                                 "--study", "s1", "--delete", "--config.seed=4"))
  assert status == 2  # trial-1's, the first failure in order.
  by_vm = {name: [c[3:5] for c in fakes.calls("gcloud") if vm_of(c) == name]
           for name in ("trial-0", "trial-1", "trial-2")}
  ran = [["tpu-vm", "describe"], ["tpu-vm", "create"], ["tpu-vm", "scp"],
         ["tpu-vm", "ssh"], ["tpu-vm", "ssh"], ["tpu-vm", "delete"]]
  assert by_vm == {"trial-0": ran, "trial-2": ran, "trial-1": [
      ["tpu-vm", "describe"], ["tpu-vm", "create"], ["tpu-vm", "delete"]]}
  # One driver per VM, a trial at a time, each in the bucket as its host mounted
  # it, all joining the study (heartbeats on by default).
  drivers = sorted(fakes.calls("ctjax"), key=lambda c: c[7])
  assert drivers == [
      ["ctjax", "sweep", "--config", "configs/sweep.py", "--sweep", "lr",
       "--workdir", f"{fakes.home(name)}/gcs/bucket/sweep", "--workers", "1",
       "--storage", STORAGE, "--heartbeat-s", "60", "--study", "s1",
       "--config.seed=4"] for name in ("trial-0", "trial-2")]
  assert sorted(fakes.calls("gcsfuse")) == [
      gcsfuse_call(fakes, name, "bucket") for name in ("trial-0", "trial-2")]
  # Each VM's lines, the failure's too, name it.
  captured = capfd.readouterr()
  assert captured.out.count("[trial-0] output of the TPU hosts") == 2
  assert captured.out.count("[trial-2] output of the TPU hosts") == 2
  assert ("[trial-1] ctjax: error: creating TPU trial-1 failed (gcloud's message "
          "above): fix what it says, or try another --zone") in captured.err
  assert "[trial-1] ERROR: (gcloud.compute.tpus.tpu-vm.create) There is no more " \
         "capacity" in captured.out


def test_tpu_sweep_dry_run_and_delete_name_every_vm(fakes, checkout, capfd):
  assert ctjax(*tpu_sweep_args("--count", "2", "--workdir", "gs://bucket/sweep",
                               "--dry-run")) == 0
  commands = [shlex.split(line) for line in capfd.readouterr().out.splitlines()]
  assert [(c[4], vm_of(c)) for c in commands] == [
      (verb, name) for name in ("trial-0", "trial-1")
      for verb in ("create", "scp", "ssh", "ssh")]
  assert remote_script(commands[3]).endswith(
      "~/ctjax-venv/bin/ctjax sweep --config configs/sweep.py --sweep lr --workdir "
      f"~/gcs/bucket/sweep --workers 1 --storage {STORAGE} --heartbeat-s 60")
  assert fakes.calls() == []
  for name in ("trial-0", "trial-1"):
    (fakes.state / name).write_text("0")
  assert ctjax(*tpu_args("delete", "--count", "2")) == 0
  assert fakes.calls() == [gcloud("tpu-vm", "delete", name, "--quiet")
                           for name in ("trial-0", "trial-1")]


SQLITE_REFUSED = (
    "--storage sqlite:///optuna.db: the drivers on {machines} share one study, in a "
    "database server that all of them reach: give --storage "
    "postgresql://USER@HOST/DB (a journal file or SQLite is for a sweep on one "
    "machine: run `ctjax sweep` there)")


@pytest.mark.parametrize("argv,error", [
    (tpu_sweep_args("--type", "v5litepod-16", "--workdir", "gs://b/s"),
     "--type v5litepod-16 with --sweep: a trial per TPU VM needs one-host VMs (such "
     "as v5litepod-8, v6e-8, v4-8); give --count for more of them"),
    (tpu_sweep_args("--count", "2", "--workdir", "gs://b/s", "--storage",
                    "sqlite:///optuna.db"),
     SQLITE_REFUSED.format(machines="2 TPU VM(s)")),
    (tpu_sweep_args("--workdir", "gs://b/s", "--storage", "runs/optuna.journal"),
     "--storage runs/optuna.journal: the drivers on 1 TPU VM(s) share one study"),
    (tpu_sweep_args("--workdir", "gs://b/s", "--storage", ""),
     "--sweep without --storage: the drivers on 1 TPU VM(s) share one study"),
    (tpu_sweep_args("--workdir", "gs://b/s", "--sweep", "seeds"),
     "--sweep seeds is a list of trials, which each driver would run all of: "
     "drivers on 1 TPU VM(s) share only a search's study; make it a search"),
    (tpu_sweep_args("--workdir", "runs/sweep"),
     "--workdir runs/sweep: the sweep's TPU VMs keep their trials in one folder, "
     "so that a trial retried on another VM resumes there: give shared storage"),
    (tpu_args("--type", "v5litepod-8", "--config", "configs/tiny.py", "--workdir",
              "gs://b/r", "--count", "2"),
     "--count 2 is for a sweep (--sweep NAME), a trial per TPU VM"),
    (["launch", "slurm", "--config", "configs/sweep.py", "--workdir", "sweep",
      "--nodes", "2", "--gpus-per-node", "4", "--sweep", "lr", "--storage",
      "sqlite:///optuna.db"],
     SQLITE_REFUSED.format(machines="2 node(s)")),
])
def test_sweeps_that_machines_could_not_share_are_refused(fakes, checkout, capfd,
                                                          argv, error):
  assert ctjax(*argv) == 2
  err = capfd.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("ctjax: error: " + error), err
  assert fakes.calls() == []


# ----------------------------------------------------------------------- SLURM


SCRIPT_OPTIONS = ["--job-name=ctjax-run", "--nodes=2", "--ntasks-per-node=4",
                  "--gpus-per-node=4", "--time=01:00:00", "--partition=gpu",
                  "--requeue", "--signal=TERM@120", "--open-mode=append"]


def sbatch_options(script: str) -> list[str]:
  return [line.split(" ", 1)[1] for line in script.splitlines()
          if line.startswith("#SBATCH ")]


def test_slurm_script_and_submission(fakes, tmp_path):
  config = run_util.write_config(tmp_path, {"seed": 0})
  workdir = tmp_path / "run"
  status = ctjax("launch", "slurm", "--config", config, "--workdir", str(workdir),
                 "--nodes", "2", "--gpus-per-node", "4", "--time", "01:00:00",
                 "--partition", "gpu", "--sbatch", "account=ml", "--sbatch",
                 "exclusive", "--setup", "module load cuda", "--config.seed=2")
  assert status == 0
  script_path = workdir / "slurm" / "job.sh"
  assert fakes.calls() == [["sbatch", str(script_path)]]
  script = script_path.read_text()
  assert sbatch_options(script) == [
      *SCRIPT_OPTIONS, f"--output={workdir}/slurm/%j.out", "--account=ml",
      "--exclusive"]
  lines = script.splitlines()
  srun = lines.index(next(line for line in lines if line.startswith("srun ")))
  assert lines[srun - 2:srun] == [f"cd {os.getcwd()}", "module load cuda"]
  assert shlex.split(lines[srun]) == [
      "srun", "--kill-on-bad-exit=1", sys.executable, "-m", "ctjax", "train",
      "--config", config, "--workdir", str(workdir), "--config.seed=2"]
  assert shlex.split(lines[srun + 1]) == [
      sys.executable, "-m", "ctjax", "launch", "slurm", "after-run", "--workdir",
      str(workdir), "--max-resubmits", "3", "--run-status", "$?"]
  assert "JAX_LOCAL_DEVICE_IDS" not in script  # One GPU per process: JAX's default.


def test_slurm_one_process_per_node_dry_run(fakes, tmp_path, capfd):
  config = run_util.write_config(tmp_path, {"seed": 0})
  status = ctjax("launch", "slurm", "--config", config, "--workdir",
                 str(tmp_path / "run"), "--gpus-per-node", "8", "--process-per",
                 "node", "--dry-run")
  assert status == 0
  assert fakes.calls() == [] and not (tmp_path / "run").exists()
  *script, submit = capfd.readouterr().out.splitlines()
  assert submit == f"sbatch {tmp_path}/run/slurm/job.sh"
  assert "--ntasks-per-node=1" in sbatch_options("\n".join(script))
  assert "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7" in script


def test_slurm_sweep_starts_a_driver_per_node_and_a_trial_per_gpu(fakes, tmp_path):
  config = write_sweep_config(tmp_path)
  workdir = tmp_path / "sweep"
  assert ctjax("launch", "slurm", "--config", config, "--workdir", str(workdir),
               "--nodes", "3", "--gpus-per-node", "4", "--sweep", "lr",
               "--storage", STORAGE, "--heartbeat-s", "30",
               "--config.seed=5") == 0
  script = (workdir / "slurm" / "job.sh").read_text()
  assert sbatch_options(script) == [
      "--job-name=ctjax-sweep", "--nodes=3", "--ntasks-per-node=1",
      "--gpus-per-node=4", "--requeue", "--signal=TERM@120", "--open-mode=append",
      f"--output={workdir}/slurm/%j.out"]
  lines = script.splitlines()
  srun = lines.index(next(line for line in lines if line.startswith("srun ")))
  assert lines[srun - 1] == "export JAX_NUM_PROCESSES=1 JAX_PROCESS_ID=0"
  assert shlex.split(lines[srun]) == [
      "srun", "--ntasks-per-node=1", sys.executable, "-m", "ctjax", "sweep",
      "--config", config, "--sweep", "lr", "--workdir", str(workdir), "--workers",
      "4", "--devices-per-trial", "1", "--storage", STORAGE, "--heartbeat-s", "30",
      "--config.seed=5"]
  assert shlex.split(lines[srun + 1]) == [
      sys.executable, "-m", "ctjax", "launch", "slurm", "after-run", "--workdir",
      str(workdir), "--max-resubmits", "3", "--sweep", "lr", "--run-status", "$?"]
  # A trial under that export, in the environment of the srun's task 1 of 3, runs
  # alone; without it, it would wait for task 0 as process 1 of a 3-process job.
  exported = dict(item.split("=") for item in lines[srun - 1].split()[1:])
  task = run_util.env(1, SLURM_JOB_ID="7", SLURM_STEP_NODELIST="localhost",
                      SLURM_NTASKS="3", SLURM_PROCID="1", SLURM_LOCALID="0",
                      CTJAX_JOIN_TIMEOUT_S="1")
  alone = subprocess.run([sys.executable, "-c", PROCESS], cwd=run_util.REPO,
                         env={**task, **exported}, capture_output=True, text=True,
                         timeout=120)
  assert alone.stdout.split() == ["0", "1", "1"], alone.stderr


def test_slurm_sweep_is_requeued_when_its_drivers_were_stopped(fakes, monkeypatch,
                                                               capfd):
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
  for status in (0, 1):  # Every trial done; some failed: the job ends.
    assert slurm.after_run("/shared/sweep", status, 3, sweep=True) == status
  assert fakes.calls() == []
  captured = capfd.readouterr()
  assert "/shared/sweep: the sweep has finished" in captured.out
  assert "status 1: not requeued" in captured.err
  # SIGTERM stopped the drivers: their trials saved, the job goes on.
  assert slurm.after_run("/shared/sweep", slurm.STOPPED_SWEEP, 3, sweep=True) == 0
  assert fakes.calls() == [["scontrol", "requeue", "4242"]]
  assert ("requeueing job 4242 (2 of at most 3); its drivers rejoin the study"
          in capfd.readouterr().out)
  monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
  assert slurm.after_run("/shared/sweep", slurm.STOPPED_SWEEP, 3, sweep=True) == 1
  assert len(fakes.calls()) == 1  # No more.


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
  """A real run from the batch script: srun's `ctjax train` gets SIGTERM once it
  trains, saves and exits 0; the script's after-run step requeues the job. Then
  the requeued job: the same script, SLURM_RESTART_COUNT=1, not preempted.

  Returns the fakes, the run's workdir (finished), a copy of it as the first
  attempt left it, each attempt's result, and the calls after each."""
  folder = tmp_path_factory.mktemp("preempted")
  made = Fakes(folder / "fakes")
  # SIGTERM comes once step 1 is logged: 100 steps leave the run time to take it
  # before its end, and few to train in the requeued job.
  config = run_util.write_config(folder, {
      **run_util.MLP_CONFIG, "train_duration": 100,
      "checkpoint": {"every": 0, "async_save": False}})
  workdir = folder / "run"
  with pytest.MonkeyPatch.context() as monkeypatch:
    for key, value in made.env().items():
      monkeypatch.setenv(key, value)
    monkeypatch.chdir(run_util.REPO)
    assert ctjax("launch", "slurm", "--config", config, "--workdir", str(workdir),
                 "--process-per", "node") == 0
  # The batch script run by bash, as SLURM runs it on the job's first node.
  env = {**run_util.env(1), **made.env(), "SLURM_JOB_ID": "4242"}
  job = ["bash", str(workdir / "slurm" / "job.sh")]
  first = subprocess.run(job, capture_output=True, text=True, env=env,
                         timeout=run_util.TIMEOUT_S)
  first_calls = made.calls()
  stopped = folder / "stopped"
  shutil.copytree(workdir, stopped)
  requeued = subprocess.run(job, capture_output=True, text=True, timeout=run_util.
                            TIMEOUT_S, env={**env, "SLURM_RESTART_COUNT": "1",
                                            "FAKE_PREEMPT": "0"})
  return made, workdir, stopped, (first, requeued), (first_calls, made.calls())


def test_slurm_preempted_run_is_requeued(preempted):
  _, _, stopped, (result, _), (calls, _) = preempted
  assert result.returncode == 0, result.stdout + result.stderr
  # The real run saved its step on SIGTERM and stopped before its end ...
  assert "SIGTERM: saving step" in result.stdout
  assert run_util.checkpoint_steps(stopped)
  assert max(run_util.checkpoint_steps(stopped)) < 100
  assert cv.final_metrics(str(stopped)) is None
  # ... and the script requeued the job, once.
  assert [c[0] for c in calls] == ["sbatch", "srun", "scontrol"]
  assert calls[-1] == ["scontrol", "requeue", "4242"]
  assert "requeueing job 4242 (1 of at most 3)" in result.stdout


def test_slurm_requeued_job_resumes_and_finishes(preempted):
  _, workdir, stopped, (_, result), (before, calls) = preempted
  assert result.returncode == 0, result.stdout + result.stderr
  saved = max(run_util.checkpoint_steps(stopped))
  assert f"training steps {saved}..100" in result.stdout  # From the checkpoint.
  assert cv.final_metrics(str(workdir)) is not None
  assert f"{workdir} has finished" in result.stdout
  assert [c[0] for c in calls[len(before):]] == ["srun"]  # No scontrol.


def test_slurm_requeues_are_bounded_and_failures_not_requeued(preempted, monkeypatch,
                                                              capfd):
  made, _, stopped, _, _ = preempted
  for key, value in made.env().items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  calls = len(made.calls())
  monkeypatch.setenv("SLURM_RESTART_COUNT", "3")  # The last allowed requeue ran.
  assert slurm.after_run(str(stopped), run_status=0, max_resubmits=3) == 1
  assert "has not finished after 3 requeue(s)" in capfd.readouterr().err
  monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
  assert slurm.after_run(str(stopped), run_status=1, max_resubmits=3) == 1
  assert "exited with status 1: not requeued" in capfd.readouterr().err
  assert len(made.calls()) == calls  # No scontrol either time.


# ------------------------------------------------------------- the join check


def join_env(process_id: int, num_processes: int, port: int, **extra: str
             ) -> dict[str, str]:
  return run_util.env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                      JAX_NUM_PROCESSES=str(num_processes),
                      JAX_PROCESS_ID=str(process_id), **extra)


def set_env(monkeypatch, env: dict[str, str]) -> None:
  """This process's part of `env`: the job's description, not its XLA flags."""
  for key, value in env.items():
    if key.startswith(("JAX_", "CTJAX_")):
      monkeypatch.setenv(key, value)


def test_a_missing_process_is_named_instead_of_hanging(tmp_path, monkeypatch,
                                                       capfd):
  # Process 0 of 2 alone: `ctjax train` stops at the join check, before JAX's
  # distributed service starts (so it may run in this test's process).
  port = multiprocess_util.free_port()
  set_env(monkeypatch, join_env(0, 2, port, CTJAX_JOIN_TIMEOUT_S="1"))
  start = time.monotonic()
  assert ctjax("train", "--config", str(run_util.REPO / "configs" / "default.py"),
               "--workdir", str(tmp_path / "run")) == 2
  assert time.monotonic() - start < 30  # About 1 s, not JAX's 5 minutes.
  assert capfd.readouterr().err.splitlines() == [
      "ctjax: error: 1 of 2 processes joined within 1 s (CTJAX_JOIN_TIMEOUT_S); "
      "process id 1 did not: check that the same command started on its host and "
      f"that it reaches 127.0.0.1:{port}"]


# Each process of the tests below: the join check and jax.distributed, then its
# place in the job, or the error's line with exit status 2.
PROCESS = ("from ctjax import distributed\n"
           "from ctjax.errors import UserError\n"
           "try:\n"
           "  distributed.initialize()\n"
           "except UserError as e:\n"
           "  raise SystemExit(f'error: {e}')\n"
           "import jax\n"
           "print(jax.process_index(), jax.process_count(), jax.device_count())\n")


def test_processes_that_all_join_start_jax_distributed_from_slurm():
  port = multiprocess_util.free_port()
  processes = [subprocess.Popen(
      [sys.executable, "-c", PROCESS], cwd=run_util.REPO, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      env=run_util.env(2, SLURM_JOB_ID="7", SLURM_STEP_NODELIST="localhost",
                       SLURM_NTASKS="2", SLURM_PROCID=str(i), SLURM_LOCALID="0",
                       JAX_COORDINATOR_PORT=str(port), CTJAX_JOIN_TIMEOUT_S="60"))
      for i in range(2)]
  outputs = [p.communicate(timeout=120) for p in processes]
  assert [o[0].split() for o in outputs] == [["0", "2", "4"], ["1", "2", "4"]], outputs


def test_the_coordinator_names_the_absent_and_tells_the_present(monkeypatch):
  port = multiprocess_util.free_port()
  # Process 2 of 3 joins; process 1 never comes. The coordinator's 3 s start once
  # process 2 has its imports done (seconds on a loaded machine) and is joining.
  present = subprocess.Popen(
      [sys.executable, "-c", "import ctjax.distributed\nprint('joining', flush=True)\n"
       + PROCESS], cwd=run_util.REPO,
      env=join_env(2, 3, port, CTJAX_JOIN_TIMEOUT_S="30"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert present.stdout.readline() == "joining\n"
  set_env(monkeypatch, join_env(0, 3, port))
  with pytest.raises(UserError) as error:
    distributed.initialize(timeout_s=3)
  expected = ("2 of 3 processes joined within 3 s (CTJAX_JOIN_TIMEOUT_S); process "
              "id 1 did not: check that the same command started on its host and "
              f"that it reaches 127.0.0.1:{port}")
  assert str(error.value) == expected
  _, stderr = present.communicate(timeout=60)
  assert present.returncode == 1 and stderr.strip() == "error: " + expected


def test_a_process_without_its_coordinator_says_so(monkeypatch):
  port = multiprocess_util.free_port()
  set_env(monkeypatch, join_env(1, 2, port))
  with pytest.raises(UserError, match=rf"^process 1 of 2: process 0 \(the "
                     rf"coordinator, 127.0.0.1:{port}\) did not answer within 1 s"):
    distributed.initialize(timeout_s=1)
