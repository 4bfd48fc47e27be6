"""The drift scenario: a fraud model kept current as card testing appears.

  python experiments/drift_scenario.py --out runs/drift_scenario

Builds, offline and seeded, four months of transactions (configs/
transactions_drift.py): month 0 trains the base model; months 1 to 3 arrive one
by one in OUT/incoming/, month 1 like month 0, months 2 and 3 with card testing
in 50% and 80% of their rows. `ctjax adapt --follow` (here `adapt.follow`, with
--once) monitors each against the deployed model and adapts when it drifted.
To show what the replay buys, month 2 is adapted once more without it
(--replay 0). The figures go to stdout as the README's table, and to
OUT/scenario.md.

All in this process, on its devices (1 CPU by default); about 2 minutes on a
2-core machine.
"""
import argparse
import importlib.util
import json
import os
import sys

from ctjax import adapt
from ctjax import config as config_lib
from ctjax import drift
from ctjax import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "transactions_drift.py")
# (rows, share of card testing) of months 1, 2, 3; month 0 has 3000 rows, none.
MONTHS = ((1000, 0.0), (1000, 0.5), (1000, 0.8))
REPLAY, TOLERANCE = 0.5, 0.02


def _config_module():
  spec = importlib.util.spec_from_file_location("transactions_drift", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _largest_psi(report_dir: str) -> str:
  with open(os.path.join(report_dir, "drift.json")) as f:
    rows = [r for r in json.load(f)["rows"] if r["check"] == "feature"]
  top = max(rows, key=lambda r: r["psi"] or 0.0)
  return f"{top['psi']:.2f} ({top['name']})"


def _change(record: dict | None, split: str) -> str:
  """"deployed → adapted" accuracy on `split`; "-" where nothing was adapted."""
  if record is None:
    return "-"
  accuracy = lambda who: record["evaluations"][who][f"{split}/accuracy"]
  return f"{accuracy('parent'):.3f} → {accuracy('candidate'):.3f}"


def run(out: str) -> str:
  """Runs the scenario into `out`; returns its table (markdown)."""
  months = _config_module()
  base = os.path.join(out, "base")
  months.write_window(os.path.join(out, "month_0.csv"), seed=0, rows=3000)
  train.train(config_lib.load_config(
      f"{CONFIG}:csv={os.path.join(out, 'month_0.csv')}",
      ["tensorboard=False"]), base)
  incoming = os.path.join(out, "incoming")
  for month, (rows, share) in enumerate(MONTHS, 1):
    months.write_window(os.path.join(incoming, f"month_{month}.csv"), seed=month,
                        rows=rows, new_share=share)
  options = dict(checkpoint="latest", replay=REPLAY, validation_fraction=0.2,
                 metric=None, tolerance=TOLERANCE, min_gain=0.0)
  follower = os.path.join(out, "follow")
  state = adapt.follow(incoming, base, out=follower, once=True, poll=0.0,
                       window_rows=0, thresholds=drift.Thresholds(),
                       adapt_options=options, overrides=["tensorboard=False"])
  no_replay = adapt.adapt(base, os.path.join(incoming, "month_2.csv"),
                          out=os.path.join(out, "month_2-no-replay"),
                          overrides=["tensorboard=False"], **{**options, "replay": 0.0})

  lines = [
      "| month | card testing | deployed model's accuracy | largest PSI | drift | "
      "replay | new val.: deployed → adapted | old val.: deployed → adapted | "
      "decision |", "|---|---|---|---|---|---|---|---|---|"]
  rows = [(window, REPLAY, _read_decision(window)) for window in state["windows"]]
  rows.insert(2, (state["windows"][1], 0.0, no_replay))  # After month 2's.
  for window, replay_share, record in rows:
    month = int(window["window"].split("_")[1].split(".")[0])
    psi = _largest_psi(os.path.join(follower, "monitor", f"month_{month}"))
    lines.append(
        f"| {month} | {MONTHS[month - 1][1]:.0%} | {window['accuracy']:.3f} | {psi} | "
        f"{'yes' if window['drifted'] else 'no'} | "
        f"{f'{replay_share:.0%}' if record else '-'} | "
        f"{_change(record, 'new_validation')} | "
        f"{_change(record, 'old_validation')} | "
        f"{record['decision'] if record else 'kept (no drift)'} |")
  table = "\n".join(lines) + "\n"
  with open(os.path.join(out, "scenario.md"), "w") as f:
    f.write(table)
  return table


def _read_decision(window: dict) -> dict | None:
  if not window.get("adapted"):
    return None
  with open(os.path.join(window["adapted"], adapt.DECISION_FILE)) as f:
    return json.load(f)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/drift_scenario")
  args = parser.parse_args()
  if os.path.exists(os.path.join(args.out, "follow")):
    sys.exit(f"{args.out}: holds a scenario already; give a new --out")
  print(run(args.out))
