"""Where a step's time goes: a jax.profiler trace of a few train steps, summarised.

  ctjax train ... --config.profile.steps=5 [--config.profile.start_step=10]
  python -m ctjax.profiling WORKDIR/profile        # the summary again

The trainer traces steps start_step+1 .. start_step+steps into WORKDIR/profile
(TensorBoard's profile plugin and ui.perfetto.dev open it; process 0 traces its
host and devices) and writes WORKDIR/profile/summary.txt: per timeline (each
device's streams, the host's threads), the operations that took the most time,
and how busy the timeline was. Start after a few steps, so that compilation,
the first transfers and the allocator's warm-up are not what is measured.
"""
import collections
import glob
import gzip
import json
import os
import sys
from typing import Any

import jax

TOP_OPERATIONS = 12


class StepTrace:
  """Starts the trace before step start_step + 1 and stops it after
  start_step + steps, once the devices have finished those steps."""

  def __init__(self, profile_config: Any, directory: str):
    self.first = int(profile_config.start_step) + 1
    # Several processes on one host would write the same trace files.
    self.last = (int(profile_config.start_step) + int(profile_config.steps)
                 if jax.process_index() == 0 else 0)
    self.directory = directory
    self.running = False

  def before_step(self, step: int) -> None:
    if step == self.first and self.last >= self.first:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.running = True

  def after_step(self, step: int, state: Any) -> str | None:
    """Stops at the last traced step; returns the summary then, else None."""
    if not (self.running and step == self.last):
      return None
    jax.block_until_ready(state)  # The trace holds the devices' work too.
    self.close()
    summary = summarize(self.directory)
    with open(os.path.join(self.directory, "summary.txt"), "w") as f:
      f.write(summary + "\n")
    return summary

  def close(self) -> None:
    if self.running:
      jax.profiler.stop_trace()
      self.running = False


def _latest_trace(directory: str) -> str:
  traces = sorted(glob.glob(os.path.join(directory, "plugins", "profile", "*",
                                         "perfetto_trace.json.gz")))
  if not traces:
    raise FileNotFoundError(f"{directory}: no perfetto_trace.json.gz under "
                            "plugins/profile/; was the run traced "
                            "(config.profile.steps > 0)?")
  return traces[-1]


def summarize(directory: str, top: int = TOP_OPERATIONS) -> str:
  """The newest trace in `directory`, per timeline: its span, how much of it
  was busy, and the operations with the most total time (count, total, share
  of the busy time). Python's own frames (named "$file:line") are left out."""
  with gzip.open(_latest_trace(directory), "rt") as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  by_timeline = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith("$"):
      by_timeline[names.get(e["pid"], str(e["pid"]))].append(e)
  # Devices first: that is where the model runs.
  order = sorted(by_timeline, key=lambda n: ("/device" not in n, n))
  lines = [f"trace {_latest_trace(directory)}"]
  for timeline in order:
    timeline_events = by_timeline[timeline]
    start = min(e["ts"] for e in timeline_events)
    end = max(e["ts"] + e.get("dur", 0) for e in timeline_events)
    totals, counts = collections.Counter(), collections.Counter()
    for e in timeline_events:
      totals[e["name"]] += e.get("dur", 0)
      counts[e["name"]] += 1
    busy = _busy(timeline_events)
    lines.append(f"{timeline}: {(end - start) / 1e3:,.2f} ms traced, busy "
                 f"{busy / 1e3:,.2f} ms ({busy / max(end - start, 1e-9):.0%})")
    for name, total in totals.most_common(top):
      lines.append(f"  {total / 1e3:10,.3f} ms {total / max(busy, 1e-9):6.1%} "
                   f"x{counts[name]:<5} {name[:100]}")
  return "\n".join(lines)


def _busy(events: list[dict[str, Any]]) -> float:
  """Microseconds during which at least one event ran (nested and overlapping
  events counted once)."""
  busy, covered_until = 0.0, float("-inf")
  for e in sorted(events, key=lambda e: e["ts"]):
    start, end = e["ts"], e["ts"] + e.get("dur", 0)
    if end > covered_until:
      busy += end - max(start, covered_until)
      covered_until = end
  return busy


if __name__ == "__main__":
  print(summarize(sys.argv[1]))
