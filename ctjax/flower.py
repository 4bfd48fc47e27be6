"""Federated learning deployed across sites, with Flower for the transport.

  # The coordinator: no training data; evaluation data if it has some.
  ctjax federated server --config configs/C.py --workdir runs/fed --port 9092 \
      [--insecure | --ssl-certfile F --ssl-keyfile F --ssl-ca-certfile F] \
      [--config.KEY=VALUE ...]
  # Each site, on its own data only (its own file, through its own overrides):
  ctjax federated client --config configs/C.py --site a --server HOST:9092 \
      --workdir runs/site_a [--port 9094] [--insecure | --root-certificates F] \
      [--config.data.path=site_a.csv ...]

The same config as `ctjax train` simulates (ctjax/federated.py), run as separate
processes that exchange only model parameters and changes. Flower does the
transport, the node registry and secure aggregation: the server command starts a
Flower SuperLink and submits this module's `server_app` to it (`flwr run`); a
client command is a Flower SuperNode (`flower-supernode`) that runs
`client_app` for each message the server sends. Flower's state lives in
WORKDIR/flower/.

A round, as in the simulation: the server sends the global parameters to the
round's sites; each draws its batches and random numbers from (seed, round,
its name) (`federated.client_key`), trains `local_steps` steps with the
trainer's update and returns its change and example count; the server takes
the weighted mean change and applies its optimizer (`Round.server_update`),
then checkpoints, evaluates and logs exactly as `federated.run_rounds` does
for the simulation. So a deployment whose sites hold the simulation's
partitions (a site named after its value of config.federated.partition_column,
or "0".."n-1") ends where the simulation ends, up to the order of float sums
(and SecAgg+'s quantization).

Each site encodes its data with WORKDIR/data_state.json when that file is
there (copy one agreed file to every site and the server: the vocabularies,
label names and standardisation must be the same everywhere), else fits its
own from its train split. A site with a partition_column keeps only its rows.

  config.federated.secure_aggregation=True   Flower's SecAgg+ (Bell et al.
      2020): each site's weighted change is quantized and masked; the server
      learns only the sum. Costs four exchanges a round instead of one.
  config.federated.on_client_failure="drop"  a site that does not reply within
      round_timeout seconds is left out of the round's mean, if at least
      min_clients replied (else the run stops: rerun the server to resume).
  config.federated.on_client_failure="retry" a round with fewer replies than
      it sampled sites is run again, up to `retries` times, with the sites then
      connected (a restarted site comes back as a new node); its draws do not
      change, so a retried round computes what an unbroken one would have.
  A node that answered nothing in a round (with SecAgg+, a halted round still
  shows who answered its first stages) is not asked again: Flower keeps a dead
  node registered for a while.

The server stops with its checkpoints intact; running the same server command
again resumes from the last one. Not supported deployed: config.privacy
(DP-FedAvg is simulated only).
"""
import hashlib
import json
import os
import time
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.app.message_type import MessageType
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import Code, FitIns, FitRes
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid, ServerApp

from ctjax import writers
from ctjax.errors import UserError

# The Flower App that `flwr run` ships to the SuperLink: this module's apps.
APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "ctjax-federated"
version = "1.0.0"
description = "ctjax's federated training (ctjax/flower.py)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "ctjax"

[tool.flwr.app.components]
serverapp = "ctjax.flower:server_app"
clientapp = "ctjax.flower:client_app"

[tool.flwr.app.config]
workdir = ""
"""


def model_digest(config: Any) -> str:
  """What the server and every site must agree on: the model, the task, the
  local training and the seed. A site whose config differs is refused."""
  agreed = {key: config.get(key) for key in ("model", "task", "optim", "batch_size",
                                             "seed")}
  agreed["federated"] = {k: v for k, v in dict(config.federated).items()
                         if k in ("clients", "local_steps", "algorithm", "mu",
                                  "partition_column", "dirichlet_alpha")}
  text = json.dumps(agreed, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluated_splits(config: Any) -> tuple[str, ...]:
  """The splits the server reads: those it evaluates the global model on."""
  return tuple(config.eval_splits) + tuple(config.final_eval_splits)


def _use_compilation_cache(workdir: str) -> None:
  """Flower runs a fresh process per message: keep compiled programs on disk."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


# --- A site: one Flower ClientApp run per message. --------------------------


class SiteClient(NumPyClient):
  """Trains a round from the global parameters on this site's data."""

  def __init__(self, site: str, workdir: str):
    self.site, self.workdir = site, workdir

  def fit(self, parameters: list[np.ndarray], config: dict[str, Any]
          ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
    import jax  # pylint: disable=g-import-not-at-top
    from ctjax import federated, runs  # pylint: disable=g-import-not-at-top
    _use_compilation_cache(self.workdir)
    run_config = runs.read_config(self.workdir)
    if config["model_digest"] != model_digest(run_config):
      raise UserError(f"site {self.site!r}: its config's model, task, optim, "
                      "batch_size, seed or federated options differ from the "
                      "server's; use the same config")
    fed = federated.prepare(run_config, self.workdir, write_state=False,
                            only_splits=("train",))
    examples = site_examples(fed, self.site)
    round_index, key = int(config["round"]), federated.client_key(self.site)
    options, seed = fed.options, run_config.seed
    indices = federated.client_indices(
        examples, key, round_index - 1, local_steps=options["local_steps"],
        batch_size=run_config.batch_size, seed=seed)
    batch = federated.client_batch(fed.loaders["train"], indices, key,
                                   round_index - 1, seed=seed)
    shapes = jax.eval_shape(fed.init_state, jax.random.PRNGKey(0))["params"]
    leaves, treedef = jax.tree.flatten(shapes)
    params = jax.tree.unflatten(treedef, [np.asarray(p, leaf.dtype).reshape(leaf.shape)
                                          for p, leaf in zip(parameters, leaves)])
    change, loss = fed.round.client_update(
        params, batch,
        federated.client_rng(federated.round_rng(seed, round_index), key))
    return ([np.asarray(x) for x in jax.tree.leaves(change)], len(examples),
            {"site": self.site, "loss": float(loss)})


def site_examples(fed: Any, site: str) -> np.ndarray:
  """This site's example indices into its train split: the rows whose
  partition_column is `site`, or (no such column) all of them."""
  train = fed.splits["train"]
  column = fed.options["partition_column"]
  if not column:
    return np.arange(len(train))
  values = getattr(train, "columns", {}).get(column)
  if values is None:
    raise UserError(f"config.federated.partition_column={column!r}: this site's "
                    "train split has no such column")
  mine = np.flatnonzero(np.asarray(values).astype(str) == site)
  if not len(mine):
    raise UserError(f"--site {site!r}: no row of this site's train split has "
                    f"{column}={site!r}; give the site's own name")
  return mine


def _client_fn(context: Context):
  return SiteClient(str(context.node_config["site"]),
                    str(context.node_config["workdir"])).to_client()


def _secure_aggregation_if_asked(message: Message, context: Context, call_next):
  """SecAgg+'s client side, for the rounds that use it (their messages carry
  its configuration); a plain round's message goes straight to `fit`."""
  if RECORD_KEY_CONFIGS in message.content.config_records:
    return secaggplus_mod(message, context, call_next)
  return call_next(message, context)


client_app = ClientApp(client_fn=_client_fn, mods=[_secure_aggregation_if_asked])


# --- The server: one Flower ServerApp run, the rounds of `run_rounds`. --------


class RoundFailed(Exception):
  """Too few sites replied: the run stops, its checkpoints intact."""


class RoundStrategy(Strategy):
  """Flower's view of a round: which nodes train it, with what; it records the
  replies and leaves the server update to `deployed_round`."""

  def __init__(self, digest: str):
    self.digest = digest
    self.round_index = 0
    self.nodes: list[int] = []
    self.results: list[FitRes] = []

  def initialize_parameters(self, client_manager):
    return None

  def configure_fit(self, server_round, parameters, client_manager):
    proxies = {p.node_id: p for p in client_manager.all().values()}
    config = {"round": self.round_index, "model_digest": self.digest}
    return [(proxies[n], FitIns(parameters, config)) for n in self.nodes
            if n in proxies]

  def aggregate_fit(self, server_round, results, failures):
    self.results = [fit_res for _, fit_res in results]
    return None, {}

  def configure_evaluate(self, server_round, parameters, client_manager):
    return []

  def aggregate_evaluate(self, server_round, results, failures):
    return None, {}

  def evaluate(self, server_round, parameters):
    return None


def _send_round(grid: Grid, context: LegacyContext, timeout: float) -> None:
  """One plain round: the strategy's instructions out, the replies that come
  back within `timeout` to `aggregate_fit`."""
  strategy = context.strategy
  parameters = compat.arrayrecord_to_parameters(
      context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
  instructions = strategy.configure_fit(strategy.round_index, parameters,
                                        context.client_manager)
  messages = [Message(content=compat.fitins_to_recorddict(fit_ins, True),
                      dst_node_id=proxy.node_id, message_type=MessageType.TRAIN,
                      group_id=str(strategy.round_index))
              for proxy, fit_ins in instructions]
  replies = list(grid.send_and_receive(messages, timeout=timeout))
  proxies = {proxy.node_id: proxy for proxy, _ in instructions}
  results = []
  for reply in replies:
    if reply.has_error():  # The site's exception, say a config that differs.
      writers.info(f"round {strategy.round_index}: node {reply.metadata.src_node_id} "
                   f"failed: {reply.error.reason}")
    elif reply.has_content():
      fit_res = compat.recorddict_to_fitres(reply.content, False)
      if fit_res.status.code == Code.OK:
        results.append((proxies[reply.metadata.src_node_id], fit_res))
  strategy.aggregate_fit(strategy.round_index, results,
                         [None] * (len(messages) - len(results)))


class _RepliesSeen:
  """A Grid that notes which nodes answered anything: a SecAgg+ round that
  halts returns no results, yet its first stage shows who is alive."""

  def __init__(self, grid: Grid):
    self._grid, self.nodes = grid, set()

  def __getattr__(self, name: str) -> Any:
    return getattr(self._grid, name)

  def send_and_receive(self, messages, *, timeout=None):
    replies = list(self._grid.send_and_receive(messages, timeout=timeout))
    self.nodes.update(r.metadata.src_node_id for r in replies if not r.has_error())
    return replies


def secure_aggregation(timeout: float) -> SecAggPlusWorkflow:
  """SecAgg+ over all of a round's sites (each key split among all of them; half
  the shares recover a dropped site's mask). Flower's quantization: each site's
  example-weighted change clipped to [-8, 8] and rounded stochastically to a
  step of 16 / 2**22; weights are examples / 1000 (a site of more than 1000
  examples risks overflow; Flower warns)."""
  return SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.5,
                            timeout=timeout)


def _wait_for_nodes(context: LegacyContext, exclude: set[int], needed: int,
                    timeout: float) -> list[int]:
  """The connected nodes not in `exclude`, once `needed` of them are (or the
  timeout passes)."""
  deadline = time.monotonic() + timeout
  while True:
    nodes = sorted(proxy.node_id for proxy in context.client_manager.all().values()
                   if proxy.node_id not in exclude)
    if len(nodes) >= needed or time.monotonic() > deadline:
      return nodes
    time.sleep(0.5)


def serve(grid: Grid, context: Context) -> None:
  """The ServerApp's work: `federated.run_rounds` with each round's clients
  reached through Flower."""
  # pylint: disable=g-import-not-at-top
  import jax
  from ctjax import federated, runs
  # pylint: enable=g-import-not-at-top
  workdir = str(context.run_config["workdir"])
  outcome = {"status": "failed", "exit_status": 1,
             "error": "the server app crashed; see its traceback above"}
  try:
    _use_compilation_cache(workdir)
    config = runs.read_config(workdir)
    fed = federated.prepare(config, workdir, only_splits=evaluated_splits(config))
    options, per_round = fed.options, fed.per_round
    strategy = RoundStrategy(model_digest(config))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=1),
                           strategy=strategy)
    thread, stop, registered = start_update_client_manager_thread(
        grid, legacy.client_manager)
    registered.wait()
    send = (secure_aggregation(options["round_timeout"])
            if options["secure_aggregation"] else
            lambda g, c: _send_round(g, c, options["round_timeout"]))
    attempts = 1 + (options["retries"] if options["on_client_failure"] == "retry"
                    else 0)
    # A node that missed a round's deadline is not asked again (Flower keeps a
    # dead node registered for a while): a restarted site joins as a new node.
    failed: set[int] = set()

    def deployed_round(r, state):
      leaves, treedef = jax.tree.flatten(state["params"])
      parameters = ndarrays_to_parameters([np.asarray(x) for x in leaves])
      legacy.state.array_records[MAIN_PARAMS_RECORD] = (
          compat.parameters_to_arrayrecord(parameters, True))
      legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
          {WorkflowKey.CURRENT_ROUND: r, WorkflowKey.START_TIME: time.time()})
      for attempt in range(attempts):
        nodes = _wait_for_nodes(legacy, failed, per_round, options["round_timeout"])
        rng = np.random.default_rng([config.seed, r, 0x5e1ec7])
        strategy.round_index = r
        chosen = rng.choice(len(nodes), min(per_round, len(nodes)), replace=False)
        strategy.nodes = sorted(nodes[i] for i in chosen)
        strategy.results = []
        watched = _RepliesSeen(grid)
        send(watched, legacy)
        replied = {str(res.metrics["site"]) for res in strategy.results}
        failed.update(set(strategy.nodes) - watched.nodes)
        # A round wants per_round sites; "drop" settles for min_clients.
        missing = per_round - len(strategy.results)
        if missing <= 0 or (options["on_client_failure"] == "drop"
                            and len(strategy.results) >= options["min_clients"]):
          break
        writers.info(f"round {r}: {len(replied)} of {per_round} sites replied "
                     f"({', '.join(sorted(replied)) or 'none'}); "
                     f"{'retrying' if attempt + 1 < attempts else 'giving up'}")
      else:
        raise RoundFailed(f"round {r}: only {len(strategy.results)} sites replied "
                          f"(min_clients={options['min_clients']}); the last "
                          "checkpoint is intact: rerun the server to resume")
      if missing:
        writers.info(f"round {r}: dropped {missing} site(s) that did not reply")
      mean_change = _mean_change(strategy.results, options["secure_aggregation"])
      params, server_opt_state = fed.round.server_update(
          state["params"], state["server_opt_state"],
          jax.tree.unflatten(treedef, mean_change))
      losses = {str(res.metrics["site"]): float(res.metrics["loss"])
                for res in strategy.results}
      sizes = {str(res.metrics["site"]): res.num_examples for res in strategy.results}
      total = sum(sizes.values())
      scalars = {"train/loss": sum(losses[s] * sizes[s] / total for s in losses),
                 "federated/sites": float(len(losses)),
                 **{f"client_{s}/loss": l for s, l in sorted(losses.items())}}
      return dict(state, params=params, server_opt_state=server_opt_state), scalars

    try:
      outcome = {"status": "finished",
                 "final": federated.run_rounds(fed, workdir, deployed_round)}
    finally:
      stop.set()
      thread.join()
  # Reported by the server command in one line, not as Flower's traceback.
  except UserError as e:
    outcome = {"status": "failed", "error": str(e), "exit_status": 2}
  except RoundFailed as e:
    outcome = {"status": "failed", "error": str(e), "exit_status": 1}
  finally:
    with open(os.path.join(workdir, "flower", "outcome.json"), "w") as f:
      json.dump(outcome, f, indent=1, default=float)


def _mean_change(results: list[FitRes], secure: bool) -> list[np.ndarray]:
  """The sites' changes' mean, weighted by their examples. With SecAgg+ every
  result carries that mean already (the server never sees one site's)."""
  if secure:
    return [np.asarray(x, np.float32) for x in parameters_to_ndarrays(
        results[0].parameters)]
  # Summed in the sites' order, in float64, then rounded once: the server's
  # part of the float error is below the simulation's float32 mean's.
  ordered = sorted(results, key=lambda res: str(res.metrics["site"]))
  total = sum(res.num_examples for res in ordered)
  arrays = [parameters_to_ndarrays(res.parameters) for res in ordered]
  return [np.asarray(sum(res.num_examples / total * a[i].astype(np.float64)
                         for res, a in zip(ordered, arrays)), np.float32)
          for i in range(len(arrays[0]))]


server_app = ServerApp()
server_app.main()(serve)
