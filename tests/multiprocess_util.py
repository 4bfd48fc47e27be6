"""Several `ctjax train` processes on localhost, as on a multi-host TPU slice.

Each process gets its share of fake CPU devices and the coordinator variables that
`ctjax.distributed.initialize` reads (gloo collectives on CPU):

  results = multiprocess_util.train(config, workdir, num_processes=2,
                                    devices_per_process=4)   # 8 global devices

All processes share the workdir, as hosts share a bucket. If one fails or the time
runs out, the others are killed (they would wait forever in a collective) and the
test fails with every process's output.
"""
import os
import socket
import subprocess
import time

import run_util


def free_port() -> int:
  """A TCP port that is free now, for the coordinator."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(config: str, workdir: os.PathLike, overrides: run_util.Overrides = None,
          *, num_processes: int = 2, devices_per_process: int = 4,
          preludes: dict[int, str] | None = None) -> list[run_util.Run]:
  """Starts process 0..n-1 of one run; process i first runs the Python code
  `preludes[i]`, where given (see run_util.start)."""
  address = f"127.0.0.1:{free_port()}"
  return [run_util.start(config, workdir, overrides, devices=devices_per_process,
                         extra_env={"JAX_COORDINATOR_ADDRESS": address,
                                    "JAX_NUM_PROCESSES": str(num_processes),
                                    "JAX_PROCESS_ID": str(i)},
                         prelude=(preludes or {}).get(i))
          for i in range(num_processes)]


def finish(runs: list[run_util.Run], *, timeout: float = run_util.TIMEOUT_S
           ) -> list[subprocess.CompletedProcess]:
  """Waits for all processes; kills all as soon as one fails or time is up."""
  deadline = time.monotonic() + timeout
  try:
    while any(r.running() for r in runs):
      failed = any(r.process.poll() not in (None, 0) for r in runs)
      if failed or time.monotonic() > deadline:
        reason = "a process failed" if failed else f"timed out after {timeout}s"
        raise AssertionError(f"multi-process run: {reason}\n" + "\n".join(
            f"=== process {i} (exit {r.process.poll()}) ===\n{run_util.output_tail(r)}"
            for i, r in enumerate(runs)))
      time.sleep(0.1)
  finally:
    for r in runs:
      r.kill()
  return [run_util.finish(r) for r in runs]


def train(config: str, workdir: os.PathLike, overrides: run_util.Overrides = None,
          *, num_processes: int = 2, devices_per_process: int = 4,
          preludes: dict[int, str] | None = None) -> list[subprocess.CompletedProcess]:
  """Runs one training run as `num_processes` processes; returns their results."""
  return finish(start(config, workdir, overrides, num_processes=num_processes,
                      devices_per_process=devices_per_process, preludes=preludes))
