"""Drift monitoring: the reference a run saves, and the `ctjax monitor` command.

  ctjax monitor --workdir DIR --data NEW [--checkpoint latest|best] [--out OUT]
                [--psi 0.2] [--ks-pvalue 0.01] [--mmd-pvalue 0.01]
                [--accuracy-drop 0.05] [--config.KEY=VALUE ...]

At the end of training a run describes what its model saw (`save_run_reference`,
on unless config.reference_statistics=False): a seeded subsample of at most
REFERENCE_EXAMPLES training examples, their features (a table's encoded inputs;
for texts and images the model's pooled representation) and the model's
predictions on them, and its final accuracy on the validation split (when it
evaluates one at the end), in WORKDIR/reference/ (see ctjax/drift.py). A run
adapted to new data with old data replayed (`ctjax adapt`) is described by its
new training data alone.

`ctjax monitor` reads NEW as `ctjax eval --data.path` does: the whole file one
split, encoded with the run's saved WORKDIR/data_state.json, never refitted. A
checkpoint's model gives the same features and predictions of it, on this
machine's devices; they are compared with the reference (and, where NEW has
labels, so are the labels and the accuracy). The report goes to
WORKDIR/monitor/NAME/ (NAME: NEW's file name; or --out): drift.md, drift.csv,
drift.json and drift.png, and the table to stdout. Exit status: 0 no drift, 1 a
threshold crossed, 2 a mistake in what was given (say NEW is missing).

Only classification runs with one class per example have a reference: drift of
regression targets or of language models' tokens is not measured. Nor do
differentially private runs: the reference keeps a sample of training records,
which the privacy guarantee does not cover.
"""
import argparse
import glob
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ctjax import config as config_lib
from ctjax import drift
from ctjax import models
from ctjax import runs
from ctjax import sharding
from ctjax import tasks
from ctjax import writers
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError
from ctjax.evaluators import standalone

# Examples of a split that a reference describes: enough for histograms of 10 bins
# and for tests at the 1% level, and seconds of forward passes for most models.
REFERENCE_EXAMPLES = 2000


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="the run's folder")
  parser.add_argument("--data", required=True,
                      help="the new data: a file (or glob) of the run's schema")
  parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest",
                      help="whose model gives the predictions: the newest "
                      "checkpoint, or the best by config.checkpoint.best_metric")
  parser.add_argument("--out", default=None,
                      help="where the report goes (default WORKDIR/monitor/NAME)")
  add_threshold_arguments(parser)
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


def add_threshold_arguments(parser: argparse.ArgumentParser) -> None:
  """--psi, --ks-pvalue, --mmd-pvalue, --accuracy-drop: when data has drifted."""
  defaults = drift.Thresholds()
  parser.add_argument("--psi", type=float, default=defaults.psi,
                      help="drift where a population stability index exceeds this")
  parser.add_argument("--ks-pvalue", type=float, default=defaults.ks_pvalue,
                      help="drift where a KS p-value is below this (divided by "
                      "the number of table features)")
  parser.add_argument("--mmd-pvalue", type=float, default=defaults.mmd_pvalue,
                      help="drift where the embeddings' MMD p-value is below this")
  parser.add_argument("--accuracy-drop", type=float, default=defaults.accuracy_drop,
                      help="drift where the accuracy on labelled new data falls "
                      "more than this below the validation accuracy")


def feature_kind(inputs: np.ndarray) -> str:
  """A batch of float vectors is a table ("table": its columns are compared);
  token ids and images are compared through the model ("embedding")."""
  inputs = np.asarray(inputs)
  return ("table" if inputs.ndim == 2 and np.issubdtype(inputs.dtype, np.floating)
          else "embedding")


def _subsample(split: Any, size: int, seed: int) -> splits_lib.Subset:
  """At most `size` examples of `split`, seeded, in their order."""
  n = len(split)
  indices = (np.arange(n) if n <= size else
             np.sort(np.random.default_rng(seed).choice(n, size, replace=False)))
  return splits_lib.Subset(split, indices)


def _unsupported(config: ml_collections.ConfigDict, model: nn.Module, params: Any,
                 sample: dict[str, np.ndarray], kind: str) -> str | None:
  """Why a run can have no reference, or None."""
  if config.privacy:
    # The reference keeps training records, which DP-SGD's guarantee does not
    # cover.
    return "a differentially private run keeps no sample of its training data"
  if config.task != "classification":
    return (f"config.task={config.task!r}: drift monitoring compares class "
            "predictions, of classification runs only")
  if np.ndim(sample.get("label")) != 1:
    return "the labels are not one class per example (a language model?)"
  if kind == "embedding":
    given = jax.eval_shape(lambda p, x: models.features(model, p, x), params,
                           jnp.asarray(sample["inputs"]))
    if "pooled" not in given:
      return f"{type(model).__module__}.Model gives no pooled representation"
  return None


def outputs_step(model: nn.Module, mesh: jax.sharding.Mesh, kind: str) -> Any:
  """Jitted (params, global batch) -> (features, class probabilities, labels,
  mask), replicated on every device: the features are the inputs themselves for
  kind "table", else the model's pooled representation."""
  predict = tasks.get("classification").predict

  def step(params, batch):
    outputs = models.features(model, params, batch["inputs"])
    inputs = batch["inputs"]
    features = (inputs.reshape(inputs.shape[0], -1) if kind == "table"
                else outputs["pooled"])
    return (features.astype(jnp.float32), predict(outputs["logits"])["scores"],
            batch.get("label"), batch["mask"])

  return jax.jit(step, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))


def model_outputs(step: Any, params: Any, loader: pipeline.BatchLoader,
                  mesh: jax.sharding.Mesh, batch_size: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(features [n, f], class probabilities [n, classes], labels [n] or None) of
  the loader's n examples by `outputs_step`, in order, on every process; as in
  `ctjax.evaluators.common.Extractor`, padding is dropped by the mask."""
  parts = []
  for local in pipeline.eval_batches(loader, global_batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    # Fetched at once: one program with collectives in flight at a time (see
    # train.evaluate).
    x, p, y, mask = jax.device_get(step(params, sharding.global_batch(local, mesh)))
    real = mask > 0
    parts.append((x[real], p[real], None if y is None else y[real]))
  features, probabilities, labels = zip(*parts)
  return (np.concatenate(features), np.concatenate(probabilities),
          None if labels[0] is None else np.concatenate(labels))


def save_run_reference(config: ml_collections.ConfigDict, workdir: str, params: Any,
                       splits: dict[str, Any], mesh: jax.sharding.Mesh,
                       final_metrics: dict[str, float]) -> str | None:
  """Computes and saves the drift reference of a trained run (see the module's
  docstring); returns its folder, or None where the run has none.

  Every process runs the model (its parameters are sharded over all of them);
  process 0 writes.

  Args:
    config: the run's config.
    workdir: the run's folder.
    params: the whole model's parameters, as `model.apply` takes them.
    splits: the run's splits ("train" is described).
    mesh: the run's mesh.
    final_metrics: the run's final evaluation: its validation/accuracy is what
      the accuracy of labelled new data is compared with.
  """
  if not config.get("reference_statistics", True):
    return None
  model = models.get_model(config.model)
  described = splits["train"]
  if isinstance(described, splits_lib.Concatenation):
    # A run adapted to new data (config.data.replay) is described by that data,
    # what later data should look like, not by the old examples replayed.
    described = described.parts[0]
  train = pipeline.BatchLoader(
      _subsample(described, REFERENCE_EXAMPLES, config.seed),
      ops.compose(config.data.get("preprocess")), num_threads=config.data.num_threads)
  sample = train.load(np.zeros(1, np.int64), None)
  kind = feature_kind(sample["inputs"])
  reason = _unsupported(config, model, params, sample, kind)
  if reason:
    writers.info(f"no drift reference: {reason}")
    return None
  step = outputs_step(model, mesh, kind)
  batch_size = standalone.eval_batch_size(config, mesh)
  features, probabilities, labels = model_outputs(step, params, train, mesh,
                                                  batch_size)
  metrics = ({"accuracy": final_metrics["validation/accuracy"]}
             if "validation/accuracy" in final_metrics else {})
  names = getattr(splits["train"], "feature_names", None)
  if names is not None and len(names) != features.shape[1]:
    names = None  # Preprocessing changed the inputs: their columns go unnamed.
  stats = drift.reference_statistics(
      features, kind=kind, probabilities=probabilities, labels=labels,
      feature_names=names, reference_metrics=metrics, seed=int(config.seed))
  if jax.process_index() != 0:
    return None
  directory = drift.save_reference(workdir, stats)
  writers.info(f"drift reference of {len(features)} training examples ({kind}): "
               f"{directory}")
  return directory


def thresholds(args: argparse.Namespace) -> drift.Thresholds:
  """The thresholds `add_threshold_arguments` parsed, checked."""
  for flag, value, high in (("--psi", args.psi, np.inf),
                            ("--ks-pvalue", args.ks_pvalue, 1.0),
                            ("--mmd-pvalue", args.mmd_pvalue, 1.0),
                            ("--accuracy-drop", args.accuracy_drop, 1.0)):
    if not 0 < value < high:
      raise UserError(f"{flag}={value:g}: give a number above 0" +
                      (f" and below {high:g}" if high < np.inf else ""))
  return drift.Thresholds(psi=args.psi, ks_pvalue=args.ks_pvalue,
                          mmd_pvalue=args.mmd_pvalue,
                          accuracy_drop=args.accuracy_drop)


def monitor_command(args: argparse.Namespace, overrides: list[str]) -> int:
  """`ctjax monitor`: 0 when no threshold is crossed, 1 when one is.

  `overrides` are "KEY=VALUE" changes to the run's config (say data.delimiter).
  """
  report = check_drift(args.workdir, args.data, thresholds=thresholds(args),
                       checkpoint=args.checkpoint, out=args.out, overrides=overrides)
  return 1 if report.drifted else 0


def check_drift(workdir: str, data: str, *, thresholds: drift.Thresholds,
                checkpoint: str = "latest", out: str | None = None,
                overrides: tuple[str, ...] = ()) -> drift.DriftReport:
  """Compares the file(s) `data` with the run in `workdir`'s reference, through
  its `checkpoint`'s model; writes and prints the report (see the module's
  docstring) and returns it."""
  if not glob.glob(os.path.expanduser(data)):
    raise UserError(f"--data={data}: no such file; give new data of the "
                    "run's schema (relative paths start at "
                    f"{os.getcwd()})")
  config = runs.read_config(workdir)
  for override in overrides:
    config_lib.apply_override(config, override)
  # Read before any data or checkpoint: a run without one stops at once.
  reference = drift.load_reference(workdir)
  config.data.path = data
  name = standalone.point_at_new_data(config, None)
  model = models.get_model(config.model)
  mesh = sharding.make_mesh(config.mesh)
  splits = standalone.open_saved_splits(config.data, workdir, model)
  loader = pipeline.BatchLoader(splits[name], ops.compose(config.data.get("preprocess")),
                                num_threads=config.data.num_threads)
  _, _, params, step = runs.load_model(workdir, checkpoint, config=config)
  features, probabilities, labels = model_outputs(
      outputs_step(model, mesh, reference["kind"]), params, loader, mesh,
      standalone.eval_batch_size(config, mesh))
  report = drift.compare(reference, features, probabilities, labels,
                         thresholds=thresholds, seed=int(config.seed))
  out_dir = out or os.path.join(workdir, "monitor", name)
  if jax.process_index() == 0:
    drift.write_report(report, out_dir)
  writers.info(drift.markdown(report))
  writers.info(f"{checkpoint} checkpoint, step {step}; report in {out_dir}")
  return report
