"""Transfer controls (ctjax/peft.py): parameter groups, freezing, layer decay, LoRA.

Each against an independent reference:
- lr_mult/wd_mult: two AdamW steps equal a NumPy float64 AdamW with the scaled lr
  and decay, clipped by the global norm of the whole gradient;
- frozen parameters: bitwise unchanged after training steps, no optimizer state,
  and the memory saved reported as the bytes of their Adam moments;
- layer-wise decay: each layer's update is its gradient times lr * decay**(L - i);
- LoRA: step 0 is the base model bit for bit; only adapters (and `trainable`)
  change; merged parameters compute what the adapted model computes (against a
  NumPy merge); a LoRA run of the real trainer checkpoints a fraction of a full
  fine-tuning run's bytes, resumes bit-identical, and equals its single-device
  run within the derived bound;
- bad configs stop with one line naming the key, before anything compiles.
"""
import shutil

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

import run_util
import tolerances
from ctjax import config as config_lib
from ctjax import models
from ctjax import optim
from ctjax import peft
from ctjax import train
from ctjax.errors import UserError

BERT = {"name": "bert", "num_classes": 3, "vocab_size": 64, "hidden_size": 16,
        "num_layers": 3, "num_heads": 2, "intermediate_size": 32, "dropout": 0.0}
MLP = {"name": "mlp", "num_classes": 3, "hidden_sizes": (8, 8)}


def _config(model=None, **overrides) -> ml_collections.ConfigDict:
  """The base config with `model`, then `overrides` as {"optim.lr": 0.1, ...}."""
  config = config_lib.base_config()
  config.model = ml_collections.ConfigDict(model or BERT)
  config.optim.schedule.name = "constant"
  for key, value in overrides.items():
    node, *path = key.split(".")
    target = config
    for name in [node, *path][:-1]:
      target = target[name]
    with target.ignore_type():
      target[[node, *path][-1]] = value
  return config


def _init(config, batch, *, abstract_only=False):
  """(model, boxed abstract params, params or None) of config.model, seed 0."""
  model = models.get_model(config.model)
  init = lambda rng: model.init(rng, batch["inputs"][:1], train=False)["params"]
  boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
  if abstract_only:
    return model, boxed, None
  return model, boxed, nn.meta.unbox(jax.jit(init)(jax.random.PRNGKey(0)))


def _tokens(seed=0, batch=8, length=8):
  rng = np.random.default_rng(seed)
  return {"inputs": rng.integers(1, 64, (batch, length)).astype(np.int32),
          "label": rng.integers(0, 3, batch).astype(np.int32),
          "mask": np.ones(batch, np.float32)}


def _setup(config, batch):
  """What train.py builds: plan, optimizer, state and compiled train step."""
  model, boxed, params = _init(config, batch)
  plan = peft.make_plan(config, boxed)
  tx, _ = optim.make_optimizer(config.optim, total_steps=100, global_batch_size=8,
                               train_examples=None,
                               groups=plan.labels_and_multipliers())
  trained, frozen = plan.split(params, jax.random.PRNGKey(2))
  state = {"step": jnp.zeros((), jnp.int32), "params": trained, "frozen": frozen,
           "opt_state": tx.init(trained), "rng": jax.random.PRNGKey(1)}
  step = jax.jit(train.make_train_step(model, tx, 1, plan.model_params))
  return model, plan, params, state, step


def _nested(flat_tree: dict[str, np.ndarray]):
  return traverse_util.unflatten_dict(flat_tree, sep="/")


def flat(tree) -> dict[str, np.ndarray]:
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                   for k in path):
          np.asarray(x) for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


# --- Parameter groups. --------------------------------------------------------------


def _numpy_adamw(params, grads_per_step, *, lr, wd, clip, b1=0.9, b2=0.999, eps=1e-8):
  """AdamW in float64 with per-parameter (lr, wd) and global-norm clipping."""
  params = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(x) for k, x in params.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads.values()))
    scale = min(1.0, clip / norm)
    for k, g in grads.items():
      g = g.astype(np.float64) * scale
      m[k] = b1 * m[k] + (1 - b1) * g
      v[k] = b2 * v[k] + (1 - b2) * g * g
      direction = (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + eps)
      decay = wd[k] * params[k] if params[k].ndim >= 2 else 0.0
      params[k] = params[k] - lr[k] * (direction + decay)
  return params


def test_lr_and_wd_multipliers_scale_a_hand_written_adamw():
  groups = (("hidden_0/kernel", {"lr_mult": 0.5, "wd_mult": 3.0}),
            ("classifier/", {"lr_mult": 4.0}),
            ("hidden_1", {"wd_mult": 0.0}))
  config = _config(MLP, **{"optim.groups": groups, "optim.lr": 0.01,
                           "optim.weight_decay": 0.1, "optim.clip_norm": 0.5})
  batch = {"inputs": np.zeros((1, 4), np.float32)}
  _, boxed, params = _init(config, batch)
  plan = peft.make_plan(config, boxed)
  tx, _ = optim.make_optimizer(config.optim, total_steps=10, global_batch_size=1,
                               train_examples=None,
                               groups=plan.labels_and_multipliers())
  rng = np.random.default_rng(0)
  grads = [jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32),
                        params) for _ in range(2)]
  state, new = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, new)
    new = optax.apply_updates(new, updates)
  # The hand-written optimizer's view: each parameter's own lr and decay.
  lr_mult = {"hidden_0/kernel": 0.5, "classifier/kernel": 4.0, "classifier/bias": 4.0}
  wd_mult = {"hidden_0/kernel": 3.0, "hidden_1/kernel": 0.0, "hidden_1/bias": 0.0}
  names = list(flat(params))
  want = _numpy_adamw(flat(params), [flat(g) for g in grads],
                      lr={k: 0.01 * lr_mult.get(k, 1.0) for k in names},
                      wd={k: 0.1 * wd_mult.get(k, 1.0) for k in names}, clip=0.5)
  # Elementwise float32 arithmetic against float64, and the clip's norm: a sum of
  # every gradient entry's square, twice (tests/tolerances.py).
  entries = sum(v.size for v in flat(params).values())
  tolerances.assert_close_normwise(flat(new), want,
                                   tolerances.curve_rtol(2, n=entries))
  # Each multiplier made a difference a rounding could not: without them the
  # hidden_0 kernel would move twice as far.
  plain = _numpy_adamw(flat(params), [flat(g) for g in grads],
                       lr=dict.fromkeys(names, 0.01), wd=dict.fromkeys(names, 0.1),
                       clip=0.5)
  for k in lr_mult:
    assert not np.allclose(plain[k], want[k], rtol=1e-4), k


def test_frozen_parameters_are_bitwise_unchanged_and_hold_no_optimizer_state():
  groups = (("^embeddings/", "frozen"), ("layer_0/", "frozen"))
  config = _config(**{"optim.groups": groups, "optim.lr": 0.01})
  _, plan, params, state, step = _setup(config, _tokens())
  frozen_before = flat(state["frozen"])
  assert frozen_before and all(k.startswith(("embeddings/", "encoder/layer_0/"))
                               for k in frozen_before)
  trained_before = flat(state["params"])
  for seed in range(3):
    state, _ = step(state, _tokens(seed))
  for k, want in frozen_before.items():
    assert np.asarray(flat(state["frozen"])[k]).tobytes() == want.tobytes(), k
  # Everything else trained.
  for k, want in trained_before.items():
    assert not np.array_equal(flat(state["params"])[k], want), k
  # Adam's two moments exist for the trained parameters only ...
  for moment in ("mu", "nu"):
    held = {k.split(f"/{moment}/", 1)[1] for k in flat(state["opt_state"])
            if f"/{moment}/" in k}
    assert held == set(trained_before), moment
  # ... so the report says freezing saved two float32 copies of the frozen ones.
  full_tx, _ = optim.make_optimizer(config.optim, total_steps=100,
                                    global_batch_size=8, train_examples=None)
  report = peft.describe_optimizer_memory(
      state["opt_state"], jax.eval_shape(full_tx.init, params))
  frozen_bytes = sum(x.nbytes for x in frozen_before.values())
  assert f"freezing saves {2 * frozen_bytes:,} bytes" in report


def test_layer_decay_scales_each_layers_update_by_the_formula():
  """With SGD the update is -lr * factor * gradient, so the factor is read off."""
  decay, lr, num_layers = 0.5, 0.1, BERT["num_layers"]
  config = _config(**{"optim.layer_decay": decay, "optim.name": "sgd",
                      "optim.lr": lr, "optim.clip_norm": 0.0,
                      "optim.groups": (("pooler/", {"lr_mult": 3.0}),)})
  _, boxed, params = _init(config, _tokens())
  plan = peft.make_plan(config, boxed)
  tx, _ = optim.make_optimizer(config.optim, total_steps=10, global_batch_size=1,
                               train_examples=None,
                               groups=plan.labels_and_multipliers())
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for path, update in flat(updates).items():
    if path.startswith("encoder/layer_"):
      i = int(path.split("/")[1].removeprefix("layer_"))
      factor = decay ** (num_layers - i)
    elif path.startswith("embeddings/"):
      factor = decay ** (num_layers + 1)
    else:  # The head: pooler (its group multiplies by 3) and classifier.
      factor = 3.0 if path.startswith("pooler/") else 1.0
    np.testing.assert_allclose(update, -lr * factor, rtol=tolerances.sum_rtol(2),
                               err_msg=path)


# --- LoRA. ----------------------------------------------------------------------------

LORA = {"lora.rank": 4, "lora.alpha": 8.0,
        "lora.targets": ("attention/(query|output)/kernel$", "intermediate/kernel$"),
        "lora.trainable": ("^classifier/",)}


def test_lora_adapters_see_attention_kernels_as_matrices():
  _, boxed, _ = _init(_config(**LORA), _tokens(), abstract_only=True)
  plan = peft.make_plan(_config(**LORA), boxed)
  trained, frozen = plan.split(jax.tree.map(jnp.zeros_like, nn.meta.unbox(boxed)),
                               jax.random.PRNGKey(0))
  shapes = {k: v.shape for k, v in flat(trained).items()}
  layer = "encoder/layer_1/"
  assert shapes[layer + "attention/query/kernel_lora_a"] == (16, 4)   # [embed, r]
  assert shapes[layer + "attention/query/kernel_lora_b"] == (4, 16)   # [r, heads*kv]
  assert shapes[layer + "attention/output/kernel_lora_a"] == (16, 4)  # [heads*kv, r]
  assert shapes[layer + "attention/output/kernel_lora_b"] == (4, 16)  # [r, embed]
  assert shapes[layer + "intermediate/kernel_lora_a"] == (16, 4)
  assert shapes[layer + "intermediate/kernel_lora_b"] == (4, 32)
  # Trained: the adapters and the classifier; everything else is frozen.
  assert sorted(shapes) == sorted(
      [f"encoder/layer_{i}/{k}_lora_{ab}" for i in range(3)
       for k in ("attention/query/kernel", "attention/output/kernel",
                 "intermediate/kernel") for ab in "ab"]
      + ["classifier/bias", "classifier/kernel"])
  assert "encoder/layer_1/attention/query/kernel" in flat(frozen)


def test_lora_starts_at_the_base_model_and_trains_only_adapters():
  config = _config(**LORA, **{"optim.lr": 0.01})
  model, plan, params, state, step = _setup(config, _tokens())
  apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
  x = _tokens(5)["inputs"]
  # B is zero, so the effective kernels are the base kernels: equal logits.
  assert np.array_equal(apply(plan.model_params(state["params"], state["frozen"]), x),
                        apply(params, x))
  before = state
  for seed in range(3):
    state, _ = step(state, _tokens(seed))
  for k, want in flat(before["frozen"]).items():
    assert np.asarray(flat(state["frozen"])[k]).tobytes() == want.tobytes(), k
  changed = {k for k, v in flat(state["params"]).items()
             if not np.array_equal(v, flat(before["params"])[k])}
  assert changed == set(flat(before["params"]))  # A and B both move by step 3.


def test_merged_params_compute_what_the_adapted_model_computes():
  config = _config(**LORA)
  model, plan, params, state, _ = _setup(config, _tokens())
  # Nonzero B, as after training, so the merge has something to add.
  rng = np.random.default_rng(1)
  trained = {k: (rng.normal(0, 0.2, v.shape).astype(v.dtype) if k.endswith("_lora_b")
                 else v) for k, v in flat(state["params"]).items()}
  trained = _nested(trained)
  merged = peft.merge(trained, state["frozen"], config)
  # NumPy float64: W + (alpha / r) A B, reshaped to the kernel.
  want = dict(flat(params))
  for k, kernel in list(want.items()):
    a = flat(trained).get(k + "_lora_a")
    if a is not None:
      ab = a.astype(np.float64) @ flat(trained)[k + "_lora_b"].astype(np.float64)
      want[k] = kernel + 8.0 / 4 * ab.reshape(kernel.shape)
  # Each merged entry is a 4-term sum, then one addition.
  tolerances.assert_close_normwise(flat(merged), want, tolerances.sum_rtol(4 + 1))
  x = _tokens(5)["inputs"]
  apply = jax.jit(lambda p: model.apply({"params": p}, x))
  adapted = apply(plan.model_params(trained, state["frozen"]))
  reference = apply(jax.tree.map(lambda w: np.float32(w), _nested(want)))
  assert not np.allclose(adapted, apply(params), rtol=1e-3)  # The adapters act.
  # The merged kernels differ by rounding (above); through the model, the logits
  # by a chain of sums: per token, 3 layers of products over 16 and 32 features,
  # attention over 8 positions, the pooler and classifier: about 3 * (16 * 4 + 32 +
  # 8) + 32 = 344 terms.
  tolerances.assert_close_normwise({"logits": adapted}, {"logits": reference},
                                   tolerances.sum_rtol(344))
  tolerances.assert_close_normwise({"logits": model.apply({"params": merged}, x)},
                                   {"logits": adapted}, tolerances.sum_rtol(344))


def test_lora_on_scanned_layers_keeps_the_layers_axis():
  """Scanned layers stack each kernel [layers, ...]: every layer its own pair."""
  gpt = {"name": "gpt", "vocab_size": 64, "hidden_size": 16, "num_layers": 2,
         "num_heads": 2, "mlp_dim": 32, "scan_layers": True}
  config = _config(gpt, **{"lora.rank": 2, "lora.alpha": 2.0})
  batch = {"inputs": _tokens()["inputs"]}
  _, boxed, params = _init(config, batch)
  plan = peft.make_plan(config, boxed)
  trained, frozen = plan.split(params, jax.random.PRNGKey(0))
  query = "decoder/layers/attention/query/kernel"
  assert flat(params)[query].shape == (2, 16, 2, 8)  # [layers, embed, heads, kv]
  assert flat(trained)[query + "_lora_a"].shape == (2, 16, 2)
  assert flat(trained)[query + "_lora_b"].shape == (2, 2, 16)
  b = np.random.default_rng(0).normal(size=(2, 2, 16)).astype(np.float32)
  trained = _nested({**flat(trained), query + "_lora_b": b})
  merged = flat(plan.model_params(trained, frozen))[query]
  for layer in range(2):
    a = flat(trained)[query + "_lora_a"][layer].astype(np.float64)
    want = flat(params)[query][layer] + (a @ b[layer]).reshape(16, 2, 8)
    tolerances.assert_close_normwise({"k": merged[layer]}, {"k": want},
                                     tolerances.sum_rtol(2 + 1))


# --- Bad configs. ---------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"optim.groups": (("^nothing/", "frozen"),)},
     "config.optim.groups[0]='^nothing/': matches no parameter"),
    ({"optim.groups": (("pooler", {"frozen": True, "lr_mult": 0.1}),)},
     "config.optim.groups[0]={'frozen': True, 'lr_mult': 0.1}: frozen and lr_mult "
     "both"),
    ({"optim.groups": (("pooler", {"lr": 0.1}),)}, "config.optim.groups[0]="),
    ({"optim.groups": (("pooler", {"lr_mult": -1.0}),)},
     "config.optim.groups[0].lr_mult=-1.0"),
    ({"optim.groups": (("(", "frozen"),)}, "config.optim.groups[0]='(': not a valid"),
    ({"optim.groups": ((".", "frozen"),)}, "config.optim.groups: every parameter"),
    ({"optim.layer_decay": 1.5}, "config.optim.layer_decay=1.5"),
    ({"lora.rank": -1}, "config.lora.rank=-1"),
    ({"lora.rank": 2, "lora.targets": ("convolution/kernel",)},
     "config.lora.targets[0]='convolution/kernel': matches no kernel"),
    ({"lora.rank": 2, "lora.targets": ("attention/query/bias",)},
     "config.lora.targets[0]='attention/query/bias': matches no kernel"),
    ({"lora.rank": 2, "lora.trainable": ("^head/",)},
     "config.lora.trainable[0]='^head/': matches no parameter"),
    ({"lora.rank": 2, "lora.alpha": 0.0}, "config.lora.alpha=0.0"),
])
def test_bad_transfer_configs_name_the_key(overrides, message):
  _, boxed, _ = _init(_config(), _tokens(), abstract_only=True)
  with pytest.raises(UserError) as error:
    peft.make_plan(_config(**overrides), boxed)
  assert str(error.value).startswith(message), str(error.value)
  assert "\n" not in str(error.value)


def test_layer_decay_without_layers_is_refused():
  _, boxed, _ = _init(_config(MLP), {"inputs": np.zeros((1, 4), np.float32)},
                      abstract_only=True)
  with pytest.raises(UserError, match=r"^config\.optim\.layer_decay=0\.5: the model "
                                      r"has no layer_\{i\}"):
    peft.make_plan(_config(MLP, **{"optim.layer_decay": 0.5}), boxed)


def test_trainer_refuses_a_bad_pattern_before_compiling(tmp_path, capsys):
  config = {**run_util.MLP_CONFIG, "optim": {"groups": (("^hiden_0/", "frozen"),)}}
  with pytest.raises(UserError, match=r"^config\.optim\.groups\[0\]='\^hiden_0/'"):
    train.train(config_lib.load_config(run_util.write_config(tmp_path, config)),
                str(tmp_path / "run"))
  assert "train step memory" not in capsys.readouterr().out  # Nothing compiled.


# --- The trainer: a LoRA run on a pretrained MLP. ------------------------------------

STEPS, EVERY = 10, 5
WIDE_MLP = {**run_util.MLP_CONFIG,
            "model": {**run_util.MLP_CONFIG["model"], "hidden_sizes": (512, 512)},
            "train_duration": STEPS, "checkpoint": {"every": EVERY, "keep": 5},
            "mesh": {"data": 2, "fsdp": 2, "tensor": 2}}
LORA_RUN = {"lora": {"rank": 2, "alpha": 4.0, "targets": (r"hidden_\d/kernel$",),
                     "trainable": ("^classifier/",)},
            # A group on the adapters too, so the sharded step runs multi_transform.
            "optim": {"groups": ((r"hidden_1/kernel_lora", {"lr_mult": 0.5}),)},
            "model_init_skip": ("^classifier/",)}
# Reorderable terms on the path to the loss (tests/tolerances.py): a batch of 32,
# per example forward the 64-, 512- and 512-input products, the rank-2 products
# of the adapters and their sums into the kernels, the 10-way softmax; backward
# as many.
WIDE_MLP_LORA_SUM_TERMS = 32 + 2 * (64 + 512 + 512 + 2 * (2 + 1) + 10)


def _in_process(directory, config, workdir):
  return train.train(config_lib.load_config(run_util.write_config(directory, config)),
                     str(workdir))


def _step_bytes(workdir, step: int) -> int:
  """Bytes of the files in a checkpoint's step folder."""
  return sum(p.stat().st_size
             for p in (workdir / "checkpoints" / str(step)).rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def lora_runs(tmp_path_factory):
  """A full fine-tuning run (also the pretrained model), and a LoRA run from it."""
  directory = tmp_path_factory.mktemp("lora")
  _in_process(directory, WIDE_MLP, directory / "full")
  lora = {**WIDE_MLP, **LORA_RUN, "model_init": str(directory / "full")}
  _in_process(directory, lora, directory / "lora")
  return directory, lora


def test_lora_checkpoint_holds_only_adapters_and_is_a_fraction_of_full(lora_runs):
  directory, _ = lora_runs
  saved = run_util.saved_state(directory / "lora")
  assert sorted(flat(saved["params"])) == [
      "classifier/bias", "classifier/kernel",
      *(f"hidden_{i}/kernel_lora_{ab}" for i in range(2) for ab in "ab")]
  assert set(saved) == {"step", "params", "opt_state", "rng"}
  sizes = {name: _step_bytes(directory / name, STEPS)
           for name in ("full", "lora")}
  # Measured on 8 devices: 3,211,044 against 275,213 bytes (adapters and head,
  # their Adam moments, and Orbax's metadata, which is most of it).
  assert sizes["lora"] * 5 < sizes["full"], sizes


def test_lora_run_resumes_bit_identical(lora_runs, tmp_path):
  """The frozen base is in no checkpoint: the resumed run reloads it from
  model_init, and must compute exactly what the uninterrupted run did."""
  directory, lora = lora_runs
  workdir = tmp_path / "run"
  shutil.copytree(directory / "lora", workdir)
  for later in run_util.checkpoint_steps(workdir):
    if later > EVERY:
      shutil.rmtree(workdir / "checkpoints" / str(later))
  _in_process(tmp_path, lora, workdir)
  want, got = (run_util.saved_state(w, STEPS) for w in (directory / "lora", workdir))
  assert flat(got).keys() == flat(want).keys()
  for k, v in flat(want).items():
    assert flat(got)[k].tobytes() == v.tobytes(), k
  assert run_util.curve(workdir) == run_util.curve(directory / "lora")


def test_sharded_lora_run_equals_the_single_device_run(lora_runs):
  directory, lora = lora_runs
  config = {**lora, "mesh": {"data": -1, "fsdp": 1, "tensor": 1}}
  single = directory / "single"
  result = run_util.train(run_util.write_config(directory, config, "single.py"),
                          single, devices=1)
  tolerances.assert_curves_close(run_util.curve(single),
                                 run_util.curve(directory / "lora"),
                                 n=WIDE_MLP_LORA_SUM_TERMS)
  # The start-up summary and the checkpoint's size are in the log.
  assert "LoRA rank 2, alpha 4: 2 kernels adapted" in result.stdout
  assert "freezing saves" in result.stdout
  assert (f"checkpoint of step {STEPS}: "
          f"{_step_bytes(single, STEPS):,} bytes") in result.stdout
