"""Model FLOPs and MFU (ctjax/throughput.py): the chip table, the count against
hand counts and XLA's, and what the trainer logs."""
import gzip
import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from ml_collections import ConfigDict

import run_util
from ctjax import models
from ctjax import profiling
from ctjax import throughput


@pytest.mark.parametrize("kind, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12), ("TPU v5p", 459e12), ("TPU v6 lite", 918e12),
    ("cpu", None)])
def test_peak_flops_come_from_the_chip_table(kind, flops):
  assert throughput.peak_flops(kind) == flops
  assert throughput.peak_flops(kind, configured=1e12) == 1e12  # The config wins.


def _gpt_matmul_parameters(vocab, hidden, layers, mlp):
  """Parameters that take part in matrix products: the (tied) embedding as the
  output head, and per layer the query, key, value, output and two MLP kernels
  (biases and norms are added, not multiplied)."""
  return vocab * hidden + layers * (4 * hidden * hidden + 2 * hidden * mlp)


@pytest.mark.parametrize("scan_layers, remat", [(False, "none"), (True, "dots")])
def test_a_gpts_model_flops_are_the_analytic_count(scan_layers, remat):
  """6 FLOPs per matmul parameter per token plus attention, exactly (integers),
  whether the layers are unrolled or scanned (XLA's own cost analysis counts a
  scanned body once) and whatever is rematerialised (not the model's work)."""
  model = models.get_model(ConfigDict(dict(
      name="gpt", vocab_size=256, hidden_size=64, num_layers=3, num_heads=4,
      mlp_dim=256, scan_layers=scan_layers, remat=remat)))
  batch, length = 4, 32
  flops = throughput.train_step_flops(
      model, jax.ShapeDtypeStruct((batch, length), jnp.int32))
  analytic = throughput.gpt_train_flops_per_token(
      _gpt_matmul_parameters(256, 64, 3, 256), num_layers=3, seq_len=length,
      hidden_size=64) * batch * length
  assert flops == analytic


def test_model_flops_agree_with_xlas_count_of_the_compiled_step():
  """XLA's count of an unrolled GPT's forward and backward, compiled, against
  ours. Ours is the matmuls; XLA adds the elementwise work (norms, GELU,
  softmaxes, the loss, residual adds): per token here about 3 x (2 layers x
  (512 GELU x ~10 + 4 heads x 64 scores x ~5) + 256 logits x ~5) = 42k FLOPs
  against 2.8M of matmuls, 1.5%; the bound allows four times that."""
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
  ours = throughput.train_step_flops(model, tokens)
  assert 0.99 <= compiled.cost_analysis()["flops"] / ours <= 1.06


def test_a_cnns_model_flops_count_every_convolution_window():
  """The default config's kind of CNN, counted by hand: 2 FLOPs per multiply-add,
  each output element a 3x3 (or 1x1) window over the input channels; padding
  counts, as the convention is (XLA's count skips the zeros at the borders)."""
  model = models.get_model(ConfigDict(dict(
      name="cnn", num_classes=10, widths=(8, 16), norm_groups=4)))
  conv = lambda side, window, c_in, c_out: 2 * side * side * c_out * window * c_in
  per_example = (conv(8, 9, 1, 8)                         # stem, 8x8
                 + 2 * conv(8, 9, 8, 8)                   # stage 0 block
                 + conv(4, 9, 8, 16) + conv(4, 9, 16, 16)  # stage 1, stride 2
                 + conv(4, 1, 8, 16)                      # its 1x1 shortcut
                 + 2 * 16 * 10)                           # the classifier
  flops = throughput.train_step_flops(
      model, jax.ShapeDtypeStruct((4, 8, 8, 1), jnp.float32))
  assert flops == 3 * 4 * per_example


def test_the_logged_scalars_follow_from_flops_steps_and_peak():
  logged = throughput.scalars(2e12, steps_per_s=10.0, peak=100e12,
                              tokens_per_step=4096)
  assert logged == {"train/tokens_per_s": 40960.0,
                    "train/device_tflops_per_s": 20.0, "train/mfu": 0.2}
  assert throughput.scalars(None, 10.0, None, None) == {}


def test_a_gpt_run_logs_tokens_per_second_flops_mfu_and_a_profile(tmp_path):
  """A real run with config.peak_flops set: each log has tokens/s (16 sequences
  of 32 tokens a step), the device's TFLOP/s and MFU against that peak, and the
  FLOPs per step are the analytic forward and backward of the model. Steps 3-5
  are traced (config.profile) and summarised."""
  config = run_util.write_config(tmp_path, run_util.GPT_CONFIG)
  result = run_util.train(config, tmp_path / "run", {
      "peak_flops": 1e12, "log_every": 5, "profile.start_step": 2,
      "profile.steps": 3}, devices=1)
  summary = (tmp_path / "run" / "profile" / "summary.txt").read_text()
  assert "profile of steps 3..5:\n" + summary.strip() in result.stdout
  assert list((tmp_path / "run" / "profile").glob("plugins/profile/*/*.xplane.pb"))
  # The CPU runs XLA's programs on the host's threads: a timeline with the time.
  assert re.search(r"^/host:CPU: [\d.,]+ ms traced, busy [\d.,]+ ms", summary, re.M)
  records = [r for r in run_util.metrics(tmp_path / "run") if "train/loss" in r]
  model = run_util.GPT_CONFIG["model"]
  count = _gpt_matmul_parameters(256, model["hidden_size"], model["num_layers"],
                                 model["mlp_dim"])
  analytic = throughput.gpt_train_flops_per_token(
      count, model["num_layers"], 32, model["hidden_size"]) * 16 * 32
  assert len(records) == 2
  for r in records:
    assert r["train/tokens_per_s"] == pytest.approx(r["train/steps_per_s"] * 16 * 32)
    assert r["train/mfu"] == pytest.approx(r["train/device_tflops_per_s"] * 1e12 / 1e12)
    flops_per_step = r["train/device_tflops_per_s"] * 1e12 / r["train/steps_per_s"]
    # steps/s x (FLOPs / steps/s) rounds in float64: a relative 1e-15.
    assert flops_per_step == pytest.approx(analytic, rel=1e-12)


def test_a_profile_summary_counts_overlapping_time_once(tmp_path):
  """A hand-made trace: on the device, a 10 us op with a 4 us op inside it and a
  6 us op starting 2 us before the first ends, then a 7 us gap and a 3 us op:
  traced 0..24 us, busy 14 + 3 = 17 us (71%); each op's share is of those 17
  (nested ones count in their parent too); Python frames ("$...") left out."""
  directory = tmp_path / "plugins" / "profile" / "run"
  directory.mkdir(parents=True)
  event = lambda name, ts, dur, pid=1: {"ph": "X", "name": name, "pid": pid,
                                        "tid": 1, "ts": ts, "dur": dur}
  events = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/device:GPU:0"}},
      {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/host:CPU"}},
      event("fusion", 0, 10), event("dot", 3, 4), event("fusion", 8, 6),
      event("copy", 21, 3), event("$train.py:1 step", 0, 50, pid=2),
      event("Execute", 0, 2, pid=2)]
  with gzip.open(directory / "perfetto_trace.json.gz", "wt") as f:
    json.dump({"traceEvents": events}, f)
  lines = profiling.summarize(str(tmp_path)).splitlines()
  assert lines[1] == "/device:GPU:0: 0.02 ms traced, busy 0.02 ms (71%)"
  assert lines[2].split() == ["0.016", "ms", "94.1%", "x2", "fusion"]
  assert lines[3].split() == ["0.004", "ms", "23.5%", "x1", "dot"]
  assert lines[4].split() == ["0.003", "ms", "17.6%", "x1", "copy"]
  assert lines[5] == "/host:CPU: 0.00 ms traced, busy 0.00 ms (100%)"
  assert len(lines) == 7 and "$" not in lines[6]
