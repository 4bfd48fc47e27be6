"""The results of a sweep: DIR/results.md, DIR/results.csv and DIR/plots/*.png.

  paths = sweep_report.write(sweep_dir, trials, "validation/accuracy", "max", study)

The sweep driver calls `write` when a sweep ends and on `--report`. Each trial is
a dict {"name", "overrides", "status", "wall_s", "number"} (see `write`), and its
run is the `ctjax train` workdir DIR/trials/<name>, read through its
metrics.jsonl only (the README's workdir contract), so a report can be made of a
sweep that is still running, or of runs some of which never started.

  results.md, results.csv   one row per trial, best first: the overrides, the
                            best value of the metric and its step, each metric's
                            final value, steps, wall time, status
  plots/metric_vs_<key>.png the metric against each swept key's values
  plots/learning_curves.png train/loss and the metric against the step, every
                            trial on one figure
  plots/optuna_*.png        searches: Optuna's optimization history
                            (optuna_history.png) and parameter importances
                            (optuna_importance.png); with two or three
                            objectives the Pareto front (optuna_pareto_front.png)
                            and the importances for each objective
                            (optuna_importance_<objective>.png)

A plot that cannot be drawn yet (no trial has logged the metric, a key takes one
value, too few completed Optuna trials) is left out, and results.md says why.

Our figures are `matplotlib.figure.Figure` objects, never pyplot's (see
ctjax/plots.py). Optuna's plots are pyplot figures: each is closed once saved, and
drawn inside `matplotlib.rc_context` because they switch pyplot to the ggplot
style globally, which would restyle every later figure of the process.
"""
from collections.abc import Callable
import csv
import io
import math
import os
from typing import Any
import warnings

import matplotlib
from matplotlib import colormaps
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
import numpy as np

from ctjax import plots
from ctjax import writers
from ctjax.errors import UserError

RESULTS_MARKDOWN = "results.md"
RESULTS_CSV = "results.csv"
PLOTS_DIR = "plots"
TRIALS_DIR = "trials"

# Drawing style per trial status: (colour, marker, line style). A pruned or
# failed trial stopped early: its values are not comparable to the others', so
# it stands out in shape and colour (not colour alone, for colour-blind readers).
_STATUS_STYLE = {
    "finished": ("tab:blue", "o", "-"),
    "running": ("tab:orange", "^", "-"),
    "pending": ("tab:purple", "s", "-."),
    "stopped": ("tab:brown", "D", "-."),
    "pruned": ("tab:grey", "v", ":"),
    "failed": ("tab:red", "X", "--"),
}
_STATUS_MEANING = {
    "finished": "finished", "running": "running (so far)",
    "pending": "pending (earlier attempt)", "stopped": "stopped (resumable)",
    "pruned": "pruned by the search", "failed": "failed",
}
# Final metrics shown in results.md (results.csv has all of them): more make a
# table nobody reads.
_MARKDOWN_FINAL_COLUMNS = 6
# The order of splits in the columns and of curves.
_SPLIT_ORDER = ("train", "validation", "test")
_LEGEND_ROWS_PER_COLUMN = 30
# Beyond this many trials the default colour cycle repeats: colours then follow
# the rank along a colour map instead.
_DISTINCT_COLOURS = 10
# A y-axis spanning more than this factor (a diverging loss) is drawn on a log scale.
_LOG_Y_RATIO = 100
_DPI = 100


def summarize_trial(run_dir: str, metric: str, direction: str) -> dict[str, Any]:
  """What a trial's run has reached, from RUN_DIR/metrics.jsonl.

  Args:
    run_dir: the trial's `ctjax train` workdir (it may be missing or empty).
    metric: the key compared across trials, such as "validation/accuracy".
    direction: "max" or "min": which values of `metric` are better.

  Returns:
    {"best": the best finite value of `metric` over the run's records (None when
     it has none), "best_step": the first step it was reached at,
     "final": {key: the last value logged} for every metric but the training
     statistics (train/* other than train/loss: learning rate, throughput, grad
     norm), "steps": the last step logged (None when nothing was)}.
  """
  _check_direction(direction, metric)
  return _summarize_records(writers.read_metrics(run_dir), metric, direction)


def _summarize_records(records: list[dict], metric: str, direction: str
                       ) -> dict[str, Any]:
  best = best_step = steps = None
  final = {}
  for record in records:
    step = record.get("step")
    if _is_number(step):
      steps = step if steps is None else max(steps, step)
    for key, value in record.items():
      if key == "step" or not _is_number(value):
        continue
      if key.startswith("train/") and key not in ("train/loss", metric):
        continue
      final[key] = float(value)
    value = record.get(metric)
    # A diverged evaluation (NaN, inf) is no one's best.
    if _is_number(value) and math.isfinite(value) and (
        best is None or (value > best if direction == "max" else value < best)):
      best, best_step = float(value), step
  return {"best": best, "best_step": best_step, "final": final, "steps": steps}


def write(sweep_dir: str, trials: list[dict], metric: str, direction: str,
          study: Any = None) -> list[str]:
  """Writes the sweep's tables and plots; returns their paths, tables first.

  Args:
    sweep_dir: the sweep's folder; trial T's run is SWEEP_DIR/trials/<T's name>.
    trials: one dict per trial: "name" (its folder), "overrides" ({"optim.lr":
      3e-3, ...}), "status" (finished, running, failed, pruned or pending),
      "wall_s" (training time over all attempts, or None), "number" (the Optuna
      trial number in a search, else None).
    metric: the key trials are compared by, such as "validation/accuracy".
    direction: "max" or "min".
    study: the `optuna.Study` of a search, for Optuna's own plots; None for a
      sweep.
  """
  _check_direction(direction, metric)
  rows = []
  for trial in trials:
    records = writers.read_metrics(os.path.join(sweep_dir, TRIALS_DIR,
                                                 trial["name"]))
    rows.append({**trial, **_summarize_records(records, metric, direction),
                 "records": records})
  # Best first; a stable sort keeps the trials without the metric in their order.
  sign = -1 if direction == "max" else 1
  rows.sort(key=lambda r: (r["best"] is None, 0 if r["best"] is None
                           else sign * r["best"]))

  plot_dir = os.path.join(sweep_dir, PLOTS_DIR)
  os.makedirs(plot_dir, exist_ok=True)
  plot_paths, notes = [], []

  def save(figure: Figure | None, name: str, why_not: str) -> None:
    if figure is None:
      notes.append(f"{name}.png: {why_not}")
      return
    plot_paths.append(_save_png(figure, os.path.join(plot_dir, f"{name}.png")))

  for key in _swept_keys(rows):
    save(*_metric_vs_key(rows, key, metric))
  save(_learning_curves(rows, metric), "learning_curves",
       "no trial has logged metrics yet")
  if study is not None:
    _optuna_plots(study, metric, plot_dir, plot_paths, notes)

  markdown, csv_text = _results_tables(
      rows, metric, direction, _sweep_title(sweep_dir, metric, direction),
      [os.path.relpath(p, sweep_dir) for p in plot_paths], notes)
  tables = [os.path.join(sweep_dir, RESULTS_MARKDOWN),
            os.path.join(sweep_dir, RESULTS_CSV)]
  writers.write_atomically(tables[0], markdown)
  writers.write_atomically(tables[1], csv_text)
  return tables + plot_paths


def _check_direction(direction: str, metric: str) -> None:
  if direction not in ("max", "min"):
    raise UserError(f"direction {direction!r} of {metric}: give 'max' (higher is "
                    "better) or 'min'")


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _sweep_title(sweep_dir: str, metric: str, direction: str) -> str:
  name = os.path.basename(os.path.normpath(os.path.abspath(sweep_dir)))
  better = "higher" if direction == "max" else "lower"
  return f"Sweep {name}: {metric}, {better} is better"


def _swept_keys(rows: list[dict]) -> list[str]:
  """The override keys of all trials, in the order they first appear."""
  return list(dict.fromkeys(k for r in rows for k in r["overrides"]))


# The tables.


def format_value(value: Any) -> str:
  """An override value, compact: 4 significant digits for floats ("0.003162",
  "1e-05"), tuples and lists without spaces."""
  if isinstance(value, float):
    return f"{value:.4g}"
  if isinstance(value, (tuple, list)):
    inner = ",".join(format_value(v) for v in value)
    return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
  return str(value)


def _final_keys(rows: list[dict], metric: str) -> list[str]:
  """Every final metric of the trials, most telling first: the metric's own name
  on each split, the losses, then plots.MAIN_METRICS, then the others by name;
  within a name, train before validation before test."""
  keys = {k for r in rows for k in r["final"]}
  preferred = (metric.split("/", 1)[-1], "loss") + plots.MAIN_METRICS

  def order(key: str) -> tuple:
    split, _, name = key.rpartition("/")
    return (name.endswith("_bin_error_bound"),
            preferred.index(name) if name in preferred else len(preferred), name,
            _SPLIT_ORDER.index(split) if split in _SPLIT_ORDER else
            len(_SPLIT_ORDER), key)

  return sorted(keys, key=order)


def _duration(seconds: float | None) -> str:
  if seconds is None:
    return ""
  seconds = round(seconds)
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _cell(text: Any) -> str:
  return str(text).replace("|", "\\|")


def _metric_text(value: float | None) -> str:
  return "" if value is None else f"{value:.4g}"


def _results_tables(rows: list[dict], metric: str, direction: str, title: str,
                   plot_paths: list[str], notes: list[str]) -> tuple[str, str]:
  """The markdown and CSV tables of ranked rows (trials with their summaries).

  Markdown: rank, overrides, best and its step, the first few final metrics,
  steps, wall time, status and folder, then a legend, the plots and the notes on
  plots left out. CSV: the same rows with raw values (floats in full) and every
  final metric, ready for pandas.
  """
  keys = _swept_keys(rows)
  finals = _final_keys(rows, metric)
  shown_finals = [k for k in finals
                  if not k.endswith("_bin_error_bound")][:_MARKDOWN_FINAL_COLUMNS]
  numbered = any(r.get("number") is not None for r in rows)
  ranks = [i + 1 if r["best"] is not None else None for i, r in enumerate(rows)]

  statuses = list(dict.fromkeys([*_STATUS_STYLE, *(r["status"] for r in rows)]))
  counts = [(s, sum(r["status"] == s for r in rows)) for s in statuses]
  summary = (f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts if n)
             if rows else "No trials yet")
  if rows and rows[0]["best"] is not None:
    summary += (f". Best: `{rows[0]['name']}`, {metric} {rows[0]['best']:.4g} at "
                f"step {rows[0]['best_step']}")
  header = (["#"] + (["number"] if numbered else []) + keys +
            [f"best {metric}", "at step"] + [f"final {k}" for k in shown_finals] +
            ["steps", "wall", "status", "trial"])
  lines = [f"# {title}", "", summary + ".", "",
           "| " + " | ".join(_cell(h) for h in header) + " |",
           "|" + "".join("---:|" if h not in ("status", "trial") else "---|"
                         for h in header)]
  for rank, r in zip(ranks, rows):
    cells = ([rank or ""] + ([_format_optional(r.get("number"))] if numbered else [])
             + [format_value(r["overrides"][k]) if k in r["overrides"] else ""
                for k in keys]
             + [_metric_text(r["best"]), _format_optional(r["best_step"])]
             + [_metric_text(r["final"].get(k)) for k in shown_finals]
             + [_format_optional(r["steps"]), _duration(r.get("wall_s")),
                r["status"], f"`{r['name']}`"])
    lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
  better = "highest" if direction == "max" else "lowest"
  lines += [
      "",
      f"Sorted best first: by the {better} {metric} a trial reached over its "
      f"evaluations (*best*, at the step *at step*); trials that have not logged "
      f"it come last, without a rank. *final*: each metric's last logged value, "
      f"at the trial's last step once it has finished (validation/* and test/*: "
      f"the evaluations; train/loss: the training loss). *steps*: the last step "
      f"logged; *wall*: training time over all attempts. Empty cells: not logged "
      f"(yet). Each trial's run: trials/<trial>/. {RESULTS_CSV} has the same rows "
      f"with every final metric ({len(finals)}) and full-precision values."]
  if plot_paths or notes:
    lines += ["", "## Plots", ""]
    lines += [f"![{os.path.basename(p)}]({p})" for p in plot_paths]
    if notes:
      lines += ["", "Not plotted:", ""] + [f"- {n}" for n in notes]

  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["rank", "trial"] + (["number"] if numbered else []) + keys +
                  [f"best {metric}", "best step"] + [f"final {k}" for k in finals] +
                  ["steps", "wall_s", "status"])
  for rank, r in zip(ranks, rows):
    writer.writerow(
        [_format_optional(rank), r["name"]] +
        ([_format_optional(r.get("number"))] if numbered else []) +
        [_format_optional(r["overrides"].get(k)) for k in keys] +
        [_format_optional(r["best"]), _format_optional(r["best_step"])] +
        [_format_optional(r["final"].get(k)) for k in finals] +
        [_format_optional(r["steps"]), _format_optional(r.get("wall_s")),
         r["status"]])
  return "\n".join(lines) + "\n", out.getvalue()


def _format_optional(value: Any) -> str:
  """A value as results.csv holds it: floats in full (repr round-trips them),
  "" for None (missing)."""
  if value is None:
    return ""
  return repr(value) if isinstance(value, float) else str(value)


# Our plots.


def _style(status: str) -> tuple[str, str, str]:
  """(colour, marker, line style) of a status; a status added to the driver
  later is drawn as finished until it gets its own."""
  return _STATUS_STYLE.get(status, _STATUS_STYLE["finished"])


def _save_png(figure: Figure, path: str, **savefig_args: Any) -> str:
  # Written whole, then renamed: a browser showing results.md during a sweep
  # never reads half an image.
  figure.savefig(path + ".tmp", format="png", dpi=_DPI, **savefig_args)
  os.replace(path + ".tmp", path)
  return path


def _metric_vs_key(rows: list[dict], key: str, metric: str
                  ) -> tuple[Figure | None, str, str]:
  """(figure or None, its file name, why there is none) of `metric` against `key`.

  Each trial that set `key` and logged `metric` is a point at its value of `key`:
  filled at its best, hollow at its final value, in its status's colour and
  shape. A line joins the mean best of the finished trials at each value (other
  keys, seeds say, vary between them). Numbers go on a numeric axis, logarithmic
  when they are positive and span more than 10x; other values are categories.
  """
  name = f"metric_vs_{plots.safe_name(key)}"
  present = [r for r in rows if key in r["overrides"]]
  if len({format_value(r["overrides"][key]) for r in present}) < 2:
    return None, name, f"{key} takes one value in every trial"
  points = [r for r in present if r["best"] is not None]
  if not points:
    return None, name, f"no trial has logged {metric} yet"
  values = [r["overrides"][key] for r in present]
  numeric = all(_is_number(v) for v in values)
  if numeric:
    position = lambda v: float(v)
    log_x = min(values) > 0 and max(values) > 10 * min(values)
  else:
    labels = list(dict.fromkeys(format_value(v) for v in values))
    try:
      distinct = {format_value(v): v for v in values}
      labels = sorted(labels, key=lambda l: distinct[l])
    except TypeError:
      pass  # Values of mixed types: the order they first appear in.
    position = lambda v: labels.index(format_value(v))
    log_x = False

  figure = _figure(7, 4.6)
  ax = figure.subplots()
  statuses = list(dict.fromkeys(r["status"] for r in points))
  for status in statuses:
    colour, marker, _ = _style(status)
    group = [r for r in points if r["status"] == status]
    xs = [position(r["overrides"][key]) for r in group]
    ax.scatter(xs, [r["best"] for r in group], color=colour, marker=marker, s=40,
               zorder=3)
    finals = [(x, r["final"].get(metric)) for x, r in zip(xs, group)]
    ax.scatter([x for x, y in finals if y is not None],
               [y for x, y in finals if y is not None], facecolors="none",
               edgecolors=colour, marker=marker, s=80, zorder=3)
  by_value = {}
  for r in points:
    if r["status"] == "finished":
      by_value.setdefault(position(r["overrides"][key]), []).append(r["best"])
  handles = [Line2D([], [], color=_style(s)[0], marker=_style(s)[1],
                    linestyle="none", label=_STATUS_MEANING.get(s, s))
             for s in statuses]
  handles += [Line2D([], [], color="black", marker="o", linestyle="none",
                     label="best"),
              Line2D([], [], color="black", marker="o", markerfacecolor="none",
                     linestyle="none", label="final")]
  if len(by_value) > 1:
    xs = sorted(by_value)
    ax.plot(xs, [np.mean(by_value[x]) for x in xs], color="tab:blue", alpha=0.5,
            zorder=2)
    handles.append(Line2D([], [], color="tab:blue", alpha=0.5,
                          label="mean best of finished"))
  if log_x:
    ax.set_xscale("log")
  elif numeric and all(isinstance(v, int) for v in values):
    # Seeds, widths, steps: no ticks between integers.
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  if not numeric:
    ax.set_xticks(range(len(labels)), labels,
                  rotation=30 if sum(map(len, labels)) > 60 else 0)
  ax.set_xlabel(key + (" (log scale)" if log_x else ""))
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  ax.legend(handles=handles, fontsize="small", loc="best")
  left_out = len(present) - len(points)
  ax.set_title(f"{metric} against {key}\n{len(points)} trials"
               + (f"; {left_out} without {metric} yet, not shown" if left_out
                  else ""), fontsize="medium")
  return figure, name, ""


def _learning_curves(rows: list[dict], metric: str) -> Figure | None:
  """train/loss and `metric` against the step, one line per trial, in rank order.

  A trial's line style shows its status (pruned dotted, failed dashed); the
  legend, beside the axes, names each trial by its overrides.
  None when no trial has logged either.
  """
  keys = list(dict.fromkeys(("train/loss", metric)))
  curves = []  # (row, {key: (steps, values)})
  for r in rows:
    series = {k: ([], []) for k in keys}
    for record in r["records"]:
      for k in keys:
        if _is_number(record.get(k)) and _is_number(record.get("step")):
          series[k][0].append(record["step"])
          series[k][1].append(record[k])
    if any(steps for steps, _ in series.values()):
      curves.append((r, series))
  if not curves:
    return None
  # The legend beside the axes, never over the curves; a column per 30 trials.
  columns = math.ceil(len(curves) / _LEGEND_ROWS_PER_COLUMN)
  height = min(4 + 0.12 * max(len(curves) // columns - 10, 0), 9)
  figure = _figure(5 * len(keys) + 3.2 * columns, height)
  axes = figure.subplots(1, len(keys), squeeze=False)[0]
  for i, (r, series) in enumerate(curves):
    colour = (f"C{i}" if len(curves) <= _DISTINCT_COLOURS else
              colormaps["viridis"](0.9 * i / (len(curves) - 1)))
    _, _, line_style = _style(r["status"])
    for ax, k in zip(axes, keys):
      steps, values = series[k]
      ax.plot(steps, values, color=colour, linestyle=line_style,
              marker="o" if len(steps) <= 20 else None, markersize=3,
              label=_trial_label(r) if ax is axes[0] else None)
  for ax, k in zip(axes, keys):
    ax.set_xlabel("step")
    ax.set_ylabel(k)
    ax.set_title(k)
    ax.grid(alpha=0.3)
    finite = [v for line in ax.get_lines() for v in line.get_ydata()
              if np.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) > _LOG_Y_RATIO * min(finite):
      ax.set_yscale("log")
  handles, labels = axes[0].get_legend_handles_labels()
  title = "best first" + ("; pruned dotted, failed dashed"
                          if any(r["status"] in ("pruned", "failed")
                                 for r, _ in curves) else "")
  figure.legend(handles, labels, loc="outside right upper", fontsize="small",
                ncols=columns, title=title, title_fontsize="small")
  # Left-aligned: centred, it would run into the legend outside the axes.
  figure.suptitle(f"Learning curves of {len(curves)} trials", x=0.01, ha="left")
  return figure


def _trial_label(row: dict) -> str:
  overrides = ", ".join(f"{k}={format_value(v)}" for k, v in row["overrides"].items())
  label = overrides or row["name"]
  if row.get("number") is not None:
    label = f"#{row['number']} {label}"
  return label if row["status"] == "finished" else f"{label} ({row['status']})"


def _figure(width: float, height: float) -> Figure:
  return Figure(figsize=(width, height), layout="constrained")


# Optuna's plots.


def _optuna_plots(study: Any, metric: str, plot_dir: str, plot_paths: list[str],
                  notes: list[str]) -> None:
  """Optuna's history (or Pareto front) and importance plots of `study`.

  Importances come from Optuna's default evaluator, PED-ANOVA, which measures
  how much a parameter matters to reaching the top trials, taking lower target
  values as better. Single-objective studies pass their direction to it
  themselves; for several objectives Optuna's plot would take each objective as
  lower-is-better, so each gets its own plot, optuna_importance_<objective>.png,
  with maximised objectives negated.
  """
  # Only searches need these: a list sweep's report does not import them.
  # pylint: disable=g-import-not-at-top
  from matplotlib import pyplot
  import optuna
  from optuna.visualization import matplotlib as optuna_matplotlib
  # pylint: enable=g-import-not-at-top

  directions = study.directions
  names = study.metric_names or (
      [metric] if len(directions) == 1 else
      [f"objective {i}" for i in range(len(directions))])
  completed = study.get_trials(deepcopy=False,
                               states=(optuna.trial.TrialState.COMPLETE,))

  def draw(name: str, plot: Callable[[], Any]) -> None:
    with warnings.catch_warnings(record=True) as caught, \
        matplotlib.rc_context(), pyplot.ioff():
      warnings.simplefilter("always")
      warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
      # The negated targets below are deliberate (see the docstring).
      warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator "
                              "computes the importances of params to achieve low")
      figure = plot().figure
      try:
        # Optuna places some legends outside its axes: "tight" keeps them.
        plot_paths.append(_save_png(figure, os.path.join(plot_dir, f"{name}.png"),
                                    bbox_inches="tight"))
      finally:
        pyplot.close(figure)
    # Optuna's warnings say what a plot is worth ("too few trials: importances
    # will be equal"): the reader of the plot should see them. (Libraries'
    # deprecation warnings are for their callers' authors, not this reader.)
    for message in dict.fromkeys(str(w.message) for w in caught
                                 if issubclass(w.category, UserWarning)):
      notes.append(f"{name}.png: warning: {message}")

  if not completed:
    notes.append("optuna_*.png: the study has no completed trial yet")
    return
  if len(directions) == 1:
    draw("optuna_history", lambda: optuna_matplotlib.plot_optimization_history(
        study, target_name=names[0]))
  elif len(directions) in (2, 3):
    draw("optuna_pareto_front", lambda: optuna_matplotlib.plot_pareto_front(
        study, target_names=list(names)))
  else:
    notes.append(f"optuna_pareto_front.png: Optuna draws Pareto fronts of 2 or 3 "
                 f"objectives; the study has {len(directions)}")

  why_not = _why_no_importances(completed)
  if why_not:
    notes.append(f"optuna_importance.png: {why_not}")
  elif len(directions) == 1:
    draw("optuna_importance", lambda: optuna_matplotlib.plot_param_importances(
        study, target_name=names[0]))
  else:
    for i, (name, direction) in enumerate(zip(names, directions)):
      sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
      draw(f"optuna_importance_{plots.safe_name(name)}",
           lambda i=i, name=name, sign=sign:
           optuna_matplotlib.plot_param_importances(
               study, target=lambda t: sign * t.values[i], target_name=name))


def _why_no_importances(completed: list[Any]) -> str:
  """Why the completed trials say nothing about importances, or ""."""
  if len(completed) < 2:
    return (f"parameter importances need 2 completed trials or more; the study "
            f"has {len(completed)}")
  params = {k for t in completed for k in t.params}
  if not any(len({repr(t.params[k]) for t in completed if k in t.params}) > 1
             for k in params):
    return ("no parameter takes more than one value among the completed trials: "
            "there is no importance to measure")
  return ""
