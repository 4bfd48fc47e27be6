"""Federated simulation (ctjax/federated.py): the clients' data and one round of
FedAvg, FedProx and FedAdam against hand-written loops over the clients."""
import json
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import run_util
import test_resume
import tolerances
from ctjax import federated
from ctjax import models
from ctjax import privacy
from ctjax import tasks
from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError

FEATURES, CLASSES = 6, 3


def _source(n: int = 300, seed: int = 0) -> ArraySource:
  rng = np.random.default_rng(seed)
  return ArraySource({"inputs": rng.normal(size=(n, FEATURES)).astype(np.float32),
                      "label": rng.integers(0, CLASSES, n).astype(np.int32)},
                     columns={"site": np.array(["a", "b", "c"])[np.arange(n) % 3]})


@pytest.mark.parametrize("options", [{}, {"dirichlet_alpha": 0.3},
                                     {"column": "site"}])
def test_partitions_are_disjoint_cover_the_data_and_are_reproducible(options):
  source = _source()
  parts = federated.partition(source, 3, seed=0, **options)
  joined = np.sort(np.concatenate(parts))
  np.testing.assert_array_equal(joined, np.arange(len(source)))
  again = federated.partition(source, 3, seed=0, **options)
  assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_a_column_partition_gives_each_site_its_own_examples():
  source = _source()
  parts = federated.partition(source, 3, seed=0, column="site")
  for part, site in zip(parts, "abc"):
    assert set(source.columns["site"][part]) == {site}
  with pytest.raises(UserError, match="has 3 distinct values"):
    federated.partition(source, 4, seed=0, column="site")
  with pytest.raises(UserError, match="no such column"):
    federated.partition(source, 3, seed=0, column="hospital")


def test_a_small_dirichlet_alpha_skews_the_clients_labels():
  """Each client's share of its most common class: with alpha = 0.1 most
  clients are dominated by one class; with alpha = 100 every client is close
  to the uniform 1/3 (the mean over 10 clients and 5 seeds, so one unlucky
  draw does not decide)."""
  source = _source(3000)

  def dominance(alpha):
    shares = []
    for seed in range(5):
      for part in federated.partition(source, 10, seed=seed, dirichlet_alpha=alpha):
        if len(part):
          shares.append(np.bincount(source.labels[part], minlength=3).max() / len(part))
    return np.mean(shares)

  assert dominance(0.1) > 0.8
  assert dominance(100.0) < 0.4


def test_a_rounds_clients_and_batches_are_drawn_from_their_own_data():
  parts = federated.partition(_source(), 3, seed=0, column="site")
  keys = [federated.client_key(name) for name in "abc"]
  clients, indices, weights = federated.sample_round(
      parts, keys, 4, clients_per_round=2, local_steps=3, batch_size=5, seed=0)
  assert len(set(clients)) == 2 and indices.shape == (2, 3, 5)
  for client, drawn in zip(clients, indices):
    assert set(drawn.ravel()) <= set(parts[client])
  np.testing.assert_allclose(weights, [0.5, 0.5])
  again = federated.sample_round(parts, keys, 4, clients_per_round=2, local_steps=3,
                                 batch_size=5, seed=0)
  np.testing.assert_array_equal(again[1], indices)
  # A client's batches depend on its own key, not on who else was drawn: a
  # deployed client draws them alone (ctjax/flower.py).
  for client, drawn in zip(clients, indices):
    np.testing.assert_array_equal(drawn, federated.client_indices(
        parts[client], keys[client], 4, local_steps=3, batch_size=5, seed=0))


def _setup(n_clients=3, local_steps=2, batch=8, seed=0):
  model = models.get_model(dict(name="mlp", num_classes=CLASSES, hidden_sizes=(16,)))
  rng = np.random.default_rng(seed)
  batches = {
      "inputs": rng.normal(size=(n_clients, local_steps, batch, FEATURES)).astype(
          np.float32),
      "label": rng.integers(0, CLASSES, (n_clients, local_steps, batch)).astype(
          np.int32),
      "mask": np.ones((n_clients, local_steps, batch), np.float32)}
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed),
                                    batches["inputs"][0, 0])["params"])
  weights = np.array([0.5, 0.3, 0.2], np.float32)[:n_clients]
  return model, batches, params, weights


def _client_changes(model, params, batches, lr, mu=0.0):
  """Each client: `local_steps` plain SGD steps on its mean loss (plus FedProx's
  mu/2 ||w - w_global||^2) from the global parameters; its change."""
  def loss(p, x, y):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  changes = []
  for c in range(batches["inputs"].shape[0]):
    p = params
    for e in range(batches["inputs"].shape[1]):
      g = jax.grad(loss)(p, batches["inputs"][c, e], batches["label"][c, e])
      p = jax.tree.map(lambda w, g, w0: w - lr * (g + mu * (w - w0)), p, g, params)
    changes.append(jax.tree.map(jnp.subtract, p, params))
  return changes


def _hand_written_round(model, params, batches, weights, lr, mu=0.0):
  """The clients' changes' mean, weighted."""
  changes = _client_changes(model, params, batches, lr, mu)
  return jax.tree.map(lambda *d: sum(w * x for w, x in zip(weights, d)), *changes)


def _round(algorithm, model, params, batches, weights, lr, **kw):
  local_tx = optax.sgd(lr)
  round_ = federated.make_round(
      model, local_tx, algorithm=algorithm,
      per_example_loss=tasks.get("classification").per_example_loss, **kw)
  new, _, losses = round_.run(params, round_.server_tx.init(params), batches,
                              weights, np.arange(len(weights), dtype=np.uint32),
                              jax.random.PRNGKey(0))
  return new, losses


# Reorderable float32 terms on the path to a parameter: a batch of 8 through a
# 6-16-3 network, twice (forward and backward), over 2 local steps
# (tests/tolerances.py).
TERMS = 8 + 2 * (6 + 16 + 3)


@pytest.mark.parametrize("algorithm, mu", [("fedavg", 0.0), ("fedprox", 0.5)])
def test_a_fedavg_or_fedprox_round_is_the_weighted_mean_of_the_clients(algorithm, mu):
  model, batches, params, weights = _setup()
  new, losses = _round(algorithm, model, params, batches, weights, lr=0.1, mu=mu)
  expected = jax.tree.map(jnp.add, params,
                          _hand_written_round(model, params, batches, weights, 0.1, mu))
  tolerances.assert_close_normwise(new, expected, tolerances.curve_rtol(2, TERMS))
  assert losses.shape == (3,) and np.all(np.isfinite(losses))


def test_a_rounds_clients_are_divided_among_the_mesh_devices():
  """4 devices, 3 clients padded to 4 as `sample_round` pads them: each device
  trains one client; the round is the hand-written one (the padding client,
  weighted 0, adds nothing), the clients' sum now across devices."""
  model, batches, params, weights = _setup()
  mesh = jax.make_mesh((4, 1, 1), ("data", "fsdp", "tensor"),
                       devices=jax.devices()[:4],
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  parts = [np.arange(10), np.arange(10, 30), np.arange(30, 40)]
  clients, _, padded_weights = federated.sample_round(
      parts, [1, 2, 3], 0, clients_per_round=3, local_steps=2, batch_size=8, seed=0,
      multiple=federated.client_shards(mesh))
  assert list(clients) == [0, 1, 2, -1] and padded_weights[3] == 0
  pad = lambda x: np.concatenate([x, x[:1]])  # The padding client trains on client 0's.
  padded = jax.tree.map(pad, batches)
  weights = np.append(weights, 0).astype(np.float32)
  round_ = federated.make_round(
      model, optax.sgd(0.1), algorithm="fedavg", mesh=mesh,
      per_example_loss=tasks.get("classification").per_example_loss)
  new, _, losses = round_.run(params, round_.server_tx.init(params), padded, weights,
                              np.arange(4, dtype=np.uint32), jax.random.PRNGKey(0))
  assert losses.sharding.shard_shape(losses.shape) == (1,)
  assert len(losses.sharding.device_set) == 4
  expected = jax.tree.map(jnp.add, params, _hand_written_round(
      model, params, batches, weights[:3], 0.1))
  # The single-device round's bound, plus the weighted sum's 4 terms now added
  # across devices in another order (each change is smaller than the
  # parameters, whose scale the bound is relative to).
  tolerances.assert_close_normwise(
      new, expected, tolerances.curve_rtol(2, TERMS) + tolerances.sum_rtol(4))
  # The padding client is client 0's work again: the same batches, the same
  # per-device program (one client each), no random numbers in this MLP. The
  # same work in the same order, so bit for bit, on any CPU.
  assert losses[3] == losses[0]


def test_fedprox_keeps_the_clients_closer_to_the_global_model():
  model, batches, params, weights = _setup()
  distance = lambda new: float(optax.tree.norm(jax.tree.map(jnp.subtract, new, params)))
  avg, _ = _round("fedavg", model, params, batches, weights, lr=0.5)
  prox, _ = _round("fedprox", model, params, batches, weights, lr=0.5, mu=1.0)
  assert distance(prox) < distance(avg)


def test_a_fedadam_round_applies_adam_to_the_mean_change():
  """The server's step: optax.adam (b2 0.99, eps 1e-3) on minus the clients'
  weighted mean change, from a fresh server state."""
  model, batches, params, weights = _setup()
  new, _ = _round("fedadam", model, params, batches, weights, lr=0.1,
                  server_lr=0.01)
  pseudo = jax.tree.map(jnp.negative,
                        _hand_written_round(model, params, batches, weights, 0.1))
  adam = optax.adam(0.01, b1=0.9, b2=0.99, eps=1e-3)
  updates, _ = adam.update(pseudo, adam.init(params), params)
  expected = optax.apply_updates(params, updates)
  # Adam's first step is lr g / (|g| + eps): its slope in g is at most 1/eps, so
  # the clients' float32 sums, within curve_rtol of each array's largest change
  # (tests/tolerances.py), move it by at most lr / eps times that; adding it to
  # the parameters rounds once more.
  rtol = tolerances.curve_rtol(2, TERMS)
  for got, want, change, start in zip(*map(jax.tree.leaves,
                                           (new, expected, pseudo, params))):
    bound = (0.01 / 1e-3 * rtol * np.abs(change).max()
             + 2 * tolerances.U32 * np.abs(start).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=bound)


# Federated training of the breast-cancer table: 3 clients, 4 rounds of 3 local
# steps, checkpoints every 2 rounds.
FEDERATED_CONFIG = {
    "seed": 0,
    "data": run_util.BREAST_CANCER_DATA,
    "model": {"name": "mlp", "num_classes": 2, "hidden_sizes": (16,)},
    "batch_size": 16, "eval_every": 2, "eval_splits": ("validation",),
    "final_eval_splits": ("validation",),
    "optim": {"name": "sgd", "lr": 0.1, "schedule": {"name": "constant"}},
    "checkpoint": {"every": 2, "keep": 3},
    "federated": {"clients": 3, "rounds": 4, "local_steps": 3,
                  "clients_per_round": 2, "algorithm": "fedadam", "server_lr": 0.05,
                  "dirichlet_alpha": 0.5},
}


def _train(tmp_path, config, workdir):
  from ctjax import config as config_lib  # pylint: disable=g-import-not-at-top
  return federated.train_federated(
      config_lib.load_config(run_util.write_config(tmp_path, config)), str(workdir))


def test_federated_rounds_log_per_client_and_resume_exactly(tmp_path):
  reference = tmp_path / "reference"
  final = _train(tmp_path, FEDERATED_CONFIG, reference)
  records = run_util.metrics(reference)
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  for r in records:  # Two of the three clients a round, weighted into the mean.
    assert len([k for k in r if k.startswith("client_")]) == 2
  assert "validation/accuracy" in records[1] and "validation/accuracy" in records[3]
  assert final["validation/accuracy"] == records[3]["validation/accuracy"]
  assert run_util.checkpoint_steps(reference) == [2, 4]

  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  _train(tmp_path, FEDERATED_CONFIG, resumed)
  test_resume.assert_bitwise_equal(run_util.saved_state(resumed, 4),
                                   run_util.saved_state(reference, 4))
  assert run_util.metrics(resumed) == records


def test_federated_mistakes_name_the_key(tmp_path):
  for federated_config, says in (
      ({"clients": 3, "rounds": 2, "local_steps": 1, "local_epochs": 1},
       "config.federated.local_epochs: not an option"),
      ({"clients": 3, "clients_per_round": 5}, "clients_per_round=5"),
      ({"clients": 3, "algorithm": "fedsgd"}, "algorithm='fedsgd'")):
    with pytest.raises(UserError, match=says):
      _train(tmp_path, {**FEDERATED_CONFIG, "federated": federated_config},
             tmp_path / "run")


def _client_privacy(**changes):
  values = dict(clip_norm=0.05, noise_multiplier=0.0, delta=1e-3, num_examples=10,
                expected_batch_size=2, physical_batch_size=3, target_epsilon=None)
  return privacy.Privacy(**{**values, **changes})


def test_dp_fedavg_clips_each_clients_change_and_divides_by_the_expected_count():
  """Two real clients and a padding one (weight 0): each real change scaled down
  to norm 0.05, summed, divided by the expected 2 clients, whatever the clients'
  sizes; the padding client adds nothing."""
  model, batches, params, _ = _setup()
  weights = np.array([0.7, 0.3, 0.0], np.float32)
  new, _ = _round("fedavg", model, params, batches, weights, lr=0.1,
                  dp=_client_privacy())
  changes = _client_changes(model, params, batches, 0.1)[:2]
  clipped = [jax.tree.map(lambda x, c=c: x * min(1.0, 0.05 / float(optax.tree.norm(c))),
                          c) for c in changes]
  assert all(float(optax.tree.norm(c)) > 0.05 for c in changes)  # Both clipped.
  expected = jax.tree.map(lambda w, a, b: w + (a + b) / 2, params, *clipped)
  tolerances.assert_close_normwise(new, expected, tolerances.curve_rtol(2, TERMS))


def test_dp_fedavg_noise_has_the_stated_scale():
  """No real client: the change is the noise alone over the expected count,
  N(0, (1.5 x 0.05 / 2)^2) per parameter, within six standard errors (see
  tests/test_privacy.py)."""
  model, batches, params, _ = _setup()
  new, _ = _round("fedavg", model, params, batches, np.zeros(3, np.float32), lr=0.1,
                  dp=_client_privacy(noise_multiplier=1.5))
  values = np.concatenate([np.ravel(a - b) for a, b in
                           zip(jax.tree.leaves(new), jax.tree.leaves(params))])
  std = 1.5 * 0.05 / 2
  assert abs(values.std() / std - 1) < 6 / np.sqrt(2 * values.size)


def test_a_dp_fedavg_run_logs_the_clients_epsilon(tmp_path):
  config = {**FEDERATED_CONFIG, "checkpoint": {"every": 4, "keep": 1},
            "federated": {**FEDERATED_CONFIG["federated"], "clients": 10,
                          "clients_per_round": 3, "dirichlet_alpha": 0.0},
            "privacy": {"clip_norm": 0.1, "noise_multiplier": 1.0, "delta": 1e-3}}
  workdir = tmp_path / "run"
  _train(tmp_path, config, workdir)
  dp = privacy.Privacy(**json.loads((workdir / "privacy.json").read_text()))
  assert (dp.num_examples, dp.expected_batch_size) == (10, 3)
  spent = run_util.curve(workdir, "privacy/epsilon")
  assert sorted(spent) == [1, 2, 3, 4]
  assert all(spent[r] == pytest.approx(dp.epsilon(r), rel=1e-12) for r in spent)
  assert run_util.checkpoint_position(workdir, 4)["epsilon"] == spent[4]
