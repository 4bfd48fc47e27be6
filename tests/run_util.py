"""Running `ctjax train` in a subprocess, as a user would, and reading its workdir.

Tests that need a real run (a fresh process, a chosen device count, a signal) use
these; each run costs a few seconds of start-up, so tests combine checks per run.

  config = run_util.write_config(tmp_path, {...})          # an experiment file
  result = run_util.train(config, tmp_path / "run", {"train_duration": 10},
                          devices=1)                       # waits; fails loudly
  losses = run_util.curve(tmp_path / "run")                # {step: train/loss}

`start` and `finish` split `train` in two, for tests that signal a running process;
`shared_train` runs a reference once per test session, however many workers.

Every run uses one persistent JAX compilation cache, so a program compiled by one
run (the same model on the same devices) is loaded, not recompiled, by the next.
The cache returns the executable the compiler would build, so results are
unchanged; only start-up gets faster.
"""
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from typing import IO, Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from ctjax import checkpoint

REPO = pathlib.Path(__file__).resolve().parent.parent
# conftest.py sets it for the test process; runs started here share it.
COMPILATION_CACHE = os.environ.get(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), "ctjax-tests-jax-cache"))
# Generous: start-up alone is ~5 s, and two test workers share two cores.
TIMEOUT_S = 300

Overrides = dict[str, Any] | None

# Small configs that finish in seconds. The GPT's sizes let every sharding rule
# act on 8 devices: embed 32, mlp 64 and vocab 256 divide by 8, its 4 heads by 2.
GPT_CONFIG = {
    "seed": 0,
    "data": {"source": "text", "files": "stdlib:*.py", "seq_len": 32,
             "splits": {"train": "[0%:90%]", "validation": "[90%:92%]"},
             "num_threads": 1, "prefetch": 2},
    "model": {"name": "gpt", "vocab_size": 256, "hidden_size": 32, "num_layers": 2,
              "num_heads": 4, "mlp_dim": 64},
    "batch_size": 16, "train_duration": 10, "log_every": 1, "eval_every": 0,
    "eval_splits": ("validation",), "final_eval_splits": ("validation",),
    "optim": {"lr": 3e-3},
    "checkpoint": {"every": 5, "keep": 2},
}
# Reorderable float32 terms on the path to GPT_CONFIG's loss (tests/tolerances.py):
# 16 x 32 tokens, and per token forward about 910 (per layer norms and products
# over 32 and 64 features, attention over 32 positions of 8-wide heads; the final
# norm and the 256-way softmax), as many backward.
GPT_SUM_TERMS = 16 * 32 + 2 * 910
# scikit-learn's breast-cancer table, 455 training examples: the private and
# federated tests' clinical data.
BREAST_CANCER_DATA = {
    "source": "sklearn_datasets", "name": "breast_cancer", "split_seed": 0,
    "split_fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
    "stratify": True, "num_threads": 1, "prefetch": 0}
MLP_CONFIG = {
    "seed": 0,
    "data": {"source": "sklearn_datasets", "name": "digits", "split_seed": 0,
             "split_fractions": {"train": 0.8, "validation": 0.1, "test": 0.1},
             "stratify": True, "num_threads": 1, "prefetch": 2},
    "model": {"name": "mlp", "num_classes": 10, "hidden_sizes": (64, 32)},
    "batch_size": 32, "train_duration": 10, "log_every": 1, "eval_every": 0,
    "eval_splits": ("validation",), "final_eval_splits": ("validation",),
}
# The same for MLP_CONFIG: a batch of 32, and per example forward the 64-, 64- and
# 32-input products and the 10-way softmax, as many backward.
MLP_SUM_TERMS = 32 + 2 * 170


def env(devices: int = 8, **extra: str) -> dict[str, str]:
  """The environment of a ctjax subprocess with `devices` fake CPU devices.

  JAX_* variables of the test process are dropped: a stray coordinator address
  would turn every run into one process of a multi-process job.
  """
  result = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                     result.get("XLA_FLAGS", ""))
  result.update(
      XLA_FLAGS=f"{xla_flags} --xla_force_host_platform_device_count={devices}".strip(),
      JAX_PLATFORMS="cpu",
      TF_CPP_MIN_LOG_LEVEL="3",
      JAX_COMPILATION_CACHE_DIR=COMPILATION_CACHE,
      # Cache every program, however small or quick to compile.
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      **extra)
  return result


def write_config(directory: os.PathLike, config: dict[str, Any],
                 name: str = "config.py") -> str:
  """Writes an experiment file whose get_config() returns `config`; returns its path."""
  path = pathlib.Path(directory) / name
  path.parent.mkdir(parents=True, exist_ok=True)
  # TensorBoard files cost a run TensorFlow's import, seconds of every test's
  # start-up; tests/test_train.py reads the default experiment's. Reference
  # statistics (a forward pass over a training sample, and its compile) are
  # tests/test_monitor.py's to turn on; plots and report.html (seconds of
  # matplotlib) tests/test_evaluation.py's and the default experiment's.
  config = {"tensorboard": False, "reference_statistics": False, "report": False,
            **config}
  path.write_text("from ml_collections import ConfigDict\n\n\n"
                  "def get_config(arg=None):\n"
                  f"  return ConfigDict({config!r})\n")
  return str(path)


def command(config: str, workdir: os.PathLike,
            overrides: Overrides = None) -> list[str]:
  """`python -m ctjax train ...` with `--config.KEY=VALUE` for each override."""
  args = [sys.executable, "-m", "ctjax", "train", "--config", str(config),
          "--workdir", str(workdir)]
  for key, value in (overrides or {}).items():
    args.append(f"--config.{key}={value if isinstance(value, str) else repr(value)}")
  return args


@dataclasses.dataclass
class Run:
  """A running `ctjax train`. Output goes to files: a pipe nobody reads while the
  test polls the workdir would fill up and stall the run."""
  process: subprocess.Popen
  stdout: IO[str]
  stderr: IO[str]

  def running(self) -> bool:
    return self.process.poll() is None

  def kill(self) -> None:
    if self.running():
      self.process.kill()


def start(config: str, workdir: os.PathLike, overrides: Overrides = None, *,
          devices: int = 8, extra_env: dict[str, str] | None = None,
          extra_args: list[str] = (), prelude: str | None = None) -> Run:
  """Starts a run without waiting for it; `extra_args` follow the command's own.
  With `prelude`, the process first runs that Python code: to inject a fault
  (patch a function to hang or to be slow) or to hide a package."""
  args = [*command(config, workdir, overrides), *extra_args]
  if prelude is not None:
    args[1:3] = ["-c", f"{prelude}\nfrom ctjax import main\nmain.main()\n"]
  stdout, stderr = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
  process = subprocess.Popen(args,
                             cwd=REPO,
                             env=env(devices, **(extra_env or {})),
                             stdout=stdout, stderr=stderr, text=True)
  return Run(process, stdout, stderr)


def finish(run: Run, *, check: bool = True,
           timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
  """Waits for `run`; with `check`, a non-zero exit fails the test with its output."""
  try:
    run.process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    run.kill()
    run.process.wait()
    raise AssertionError(f"ctjax timed out after {timeout}s\n{output_tail(run)}")
  result = subprocess.CompletedProcess(run.process.args, run.process.returncode,
                                       _read(run.stdout), _read(run.stderr))
  if check and result.returncode != 0:
    raise AssertionError(f"ctjax exited with {result.returncode}: "
                         f"{' '.join(map(str, run.process.args))}\n{output_tail(run)}")
  return result


def train(config: str, workdir: os.PathLike, overrides: Overrides = None, *,
          devices: int = 8, check: bool = True,
          extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  """Runs `ctjax train` to completion (or failure, with check=False)."""
  return finish(start(config, workdir, overrides, devices=devices,
                      extra_env=extra_env), check=check)


def _read(file: IO[str]) -> str:
  file.seek(0)
  return file.read()


def output_tail(run: Run, lines: int = 40) -> str:
  """The last lines of a run's stdout and stderr, for failure messages."""
  return "\n".join(_read(run.stdout).splitlines()[-lines:] + ["--- stderr ---"] +
                   _read(run.stderr).splitlines()[-lines:])


def session_dir(tmp_path_factory) -> pathlib.Path:
  """A folder shared by all pytest-xdist workers of this test session."""
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def once_per_session(tmp_path_factory, name: str,
                     make: Callable[[pathlib.Path], Any]) -> tuple[pathlib.Path, Any]:
  """Calls `make(folder)` once per test session; returns the folder and its result.

  Under pytest-xdist the workers share the session's folder: the first caller runs
  `make` under a file lock, the others wait on the lock and read the recorded
  result, which must be JSON.
  """
  root = session_dir(tmp_path_factory) / "once"
  root.mkdir(exist_ok=True)
  folder, record = root / name, root / f"{name}.json"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released when the file closes.
    if not record.exists():
      shutil.rmtree(folder, ignore_errors=True)
      folder.mkdir()
      record.write_text(json.dumps(make(folder)))
  return folder, json.loads(record.read_text())


def shared_train(tmp_path_factory, config: dict[str, Any], overrides: Overrides = None,
                 *, devices: int = 8) -> pathlib.Path:
  """Runs `ctjax train` once per session for these arguments; returns the workdir.

  A reference run that several tests (in several workers) compare against is
  trained by the first to ask; the others wait for it. Treat the workdir as
  read-only: copy it before resuming from it. stdout is kept in `stdout.txt` next
  to the workdir.
  """
  key = hashlib.sha256(json.dumps([config, overrides, devices], sort_keys=True,
                                  default=repr).encode()).hexdigest()[:16]

  def make(directory: pathlib.Path) -> None:
    result = train(write_config(directory, config), directory / "run", overrides,
                   devices=devices)
    (directory / "stdout.txt").write_text(result.stdout)

  directory, _ = once_per_session(tmp_path_factory, f"shared-run-{key}", make)
  return directory / "run"


def metrics(workdir: os.PathLike) -> list[dict[str, float]]:
  """The records of WORKDIR/metrics.jsonl, in order."""
  with open(pathlib.Path(workdir) / "metrics.jsonl", encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def curve(workdir: os.PathLike, key: str = "train/loss") -> dict[int, float]:
  """{step: value} of one metric in WORKDIR/metrics.jsonl."""
  return {r["step"]: r[key] for r in metrics(workdir) if key in r}


def first_trained_step(stdout: str) -> int:
  """The first step a run trained, from its progress lines ("step N/TOTAL ...")."""
  return int(re.search(r"^step (\d+)/", stdout, re.M)[1])


def checkpoint_steps(workdir: os.PathLike) -> list[int]:
  """Steps of the finalised checkpoints in WORKDIR/checkpoints, ascending.

  Orbax writes a step to `<step>.orbax-checkpoint-tmp-<n>` and renames it to
  `<step>` when complete, so only all-digit names count.
  """
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def saved_state(workdir: os.PathLike, step: int | None = None) -> dict[str, Any]:
  """A checkpoint's train state (default: the latest) as a tree of NumPy arrays.

  Read without the saving run's shardings, so it works for any device count.
  """
  manager = checkpoint.make_manager(checkpoint.checkpoint_dir(str(workdir)),
                                    read_only=True)
  step = manager.latest_step() if step is None else step
  metadata = manager.item_metadata(step)["state"]
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(restore_args=as_numpy)))["state"]


def checkpoint_position(workdir: os.PathLike, step: int) -> dict[str, Any]:
  """What a checkpoint saved beside its state: the input position (step, seed,
  examples seen) and, for a private run, the epsilon spent."""
  manager = checkpoint.make_manager(checkpoint.checkpoint_dir(str(workdir)),
                                    read_only=True)
  return manager.restore(step, args=ocp.args.Composite(
      data=ocp.args.JsonRestore()))["data"]


def assert_trees_close(actual: Any, expected: Any, *, rtol: float = 0.0,
                       atol: float = 0.0) -> None:
  """Same paths, and arrays equal bit for bit (default) or within tolerance."""
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x)
                       for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  actual, expected = flat(actual), flat(expected)
  assert sorted(actual) == sorted(expected)
  for path, want in expected.items():
    if rtol == atol == 0.0:
      assert np.array_equal(actual[path], want), f"{path} differs"
    else:
      np.testing.assert_allclose(actual[path], want, rtol=rtol, atol=atol,
                                 err_msg=path)


def output_so_far(file: IO[str]) -> str:
  """What a running process has written to its `stdout` or `stderr` file.

  Read through a file opened anew, never by seeking `file` itself: the process
  writes at the offset it shares with `file`, and moving it back would make the
  process overwrite its own output.
  """
  with open(f"/proc/self/fd/{file.fileno()}", encoding="utf-8",
            errors="replace") as reopened:
    return reopened.read()
