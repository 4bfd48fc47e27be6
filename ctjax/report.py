"""WORKDIR/report.html: one page that shows a domain expert what a run learned.

  path = report.write_report(workdir, eval_dir,
                             lambda i: review.example_view(splits["test"], i))

The page holds the run's config summary, the evaluation's metrics (with the bin
error bounds of the binned ones, and bootstrap intervals where the slices give
them), the plots of `ctjax.plots`, the per-slice table, and a review queue: the
most confidently wrong and the least confident examples (the largest errors in
regression), each shown as what it is (`ctjax.review.example_view`), with a verdict
and a note per row that the reviewer exports to CSV.

It is one self-contained file: plots and thumbnails are base64 data: URIs, the CSS
and the script are inline, nothing is fetched, so it can be mailed or archived
with the run. Every text that comes from data or config is escaped. Verdicts are
kept in the browser's localStorage as they are made, so closing the page loses
nothing; the CSV is the record to keep.
"""
import base64
from collections.abc import Callable
import datetime
import html
import json
import math
import os
from typing import Any

import numpy as np

from ctjax import plots
from ctjax import review
from ctjax import writers

# The metric names of the final table, in this order; others follow by name.
_FIRST_METRICS = ("accuracy", "subset_accuracy", "loss", "roc_auc", "roc_auc_ovr",
                  "roc_auc_macro", "average_precision", "average_precision_ovr",
                  "mean_average_precision", "macro_f1", "balanced_accuracy",
                  "expected_calibration_error", "r2", "rmse", "mae", "mse")
_BOUND = "_bin_error_bound"
# A slice of this name, one group of every example, gives the overall intervals.
OVERALL_SLICE = "all"
# Metrics per slice table; the loss and the main ones first (plots.MAIN_METRICS).
_MAX_SLICE_COLUMNS = 8
_VERDICTS = (("", "not reviewed"), ("label_right", "label is right"),
             ("model_right", "model is right"), ("neither", "neither is right"),
             ("unsure", "unsure"))
_QUEUE_TITLES = {
    "confidently_wrong": ("Most confidently wrong",
                          "The model was sure, and the label disagrees: a model "
                          "error, or a label error."),
    "least_confident": ("Least confident",
                        "The predictions the model was least sure of."),
    "largest_errors": ("Largest errors",
                       "The predictions furthest from the true value."),
}


def write_report(workdir: str, eval_dir: str,
                 example_view: Callable[[int], dict] | None,
                 queue_size: int = 20) -> str:
  """Writes the plots (`plots.write_plots`) and WORKDIR/report.html; returns its path.

  Args:
    workdir: the run's folder (config.json, metrics.jsonl).
    eval_dir: the evaluation to report, WORKDIR/eval/<tag>/<split>.
    example_view: index in the split -> `review.example_view`'s dict; None shows
      only each example's id.
    queue_size: the most examples in each list of the review queue.
  """
  skipped = []
  plot_paths = plots.write_plots(workdir, eval_dir, skipped)
  evaluation = plots.read_evaluation(eval_dir)
  config_path = os.path.join(workdir, "config.json")
  config = {}
  if os.path.exists(config_path):
    with open(config_path, encoding="utf-8") as f:
      config = json.load(f)
  info = evaluation["metrics"]
  queue = review.review_queue(evaluation["predictions"] or [], queue_size)
  tag = os.path.basename(os.path.dirname(os.path.normpath(eval_dir)))
  run = os.path.basename(os.path.normpath(os.path.abspath(workdir)))
  sections = [
      _header(run, tag, info),
      _config_section(config),
      _metrics_section(info),
      _plots_section(plot_paths, skipped),
      _slices_section(info.get("slices") or {}),
      _queue_section(queue, info, example_view,
                     has_predictions=evaluation["predictions"] is not None),
  ]
  page = _PAGE.format(title=html.escape(f"{run}: {tag} {info.get('split', '')}"),
                      style=_STYLE, script=_SCRIPT, body="\n".join(sections),
                      storage_key=html.escape(
                          f"ctjax-review:{os.path.abspath(eval_dir)}"),
                      csv_name=html.escape(plots.safe_name(
                          f"review_{run}_{tag}_{info.get('split', '')}") + ".csv"))
  path = os.path.join(workdir, "report.html")
  # Written whole, then renamed: a browser never opens half a page.
  with writers.atomic_file(path) as f:
    f.write(page)
  return path


def write_for_evaluation(workdir: str, tag: str, splits: dict[str, Any]
                         ) -> str | None:
  """The report of evaluation WORKDIR/eval/TAG: of its test split where it has
  one, else of its first; None when it wrote no files. `splits` are the run's
  (`ctjax.data.splits.open_splits`), whose examples the review queue shows."""
  root = os.path.join(workdir, "eval", tag)
  evaluated = sorted(os.listdir(root)) if os.path.isdir(root) else []
  if not evaluated:
    return None
  split = "test" if "test" in evaluated else evaluated[0]
  source = splits.get(split)
  return write_report(workdir, os.path.join(root, split),
                      None if source is None else
                      lambda i: review.example_view(source, i))


def _e(value: Any) -> str:
  return html.escape(str(value), quote=True)


def _number(value: Any) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "n/a"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _header(run: str, tag: str, info: dict) -> str:
  generated = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  step = f" at step {_e(info['step'])}" if info.get("step") is not None else ""
  return (f"<header><h1>{_e(run)}</h1><p class=sub>Evaluation <b>{_e(tag)}</b> "
          f"on split <b>{_e(info.get('split', '?'))}</b>{step}; task "
          f"{_e(info.get('task', '?'))}. Report written {_e(generated)}.</p></header>")


def _flat(prefix: str, value: Any) -> list[tuple[str, Any]]:
  """Nested config dicts as ("a.b", value) pairs, empty values left out."""
  if isinstance(value, dict):
    return [pair for k, v in value.items() for pair in _flat(f"{prefix}.{k}", v)]
  if value in ("", None, [], {}):
    return []
  return [(prefix, value)]


def _config_section(config: dict) -> str:
  if not config:
    return "<section><h2>Run</h2><p>No config.json in the workdir.</p></section>"
  optim = config.get("optim", {})
  rows = [("training", "train_duration", config.get("train_duration")),
          ("training", "batch_size", config.get("batch_size")),
          ("training", "optimizer", optim.get("name")),
          ("training", "learning rate", optim.get("lr")),
          ("training", "schedule", (optim.get("schedule") or {}).get("name")),
          ("training", "seed", config.get("seed")),
          ("training", "model_init", config.get("model_init"))]
  rows += [("model", k[1:], v) for k, v in _flat("", config.get("model", {}))]
  rows += [("data", k[1:], v) for k, v in _flat("", config.get("data", {}))]
  rows = [row for row in rows if row[2] not in ("", None)]
  cells = []
  for i, (group, key, value) in enumerate(rows):
    # Each group's name once, over all its rows.
    if i == 0 or rows[i - 1][0] != group:
      span = sum(1 for row in rows if row[0] == group)
      cells.append(f"<tr><th rowspan={span}>{_e(group)}</th>")
    else:
      cells.append("<tr>")
    cells.append(f"<td>{_e(key)}</td><td>{_e(value)}</td></tr>")
  body = "".join(cells)
  return ("<section><h2>Run</h2><table class=config>"
          f"{body}</table><details><summary>Full config.json</summary>"
          f"<pre>{_e(json.dumps(config, indent=1))}</pre></details></section>")


def _metrics_section(info: dict) -> str:
  values = info.get("metrics", {})
  names = [n for n in _FIRST_METRICS if n in values] + sorted(
      n for n in values if n not in _FIRST_METRICS and not n.endswith(_BOUND))
  overall = (info.get("slices") or {}).get(OVERALL_SLICE, {}).get("groups") or []
  intervals = overall[0].get("metrics", {}) if len(overall) == 1 else {}
  rows = []
  for name in names:
    notes = []
    if name + _BOUND in values:
      notes.append(f"&plusmn; {_number(values[name + _BOUND])} at most, from "
                   "binning the scores")
    interval = intervals.get(name)
    if interval and interval.get("low") is not None:
      notes.append(f"{_number(interval['low'])} to {_number(interval['high'])} "
                   "(bootstrap)")
    rows.append(f"<tr><td>{_e(name)}</td><td class=num>{_number(values[name])}"
                f"</td><td>{'; '.join(notes)}</td></tr>")
  return ("<section><h2>Metrics</h2><table class=metrics><thead><tr><th>metric</th>"
          "<th>value</th><th>uncertainty</th></tr></thead><tbody>"
          f"{''.join(rows)}</tbody></table></section>")


def _plots_section(paths: list[str], skipped: list[str]) -> str:
  figures = []
  for path in paths:
    with open(path, "rb") as f:
      data = base64.b64encode(f.read()).decode("ascii")
    name = os.path.splitext(os.path.basename(path))[0]
    figures.append(f"<figure><img class=plot alt=\"{_e(name)}\" "
                   f"src=\"data:image/png;base64,{data}\"><figcaption>{_e(name)}"
                   "</figcaption></figure>")
  missing = ("<p class=note>Not plotted: " + "; ".join(_e(s) for s in skipped) +
             ".</p>") if skipped else ""
  return (f"<section><h2>Plots</h2><div class=plots>{''.join(figures)}</div>"
          f"{missing}</section>")


def _slices_section(slices: dict) -> str:
  if not slices:
    return ""
  parts = ["<section><h2>Slices</h2>"]
  for slice_name, summary in slices.items():
    groups = summary.get("groups") or []
    names = plots.slice_metric_names(summary, _MAX_SLICE_COLUMNS)
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = []
    for group in groups:
      cells = []
      for name in names:
        metric = group.get("metrics", {}).get(name) or {}
        cells.append(f"<td class=num>{_number(metric.get('value'))}"
                     f"{_interval_html(metric)}</td>")
      warning = group.get("warning")
      rows.append(f"<tr{' class=warn' if warning else ''}><td>{_e(group['name'])}"
                  f"</td><td class=num>{_e(group.get('count', ''))}</td>"
                  f"{''.join(cells)}<td>{_e(warning or '')}</td></tr>")
    gaps = summary.get("gap") or {}
    gap_row = ("<tr class=gap><td>gap between the best and worst group</td><td>"
               f"</td>{''.join(_gap_cell(gaps.get(n)) for n in names)}<td></td></tr>"
               if len(groups) > 1 else "")
    parts.append(
        f"<h3>{_e(slice_name)}</h3><p class=note>Values with their "
        f"{_e(format(summary.get('confidence', 0.95), '.0%'))} bootstrap intervals "
        f"({_e(summary.get('resamples', '?'))} resamples, seed "
        f"{_e(summary.get('seed', '?'))}).</p><table class=slices><thead><tr>"
        f"<th>group</th><th>examples</th>{head}<th>warning</th></tr></thead><tbody>"
        f"{''.join(rows)}{gap_row}</tbody></table>")
  parts.append("</section>")
  return "".join(parts)


def _interval_html(metric: dict) -> str:
  if metric.get("low") is None:
    return ""
  return (f" <span class=ci>[{_number(metric['low'])}, "
          f"{_number(metric.get('high'))}]</span>")


def _gap_cell(gap: dict | None) -> str:
  """The gap's value and interval, and which groups are best and worst."""
  if not gap or gap.get("value") is None:
    return "<td></td>"
  return (f"<td class=num>{_number(gap['value'])}{_interval_html(gap)}<br>"
          f"<span class=ci>best {_e(gap.get('best'))}, worst "
          f"{_e(gap.get('worst'))}</span></td>")


def _class_text(value: Any, names: list[str] | None, task: str) -> str:
  """A label or prediction as the reader knows it: "benign (0)", or a number."""
  if task == "regression":
    return ", ".join(_number(v) for v in np.ravel(value))
  if isinstance(value, list):  # Multilabel: multi-hot, shown as the names set.
    on = [i for i, v in enumerate(value) if v]
    return ", ".join(_class_text(i, names, task) for i in on) or "(none)"
  if isinstance(value, int) and names and 0 <= value < len(names):
    # The id too, unless the name is the id.
    return (str(names[value]) if str(names[value]) == str(value) else
            f"{names[value]} ({value})")
  return _number(value)


def _scores_text(record: dict, names: list[str] | None, task: str) -> str:
  scores = record.get("scores") or []
  if task == "regression" or not scores:
    return ""
  top = sorted(range(len(scores)), key=lambda c: -scores[c])[:3]
  return ", ".join(f"{_class_text(c, names, task)}: {scores[c]:.3f}" for c in top)


def _example_html(view: dict | None, record: dict) -> str:
  if view is None:
    return f"<span class=id>{_e(record.get('id', ''))}</span>"
  kind = view.get("kind")
  location = view.get("location") or record.get("id", "")
  where = f"<div class=id>{_e(location)}</div>"
  if kind == "image":
    return f"<img class=thumb alt=\"example {_e(record['index'])}\" " \
           f"src=\"{_e(view['src'])}\">{where}"
  if kind == "text":
    return f"<div class=text>{_e(view['text'])}</div>{where}"
  if kind == "table":
    cells = "".join(f"<tr><th>{_e(k)}</th><td>{_e('' if v is None else v)}</td></tr>"
                    for k, v in view["columns"].items())
    return f"<table class=row>{cells}</table>{where}"
  return f"<code>{_e(view.get('text', ''))}</code>{where}"


def _view_or_why_not(example_view: Callable[[int], dict] | None,
                     index: int) -> dict | None:
  """example_view(index); a note instead where the example is gone (a file
  deleted since the run, say): one lost example does not cost the report."""
  if example_view is None:
    return None
  try:
    return example_view(index)
  except OSError as e:
    return {"kind": "values", "text": f"cannot show the example: {e}"}


def _queue_section(queue: dict, info: dict,
                   example_view: Callable[[int], dict] | None, *,
                   has_predictions: bool) -> str:
  if not has_predictions:
    return ("<section><h2>Review queue</h2><p>No predictions.jsonl in the "
            "evaluation folder: nothing to review.</p></section>")
  names = info.get("class_names")
  task = info.get("task", "classification")
  options = "".join(f"<option value=\"{v}\">{_e(text)}</option>"
                    for v, text in _VERDICTS)
  parts = ["<section id=review><h2>Review queue</h2><p>Give a verdict on each "
           "example; verdicts stay in this browser until exported. "
           "<button type=button id=export onclick=\"exportVerdicts()\">Export "
           "verdicts to CSV</button> <span id=progress></span></p>"]
  for queue_name, records in queue.items():
    title, explanation = _QUEUE_TITLES[queue_name]
    rows = []
    for rank, record in enumerate(records, 1):
      view = _view_or_why_not(example_view, record["index"])
      label = _class_text(record["label"], names, task)
      prediction = _class_text(record["prediction"], names, task)
      measure = (f"error {_number(record['error'])}" if "error" in record else
                 f"confidence {_number(record.get('confidence'))}")
      rows.append(
          f"<tr class=item data-queue=\"{_e(queue_name)}\" "
          f"data-index=\"{_e(record['index'])}\" "
          f"data-id=\"{_e(record.get('id', ''))}\" "
          f"data-label=\"{_e(label)}\" data-prediction=\"{_e(prediction)}\" "
          f"data-measure=\"{_e(measure)}\"><td class=num>{rank}</td>"
          f"<td class=example>{_example_html(view, record)}</td>"
          f"<td>{_e(label)}</td><td>{_e(prediction)}</td>"
          f"<td>{_e(measure)}<div class=scores>"
          f"{_e(_scores_text(record, names, task))}</div></td>"
          f"<td><select class=verdict aria-label=verdict>{options}</select>"
          f"<input class=note type=text placeholder=note aria-label=note></td></tr>")
    parts.append(
        f"<h3>{_e(title)}</h3><p class=note>{_e(explanation)}</p>"
        "<table class=queue><thead><tr><th>#</th><th>example</th><th>label</th>"
        "<th>prediction</th><th>scores</th><th>verdict</th></tr></thead><tbody>"
        f"{''.join(rows) or '<tr><td colspan=6>none</td></tr>'}</tbody></table>")
  parts.append("</section>")
  return "".join(parts)


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto;
       max-width: 1400px; padding: 1em 2em; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 1.6em; }
.sub, .note { color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left;
         vertical-align: top; }
thead th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ci, .scores, .id { color: #666; font-size: 0.85em; }
.id { word-break: break-all; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; border: 1px solid #eee; padding: 0.5em; max-width: 100%; }
img.plot { max-width: 100%; height: auto; display: block; }
figcaption { color: #666; font-size: 0.85em; text-align: center; }
tr.warn td { background: #fff6e0; }
tr.gap td { font-style: italic; background: #fafafa; }
table.queue td.example { max-width: 460px; }
.text { max-height: 9em; overflow: auto; white-space: pre-wrap; }
img.thumb { image-rendering: pixelated; border: 1px solid #ccc; }
table.row th, table.row td { font-size: 0.85em; padding: 1px 6px; }
select.verdict, input.note { display: block; margin: 2px 0; width: 12em; }
tr.done td { background: #eef8ee; }
button { font-size: 1em; padding: 4px 12px; }
pre { max-height: 30em; overflow: auto; background: #f7f7f7; padding: 0.5em; }
"""

# verdictsCsv() builds the CSV text; exportVerdicts() downloads it as a file.
_SCRIPT = """
"use strict";
const storageKey = document.body.dataset.storageKey;
function rows() { return Array.from(document.querySelectorAll("tr.item")); }
function rowKey(row) { return row.dataset.queue + ":" + row.dataset.index; }
function csvCell(text) {
  text = String(text);
  // A cell starting with = + @ is run as a formula by spreadsheets.
  if (/^[=+@\\t\\r]/.test(text)) { text = "'" + text; }
  return '"' + text.replace(/"/g, '""') + '"';
}
function verdictsCsv() {
  const header = ["queue", "index", "id", "label", "prediction", "measure",
                  "verdict", "note"];
  const lines = [header.join(",")];
  for (const row of rows()) {
    const d = row.dataset;
    lines.push([d.queue, d.index, d.id, d.label, d.prediction, d.measure,
                row.querySelector("select.verdict").value,
                row.querySelector("input.note").value].map(csvCell).join(","));
  }
  return lines.join("\\r\\n") + "\\r\\n";
}
function exportVerdicts() {
  const blob = new Blob([verdictsCsv()], {type: "text/csv;charset=utf-8"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = document.body.dataset.csvName;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}
function load() {
  try { return JSON.parse(localStorage.getItem(storageKey) || "{}"); }
  catch (e) { return {}; }  // Storage off (private window, file policy).
}
function save() {
  const saved = {};
  for (const row of rows()) {
    const verdict = row.querySelector("select.verdict").value;
    const note = row.querySelector("input.note").value;
    if (verdict || note) { saved[rowKey(row)] = {verdict: verdict, note: note}; }
  }
  try { localStorage.setItem(storageKey, JSON.stringify(saved)); } catch (e) {}
  update();
}
function update() {
  const all = rows();
  let done = 0;
  for (const row of all) {
    const reviewed = row.querySelector("select.verdict").value !== "";
    row.classList.toggle("done", reviewed);
    done += reviewed ? 1 : 0;
  }
  const progress = document.getElementById("progress");
  if (progress) { progress.textContent = done + " of " + all.length + " reviewed"; }
}
document.addEventListener("DOMContentLoaded", () => {
  const saved = load();
  for (const row of rows()) {
    const previous = saved[rowKey(row)];
    if (previous) {
      row.querySelector("select.verdict").value = previous.verdict;
      row.querySelector("input.note").value = previous.note;
    }
    row.querySelector("select.verdict").addEventListener("change", save);
    row.querySelector("input.note").addEventListener("input", save);
  }
  update();
});
"""

_PAGE = """<!DOCTYPE html>
<html lang=en><head><meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<title>{title}</title><style>{style}</style></head>
<body data-storage-key="{storage_key}" data-csv-name="{csv_name}">
{body}
<script>{script}</script>
</body></html>
"""
