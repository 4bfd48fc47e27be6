"""`ctjax export`: a run's checkpoint as a Hugging Face directory.

  ctjax export --workdir runs/NAME --to OUT [--checkpoint latest|best]

rebuilds the run's model and the whole parameters of its newest checkpoint (or the
best by config.checkpoint.best_metric) with `ctjax.runs.load_model`: LoRA
adapters merged into their kernels, frozen parameters as the run had them. It
writes OUT/config.json, OUT/model.safetensors and, when config.data.tokenizer is a
tokenizer.json (or a directory holding one), OUT/tokenizer.json (see
`ctjax.hf.export`).
"""
import jax

from ctjax import hf
from ctjax import runs
from ctjax import writers


def export_run(workdir: str, out_dir: str, which: str = "latest") -> None:
  """Exports the run in `workdir` to `out_dir`; `which` is "latest" or "best"."""
  config, _, params, step = runs.load_model(workdir, which)
  tokenizer = config.data.get("tokenizer", "bytes")
  hf.export(jax.device_get(params), config.model, out_dir,
            tokenizer=None if tokenizer == "bytes" else tokenizer)
  writers.info(f"exported {workdir} step {step} ({which}) to {out_dir}")
