"""Federated learning, simulated: many clients trained in one compiled program.

  c.federated = dict(clients=5, rounds=30, local_steps=5, clients_per_round=3,
                     algorithm="fedavg", dirichlet_alpha=0.3)
  ctjax train --config configs/breast_cancer_federated.py

Clients are partitions of the training split (`partition`): by a column such as
a site, by a seeded Dirichlet split of the labels for non-IID studies, or IID.
`train_federated` runs the rounds, checkpoints the global model every
config.checkpoint.every rounds (a resumed run draws the same clients and batches:
they are functions of (seed, round)), logs train/loss and each sampled client's
loss per round (step = round in metrics.jsonl), and runs the config's
evaluators on the global model. With config.privacy, DP-FedAvg: clients
Poisson-sampled, their changes clipped and noised, user-level epsilon in the
log (see `make_round`). The same config deployed across sites, one process
each: ctjax/flower.py (`prepare` and `run_rounds` are shared with it).

A round: the server sends the global parameters to m sampled clients; each runs
`local_steps` steps of the trainer's own update (`train.make_train_step`: the
task's loss, padding masks, the config's optimizer, freshly initialised) on its
own batches; the server averages the clients' changes, weighted by their
examples, and applies that average as a pseudo-gradient with its own optimizer
(McMahan et al. 2017; Reddi et al. 2021):

  fedavg   server SGD at server_lr (1: the plain weighted average of the models)
  fedprox  fedavg, each client's loss plus mu/2 ||w - w_global||^2 (Li et al. 2020)
  fedadam  server Adam at server_lr (b1 0.9, b2 0.99, eps 1e-3, as Reddi et al.)

All m clients' local training is one `jax.vmap` over the client axis of a
`lax.scan` over their local steps: one program, whatever the clients. That axis
is sharded over the mesh's batch axes (config.mesh data x fsdp), so each device
trains m / devices clients; a round pads m up to a multiple of them with clients
whose changes weigh nothing (clients_per_round a multiple of the devices wastes
no work).
"""
import dataclasses
import hashlib
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ctjax import train
from ctjax.errors import UserError

ALGORITHMS = ("fedavg", "fedprox", "fedadam")


def partition(source: Any, num_clients: int, *, seed: int,
              column: str | None = None,
              dirichlet_alpha: float | None = None) -> list[np.ndarray]:
  """Each client's example indices into `source` (disjoint, covering it).

  column: one client per distinct value of that column of the source (a site,
    a hospital), in sorted order; num_clients must match their number.
  dirichlet_alpha: non-IID by label, as Hsu et al. (2019): for each class, the
    shares of its examples going to the clients are drawn from
    Dirichlet(alpha, ..., alpha); small alpha gives clients few classes.
  neither: a seeded random split into near-equal parts (IID).
  """
  rng = np.random.default_rng([seed, 0xfed])
  n = len(source)
  if column is not None:
    values = getattr(source, "columns", {}).get(column)
    if values is None:
      raise UserError(f"config.federated.partition_column={column!r}: the source "
                      f"has no such column; it has "
                      f"{', '.join(getattr(source, 'columns', {})) or 'none'}")
    values = np.asarray(values)
    sites = np.unique(values)
    if len(sites) != num_clients:
      raise UserError(f"config.federated.clients={num_clients}: column {column!r} "
                      f"has {len(sites)} distinct values ({', '.join(map(str, sites[:8]))}"
                      f"{', ...' if len(sites) > 8 else ''}); set clients to that")
    return [np.flatnonzero(values == site) for site in sites]
  if dirichlet_alpha is not None:
    labels = getattr(source, "labels", None)
    if labels is None:
      raise UserError("config.federated.dirichlet_alpha: the training split has no "
                      "per-example class labels to split by")
    parts = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
      members = rng.permutation(np.flatnonzero(labels == label))
      shares = rng.dirichlet(np.full(num_clients, float(dirichlet_alpha)))
      cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
      for client, piece in enumerate(np.split(members, cuts)):
        parts[client].extend(piece.tolist())
    return [np.sort(np.asarray(p, np.int64)) for p in parts]
  return [np.sort(p) for p in np.array_split(rng.permutation(n), num_clients)]


def site_names(source: Any, num_clients: int, column: str | None) -> list[str]:
  """The clients' names, in `partition`'s order: the column's sorted values, or
  "0".."n-1". A deployed client (`ctjax federated client --site NAME`) is the
  simulated client of the same name."""
  if column:
    return [str(v) for v in np.unique(np.asarray(source.columns[column]))]
  return [str(c) for c in range(num_clients)]


def client_key(site: str) -> int:
  """A client's 31-bit id, from its name: what its batches and its training's
  random numbers are drawn with, so that the simulation and a deployed client of
  that name (ctjax/flower.py) draw the same, whoever else takes part."""
  return int.from_bytes(hashlib.sha256(site.encode()).digest()[:4], "little") >> 1


def client_indices(examples: np.ndarray, key: int, round_index: int, *,
                   local_steps: int, batch_size: int, seed: int) -> np.ndarray:
  """A client's example indices for a round [local_steps, batch_size]: drawn
  from its own `examples` (with replacement across steps), a function of (seed,
  round, client) alone."""
  rng = np.random.default_rng([seed, round_index, key, 0xc11e])
  return rng.choice(examples, (local_steps, batch_size),
                    replace=len(examples) < local_steps * batch_size)


def sample_round(partitions: list[np.ndarray], keys: list[int], round_index: int, *,
                 clients_per_round: int, local_steps: int, batch_size: int,
                 seed: int, clients: np.ndarray | None = None, multiple: int = 1
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A round's (client ids [m], example indices [m, local_steps, batch_size],
  weights [m]): clients drawn without replacement (or `clients` given, -1 for
  a padding client, DP-FedAvg's), padded with -1 to a multiple of `multiple`
  (the devices the clients are sharded over), each client's batches by
  `client_indices`, weights the clients' example counts over their sum (0 for
  padding). A function of (seed, round) alone, so a resumed run draws the same."""
  if clients is None:
    rng = np.random.default_rng([seed, round_index, 0xc11e])
    clients = np.sort(rng.choice(len(partitions), clients_per_round, replace=False))
  clients = np.concatenate([clients, np.full(-len(clients) % multiple, -1)])
  # A padding client trains on client 0's data; its update is weighted out.
  indices = np.stack([
      client_indices(partitions[max(c, 0)], keys[max(c, 0)], round_index,
                     local_steps=local_steps, batch_size=batch_size, seed=seed)
      for c in clients])
  sizes = np.array([len(partitions[c]) if c >= 0 else 0 for c in clients],
                   np.float64)
  return clients, indices, (sizes / max(sizes.sum(), 1)).astype(np.float32)


def client_batch(loader: Any, indices: np.ndarray, key: int, round_index: int, *,
                 seed: int) -> dict[str, np.ndarray]:
  """A client's round of batches [local_steps, batch_size, ...] of examples
  `indices`; augmentation drawn from (seed, client, round)."""
  from ctjax.data import pipeline  # pylint: disable=g-import-not-at-top
  batch = pipeline.batch_of(loader, indices.reshape(-1), round_index,
                            seed=(seed << 32) + key)
  return {k: v.reshape(*indices.shape, *v.shape[1:]) for k, v in batch.items()}


class ProximalState(NamedTuple):
  anchor: Any  # the global parameters the client started the round from


def proximal(mu: float) -> optax.GradientTransformation:
  """FedProx's term: adds mu (w - w_global) to the gradient, the gradient of
  mu/2 ||w - w_global||^2. The anchor is the parameters the optimizer was
  initialised with, which is the global model: each round starts a client's
  optimizer afresh."""
  def init(params):
    return ProximalState(anchor=params)

  def update(grads, state, params):
    return jax.tree.map(lambda g, w, a: g + mu * (w - a), grads, params,
                        state.anchor), state

  return optax.GradientTransformation(init, update)


def server_optimizer(algorithm: str, server_lr: float) -> optax.GradientTransformation:
  if algorithm not in ALGORITHMS:
    raise UserError(f"config.federated.algorithm={algorithm!r}: choose one of "
                    f"{', '.join(ALGORITHMS)}")
  if algorithm == "fedadam":
    return optax.adam(server_lr, b1=0.9, b2=0.99, eps=1e-3)
  return optax.sgd(server_lr)


@dataclasses.dataclass(frozen=True)
class Round:
  """A round's parts, jitted.

  run: the whole simulated round, (params, server_opt_state, batches [m, ...],
    weights [m], client keys [m], rng) -> (params, server_opt_state, per-client
    mean losses [m]);
  client_update: one client's local training, (params, batches, rng) -> (its
    change, its mean loss), what a deployed client runs (ctjax/flower.py);
  server_update: (params, server_opt_state, mean change) -> (params,
    server_opt_state), what a deployed server applies to the clients' mean.
  """
  run: Callable[..., Any]
  client_update: Callable[..., Any]
  server_update: Callable[..., Any]
  server_tx: optax.GradientTransformation


# Folded into a round's key for DP-FedAvg's noise: above every 31-bit client key.
NOISE_STREAM = 1 << 31


def client_rng(round_rng: jax.Array, key: int | jax.Array) -> jax.Array:
  """A client's random numbers in a round: from the round's key and its own."""
  return jax.random.fold_in(round_rng, key)


def client_shards(mesh: jax.sharding.Mesh) -> int:
  """How many devices a simulated round's clients are divided among: the mesh's
  batch axes (data x fsdp), as a training batch is."""
  return mesh.shape["data"] * mesh.shape["fsdp"]


def make_round(model: Any, local_tx: optax.GradientTransformation, *,
               algorithm: str, server_lr: float = 1.0, mu: float = 0.0,
               per_example_loss: Callable[[jax.Array, jax.Array], jax.Array],
               dp: Any = None, mesh: jax.sharding.Mesh | None = None) -> Round:
  """One federated round of `model`, clients training with `local_tx`.

  With `mesh`, `run`'s client axis (its batches, weights, keys and losses) is
  sharded over the mesh's batch axes, the global state replicated: each device
  trains its share of the clients (m must divide among them: `sample_round`
  pads), and the weighted mean of their changes is a sum across devices.

  With `dp` (a `privacy.Privacy` over clients), DP-FedAvg (McMahan et al.
  2018): each real client's change is clipped to norm dp.clip_norm, the clipped
  changes are summed, Gaussian noise of standard deviation noise_multiplier x
  clip_norm is added, and the sum is divided by the expected number of clients:
  (epsilon, delta) with respect to adding or removing one client's whole data.
  Clients count equally there (a client's weight would be its data's size,
  which the guarantee must not depend on); a weight > 0 marks a real client.
  """
  server_tx = server_optimizer(algorithm, server_lr)
  if algorithm == "fedprox":
    local_tx = optax.chain(proximal(mu), local_tx)
  local_step = train.make_train_step(model, local_tx, 1, lambda p, f: p,
                                     per_example_loss)

  def client_update(params, batches, rng):
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "frozen": {},
             "opt_state": local_tx.init(params), "rng": rng}
    state, metrics = jax.lax.scan(local_step, state, batches)
    delta = jax.tree.map(jnp.subtract, state["params"], params)
    return delta, jnp.mean(metrics["loss"])

  def server_update(params, server_opt_state, mean_change):
    # The server's pseudo-gradient is minus the clients' mean change.
    updates, server_opt_state = server_tx.update(
        jax.tree.map(jnp.negative, mean_change), server_opt_state, params)
    return optax.apply_updates(params, updates), server_opt_state

  def run(params, server_opt_state, batches, weights, keys, rng):
    rngs = jax.vmap(client_rng, in_axes=(None, 0))(rng, keys)
    deltas, losses = jax.vmap(client_update, in_axes=(None, 0, 0))(
        params, batches, rngs)
    if dp is None:
      mean_change = jax.tree.map(lambda d: jnp.tensordot(weights, d, axes=1), deltas)
    else:
      mean_change = _private_mean_change(deltas, weights > 0, dp,
                                         jax.random.fold_in(rng, NOISE_STREAM))
    return (*server_update(params, server_opt_state, mean_change), losses)

  run_shardings = {}
  if mesh is not None:
    spec = jax.sharding.PartitionSpec
    replicated = jax.sharding.NamedSharding(mesh, spec())
    by_client = jax.sharding.NamedSharding(mesh, spec(("data", "fsdp")))
    run_shardings = dict(
        in_shardings=(replicated, replicated, by_client, by_client, by_client,
                      replicated),
        out_shardings=(replicated, replicated, by_client))
  return Round(run=jax.jit(run, **run_shardings), client_update=jax.jit(client_update),
               server_update=jax.jit(server_update), server_tx=server_tx)


def _private_mean_change(deltas: Any, real: jax.Array, dp: Any,
                         rng: jax.Array) -> Any:
  """The clipped, noised mean of the real clients' changes [m, ...]."""
  norms = jnp.sqrt(sum(jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), axis=1)
                       for d in jax.tree.leaves(deltas)))
  scale = jnp.where(real, jnp.minimum(1.0, dp.clip_norm / jnp.maximum(norms, 1e-30)),
                    0.0)
  leaves, treedef = jax.tree.flatten(deltas)
  keys = jax.random.split(rng, len(leaves))
  std = dp.noise_multiplier * dp.clip_norm
  noised = [jnp.tensordot(scale, d, axes=1) + std * jax.random.normal(k, d.shape[1:])
            for d, k in zip(leaves, keys)]
  return jax.tree.unflatten(treedef, [x / dp.expected_batch_size for x in noised])


OPTIONS = {  # config.federated keys and defaults
    "clients": 0,              # 0: no federated training
    "rounds": 10,
    "local_steps": 5,          # each client's steps a round, of config.batch_size
    "clients_per_round": 0,    # 0: every client every round
    "algorithm": "fedavg",
    "server_lr": 1.0,
    "mu": 0.01,                # FedProx's proximal weight
    "partition_column": "",    # one client per value of this column (a site)
    "dirichlet_alpha": 0.0,    # > 0: non-IID label split; else IID
    # Deployed (ctjax/flower.py) only:
    "on_client_failure": "drop",  # or "retry": see ctjax/flower.py
    "min_clients": 1,          # "drop": fewer replies than this fail the round
    "retries": 2,              # "retry": times a round is run again
    "round_timeout": 600.0,    # seconds a server waits for a round's replies
    "secure_aggregation": False,  # Flower's SecAgg+: the server sees only sums
}
FAILURE_POLICIES = ("drop", "retry")


def _options(config: Any) -> dict[str, Any]:
  given = dict(config.federated)
  for key in given:
    if key not in OPTIONS:
      raise UserError(f"config.federated.{key}: not an option; use "
                      f"{', '.join(OPTIONS)}")
  options = {**OPTIONS, **given}
  if options["clients"] < 1 or options["rounds"] < 1 or options["local_steps"] < 1:
    raise UserError("config.federated: clients, rounds and local_steps must be "
                    "at least 1")
  if not 0 <= options["clients_per_round"] <= options["clients"]:
    raise UserError(f"config.federated.clients_per_round="
                    f"{options['clients_per_round']}: between 1 and clients="
                    f"{options['clients']} (0: all)")
  if options["on_client_failure"] not in FAILURE_POLICIES:
    raise UserError(f"config.federated.on_client_failure="
                    f"{options['on_client_failure']!r}: choose one of "
                    f"{', '.join(FAILURE_POLICIES)}")
  server_optimizer(options["algorithm"], options["server_lr"])  # Checks the name.
  return options


def _per_round(options: dict[str, Any]) -> int:
  """The clients a round trains (DP-FedAvg: their expected number)."""
  return options["clients_per_round"] or options["clients"]


@dataclasses.dataclass
class Federation:
  """What the simulation, a deployed server and a deployed client build alike
  from the config (`prepare`): each process reads only the splits it has."""
  config: Any
  options: dict[str, Any]
  model: Any
  task: Any
  splits: dict[str, Any]
  loaders: dict[str, Any]
  round: Round
  dp: Any
  mesh: jax.sharding.Mesh  # config.mesh: a round's clients, and evaluation

  @property
  def per_round(self) -> int:
    return _per_round(self.options)

  def site_partitions(self) -> tuple[list[str], list[np.ndarray]]:
    """The clients' names and example indices into the train split."""
    train_source = self.splits["train"]
    column = self.options["partition_column"] or None
    parts = partition(train_source, self.options["clients"], seed=self.config.seed,
                      column=column,
                      dirichlet_alpha=self.options["dirichlet_alpha"] or None)
    if min(map(len, parts)) == 0:
      raise UserError(f"config.federated: a client has no examples "
                      f"({[len(p) for p in parts]}); use fewer clients or a larger "
                      "dirichlet_alpha")
    return site_names(train_source, self.options["clients"], column), parts

  def init_state(self, rng: jax.Array) -> dict[str, Any]:
    """The global model's state: round, parameters, the server optimizer's."""
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    some_split = self.loaders.get("train") or next(iter(self.loaders.values()))
    # One example, for the parameters' shapes.
    example = some_split.load(np.zeros(1, np.int64), None)["inputs"]
    params = nn.meta.unbox(self.model.init({"params": rng}, example,
                                           train=False)["params"])
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "server_opt_state": self.round.server_tx.init(params)}


def round_rng(seed: int, round_index: int) -> jax.Array:
  """A round's random numbers, from the seed: every process derives the same."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), round_index + 1)


def prepare(config: Any, workdir: str, *, write_state: bool = True,
            only_splits: tuple[str, ...] | None = None) -> Federation:
  """Checks `config` and opens its splits (fitting, or loading
  WORKDIR/data_state.json): the simulation's, or, named by `only_splits`, what
  a deployed process reads of config.data.splits: a site its train file, the
  server its evaluation files."""
  # pylint: disable=g-import-not-at-top
  from ctjax import config as config_lib, models, optim, privacy, sharding, tasks
  from ctjax.data import ops, pipeline
  from ctjax.data import splits as splits_lib
  # pylint: enable=g-import-not-at-top
  options = _options(config)
  config_lib.validate(config, device_count=jax.device_count(),
                      process_count=jax.process_count())
  if jax.process_count() > 1:
    raise UserError("config.federated runs the clients of a process on one host; "
                    "run it as one process (or deploy it: ctjax federated)")
  model, task = models.get_model(config.model), tasks.get(config.task)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_lib.to_json(config))
  data_config = config.data
  if only_splits is not None and data_config.get("splits"):
    data_config = ml_collections.ConfigDict(config.data.to_dict())
    data_config.splits = {name: spec for name, spec in config.data.splits.items()
                          if name in only_splits}
  splits = splits_lib.open_splits(
      data_config, state_dir=workdir, write_state=write_state,
      num_classes=getattr(model, "num_classes", None),
      vocab_size=getattr(model, "vocab_size", None))
  preprocess = ops.compose(config.data.get("preprocess"))
  loaders = {name: pipeline.BatchLoader(s, preprocess, num_threads=1)
             for name, s in splits.items()}
  per_round = _per_round(options)
  # DP-FedAvg (config.privacy): clients Poisson-sampled, user-level accounting.
  dp = privacy.configure(config, num_examples=options["clients"],
                         expected_batch_size=per_round, total_steps=options["rounds"],
                         batch_multiple=1, unit="clients")
  local_tx = optim.make_optimizer(config.optim, total_steps=options["local_steps"],
                                  global_batch_size=config.batch_size,
                                  train_examples=None)[0]
  mesh = sharding.make_mesh(config.mesh)
  round_ = make_round(model, local_tx, algorithm=options["algorithm"],
                      server_lr=options["server_lr"], mu=options["mu"],
                      per_example_loss=task.per_example_loss, dp=dp, mesh=mesh)
  return Federation(config=config, options=options, model=model, task=task,
                    splits=splits, loaders=loaders, round=round_, dp=dp, mesh=mesh)


def run_rounds(fed: Federation, workdir: str,
               round_fn: Callable[[int, dict[str, Any]],
                                  tuple[dict[str, Any], dict[str, float]]]
               ) -> dict[str, float]:
  """Runs (or resumes) the rounds in `workdir`: `round_fn(r, state)` trains
  round r (the simulation's program, or a deployed server's clients) and
  returns the new state and its scalars; this checkpoints the global model
  every config.checkpoint.every rounds, writes metrics.jsonl (step = round) and
  runs the config's evaluators on the global model. Returns the last round's
  scalars."""
  # pylint: disable=g-import-not-at-top
  from ctjax import checkpoint, durations, writers
  from ctjax import evaluators as evaluators_lib
  # pylint: enable=g-import-not-at-top
  config, dp, rounds = fed.config, fed.dp, fed.options["rounds"]
  root_rng = jax.random.PRNGKey(config.seed)
  manager = checkpoint.make_manager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), config.checkpoint)
  if manager.latest_step() is not None:
    state, position = checkpoint.restore(
        manager, jax.eval_shape(fed.init_state, root_rng), set_aside_damaged=True)
    start = int(position["step"])
    writers.info(f"resumed at round {start}")
  else:
    state, start = jax.jit(fed.init_state)(root_rng), 0
  train_examples = len(fed.splits["train"]) if "train" in fed.splits else None
  evaluators = evaluators_lib.make_evaluators(
      evaluators_lib.configured(config), model=fed.model, loaders=fed.loaders,
      mesh=fed.mesh,
      batch_size=config.eval_batch_size or config.batch_size, data_config=config.data,
      train_batch_size=config.batch_size, train_examples=train_examples,
      model_params=lambda trained: trained[0], task=config.task,
      output_dir=os.path.join(workdir, "eval", "final"))
  checkpoint_every = durations.to_steps(config.checkpoint.every, key="checkpoint.every",
                                        global_batch_size=config.batch_size,
                                        train_examples=train_examples)
  writer = writers.MetricWriter(workdir, start_step=start,
                                tensorboard=config.tensorboard)
  final = {}
  try:
    for r in range(start + 1, rounds + 1):
      state, scalars = round_fn(r, state)
      state = dict(state, step=jnp.asarray(r, jnp.int32))
      if dp:
        scalars["privacy/epsilon"] = dp.epsilon(r)
      for evaluator in (e for e in evaluators if e.due(r, rounds)):
        scalars.update(evaluator.run((state["params"], {}), final=r == rounds))
      writer.write(r, scalars)
      writers.info(f"round {r}/{rounds}  " + writers.format_scalars(
          {k: v for k, v in scalars.items() if not k.startswith("client_")}))
      if r == rounds or (checkpoint_every and r % checkpoint_every == 0):
        position = {"step": r, "seed": config.seed}
        if dp:
          position["epsilon"] = dp.epsilon(r)
        checkpoint.save(manager, state, position, force=r == rounds)
      final = scalars
    manager.wait_until_finished()
    return final
  finally:
    writer.close()
    manager.close()


def train_federated(config: Any, workdir: str) -> dict[str, float]:
  """Simulates `config.federated`'s rounds in `workdir` (see `run_rounds`): each
  round's clients in one compiled program. Returns the last round's scalars."""
  # pylint: disable=g-import-not-at-top
  from ctjax import privacy, writers
  # pylint: enable=g-import-not-at-top
  fed = prepare(config, workdir)
  options, dp = fed.options, fed.dp
  names, parts = fed.site_partitions()
  keys = [client_key(name) for name in names]
  per_round = fed.per_round
  shards = client_shards(fed.mesh)
  if dp:
    privacy.record(workdir, dp, write=True)
    writers.info(dp.describe().replace("DP-SGD", "DP-FedAvg") + "; epsilon after "
                 f"{options['rounds']} rounds {dp.epsilon(options['rounds']):.4g}")
  writers.info(f"federated: {options['clients']} clients "
               f"({', '.join(str(len(p)) for p in parts)} examples), {per_round} a "
               f"round, {options['rounds']} rounds of {options['local_steps']} local "
               f"steps, {options['algorithm']}; a round's clients divided among "
               f"{shards} devices")

  def simulated_round(r, state):
    clients, indices, weights = sample_round(
        parts, keys, r - 1, clients_per_round=per_round,
        local_steps=options["local_steps"], batch_size=config.batch_size,
        seed=config.seed, multiple=shards,
        clients=privacy.sampled_indices(r - 1, dp, config.seed) if dp else None)
    client_keys = np.array([keys[max(c, 0)] for c in clients], np.uint32)
    batches = [client_batch(fed.loaders["train"], idx, key, r - 1, seed=config.seed)
               for idx, key in zip(indices, client_keys)]
    batch = jax.tree.map(lambda *x: np.stack(x), *batches)
    params, server_opt_state, losses = fed.round.run(
        state["params"], state["server_opt_state"], batch, weights, client_keys,
        round_rng(config.seed, r))
    losses = np.asarray(losses)
    scalars = {"train/loss": float(np.dot(weights, losses)),
               **{f"client_{names[c]}/loss": float(l)
                  for c, l in zip(clients, losses) if c >= 0}}
    return dict(state, params=params, server_opt_state=server_opt_state), scalars

  return run_rounds(fed, workdir, simulated_round)
