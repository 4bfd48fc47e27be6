"""Evaluating a saved run without training: the `ctjax eval` command.

  ctjax eval --workdir DIR [--checkpoint latest|best|STEP] [--split test]
             [--data.path=new.csv] [--predictions jsonl|csv] [--config.KEY=V ...]

The model of one of DIR's checkpoints (`ctjax.runs.load_model`: LoRA and frozen
parameters included) is evaluated on this machine's devices, whatever number the
run trained on (the mesh's data axis fills them; the evaluation batch grows to a
multiple of the batch shards, which changes nothing since evaluation pads and
masks exactly), by the run's evaluators (`config.evaluators`, with the task's
`metrics` evaluator; `--config.evaluators=...` says others):

  - on the run's own splits (`--split`, default the run's final_eval_splits), or
  - on a new file with the run's schema (`--data.path`, and other `--data.KEY`):
    the whole file is one split named after it (or `--split`), encoded with the
    run's saved WORKDIR/data_state.json (vocabularies, means, label names), never
    refitted.

What it writes (process 0):

  DIR/eval/step_N/SPLIT/metrics.json, stats.npz, predictions.jsonl (see
      ctjax/evaluators/metrics.py); predictions.csv too with --predictions csv
  DIR/plots/ and DIR/report.html, of this evaluation
  DIR/metrics.jsonl, the metrics appended at the checkpoint's step
"""
import math
import os
import sys
from typing import Any

import jax
import ml_collections

from ctjax import models
from ctjax import report
from ctjax import runs
from ctjax import sharding
from ctjax import writers
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError
from ctjax.evaluators import configured
from ctjax.evaluators import make_evaluators

PREDICTION_FORMATS = ("jsonl", "csv")


def point_at_new_data(config: ml_collections.ConfigDict, split: str | None) -> str:
  """Points config.data at its new file (--data.path): the whole file one split;
  returns the split's name."""
  path = config.data.path
  name = split or os.path.splitext(os.path.basename(path))[0] or "data"
  config.data.split_fractions = None
  config.data.splits = {name: path}
  # The new file is evaluated whole: no folds, no group column needed, nothing
  # replayed into a training split.
  config.data.cross_validation = None
  config.data.replay = None
  return name


def open_saved_splits(data_config: ml_collections.ConfigDict, workdir: str,
                      model: Any) -> dict[str, Any]:
  """The splits `data_config` names, encoded with the run in `workdir`'s saved
  data_state.json (never refitted, nothing written), labels checked against
  `model`."""
  return splits_lib.open_splits(
      data_config, state_dir=workdir, write_state=False,
      num_classes=getattr(model, "num_classes", None),
      vocab_size=getattr(model, "vocab_size", None))


def eval_batch_size(config: ml_collections.ConfigDict, mesh) -> int:
  """The run's evaluation batch, rounded up to a multiple of this mesh's batch
  shards (and processes)."""
  size = config.eval_batch_size or config.batch_size
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  multiple = math.lcm(shards, jax.process_count())
  return -(-size // multiple) * multiple


def run_standalone(config: ml_collections.ConfigDict, workdir: str,
                   checkpoint: str = "latest", *, split: str | None = None,
                   new_data: bool = False,
                   predictions_format: str = "jsonl") -> dict[str, float]:
  """Evaluates a checkpoint of `workdir`; returns {"step": N, "metric": value}.

  Args:
    config: the run's config (`runs.read_config`), with the caller's changes
      (other evaluators, a new data.path).
    workdir: the run's folder.
    checkpoint: "latest", "best" (by config.checkpoint.best_metric), or a step.
    split: the split to evaluate (default: the run's final ones); with new_data,
      the new file's split name (default: the file's name).
    new_data: config.data.path names a new file to evaluate whole.
    predictions_format: "jsonl", or "csv" for predictions.csv as well.
  """
  if predictions_format not in PREDICTION_FORMATS:
    raise UserError(f"--predictions={predictions_format!r}: choose one of "
                    f"{', '.join(PREDICTION_FORMATS)}")
  if new_data:
    split = point_at_new_data(config, split)
  model = models.get_model(config.model)
  mesh = sharding.make_mesh(config.mesh)
  splits = open_saved_splits(config.data, workdir, model)
  if split is not None and split not in splits:
    raise UserError(f"--split={split!r}: the run's data defines "
                    f"{', '.join(splits)}")
  preprocess = ops.compose(config.data.get("preprocess"))
  loaders = {name: pipeline.BatchLoader(s, preprocess,
                                        num_threads=config.data.num_threads)
             for name, s in splits.items()}
  evaluator_configs = configured(config)
  for evaluator_config in evaluator_configs:
    if evaluator_config.get("type") == "metrics":
      if split is not None:  # The task's metrics on this split only.
        evaluator_config.update(splits=(split,), final_splits=(split,))
      evaluator_config["predictions_csv"] = predictions_format == "csv"
  # The checkpoint's step names the output folder: read it before building.
  step = runs.choose_checkpoint_step(workdir, config, checkpoint)
  tag = f"step_{step}"
  evaluators = make_evaluators(
      evaluator_configs, model=model, loaders=loaders, mesh=mesh,
      batch_size=eval_batch_size(config, mesh), data_config=config.data,
      train_batch_size=config.batch_size,
      train_examples=len(splits["train"]) if "train" in splits else None,
      task=config.task, output_dir=os.path.join(workdir, "eval", tag))
  # Every config mistake is found above; now the checkpoint is read.
  _, _, params, step = runs.load_model(workdir, str(step), config=config)

  results = {}
  for evaluator in evaluators:
    results.update(evaluator.run(params, final=True))
  if config.report and jax.process_index() == 0:
    report_path = report.write_for_evaluation(workdir, tag, splits)
    if report_path:
      writers.info(f"report: {report_path}")
  # Appended, never truncating: an evaluation must not drop records of the run
  # (which may still be training), as a resumed run drops those past its step.
  writer = writers.MetricWriter(workdir, start_step=sys.maxsize,
                               tensorboard=config.get("tensorboard", True))
  try:
    writer.write(step, results)
  finally:
    writer.close()
  writers.info(f"{checkpoint} checkpoint, step {step}: "
               f"{writers.format_scalars(results)}")
  return {"step": step, **results}
