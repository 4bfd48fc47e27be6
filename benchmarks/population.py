"""Trials per hour: a sweep trained as one population against one trial at a time.

  python benchmarks/population.py                       # lr_seed: 6 trials, 200 steps
  python benchmarks/population.py --sweep lr --steps 600 --repeats 2
  python benchmarks/population.py --devices 8           # 8 fake CPU devices

A sweep of configs/default.py (its get_sweeps) trained twice in this one process,
side by side: as one population (`ctjax.population.train_population`, every
trial's step in one compiled program) and trial by trial (`ctjax.train.train`
for each, as `experiments/sweep.py` runs them, less the start-up of a process per
trial). Both are timed end to end: compilation, training, the config's
evaluations and checkpoints, reports. Trials/hour = trials / wall time. The
table also gives the steady-state training rate, in trial-steps/s: the median of
the logged train/steps_per_s (after the first log interval, which holds the first
step), times the trials a step advances.

A short untimed run first imports and warms up what both sides use once per
process (TensorFlow for TensorBoard files, matplotlib, the data), and no
persistent compilation cache is used, so each side pays its own compilations.
With --repeats > 1 the sides alternate in ABBA order (population, one by one, one
by one, population, ...), so that a machine that speeds up or slows down during
the run shifts both alike; the figures are medians.

Figures for this machine go in benchmarks/README.md ("Population mode").
"""
import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time

import cpu_devices  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--sweep", default="lr_seed",
                      help="a sweep of the config's get_sweeps()")
  parser.add_argument("--steps", type=int, default=200, help="training steps")
  parser.add_argument("--repeats", type=int, default=1,
                      help="runs of each side, alternating")
  parser.add_argument("--devices", type=int, default=1,
                      help="fake CPU devices (XLA_FLAGS), set before JAX starts")
  return parser.parse_args()


ARGS = _parse_args()
cpu_devices.use(ARGS.devices)  # Before JAX starts.
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from ctjax import config as config_lib
from ctjax import population
from ctjax import sweeps
from ctjax import train as train_lib
from ctjax import writers
# pylint: enable=g-import-not-at-top,wrong-import-position


def _quietly(function, *args):
  with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
    return function(*args)


def _steady_steps_per_s(workdir: str) -> float:
  """The median logged train/steps_per_s, the first log interval left out."""
  rates = [r["train/steps_per_s"] for r in writers.read_metrics(workdir)
           if "train/steps_per_s" in r]
  return statistics.median(rates[1:] or rates)


def run_population(config, trials, root: str) -> tuple[float, float]:
  """(wall seconds, steady trial-steps/s) of the sweep as one population."""
  workdirs = [os.path.join(root, sweeps.trial_name(t)) for t in trials]
  start = time.perf_counter()
  _quietly(population.train_population, config, trials, workdirs)
  wall = time.perf_counter() - start
  return wall, len(trials) * _steady_steps_per_s(workdirs[0])


def run_one_by_one(config, trials, root: str) -> tuple[float, float]:
  """(wall seconds, steady trial-steps/s) of the sweep's trials trained in turn."""
  start = time.perf_counter()
  rates = []
  for trial in trials:
    workdir = os.path.join(root, sweeps.trial_name(trial))
    _quietly(train_lib.train, sweeps.apply(config, trial), workdir)
    rates.append(_steady_steps_per_s(workdir))
  return time.perf_counter() - start, statistics.median(rates)


def main() -> None:
  spec = os.path.join(ROOT, ARGS.config)
  trials = sweeps.load(spec, ARGS.sweep)
  config = config_lib.load_config(spec, [f"train_duration={ARGS.steps}"])
  device = jax.devices()[0]
  print(f"{ARGS.config} sweep {ARGS.sweep!r}: {len(trials)} trials of "
        f"{ARGS.steps} steps; {jax.device_count()} x {device.platform} "
        f"({device.device_kind}), {os.cpu_count()} CPU cores, jax {jax.__version__}",
        flush=True)
  sides = {"population": run_population, "one by one": run_one_by_one}
  walls = {side: [] for side in sides}
  rates = {side: [] for side in sides}
  with tempfile.TemporaryDirectory() as tmp:
    warm_up = config_lib.load_config(spec, ["train_duration=2",
                                            "optim.schedule.warmup=0"])
    _quietly(train_lib.train, warm_up, os.path.join(tmp, "warm_up"))
    for i in range(ARGS.repeats):
      order = list(sides) if i % 2 == 0 else list(reversed(sides))
      for side in order:
        root = os.path.join(tmp, f"{side}-{i}".replace(" ", "_"))
        wall, rate = sides[side](config, trials, root)
        walls[side].append(wall)
        rates[side].append(rate)
        print(f"  run {i + 1} {side}: {wall:.1f} s, {rate:.1f} trial-steps/s",
              flush=True)
  print(f"\n| mode | trials | wall s | trials/hour | trial-steps/s (steady) |\n"
        f"| --- | ---: | ---: | ---: | ---: |")
  per_hour, steady = {}, {}
  for side in sides:
    wall = statistics.median(walls[side])
    per_hour[side] = 3600 * len(trials) / wall
    steady[side] = statistics.median(rates[side])
    print(f"| {side} | {len(trials)} | {wall:.1f} | {per_hour[side]:,.0f} | "
          f"{steady[side]:.1f} |")
  print(f"\nratio (population / one by one): trials/hour "
        f"{per_hour['population'] / per_hour['one by one']:.2f}, steady "
        f"trial-steps/s {steady['population'] / steady['one by one']:.2f}")


if __name__ == "__main__":
  main()
