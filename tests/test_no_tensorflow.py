"""The core trains where TensorFlow is not installed, as on many accelerator machines.

TensorFlow is made absent in a subprocess the way Python sees a missing package:
`sys.modules[name] = None` makes `import name` raise ModuleNotFoundError and
`importlib.util.find_spec(name)` return None (which libraries such as etils use to
ask whether TensorFlow is there).
"""
import json
import subprocess
import sys
import textwrap

import numpy as np

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


def _write_every_kind_of_data(folder) -> dict[str, dict]:
  """Small files for each source that reads files; returns each one's config.data."""
  # pylint: disable=g-import-not-at-top
  from PIL import Image
  from tokenizers import Tokenizer, models, pre_tokenizers
  rng = np.random.default_rng(0)
  (folder / "t.csv").write_text("x,colour,label\n" + "".join(
      f"{i},{'red' if i % 2 else 'blue'},{i % 2}\n" for i in range(8)))
  (folder / "t.jsonl").write_text("".join(
      json.dumps({"text": f"text number {i}", "label": f"c{i % 2}"}) + "\n"
      for i in range(8)))
  for name in ("a", "b"):
    (folder / "images" / name).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
          folder / "images" / name / f"{i}.png")
  np.savez(folder / "arrays.npz", inputs=rng.normal(size=(8, 5)),
           label=np.arange(8) % 3)
  (folder / "corpus").mkdir()
  for i in range(3):
    (folder / "corpus" / f"{i}.txt").write_text("the cat sat on the mat " * 5)
  words = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "the": 2, "cat": 3},
                                     unk_token="[UNK]"))
  words.pre_tokenizer = pre_tokenizers.Whitespace()
  words.save(str(folder / "tokenizer.json"))
  return {
      "csv": {"source": "csv", "splits": {"train": str(folder / "t.csv")},
              "categorical_columns": ["colour"]},
      "jsonl": {"source": "jsonl", "splits": {"train": str(folder / "t.jsonl")},
                "seq_len": 6},
      "image_folder": {"source": "image_folder", "image_size": [8, 8],
                       "splits": {"train": str(folder / "images")},
                       "preprocess": ["random_crop(6, padding=1)", "flip_lr",
                                      "normalize(mean=0.5, std=0.25)"]},
      "arrays": {"source": "arrays", "splits": {"train": str(folder / "arrays.npz")}},
      "text": {"source": "text", "files": str(folder / "corpus" / "*.txt"),
               "tokenizer": str(folder / "tokenizer.json"), "seq_len": 4,
               "splits": {"train": "[0%:100%]"}},
      "sklearn_datasets": {"source": "sklearn_datasets", "name": "iris",
                           "split_fractions": {"train": 0.5, "test": 0.5}},
      "synthetic": {"source": "synthetic", "shape": [4, 4, 1], "num_classes": 3,
                    "splits": {"train": "16"}},
  }


def test_every_source_but_tfds_reads_batches_without_tensorflow(tmp_path):
  configs = _write_every_kind_of_data(tmp_path)
  # Each source opens its training split and the pipeline reads two batches of it
  # (through the ops, in threads); `memory` is the in-memory source others build
  # on. TFDS, the one source that needs TensorFlow, must say so in one line.
  result = _python(WITHOUT_TENSORFLOW + textwrap.dedent("""\
      import json
      from ml_collections import ConfigDict
      import numpy as np
      from ctjax.data import ops, pipeline, splits
      from ctjax.data.sources.memory import ArraySource
      from ctjax.errors import UserError
      read = {}
      for name, data in json.loads(sys.argv[1]).items():
        source = splits.open_splits(ConfigDict(data))["train"]
        loader = pipeline.BatchLoader(source, ops.compose(data.get("preprocess")),
                                      num_threads=2)
        batch = pipeline.train_batch(loader, 1, global_batch_size=4, seed=0)
        read[name] = {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}
      memory = ArraySource({"inputs": np.ones((6, 2), np.float32),
                            "label": np.arange(6, dtype=np.int32)})
      batch = pipeline.train_batch(pipeline.BatchLoader(memory), 2,
                                   global_batch_size=4, seed=0)
      read["memory"] = {k: [list(v.shape), str(v.dtype)] for k, v in batch.items()}
      try:
        splits.open_splits(ConfigDict({"source": "tfds", "name": "mnist",
                                       "splits": {"train": "train"}}))
      except UserError as e:
        read["tfds"] = str(e)
      print(json.dumps(read))
      """), json.dumps(configs))
  assert result.returncode == 0, result.stderr[-3000:]
  read = json.loads(result.stdout.splitlines()[-1])
  f32, i32 = "float32", "int32"
  assert read == {
      # x standardised, then colour one-hot [unknown, blue, red].
      "csv": {"inputs": [[4, 4], f32], "label": [[4], i32], "mask": [[4], f32]},
      "jsonl": {"inputs": [[4, 6], i32], "label": [[4], i32], "mask": [[4], f32]},
      "image_folder": {"inputs": [[4, 6, 6, 3], f32], "label": [[4], i32],
                       "mask": [[4], f32]},
      "arrays": {"inputs": [[4, 5], f32], "label": [[4], i32], "mask": [[4], f32]},
      # Token windows: targets and a loss mask per token.
      "text": {"inputs": [[4, 4], i32], "label": [[4, 4], i32],
               "mask": [[4, 4], f32]},
      "sklearn_datasets": {"inputs": [[4, 4], f32], "label": [[4], i32],
                           "mask": [[4], f32]},
      "synthetic": {"inputs": [[4, 4, 4, 1], f32], "label": [[4], i32],
                    "mask": [[4], f32]},
      "memory": {"inputs": [[4, 2], f32], "label": [[4], i32], "mask": [[4], f32]},
      "tfds": "config.data.source='tfds': tensorflow_datasets is not installed; "
              "pip install tensorflow-datasets",
  }
