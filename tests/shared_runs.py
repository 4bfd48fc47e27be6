"""`ctjax` runs that several tests read, made once per test session.

A full run of the default experiment takes most of a minute; the tests that check its
accuracy, its logs, its TensorBoard files and its exact evaluation all read the same
run rather than each making one. Under pytest-xdist the workers share the session's
temporary folder, so a file lock there makes the first worker to ask run it and the
others wait for it and read its record (`run_util.once_per_session`).

  run = shared_runs.run_once(tmp_path_factory, "default", ["train", "--config",
                             shared_runs.config_path("default"), "--workdir", "run"])
  run.dir / "run" / "metrics.jsonl"; run.result.stdout; run.seconds
"""
import dataclasses
import os
import pathlib
import resource
import subprocess
import sys
import time
from typing import Any

import pytest

import run_util


@dataclasses.dataclass
class SharedRun:
  dir: pathlib.Path                       # the run's working directory (its cwd)
  result: subprocess.CompletedProcess     # exit status, stdout and stderr
  seconds: float                          # wall-clock time of the whole command
  cpu_seconds: float                      # its CPU time (user + system)


def config_path(name: str) -> str:
  """The absolute path of configs/NAME.py (runs start in their own folder)."""
  return str(run_util.REPO / "configs" / f"{name}.py")


def run_once(tmp_path_factory: pytest.TempPathFactory, name: str, args: list[str], *,
             devices: int = 8, compilation_cache: bool = True) -> SharedRun:
  """Runs `python -m ctjax ARGS` in folder `name` once per session; returns its record.

  The command runs with that folder as its working directory, so relative paths
  (a --workdir, or the default runs/NAME) land inside it. With
  `compilation_cache=False` it compiles everything itself, as on a fresh machine,
  so that its time is what a user would see.
  """
  def run(folder: pathlib.Path) -> dict[str, Any]:
    env = run_util.env(devices)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(run_util.REPO), env.get("PYTHONPATH")]))
    if not compilation_cache:
      for key in [k for k in env if k.startswith(("JAX_COMPILATION_CACHE",
                                                  "JAX_PERSISTENT_CACHE"))]:
        del env[key]
    start, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-m", "ctjax", *args], cwd=folder,
                            env=env, capture_output=True, text=True,
                            timeout=run_util.TIMEOUT_S)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"args": result.args, "returncode": result.returncode,
            "stdout": result.stdout, "stderr": result.stderr,
            "seconds": time.monotonic() - start,
            "cpu_seconds": (after.ru_utime + after.ru_stime
                            - before.ru_utime - before.ru_stime)}

  folder, saved = run_util.once_per_session(tmp_path_factory, name, run)
  return SharedRun(folder, subprocess.CompletedProcess(
      saved["args"], saved["returncode"], saved["stdout"], saved["stderr"]),
                   saved["seconds"], saved["cpu_seconds"])


def check(run: SharedRun) -> SharedRun:
  """Fails the calling test with the run's output unless it exited with 0."""
  if run.result.returncode != 0:
    pytest.fail(f"ctjax exited with {run.result.returncode}: "
                f"{' '.join(map(str, run.result.args))}\n"
                f"{run.result.stdout[-3000:]}\n--- stderr ---\n{run.result.stderr[-3000:]}")
  return run


def short_default_run(tmp_path_factory: pytest.TempPathFactory,
                      *overrides: str) -> SharedRun:
  """configs/default.py:steps=20, logging every step, in its default workdir.

  It is given no --workdir, so it trains in runs/default-steps_20 of its folder.
  `overrides` ("--config.a.b=V") are added to the ones here; each set of them is
  a different run.
  """
  name = "default_20_steps" + "".join(
      "-" + o.removeprefix("--config.").replace("=", "_") for o in overrides)
  return check(run_once(tmp_path_factory, name, [
      "train", "--config", config_path("default") + ":steps=20",
      "--config.log_every=1", "--config.eval_every=0", "--config.checkpoint.every=0",
      "--config.optim.schedule.warmup=5", *overrides]))
