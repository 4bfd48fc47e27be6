"""Population mode: many trials of one config trained by one compiled program.

  results = population.train_population(
      config, [{"optim.lr": 1e-3}, {"optim.lr": 3e-3, "seed": 1}],
      ["runs/sweep/trials/lr=0.001", "runs/sweep/trials/lr=0.003,seed=1"])

A small model leaves an accelerator idle between the steps of one run. Trials
that differ only in numeric hyperparameters can instead share one program: the
trainer's own update (`train.make_train_step`) `jax.vmap`ped over the trials'
stacked train states and hyperparameters, so one dispatch runs a step of every
trial. The trials may differ in

  optim.lr, optim.weight_decay   traced: each trial's optimizer reads its own
  optim.schedule.warmup          any duration, resolved to steps per trial
  seed                           the initial parameters, dropout's random numbers,
                                 and the order of the training examples

and in nothing else: any other difference is refused, naming the key and the
trial, before anything compiles. Dropout rates are not among them: every model
family uses flax's nn.Dropout, which decides in Python whether its rate is 0, so
a per-trial (traced) rate would need the models to use a dropout of their own.

Each trial's workdir is what a lone `ctjax train` of its config would leave:
config.json, splits.json, model_inputs.json, data_state.json where the data fits
one, metrics.jsonl (the same records at the same steps, train/steps_per_s and
train/examples_per_s those of the population's steps, which all trials share),
TensorBoard files, its evaluators' metrics and files, and checkpoints in the
single-run format, saved by one Orbax manager per trial at the same steps. So
`ctjax eval --workdir TRIAL` reads a trial, and `ctjax train` can resume one
alone; running `train_population` again on the same workdirs resumes them all.

How the trials are laid out:
- State: each leaf gains a leading trial axis, replicated over the mesh (the lone
  run's PartitionSpec with None in front): a trial's step is the lone run's step,
  sharded as it is. Each trial is restored or initialised as its lone run would
  be (its workdir's checkpoint, config.resume, config.model_init, its seed), and
  the trials' states stacked.
- Batches: trials with one seed read the same examples, so one batch is shared
  (vmap in_axes=None, no copies). With different seeds each trial gets its own
  batch, stacked as [batch, trials, ...]: the batch axis stays first, where the
  trainer's batch shardings and `CompiledPerShape` split it over the devices.
- Evaluation is rare: trials are evaluated one after the other, each by its own
  evaluators, with its own parameters sliced from the stacked state, as are
  checkpoints.

A trial whose loss or gradient becomes non-finite stops as a lone run would (its
metrics end at its last good log, its checkpoints at the last good save; its
result is {}), while the others train on. Trials of one population are saved at
the same steps and resume together: workdirs whose checkpoints are of different
steps are refused.
"""
import dataclasses
import functools
import json
import os
import shutil
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
import ml_collections
import numpy as np

from ctjax import checkpoint
from ctjax import config as config_lib
from ctjax import evaluators as evaluators_lib
from ctjax import hf
from ctjax import models
from ctjax import optim
from ctjax import peft
from ctjax import report
from ctjax import runs
from ctjax import sharding
from ctjax import sweeps
from ctjax import tasks
from ctjax import throughput
from ctjax import train as train_lib
from ctjax import watchdog
from ctjax import writers
from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError

info = writers.info
# The trainer's own helpers, so that durations, the memory report and preemption
# behave as in a lone run. pylint: disable=protected-access
resolve_schedule = train_lib.resolve_schedule
_memory_report = train_lib._memory_report
_Preemption = train_lib._Preemption
# pylint: enable=protected-access

# The config keys whose values may differ between the trials of a population.
VARIED_KEYS = ("optim.lr", "optim.weight_decay", "optim.schedule.warmup", "seed")
# The key of the population's state that holds the trials' hyperparameters.
HYPERPARAMETERS = "hyperparameters"


@dataclasses.dataclass
class Trial:
  """One trial of the population: its config, its workdir and what it writes to."""
  name: str  # its overrides, as sweeps.trial_name gives them
  config: ml_collections.ConfigDict
  workdir: str
  lr_schedule: Any = None  # step -> its learning rate, for train/lr
  # The tree structure of its lone run's optimizer state, which its checkpoints
  # keep (see `_with_opt_structure`).
  opt_structure: Any = None
  evaluators: list = dataclasses.field(default_factory=list)
  manager: Any = None  # its Orbax CheckpointManager
  writer: Any = None  # its writers.MetricWriter
  diverged: str = ""  # why it stopped training, if its run diverged

  @property
  def alive(self) -> bool:
    return not self.diverged


def _flat(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{"optim.lr": 0.001, ...}: every leaf of a config under its dotted key."""
  def walk(tree, prefix):
    for key, value in tree.items():
      if isinstance(value, dict):
        yield from walk(value, f"{prefix}{key}.")
      else:
        yield f"{prefix}{key}", value
  return dict(walk(config.to_dict(), ""))


def _trial_configs(config: ml_collections.ConfigDict, trials: list[dict[str, Any]],
                   workdirs: list[str]) -> list[Trial]:
  """Each trial's resolved config, checked: one line for the first mistake."""
  if not trials or len(trials) != len(workdirs):
    raise UserError(f"population: give one workdir per trial; got {len(trials)} "
                    f"trial(s) and {len(workdirs)} workdir(s)")
  if len({os.path.abspath(w) for w in workdirs}) != len(workdirs):
    raise UserError(f"population workdirs {workdirs}: give each trial its own")
  population = []
  for trial, workdir in zip(trials, workdirs):
    name = sweeps.trial_name(trial)
    try:
      trial_config = hf.resolve_model_config(sweeps.apply(config, trial))
    except UserError as e:
      raise UserError(f"population trial {name}: {e}") from None
    population.append(Trial(name=name, config=trial_config, workdir=workdir))
  first = _flat(population[0].config)
  for trial in population[1:]:
    flat = _flat(trial.config)
    for key in sorted(set(first) | set(flat)):
      if key not in VARIED_KEYS and first.get(key) != flat.get(key):
        raise UserError(
            f"population trial {trial.name}: config.{key}={flat.get(key)!r} differs "
            f"from trial {population[0].name}'s {first.get(key)!r}; the trials of a "
            f"population may differ only in {', '.join(VARIED_KEYS[:-1])} and "
            f"{VARIED_KEYS[-1]}: train trials that differ in more one by one")
  return population


def _with_opt_structure(state: Any, structure: Any) -> Any:
  """`state` with its optimizer state's leaves in the tree `structure`.

  The trees of optimizer states may differ where they hold no arrays: a lone run
  without weight decay has no decay state at all, while in a population whose
  trials' weight decays differ every trial has one, empty. Checkpoints keep each
  trial's lone-run structure, so that its checkpoints are a lone run's.
  """
  return {**state, "opt_state": jax.tree.unflatten(
      structure, jax.tree.leaves(state["opt_state"]))}


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _with_trial_axis(shardings: Any) -> Any:
  """The lone run's shardings with a leading, replicated trial axis."""
  return jax.tree.map(
      lambda s: NamedSharding(s.mesh, PartitionSpec(None, *s.spec)), shardings)


def train_population(config: ml_collections.ConfigDict, trials: list[dict[str, Any]],
                     workdirs: list[str]) -> list[dict[str, float]]:
  """Trains (or resumes) `config` with each trial's overrides in its workdir.

  Args:
    config: the sweep's base config (loaded and validated, as `ctjax train`
      loads it).
    trials: override dicts ({"optim.lr": 3e-3, "seed": 1}) of the keys in
      VARIED_KEYS.
    workdirs: one folder per trial, in the same order.

  Returns:
    Each trial's final metrics, as `train.train` returns them: {} for a trial
    that diverged, and for all of them when SIGTERM stopped the run.
  """
  # --- 1. The trials' configs, checked against each other and the devices. ------
  population = _trial_configs(config, trials, workdirs)
  config = population[0].config  # What all trials share.
  if config.privacy:
    raise UserError("config.privacy: population mode has no DP-SGD step; train "
                    "private trials one by one (without --population)")
  for trial in population:
    config_lib.validate(trial.config, device_count=jax.device_count(),
                        process_count=jax.process_count())
  model = models.get_model(config.model)
  task = tasks.get(config.task)
  seeds = [trial.config.seed for trial in population]
  if jax.process_index() == 0:
    for trial in population:
      os.makedirs(trial.workdir, exist_ok=True)
      with open(os.path.join(trial.workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(trial.config))

  # --- 2. Mesh. ------------------------------------------------------------------
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.sharding_rules)
  info(f"population of {len(population)} trials; mesh {dict(mesh.shape)} over "
       f"{jax.device_count()} {jax.devices()[0].platform} devices, "
       f"{jax.process_count()} process(es)")

  # --- 3. Data: opened once; each workdir gets its description and fitted state. --
  splits = splits_lib.open_splits(
      config.data, state_dir=population[0].workdir,
      write_state=jax.process_index() == 0,
      num_classes=getattr(model, "num_classes", None),
      vocab_size=getattr(model, "vocab_size", None))
  for name in set(config.eval_splits) | set(config.final_eval_splits) | {"train"}:
    if name not in splits:
      raise UserError(f"config.eval_splits: no split {name!r}; the data config "
                      f"defines {', '.join(splits)}")
  if jax.process_index() == 0:
    fitted = os.path.join(population[0].workdir, splits_lib.STATE_FILE)
    for trial in population:
      if os.path.exists(fitted) and trial is not population[0]:
        shutil.copyfile(fitted, os.path.join(trial.workdir, splits_lib.STATE_FILE))
      with open(os.path.join(trial.workdir, "splits.json"), "w") as f:
        json.dump(splits_lib.describe(config.data, splits), f, indent=2)
  train_source = splits["train"]
  sched = resolve_schedule(config, len(train_source))
  shared_batch = len(set(seeds)) == 1
  if not shared_batch and getattr(train_source, "length_buckets", None):
    raise UserError(f"config.data.length_buckets={config.data.length_buckets!r}: "
                    "pads each trial's batches to its own length, and the trials' "
                    f"seeds ({', '.join(map(str, seeds))}) order the examples "
                    "differently; set config.data.length_buckets=() or give the "
                    "trials one seed")
  preprocess = ops.compose(config.data.get("preprocess"))
  loaders = {name: pipeline.BatchLoader(
      s, preprocess, num_threads=config.data.num_threads,
      group_by_length=name == "train" and config.data.get("group_by_length", False))
             for name, s in splits.items()}
  eval_batch_size = config.eval_batch_size or config.batch_size

  def trial_batch(step: int, seed: int) -> dict[str, np.ndarray]:
    return pipeline.train_batch(
        loaders["train"], step, global_batch_size=int(config.batch_size),
        seed=int(seed), process_index=jax.process_index(),
        process_count=jax.process_count())

  def population_batch(step: int) -> dict[str, np.ndarray]:
    """Step `step`'s batch of every trial: one shared, or [batch, trials, ...]."""
    if shared_batch:
      return trial_batch(step, seeds[0])
    batches = [trial_batch(step, seed) for seed in seeds]
    return jax.tree.map(lambda *xs: np.stack(xs, axis=1), *batches)

  first_batches = {seed: trial_batch(0, seed) for seed in set(seeds)}
  for seed, batch in first_batches.items():
    problem = task.check_labels(batch["label"])
    if problem:
      raise UserError(f"config.task={config.task!r}: the training split's {problem}")
  first_batch = population_batch(0)

  # --- 4. Model, the trials' optimizers, sharded init. -----------------------------
  dummy_inputs = jnp.zeros((1, *first_batches[seeds[0]]["inputs"].shape[1:]),
                           first_batches[seeds[0]]["inputs"].dtype)
  if jax.process_index() == 0:
    for trial in population:
      runs.write_model_inputs(trial.workdir, dummy_inputs)
  init_params = lambda rng: model.init({"params": rng}, dummy_inputs,
                                       train=False)["params"]
  trial_rngs = [jax.random.PRNGKey(seed) for seed in seeds]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed_params = jax.eval_shape(init_params, trial_rngs[0])
  transfer = peft.make_plan(config, boxed_params)
  make_optimizer = functools.partial(
      optim.make_optimizer, total_steps=sched.total_steps,
      global_batch_size=config.batch_size, train_examples=len(train_source),
      groups=transfer.labels_and_multipliers())
  # Each trial's optimizer built the normal way first: its values are checked
  # with the usual one-line errors, and its schedule gives its train/lr.
  for trial in population:
    tx, trial.lr_schedule = make_optimizer(trial.config.optim)
    trial.opt_structure = jax.tree.structure(
        jax.eval_shape(tx.init, nn.meta.unbox(boxed_params)))
  # The hyperparameters that differ between trials, one float32 per trial; those
  # all trials share stay the config's Python numbers, computed as a lone run does.
  values = [optim.config_hyperparameters(
      trial.config.optim, global_batch_size=config.batch_size,
      train_examples=len(train_source)) for trial in population]
  hyperparameters = {key: np.array([v[key] for v in values], np.float32)
                     for key in optim.HYPERPARAMETERS
                     if len({v[key] for v in values}) > 1}
  # The shapes of one trial's hyperparameters: scalars.
  trial_shapes = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
  trial_tx = lambda trial_hyperparameters: make_optimizer(
      config.optim, hyperparameters=trial_hyperparameters)[0]

  def init_state(rng, trial_hyperparameters):
    """The lone run's initial state (train.py's init_state), of one trial."""
    params, frozen = transfer.split(init_params(rng), jax.random.fold_in(rng, 2))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "frozen": frozen,
            "opt_state": trial_tx(trial_hyperparameters).init(params),
            "rng": jax.random.fold_in(rng, 1)}

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init_state, trial_rngs[0], trial_shapes(hyperparameters))
  abstract_state, state_sh = sharding.abstract_state(boxed, mesh, rules)
  opt_structure = jax.tree.structure(abstract_state["opt_state"])
  # The population's state: the trials' states stacked, and their hyperparameters
  # beside them, arguments of the compiled step rather than constants in it, so
  # that one program serves any values (a persistent compilation cache finds it
  # again for the next population of the same shape).
  replicated = NamedSharding(mesh, PartitionSpec())
  stacked_sh = {**_with_trial_axis(state_sh),
                HYPERPARAMETERS: {k: replicated for k in hyperparameters}}
  stacked_abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct((len(population), *x.shape), x.dtype,
                                        sharding=s),
      {**abstract_state, HYPERPARAMETERS: trial_shapes(hyperparameters)}, stacked_sh)
  info("parameters of each trial:\n" + sharding.describe_params(
      abstract_state["params"], state_sh["params"]))
  info(transfer.describe())
  # A hung run prints every thread's stack and exits (config.watchdog_minutes).
  hang_watchdog = watchdog.Watchdog(config.watchdog_minutes)
  for trial in population:
    trial.evaluators = evaluators_lib.make_evaluators(
        evaluators_lib.configured(trial.config), model=model, loaders=loaders,
        mesh=mesh, batch_size=eval_batch_size, data_config=config.data,
        train_batch_size=config.batch_size, train_examples=len(train_source),
        model_params=lambda trained: transfer.model_params(*trained),
        on_batch=hang_watchdog.step_finished, task=config.task,
        output_dir=os.path.join(trial.workdir, "eval", "final"))

  # --- 5. Restore or initialise, trial by trial, in the lone run's order. ---------
  # Before compiling: trials that cannot resume together stop at once.
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # One trial's fresh state, by the lone run's program, called for each trial:
    # jax.vmap over the trials' keys gives the same arrays, but XLA compiled it
    # three times slower (9.6 s against 3.4 s for 3 trials of a small MLP on 8 CPU
    # devices), more than initialising the trials one by one costs.
    fresh_state = jax.jit(lambda rng, h: nn.meta.unbox(init_state(rng, h)),
                          out_shardings=state_sh)
  # One trial's state, sliced from the population's (a traced index: one program
  # for every trial), and the population's from its trials'.
  take = jax.jit(lambda state, i: jax.tree.map(
      lambda x: x[i], {k: v for k, v in state.items() if k != HYPERPARAMETERS}),
                 out_shardings=state_sh)
  stack = jax.jit(lambda states, values: {**_stack(states), HYPERPARAMETERS: values},
                  out_shardings=stacked_sh)
  states, positions = [], []
  for i, trial in enumerate(population):
    trial.manager = checkpoint.make_manager(
        os.path.join(os.path.abspath(trial.workdir), "checkpoints"),
        trial.config.checkpoint)
    trial_hyperparameters = {k: v[i] for k, v in hyperparameters.items()}
    trial_state, position, origin = checkpoint.restore_or_initialize(
        trial.manager, trial.config,
        _with_opt_structure(abstract_state, trial.opt_structure),
        lambda i=i, h=trial_hyperparameters: fresh_state(trial_rngs[i], h),
        new_params=(peft.ADAPTER_PATTERN,))
    states.append(_with_opt_structure(trial_state, opt_structure))
    positions.append(int(position["step"]) if position else 0)
    info(f"trial {trial.name}: {origin}")
  if len(set(positions)) > 1:
    for trial in population:
      trial.manager.close()
    raise UserError(
        "population workdirs resume from different steps ("
        + ", ".join(f"{t.workdir}: {p}" for t, p in zip(population, positions))
        + "); the trials of a population train in step: finish them one by one "
        "with ctjax train, or move the checkpoints away to start afresh")
  state = stack(states, hyperparameters)
  del states  # Only the stacked state stays on the devices.
  start_step = positions[0]
  info(f"training steps {start_step}..{sched.total_steps}")

  # --- 6. The population's step: the trainer's step, vmapped; compiled. ----------
  metric_sums = train_lib.MetricSums()

  def one_trial_step(state, batch):
    step_fn = train_lib.make_train_step(
        model, trial_tx(state[HYPERPARAMETERS]), config.grad_accum_steps,
        transfer.model_params, task.per_example_loss)
    return step_fn(state, batch)  # Which passes the hyperparameters through.

  def population_step(state, batch, sums):
    batch_axis = None if shared_batch else 1  # See the module docstring.
    state, metrics = jax.vmap(one_trial_step, in_axes=(0, batch_axis))(state, batch)
    return state, jax.vmap(metric_sums.add)(sums, metrics)

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    zero_sums = jax.jit(lambda: jnp.stack([metric_sums.zeros()] * len(population)),
                        out_shardings=replicated)()
    train_step = train_lib.CompiledPerShape(jax.jit(
        population_step,
        in_shardings=(stacked_sh, sharding.batch_sharding(mesh, 1), replicated),
        out_shardings=(stacked_sh, replicated),
        donate_argnums=0), mesh, stacked_abstract, zero_sums)
    first_program = train_step.compile(first_batch)
  info("population step memory:\n" + _memory_report(first_program))
  # One trial's model FLOPs per step and device, for the throughput and MFU each
  # trial logs at the population's step rate, as train.py logs a lone run's.
  inputs = first_batches[seeds[0]]["inputs"]
  step_flops = throughput.train_step_flops(model, jax.ShapeDtypeStruct(
      (config.batch_size, *inputs.shape[1:]), inputs.dtype)) / jax.device_count()
  peak = throughput.peak_flops(jax.devices()[0].device_kind, config.peak_flops)
  tokens_per_step = throughput.tokens_per_step(inputs, config.batch_size)

  # --- 7. The loop. ----------------------------------------------------------------
  for trial in population:
    trial.writer = writers.MetricWriter(trial.workdir, start_step=start_step,
                                        tensorboard=config.tensorboard)
  preemption = _Preemption()
  sums = zero_sums  # This log interval's metric sums of every trial, on the devices.
  batches = pipeline.prefetch(
      (population_batch(s) for s in range(start_step, sched.total_steps)),
      size=config.data.prefetch)
  if jax.process_count() > 1:
    batches = pipeline.to_device(batches,
                                 transfer=lambda b: sharding.global_batch(b, mesh))
  for trial in population:  # Their eager ops compile now, not in a timed interval.
    trial.lr_schedule(start_step)
  tick, tick_step = time.perf_counter(), start_step
  last_save_time, time_to_save = time.monotonic(), False
  # As in train.py: XLA's CPU runtime deadlocks with many queued programs that
  # hold collectives, so on several CPU devices at most two steps are in flight.
  wait_each_step = jax.devices()[0].platform == "cpu" and jax.device_count() > 1

  def read_sums(step):
    """Each live trial's metric sums since `tick_step`; a trial whose sums hold
    a non-finite value stops there, as a lone run would."""
    totals = {}
    for i, (trial, trial_sums) in enumerate(zip(population,
                                                 jax.device_get(sums))):
      if not trial.alive:
        continue
      try:
        totals[i] = metric_sums.read(trial_sums, first_step=tick_step)
      except UserError as e:
        trial.diverged = str(e)
        info(f"trial {trial.name} stopped at step {step}: {e}")
    return totals

  def run_evals(due, step, final=False):
    """Runs evaluators `due` (positions in each trial's list) of each live trial;
    returns {trial index: metrics}."""
    nonlocal tick
    jax.block_until_ready(state)
    started = time.perf_counter()
    results = {}
    for i, trial in enumerate(population):
      if not trial.alive:
        continue
      trial_state = take(state, i)
      results[i] = {}
      for k in due:
        results[i].update(trial.evaluators[k].run(
            (trial_state["params"], trial_state["frozen"]), final=final))
      trial.writer.write(step, results[i])
      info(f"step {step} {trial.name}: {writers.format_scalars(results[i])}")
    tick += time.perf_counter() - started
    return results

  def save(step, metrics, force=False):
    """Saves each live trial's state of `step` (read_sums first: never a
    diverged state), with its metrics where they rank it."""
    read_sums(step)
    best = config.checkpoint.best_metric
    for i, trial in enumerate(population):
      if not trial.alive:
        continue
      trial_metrics = metrics.get(i)
      if best and trial_metrics and best not in trial_metrics:
        if force:
          info(f"config.checkpoint.best_metric={best!r} is not among the final "
               f"metrics ({', '.join(sorted(trial_metrics))}); no checkpoint is "
               "ranked")
        trial_metrics = None
      checkpoint.save(trial.manager,
                      _with_opt_structure(take(state, i), trial.opt_structure),
                      {"step": step, "seed": trial.config.seed,
                       "examples_seen": step * config.batch_size},
                      metrics=trial_metrics or None, force=force)

  def wait_for_saves():
    for trial in population:
      trial.manager.wait_until_finished()

  try:
    hang_watchdog.start()
    step = start_step
    for step in range(start_step + 1, sched.total_steps + 1):
      previous_sums = sums
      state, sums = train_step(state, next(batches), sums)
      hang_watchdog.step_finished()
      if wait_each_step:
        jax.block_until_ready(previous_sums)

      if sched.log_every and step % sched.log_every == 0 or step == sched.total_steps:
        totals = read_sums(step)
        now = time.perf_counter()
        steps_per_s = (step - tick_step) / (now - tick)
        for i, trial_totals in totals.items():
          trial = population[i]
          scalars = {f"train/{k}": trial_totals[k] / trial_totals["steps"]
                     for k in metric_sums.names}
          scalars["train/lr"] = float(trial.lr_schedule(step - 1))
          scalars["train/steps_per_s"] = steps_per_s
          scalars["train/examples_per_s"] = steps_per_s * config.batch_size
          scalars.update(throughput.scalars(step_flops, steps_per_s, peak,
                                            tokens_per_step))
          trial.writer.write(step, scalars)
          info(f"step {step}/{sched.total_steps} {trial.name}  "
               f"{writers.format_scalars(scalars)}")
        eta = (sched.total_steps - step) / max(steps_per_s, 1e-9)
        info(f"step {step}/{sched.total_steps}  {steps_per_s:.4g} population "
             f"steps/s  ETA {eta:.0f}s")
        sums = zero_sums
        tick, tick_step = now, step
        if config.checkpoint.every_minutes > 0:
          time_to_save = (time.monotonic() - last_save_time >
                          60 * config.checkpoint.every_minutes)
          if jax.process_count() > 1:
            time_to_save = bool(multihost_utils.broadcast_one_to_all(time_to_save))
      if not any(trial.alive for trial in population):
        break

      is_last = step == sched.total_steps
      # Every trial has the same evaluators at the same steps.
      due = [k for k, e in enumerate(population[0].evaluators)
             if e.due(step, sched.total_steps)]
      evaluated = {}
      if due and not is_last:
        evaluated = run_evals(due, step)
      saved = False
      if ((sched.checkpoint_every and step % sched.checkpoint_every == 0)
          or time_to_save) and not is_last:
        save(step, evaluated)
        last_save_time, time_to_save, saved = time.monotonic(), False, True
      # With several processes any trial's manager asks JAX's one preemption
      # service, which all processes agree with.
      if preemption.reached(step, population[0].manager) and not is_last:
        info(f"SIGTERM: saving step {step} of every trial and stopping; run again "
             "to resume")
        if not saved:
          save(step, {}, force=True)
        wait_for_saves()
        return [{} for _ in population]

    final = run_evals(range(len(population[0].evaluators)), step, final=True)
    for i, trial in enumerate(population):
      if i not in final:
        continue
      if trial.config.report and jax.process_index() == 0:
        report_path = report.write_for_evaluation(trial.workdir, "final", splits)
        if report_path:
          info(f"report: {report_path}")
      info(f"final, step {step}, {trial.name}: " + writers.format_scalars(
          {k: v for k, v in final[i].items() if k.split("/")[-1] in task.HEADLINE}))
    if step > start_step:
      save(step, final, force=True)
    wait_for_saves()
    if not any(trial.alive for trial in population):
      raise UserError("every trial of the population diverged: "
                      + "; ".join(f"{t.name}: {t.diverged}" for t in population))
    return [final.get(i, {}) if trial.alive else {}
            for i, trial in enumerate(population)]
  finally:
    preemption.restore()
    for trial in population:
      if trial.writer is not None:
        trial.writer.close()
      if trial.manager is not None:
        trial.manager.close()
    hang_watchdog.stop()
