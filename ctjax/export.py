"""`ctjax export`: a run's checkpoint as a Hugging Face directory.

  ctjax export --workdir runs/NAME --to OUT [--checkpoint latest|best]

reads WORKDIR/config.json, restores the params of the newest checkpoint (or the
best by config.checkpoint.best_metric), and writes OUT/config.json,
OUT/model.safetensors and, when config.data.tokenizer is a tokenizer.json (or a
directory holding one), OUT/tokenizer.json (see `ctjax.hf.export`).
"""
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from ctjax import checkpoint
from ctjax import config as config_lib
from ctjax import hf
from ctjax import writers
from ctjax.errors import UserError


def export_run(workdir: str, out_dir: str, which: str = "latest") -> None:
  """Exports the run in `workdir` to `out_dir`; `which` is "latest" or "best"."""
  config_path = os.path.join(workdir, "config.json")
  try:
    with open(config_path) as f:
      config = config_lib.from_json(f.read())
  except OSError as e:
    raise UserError(f"{config_path}: cannot be read ({e.strerror}); give the "
                    "workdir of a ctjax run") from None
  manager = checkpoint.make_manager(checkpoint.checkpoint_dir(workdir), read_only=True)
  step = _step(manager, config, which)
  params = model_params(config, _restore_params(manager, step))
  tokenizer = config.data.get("tokenizer", "bytes")
  hf.export(params, config.model, out_dir,
            tokenizer=None if tokenizer == "bytes" else tokenizer)
  writers.info(f"exported {workdir} step {step} ({which}) to {out_dir}")


def model_params(config: ml_collections.ConfigDict, saved: Any) -> Any:
  """The full model's parameters from those a checkpoint holds.

  The seam for runs whose checkpoints hold something else than the model's
  parameters: LoRA adapters are to be merged into their kernels here, and
  frozen parameters (in no checkpoint) read back from config.model_init.
  """
  lora_rank = config.get("lora", {}).get("rank", 0)
  if lora_rank:
    raise UserError(f"config.lora.rank={lora_rank}: exporting a run with LoRA "
                    "adapters is not supported yet")
  frozen = [pattern for pattern, option in config.optim.get("groups", ())
            if option == "frozen"]
  if frozen:
    raise UserError(f"config.optim.groups freezes {', '.join(frozen)}: exporting a "
                    "run with frozen parameters is not supported yet")
  return saved


def _step(manager: ocp.CheckpointManager, config: ml_collections.ConfigDict,
          which: str) -> int:
  steps = manager.all_steps()
  if not steps:
    raise UserError(f"{manager.directory}: no checkpoint to export")
  if which == "latest":
    return max(steps)
  metric, mode = config.checkpoint.best_metric, config.checkpoint.best_mode
  scored = {s: (manager.metrics(s) or {}).get(metric) for s in steps} if metric else {}
  scored = {s: v for s, v in scored.items() if v is not None}
  if not scored:
    raise UserError(f"--checkpoint best: the run's checkpoints carry no "
                    f"config.checkpoint.best_metric ({metric!r}); use "
                    "--checkpoint latest")
  return (max if mode == "max" else min)(scored, key=scored.get)


def _restore_params(manager: ocp.CheckpointManager, step: int) -> Any:
  """The params of checkpoint `step`, on one device, shapes from its metadata."""
  saved = manager.item_metadata(step)["state"]["params"]
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": abstract},
          restore_args={"params": ocp.checkpoint_utils.construct_restore_args(abstract)},
          partial_restore=True)))["state"]["params"]
