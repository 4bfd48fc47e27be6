"""Times ctjax's training loop against a minimal hand-written `jax.jit` loop.

  make bench                                  # = python benchmarks/train_loop.py
  python benchmarks/train_loop.py --devices 8 --repeats 5 --only gpt

For each benchmarked config, in one process and on the same devices:

  ctjax         `ctjax.train.train(config, workdir)`, the real trainer with its real
                input pipeline (reading and prefetching in a thread), metric
                logging, NaN checks and preemption checks; evaluation and periodic
                checkpoints off, since they are not part of a training step.
  hand-written  the same model (`ctjax.models.get_model`), optimizer and schedule
                (`ctjax.optim.make_optimizer`) and the same batches (step k's batch
                from `ctjax.data.pipeline.train_batch`, so identical examples),
                preloaded on the devices before timing; a jitted step that donates
                params and optimizer state, called in a bare Python loop. It is the
                fastest a researcher would write by hand, with no input pipeline.

Both run `2 * log + timed` steps with the same learning-rate schedule; the first
two log intervals (compilation, and one-time costs of the first log such as
opening TensorBoard files) are warm-up, excluded from both:

  ctjax         logs every `log` steps; each log's `train/steps_per_s`
                (WORKDIR/metrics.jsonl) is measured between two log points, after
                fetching the step metrics, that is after those steps finished on
                the device. The timed window is the logs after the second, so it
                includes everything the trainer does per step and at each log.
  hand-written  the wall time of the last `timed` steps, from a
                `block_until_ready` after the warm-up to one after the last step.

Runs alternate (ctjax, hand-written, ctjax, ...) so that a machine whose speed
drifts affects both alike. Printed: the ratio of the medians, ctjax / hand-written,
and of the fastest runs ("best"), which other load on a shared machine disturbs
less.
"""
import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

import cpu_devices  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config, log interval, timed steps, model replacing the config's). Each
# logs as its config does; the GPT's 120 timed steps take ~25 s a run (60 steps
# left the ratio at the mercy of this machine's drift: 0.92 to 1.05). "host" is the default config with a model so small that a step
# costs the device almost nothing, so the ratio measures the host work per step:
# what a small model on an accelerator feels, seen on a CPU.
BENCHMARKS = {
    "default": ("configs/default.py", 100, 300, None),
    "gpt": ("configs/gpt_stdlib.py:size=small", 40, 120, None),
    "host": ("configs/default.py", 500, 3000,
             {"name": "mlp", "num_classes": 10, "hidden_sizes": (16,)}),
}


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=1,
                      help="fake CPU devices (XLA_FLAGS); ignored on GPU/TPU")
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs of each loop per config; the median is reported")
  parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append",
                      help="benchmark only these configs")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="config override for both loops, e.g. data.prefetch=0")
  parser.add_argument("--scale", type=float, default=1.0,
                      help="multiply the log interval and timed steps (e.g. 10 on "
                      "a GPU, where steps are much faster)")
  return parser.parse_args()


ARGS = _parse_args()
cpu_devices.use(ARGS.devices)  # Before JAX starts.
sys.path.insert(0, REPO)

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from ctjax import config as config_lib
from ctjax import models
from ctjax import optim
from ctjax import train as train_lib
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


def load(spec: str, log: int, timed: int, model: dict | None):
  """The config, set to train 2 * log + timed steps, logging every `log`.

  The learning rate warms up over the first `log` steps: the config's own warm-up
  may be longer than this short run.
  """
  config = config_lib.load_config(os.path.join(REPO, spec), [
      f"train_duration={2 * log + timed}", f"log_every={log}",
      f"optim.schedule.warmup={log}",
      "eval_every=0", "eval_splits=()", "final_eval_splits=()",
      "checkpoint.every=0", "checkpoint.best_metric=", *ARGS.set])
  if model is not None:
    config.model = ml_collections.ConfigDict(model)
  return config


def time_ctjax(config, warmup: int) -> float:
  """Steps/s of the real trainer over the logs after step `warmup` (see top)."""
  with tempfile.TemporaryDirectory() as workdir:
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
      train_lib.train(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      logs = [json.loads(line) for line in f]
  logs = [r for r in logs if "train/steps_per_s" in r]
  # Each log's rate covers the steps since the previous log.
  intervals = [(r["step"] - previous["step"], r["train/steps_per_s"])
               for previous, r in zip(logs, logs[1:]) if previous["step"] >= warmup]
  return (sum(n for n, _ in intervals) /
          sum(n / steps_per_s for n, steps_per_s in intervals))


def time_hand_written(config, warmup: int, steps: int) -> float:
  """Steps/s of a minimal jitted loop on the same model, optimizer and batches."""
  train_split = splits_lib.open_splits(config.data)["train"]
  loader = pipeline.BatchLoader(train_split, ops.compose(config.data.get("preprocess")),
                                num_threads=config.data.num_threads)
  mesh = jax.sharding.Mesh(jax.devices(), ("data",))
  batch_sharding = NamedSharding(mesh, P("data"))
  host_batches = [pipeline.train_batch(loader, s, global_batch_size=config.batch_size,
                                       seed=config.seed)
                  for s in range(warmup + steps)]
  batches = [jax.device_put(b, batch_sharding) for b in host_batches]

  model = models.get_model(config.model)
  tx, _ = optim.make_optimizer(config.optim, total_steps=warmup + steps,
                               global_batch_size=config.batch_size,
                               train_examples=len(train_split))
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(config.seed),
                                    host_batches[0]["inputs"][:1],
                                    train=False)["params"])
  params = jax.device_put(params, NamedSharding(mesh, P()))
  opt_state = tx.init(params)

  def loss_fn(params, batch):
    logits = model.apply({"params": params}, batch["inputs"], train=True)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return jnp.sum(losses * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1)

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  for batch in batches[:warmup]:
    params, opt_state, loss = step(params, opt_state, batch)
  jax.block_until_ready((params, loss))
  start = time.perf_counter()
  for batch in batches[warmup:]:
    params, opt_state, loss = step(params, opt_state, batch)
  jax.block_until_ready((params, loss))
  return steps / (time.perf_counter() - start)


def main() -> None:
  device = jax.devices()[0]
  print(f"{jax.device_count()} x {device.platform} ({device.device_kind}), "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__}; "
        f"{ARGS.repeats} alternating runs each, median", flush=True)
  print(f"{'config':<10} {'steps':>6} {'ctjax steps/s':>14} {'hand steps/s':>13} "
        f"{'ratio':>6} {'best':>6}   all runs (ctjax | hand-written)", flush=True)
  for name in ARGS.only or BENCHMARKS:
    spec, log, steps, model = BENCHMARKS[name]
    log, steps = int(log * ARGS.scale), int(steps * ARGS.scale)
    config, warmup = load(spec, log, steps, model), 2 * log
    ours, hand = [], []
    for i in range(ARGS.repeats):
      # ABBA order: a machine that speeds up or slows down during the run (it
      # does, by up to 10% here) shifts both sides alike.
      for side in (("ctjax", "hand") if i % 2 == 0 else ("hand", "ctjax")):
        if side == "ctjax":
          ours.append(time_ctjax(config, warmup))
        else:
          hand.append(time_hand_written(config, warmup, steps))
    ratio = statistics.median(ours) / statistics.median(hand)
    # Other load on the machine only ever slows a run down, so the ratio of the
    # fastest runs is a second, less noisy estimate on a busy machine.
    best = max(ours) / max(hand)
    print(f"{name:<10} {steps:>6} {statistics.median(ours):>14.2f} "
          f"{statistics.median(hand):>13.2f} {ratio:>6.3f} {best:>6.3f}   "
          f"{' '.join(f'{x:.2f}' for x in ours)} | "
          f"{' '.join(f'{x:.2f}' for x in hand)}", flush=True)


if __name__ == "__main__":
  main()
