"""The trainer: one program, top to bottom.

  1. check the config against the devices     5. train and eval steps, compiled
  2. mesh                                     6. restore or initialise
  3. data                                     7. the loop: step, log, evaluate,
  4. model, optimizer, sharded init              checkpoint, stop on SIGTERM

Fork this file into experiments/<project>/ for an unusual idea; the reusable parts
live in the modules it imports. Every process runs this same program.
"""
import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import optax

from ctjax import checkpoint
from ctjax import config as config_lib
from ctjax import durations
from ctjax import evaluators as evaluators_lib
from ctjax import hf
from ctjax import models
from ctjax import monitor
from ctjax import optim
from ctjax import peft
from ctjax import privacy
from ctjax import profiling
from ctjax import report
from ctjax import runs
from ctjax import search
from ctjax import sharding
from ctjax import tasks
from ctjax import throughput
from ctjax import watchdog
from ctjax import writers
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError

info = writers.info


@dataclasses.dataclass
class Schedule:
  """The run's durations, resolved to steps (0 = never)."""
  total_steps: int
  log_every: int
  checkpoint_every: int


def resolve_schedule(config: ml_collections.ConfigDict, train_examples: int) -> Schedule:
  to_steps = functools.partial(durations.to_steps, global_batch_size=config.batch_size,
                               train_examples=train_examples)
  total = to_steps(config.train_duration, key="train_duration")
  if total < 1:
    raise UserError(f"config.train_duration={config.train_duration!r}: is less than "
                    "one step")
  return Schedule(
      total_steps=total,
      log_every=to_steps(config.log_every, key="log_every"),
      checkpoint_every=to_steps(config.checkpoint.every, key="checkpoint.every"))


# What a train step reports, the loss first: a diverged run is reported by its
# loss where it can be.
TRAIN_METRICS = ("loss", "grad_norm")


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    grad_accum_steps: int,
                    model_params: Callable[[Any, Any], Any] = peft.join,
                    per_example_loss: Callable[[jax.Array, jax.Array], jax.Array]
                    = tasks.get("classification").per_example_loss):
  """The update: k microbatches summed, normalised by the step's real count.

  The step returns the new state and the metrics named in TRAIN_METRICS.

  The state's `params` are what trains; its `frozen` parameters are passed
  through unchanged, and the model sees `model_params(params, frozen)` (with LoRA,
  the adapters added into their kernels: see ctjax/peft.py). Only `params` are
  differentiated, so frozen parameters cost no gradient and no optimizer state.

  `per_example_loss(outputs, labels)` is the task's (ctjax/tasks/): the loss of
  each example (or token), which DP-SGD would clip. The loss is a sum over real
  examples (or tokens) divided by their count over the
  whole global batch, so k microbatches of b give the same update as one batch of
  k*b, and padding never dilutes the loss. Dividing the loss rather than the
  gradients leaves one scalar in the backward pass instead of a division per
  parameter.
  """

  def normalized_loss(params, frozen, batch, rng, denominator):
    logits = model.apply({"params": model_params(params, frozen)}, batch["inputs"],
                         train=True, rngs={"dropout": rng})
    losses = per_example_loss(logits, batch["label"])
    return jnp.sum(jnp.where(batch["mask"] > 0, losses * batch["mask"], 0.0)
                   ) / denominator

  grad_fn = jax.value_and_grad(normalized_loss)

  def train_step(state, batch):
    rng = jax.random.fold_in(state["rng"], state["step"])
    denominator = jnp.maximum(jnp.sum(batch["mask"]), 1.0)
    if grad_accum_steps == 1:
      loss, grads = grad_fn(state["params"], state["frozen"], batch, rng,
                            denominator)
    else:
      # Microbatch i takes rows i, i+k, i+2k, ...: every device keeps an equal share
      # of every microbatch, so no data moves between devices.
      def split(x):
        x = x.reshape(x.shape[0] // grad_accum_steps, grad_accum_steps, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

      def accumulate(carry, xs):
        i, micro = xs
        value, grads = grad_fn(state["params"], state["frozen"], micro,
                               jax.random.fold_in(rng, i), denominator)
        return jax.tree.map(jnp.add, carry, (value, grads)), None

      zeros = (jnp.zeros((), jnp.float32),
               jax.tree.map(jnp.zeros_like, state["params"]))
      (loss, grads), _ = jax.lax.scan(
          accumulate, zeros,
          (jnp.arange(grad_accum_steps), jax.tree.map(split, batch)))
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = dict(state, step=state["step"] + 1,
                     params=optax.apply_updates(state["params"], updates),
                     opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  return train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
  """Steps 4 and 5 of `train` before any array exists: shapes, shardings and the
  jitted step. `train` initialises and runs it; `ctjax compile` (ctjax/aot.py)
  compiles it for a machine it is not running on."""
  transfer: peft.Plan          # what trains: config.optim.groups, layer_decay, lora
  lr_schedule: optax.Schedule
  init_state: Callable[[jax.Array], Any]  # rng -> state, params logically boxed
  abstract_state: Any          # ShapeDtypeStructs carrying their shardings
  state_shardings: Any
  full_opt_state: Any          # the optimizer state were every parameter trained
  metric_sums: "MetricSums"
  step: Any                    # jitted (state, batch, sums) -> (state, sums)


def make_train_program(config: ml_collections.ConfigDict, model: nn.Module,
                       task: Any, mesh: jax.sharding.Mesh, rules: Any,
                       example_inputs: Any, *, total_steps: int,
                       train_examples: int | None,
                       dp: privacy.Privacy | None = None) -> TrainProgram:
  """The state's layout over `mesh` and the sharded train step for `model`
  (DP-SGD's, ctjax/privacy.py, with `dp`).

  `example_inputs` is one example's inputs with a leading batch axis of 1;
  nothing is computed, only traced.
  """
  init_params = lambda rng: model.init({"params": rng}, example_inputs,
                                       train=False)["params"]
  rng = jax.random.PRNGKey(config.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed_params = jax.eval_shape(init_params, rng)
  transfer = peft.make_plan(config, boxed_params)
  make_optimizer = functools.partial(
      optim.make_optimizer, config.optim, total_steps=total_steps,
      global_batch_size=config.batch_size, train_examples=train_examples)
  tx, lr_schedule = make_optimizer(groups=transfer.labels_and_multipliers())

  def init_state(rng):
    params, frozen = transfer.split(init_params(rng), jax.random.fold_in(rng, 2))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "frozen": frozen,
            "opt_state": tx.init(params), "rng": jax.random.fold_in(rng, 1)}

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_state, rng)
  abstract_state, state_sh = sharding.abstract_state(boxed, mesh, rules)
  if dp:  # Per-example clipping and noise (ctjax/privacy.py).
    step_fn = privacy.make_private_train_step(
        model, tx, dp, config.grad_accum_steps, transfer.model_params,
        task.per_example_loss)
  else:
    step_fn = make_train_step(model, tx, config.grad_accum_steps,
                              transfer.model_params, task.per_example_loss)
  metric_sums = MetricSums()

  def step_with_sums(state, batch, sums):
    state, metrics = step_fn(state, batch)
    return state, metric_sums.add(sums, metrics)

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  step = jax.jit(
      step_with_sums,
      in_shardings=(state_sh, sharding.batch_sharding(mesh, 1), replicated),
      out_shardings=(state_sh, replicated), donate_argnums=0)
  return TrainProgram(
      transfer=transfer, lr_schedule=lr_schedule, init_state=init_state,
      abstract_state=abstract_state, state_shardings=state_sh,
      full_opt_state=jax.eval_shape(make_optimizer()[0].init,
                                    nn.meta.unbox(boxed_params)),
      metric_sums=metric_sums, step=step)


def _abstract_batch(batch: dict[str, Any], mesh) -> dict[str, Any]:
  """Global shapes and shardings of a batch: a global one (jax.Arrays, or their
  ShapeDtypeStructs), or one process's share (NumPy)."""
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=v.sharding)
          if isinstance(v, (jax.Array, jax.ShapeDtypeStruct)) else
          jax.ShapeDtypeStruct((v.shape[0] * jax.process_count(), *v.shape[1:]),
                               v.dtype, sharding=sharding.batch_sharding(mesh, v.ndim))
          for k, v in batch.items()}


class CompiledPerShape:
  """A jitted step, compiled ahead of time once for each batch shape it meets.

  Fixed-shape data compile one program, before the loop (so its memory can be
  reported and a program that does not fit fails before training starts). Texts
  padded to length buckets (config.data.length_buckets) compile one per bucket,
  when a batch of that length first arrives; `jax.jit`'s own cache would do the
  same, but a program compiled ahead of time takes its arguments with less
  per-call overhead and is the same object the memory report describes.
  """

  def __init__(self, jitted, mesh, abstract_state, abstract_sums):
    self._jitted, self._mesh = jitted, mesh
    self._abstract_state, self._abstract_sums = abstract_state, abstract_sums
    self._compiled = {}

  def compile(self, batch: dict[str, Any]):
    """The program for batches shaped like `batch` (compiled on first use)."""
    key = tuple(v.shape for v in batch.values())
    if key not in self._compiled:
      self._compiled[key] = self._jitted.lower(
          self._abstract_state, _abstract_batch(batch, self._mesh),
          self._abstract_sums).compile()
      # Each process compiled at its own pace; they go on together, as the
      # program may connect new groups of devices (see sharding.sync_processes).
      sharding.sync_processes("train step compiled")
    return self._compiled[key]

  def __call__(self, state, batch, sums):
    return self.compile(batch)(state, batch, sums)


def _memory_report(compiled) -> str:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return "  memory analysis not available on this backend"
  if m is None:
    return "  memory analysis not available on this backend"
  mib = lambda b: f"{b / 2**20:,.1f} MiB"
  return (f"  arguments {mib(m.argument_size_in_bytes)}, outputs "
          f"{mib(m.output_size_in_bytes)}, temporaries {mib(m.temp_size_in_bytes)}, "
          f"code {mib(m.generated_code_size_in_bytes)} (per device)")


class _Preemption:
  """Turns SIGTERM (how TPU VMs and schedulers preempt) into a clean stop."""

  def __init__(self):
    self.requested = False
    # With several processes, jax.distributed.initialize has installed JAX's own
    # SIGTERM handler (the preemption notifier, in C++); a Python handler would
    # replace it, and no process would ever reach the preemption sync point.
    self._previous = None
    if jax.process_count() == 1:
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def reached(self, step: int, manager) -> bool:
    # With several processes, all must agree on the step to stop at; Orbax asks
    # JAX's preemption sync service, which also listens for the signal.
    if jax.process_count() > 1:
      return manager.reached_preemption(step)
    return self.requested

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass(frozen=True)
class MetricSums:
  """A log interval's step metrics, summed on the devices in one float32 vector.

  The loop fetches the sums once per log (and before each save) instead of every
  step's metrics, and the step returns one small vector instead of a few scalars:
  each array a step returns costs the host microseconds, and each one fetched tens,
  per step as much as a small model's whole step on an accelerator.

  Layout: [steps, first_bad, sum of each metric..., each metric at first_bad...],
  where first_bad is the position in the interval (from 1) of the first step with
  a non-finite metric, 0 if none, so a diverged run is still stopped naming the
  step that diverged. A non-finite gradient norm counts: it poisons the params
  before the loss shows it. (float32 counts are exact up to 2**24 steps a log.)
  """
  names: tuple[str, ...] = TRAIN_METRICS

  def zeros(self) -> jax.Array:
    return jnp.zeros(2 + 2 * len(self.names), jnp.float32)

  def add(self, sums: jax.Array, metrics: dict[str, jax.Array]) -> jax.Array:
    """`sums` with one more step's `metrics` (inside the compiled step)."""
    if set(metrics) != set(self.names):  # Checked once, when the step is traced.
      raise ValueError(f"the train step returns metrics {sorted(metrics)}; "
                       f"MetricSums sums {self.names}: make them agree")
    n = len(self.names)
    values = jnp.stack([metrics[k].astype(jnp.float32) for k in self.names])
    steps = sums[0] + 1
    first_bad = (sums[1] == 0) & ~jnp.all(jnp.isfinite(values))
    return jnp.concatenate([
        jnp.stack([steps, jnp.where(first_bad, steps, sums[1])]),
        sums[2:2 + n] + values,
        jnp.where(first_bad, values, sums[2 + n:])])

  def read(self, sums: jax.Array, first_step: int) -> dict[str, float]:
    """Fetches the sums of steps first_step+1, ...; raises if one diverged."""
    sums, n = np.asarray(jax.device_get(sums), np.float64), len(self.names)
    if sums[1] > 0:
      step = first_step + int(sums[1])
      for name, value in zip(self.names, sums[2 + n:]):
        if not np.isfinite(value):
          raise UserError(f"train/{name} is {value} at step {step}: the run "
                          "diverged; lower config.optim.lr, enable "
                          "config.optim.clip_norm or check the data; the last good "
                          "checkpoint is kept")
    return {"steps": int(sums[0]), **dict(zip(self.names, sums[2:2 + n]))}


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains (or resumes) the run in `workdir`; returns the final metrics."""
  # --- 1. Check the config against the devices, before anything compiles. ------
  # A Hugging Face model_init brings its architecture (its config.json).
  config = hf.resolve_model_config(config)
  config_lib.validate(config, device_count=jax.device_count(),
                      process_count=jax.process_count())
  model = models.get_model(config.model)
  task = tasks.get(config.task)  # classification, multilabel or regression
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config_lib.to_json(config))

  # --- 2. Mesh. ------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.sharding_rules)
  info(f"mesh {dict(mesh.shape)} over {jax.device_count()} {jax.devices()[0].platform} "
       f"devices, {jax.process_count()} process(es)")

  # --- 3. Data. -------------------------------------------------------------------
  splits = splits_lib.open_splits(
      config.data, state_dir=workdir, write_state=jax.process_index() == 0,
      num_classes=getattr(model, "num_classes", None),
      vocab_size=getattr(model, "vocab_size", None))
  for name in set(config.eval_splits) | set(config.final_eval_splits) | {"train"}:
    if name not in splits:
      raise UserError(f"config.eval_splits: no split {name!r}; the data config "
                      f"defines {', '.join(splits)}")
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "splits.json"), "w") as f:
      json.dump(splits_lib.describe(config.data, splits), f, indent=2)
  train_source = splits["train"]
  sched = resolve_schedule(config, len(train_source))
  preprocess = ops.compose(config.data.get("preprocess"))
  # Texts of similar lengths share training batches (config.data.group_by_length).
  loaders = {name: pipeline.BatchLoader(
      s, preprocess, num_threads=config.data.num_threads,
      group_by_length=name == "train" and config.data.get("group_by_length", False))
             for name, s in splits.items()}
  eval_batch_size = config.eval_batch_size or config.batch_size
  # Differential privacy (config.privacy, ctjax/privacy.py): each step's batch is
  # Poisson-sampled and padded to a fixed size; the update is DP-SGD's.
  batch_multiple = math.lcm(mesh.shape["data"] * mesh.shape["fsdp"],
                            jax.process_count()) * config.grad_accum_steps
  dp = privacy.configure(config, num_examples=len(train_source),
                         total_steps=sched.total_steps, batch_multiple=batch_multiple)
  if dp:
    privacy.record(workdir, dp, write=jax.process_index() == 0)
    info(dp.describe() + f"; epsilon after {sched.total_steps} steps "
         f"{dp.epsilon(sched.total_steps):.4g}")
    batch_for_step = lambda s: pipeline.batch_of(
        loaders["train"], privacy.sampled_indices(s, dp, int(config.seed)), s,
        seed=int(config.seed), process_index=jax.process_index(),
        process_count=jax.process_count())
  else:
    batch_for_step = functools.partial(  # Plain values: this runs once per step.
        pipeline.train_batch, loaders["train"],
        global_batch_size=int(config.batch_size), seed=int(config.seed),
        process_index=jax.process_index(), process_count=jax.process_count())
  first_batch = batch_for_step(0)
  problem = task.check_labels(first_batch["label"])
  if problem:
    raise UserError(f"config.task={config.task!r}: the training split's {problem}")

  # --- 4. Model, optimizer, sharded init. ---------------------------------------
  dummy_inputs = jnp.zeros((1, *first_batch["inputs"].shape[1:]),
                           first_batch["inputs"].dtype)
  if jax.process_index() == 0:  # `ctjax export` and `eval` rebuild the model.
    runs.write_model_inputs(workdir, dummy_inputs)
  program = make_train_program(config, model, task, mesh, rules, dummy_inputs,
                               total_steps=sched.total_steps,
                               train_examples=len(train_source), dp=dp)
  transfer, metric_sums = program.transfer, program.metric_sums
  abstract_state, state_sh = program.abstract_state, program.state_shardings
  info("parameters:\n" + sharding.describe_params(abstract_state["params"],
                                                  state_sh["params"]))
  info(transfer.describe() + "\n" + peft.describe_optimizer_memory(
      abstract_state["opt_state"], program.full_opt_state))
  # The task's metrics on whole splits, linear probes, few-shot, ...
  # (config.evaluators): checked now, run in the loop below.
  scheduled_evaluators = evaluators_lib.make_evaluators(
      evaluators_lib.configured(config), model=model, loaders=loaders, mesh=mesh,
      batch_size=eval_batch_size, data_config=config.data,
      train_batch_size=config.batch_size, train_examples=len(train_source),
      model_params=lambda trained: transfer.model_params(*trained),
      on_batch=lambda: hang_watchdog.step_finished(), task=config.task,
      output_dir=os.path.join(workdir, "eval", "final"))

  # --- 5. Train and eval steps, compiled ahead of time. -------------------------
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  root_rng = jax.random.PRNGKey(config.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    zero_sums = jax.jit(metric_sums.zeros, out_shardings=replicated)()
    # The sums are not donated: every log interval starts from these same zeros.
    train_step = CompiledPerShape(program.step, mesh, abstract_state, zero_sums)
    fresh_state = jax.jit(lambda r: nn.meta.unbox(program.init_state(r)),
                          out_shardings=state_sh)
    first_program = train_step.compile(first_batch)
  info("train step memory:\n" + _memory_report(first_program))
  # What a step computes, for the throughput and MFU in the log: the model's
  # FLOPs for the global batch, each device's share (ctjax/throughput.py; with
  # length buckets, the first batch's length).
  global_inputs = (first_batch["inputs"].shape[0] * jax.process_count(),
                   *first_batch["inputs"].shape[1:])
  step_flops = throughput.train_step_flops(model, jax.ShapeDtypeStruct(
      global_inputs, first_batch["inputs"].dtype)) / jax.device_count()
  peak = throughput.peak_flops(jax.devices()[0].device_kind, config.peak_flops)
  tokens_per_step = throughput.tokens_per_step(first_batch["inputs"],
                                               config.batch_size)
  if step_flops:
    info(f"train step: {step_flops / 1e9:,.4g} model GFLOP per device; " + (
        f"peak {peak / 1e12:,.4g} TFLOP/s per device" if peak else
        "no peak FLOP/s known for this device: set config.peak_flops for MFU"))

  # --- 6. Restore or initialise. --------------------------------------------------
  manager = checkpoint.make_manager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                    config.checkpoint)
  state, position, origin = checkpoint.restore_or_initialize(
      manager, config, abstract_state, lambda: fresh_state(root_rng),
      new_params=(peft.ADAPTER_PATTERN,))
  start_step = int(position["step"]) if position else 0
  info(f"{origin}; training steps {start_step}..{sched.total_steps}")

  # --- 7. The loop. ----------------------------------------------------------------
  writer = writers.MetricWriter(workdir, start_step=start_step,
                               tensorboard=config.tensorboard)
  preemption = _Preemption()
  sums = zero_sums  # This log interval's metric sums, on the devices.
  batches = pipeline.prefetch(
      (batch_for_step(s) for s in range(start_step, sched.total_steps)),
      size=config.data.prefetch)
  if jax.process_count() > 1:
    batches = pipeline.to_device(batches,
                                 transfer=lambda b: sharding.global_batch(b, mesh))
  # else the compiled step takes the NumPy batch itself and copies it to the
  # devices (split by its in_shardings) in C++ as it dispatches: ~20 us a step
  # instead of ~300 us for assembling jax.Arrays in Python, which matters when a
  # step takes a millisecond (small models on accelerators). Dispatch runs ahead
  # of the devices, so the copy still overlaps the previous step.
  # The schedule's eager ops compile now, not inside a timed interval.
  program.lr_schedule(start_step)
  tick, tick_step = time.perf_counter(), start_step
  last_save_time, time_to_save = time.monotonic(), False
  # XLA's CPU runtime deadlocks with many queued programs that hold collectives
  # ("Expected 8 threads to join the rendezvous"), so on several CPU devices at
  # most two steps are in flight. One device has no collectives; accelerators
  # queue freely.
  wait_each_step = jax.devices()[0].platform == "cpu" and jax.device_count() > 1

  def run_evals(due_evaluators, step, final=False):
    nonlocal tick
    # On CPU, two programs with collectives in flight at once can deadlock XLA's
    # in-process rendezvous; let the queued train steps finish first.
    jax.block_until_ready(state)
    started = time.perf_counter()
    results = {}
    for evaluator in due_evaluators:  # Each takes (params, frozen), as in the state.
      results.update(evaluator.run((state["params"], state["frozen"]), final=final))
    writer.write(step, results)
    info(f"step {step}: {writers.format_scalars(results)}")
    # Evaluation is not training: its time leaves the interval that
    # train/steps_per_s and the ETA measure (the steps before it were waited for).
    tick += time.perf_counter() - started
    return results

  def save(step, metrics=None, force=False):
    metric_sums.read(sums, first_step=tick_step)  # Never save a diverged state.
    # Orbax ranks checkpoints by config.checkpoint.best_metric: a checkpoint
    # whose step evaluated others only (a linear probe, say) is not ranked.
    # A step without the metric (or without any evaluation: final_eval_splits
    # may be empty) saves with None, never {}, which Orbax would try to rank.
    best = config.checkpoint.best_metric
    if best and best not in (metrics or {}):
      if force and metrics:  # The end of training: the metric was never evaluated.
        info(f"config.checkpoint.best_metric={best!r} is not among the final "
             f"metrics ({', '.join(sorted(metrics))}); no checkpoint is ranked")
      metrics = None
    position = {"step": step, "seed": config.seed,
                "examples_seen": step * config.batch_size}
    if dp:  # The privacy spent by the state saved.
      position["epsilon"] = dp.epsilon(step)
    checkpoint.save(manager, state, position,
                    metrics=metrics, force=force)

  # A hung run prints every thread's stack and exits (config.watchdog_minutes).
  hang_watchdog = watchdog.Watchdog(config.watchdog_minutes)
  # In a hyperparameter search, the search's pruner may stop this trial early.
  pruning = search.trial_pruning()
  trace = profiling.StepTrace(config.profile, os.path.join(workdir, "profile"))
  try:
    hang_watchdog.start()
    step = start_step
    for step in range(start_step + 1, sched.total_steps + 1):
      trace.before_step(step)
      previous_sums = sums
      state, sums = train_step(state, next(batches), sums)
      hang_watchdog.step_finished()
      if wait_each_step:  # A wait for the previous step, not a fetch.
        jax.block_until_ready(previous_sums)
      if summary := trace.after_step(step, state):
        info(f"profile of steps {trace.first}..{step}:\n{summary}")

      if sched.log_every and step % sched.log_every == 0 or step == sched.total_steps:
        totals = metric_sums.read(sums, first_step=tick_step)
        now = time.perf_counter()
        steps_per_s = (step - tick_step) / (now - tick)
        scalars = {f"train/{k}": totals[k] / totals["steps"]
                   for k in metric_sums.names}
        scalars["train/lr"] = float(program.lr_schedule(step - 1))
        scalars["train/steps_per_s"] = steps_per_s
        scalars["train/examples_per_s"] = steps_per_s * config.batch_size
        scalars.update(throughput.scalars(step_flops, steps_per_s, peak,
                                          tokens_per_step))
        if dp:  # The accounting takes a fraction of a second: not training time.
          scalars["privacy/epsilon"] = dp.epsilon(step)
          now = time.perf_counter()
        writer.write(step, scalars)
        eta = (sched.total_steps - step) / max(steps_per_s, 1e-9)
        info(f"step {step}/{sched.total_steps}  {writers.format_scalars(scalars)}  "
             f"ETA {eta:.0f}s")
        sums = zero_sums
        tick, tick_step = now, step
        # The wall-clock checkpoint trigger is read here, where no step is in
        # flight, since agreeing on it across processes is itself a collective.
        if config.checkpoint.every_minutes > 0:
          time_to_save = (time.monotonic() - last_save_time >
                          60 * config.checkpoint.every_minutes)
          if jax.process_count() > 1:
            time_to_save = bool(multihost_utils.broadcast_one_to_all(time_to_save))

      is_last = step == sched.total_steps
      due = [e for e in scheduled_evaluators if e.due(step, sched.total_steps)]
      evaluated = {}  # This step's metrics, which a checkpoint of it keeps.
      if due and not is_last:
        evaluated = run_evals(due, step)
      # The last step is saved after the final evaluation, and a step saves once:
      # Orbax refuses a second save of a step.
      saved = False
      if ((sched.checkpoint_every and step % sched.checkpoint_every == 0)
          or time_to_save) and not is_last:
        save(step, metrics=evaluated or None)
        last_save_time, time_to_save, saved = time.monotonic(), False, True
      stop = ""  # Why the run stops before its end, if it does.
      if pruning and evaluated and pruning.should_stop(step, evaluated):
        stop = (f"pruned by the search ({pruning.metric}="
                f"{evaluated[pruning.metric]:.4g})")
        writer.write(step, {search.PRUNED_METRIC: 1.0})
      elif preemption.reached(step, manager) and not is_last:
        stop = "SIGTERM"
      if stop:
        info(f"{stop}: saving step {step} and stopping; run again to resume")
        if not saved:
          save(step, force=True)
        manager.wait_until_finished()
        return {}

    final = run_evals(scheduled_evaluators, step, final=True)
    if config.report and jax.process_index() == 0:  # Plots and report.html.
      report_path = report.write_for_evaluation(workdir, "final", splits)
      if report_path:
        info(f"report: {report_path}")
    info(f"final, step {step}: " + writers.format_scalars(
        {k: v for k, v in final.items() if k.split("/")[-1] in task.HEADLINE}))
    if step > start_step:
      save(step, metrics=final, force=True)
    manager.wait_until_finished()
    if step > start_step:
      info(f"checkpoint of step {step}: "
           f"{checkpoint.step_bytes(manager, step):,} bytes on disk")
    # What `ctjax monitor` compares new data against (config.reference_statistics).
    monitor.save_run_reference(config, workdir, transfer.model_params(
        state["params"], state["frozen"]), splits, mesh, final)
    return final
  finally:
    trace.close()
    preemption.restore()
    writer.close()
    manager.close()
    hang_watchdog.stop()
