"""`ctjax launch slurm`: a run, or a sweep, on a SLURM cluster, requeued until it
has finished.

  ctjax launch slurm --config configs/X.py[:ARG] --workdir /shared/runs/X \\
      --nodes 2 --gpus-per-node 8 [--process-per gpu|node] [--time 24:00:00] \\
      [--partition P] [--max-resubmits 3] [--setup 'module load cuda'] \\
      [--sbatch KEY=VALUE ...] [--dry-run] [--config.a.b=VALUE ...]
  ctjax launch slurm --config ... --workdir /shared/sweeps/X --nodes 4 \\
      --gpus-per-node 8 --sweep SWEEP --storage postgresql://USER@HOST/DB \\
      [--study S] [--heartbeat-s 60] [...]

It writes a batch script, WORKDIR/slurm/job.sh, and submits it with `sbatch`
(--dry-run prints it and the sbatch command instead). The job's output goes to
WORKDIR/slurm/JOBID.out, each attempt appended. The checkout, its virtual
environment (the script runs this Python) and the workdir must be on storage that
every node sees, as the workdir is written by all of them.

The script `srun`s `ctjax train` on every node: one process per GPU (the default)
or one per node, whose CUDA sees all of the node's GPUs (JAX_LOCAL_DEVICE_IDS).
Each process starts jax.distributed from SLURM's environment, and a process that
never starts is named after CTJAX_JOIN_TIMEOUT_S (ctjax/distributed.py).

Preemption and time limits: `--signal=TERM@120` has SLURM send SIGTERM to the
training processes 120 s before the time limit, as it does before preempting; each
saves a checkpoint and exits 0 before the run's end. The script then runs
`ctjax launch slurm after-run`, which looks at the workdir: a finished run (its
final evaluation is in metrics.jsonl) ends the job; an unfinished one requeues it
(`scontrol requeue`, hence `--requeue`), up to --max-resubmits times
(SLURM_RESTART_COUNT counts them), and the requeued job's `ctjax train` resumes
from the checkpoint. A run that failed (a non-zero exit) is not requeued: a crash
would only repeat.

A sweep (--sweep SWEEP --storage postgresql://USER@HOST/DB, a search of the config's
get_sweeps()): `srun --ntasks-per-node=1` starts one sweep driver per node, each
running --workers GPUS_PER_NODE trials at once, one GPU each; all of them join the
study in the database, and keep the trials in WORKDIR/trials. Their trials are runs
of their own: the script sets JAX_NUM_PROCESSES=1, or each would take the srun's
tasks for the processes of one JAX job. On SIGTERM (a preemption, the time limit)
each driver stops its trials, which save a checkpoint and go back to the study, and
exits with status 130; after-run then requeues the job, up to --max-resubmits
times, and the requeued job's drivers rejoin the study and resume those trials. A
node that dies without SIGTERM leaves its trials silent: after three
--heartbeat-s the other nodes' drivers retry them. Drivers that end otherwise
(every trial done: 0; some failed: 1) end the job.
"""
import argparse
import os
import shlex
import sys

from ctjax import config as config_lib
from ctjax import launch as runner
from ctjax.errors import UserError

SCRIPT = "job.sh"
# Seconds between SLURM's SIGTERM and the time limit: enough to save a checkpoint.
SAVE_S = 120
# The exit status of a sweep driver that SIGINT or SIGTERM stopped
# (ctjax/sweep_driver.py), its trials saved: the sweep goes on in a requeued job.
STOPPED_SWEEP = 130


def script(*, arguments: list[str], workdir: str, nodes: int, gpus_per_node: int,
           process_per: str, time_limit: str, partition: str, max_resubmits: int,
           setup: list[str], sbatch: list[str], job_name: str, python: str,
           checkout: str, sweep: str = "") -> str:
  """The batch script's text: `ctjax ARGUMENTS` (a run's `train ...`, or with
  `sweep` its drivers' `sweep ...`) on every node. `checkout` is the folder it runs
  in, from which relative paths count, and `python` the interpreter that runs
  ctjax there."""
  tasks = gpus_per_node if process_per == "gpu" and not sweep else 1
  job_dir = os.path.join(workdir, "slurm")
  options = [f"--job-name={job_name}", f"--nodes={nodes}",
             f"--ntasks-per-node={tasks}",
             *([f"--gpus-per-node={gpus_per_node}"] if gpus_per_node else []),
             *([f"--time={time_limit}"] if time_limit else []),
             *([f"--partition={partition}"] if partition else []),
             "--requeue", f"--signal=TERM@{SAVE_S}", "--open-mode=append",
             f"--output={os.path.join(job_dir, '%j.out')}",
             *(f"--{option}" for option in sbatch)]
  program = [python, "-m", "ctjax", *arguments]
  after_run = [python, "-m", "ctjax", "launch", "slurm", "after-run", "--workdir",
               workdir, "--max-resubmits", str(max_resubmits),
               *(["--sweep", sweep] if sweep else [])]
  stopping, saving = (("the sweep drivers, whose trials save", "the trials save")
                      if sweep else ("the training processes, which save",
                                     "the training processes save"))
  lines = [
      "#!/bin/bash",
      *(f"#SBATCH {option}" for option in options),
      "# Written by `ctjax launch slurm` (see ctjax/launch/slurm.py).",
      "",
      "# SIGTERM (the time limit is near, or a preemption) goes to",
      f"# {stopping} a checkpoint and stop. This shell stays",
      "# to decide on requeueing: a handler, unlike an ignored signal, is not",
      "# inherited.",
      f"trap {shlex.quote(f'echo SIGTERM: {saving} a checkpoint and stop')} TERM",
      f"cd {shlex.quote(checkout)}",
      *setup,
  ]
  if sweep:
    lines += [
        "# Each trial is a run of its own, not one process of a JAX job made of the",
        "# srun's tasks, as ctjax/distributed.py would read SLURM's variables.",
        "export JAX_NUM_PROCESSES=1 JAX_PROCESS_ID=0",
        # No --kill-on-bad-exit: a driver that ends (its trials failed, say) leaves
        # the other nodes' drivers to the sweep.
        f"srun --ntasks-per-node=1 {shlex.join(program)}",
    ]
  else:
    if process_per == "node" and gpus_per_node:
      # JAX would give each SLURM task the one GPU of its local id; here one task
      # drives them all.
      lines.append("export JAX_LOCAL_DEVICE_IDS=" +
                   ",".join(str(i) for i in range(gpus_per_node)))
    lines.append(f"srun --kill-on-bad-exit=1 {shlex.join(program)}")
  lines.append(f"{shlex.join(after_run)} --run-status $?")
  return "\n".join(lines) + "\n"


def submit_command(script_path: str) -> list[str]:
  return ["sbatch", script_path]


def requeue_command(job_id: str) -> list[str]:
  return ["scontrol", "requeue", job_id]


def after_run(workdir: str, run_status: int, max_resubmits: int,
              sweep: bool = False) -> int:
  """The batch script's last step: requeues the job if the run (or the sweep)
  stopped before its end; returns the job's exit status."""
  job_id = os.environ.get("SLURM_JOB_ID", "")
  if not job_id:
    raise UserError("ctjax launch slurm after-run runs inside a SLURM job (the "
                    "script `ctjax launch slurm` writes): SLURM_JOB_ID is not set")
  if sweep:
    if run_status == 0:
      print(f"ctjax: {workdir}: the sweep has finished", flush=True)
      return 0
    if run_status != STOPPED_SWEEP:  # Trials failed (1), or a driver crashed.
      print(f"ctjax: the sweep's drivers ended with status {run_status}: not "
            "requeued; see their output, and submit again to resume",
            file=sys.stderr, flush=True)
      return run_status
  else:
    if run_status != 0:
      print(f"ctjax: the run exited with status {run_status}: not requeued (a "
            "crash would only repeat); fix what its output says and submit again "
            "to resume", file=sys.stderr, flush=True)
      return run_status
    from ctjax import cv  # pylint: disable=g-import-not-at-top
    if cv.final_metrics(workdir) is not None:
      print(f"ctjax: {workdir} has finished", flush=True)
      return 0
  restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
  if restarts >= max_resubmits:
    print(f"ctjax: {workdir} has not finished after {restarts} requeue(s) "
          f"(--max-resubmits {max_resubmits}): submit the same command again to "
          "resume it", file=sys.stderr, flush=True)
    return 1
  resumes = ("its drivers rejoin the study and resume its trials" if sweep else
             "it resumes from its last checkpoint")
  print(f"ctjax: {workdir} stopped before its end: requeueing job {job_id} "
        f"({restarts + 1} of at most {max_resubmits}); {resumes}", flush=True)
  return runner.execute(requeue_command(job_id)).returncode


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("action", nargs="?", choices=("submit", "after-run"),
                      default="submit",
                      help="submit (default); after-run: the batch script's last "
                      "step, which requeues an unfinished run")
  parser.add_argument("--config", default="",
                      help="configs/NAME.py[:ARG], relative to this folder")
  parser.add_argument("--workdir", required=True,
                      help="the run's folder, on storage every node sees")
  parser.add_argument("--nodes", type=int, default=1, help="default 1")
  parser.add_argument("--gpus-per-node", type=int, default=0,
                      help="GPUs of each node (0: a CPU job)")
  parser.add_argument("--process-per", choices=("gpu", "node"), default=None,
                      help="a run's processes: one per GPU (default), or per node")
  parser.add_argument("--time", default="",
                      help="time limit, e.g. 24:00:00 (default: the partition's)")
  parser.add_argument("--partition", default="", help="default: the cluster's")
  parser.add_argument("--sbatch", action="append", default=[],
                      metavar="KEY=VALUE",
                      help="another #SBATCH --KEY=VALUE (or a bare --KEY), e.g. "
                      "--sbatch account=ml --sbatch exclusive; repeatable")
  parser.add_argument("--setup", action="append", default=[],
                      help="a shell line run before training, e.g. 'module load "
                      "cuda'; repeatable")
  parser.add_argument("--job-name", default="", help="default: ctjax-WORKDIR_NAME")
  parser.add_argument("--max-resubmits", type=int, default=3,
                      help="requeues of an unfinished run at most (default 3)")
  runner.add_sweep_arguments(parser)
  parser.add_argument("--run-status", type=int, default=0,
                      help="after-run: the exit status of the training step")
  parser.add_argument("--dry-run", action="store_true",
                      help="print the batch script and the sbatch command only")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


def launch(args: argparse.Namespace, overrides: list[str]) -> int:
  """`ctjax launch slurm`; returns the exit status."""
  if args.action == "after-run":
    if overrides:
      raise UserError("ctjax launch slurm after-run takes no --config.* overrides")
    return after_run(args.workdir, args.run_status, args.max_resubmits,
                     sweep=bool(args.sweep))
  if not args.config:
    raise UserError("ctjax launch slurm: give --config configs/NAME.py")
  if args.sweep and args.process_per:
    raise UserError(f"--process-per {args.process_per} is for one run: a sweep "
                    "runs a driver per node, and a trial per GPU")
  # Mistakes in the config, the overrides or the sweep stop here, not after hours
  # queued.
  if args.sweep:
    runner.check_sweep(args, overrides, f"{args.nodes} node(s)")
  else:
    config_lib.load_config(args.config, overrides)
  if "://" in args.workdir:
    raise UserError(f"--workdir {args.workdir}: give a folder on the cluster's "
                    "shared file system (the job's script and output go there, "
                    "and after-run reads the run's metrics from it)")
  for option, value, least in (("--nodes", args.nodes, 1),
                               ("--gpus-per-node", args.gpus_per_node, 0),
                               ("--max-resubmits", args.max_resubmits, 0)):
    if value < least:
      raise UserError(f"{option} {value}: give {least} or more")
  process_per = args.process_per or "gpu"
  if not args.sweep and process_per == "gpu" and not args.gpus_per_node:
    raise UserError("--process-per gpu needs --gpus-per-node N (or give "
                    "--process-per node for a CPU job)")
  workdir = os.path.abspath(args.workdir)
  if args.sweep:  # A trial per GPU (one at a time on a node without).
    arguments = runner.sweep_arguments(args, args.config, workdir, overrides,
                                       workers=max(args.gpus_per_node, 1),
                                       devices_per_trial=1)
  else:
    arguments = runner.train_arguments(args.config, workdir, overrides)
  text = script(
      arguments=arguments, workdir=workdir, nodes=args.nodes,
      gpus_per_node=args.gpus_per_node, process_per=process_per,
      time_limit=args.time, partition=args.partition,
      max_resubmits=args.max_resubmits, setup=args.setup, sbatch=args.sbatch,
      job_name=args.job_name or "ctjax-" + os.path.basename(
          os.path.normpath(args.workdir)),
      python=sys.executable, checkout=os.getcwd(), sweep=args.sweep)
  path = os.path.join(workdir, "slurm", SCRIPT)
  if args.dry_run:
    print(text, end="")
    runner.show([submit_command(path)])
    return 0
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return runner.execute(submit_command(path)).returncode
