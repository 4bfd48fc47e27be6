"""One GPT step under data, FSDP and tensor layouts, and over 2 processes.

  python benchmarks/scaling.py                          # ~5 minutes on 2 busy cores
  python benchmarks/scaling.py --hidden 512 --layers 8 --repeats 5
  python benchmarks/scaling.py --only data --only fsdp  # some layouts only

The same model (ctjax's GPT), optimizer (AdamW with global-norm clipping, from
`ctjax.optim.make_optimizer`) and train step (`ctjax.train.make_train_step`,
donating the state) compiled for 8 fake CPU devices under these meshes
(`config.mesh` sizes data x fsdp x tensor, the base config's sharding rules):

  data          8 x 1 x 1   parameters replicated, the batch split 8 ways
  fsdp          1 x 8 x 1   parameters, gradients and optimizer state split 8 ways
                            along `embed`; the batch split 8 ways
  tensor        1 x 1 x 8   heads, MLP and vocabulary split 8 ways; every device
                            sees the whole batch
  fsdp+tensor   1 x 4 x 2   both
  data+fsdp     2 x 4 x 1   the batch split 8 ways, parameters 4 ways
  2 processes   2 x 4 x 1   two processes on localhost, 4 fake devices each,
                            jax.distributed with gloo (TCP) collectives; the
                            `data` axis crosses the processes, `fsdp` stays inside
                            each: the data+fsdp program, its collectives
                            between processes going through gloo. The script
                            starts itself twice (--worker), once for all
                            rounds; process 0 hands each round's figures back
                            as one JSON line.

The script sets XLA_FLAGS (8 fake devices, 4 in a worker) and JAX_PLATFORMS=cpu
(unless set) before JAX starts.

For each layout:

  step ms       median wall time of one step: each of --steps timed steps (after
                2 untimed warm-up steps) is followed by `jax.block_until_ready`
                on the new state, so a step's time is its whole computation
                including its collectives. The 8 fake devices share this
                machine's cores, so the time shows the cost of the layout's extra
                work and communication, not the speed-up of more devices.
  vs data       step time divided by the data layout's in the same round, the
                median over rounds. Layouts take turns, in ABBA order over
                --repeats rounds (data, fsdp, ..., 2 processes, 2 processes, ...,
                data), so a machine whose speed drifts shifts all alike; compare
                ratios, not absolute times.
  memory        per device, from the compiled step's `memory_analysis()`:
                arguments (the state and the batch shard), temporaries (the
                activations and gradients the step keeps alive at once), and total
                = arguments + outputs - outputs aliased to donated arguments +
                temporaries.
  collectives   bytes per step per device, from the compiled program's HLO text
                (`collective_bytes`): for each all-reduce, all-gather,
                reduce-scatter, all-to-all and collective-permute (an async one
                counted once, at its -start), the size of its result on one
                device: for an all-reduce the buffer each device contributes and
                gets back reduced, for an all-gather the whole gathered array,
                for a reduce-scatter the shard it keeps (XLA:CPU writes those as
                an all-reduce followed by a slice). These are payloads, not bytes
                on the wire: a ring all-reduce of n devices sends and receives
                2(n-1)/n times its payload per device, an all-gather (n-1)/n.
                They are exact properties of the program, the same on any machine
                that compiles it so.

The model is built with scan_layers=False on purpose: with nn.scan the per-layer
collectives sit inside a while loop, written once in the HLO but run once per
iteration, and counting them would need the loop's trip count.

Figures for this machine go in benchmarks/README.md ("Scaling on one host").
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (data, fsdp, tensor) mesh sizes, on 8 devices of one process.
# "data+fsdp" is the 2-process row's mesh in one process: the two differ only in
# how their collectives travel.
LAYOUTS = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (1, 1, 8),
           "fsdp+tensor": (1, 4, 2), "data+fsdp": (2, 4, 1)}
TWO_PROCESSES = "2 processes"
TWO_PROCESS_MESH = (2, 4, 1)
WARMUP_STEPS = 2
_RESULT_PREFIX = "SCALING_RESULT "
_READY = "SCALING_READY"

# Collectives counted, with the abbreviations of the table's op counts.
COLLECTIVES = {"all-reduce": "AR", "all-gather": "AG", "reduce-scatter": "RS",
               "all-to-all": "A2A", "collective-permute": "CP"}
# Bytes per element of HLO element types (sub-byte types round up: only payloads
# of such types could be off; a token carries no data).
_DTYPE_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2,
                "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8,
                "u64": 8, "f64": 8, "c64": 8, "c128": 16, "token": 0}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s+"
    r"(?P<op>" + "|".join(COLLECTIVES) + r")(?P<phase>-start|-done)?"
    r"\((?P<operands>.*)")
_ARRAY_SHAPE = re.compile(r"\b(?P<dtype>[a-z]\w*?)\[(?P<dims>[\d,]*)\]")


def _shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string: `f32[256,1024]{1,0}`, or a tuple of them."""
  total = 0
  for match in _ARRAY_SHAPE.finditer(shape):
    dtype = match["dtype"]
    if dtype.startswith("f8"):
      size = 1
    elif dtype in _DTYPE_BYTES:
      size = _DTYPE_BYTES[dtype]
    else:
      raise ValueError(f"unknown HLO element type {dtype!r} in {shape!r}")
    elements = 1
    for dim in filter(None, match["dims"].split(",")):
      elements *= int(dim)
    total += size * elements
  return total


def _first_operand(operands: str) -> str:
  """The name of the first operand in the text after an op's "(": `%x`, or with
  its shape in front (`(f32[8]{0}, f32[64]{0}) %x`), or bare (`x`)."""
  named = re.search(r"%([\w.\-]+)", operands)
  if named:
    return named[1]
  return re.sub(r"[a-z]\w*\[[\d,]*\](\{[^}]*\})?|[(),]", " ", operands).split()[0]


def collective_bytes(hlo_text: str) -> dict[str, tuple[int, int]]:
  """{op: (count, bytes)} of the collectives in a compiled program's HLO text.

  `hlo_text` is `compiled.as_text()`: the per-device program after SPMD
  partitioning. Bytes are each op's result size on one device (see the module
  docstring for what that means per op). An async pair (`all-gather-start`,
  `all-gather-done`) is one op, counted at its start and sized by its done:
  a start's result is a tuple that also holds its operands and context. Ops that
  never occur are left out. Collectives inside loops count once, as written.
  """
  found = []  # (op, name, shape, phase, operands)
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if match:
      found.append(match.groupdict())
  # A -done names its -start as its operand: `all-gather-done(%all-gather-start)`
  # (operands may carry their shapes in front: `(f32[8]{0} %all-gather-start)`).
  done_shapes = {_first_operand(m["operands"]): m["shape"]
                 for m in found if m["phase"] == "-done"}
  totals: dict[str, tuple[int, int]] = {}
  for m in found:
    if m["phase"] == "-done":
      continue
    shape = done_shapes.get(m["name"], m["shape"]) if m["phase"] else m["shape"]
    count, size = totals.get(m["op"], (0, 0))
    totals[m["op"]] = (count + 1, size + _shape_bytes(shape))
  return totals


def _parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--hidden", type=int, default=256, help="GPT hidden size")
  parser.add_argument("--layers", type=int, default=4, help="transformer blocks")
  parser.add_argument("--heads", type=int, default=8,
                      help="attention heads (a multiple of 8 lets tensor=8 split them)")
  parser.add_argument("--seq-len", type=int, default=64, help="tokens per example")
  parser.add_argument("--batch", type=int, default=32, help="global batch size")
  parser.add_argument("--steps", type=int, default=4,
                      help="timed steps per layout and round")
  parser.add_argument("--repeats", type=int, default=3,
                      help="rounds over the layouts, alternating their order")
  parser.add_argument("--only", action="append",
                      choices=sorted([*LAYOUTS, TWO_PROCESSES]),
                      help="these layouts only (data is always run: the ratios "
                      "are to it)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def _xla_flags(devices: int) -> str:
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", "")).split()
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  # 8 fake devices on 2 busy cores can keep one device's thread waiting longer
  # than XLA's default 40 s before a collective gives up (as in tests/conftest.py).
  if not any("collective_call_terminate_timeout" in f for f in flags):
    flags.append("--xla_cpu_collective_call_terminate_timeout_seconds=300")
  return " ".join(flags)


if __name__ == "__main__":
  ARGS = _parse_args()
  # The device count must be fixed before JAX starts.
  os.environ["XLA_FLAGS"] = _xla_flags(4 if ARGS.worker else 8)
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ctjax import config as config_lib
from ctjax import distributed
from ctjax import models
from ctjax import optim
from ctjax import sharding
from ctjax import tasks
from ctjax import train as train_lib
# pylint: enable=g-import-not-at-top,wrong-import-position


class Layout:
  """The train step compiled for one mesh, its state and batch on the devices."""

  def __init__(self, args: argparse.Namespace, mesh_sizes: tuple[int, int, int]):
    config = config_lib.base_config()
    config.mesh.update(dict(zip(sharding.MESH_AXES, mesh_sizes)))
    mesh = sharding.make_mesh(config.mesh)
    rules = tuple(tuple(r) if isinstance(r, list) else r
                  for r in config.sharding_rules)
    model = models.get_model(dict(
        name="gpt", vocab_size=256, hidden_size=args.hidden,
        num_layers=args.layers, num_heads=args.heads, mlp_dim=4 * args.hidden,
        scan_layers=False))  # Not scanned: see the module docstring.
    tx, _ = optim.make_optimizer(config.optim, total_steps=10_000,
                                 global_batch_size=args.batch, train_examples=None)
    step = train_lib.make_train_step(
        model, tx, grad_accum_steps=1, model_params=lambda p, f: p,
        per_example_loss=tasks.get("classification").per_example_loss)
    dummy = jnp.zeros((1, args.seq_len), jnp.int32)

    def init_state(rng):  # As ctjax/train.py's, with nothing frozen.
      params = model.init({"params": rng}, dummy, train=False)["params"]
      return {"step": jnp.zeros((), jnp.int32), "params": params, "frozen": {},
              "opt_state": tx.init(params), "rng": jax.random.fold_in(rng, 1)}

    rng = jax.random.PRNGKey(0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      boxed = jax.eval_shape(init_state, rng)
    abstract_state, state_sh = sharding.abstract_state(boxed, mesh, rules)
    batch_sh = sharding.batch_sharding(mesh, 2)
    # The same random tokens in every process; each device takes its rows.
    tokens = np.random.default_rng(0).integers(
        0, 256, (args.batch, args.seq_len + 1), dtype=np.int32)
    host_batch = {"inputs": tokens[:, :-1], "label": tokens[:, 1:],
                  "mask": np.ones((args.batch, args.seq_len), np.float32)}
    self.batch = {k: jax.make_array_from_callback(v.shape, batch_sh,
                                                  lambda index, v=v: v[index])
                  for k, v in host_batch.items()}
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh)
                      for k, v in self.batch.items()}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      jitted = jax.jit(step, in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, replicated), donate_argnums=0)
      start = time.perf_counter()
      self.compiled = jitted.lower(abstract_state, abstract_batch).compile()
      self.compile_s = time.perf_counter() - start
      self.state = jax.jit(lambda r: nn.meta.unbox(init_state(r)),
                           out_shardings=state_sh)(rng)
    self.parameters = sum(int(np.prod(x.shape))
                          for x in jax.tree.leaves(abstract_state["params"]))
    self.run(WARMUP_STEPS)

  def run(self, steps: int) -> list[float]:
    """Seconds of each of `steps` steps, each waited for."""
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      self.state, _ = self.compiled(self.state, self.batch)
      jax.block_until_ready(self.state)
      times.append(time.perf_counter() - start)
    return times

  def figures(self) -> dict[str, Any]:
    """Memory per device and collectives of the compiled step."""
    m = self.compiled.memory_analysis()
    return {
        "argument_bytes": m.argument_size_in_bytes,
        "temp_bytes": m.temp_size_in_bytes,
        "total_bytes": (m.argument_size_in_bytes + m.output_size_in_bytes
                        - m.alias_size_in_bytes + m.temp_size_in_bytes),
        "collectives": collective_bytes(self.compiled.as_text()),
        "parameters": self.parameters, "compile_s": self.compile_s,
    }


def worker(args: argparse.Namespace) -> None:
  """One of the 2 processes: compiles, then times --steps steps for each line
  "round" on stdin, until "stop"; process 0 prints each round's figures."""
  distributed.initialize()
  layout = Layout(args, TWO_PROCESS_MESH)
  # As meant: the data axis crosses the processes, fsdp stays inside each.
  devices = sharding.make_mesh(dict(zip(sharding.MESH_AXES,
                                        TWO_PROCESS_MESH))).devices
  assert all(d.process_index == i for i in range(2) for d in devices[i].flat), (
      devices)
  if jax.process_index() == 0:
    print(_READY, flush=True)
  while sys.stdin.readline().strip() == "round":
    times = layout.run(args.steps)
    if jax.process_index() == 0:
      print(_RESULT_PREFIX + json.dumps({"times": times, **layout.figures()}),
            flush=True)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class TwoProcesses:
  """This script running as the 2 worker processes, kept for all rounds.

  Started once (each compiles the step); each round asks both for --steps steps
  and reads process 0's figures. Between rounds they wait on stdin, idle, so
  the other layouts run alone on the machine.
  """

  def __init__(self, args: argparse.Namespace, log_dir: str):
    forwarded = [f"--hidden={args.hidden}", f"--layers={args.layers}",
                 f"--heads={args.heads}", f"--seq-len={args.seq_len}",
                 f"--batch={args.batch}", f"--steps={args.steps}", "--worker"]
    address = f"127.0.0.1:{_free_port()}"
    self.logs = [os.path.join(log_dir, f"process_{i}.log") for i in range(2)]
    self.processes = []
    for i, log in enumerate(self.logs):
      env = dict(os.environ, JAX_COORDINATOR_ADDRESS=address,
                 JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu")
      with open(log, "w") as log_file:
        # Process 0's figures come on stdout; everything else goes to the logs.
        self.processes.append(subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *forwarded], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE if i == 0 else log_file,
            stderr=log_file, text=True))

  def wait_ready(self) -> None:
    """Returns once both have compiled and warmed up."""
    self._read(_READY)

  def round(self) -> tuple[list[float], dict[str, Any]]:
    """(step times, figures) of one round, from process 0."""
    for process in self.processes:
      process.stdin.write("round\n")
      process.stdin.flush()
    result = json.loads(self._read(_RESULT_PREFIX)[len(_RESULT_PREFIX):])
    result["collectives"] = {k: tuple(v) for k, v in result["collectives"].items()}
    return result.pop("times"), result

  def _read(self, prefix: str) -> str:
    """Process 0's next line starting with `prefix`."""
    for line in self.processes[0].stdout:
      if line.startswith(prefix):
        return line
    self.close()  # Process 0 ended without it: say why.
    raise RuntimeError("a worker process failed:\n" + "\n".join(
        f"=== process {i} (exit {p.returncode}) ===\n{_tail(log)}"
        for i, (p, log) in enumerate(zip(self.processes, self.logs))))

  def close(self) -> None:
    for process in self.processes:
      try:
        process.stdin.write("stop\n")
        process.stdin.close()
      except OSError:  # It has ended.
        pass
    for process in self.processes:
      try:
        process.wait(timeout=120)
      except subprocess.TimeoutExpired:  # Waiting in a collective for a dead peer.
        process.kill()
        process.wait()


def _tail(path: str, chars: int = 3000) -> str:
  with open(path) as f:
    return f.read()[-chars:]


def _mib(n: float) -> str:
  return f"{n / 2**20:,.1f}"


def _table(names: list[str], rounds: dict[str, list[float]],
           figures: dict[str, dict[str, Any]]) -> str:
  """The markdown table; `rounds` holds each layout's median step per round."""
  lines = ["| layout | mesh (data x fsdp x tensor) | step ms | vs data | "
           "arguments MiB | temporaries MiB | total MiB | collective MiB/step | "
           "collective ops |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
  for name in names:
    f = figures[name]
    mesh = TWO_PROCESS_MESH if name == TWO_PROCESSES else LAYOUTS[name]
    ratio = statistics.median(t / d for t, d in zip(rounds[name], rounds["data"]))
    total = sum(b for _, b in f["collectives"].values())
    ops = ", ".join(f"{COLLECTIVES[op]} {c}" for op, (c, _) in
                    sorted(f["collectives"].items())) or "none"
    mesh_text = " x ".join(map(str, mesh)) + (
        " (2 x 4 devices)" if name == TWO_PROCESSES else "")
    lines.append(
        f"| {name} | {mesh_text} | "
        f"{1000 * statistics.median(rounds[name]):,.0f} | {ratio:.2f} | "
        f"{_mib(f['argument_bytes'])} | {_mib(f['temp_bytes'])} | "
        f"{_mib(f['total_bytes'])} | {_mib(total)} | {ops} |")
  return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
  names = [n for n in [*LAYOUTS, TWO_PROCESSES]
           if not args.only or n in args.only or n == "data"]
  print(f"GPT hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
        f"batch {args.batch} x {args.seq_len} tokens; {jax.device_count()} x "
        f"{jax.devices()[0].platform}, {os.cpu_count()} CPU cores, "
        f"jax {jax.__version__}", flush=True)
  layouts, figures = {}, {}
  rounds = {name: [] for name in names}
  with tempfile.TemporaryDirectory() as log_dir:
    # The workers compile while this process does (compilation is not timed).
    two = TwoProcesses(args, log_dir) if TWO_PROCESSES in names else None
    try:
      for name in names:
        if name != TWO_PROCESSES:
          layouts[name] = Layout(args, LAYOUTS[name])
          figures[name] = layouts[name].figures()
          print(f"  compiled {name}: {layouts[name].compile_s:.1f} s", flush=True)
      if two:
        two.wait_ready()
      for i in range(args.repeats):
        for name in (names if i % 2 == 0 else reversed(names)):
          if name == TWO_PROCESSES:
            times, figures[name] = two.round()
          else:
            times = layouts[name].run(args.steps)
          rounds[name].append(statistics.median(times))
          print(f"  round {i + 1} {name}: median {1000 * rounds[name][-1]:,.0f} "
                f"ms ({', '.join(f'{1000 * t:,.0f}' for t in times)})", flush=True)
    finally:
      if two:
        two.close()
  print(f"\n{figures['data']['parameters']:,} parameters; {args.steps} timed steps "
        f"per layout and round, {args.repeats} rounds\n")
  print(_table(names, rounds, figures))


if __name__ == "__main__":
  if ARGS.worker:
    worker(ARGS)
  else:
    main(ARGS)
