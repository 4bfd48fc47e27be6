"""Will it fit? `ctjax compile`: the train step compiled for a machine you do not
have, before paying for it.

  ctjax compile --config configs/gpt_stdlib.py:size=1b --topology v5e-256
  ctjax compile --config configs/default.py --topology h100x8 [--json out.json]

The config's train step (the very program `ctjax train` would run: model,
optimizer, shardings over `config.mesh`) is compiled ahead of time for the
target's devices, and the compiled program's own accounting is printed: per
device memory (arguments = parameters, optimizer state and the batch; outputs;
temporaries = activations and workspace), against the chip's memory, and the
step's FLOPs, with the step time that would mean at the chip's peak.

Targets:
  TPU slices by their Cloud names, v4-32, v5p-128, v5e-256 (v5litepod-256),
  v6e-64, or an explicit topology, v5e:16x16, v4:2x2x4. They compile with
  libtpu's topology descriptions, as on the real slice, without a TPU: XLA:TPU
  itself decides whether the program fits (pip install 'ctjax[tpu]'). v4 and
  v5p names count TensorCores, two per chip (one JAX device, "megacore");
  v5e and v6e names count chips.
  GPUs, h100x8, h200x8, a100x8 (or a100-80gbx8): XLA can target a GPU only
  where the CUDA plugin finds one, so these compile the same program on as
  many fake CPU devices instead, and so do TPU targets where libtpu is not
  installed. That is labelled an estimate: same mesh, same shardings, same
  parameter and optimizer bytes, but XLA:CPU's buffer assignment and fusion,
  not the accelerator's, so temporaries may differ.

Exit status 0 when the step fits, 2 (one line naming what to try) when it does
not or the input is wrong. Only the train step is checked: evaluation steps
(config.eval_batch_size) and the host's memory are not.
"""
import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import topologies
import numpy as np

from ctjax.errors import UserError

# GPU names: chip -> the device_kind the chip table knows it by.
_GPUS = {"h100": "NVIDIA H100", "h200": "NVIDIA H200",
         "a100": "NVIDIA A100-SXM4-40GB", "a100-80gb": "NVIDIA A100-SXM4-80GB"}
_GPUS_PER_HOST = 8
# TPU generations: (topology prefix, device_kind, dimensions, cores per name unit).
# v4 and v5p are named by TensorCores, two per chip; v5e and v6e by chips.
_TPUS = {"v4": ("v4", "TPU v4", 3, 2), "v5p": ("v5p", "TPU v5", 3, 2),
         "v5e": ("v5e", "TPU v5 lite", 2, 1), "v5litepod": ("v5e", "TPU v5 lite", 2, 1),
         "v6e": ("v6e", "TPU v6 lite", 2, 1)}
# JAX on a GPU preallocates this fraction of memory for its pool by default; a
# program must fit in the pool (XLA_PYTHON_CLIENT_MEM_FRACTION changes it).
_GPU_POOL_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Target:
  name: str                 # as the user wrote it
  platform: str             # "tpu" or "gpu"
  device_kind: str          # for the chip table (ctjax/throughput.py)
  num_devices: int
  num_hosts: int
  topology: str | None = None     # libtpu's name, e.g. "v5e:16x16"
  chip_config: str | None = None  # "megacore" for v4 and v5p


def _torus(chips: int, dims: int) -> tuple[int, ...]:
  """The slice shape of `chips` chips: doubling the smallest (last of equals)
  dimension from 1x1 (v5e, v6e) or 2x2x1 (v4, v5p), as Cloud TPU shapes its
  slices: 16 chips are 4x4 or 2x2x4, 64 are 8x8 or 4x4x4."""
  shape = [1, 1] if dims == 2 else [2, 2, 1]
  while math.prod(shape) < chips:
    smallest = min(shape)
    i = max(j for j, s in enumerate(shape) if s == smallest)
    shape[i] *= 2
  return tuple(shape)


def parse_target(name: str) -> Target:
  """A --topology value as a Target; UserError naming the accepted forms."""
  forms = ("TPU slices v4-32, v5p-128, v5e-256, v6e-64 or topologies v5e:16x16, "
           "v4:2x2x4; GPUs h100x8, h200x8, a100x8, a100-80gbx8")
  lower = name.lower()
  if match := re.fullmatch(r"(h100|h200|a100|a100-80gb)x(\d+)", lower):
    count = int(match[2])
    return Target(name, "gpu", _GPUS[match[1]], count,
                  -(-count // _GPUS_PER_HOST))
  if match := re.fullmatch(r"(v4|v5p|v5e|v5litepod|v6e)-(\d+)", lower):
    prefix, kind, dims, per_chip = _TPUS[match[1]]
    units = int(match[2])
    chips = units // per_chip
    if units % per_chip or chips < 1 or chips & (chips - 1):
      raise UserError(f"--topology {name}: {match[1]} slices come in powers of two"
                      f"{' of TensorCores, two per chip' if per_chip == 2 else ''}"
                      f", e.g. {match[1]}-{8 * per_chip}")
    shape = _torus(chips, dims)
    topology = f"{prefix}:{'x'.join(map(str, shape))}"
  elif match := re.fullmatch(r"(v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})", lower):
    prefix, kind, dims, per_chip = _TPUS[match[1]]
    shape = tuple(int(s) for s in match[2].split("x"))
    if len(shape) != dims:
      raise UserError(f"--topology {name}: {match[1]} topologies have {dims} "
                      f"dimensions, e.g. {prefix}:{'x'.join(['4'] * dims)}")
    chips, topology = math.prod(shape), lower
  else:
    raise UserError(f"--topology {name!r}: not a target this knows; use {forms}")
  # Cloud TPU VMs hold 4 chips, but an 8-chip v5e or v6e slice is one VM (the
  # hosts' count only sets how many processes feed the batch).
  per_host = 8 if dims == 2 and chips == 8 else min(chips, 4)
  return Target(name, "tpu", kind, chips, max(chips // per_host, 1),
                topology=topology, chip_config="megacore" if per_chip == 2 else None)


def prepare_environment(target: Target) -> None:
  """Before JAX starts a backend: this process's CPU gets as many fake devices
  as the target has, for the fallback, and JAX uses no accelerator here (the
  target is elsewhere; libtpu would otherwise look for a local TPU)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "",
                 os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = (
      f"{flags} --xla_force_host_platform_device_count={target.num_devices}".strip())
  os.environ["JAX_PLATFORMS"] = "cpu"


@contextlib.contextmanager
def _quiet_stderr():
  """libtpu, started where there is no TPU, logs complaints about the missing
  TPU hosts from C++ (unconditionally, on file descriptor 2); they are expected
  here and would bury the report. Errors still arrive as exceptions."""
  sys.stderr.flush()
  saved = os.dup(2)
  with open(os.devnull, "w") as devnull:
    os.dup2(devnull.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def target_devices(target: Target) -> tuple[list[Any], str | None]:
  """(the devices to compile for, None) for the real target, or (as many fake
  CPU devices, why) for the estimate."""
  if target.platform == "tpu" and importlib.util.find_spec("libtpu") is None:
    reason = ("libtpu is not installed (pip install 'ctjax[tpu]' compiles for "
              "the TPU itself)")
  elif target.platform == "tpu":
    kwargs = {"chip_config_name": target.chip_config} if target.chip_config else {}
    try:
      with _quiet_stderr():
        topology = topologies.get_topology_desc(
            topology_name=target.topology, platform="tpu", **kwargs)
      return list(topology.devices), None
    except Exception as e:  # pylint: disable=broad-except
      reason = f"libtpu could not describe {target.topology}: {str(e)[:200]}"
  else:
    reason = ("XLA targets a GPU only through the CUDA plugin on a machine with "
              "one")
  with _quiet_stderr():  # Where libtpu is installed, JAX asks it for a TPU first.
    devices = jax.devices("cpu")
  if len(devices) != target.num_devices:
    raise UserError(f"--topology {target.name}: the estimate needs "
                    f"{target.num_devices} CPU devices and JAX has started with "
                    f"{len(devices)}; run `ctjax compile` as its own process")
  return devices, reason


def _bytes_per_device(abstract: Any) -> int:
  """Bytes one device holds of ShapeDtypeStructs with shardings: the largest
  shard of each leaf (uneven shards: the largest decides)."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
             for x in jax.tree.leaves(abstract))


def _advice(config: Any, model: Any, state_bytes: int, budget: float,
            target: Target) -> str:
  """What to try, most promising first: the state (parameters and optimizer)
  shrinks only by sharding it; activations by remat, smaller or accumulated
  microbatches."""
  mesh = config.mesh
  layout = (f"config.mesh.fsdp=-1 config.mesh.data=1; now data={mesh.data}, "
            f"fsdp={mesh.fsdp}, tensor={mesh.tensor}")
  shard_state = (f"a larger target with parameters and optimizer state sharded "
                 f"({layout})" if target.num_devices == 1 or (
                     mesh.fsdp == -1 and mesh.data == 1) else
                 f"sharding parameters and optimizer state over every device "
                 f"({layout})")
  activations = []
  remat = getattr(model, "remat", None)
  if remat is not None and remat != "full":
    activations.append(f"config.model.remat='full' (now {remat!r})")
  activations.append(f"config.grad_accum_steps={2 * config.grad_accum_steps} "
                     f"(now {config.grad_accum_steps})")
  activations.append(f"a smaller per-device batch (config.batch_size="
                     f"{config.batch_size // 2}, now {config.batch_size}: "
                     f"{config.batch_size / target.num_devices:g} per device)")
  tries = ([shard_state] + activations if state_bytes > 0.5 * budget
           else activations + [shard_state])
  return "try " + "; or ".join(tries)


def compile_for_target(config: Any, target: Target) -> dict[str, Any]:
  """Compiles `config`'s train step for `target`; returns the figures
  (`report` prints them), "fits" False and "advice" when it does not fit;
  UserError where XLA:TPU refuses to compile it for want of memory."""
  # Imported here: every `ctjax` command imports this module for its arguments,
  # and the trainer's imports (TensorFlow for TensorBoard among them) are slow.
  # pylint: disable=g-import-not-at-top
  from ctjax import config as config_lib
  from ctjax import hf, models, privacy, sharding, tasks, throughput, train
  from ctjax.data import ops, pipeline
  from ctjax.data import splits as splits_lib
  # pylint: enable=g-import-not-at-top

  config = hf.resolve_model_config(config)
  config_lib.validate(config, device_count=target.num_devices,
                      process_count=target.num_hosts)
  model = models.get_model(config.model)
  task = tasks.get(config.task)
  # The input shapes come from the data itself (one batch of it, read here).
  source = splits_lib.open_splits(
      config.data, num_classes=getattr(model, "num_classes", None),
      vocab_size=getattr(model, "vocab_size", None))["train"]
  total_steps = train.resolve_schedule(config, len(source)).total_steps
  devices, estimate = target_devices(target)
  mesh = sharding.make_mesh(config.mesh, devices)
  loader = pipeline.BatchLoader(source, ops.compose(config.data.get("preprocess")),
                                num_threads=1)
  # DP-SGD's batches are Poisson-sampled, padded to a larger fixed size.
  dp = privacy.configure(
      config, num_examples=len(source), total_steps=total_steps,
      batch_multiple=math.lcm(mesh.shape["data"] * mesh.shape["fsdp"],
                              target.num_hosts) * config.grad_accum_steps)
  batch = (pipeline.batch_of(loader, privacy.sampled_indices(0, dp, config.seed), 0,
                             seed=config.seed) if dp else
           pipeline.train_batch(loader, 0, global_batch_size=config.batch_size,
                                seed=config.seed))
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.sharding_rules)
  example = jnp.zeros((1, *batch["inputs"].shape[1:]), batch["inputs"].dtype)
  program = train.make_train_program(
      config, model, task, mesh, rules, example, total_steps=total_steps,
      train_examples=len(source), dp=dp)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                            sharding=sharding.batch_sharding(mesh, v.ndim))
                    for k, v in batch.items()}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract_sums = jax.ShapeDtypeStruct(
      jax.eval_shape(program.metric_sums.zeros).shape, jnp.float32,
      sharding=replicated)
  chip = throughput.chip(target.device_kind)
  budget = chip.memory_bytes * (_GPU_POOL_FRACTION if target.platform == "gpu" else 1)
  state_bytes = _bytes_per_device(program.abstract_state)
  figures = {
      "target": target.name, "platform": target.platform,
      "device_kind": target.device_kind, "devices": target.num_devices,
      "hosts": target.num_hosts, "topology": target.topology,
      "compiled_for": "cpu" if estimate else target.platform, "estimate": estimate,
      "mesh": dict(mesh.shape), "batch": {k: list(v.shape) for k, v in batch.items()},
      "state_bytes": state_bytes, "memory_budget_bytes": budget,
      "memory_bytes_per_device": chip.memory_bytes,
      "peak_flops": chip.peak_flops,
  }
  try:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules), (
        contextlib.nullcontext() if estimate else _quiet_stderr()):
      compiled = program.step.lower(program.abstract_state, abstract_batch,
                                    abstract_sums).compile()
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    # XLA:TPU refuses a program that does not fit, and says by how much.
    message = str(e).split("RESOURCE_EXHAUSTED:", 1)[1].strip().split("\n")[0]
    raise UserError(f"the train step does not fit {target.name}: XLA says "
                    f"{message.rstrip('.')}; "
                    + _advice(config, model, state_bytes, budget, target)) from None
  memory = compiled.memory_analysis()
  figures.update(
      arguments_bytes=memory.argument_size_in_bytes,
      outputs_bytes=memory.output_size_in_bytes,
      aliased_bytes=memory.alias_size_in_bytes,
      temporaries_bytes=memory.temp_size_in_bytes,
      code_bytes=memory.generated_code_size_in_bytes,
      flops_per_device=throughput.train_step_flops(model, abstract_batch["inputs"])
      / target.num_devices,
      tokens_per_step=throughput.tokens_per_step(batch["inputs"], config.batch_size))
  # Donated state comes back in its own buffers: aliased bytes count once.
  figures["total_bytes"] = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                            - memory.alias_size_in_bytes + memory.temp_size_in_bytes
                            + memory.generated_code_size_in_bytes)
  figures["fits"] = figures["total_bytes"] <= budget
  if not figures["fits"]:
    figures["advice"] = _advice(config, model, state_bytes, budget, target)
  return figures


def report(figures: dict[str, Any]) -> str:
  """The figures as the command prints them."""
  gib = lambda b: f"{b / 2**30:,.2f} GiB" if b >= 2**30 else f"{b / 2**20:,.1f} MiB"
  f = figures
  where = (f"{f['devices']} x {f['device_kind']}, {f['hosts']} host(s)"
           + (f", topology {f['topology']}" if f["topology"] else ""))
  lines = [f"{f['target']}: {where}"]
  if f["estimate"]:
    lines.append(f"  ESTIMATE, compiled for {f['devices']} CPU devices with the "
                 f"same mesh: {f['estimate']}")
  lines.append(f"  mesh {f['mesh']}; batch " + ", ".join(
      f"{k} {v}" for k, v in f["batch"].items()))
  budget = f["memory_budget_bytes"]
  pool = ("" if budget == f["memory_bytes_per_device"] else
          f" (JAX's default pool, {_GPU_POOL_FRACTION:.0%} of "
          f"{gib(f['memory_bytes_per_device'])})")
  lines += [
      f"  per device: arguments {gib(f['arguments_bytes'])} (parameters and "
      f"optimizer state {gib(f['state_bytes'])}, the rest the batch), outputs "
      f"{gib(f['outputs_bytes'])} of which {gib(f['aliased_bytes'])} reuse the "
      f"donated state, temporaries {gib(f['temporaries_bytes'])}, code "
      f"{gib(f['code_bytes'])}",
      f"  total {gib(f['total_bytes'])} of {gib(budget)}{pool}: "
      f"{f['total_bytes'] / budget:.0%}, " + ("fits" if f["fits"] else "DOES NOT FIT")]
  flops = f["flops_per_device"]
  if flops:
    ideal = flops / f["peak_flops"]
    amount = (f"{flops / 1e12:,.2f} TFLOP" if flops >= 1e11 else
              f"{flops / 1e9:,.3g} GFLOP")
    line = (f"  step: {amount} per device; at the chip's peak "
            f"({f['peak_flops'] / 1e12:g} TFLOP/s) {ideal * 1e3:,.3g} ms, at 50% MFU "
            f"{2 * ideal * 1e3:,.3g} ms")
    if f["tokens_per_step"]:
      line += f" = {f['tokens_per_step'] / (2 * ideal):,.0f} tokens/s"
    lines.append(line)
  return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True,
                      help="configs/NAME.py, optionally :ARG for get_config(ARG)")
  parser.add_argument("--topology", required=True,
                      help="the target: v5e-256, v5p-128, v4-32, v6e-64, "
                      "v5e:16x16, h100x8, ... (see ctjax/aot.py)")
  parser.add_argument("--json", default=None,
                      help="also write the figures to this JSON file")
  parser.add_argument("--verbose", action="store_true",
                      help="on an error, print the full traceback too")


def compile_command(args: argparse.Namespace, overrides: list[str]) -> int:
  """`ctjax compile`: prints the report; 0 when the step fits (UserError, exit
  status 2, when it does not)."""
  target = parse_target(args.topology)
  prepare_environment(target)
  from ctjax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(args.config, overrides)
  figures = compile_for_target(config, target)
  if not figures["estimate"]:
    figures["libtpu"] = importlib.metadata.version("libtpu")
  print(f"ctjax compile {args.config}" + "".join(f" --config.{o}" for o in overrides))
  print(report(figures), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(figures, f, indent=2)
  if not figures["fits"]:
    raise UserError(
        f"the train step needs {figures['total_bytes'] / 2**30:,.2f} GiB per device "
        f"on {target.name}, more than its {figures['memory_budget_bytes'] / 2**30:,.2f}"
        f" GiB; " + figures["advice"])
  return 0
