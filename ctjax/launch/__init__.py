"""`ctjax launch`: the same `ctjax train` on a Cloud TPU VM or a SLURM cluster.

  ctjax launch tpu --name NAME --zone ZONE --type v5litepod-16 \\
      --config configs/X.py --workdir gs://BUCKET/runs/X [--delete] [--dry-run] \\
      [--config.a.b=VALUE ...]
  ctjax launch tpu delete --name NAME --zone ZONE
  ctjax launch slurm --config configs/X.py --workdir /shared/runs/X --nodes 2 \\
      --gpus-per-node 8 [--time 24:00:00] [--dry-run] [--config.a.b=VALUE ...]

The --config.a.b=VALUE overrides go to `ctjax train` on the target unchanged. Each
target builds its commands with pure functions (ctjax/launch/tpu.py, slurm.py) and
runs them here, printing each first; --dry-run prints them and runs nothing.
"""
import argparse
import shlex
import subprocess

from ctjax.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """`ctjax launch tpu ...` and `ctjax launch slurm ...`."""
  from ctjax.launch import slurm, tpu  # pylint: disable=g-import-not-at-top
  targets = parser.add_subparsers(dest="target", required=True)
  tpu.add_arguments(targets.add_parser(
      "tpu", help="create a Cloud TPU VM, copy this checkout, install, train, delete"))
  slurm.add_arguments(targets.add_parser(
      "slurm", help="submit a run to a SLURM cluster; requeued until it finishes"))


def launch(args: argparse.Namespace, overrides: list[str]) -> int:
  """Runs `ctjax launch TARGET ...`; returns the exit status."""
  from ctjax.launch import slurm, tpu  # pylint: disable=g-import-not-at-top
  return {"tpu": tpu.launch, "slurm": slurm.launch}[args.target](args, overrides)


def show(commands: list[list[str]]) -> None:
  """--dry-run: the commands, one per line, ready to paste into a shell."""
  for command in commands:
    print(shlex.join(command), flush=True)


def execute(command: list[str], *, capture: bool = False
            ) -> subprocess.CompletedProcess:
  """Runs one command, printed first; its output streams to ours unless captured
  (for the answers we parse, such as a state)."""
  if not capture:
    print("$ " + shlex.join(command), flush=True)
  try:
    return subprocess.run(command, capture_output=capture, text=True, check=False)
  except FileNotFoundError:
    raise UserError(f"{command[0]} is not installed here (or not on PATH): "
                    f"install it, or run `ctjax launch` where it is") from None
