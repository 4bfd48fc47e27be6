"""`ctjax launch` against fake gcloud, sbatch, scontrol and srun, and the join check.

The fakes are small programs put first on PATH. Each appends its argv to a log (a
JSON list per line) and answers as the real one would for the calls the launcher
makes: `describe` says NOT_FOUND until a `create`, then the state (a queued
resource WAITING_FOR_RESOURCES for FAKE_QUEUE_POLLS polls, then ACTIVE); `sbatch`
says "Submitted batch job"; `srun` runs the real `ctjax train` it is given and
sends it SIGTERM once it has trained a step, as SLURM does before a time limit or
a preemption.

The join check (ctjax/distributed.py) runs for real: processes on localhost, one
of them missing.
"""
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

import multiprocess_util
import run_util
import shared_runs
from ctjax import cv
from ctjax import distributed
from ctjax import main
from ctjax.errors import UserError
from ctjax.launch import slurm
from ctjax.launch import tpu

FAKE = textwrap.dedent("""\
    import json, os, signal, subprocess, sys, time
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
      metrics = os.path.join(args[args.index("--workdir") + 1], "metrics.jsonl")
      while process.poll() is None and not (os.path.exists(metrics) and
                                            os.path.getsize(metrics)):
        time.sleep(0.02)
      process.send_signal(signal.SIGTERM)
      sys.exit(process.wait())
    elif tool == "gcloud":  # gcloud compute tpus GROUP VERB NAME ...
      group, verb, name = args[2:5]
      marker = os.path.join(state, name)
      if verb == "describe":
        if not os.path.exists(marker):
          sys.exit(f"ERROR: (gcloud.compute.tpus.{group}.describe) NOT_FOUND: "
                   f"{name} was not found")
        with open(marker) as f:
          waits = int(f.read())
        with open(marker, "w") as f:
          f.write(str(waits - 1))
        print("READY" if group == "tpu-vm" else
              "WAITING_FOR_RESOURCES" if waits > 0 else "ACTIVE")
      elif verb == "create":
        with open(marker, "w") as f:
          f.write(os.environ.get("FAKE_QUEUE_POLLS", "0"))
      elif verb == "delete":
        os.remove(marker)
      elif verb == "scp":
        os.replace(args[4], os.path.join(state, "copied.tar.gz"))
      elif verb == "ssh":
        print("output of the TPU hosts")
        if " train " in args[args.index("--command") + 1]:
          sys.exit(int(os.environ.get("FAKE_TRAIN_STATUS", "0")))
    """)
TOOLS = ("gcloud", "sbatch", "scontrol", "srun")


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

  def calls(self) -> list[list[str]]:
    if not self.log.exists():
      return []
    return [json.loads(line) for line in self.log.read_text().splitlines()]


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


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> pathlib.Path:
  """A git checkout (the current folder) with a config, constraints.txt, an
  uncommitted file and an ignored one."""
  root = tmp_path / "checkout"
  run_util.write_config(root / "configs", {"seed": 0, "batch_size": 8}, "tiny.py")
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


def test_tpu_pod_slice_run_end_to_end(fakes, checkout, capfd):
  status = ctjax(*tpu_args("--type", "v5litepod-16", "--config", "configs/tiny.py",
                           "--workdir", "gs://bucket/runs/tiny", "--delete",
                           "--config.seed=3", "--config.batch_size=16"))
  assert status == 0
  calls = fakes.calls()
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
  script = install[install.index("--command") + 1]
  assert f"venv -q --python {python} ~/ctjax-venv" in script
  assert ("cd ctjax && ~/.local/bin/uv pip install -q --python "
          "~/ctjax-venv/bin/python -c constraints.txt -e '.[tpu]'") in script
  assert shlex.split(run[run.index("--command") + 1]) == [
      "cd", "ctjax", "&&", "~/ctjax-venv/bin/ctjax", "train", "--config",
      "configs/tiny.py", "--workdir", "gs://bucket/runs/tiny", "--config.seed=3",
      "--config.batch_size=16"]
  assert calls[5] == gcloud("tpu-vm", "delete", "trial", "--quiet")
  assert len(calls) == 6
  # What was copied: the tracked and the untracked files, not the ignored ones.
  with tarfile.open(fakes.state / "copied.tar.gz") as archive:
    assert sorted(archive.getnames()) == [".gitignore", "configs/tiny.py",
                                          "constraints.txt", "notes.py"]
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
  assert [c[4] for c in calls[5:]] == ["scp", "ssh", "ssh"]  # no delete asked


def test_tpu_existing_vm_is_reused_and_a_failed_run_still_deletes(
    fakes, checkout, monkeypatch):
  (fakes.state / "trial").write_text("0")  # It exists.
  monkeypatch.setenv("FAKE_TRAIN_STATUS", "7")
  status = ctjax(*tpu_args("--type", "v4-8", "--config", "configs/tiny.py",
                           "--workdir", "gs://bucket/run", "--delete"))
  assert status == 7  # The run's own status.
  verbs = [c[3:5] for c in fakes.calls()]
  assert verbs == [["tpu-vm", "describe"], ["tpu-vm", "scp"], ["tpu-vm", "ssh"],
                   ["tpu-vm", "ssh"], ["tpu-vm", "delete"]]


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
  assert commands[4][commands[4].index("--command") + 1] == (
      "cd ctjax && ~/ctjax-venv/bin/ctjax train --config configs/tiny.py --workdir "
      "gs://b/r --config.seed=1")
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
      "all write one workdir: give shared storage, --workdir gs://BUCKET/PATH"]
  assert fakes.calls() == []


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


@pytest.fixture(scope="module")
def preempted(tmp_path_factory):
  """A real run from the batch script: srun's `ctjax train` gets SIGTERM once it
  trains, saves and exits 0; the script's after-run step requeues the job."""
  folder = tmp_path_factory.mktemp("preempted")
  made = Fakes(folder / "fakes")
  config = run_util.write_config(folder, {
      **run_util.MLP_CONFIG, "train_duration": 300,
      "checkpoint": {"every": 0, "async_save": False}})
  workdir = folder / "run"
  with pytest.MonkeyPatch.context() as monkeypatch:
    for key, value in made.env().items():
      monkeypatch.setenv(key, value)
    monkeypatch.chdir(run_util.REPO)
    assert ctjax("launch", "slurm", "--config", config, "--workdir", str(workdir),
                 "--process-per", "node") == 0
  # The batch script run by bash, as SLURM runs it on the job's first node.
  result = subprocess.run(
      ["bash", str(workdir / "slurm" / "job.sh")], capture_output=True, text=True,
      env={**run_util.env(1), **made.env(), "SLURM_JOB_ID": "4242"},
      timeout=run_util.TIMEOUT_S)
  return made, workdir, result, made.calls()


def test_slurm_preempted_run_is_requeued(preempted):
  _, workdir, result, calls = preempted
  assert result.returncode == 0, result.stdout + result.stderr
  # The real run saved its step on SIGTERM and stopped before its end ...
  assert "SIGTERM: saving step" in result.stdout
  assert run_util.checkpoint_steps(workdir)
  assert max(run_util.checkpoint_steps(workdir)) < 300
  assert cv.final_metrics(str(workdir)) is None
  # ... and the script requeued the job, once.
  assert [c[0] for c in calls] == ["sbatch", "srun", "scontrol"]
  assert calls[-1] == ["scontrol", "requeue", "4242"]
  assert "requeueing job 4242 (1 of at most 3)" in result.stdout


def test_slurm_requeues_are_bounded_and_failures_not_requeued(preempted, monkeypatch,
                                                              capfd):
  made, workdir, _, _ = preempted
  for key, value in made.env().items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  calls = len(made.calls())
  monkeypatch.setenv("SLURM_RESTART_COUNT", "3")  # The last allowed requeue ran.
  assert slurm.after_run(str(workdir), run_status=0, max_resubmits=3) == 1
  assert "has not finished after 3 requeue(s)" in capfd.readouterr().err
  monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
  assert slurm.after_run(str(workdir), run_status=1, max_resubmits=3) == 1
  assert "exited with status 1: not requeued" in capfd.readouterr().err
  assert len(made.calls()) == calls  # No scontrol either time.


def test_slurm_finished_run_is_not_requeued(fakes, tmp_path_factory, monkeypatch,
                                            capfd):
  # A finished run of the default config (which other tests share; read only).
  workdir = (shared_runs.short_default_run(tmp_path_factory).dir / "runs" /
             "default-steps_20")
  monkeypatch.setenv("SLURM_JOB_ID", "4242")
  monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
  assert slurm.after_run(str(workdir), run_status=0, max_resubmits=3) == 0
  assert f"{workdir} has finished" in capfd.readouterr().out
  assert fakes.calls() == []  # No scontrol.


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
  # Process 2 of 3 joins; process 1 never comes.
  present = subprocess.Popen([sys.executable, "-c", PROCESS], cwd=run_util.REPO,
                             env=join_env(2, 3, port, CTJAX_JOIN_TIMEOUT_S="30"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
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
