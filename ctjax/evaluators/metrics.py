"""The task's own metrics over whole splits: what the trainer evaluates.

  config.evaluators = (
      dict(type="metrics", splits=("validation",), every="1 epoch",
           final_splits=("validation", "test"),
           top_k=(5,), brier=True, calibration_bins=15, auc_bins=4096),
  )
  config.checkpoint.best_metric = "validation/roc_auc"   # any metric, min or max

Every split is evaluated exactly: padded, masked batches over the run's mesh, whose
statistics (ctjax/tasks/: sums that merge across batches, devices and hosts) are
turned into metrics once at the end. Metrics are named `SPLIT/METRIC`
("validation/accuracy"), or `NAME/SPLIT/METRIC` when the evaluator is given a name.

A run whose config lists no `metrics` evaluator gets one from the older keys:
splits=config.eval_splits every config.eval_every, final_splits=
config.final_eval_splits, bits_per_byte=config.bits_per_byte, and resamples=0 (no
intervals, which cost a compilation and seconds per run).

Options (see ctjax/tasks/ for which task takes which statistic, and their cost):

  splits          evaluated every `every`
  final_splits    evaluated at the end (default: `splits`)
  top_k, brier, calibration_bins, auc_bins   more statistics (classification;
                  multilabel takes top_k and auc_bins); 0 / () / False: off.
                  Unset, auc_bins is 4096 and calibration_bins 15 for models of
                  at most 32 classes (labels), else 0
  bits_per_byte   also report the loss in bits (byte-level language models)
  predictions     at the end, write every example's prediction (below)
  predictions_csv and predictions.csv too (`ctjax eval --predictions csv`)
  slices, resamples, slice_seed   at the end, the metrics with bootstrap
                  intervals (seeded, `resamples` of them; 0: none), overall (the
                  slice "all") and per group of the data's slices
                  (config.data.slices; slices=False: not those); ctjax/slices.py

At the end each final split also leaves, when the Context has an `output_dir`
(process 0 writes):

  OUTPUT_DIR/SPLIT/metrics.json      {"split", "task", "class_names", "metrics",
                                      "per_class", "slices"}
  OUTPUT_DIR/SPLIT/stats.npz         the merged statistics (curves are drawn from them)
  OUTPUT_DIR/SPLIT/predictions.jsonl one line per example: index, id (file:line or
                                      path where the data has one), label,
                                      prediction, scores, confidence
  OUTPUT_DIR/SPLIT/predictions.csv   the same, a score column per class
                                      (predictions_csv)
"""
import csv
import functools
import inspect
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ctjax import report
from ctjax import sharding
from ctjax import slices as slices_lib
from ctjax import tasks
from ctjax import writers
from ctjax.data import pipeline
from ctjax.evaluators import common


# Bytes of bootstrapped confusion matrices per slice group (see _slice_options).
CONFUSION_BUDGET = 16 * 2**20
# auc_bins and calibration_bins left unset: these, up to this many classes, whose
# histograms take 8·C·4096 bytes (1 MiB at 32 classes).
AUTOMATIC_MAX_CLASSES = 32
AUTOMATIC_AUC_BINS = 4096
AUTOMATIC_CALIBRATION_BINS = 15


def split_stats(step: Callable, params: Any, loader: pipeline.BatchLoader,
                mesh: jax.sharding.Mesh, *, batch_size: int,
                on_batch: Callable[[], None] = lambda: None,
                on_outputs: Callable[[dict[str, np.ndarray]], None] | None = None
                ) -> dict[str, np.ndarray]:
  """The merged statistics of a whole split (padded, masked, summed across hosts).

  `step(params, batch)` returns the batch's statistics, replicated, or with
  `on_outputs`, (statistics, per-example outputs), the outputs fetched and handed
  to `on_outputs` batch by batch, with the batch's "index" and "mask".
  """
  stats = None
  for local in pipeline.eval_batches(loader, global_batch_size=batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()):
    batch = sharding.global_batch(local, mesh)
    # One eval step at a time, fetched before the next: successive steps do not
    # depend on each other, so XLA on CPU may run two at once, and with several
    # processes their gloo collectives then pair up in a different order on each
    # process: a deadlock. The sums are added on the host, in their own dtypes:
    # the additions the device would do, without compiling one per statistic.
    result = jax.device_get(step(params, batch))
    on_batch()
    if on_outputs is not None:
      result, outputs = result
      on_outputs(outputs)
    stats = result if stats is None else jax.tree.map(np.add, stats, result)
  return stats


def final_splits(evaluator_config: dict[str, Any]) -> tuple[str, ...]:
  """The splits a `metrics` evaluator's config evaluates at the end."""
  splits = evaluator_config.get("splits", Evaluator.DEFAULT_SPLITS)
  return tuple(evaluator_config.get("final_splits") or splits)


class Evaluator:
  """Options: see the module's docstring."""
  DEFAULT_SPLITS = ("validation",)

  def __init__(self, context: Any, *, splits: Sequence[str] = DEFAULT_SPLITS,
               final_splits: Sequence[str] | None = None,
               top_k: Sequence[int] = (), brier: bool = False,
               calibration_bins: int | None = None, auc_bins: int | None = None,
               bits_per_byte: bool = False, predictions: bool = True,
               predictions_csv: bool = False, slices: bool = True, resamples: int = 1000, slice_seed: int = 0):
    key = context.key
    self._context = context
    self.task = tasks.get(context.task)
    self.splits = tuple(splits)
    self.final_splits = self.splits if final_splits is None else tuple(final_splits)
    for option, names in (("splits", self.splits), ("final_splits", self.final_splits)):
      for name in names:
        common.check(name in context.loaders, f"{key}.{option}={names!r}",
                     f"no split {name!r}; the data config defines "
                     f"{', '.join(context.loaders)}")
    # Predictions are per example; a language model's would be per token.
    sample = context.loaders[(self.splits + self.final_splits + ("train",))[0]].load(
        np.zeros(1, np.int64), None)
    per_token = context.task == "classification" and np.ndim(sample["label"]) > 1
    accepted = inspect.signature(self.task.stats).parameters
    # Unset (None): ROC/PR curves and calibration for every model with few
    # enough classes that their histograms are small (AUTOMATIC_MAX_CLASSES).
    automatic = not per_token and 0 < getattr(
        context.model, "num_classes", 0) <= AUTOMATIC_MAX_CLASSES
    if auc_bins is None:
      auc_bins = AUTOMATIC_AUC_BINS if automatic and "auc_bins" in accepted else 0
    if calibration_bins is None:
      calibration_bins = (AUTOMATIC_CALIBRATION_BINS if automatic and
                          "calibration_bins" in accepted else 0)
    requested = {"top_k": tuple(top_k), "brier": brier,
                 "calibration_bins": calibration_bins, "auc_bins": auc_bins}
    for option, value in requested.items():
      common.check(not value or option in accepted, f"{key}.{option}={value!r}",
                   f"the {context.task} task has no such statistic; remove it")
    # Label names and scales are the data's, the same in every (encoded) split;
    # `ctjax eval` of a new file has no training split.
    source = context.loaders.get("train", next(iter(context.loaders.values()))).source
    self.class_names = getattr(source, "label_names", None)
    self.label_mean = np.asarray(getattr(source, "label_mean", 0.0), np.float64)
    self.label_std = np.asarray(getattr(source, "label_std", 1.0), np.float64)
    common.check(all(isinstance(k, int) and k > 0 for k in requested["top_k"]),
                 f"{key}.top_k={top_k!r}", "give positive integers")
    for option, value in (("calibration_bins", calibration_bins),
                          ("auc_bins", auc_bins), ("resamples", resamples)):
      common.check(isinstance(value, int) and value >= 0, f"{key}.{option}={value!r}",
                   "give a non-negative integer (0: off)")
    self._stats_options = {k: v for k, v in requested.items() if v}
    # Regression targets standardised by the data layer: errors in the original
    # units (per_class and summarize take the scale).
    self._units = ({"label_std": self.label_std} if context.task == "regression"
                   else {})
    self._summary_options = {**self._units,
                             **({"bits_per_byte": True} if bits_per_byte else {})}
    common.check(not bits_per_byte or context.task == "classification",
                 f"{key}.bits_per_byte", "is for byte-level language models")
    self.predictions = predictions and not per_token
    self.predictions_csv = predictions_csv
    # Resampling a language model's tokens by document is not offered: its
    # intervals would cost a copy of every token's weight per resample.
    self.resamples = 0 if per_token else resamples
    if context.task == "classification" and not per_token:
      # The confusion matrix: precision, recall and F1 per class and averaged.
      self._stats_options["num_classes"] = context.model.num_classes
    self.slice_seed = slice_seed
    self.slices = slices
    self._steps = {}

  def _outputs(self, params, inputs):
    context = self._context
    return context.model.apply({"params": context.model_params(params)}, inputs,
                               train=False)

  def _slice_names(self, split: str) -> dict[str, list[str]]:
    """The split's slices (config.data.slices) and their groups' names, after
    the slice of all examples, whose intervals are the overall metrics'."""
    overall = {report.OVERALL_SLICE: ["all examples"]} if self.resamples else {}
    if not self.slices:
      return overall
    return {**overall,
            **getattr(self._context.loaders[split].source, "slice_names", {})}

  def _step(self, final: bool, split: str) -> Callable:
    """The jitted evaluation step; at the end it also returns per-example
    outputs and per-slice statistics, whose group counts may differ by split:
    splits with the same counts share one program (one compilation)."""
    slice_names = self._slice_names(split) if final else {}
    key = (final, tuple((name, len(groups)) for name, groups in slice_names.items()))
    if key in self._steps:
      return self._steps[key]
    task, options = self.task, self._stats_options
    with_outputs = final and self.predictions

    def step(params, batch):
      outputs = self._outputs(params, batch["inputs"])
      stats = task.stats(outputs, batch["label"], batch["mask"], **options)
      if slice_names:
        stats["slices"] = {
            name: slices_lib.slice_stats(
                functools.partial(task.stats, **self._slice_options()), outputs,
                batch["label"], batch["mask"],
                groups=(jnp.zeros_like(batch["index"]) if name == report.OVERALL_SLICE
                        else batch[f"slice/{name}"]),
                num_groups=len(groups), example_ids=batch["index"],
                resamples=self.resamples, seed=self.slice_seed)
            for name, groups in slice_names.items()}
      if not with_outputs:
        return stats
      predicted = task.predict(outputs)
      return stats, {**predicted, "label": batch["label"], "index": batch["index"],
                     "mask": batch["mask"]}

    replicated = jax.sharding.NamedSharding(self._context.mesh,
                                            jax.sharding.PartitionSpec())
    self._steps[key] = jax.jit(step, out_shardings=replicated)
    return self._steps[key]

  def _slice_options(self) -> dict[str, Any]:
    """What each bootstrap replicate keeps: every statistic but the histograms,
    whose bins times groups times resamples would not fit (ctjax/slices.py), and
    the confusion matrix only while it is small: C² counts per replicate, up to
    CONFUSION_BUDGET bytes per group (C <= 64 at 1000 resamples)."""
    options = {k: v for k, v in self._stats_options.items() if k != "auc_bins"}
    classes = options.get("num_classes", 0)
    if 4 * classes ** 2 * (self.resamples + 1) > CONFUSION_BUDGET:
      del options["num_classes"]
    return options

  def _summarize(self, stats: dict) -> dict[str, float]:
    return self.task.summarize(stats, **self._summary_options)

  def _evaluate(self, params: Any, split: str, final: bool) -> dict[str, float]:
    context = self._context
    writing = final and context.output_dir and jax.process_index() == 0
    rows = [] if final and self.predictions else None
    on_outputs = rows.append if rows is not None else None
    stats = split_stats(self._step(final, split), params, context.loaders[split],
                        context.mesh, batch_size=context.batch_size,
                        on_batch=context.on_batch, on_outputs=on_outputs)
    slice_stats = stats.pop("slices", {})
    results = self._summarize(stats)
    if writing:
      folder = os.path.join(context.output_dir, split)
      os.makedirs(folder, exist_ok=True)
      summary = {
          "split": split, "task": context.task,
          "class_names": list(self.class_names) if self.class_names else None,
          "metrics": results,
          "per_class": {k: np.asarray(v).tolist() for k, v in self.task.per_class(
              stats, **self._units).items()},
          "slices": {name: slices_lib.summarize_slices(
              s, self._summarize, self._slice_names(split)[name],
              seed=self.slice_seed, metrics=self._slice_metrics(s))
                     for name, s in slice_stats.items()},
      }
      writers.write_atomically(os.path.join(folder, "metrics.json"),
                               json.dumps(_finite(summary), indent=1))
      np.savez(os.path.join(folder, "stats.npz"), **stats)
      if rows is not None:
        records = self._prediction_records(context.loaders[split].source, rows)
        with writers.atomic_file(os.path.join(folder, "predictions.jsonl")) as f:
          f.writelines(json.dumps(r) + "\n" for r in records)
        if self.predictions_csv:
          write_predictions_csv(os.path.join(folder, "predictions.csv"), records,
                                self.class_names)
    return {f"{split}/{k}": v for k, v in results.items()}

  def _slice_metrics(self, slice_stats: dict) -> list[str]:
    """The task's headline metrics that the bootstrapped statistics give."""
    given = self._summarize({k: np.asarray(v)[0, 0] for k, v in slice_stats.items()})
    return [m for m in self.task.HEADLINE if m in given]

  def _prediction_records(self, source: Any, rows: list[dict[str, np.ndarray]]
                          ) -> list[dict[str, Any]]:
    """One record per real example, in split order (see the module)."""
    location = getattr(source, "location", None)
    records = []
    for batch in rows:
      for i in np.flatnonzero(batch["mask"] > 0):
        index = int(batch["index"][i])
        record = {"index": index,
                  "id": location(index) if location else f"example {index}"}
        if self._context.task == "regression":  # Back to the original units.
          label, prediction = (np.asarray(batch[k][i], np.float64) * self.label_std
                               + self.label_mean for k in ("label", "prediction"))
          record.update(label=label.tolist(), prediction=prediction.tolist(),
                        scores=prediction.tolist(), confidence=None)
        else:
          scores = np.asarray(batch["scores"][i], np.float64)
          record.update(label=np.asarray(batch["label"][i]).tolist(),
                        prediction=np.asarray(batch["prediction"][i]).tolist(),
                        scores=np.round(scores, 6).tolist(),
                        confidence=round(float(scores.max()), 6))
        records.append(record)
    return records

  def run(self, params: Any) -> dict[str, float]:
    results = {}
    for split in self.splits:
      results.update(self._evaluate(params, split, final=False))
    return results

  def run_final(self, params: Any) -> dict[str, float]:
    results = {}
    for split in self.final_splits:
      results.update(self._evaluate(params, split, final=True))
    return results


def write_predictions_csv(path: str, records: list[dict[str, Any]],
                          class_names: list[str] | None) -> None:
  """The prediction records as CSV: index, id, label, prediction, confidence, then
  one score column per class (named by the class where names exist)."""
  first = records[0]["scores"] if records else []
  width = len(first) if isinstance(first, list) else 0
  score_names = [f"score_{class_names[c] if class_names else c}"
                 for c in range(width)]

  def cell(value):  # A class by its name; numbers as they are; lists as JSON.
    if class_names and isinstance(value, int):
      return class_names[value]
    return json.dumps(value) if isinstance(value, list) else value

  with writers.atomic_file(path, newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["index", "id", "label", "prediction", "confidence",
                     *score_names])
    for r in records:
      writer.writerow([r["index"], r["id"], cell(r["label"]), cell(r["prediction"]),
                       r["confidence"], *r["scores"][:width]])


def _finite(value: Any) -> Any:
  """NaN and infinities as None: JSON has no such numbers."""
  if isinstance(value, float):
    return value if np.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value
