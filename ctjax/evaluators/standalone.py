"""Running a finished (or running) run's evaluators on one of its checkpoints.

  results = standalone.run_standalone(config, workdir, checkpoint="best")

The `ctjax eval` command: the model of WORKDIR/checkpoints' latest checkpoint, or
its best by `config.checkpoint.best_metric` (`ctjax.runs.load_model`: LoRA and
frozen parameters included), on this machine's mesh (any number of devices),
evaluated by every evaluator of `config.evaluators`; the results are appended to
WORKDIR/metrics.jsonl at the checkpoint's step.
"""
import sys

import ml_collections

from ctjax import models
from ctjax import runs
from ctjax import sharding
from ctjax import writers
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError
from ctjax.evaluators import make_evaluators


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
  if not config.get("evaluators"):
    raise UserError("config.evaluators is empty: nothing to evaluate; add e.g. "
                    "--config.evaluators='({\"type\": \"linear_probe\"},)'")
  model = models.get_model(config.model)
  mesh = sharding.make_mesh(config.mesh)
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
  # Every config mistake is found above; now the checkpoint is read.
  _, _, params, step = runs.load_model(workdir, checkpoint, config=config)

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
