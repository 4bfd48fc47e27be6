"""Running a finished (or running) run's evaluators on one of its checkpoints.

  results = standalone.run_standalone(config, workdir, checkpoint="best")

The `ctjax eval` command: the params of WORKDIR/checkpoints' latest checkpoint, or
its best by `config.checkpoint.best_metric`, restored onto this machine's mesh
(any number of devices), evaluated by every evaluator of `config.evaluators`; the
results are appended to WORKDIR/metrics.jsonl at the checkpoint's step.
"""
import json
import os
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from ctjax import checkpoint as checkpoint_lib
from ctjax import models
from ctjax import sharding
from ctjax import writers
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError
from ctjax.evaluators import make_evaluators


def _best_step(workdir: str, steps: list[int], checkpoint_config: Any) -> int:
  """The step among `steps` whose metrics.jsonl record is best by
  config.checkpoint.best_metric.

  Read from metrics.jsonl, the workdir contract, not from the checkpoints: Orbax
  writes a checkpoint's metrics to disk only when its manager has a `best_fn`,
  and ctjax's keeps the best by a preservation policy instead.
  """
  metric = checkpoint_config.best_metric
  if not metric:
    raise UserError("checkpoint='best' needs config.checkpoint.best_metric (say "
                    "'validation/accuracy'); or evaluate the latest checkpoint")
  path = os.path.join(workdir, "metrics.jsonl")
  scored = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        record = json.loads(line) if line.strip() else {}
        if record.get("step") in steps and metric in record:
          scored[record["step"]] = record[metric]
  if not scored:
    raise UserError(f"{path}: no record of {metric!r} "
                    "(config.checkpoint.best_metric) at a step with a checkpoint "
                    f"({', '.join(map(str, steps))}); evaluate the latest "
                    "checkpoint instead")
  sign = -1 if checkpoint_config.best_mode == "min" else 1
  # Of equally good steps, the later: it has trained longer.
  return max(scored, key=lambda step: (sign * scored[step], step))


def _restore_params(workdir: str, abstract_params: Any, checkpoint: str,
                    checkpoint_config: Any) -> tuple[Any, int]:
  """(params, step) of the latest or best checkpoint of `workdir`, with the
  shardings of `abstract_params` (this machine's mesh)."""
  directory = checkpoint_lib.checkpoint_dir(workdir)
  manager = checkpoint_lib.make_manager(directory, read_only=True)
  steps = list(manager.all_steps())
  if not steps:
    raise UserError(f"{directory}: no checkpoint to evaluate; train first")
  step = (max(steps) if checkpoint == "latest" else
          _best_step(workdir, steps, checkpoint_config))
  # Only the params are read: not the optimizer state, which may be twice their
  # size.
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(
          item={"params": abstract_params},
          restore_args={"params": ocp.checkpoint_utils.construct_restore_args(
              abstract_params)},
          partial_restore=True)))
  return restored["state"]["params"], step


def run_standalone(config: ml_collections.ConfigDict, workdir: str,
                   checkpoint: str = "latest") -> dict[str, float]:
  """Evaluates `config.evaluators` on a checkpoint of `workdir`; returns
  {"step": the checkpoint's step, "NAME/metric": value, ...}.

  Args:
    config: the run's config (WORKDIR/config.json, `config_lib.from_json`), with
      any evaluators to run set in `config.evaluators`.
    workdir: the run's folder; its data_state.json gives the same data mapping.
    checkpoint: "latest", or "best" by config.checkpoint.best_metric.
  """
  if checkpoint not in ("latest", "best"):
    raise UserError(f"checkpoint={checkpoint!r}: give 'latest' or 'best'")
  if not config.get("evaluators"):
    raise UserError("config.evaluators is empty: nothing to evaluate; add e.g. "
                    "--config.evaluators='({\"type\": \"linear_probe\"},)'")
  if config.get("lora", {}).get("rank") or config.optim.get("groups"):
    # Their checkpoints hold adapters and trainable parameters only; the
    # trainer's parameter plan (ctjax/peft.py) rebuilds the model's from them.
    raise UserError("ctjax eval does not yet evaluate runs with config.lora or "
                    "config.optim.groups; set config.evaluators before training "
                    "to evaluate them during the run")
  model = models.get_model(config.model)
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.sharding_rules)
  splits = splits_lib.open_splits(
      config.data, state_dir=workdir, write_state=False,
      num_classes=getattr(model, "num_classes", None),
      vocab_size=getattr(model, "vocab_size", None))
  preprocess = ops.compose(config.data.get("preprocess"))
  loaders = {name: pipeline.BatchLoader(s, preprocess,
                                        num_threads=config.data.num_threads)
             for name, s in splits.items()}
  evaluators = make_evaluators(
      config.evaluators, model=model, loaders=loaders, mesh=mesh,
      batch_size=config.eval_batch_size or config.batch_size,
      data_config=config.data, train_batch_size=config.batch_size,
      train_examples=len(splits["train"]) if "train" in splits else None)

  sample = next(iter(loaders.values())).load(np.zeros(1, np.int64), None)["inputs"]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.asarray(sample), train=False)["params"])
  shardings = sharding.state_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.meta.unbox(boxed), shardings)
  params, step = _restore_params(workdir, abstract, checkpoint, config.checkpoint)

  results = {}
  for evaluator in evaluators:
    results.update(evaluator.run(params))
  # Appended, never truncating: an evaluation must not drop records of the run
  # (which may still be training), as a resumed run drops those past its step.
  writer = writers.MetricWriter(workdir, start_step=sys.maxsize)
  try:
    writer.write(step, results)
  finally:
    writer.close()
  writers.info(f"{checkpoint} checkpoint, step {step}: "
               f"{writers.format_scalars(results)}")
  return {"step": step, **results}
