"""Input pipeline speed, and whether it keeps up with training.

  python benchmarks/data.py                  # 1 CPU device
  python benchmarks/data.py --devices 8      # 8 fake CPU devices

1. Each source's pipeline on data generated in a temporary folder: seconds to open
   (parse, verify, tokenise) and examples/s of `pipeline.train_batch`, i.e. what
   the trainer's prefetch thread does per step (read, decode, tokenise, stack).
2. The training loop's steps/s with the real pipeline against the same batches
   already in memory, side by side in one run of the real trainer per config
   (configs/default.py, configs/gpt_stdlib.py), and their ratio. Target: >= 0.95,
   the pipeline never the bottleneck. The run's log intervals alternate: batches
   of one interval come from the pipeline, those of the next were made by it
   beforehand and are only looked up, so that changes in the machine's load hit
   both alike. Each side's steps/s is the median over its intervals (the first,
   warm-up, left out). Evaluation and checkpoints are off: only steps are timed.

Figures for this machine go in benchmarks/README.md ("Data pipeline").
"""
import argparse
import json
import os
import statistics
import sys
import sysconfig
import tempfile
import time

import cpu_devices  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=1,
                      help="fake CPU devices (XLA_FLAGS), set before JAX starts")
  parser.add_argument("--batches", type=int, default=20,
                      help="batches timed per source")
  parser.add_argument("--steps", type=int, default=400,
                      help="training steps timed per config")
  parser.add_argument("--configs", nargs="+", default=[
      "configs/default.py", "configs/gpt_stdlib.py:size=small"],
                      help="configs whose training loop is timed")
  parser.add_argument("--skip-sources", action="store_true")
  parser.add_argument("--skip-train", action="store_true")
  return parser.parse_args()


ARGS = _parse_args()
cpu_devices.use(ARGS.devices)  # Before JAX starts.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
from ml_collections import ConfigDict
import numpy as np
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from ctjax import config as config_lib
from ctjax import train as train_lib
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

BATCH = 256


# --- 1. Each source ------------------------------------------------------------------

def _write_csv(path: str, rows: int) -> dict:
  rng = np.random.default_rng(0)
  numbers = rng.normal(size=(rows, 20))
  colours = rng.choice(["red", "green", "blue", "grey"], size=rows)
  sites = rng.choice([f"site{i}" for i in range(30)], size=rows)
  with open(path, "w") as f:
    f.write(",".join([f"x{i}" for i in range(20)] + ["colour", "site", "label"]) +
            "\n")
    for x, c, s in zip(numbers, colours, sites):
      f.write(",".join(f"{v:.5f}" for v in x) + f",{c},{s},{int(x[0] > 0)}\n")
  return {"source": "csv", "splits": {"train": path},
          "categorical_columns": ("colour", "site")}


def _stdlib_texts(limit: int) -> list[str]:
  root = sysconfig.get_paths()["stdlib"]
  texts = []
  for name in sorted(os.listdir(root)):
    if name.endswith(".py") and len(texts) < limit:
      with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
        texts.append(f.read())
  return texts


def _write_jsonl(path: str, rows: int) -> dict:
  lines = [line for text in _stdlib_texts(200) for line in text.splitlines()
           if len(line) > 20]
  with open(path, "w") as f:
    for i in range(rows):
      f.write(json.dumps({"text": lines[i % len(lines)], "label": i % 5}) + "\n")
  return {"source": "jsonl", "splits": {"train": path}, "seq_len": 128}


def _write_images(folder: str, per_class: int) -> dict:
  rng = np.random.default_rng(0)
  for c in range(4):
    os.makedirs(os.path.join(folder, f"class{c}"))
    for i in range(per_class):
      # Smooth colour fields, compressed like photos rather than like noise.
      small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
      image = Image.fromarray(small).resize((128, 128), Image.BILINEAR)
      image.save(os.path.join(folder, f"class{c}", f"{i}.jpg"), quality=90)
  return {"source": "image_folder", "splits": {"train": folder},
          "image_size": 64, "verify": True}


def _write_npy(folder: str, rows: int) -> dict:
  os.makedirs(folder)
  rng = np.random.default_rng(0)
  np.save(os.path.join(folder, "inputs.npy"),
          rng.integers(0, 256, size=(rows, 32, 32, 3), dtype=np.uint8))
  np.save(os.path.join(folder, "label.npy"), rng.integers(0, 10, size=rows))
  return {"source": "arrays", "splits": {"train": folder}}


def _write_tokenizer(path: str) -> str:
  tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
  tokenizer.train_from_iterator(_stdlib_texts(200), trainers.BpeTrainer(
      vocab_size=4096, special_tokens=["[PAD]", "[UNK]"], show_progress=False))
  tokenizer.save(path)
  return path


def _text(tokenizer: str) -> dict:
  return {"source": "text", "files": "stdlib:*.py", "tokenizer": tokenizer,
          "seq_len": 256, "splits": {"train": "[0%:100%]"}}


def benchmark_sources(tmp: str) -> list[tuple[str, float, float, int]]:
  """(name, seconds to open, examples/s, examples) for each source."""
  setups = {
      "csv (100k rows, 20 numeric + 2 categorical)":
          lambda: _write_csv(os.path.join(tmp, "t.csv"), 100_000),
      "jsonl (50k records, bytes, seq 128)":
          lambda: _write_jsonl(os.path.join(tmp, "t.jsonl"), 50_000),
      "image_folder (2k JPEGs 128px -> 64px float)":
          lambda: _write_images(os.path.join(tmp, "images"), 500),
      "npy (50k x 32x32x3 uint8, memory-mapped)":
          lambda: _write_npy(os.path.join(tmp, "npy"), 50_000),
      "text bytes (stdlib *.py, seq 256)": lambda: _text("bytes"),
      "text tokenizer.json (BPE 4096, seq 256)":
          lambda: _text(_write_tokenizer(os.path.join(tmp, "tokenizer.json"))),
  }
  results = []
  for name, setup in setups.items():
    data = ConfigDict({"num_threads": 4, **setup()})
    start = time.perf_counter()
    split = splits_lib.open_splits(data)["train"]
    opened = time.perf_counter() - start
    loader = pipeline.BatchLoader(split, num_threads=data.num_threads)
    pipeline.train_batch(loader, 0, global_batch_size=BATCH, seed=0)  # Warm up.
    start = time.perf_counter()
    for step in range(1, ARGS.batches + 1):
      pipeline.train_batch(loader, step, global_batch_size=BATCH, seed=0)
    rate = ARGS.batches * BATCH / (time.perf_counter() - start)
    results.append((name, opened, rate, len(split)))
    print(f"  {name:<46} open {opened:6.2f} s  {rate:>10,.0f} examples/s",
          flush=True)
  return results


# --- 2. The training loop: real pipeline vs batches in memory ------------------------

def _alternating(config: ConfigDict, interval: int):
  """pipeline.train_batch that serves alternate log intervals from memory.

  Batches of intervals 0, 2, 4, ... come from the real pipeline; those of 1, 3,
  5, ... were made by it beforehand and are only looked up.
  """
  real = pipeline.train_batch
  data = splits_lib.open_splits(config.data)
  loader = pipeline.BatchLoader(data["train"], num_threads=config.data.num_threads)
  made = {s: real(loader, s, global_batch_size=config.batch_size, seed=config.seed)
          for s in range(ARGS.steps) if (s // interval) % 2}

  def train_batch(loader, step, **kwargs):
    return made[step] if (step // interval) % 2 else real(loader, step, **kwargs)
  return train_batch


def benchmark_train(spec: str, workdir: str) -> tuple[float, float]:
  """Median steps/s of the log intervals fed by the pipeline, and from memory.

  One run, its intervals alternating between the two, so that changes in the
  machine's load (other jobs) hit both alike. The first interval (warm-up) is
  left out.
  """
  interval = max(ARGS.steps // 20, 1)
  config = config_lib.load_config(spec, [
      f"train_duration={ARGS.steps}", f"log_every={interval}", "eval_every=0",
      "checkpoint.every=0", "final_eval_splits=()", "eval_splits=()"])
  real = pipeline.train_batch
  pipeline.train_batch = _alternating(config, interval)
  try:
    train_lib.train(config, workdir)
  finally:
    pipeline.train_batch = real
  rates = {"pipeline": [], "memory": []}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for record in map(json.loads, f):
      if "train/steps_per_s" in record and record["step"] > interval:
        # The interval ending at `step` trained on batches step-interval..step-1.
        mode = "memory" if ((record["step"] - 1) // interval) % 2 else "pipeline"
        rates[mode].append(record["train/steps_per_s"])
  return statistics.median(rates["pipeline"]), statistics.median(rates["memory"])


def main() -> None:
  print(f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}", flush=True)
  with tempfile.TemporaryDirectory() as tmp:
    if not ARGS.skip_sources:
      print(f"\nSources: batches of {BATCH}, {ARGS.batches} batches each")
      benchmark_sources(tmp)
    if not ARGS.skip_train:
      print(f"\nTraining loop: {ARGS.steps} steps, intervals of "
            f"{max(ARGS.steps // 20, 1)} alternating pipeline / in memory")
      table = []
      for spec in ARGS.configs:
        if not os.path.exists(os.path.join(ROOT, spec.split(":")[0])):
          print(f"  {spec}: not found, skipped")
          continue
        workdir = os.path.join(tmp, spec.replace("/", "_").replace(":", "_"))
        table.append((spec, *benchmark_train(os.path.join(ROOT, spec), workdir)))
      print(f"\n  {'config':<36} {'steps/s: pipeline':>18} {'in memory':>10} "
            f"{'ratio':>6}")
      for spec, real, memory in table:
        print(f"  {spec:<36} {real:>18.1f} {memory:>10.1f} {real / memory:>6.3f}")


if __name__ == "__main__":
  main()
