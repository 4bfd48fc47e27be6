"""Transfer evaluators (linear probe, few-shot, zero-shot), each against an
independent reference:

- the ridge solver against scikit-learn's `Ridge`, within a bound derived from the
  problem's condition number;
- the linear probe and few-shot classifiers against scikit-learn's
  `RidgeClassifier` fitted on the same features (equal predictions), the penalty
  chosen as scikit-learn scores it on the same held-out part;
- zero-shot assignment against cosine similarity computed in NumPy from the
  model's own outputs on the whole split at once;
- features on 8 devices, sharded, against one device, within the bound of
  tests/tolerances.py; padding never reaches a probe; two processes get the
  results of one;
- config mistakes stop before compilation with one line naming the key;
- `run_standalone` evaluates a run's latest and best checkpoints.
"""
import json
import math
import subprocess
import sys

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
from sklearn import datasets
from sklearn import linear_model
from sklearn import metrics as sk_metrics

import multiprocess_util
import run_util
import tolerances
from ctjax import config as config_lib
from ctjax import evaluators
from ctjax import models
from ctjax import sharding
from ctjax import train
from ctjax.data import pipeline
from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError
from ctjax.evaluators import common
from ctjax.evaluators import fewshot
from ctjax.evaluators import linear_probe
from ctjax.evaluators import standalone

U64 = float(np.finfo(np.float64).eps) / 2


def _mesh(data=-1, fsdp=1, tensor=1):
  return sharding.make_mesh(ml_collections.ConfigDict(
      dict(data=data, fsdp=fsdp, tensor=tensor)))


def _one_device_mesh():
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1),
                           sharding.MESH_AXES)


def _build(evaluator_configs, model, splits, *, batch_size=16, mesh=None,
           data_config=None, **kwargs):
  """make_evaluators over in-memory splits {name: {"inputs", "label"}}."""
  loaders = {name: pipeline.BatchLoader(
      s if isinstance(s, ArraySource) else ArraySource(s), num_threads=1)
             for name, s in splits.items()}
  return evaluators.make_evaluators(
      evaluator_configs, model=model, loaders=loaders, mesh=mesh or _mesh(),
      batch_size=batch_size, data_config=data_config or {}, train_batch_size=32,
      train_examples=len(loaders["train"].source), **kwargs)


def _init(model, inputs):
  return nn.meta.unbox(model.init(jax.random.PRNGKey(0), inputs[:1],
                                  train=False))["params"]


# --- The ridge solver. ---------------------------------------------------------


@pytest.mark.parametrize("l2_reg", [1e-3, 1.0, 100.0])
def test_ridge_solution_equals_scikit_learns(l2_reg):
  rng = np.random.default_rng(0)
  n, d, classes = 80, 12, 4
  # Correlated, offset features: centring and conditioning both matter.
  x = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + 3.0).astype(np.float32)
  labels = rng.integers(0, classes, n)
  [ours] = common.fit_ridge(x, labels, classes, [l2_reg])
  reference = linear_model.Ridge(alpha=l2_reg, solver="svd").fit(
      x.astype(np.float64), np.eye(classes)[labels])
  # Both solve the same float64 problem with backward-stable algorithms (SVD;
  # scikit-learn's SVD of its own centring): each solution is exact for data
  # perturbed by about n·d·u relative, which moves it by at most κ(XᵀX + λI)
  # times that (Higham, "Accuracy and Stability of Numerical Algorithms", §7.1,
  # §20.1); two such solutions differ by at most twice it. (Measured: none, they
  # are equal bit for bit; the bound is 2e-10 at λ = 1e-3.)
  s = np.linalg.svd(x - x.mean(0), compute_uv=False).astype(np.float64)
  kappa = (s.max() ** 2 + l2_reg) / (s.min() ** 2 + l2_reg)
  rtol = 2 * kappa * n * d * U64
  tolerances.assert_close_normwise(
      {"weights": ours.weights, "bias": ours.bias},
      {"weights": reference.coef_.T, "bias": reference.intercept_}, rtol)


# --- The linear probe. -----------------------------------------------------------


def _digits_splits():
  digits = datasets.load_digits()
  inputs = (digits.images[..., None] / 16.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  return ({"inputs": inputs[:1200], "label": labels[:1200]},
          {"inputs": inputs[1200:], "label": labels[1200:]})


def _reference_predictions(x_fit, y_fit, x_eval, l2_reg):
  return linear_model.RidgeClassifier(alpha=l2_reg, solver="svd").fit(
      np.asarray(x_fit, np.float64), y_fit).predict(np.asarray(x_eval, np.float64))


def test_linear_probe_on_digits_predicts_as_scikit_learn_on_the_same_features():
  train_split, validation = _digits_splits()
  model = models.get_model({"name": "mlp", "num_classes": 10, "hidden_sizes": (32,)})
  params = _init(model, train_split["inputs"])
  # Batches of 48 leave 48 - 1200 % 48 = 0 and 48 - 597 % 48 = 27 padded rows.
  [probe] = _build([{"type": "linear_probe", "every": "2 epochs"}], model,
                   {"train": train_split, "validation": validation}, batch_size=48)
  assert probe.prefix == "linear_probe/" and probe.every == math.ceil(2 * 1200 / 32)
  # Every 2 epochs (75 steps of 32) and at the end.
  assert [s for s in range(1, 201) if probe.due(s, last_step=200)] == [75, 150, 200]

  results = probe.run(params)
  assert sorted(results) == ["linear_probe/accuracy", "linear_probe/l2_reg"]
  x, y = probe.evaluator.extract(params, probe.evaluator.train_loader)
  x_eval, y_eval = probe.evaluator.extract(params, probe.evaluator.eval_loader)
  np.testing.assert_array_equal(y, train_split["label"])
  np.testing.assert_array_equal(y_eval, validation["label"])

  # The penalty: the one scikit-learn scores best on the same held-out part.
  fit, held_out = linear_probe.holdout_indices(len(x), 0.2, seed=0)
  scores = [sk_metrics.accuracy_score(y[held_out], _reference_predictions(
      x[fit], y[fit], x[held_out], l2)) for l2 in linear_probe.DEFAULT_L2_REGS]
  best = max(scores)
  chosen = max(l2 for l2, s in zip(linear_probe.DEFAULT_L2_REGS, scores)
               if s == best)
  assert results["linear_probe/l2_reg"] == chosen

  want = _reference_predictions(x, y, x_eval, chosen)
  got, labels, _ = probe.evaluator.predict(params)
  np.testing.assert_array_equal(got, want)
  assert results["linear_probe/accuracy"] == sk_metrics.accuracy_score(labels, want)
  # A random 32-unit ReLU layer keeps most of the digits' information, and least
  # squares onto one-hot classes is nearly as good a linear classifier as the
  # logistic loss: within 5 points of a logistic regression on the same features
  # (measured: 0.812 against 0.841; broken features would give ~0.1).
  logistic = linear_model.LogisticRegression(max_iter=2000).fit(x, y)
  assert results["linear_probe/accuracy"] >= logistic.score(x_eval, y_eval) - 0.05


def test_evaluators_take_the_parameters_as_the_trainer_holds_them():
  """The trainer holds (trainable, frozen) and joins them inside its compiled
  steps; an evaluator given the pair and the joining function sees the model's
  parameters, exactly."""
  train_split, validation = _digits_splits()
  model = models.get_model({"name": "mlp", "num_classes": 10, "hidden_sizes": (32,)})
  params = _init(model, train_split["inputs"])
  evaluator_configs = [{"type": "linear_probe", "l2_regs": (1.0,)}]
  splits = {"train": train_split, "validation": validation}
  [plain] = _build(evaluator_configs, model, splits)
  [pair] = _build(evaluator_configs, model, splits,
                  model_params=lambda trained: {**trained[0], **trained[1]})
  frozen = {"hidden_0": params["hidden_0"]}
  trainable = {k: v for k, v in params.items() if k not in frozen}
  assert pair.run((trainable, frozen)) == plain.run(params)


# --- Features: sharding and padding. ----------------------------------------------


def _tiny_bert(num_classes=3):
  return models.get_model({
      "name": "bert", "num_classes": num_classes, "vocab_size": 256,
      "hidden_size": 32, "num_layers": 2, "num_heads": 4, "intermediate_size": 64,
      "max_position_embeddings": 64, "dropout": 0.0})


def _token_split(n, length=16, seed=0):
  """Token ids with real lengths 3..length, padded with 0 (BERT's pad id)."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(1, 256, size=(n, length)).astype(np.int32)
  for row, real in zip(inputs, rng.integers(3, length + 1, size=n)):
    row[real:] = 0
  return {"inputs": inputs, "label": rng.integers(0, 3, n).astype(np.int32)}


def _extract(model, params, split, feature, *, mesh, batch_size,
             on_batch=lambda: None):
  """The features of `split` through an Extractor on `mesh`."""
  loader = pipeline.BatchLoader(ArraySource(split), num_threads=1)
  context = evaluators.Context(model=model, loaders={"train": loader}, mesh=mesh,
                               batch_size=batch_size, data_config={},
                               key="config.evaluators[0]", on_batch=on_batch)
  return common.Extractor(context, feature)(params, loader)


@pytest.mark.parametrize("feature", ["pooled", "mean"])
def test_sharded_features_equal_single_device_features(feature):
  model = _tiny_bert()
  split = _token_split(13)
  params = _init(model, split["inputs"])
  x_one, y_one = _extract(model, params, split, feature, mesh=_one_device_mesh(),
                          batch_size=4)

  # Parameters sharded as the trainer shards them: fsdp and tensor split the
  # matrix products' sums, data and fsdp the batch.
  mesh = _mesh(data=2, fsdp=2, tensor=2)
  rules = config_lib.base_config().sharding_rules
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                            split["inputs"][:1], train=False))
  shardings = sharding.state_shardings(boxed, mesh, rules)["params"]
  sharded_params = jax.device_put(params, shardings)
  assert any(not s.is_fully_replicated for s in jax.tree.leaves(shardings))
  x_eight, y_eight = _extract(model, sharded_params, split, feature, mesh=mesh,
                              batch_size=8)

  np.testing.assert_array_equal(y_one, split["label"])
  np.testing.assert_array_equal(y_eight, split["label"])
  # Terms summed in another order on the way to a feature, per layer: q, k, v
  # (32), scores (8), softmax (16), values (16), output (32), two LayerNorms'
  # means and variances (4 x 32), MLP (32 + 64): 328; two layers, the
  # embeddings' LayerNorm (64), the pooler (32) or the token mean (16): under 800.
  # (Measured: 2.8e-7 pooled, 1.1e-7 mean, of a bound of 2.0e-5.)
  tolerances.assert_close_normwise(x_eight, x_one, tolerances.sum_rtol(800))


@pytest.mark.parametrize("batch_size", [8, 16, 40])
def test_padded_rows_never_reach_a_probe(batch_size):
  """Every batch size pads differently (13 examples: 3, 3 and 27 padded rows,
  copies of example 0): the features are exactly the split's, row for row, as
  the model computes them on the whole split at once."""
  model = _tiny_bert()
  split = _token_split(13)
  params = _init(model, split["inputs"])
  batches = []
  x, y = _extract(model, params, split, "mean", mesh=_mesh(), batch_size=batch_size,
                  on_batch=lambda: batches.append(1))
  assert len(batches) == math.ceil(13 / batch_size)  # Each marked as progress.
  outputs = models.features(model, params, split["inputs"])
  real = (split["inputs"] != 0)[..., None]
  want = (np.asarray(outputs["last_hidden_state"]) * real).sum(1) / real.sum(1)
  np.testing.assert_array_equal(y, split["label"])
  # The same per-example arithmetic in another batch shape: the bound of the
  # test above.
  tolerances.assert_close_normwise(x, want, tolerances.sum_rtol(800))


# --- Few-shot. -------------------------------------------------------------------


def test_fewshot_draws_exactly_k_per_class_reproducibly():
  labels = np.repeat(np.arange(4), [7, 12, 5, 9])
  for k in (1, 5):
    chosen = fewshot.draw(labels, k, seed=3, repeat=0)
    assert np.bincount(labels[chosen]).tolist() == [k] * 4
    assert len(set(chosen.tolist())) == len(chosen)
    np.testing.assert_array_equal(chosen, fewshot.draw(labels, k, seed=3, repeat=0))
  five = fewshot.draw(labels, 5, seed=3, repeat=0)
  assert not np.array_equal(five, fewshot.draw(labels, 5, seed=4, repeat=0))
  assert not np.array_equal(five, fewshot.draw(labels, 5, seed=3, repeat=1))


def test_fewshot_classifier_is_fitted_on_the_drawn_train_examples_only():
  train_split, validation = _digits_splits()
  model = models.get_model({"name": "mlp", "num_classes": 10, "hidden_sizes": (32,)})
  params = _init(model, train_split["inputs"])
  [evaluator] = _build([{"type": "fewshot", "shots": [1, 5], "repeats": 3,
                         "seed": 7, "l2_reg": 0.5, "name": "fs"}], model,
                       {"train": train_split, "validation": validation})
  fs = evaluator.evaluator
  x, y = fs.extract(params, fs.train_loader)
  x_eval, y_eval = fs.extract(params, fs.eval_loader)
  predictions, labels = fs.predict(params)
  np.testing.assert_array_equal(labels, validation["label"])
  accuracies = {}
  for k in (1, 5):
    accuracies[k] = []
    for repeat in range(3):
      chosen = fewshot.draw(y, k, seed=7, repeat=repeat)
      want = _reference_predictions(x[chosen], y[chosen], x_eval, 0.5)
      np.testing.assert_array_equal(predictions[k][repeat], want)
      accuracies[k].append(sk_metrics.accuracy_score(y_eval, want))
  results = evaluator.run(params)
  assert results == pytest.approx({
      "fs/1shot_accuracy": np.mean(accuracies[1]),
      "fs/1shot_accuracy_std": np.std(accuracies[1]),
      "fs/5shot_accuracy": np.mean(accuracies[5]),
      "fs/5shot_accuracy_std": np.std(accuracies[5])}, rel=1e-12)
  assert evaluator.run(params) == results  # Reproducible.


# --- Zero-shot. ------------------------------------------------------------------

_CLASSES = ("billing question", "technical problem", "account access")
_TICKETS = [
    ("I was charged twice on my last invoice", 0),
    ("Why is my bill higher this month?", 0),
    ("Please refund the duplicate payment", 0),
    ("Can I pay the invoice by bank transfer?", 0),
    ("The app crashes when I open settings", 1),
    ("Error 500 when uploading a file", 1),
    ("The page does not load on Firefox", 1),
    ("Sync stopped working after the update", 1),
    ("I forgot my password and cannot log in", 2),
    ("My account is locked after three attempts", 2),
    ("How do I reset two-factor authentication?", 2),
    ("Please change the email address of my login", 2),
    ("The invoice total is wrong", 0),
]


def _byte_ids(texts, length):
  """Byte tokens padded with 0, written without ctjax's tokenizer."""
  out = np.zeros((len(texts), length), np.int32)
  for row, text in zip(out, texts):
    ids = list(text.encode("utf-8"))[:length]
    row[:len(ids)] = ids
  return out


def _word_tokenizer(path):
  """A BERT-style tokenizer.json ([CLS] words [SEP], [PAD] = 0) of the tickets'
  and classes' words, and its ids padded with 0, through `tokenizers` itself."""
  import tokenizers  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(
      [t for t, _ in _TICKETS] + list(_CLASSES),
      tokenizers.trainers.WordLevelTrainer(
          special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
  tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tokenizer.save(str(path))

  def ids(texts, length):
    out = np.zeros((len(texts), length), np.int32)
    for row, encoding in zip(out, tokenizer.encode_batch(list(texts))):
      row[:len(encoding.ids)] = encoding.ids[:length]
    return out
  return ids


@pytest.mark.parametrize("tokenizer", ["bytes", "tokenizer.json"])
def test_zeroshot_assigns_the_cosine_nearest_class_description(tokenizer, tmp_path):
  """The class descriptions are tokenised as the data was (special tokens and
  padding included) and embedded as the examples are."""
  model = _tiny_bert()
  if tokenizer == "bytes":
    length, ids, spec = 48, _byte_ids, "bytes"
  else:
    length, ids, spec = 16, _word_tokenizer(tmp_path / tokenizer), str(
        tmp_path / tokenizer)
  texts, labels = zip(*_TICKETS)
  split = {"inputs": ids(texts, length), "label": np.array(labels, np.int32)}
  params = _init(model, split["inputs"])
  source = ArraySource(split)
  source.label_names = ("a", "b", "c")  # As a jsonl source names its classes.
  [evaluator] = _build([{"type": "zeroshot", "classes": _CLASSES}], model,
                       {"train": source, "validation": source}, batch_size=8,
                       data_config={"tokenizer": spec, "seq_len": length})
  got, got_labels = evaluator.evaluator.predict(params)

  def embed(token_ids):  # The model on all rows at once, mean over real tokens.
    hidden = np.asarray(models.features(model, params, token_ids)[
        "last_hidden_state"], np.float64)
    real = (token_ids != 0)[..., None]
    return (hidden * real).sum(1) / real.sum(1)

  tickets, classes = embed(split["inputs"]), embed(ids(_CLASSES, length))
  cosine = (tickets @ classes.T) / np.outer(np.linalg.norm(tickets, axis=1),
                                            np.linalg.norm(classes, axis=1))
  want = cosine.argmax(1)
  np.testing.assert_array_equal(got_labels, labels)
  # The assignment can only differ where two classes' similarities are within
  # the features' rounding (the bound of the sharding test, on both vectors);
  # here none are, so it must be equal.
  top2 = np.sort(cosine, axis=1)[:, -2:]
  assert (top2[:, 1] - top2[:, 0]).min() > 4 * tolerances.sum_rtol(800)
  np.testing.assert_array_equal(got, want)
  assert evaluator.run(params) == {
      "zeroshot/accuracy": sk_metrics.accuracy_score(labels, want)}


# --- Several processes. ----------------------------------------------------------


def digits_results() -> dict[str, float]:
  """A linear probe and few-shot on digits, on a data-parallel mesh of every
  device of every process; run by each process of the test below too."""
  # A part of each split: every batch is a round of collectives between processes.
  train_split, validation = [{k: v[:n] for k, v in split.items()} for split, n in
                             zip(_digits_splits(), (400, 150))]
  model = models.get_model({"name": "mlp", "num_classes": 10, "hidden_sizes": (32,)})
  mesh = _mesh()
  # The same values on every process, replicated over the mesh, as the trainer's
  # data-parallel parameters are.
  params = jax.device_put(
      jax.tree.map(np.asarray, _init(model, train_split["inputs"])),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  results = {}
  for evaluator in _build([{"type": "linear_probe"},
                           {"type": "fewshot", "shots": (1, 5), "repeats": 2}],
                          model, {"train": train_split, "validation": validation},
                          batch_size=48, mesh=mesh):
    results.update(evaluator.run(params))
  return results


_WORKER = """
import json, sys
sys.path.insert(0, {tests!r})
from ctjax import distributed
distributed.initialize()
import test_evaluators
print("RESULTS " + json.dumps(test_evaluators.digits_results()), flush=True)
"""


def test_every_process_gets_the_results_of_one_process(tmp_path):
  """2 processes x 4 devices: each reads its share of every batch, and every
  process gets the whole split's features and so the same probes. The mesh is
  data-parallel with 6 rows on each device either way: every device runs the same
  program on the same rows, so the results are equal, not only close."""
  script = tmp_path / "worker.py"
  script.write_text(_WORKER.format(tests=str(run_util.REPO / "tests")))
  address = f"127.0.0.1:{multiprocess_util.free_port()}"
  processes = [subprocess.Popen(
      [sys.executable, str(script)], cwd=run_util.REPO, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      env=run_util.env(4, JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES="2",
                       JAX_PROCESS_ID=str(i))) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=run_util.TIMEOUT_S)[0] for p in processes]
  finally:
    for p in processes:
      p.kill()
  results = []
  for process, output in zip(processes, outputs):
    assert process.returncode == 0, output
    [line] = [l for l in output.splitlines() if l.startswith("RESULTS ")]
    results.append(json.loads(line[len("RESULTS "):]))
  assert results[0] == results[1] == digits_results()


# --- Mistakes in the config. --------------------------------------------------------


@pytest.mark.parametrize("evaluator_config, key", [
    ("linear_probe", "config.evaluators[0]="),
    ({"every": 5}, "config.evaluators[0].type=None"),
    ({"type": "ridge"}, "config.evaluators[0].type='ridge'"),
    ({"type": "common"}, "config.evaluators[0].type='common'"),
    ({"type": "linear_probe", "l2reg": 1.0}, "config.evaluators[0].l2reg"),
    ({"type": "linear_probe", "feature": "cls"}, "config.evaluators[0].feature='cls'"),
    ({"type": "linear_probe", "eval_split": "test"},
     "config.evaluators[0].eval_split='test'"),
    ({"type": "linear_probe", "l2_regs": (1.0, 0.0)}, "config.evaluators[0].l2_regs"),
    ({"type": "linear_probe", "every": "3 weeks"}, "config.evaluators[0].every"),
    ({"type": "linear_probe", "name": "a/b"}, "config.evaluators[0].name"),
    ({"type": "fewshot", "shots": (0, 5)}, "config.evaluators[0].shots"),
    ({"type": "fewshot", "shots": (5, 9)}, "config.evaluators[0].shots"),
    ({"type": "fewshot", "repeats": 0}, "config.evaluators[0].repeats"),
    ({"type": "zeroshot"}, "config.evaluators[0].feature='mean'"),
])
def test_config_mistakes_stop_with_one_line_naming_the_key(evaluator_config, key):
  model = models.get_model({"name": "mlp", "num_classes": 3, "hidden_sizes": (4,)})
  rng = np.random.default_rng(0)
  split = {"inputs": rng.normal(size=(24, 5)).astype(np.float32),
           "label": np.repeat(np.arange(3), 8).astype(np.int32)}
  with pytest.raises(UserError) as error:
    _build([evaluator_config], model, {"train": split, "validation": split})
  message = str(error.value)
  assert message.startswith(key) and "\n" not in message, message


def test_two_evaluators_of_one_type_need_their_own_names():
  model = models.get_model({"name": "mlp", "num_classes": 3, "hidden_sizes": (4,)})
  split = {"inputs": np.zeros((6, 5), np.float32),
           "label": np.arange(6, dtype=np.int32) % 3}
  with pytest.raises(UserError, match=r"^config\.evaluators\[1\]\.name='fewshot'"):
    _build([{"type": "fewshot", "shots": 1}, {"type": "fewshot", "shots": 2}],
           model, {"train": split, "validation": split})


def test_zeroshot_without_class_texts_names_the_option():
  model = _tiny_bert()
  split = _token_split(6)
  with pytest.raises(UserError, match=r"^config\.evaluators\[0\]\.classes: "):
    _build([{"type": "zeroshot"}], model, {"train": split, "validation": split},
           batch_size=8, data_config={"tokenizer": "bytes"})


# --- The standalone entry point. -------------------------------------------------


def test_standalone_evaluation_of_a_trained_run(tmp_path):
  config = config_lib.base_config()
  config.model = ml_collections.ConfigDict(
      {"name": "mlp", "num_classes": 10, "hidden_sizes": (16,)})
  config.data = ml_collections.ConfigDict({
      **config.data.to_dict(), "source": "sklearn_datasets", "name": "digits",
      "split_fractions": {"train": 0.8, "validation": 0.2}, "prefetch": 0})
  config.batch_size = 64
  config.optim.lr = 0.03  # Steps 3 and 6 differ enough for the probes to see it.
  config.train_duration = "6 steps"
  config.eval_every = config.log_every = "3 steps"
  config.checkpoint.every = "3 steps"
  # The best checkpoint by the *highest* validation loss: the earlier one, so that
  # "best" and "latest" are different checkpoints.
  config.checkpoint.best_metric = "validation/loss"
  config.checkpoint.best_mode = "max"
  config.final_eval_splits = ("validation",)
  train.train(config, str(tmp_path))
  records = [json.loads(line) for line in
             (tmp_path / "metrics.jsonl").read_text().splitlines()]
  loss = {r["step"]: r["validation/loss"] for r in records if "validation/loss" in r}
  assert loss[3] > loss[6]
  config.evaluators = ({"type": "linear_probe", "l2_regs": (1.0,)},
                       {"type": "fewshot", "shots": (2,)})

  latest = standalone.run_standalone(config, str(tmp_path))
  assert latest["step"] == 6
  # The task's metrics (of the run's final splits) and the evaluators given.
  assert {k for k in latest if not k.startswith("validation/")} == {
      "fewshot/2shot_accuracy", "linear_probe/accuracy", "linear_probe/l2_reg",
      "step"}
  assert latest["validation/accuracy"] == records[-1]["validation/accuracy"]
  assert latest["linear_probe/accuracy"] > 0.5
  best = standalone.run_standalone(config, str(tmp_path), checkpoint="best")
  assert best["step"] == 3
  assert best["linear_probe/accuracy"] != latest["linear_probe/accuracy"]
  # Appended after the run's own records, which all stay.
  after = [json.loads(line) for line in
           (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert after == records + [latest, best]
