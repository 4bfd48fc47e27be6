"""The core trains where TensorFlow is not installed, as on many accelerator machines.

TensorFlow is made absent in a subprocess the way Python sees a missing package:
`sys.modules[name] = None` makes `import name` raise ModuleNotFoundError and
`importlib.util.find_spec(name)` return None (which libraries such as etils use to
ask whether TensorFlow is there).
"""
import json
import subprocess
import sys

import run_util

ABSENT = ("tensorflow", "tensorboard", "tensorflow_datasets")
WITHOUT_TENSORFLOW = (f"import sys\nfor name in {ABSENT!r}:\n  sys.modules[name] = None\n")
CORE = ("ctjax.train", "ctjax.models", "ctjax.optim", "ctjax.checkpoint",
        "ctjax.sharding", "ctjax.data.pipeline", "ctjax.data.splits")


def _python(code: str, *args: str, cwd=run_util.REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd,
                        env=run_util.env(8), capture_output=True, text=True,
                        timeout=run_util.TIMEOUT_S)


def test_core_modules_never_import_tensorflow():
  result = _python(
      f"import importlib, json, sys\n"
      f"for module in {CORE!r}:\n  importlib.import_module(module)\n"
      f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
      f"{ABSENT!r})))")
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout) == []


def test_default_experiment_trains_without_tensorflow(tmp_path):
  workdir = tmp_path / "run"
  # The same short run as shared_runs.short_default_run, so its compiled programs
  # come from the compilation cache.
  result = _python(
      WITHOUT_TENSORFLOW + "from ctjax import main\nmain.main(sys.argv[1:])",
      "train", "--config", "configs/default.py:steps=20", "--workdir", str(workdir),
      "--config.log_every=1", "--config.eval_every=0", "--config.checkpoint.every=0",
      "--config.optim.schedule.warmup=5")
  assert result.returncode == 0, result.stderr[-3000:]
  records = run_util.metrics(workdir)
  assert [r["step"] for r in records] == list(range(1, 21))
  assert "test/accuracy" in records[-1]
  assert run_util.checkpoint_steps(workdir) == [20]
  assert not (workdir / "tensorboard").exists()
  # One line says what is missing and where the metrics go instead.
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert "TensorFlow is not installed" in lines[0] and "metrics.jsonl" in lines[0]
