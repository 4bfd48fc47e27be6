"""Simulated federated rounds per second: clients in a Python loop, in one
program on one device, and in one program divided among the devices.

  python benchmarks/federated.py                    # 2 fake CPU devices
  python benchmarks/federated.py --devices 8 --clients 32 --repeats 3

One round of `ctjax.federated.make_round` (fedavg; an MLP 64-256-256-10; each
client `--local-steps` SGD steps of `--batch` examples of its own synthetic
data) is run three ways on the same inputs:

  loop      the round's clients one after another, each its own call of the
            jitted `client_update` (what a simulator built on the deployed
            client would do), then the weighted mean and `server_update`;
  1 device  the whole round one program (`Round.run`: vmap over clients),
            on one device;
  N devices the same program with the client axis sharded over N devices
            (config.mesh data axis), as `ctjax train` runs it.

Each is compiled and run twice untimed (a round's outputs, fed to the next, are
placed otherwise than fresh inputs: one more compilation), then timed over
`--rounds` rounds; with
--repeats the three alternate (forward, then backward order) and the figures
are medians. The three rounds' parameters are compared as a check (the same
float32 work, ordered differently). Figures go in benchmarks/README.md
("Federated simulation").
"""
import argparse
import os
import statistics
import sys
import time

import cpu_devices  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--devices", type=int, default=2,
                      help="fake CPU devices (XLA_FLAGS), set before JAX starts")
  parser.add_argument("--clients", type=int, default=16, help="clients a round")
  parser.add_argument("--local-steps", type=int, default=5)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=10, help="rounds timed")
  parser.add_argument("--repeats", type=int, default=1)
  return parser.parse_args()


ARGS = _parse_args()
cpu_devices.use(ARGS.devices)  # Before JAX starts.
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ctjax import federated
from ctjax import models
from ctjax import tasks
# pylint: enable=g-import-not-at-top,wrong-import-position


def _mesh(devices: int) -> jax.sharding.Mesh:
  return jax.make_mesh((devices, 1, 1), ("data", "fsdp", "tensor"),
                       devices=jax.devices()[:devices],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)


def main() -> None:
  model = models.get_model(dict(name="mlp", num_classes=10, hidden_sizes=(256, 256)))
  m, steps, batch = ARGS.clients, ARGS.local_steps, ARGS.batch
  rng = np.random.default_rng(0)
  batches = {"inputs": rng.normal(size=(m, steps, batch, 64)).astype(np.float32),
             "label": rng.integers(0, 10, (m, steps, batch)).astype(np.int32),
             "mask": np.ones((m, steps, batch), np.float32)}
  weights = np.full(m, 1 / m, np.float32)
  keys = np.arange(m, dtype=np.uint32)
  params = model.init(jax.random.PRNGKey(0), batches["inputs"][0, 0])["params"]
  round_rng = jax.random.PRNGKey(1)
  make = lambda mesh: federated.make_round(
      model, optax.sgd(0.05), algorithm="fedavg", mesh=mesh,
      per_example_loss=tasks.get("classification").per_example_loss)

  loop_round = make(None)

  def loop(params, server_state):
    changes = [loop_round.client_update(
        params, jax.tree.map(lambda x: x[c], batches),
        federated.client_rng(round_rng, keys[c]))[0] for c in range(m)]
    mean = jax.tree.map(lambda *d: sum(w * x for w, x in zip(weights, d)), *changes)
    return loop_round.server_update(params, server_state, mean)

  def one_program(round_):
    return lambda params, server_state: round_.run(
        params, server_state, batches, weights, keys, round_rng)[:2]

  sides = {"loop": loop, "1 device": one_program(make(_mesh(1))),
           f"{ARGS.devices} devices": one_program(make(_mesh(ARGS.devices)))}
  if m % ARGS.devices:
    sys.exit(f"--clients={m}: give a multiple of --devices={ARGS.devices}")
  server_state = loop_round.server_tx.init(params)
  results = {}
  for side, run in sides.items():
    # Compiled for fresh inputs, and again for its own outputs (placed as its
    # out_shardings say), as rounds after the first are.
    first = run(params, server_state)
    jax.block_until_ready(run(*first))
    results[side] = first[0]  # Checked below.
  device = jax.devices()[0]
  print(f"{m} clients x {steps} local steps x batch {batch}, MLP 64-256-256-10; "
        f"{jax.device_count()} x {device.platform}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}", flush=True)
  times = {side: [] for side in sides}
  for i in range(ARGS.repeats):
    for side in (list(sides) if i % 2 == 0 else list(reversed(sides))):
      state = (params, server_state)
      start = time.perf_counter()
      for _ in range(ARGS.rounds):
        state = sides[side](*state)
      jax.block_until_ready(state)
      times[side].append((time.perf_counter() - start) / ARGS.rounds)
  print("\n| clients a round | loop rounds/s | 1 device rounds/s | "
        f"{ARGS.devices} devices rounds/s | 1 device / loop | "
        f"{ARGS.devices} devices / 1 device |\n| ---: | ---: | ---: | ---: | ---: | ---: |")
  rate = {side: 1 / statistics.median(t) for side, t in times.items()}
  one, many = rate["1 device"], rate[f"{ARGS.devices} devices"]
  print(f"| {m} | {rate['loop']:.1f} | {one:.1f} | {many:.1f} | "
        f"{one / rate['loop']:.2f} | {many / one:.2f} |")
  difference = max(
      float(jnp.max(jnp.abs(a - b))) for other in list(results)[1:]
      for a, b in zip(jax.tree.leaves(results["loop"]),
                      jax.tree.leaves(results[other])))
  print(f"\nlargest parameter difference between the three after one round: "
        f"{difference:.2g}")


if __name__ == "__main__":
  main()
