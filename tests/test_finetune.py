"""Fine-tuning runs end to end: length buckets, evaluators, LoRA export and eval.

Each test is a real `ctjax train` run (tests/run_util.py) of a tiny BERT: on texts
written here (the jsonl source, byte tokenizer), or on token arrays from the tiny
Hugging Face checkpoint of tests/hf_reference/.
"""
import json
import subprocess
import sys

import numpy as np
import safetensors.numpy

import run_util
import tolerances

# Reorderable float32 terms on the path to the loss of BERT_CONFIG (see
# tests/tolerances.py): 8 texts of up to 64 tokens, and per token forward the
# embedding norm and each of 2 layers' norms, projections and MLP over 32 and 64
# features and attention over up to 64 positions (about 2 x 330), then the pooler
# and classifier over 32; as many backward.
BERT_SUM_TERMS = 8 * 64 + 2 * (32 + 2 * 330 + 64)


def _write_texts(folder) -> dict[str, str]:
  """Train and validation JSONL files of texts 1..60 bytes long, 3 classes."""
  rng = np.random.default_rng(0)
  words = ("alpha", "beta", "gamma")
  paths = {}
  for split, count in (("train", 96), ("validation", 40)):
    paths[split] = str(folder / f"{split}.jsonl")
    with open(paths[split], "w") as f:
      for i in range(count):
        label = i % 3
        text = " ".join([words[label]] * int(rng.integers(1, 11)))
        f.write(json.dumps({"text": text, "label": words[label]}) + "\n")
  return paths


def _bert_config(tmp_path, **data):
  return {
      "seed": 0,
      "data": {"source": "jsonl", "splits": _write_texts(tmp_path),
               "tokenizer": "bytes", "seq_len": 64, "num_threads": 1,
               "prefetch": 0, **data},
      "model": {"name": "bert", "num_classes": 3, "vocab_size": 256,
                "hidden_size": 32, "num_layers": 2, "num_heads": 4,
                "intermediate_size": 64, "dropout": 0.0},
      "batch_size": 8, "train_duration": 12, "log_every": 1, "eval_every": 0,
      "eval_splits": ("validation",), "final_eval_splits": ("validation",),
      "optim": {"lr": 1e-3},
      "checkpoint": {"every": 0},
  }


def test_padding_to_length_buckets_changes_no_result(tmp_path):
  """Bucketed batches hold the same tokens; BERT masks the padding out."""
  fixed = run_util.write_config(tmp_path / "fixed", _bert_config(tmp_path))
  bucketed = run_util.write_config(
      tmp_path / "bucketed", _bert_config(tmp_path, length_buckets=(16, 32)))
  run_util.train(fixed, tmp_path / "fixed_run", devices=1)
  out = run_util.train(bucketed, tmp_path / "bucketed_run", devices=1)
  # Shorter sequences reorder the attention sums: within the derived bound.
  tolerances.assert_curves_close(run_util.curve(tmp_path / "bucketed_run"),
                                 run_util.curve(tmp_path / "fixed_run"),
                                 BERT_SUM_TERMS)
  final = lambda run: run_util.metrics(tmp_path / run)[-1]
  assert (final("bucketed_run")["validation/accuracy"]
          == final("fixed_run")["validation/accuracy"])
  assert "step 12/12" in out.stdout


def test_evaluators_run_on_their_schedule_and_at_the_end(tmp_path):
  config = _bert_config(tmp_path, length_buckets=(16, 32), group_by_length=True)
  config["evaluators"] = (
      {"type": "linear_probe", "every": 5, "feature": "mean"},
      {"type": "fewshot", "shots": (1, 2), "feature": "mean"},
  )
  path = run_util.write_config(tmp_path, config)
  run_util.train(path, tmp_path / "run", devices=2)
  records = run_util.metrics(tmp_path / "run")
  probe_steps = [r["step"] for r in records if "linear_probe/accuracy" in r]
  fewshot_steps = [r["step"] for r in records if "fewshot/2shot_accuracy" in r]
  assert probe_steps == [5, 10, 12] and fewshot_steps == [12]
  final = records[-1]
  assert 0 <= final["linear_probe/accuracy"] <= 1
  assert "validation/accuracy" in final


def _token_arrays(folder) -> dict[str, str]:
  """Train/validation .npz files of 16 token ids below 99 (bert_tiny's vocabulary);
  the class is which of the tokens 5, 6, 7 a row holds most of."""
  rng = np.random.default_rng(0)
  paths = {}
  for split, count in (("train", 64), ("validation", 24)):
    x = rng.integers(8, 99, size=(count, 16)).astype(np.int32)
    y = rng.integers(0, 3, size=count).astype(np.int32)
    x[:, 1:6] = (5 + y)[:, None]
    x[:, 0] = 1  # A [CLS]-like first token; the pooler reads position 0.
    paths[split] = str(folder / f"{split}.npz")
    np.savez(paths[split], x=x, y=y)
  return paths


def test_lora_run_exports_its_base_weights_with_the_adapters_merged(tmp_path):
  """A LoRA fine-tune of a Hugging Face checkpoint, exported: every kernel is the
  base's plus (alpha / rank) A B, computed here in NumPy; the rest is the base's
  bit for bit, the new head the run's; `ctjax eval` evaluates the same model."""
  base = run_util.REPO / "tests" / "hf_reference" / "bert_tiny"
  rank, alpha = 2, 4.0
  config = {
      "seed": 0,
      "data": {"source": "arrays", "splits": _token_arrays(tmp_path),
               "keys": {"inputs": "x", "label": "y"}, "num_threads": 1,
               "prefetch": 0},
      "model": {"name": "bert", "num_classes": 3},
      "model_init": str(base), "model_init_skip": ("^classifier/",),
      "lora": {"rank": rank, "alpha": alpha,
               "targets": ("attention/(query|value)/kernel$",),
               "trainable": ("^classifier/",)},
      "batch_size": 8, "train_duration": 6, "log_every": 3, "eval_every": 0,
      "eval_splits": ("validation",), "final_eval_splits": ("validation",),
      "optim": {"lr": 3e-2},
      "checkpoint": {"every": 0},
  }
  run = tmp_path / "run"
  run_util.train(run_util.write_config(tmp_path, config), run, devices=1)
  result = subprocess.run(
      [sys.executable, "-m", "ctjax", "export", "--workdir", str(run), "--to",
       str(tmp_path / "out")], cwd=run_util.REPO, env=run_util.env(1),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr

  exported = safetensors.numpy.load_file(tmp_path / "out" / "model.safetensors")
  original = safetensors.numpy.load_file(base / "model.safetensors")
  saved = run_util.saved_state(run)["params"]
  merged = set()
  for layer in range(2):
    for name in ("query", "value"):
      adapters = saved["encoder"][f"layer_{layer}"]["attention"][name]
      a, b = adapters["kernel_lora_a"], adapters["kernel_lora_b"]
      assert np.abs(b).max() > 0  # The adapters trained.
      key = f"bert.encoder.layer.{layer}.attention.self.{name}.weight"
      # Hugging Face keeps [out, in]: the transpose of the [in, out] product.
      expected = original[key] + (alpha / rank) * (a @ b.reshape(rank, -1)).T
      # Each entry: a 2-term product and one sum, computed in other orders.
      tolerances.assert_close_normwise(exported[key], expected,
                                       tolerances.sum_rtol(rank + 1))
      merged.add(key)
  np.testing.assert_array_equal(exported["classifier.weight"],
                                saved["classifier"]["kernel"].T)
  np.testing.assert_array_equal(exported["classifier.bias"],
                                saved["classifier"]["bias"])
  for key in set(original) - merged - {"classifier.weight", "classifier.bias"}:
    np.testing.assert_array_equal(exported[key], original[key], err_msg=key)

  result = subprocess.run(
      [sys.executable, "-m", "ctjax", "eval", "--workdir", str(run),
       "--config.evaluators=({'type': 'linear_probe'},)"], cwd=run_util.REPO,
      env=run_util.env(2), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  final = run_util.metrics(run)[-1]
  assert final["step"] == 6 and 0 <= final["linear_probe/accuracy"] <= 1
