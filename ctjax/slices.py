"""Metrics per group of examples (site, sex, age band), with bootstrap intervals.

A slicing assigns each example to one of G groups (or to none). In the jitted eval
step, `slice_stats` computes the sufficient statistics of `ctjax.metrics` (or any
statistics that are weighted sums over examples) for every group, once on the
data and once per bootstrap resample. Like the unsliced statistics they add up
over batches, devices and hosts (`metrics.merge`), so no prediction is buffered.
At the end `summarize_slices` turns them, on the host, into each group's metrics
with percentile intervals, a warning for groups too small to say anything, and
the gap between the best and the worst group; `format_slices` prints a table.

  stats_fn = functools.partial(metrics.classification_stats, num_classes=C)
  # in the eval step (jitted):
  s = slices.slice_stats(stats_fn, logits, batch["label"], batch["mask"],
                         groups=batch["site"], num_groups=G,
                         example_ids=batch["index"], resamples=R, seed=seed)
  # after the last batch, merged with metrics.merge:
  summary = slices.summarize_slices(jax.device_get(stats), metrics.summarize,
                                    site_names, seed=seed)

The bootstrap is Poisson's (Hanley & MacGibbon 2006; Chamandy et al. 2012, "Estimating
uncertainty for massive data streams"): instead of drawing n examples with
replacement, which needs all n at once, each example enters resample r with an
independent Poisson(1) count, the limit of the multinomial counts for large n. The
count is a hash of (seed, the example's position in its split, r) and nothing
else, so a resample is the same set of examples whatever the batch size, the
number of devices or of hosts, and the order in which batches arrive. Groups are
disjoint sets of examples with independent counts, so resample r of every group is
also a valid joint resample: the gap between two groups gets an interval too.

Cost, for G groups, R resamples, a batch of B examples and statistics of S bytes
(the table in `ctjax.metrics`): each statistic gets leading dims [G, R + 1], the
eval step returns them replicated on every device, and the merged sums are as big:

  statistics      G·(R + 1)·S bytes; G = 10, R = 1000 (10⁴ copies):
                    loss, accuracy, count (12 B)              120 KB
                    confusion, C = 10 (400 B)                   4 MB
                    calibration, 15 bins (180 B)                1.8 MB
                    auc_bins = 256, C = 2 (4 KiB)               41 MB
                    auc_bins = 4096, C = 2 (64 KiB)            656 MB: too big
  weights         G·(R + 1)·B int32 per step (sharded over the batch's devices)
  compute         3·B·R threefry hashes for the counts, and every statistic
                  recomputed G·(R + 1) times: G·(R + 1)·B·(its work per example,
                  e.g. C for a score histogram) additions. The model's forward pass
                  is not repeated (vmap batches only what depends on the weights).

So bootstrap few, small statistics: pass a `stats_fn` with fewer options than the
unsliced evaluation (a confusion matrix for few classes, coarse AUC histograms),
and keep the full-resolution ones for the whole split. For AUC, a few hundred bins
suffice when the reported bin error bound (`roc_auc_bin_error_bound` of the data)
is small against the groups' interval widths, which for groups of hundreds of
examples are several hundredths.

Resamples. Percentile interval ends are order statistics of the R resampled values,
with a Monte-Carlo standard error of sqrt(q(1 - q)/R)/f(x_q) for the q-quantile of
a sampling density f. For a roughly normal one of standard deviation σ and q =
2.5%, that is 0.0845·σ·sqrt(1000/R): with R = 1000 (RESAMPLES) each end of a 95%
interval (3.92·σ wide) is known to about 2% of its width, the width to about 3%.
"""
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Resamples by default; see the module docstring for the Monte-Carlo error.
RESAMPLES = 1000
# Below this many examples a group gets a warning and no part in the gap. Measured
# (Poisson bootstrap, R = 1000, 2000 trials): 95% percentile intervals of an
# accuracy p cover p 0.95-0.96 of the time for p = 0.5 at any n >= 10, but for
# p = 0.8 only 0.89 at n = 10 and 0.91 at n = 20, for p = 0.9 only 0.67 at n = 10
# and 0.87 at n = 20; at n >= 30 0.92-0.96 for all three. And a 95% interval of a
# proportion near ½ from 30 examples is already ±0.18 wide.
MIN_COUNT = 30
# A metric undefined (NaN: a class absent, so no ROC-AUC) in more than this
# fraction of a group's resamples gets a warning: its interval, over the resamples
# where it is defined, leaves out the samples that lack the class. A class with k
# examples is absent from a resample with probability e^-k: 1% means k < 5.
MAX_UNDEFINED = 0.01
# Metrics whose names contain one of these words (split at "_") are better when
# lower: metrics.summarize's loss, bits_per_byte, brier, expected_calibration_error
# and bin error bounds, and regression errors (mse, mae, rmse, ..._error).
LOWER_IS_BETTER = frozenset({"loss", "bits", "brier", "error", "mse", "mae", "rmse"})

# Poisson(1) counts by inversion of a uint32: count = #{k : bits >= T_k}, with
# T_k = round(P(K <= k)·2**32). Then P(count > k) = (2**32 - T_k)/2**32, within
# 2**-33 of Poisson's; T_k for k >= 12 rounds to 2**32 (P(K > 11) ≈ 1e-9), so the
# count stops at 12. Integers only: the same counts on every platform.
_POISSON_THRESHOLDS = np.array(
    [t for t in (round(math.fsum(math.exp(-1) / math.factorial(j)
                                 for j in range(k + 1)) * 2**32)
                 for k in range(20)) if t < 2**32], np.uint32)


def poisson_counts(seed: int | jax.Array, example_ids: jax.Array,
                   resamples: int) -> jax.Array:
  """int32 [resamples, B]: example b's Poisson(1) count in resamples 1..R.

  Each count is a function of (seed, example_ids[b], its resample number) only:
  three threefry hashes (fold in the id, fold in r, draw 32 bits), so resample r's
  counts do not change when R grows, nor with the batch an example comes in.
  """
  base = jax.random.key(seed)

  def bits(example_id, replicate):
    key = jax.random.fold_in(jax.random.fold_in(base, example_id), replicate)
    return jax.random.bits(key, dtype=jnp.uint32)

  replicates = jnp.arange(1, resamples + 1)
  draws = jax.vmap(jax.vmap(bits, in_axes=(0, None)), in_axes=(None, 0))(
      jnp.asarray(example_ids), replicates)
  return jnp.searchsorted(_POISSON_THRESHOLDS, draws, side="right").astype(jnp.int32)


def slice_stats(stats_fn: Callable[[Any, Any, jax.Array], dict[str, jax.Array]],
                outputs: Any, labels: Any, mask: jax.Array, *,
                groups: jax.Array, num_groups: int, example_ids: jax.Array,
                resamples: int = RESAMPLES, seed: int | jax.Array = 0
                ) -> dict[str, jax.Array]:
  """Statistics of each group, on the data and on R bootstrap resamples.

  Args:
    stats_fn: (outputs, labels, weights) -> dict of arrays, each a sum over
      examples of the example's integer weight times its contribution (as
      `metrics.classification_stats`, whose `mask` takes such weights), so that
      the statistics add over batches and a weight of w counts an example w times.
    outputs, labels: what stats_fn takes, for a batch of B examples.
    mask: [B] or [B, ...] (one weight per token) non-negative integer weights
      (or the pipeline's 0/1 float mask); 0 is padding. The example is the unit of resampling: in a resample all of its
      weight (all its tokens) is multiplied by its count.
    groups: int [B], each example's group; -1 (or any value outside
      [0, num_groups)) puts it in none.
    num_groups: G.
    example_ids: int [B], each example's position in its split (below 2**31):
      the same example must have the same id however the split is batched or
      sharded, and distinct examples distinct ids.
    resamples: R, the number of bootstrap resamples.
    seed: the bootstrap's seed.

  Returns:
    stats_fn's statistics, each with leading dims [G, R + 1]: [g, 0] over the
    group's examples with their weights, [g, r] with each weight multiplied by the
    example's Poisson(1) count in resample r (`poisson_counts`).
  """
  mask = jnp.asarray(mask)
  counts = poisson_counts(seed, example_ids, resamples)
  counts = jnp.concatenate([jnp.ones((1, counts.shape[1]), counts.dtype),
                            counts])                                 # [R + 1, B]
  in_group = jnp.asarray(groups)[None, :] == jnp.arange(num_groups)[:, None]
  weights = jnp.where(in_group[:, None, :], counts[None], 0)       # [G, R + 1, B]
  # Per token when the mask is: an example's count applies to all its tokens.
  weights = weights.reshape(weights.shape + (1,) * (mask.ndim - 1))
  weights = weights * mask.astype(jnp.int32)
  # vmap batches only the operations that depend on the weights: the model's
  # outputs, softmax and argmax inside stats_fn are computed once.
  per_weights = jax.vmap(jax.vmap(stats_fn, in_axes=(None, None, 0)),
                         in_axes=(None, None, 0))
  return per_weights(outputs, labels, weights)


def lower_is_better(metric: str) -> bool:
  """Whether smaller values of `metric` are better (see LOWER_IS_BETTER)."""
  return not LOWER_IS_BETTER.isdisjoint(metric.split("_"))


def _json_float(value: float) -> float | None:
  """A float for JSON: NaN and infinities (which JSON lacks) become None."""
  return float(value) if math.isfinite(value) else None


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
  """The percentile interval of the finite values; NaNs when there are none."""
  values = values[np.isfinite(values)]
  if not values.size:
    return math.nan, math.nan
  tail = (1 - confidence) / 2
  low, high = np.quantile(values, [tail, 1 - tail])
  return float(low), float(high)


def _problems(metric: str, replicates: np.ndarray, low: float, high: float,
              confidence: float) -> list[str]:
  """Why one metric's value or interval in one group says little; [] if nothing.

  `replicates` is [R + 1], the data's value first. Besides undefined values, an
  interval end held by more resamples than the tail beyond it (more than
  (1 - confidence)/2 of them) is degenerate: an accuracy of 1.0 on a group with no
  errors, or with one or two (e^-k of the resamples drop all k of them), gives an
  interval [1.0, 1.0] or [x, 1.0] that claims a certainty the data cannot give.
  Simulated for accuracies of 0.5 to 0.98 on 30 to 300 examples, this fires on
  most groups with 3 or fewer errors (e^-3 ≈ 5% of resamples have none) and on
  none with 10 or more.
  """
  value, resampled = replicates[0], replicates[1:]
  if not math.isfinite(value):
    return [f"{metric} undefined"]
  if not resampled.size:
    return []
  problems = []
  undefined = 1 - np.isfinite(resampled).mean()
  if undefined > MAX_UNDEFINED:
    problems.append(f"{metric} undefined in {undefined:.0%} of resamples "
                    f"(a class with fewer than 5 examples?)")
  tail = (1 - confidence) / 2
  for end in (low,) if low == high else (low, high):
    share = np.mean(resampled == end)
    if share > tail:
      problems.append(f"{metric} is exactly {end:.4g} in {share:.0%} of "
                      "resamples (too few examples of some outcome)")
  return problems


def summarize_slices(stats: dict[str, Any],
                     summarize_fn: Callable[[dict[str, np.ndarray]], dict[str, float]],
                     group_names: Sequence[str], *, seed: int,
                     metrics: Sequence[str] | None = None,
                     confidence: float = 0.95,
                     min_count: int = MIN_COUNT) -> dict[str, Any]:
  """Each group's metrics with intervals, warnings and the best-worst gap.

  Args:
    stats: `slice_stats`'s statistics merged over the split (numpy or jax), with a
      "count" statistic (examples; tokens for per-token labels).
    summarize_fn: statistics of one group and resample -> {metric: float}, e.g.
      `metrics.summarize`; called G·(R + 1) times on the host (metrics.summarize
      takes about 0.2 ms: 2 s for G = 10, R = 1000).
    group_names: the G groups' names, in group-id order.
    seed: the seed `slice_stats` was given (recorded in the result).
    metrics: the metrics to report; by default all that summarize_fn returns but
      metrics.summarize's "..._bin_error_bound"s, which describe the binning, not
      the group.
    confidence: of the intervals.
    min_count: groups with fewer examples get a warning (see MIN_COUNT).

  Returns:
    A JSON-serialisable dict (NaN and infinities as None):
      {"resamples": R, "seed": seed, "confidence": confidence,
       "groups": [{"name": str, "count": int,
                   "metrics": {metric: {"value": v, "low": l, "high": h}},
                   "warning": str or None}, ...],
       "gap": {metric: {"value": |best - worst|, "best": name, "worst": name,
                        "low": l, "high": h}}}
    value is the metric on the data (resample 0); low and high are the
    (1 - confidence)/2 and (1 + confidence)/2 percentiles of the R resamples
    (None when R = 0). Percentile intervals because they need nothing but the
    resampled values: no per-metric variance formula (there is none simple for
    ROC-AUC or F1), no jackknife over examples (which BCa needs, and which
    streaming statistics cannot give), and they stay within the metric's range.
    A warning says why a group says little: fewer than min_count examples; a
    metric undefined on the data or in more than MAX_UNDEFINED of the resamples;
    an interval end that is an atom of the resamples (see `_problems`).
    The gap of a metric runs from the best group (highest; lowest for
    `lower_is_better` metrics) to the worst among the groups with at least
    min_count examples and no warning about that metric; a group with too few
    examples takes part in no gap. low and high bound best - worst (best's
    advantage) over the same resamples of both groups, which are independent
    resamples of disjoint examples: an interval that includes 0 means the data
    cannot tell the two apart. It holds the pair fixed, as chosen on the data, so
    with many groups it is optimistic: the most extreme of many groups are
    partly so by chance. All None with fewer than two such groups.
  """
  stats = {key: np.asarray(value) for key, value in stats.items()}
  num_groups, num_replicates = stats["count"].shape[:2]
  if len(group_names) != num_groups:
    raise ValueError(f"{len(group_names)} group names for {num_groups} groups")
  per_replicate = [[summarize_fn({k: v[g, r] for k, v in stats.items()})
                    for r in range(num_replicates)] for g in range(num_groups)]
  data = per_replicate[0][0] if num_groups else {}
  names = list(metrics) if metrics is not None else [
      m for m in data if not m.endswith("_bin_error_bound")]
  # values[metric][g, r], float64, NaN where summarize_fn gave none.
  values = {m: np.array([[results.get(m, math.nan) for results in group]
                         for group in per_replicate], np.float64) for m in names}

  groups, comparable = [], {m: [] for m in names}
  for g, name in enumerate(group_names):
    count = int(stats["count"][g, 0])
    warnings = []
    if count < min_count:
      warnings.append(f"{count} examples, fewer than {min_count}")
    group_metrics = {}
    for m in names:
      low, high = _interval(values[m][g, 1:], confidence)
      group_metrics[m] = {"value": _json_float(values[m][g, 0]),
                          "low": _json_float(low), "high": _json_float(high)}
      problems = _problems(m, values[m][g], low, high, confidence)
      warnings += problems
      if count >= min_count and not problems:
        comparable[m].append(g)
    groups.append({"name": str(name), "count": count, "metrics": group_metrics,
                   "warning": "; ".join(warnings) or None})

  gap = {}
  for m in names:
    if len(comparable[m]) < 2:
      gap[m] = {"value": None, "best": None, "worst": None, "low": None,
                "high": None}
      continue
    sign = -1.0 if lower_is_better(m) else 1.0
    data = {g: sign * values[m][g, 0] for g in comparable[m]}
    best, worst = max(data, key=data.get), min(data, key=data.get)
    advantage = sign * (values[m][best] - values[m][worst])
    low, high = _interval(advantage[1:], confidence)
    gap[m] = {"value": _json_float(advantage[0]), "best": str(group_names[best]),
              "worst": str(group_names[worst]), "low": _json_float(low),
              "high": _json_float(high)}
  return {"resamples": num_replicates - 1, "seed": int(seed),
          "confidence": float(confidence), "groups": groups, "gap": gap}


def _cell(value: float | None, low: float | None = None,
          high: float | None = None) -> str:
  """'0.912 [0.896, 0.927]'; '–' for None."""
  text = "–" if value is None else f"{value:.3f}"
  if low is not None and high is not None:
    text += f" [{low:.3f}, {high:.3f}]"
  return text


def format_slices(summary: dict[str, Any]) -> str:
  """A markdown table of `summarize_slices`'s result: a row per group, then the gap."""
  escape = lambda text: str(text).replace("|", "\\|")
  names = list(summary["groups"][0]["metrics"]) if summary["groups"] else []
  if summary["resamples"]:
    title = (f"{summary['resamples']} bootstrap resamples (seed {summary['seed']}), "
             f"{summary['confidence']:.0%} percentile intervals.")
  else:
    title = "No bootstrap resamples: values without intervals."
  lines = [title, "",
           "| group | n | " + " | ".join(names) + " | warning |",
           "|---|--:|" + "---|" * len(names) + "---|"]
  for group in summary["groups"]:
    cells = [_cell(**group["metrics"][m]) for m in names]
    lines.append(f"| {escape(group['name'])} | {group['count']} | "
                 + " | ".join(cells) + f" | {escape(group['warning'] or '')} |")
  gap_cells = []
  for m in names:
    gap = summary["gap"][m]
    cell = _cell(gap["value"], gap["low"], gap["high"])
    if gap["best"] is not None:
      cell += f" ({escape(gap['best'])} over {escape(gap['worst'])})"
    gap_cells.append(cell)
  lines.append("| gap (best − worst) | | " + " | ".join(gap_cells) + " | |")
  return "\n".join(lines) + "\n"
