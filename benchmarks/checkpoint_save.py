"""A process's first checkpoint save: Orbax's default array handler against ctjax's.

  python benchmarks/checkpoint_save.py                  # 8 fake CPU devices
  python benchmarks/checkpoint_save.py --devices 2 --repeats 5

The default experiment's train state (configs/default.py: its CNN's parameters
and AdamW state), replicated over `--devices` devices as a data-parallel run
holds it, is saved `--saves` times by a fresh process with an Orbax
CheckpointManager built two ways:

  orbax  Orbax's default PyTreeCheckpointHandler: on CPUs and TPUs it divides
         each replicated array among the replicas, each part cut by a program
         compiled at the first save (one per array shape, device and part);
  ctjax  ctjax.checkpoint.make_manager: arrays whose part would be under 1 MiB
         are written whole by one replica.

No compilation cache, as on a fresh machine. Each variant runs in its own
process (the first save is per process), the two alternating over --repeats;
figures are medians. Figures go in benchmarks/README.md ("Checkpoint saves").
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import cpu_devices  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("orbax", "ctjax")


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=8,
                      help="fake CPU devices (XLA_FLAGS), set before JAX starts")
  parser.add_argument("--saves", type=int, default=4, help="saves a process")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--variant", choices=VARIANTS,
                      help="(internal) time one variant in this process")
  return parser.parse_args()


def _time_saves(variant: str, saves: int) -> list[float]:
  """Seconds of each of `saves` saves (each waited for) by this process."""
  # pylint: disable=g-import-not-at-top
  import jax
  import optax
  import orbax.checkpoint as ocp
  from ctjax import checkpoint
  from ctjax import config as config_lib
  from ctjax import models

  config = config_lib.load_config(os.path.join(ROOT, "configs", "default.py"))
  model = models.get_model(config.model)
  params = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 8, 8, 1)),
                      train=False)["params"]
  state = {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params,
           "opt_state": optax.adamw(1e-3).init(params), "rng": jax.random.PRNGKey(1)}
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  state = jax.device_put(state, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))
  with tempfile.TemporaryDirectory() as folder:
    if variant == "ctjax":
      manager = checkpoint.make_manager(folder)
    else:
      manager = ocp.CheckpointManager(folder, item_handlers={
          "state": ocp.PyTreeCheckpointHandler()})
    seconds = []
    for step in range(saves):
      start = time.perf_counter()
      manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
      manager.wait_until_finished()
      seconds.append(time.perf_counter() - start)
    manager.close()
  return seconds


def main() -> None:
  args = _parse_args()
  if args.variant:
    cpu_devices.use(args.devices)  # Before JAX starts.
    sys.path.insert(0, ROOT)
    print(json.dumps(_time_saves(args.variant, args.saves)))
    return
  runs = {v: [] for v in VARIANTS}
  for repeat in range(args.repeats):
    for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
      out = subprocess.run(
          [sys.executable, __file__, "--variant", variant, "--devices",
           str(args.devices), "--saves", str(args.saves)],
          check=True, capture_output=True, text=True).stdout
      runs[variant].append(json.loads(out.strip().splitlines()[-1]))
  first = {v: statistics.median(r[0] for r in runs[v]) for v in VARIANTS}
  later = {v: statistics.median(s for r in runs[v] for s in r[1:]) for v in VARIANTS}
  print(f"{args.devices} CPU devices, medians of {args.repeats} processes")
  print(f"{'':8}{'first save s':>14}{'later saves s':>15}")
  for v in VARIANTS:
    print(f"{v:8}{first[v]:14.3f}{later[v]:15.3f}")
  print(f"orbax / ctjax: first save {first['orbax'] / first['ctjax']:.1f}x, "
        f"later saves {later['orbax'] / later['ctjax']:.2f}x")


if __name__ == "__main__":
  main()
