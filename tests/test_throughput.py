"""Model FLOPs and MFU (ctjax/throughput.py): the chip table, the compiled
count against hand counts, and what the trainer logs."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

import run_util
from ctjax import models
from ctjax import throughput


@pytest.mark.parametrize("kind, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
    ("cpu", None)])
def test_peak_flops_come_from_the_chip_table(kind, flops):
  assert throughput.peak_flops(kind) == flops
  assert throughput.peak_flops(kind, configured=1e12) == 1e12  # The config wins.


def test_compiled_flops_are_one_devices_share_of_a_sharded_matmul():
  mesh = jax.make_mesh((8,), ("data",))
  x = jax.ShapeDtypeStruct((512, 256), jnp.float32,
                           sharding=NamedSharding(mesh, P("data", None)))
  w = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=NamedSharding(mesh, P()))
  compiled = jax.jit(lambda x, w: x @ w).lower(x, w).compile()
  # 2 FLOPs (a multiply and an add) per term of a 512x256 by 256x128 product,
  # split over 8 devices by rows: exact integers, no rounding.
  assert throughput.compiled_flops(compiled) == 2 * 512 * 256 * 128 / 8


def test_a_gpt_steps_compiled_flops_match_the_analytic_count():
  """XLA's count of a GPT's forward and backward against 6 N per token plus
  attention. The analytic count is the matmuls; XLA adds the elementwise work
  (norms, GELU, softmaxes, the loss, residual adds): per token here about
  3 x (2 layers x (512 GELU x ~10 + 4 heads x 64 scores x ~5) + 256 logits x ~5)
  = 42k FLOPs against 2.8M of matmuls, 1.5%; the bound allows four times that."""
  model = models.get_model(ConfigDict(dict(
      name="gpt", vocab_size=256, hidden_size=128, num_layers=2, num_heads=4,
      mlp_dim=512)))
  batch, length = 8, 64
  tokens = jnp.zeros((batch, length), jnp.int32)
  params = nn.meta.unbox(model.init({"params": jax.random.PRNGKey(0)},
                                    tokens)["params"])

  def loss(params, tokens):
    logits = model.apply({"params": params}, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1], tokens[:, 1:]).mean()

  compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens).compile()
  count = sum(p.size for p in jax.tree.leaves(params))
  analytic = throughput.gpt_train_flops_per_token(
      count, num_layers=2, seq_len=length, hidden_size=128) * batch * length
  assert 0.99 <= throughput.compiled_flops(compiled) / analytic <= 1.06


def test_the_logged_scalars_follow_from_flops_steps_and_peak():
  logged = throughput.scalars(2e12, steps_per_s=10.0, peak=100e12,
                              tokens_per_step=4096)
  assert logged == {"train/tokens_per_s": 40960.0,
                    "train/device_tflops_per_s": 20.0, "train/mfu": 0.2}
  assert throughput.scalars(None, 10.0, None, None) == {}


def test_a_gpt_run_logs_tokens_per_second_flops_and_mfu(tmp_path):
  """A real run with config.peak_flops set: each log has tokens/s (16 sequences
  of 32 tokens a step), the device's TFLOP/s and MFU against that peak, and the
  FLOPs per step are at least the analytic forward and backward of the model
  (the compiled step also counts the elementwise work and the optimizer)."""
  config = run_util.write_config(tmp_path, run_util.GPT_CONFIG)
  run_util.train(config, tmp_path / "run", {"peak_flops": 1e12, "log_every": 5},
                 devices=1)
  records = [r for r in run_util.metrics(tmp_path / "run") if "train/loss" in r]
  params = run_util.saved_state(tmp_path / "run")["params"]
  count = sum(np.size(p) for p in jax.tree.leaves(params))
  model = run_util.GPT_CONFIG["model"]
  analytic = throughput.gpt_train_flops_per_token(
      count, model["num_layers"], 32, model["hidden_size"]) * 16 * 32
  assert len(records) == 2
  for r in records:
    assert r["train/tokens_per_s"] == pytest.approx(r["train/steps_per_s"] * 16 * 32)
    assert r["train/mfu"] == pytest.approx(r["train/device_tflops_per_s"] * 1e12 / 1e12)
    flops_per_step = r["train/device_tflops_per_s"] * 1e12 / r["train/steps_per_s"]
    assert flops_per_step >= analytic
