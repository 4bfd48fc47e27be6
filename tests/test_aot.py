"""`ctjax compile` (ctjax/aot.py): the train step compiled for a target that is not
here, with libtpu for TPU slices and as an estimate on fake CPU devices otherwise.

`make test` installs libtpu beside the venv (.venv/libtpu, see the Makefile); the
compile for a TPU slice gets it on PYTHONPATH, the estimates run without it.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import run_util
from ctjax import aot
from ctjax import models
from ctjax import throughput
from ctjax.errors import UserError

LIBTPU = run_util.REPO / ".venv" / "libtpu"
GIB = 2**30


def _compile(tmp_path: pathlib.Path, config: str, topology: str, *overrides: str,
             libtpu: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
  """`ctjax compile` in a fresh process; (its result, the figures it wrote)."""
  out = tmp_path / f"{topology}.json"
  path = [str(run_util.REPO)] + ([str(LIBTPU)] if libtpu else [])
  result = subprocess.run(
      [sys.executable, "-m", "ctjax", "compile", "--config", config,
       "--topology", topology, "--json", str(out), *overrides],
      env=run_util.env(1, PYTHONPATH=os.pathsep.join(path)),
      capture_output=True, text=True, timeout=run_util.TIMEOUT_S)
  return result, json.loads(out.read_text()) if out.exists() else {}


@pytest.mark.parametrize("name, platform, topology, devices, hosts", [
    # Cloud TPU's shapes: v5e and v6e named by chips, v4 and v5p by TensorCores
    # (two per chip, one megacore device).
    ("v5e-256", "tpu", "v5e:16x16", 256, 64),
    ("v5litepod-16", "tpu", "v5e:4x4", 16, 4),
    ("v5e-8", "tpu", "v5e:2x4", 8, 1),
    ("v6e-64", "tpu", "v6e:8x8", 64, 16),
    ("v4-8", "tpu", "v4:2x2x1", 4, 1),
    ("v4-32", "tpu", "v4:2x2x4", 16, 4),
    ("v5p-128", "tpu", "v5p:4x4x4", 64, 16),
    ("v5e:2x2", "tpu", "v5e:2x2", 4, 1),
    ("h100x8", "gpu", None, 8, 1),
    ("h200x16", "gpu", None, 16, 2),
])
def test_target_names_become_devices_and_hosts(name, platform, topology, devices,
                                                hosts):
  target = aot.parse_target(name)
  assert (target.platform, target.topology, target.num_devices,
          target.num_hosts) == (platform, topology, devices, hosts)
  assert throughput.chip(target.device_kind) is not None


@pytest.mark.parametrize("name, says", [
    ("v5e-12", "powers of two"), ("v4-9", "two per chip"),
    ("v4:4x4", "3 dimensions"), ("tpu-v9", "h100x8")])
def test_a_wrong_target_name_says_what_is_accepted(name, says):
  with pytest.raises(UserError, match=says):
    aot.parse_target(name)


@pytest.mark.skipif(not LIBTPU.is_dir(), reason="libtpu is not installed in "
                    ".venv/libtpu (make test installs it)")
def test_compiling_for_a_tpu_slice_reports_xla_tpus_memory_and_the_model_flops(
    tmp_path):
  config = run_util.write_config(tmp_path, run_util.GPT_CONFIG)
  result, figures = _compile(tmp_path, config, "v5e-8", libtpu=True)
  assert result.returncode == 0, result.stderr
  assert figures["compiled_for"] == "tpu" and figures["estimate"] is None
  assert figures["libtpu"] == "0.0.42.1" and figures["devices"] == 8
  assert "ESTIMATE" not in result.stdout and "fits" in result.stdout
  # The state (data parallel: a whole copy on each chip) is the parameters and
  # Adam's two moments, all float32, plus a few scalars (step counts, the key).
  model = models.get_model(run_util.GPT_CONFIG["model"])
  params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 32), jnp.int32))
  param_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
  assert 3 * param_bytes <= figures["state_bytes"] <= 3 * param_bytes + 1024
  # XLA:TPU's own accounting holds at least the state and the chip's batch.
  assert figures["arguments_bytes"] >= figures["state_bytes"] + 2 * 32 * 12
  assert figures["total_bytes"] == (
      figures["arguments_bytes"] + figures["outputs_bytes"]
      - figures["aliased_bytes"] + figures["temporaries_bytes"]
      + figures["code_bytes"])
  assert figures["fits"] and figures["total_bytes"] < 16 * GIB
  # One chip's share of the model's FLOPs (tests/test_throughput.py checks them).
  assert figures["flops_per_device"] * 8 == throughput.train_step_flops(
      model, jax.ShapeDtypeStruct((16, 32), jnp.int32))


def test_a_gpu_target_is_an_estimate_on_as_many_cpu_devices(tmp_path):
  """Without a GPU, XLA:CPU compiles the same sharded program; its arguments
  are exactly each device's share of the state, the batch and the metric sums
  (the CPU pads nothing), which checks the state's accounting."""
  config = run_util.write_config(tmp_path, run_util.GPT_CONFIG)
  result, figures = _compile(tmp_path, config, "h100x8", "--config.mesh.data=1",
                             "--config.mesh.fsdp=8")
  assert result.returncode == 0, result.stderr
  assert "ESTIMATE, compiled for 8 CPU devices" in result.stdout
  assert figures["compiled_for"] == "cpu" and figures["mesh"]["fsdp"] == 8
  # The batch, 16 x 32 tokens over 8 devices: inputs and labels int32, mask
  # float32; the metric sums, 6 float32s on every device.
  batch_bytes = 2 * 32 * (4 + 4 + 4)
  assert figures["arguments_bytes"] == figures["state_bytes"] + batch_bytes + 6 * 4
  # Sharded over 8: an eighth of the replicated state, and a little more for
  # the leaves too small to split (scalars, the key).
  model = models.get_model(run_util.GPT_CONFIG["model"])
  params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x),
                          jax.ShapeDtypeStruct((1, 32), jnp.int32))
  param_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
  assert 3 * param_bytes / 8 <= figures["state_bytes"] <= 3 * param_bytes / 4
  # JAX's GPU pool is 75% of the H100's 79.6 GiB.
  assert figures["memory_budget_bytes"] == 0.75 * 81559 * 2**20


def test_a_step_that_does_not_fit_exits_2_naming_what_to_try(tmp_path):
  """A one-layer GPT of width 16384 (1.1 billion parameters): 12 bytes each of
  parameters and Adam's moments is 12.8 GiB before any activation, on a 16 GiB
  v5e chip. The state dominates, so sharding it comes first."""
  result, figures = _compile(
      tmp_path, str(run_util.REPO / "configs" / "gpt_stdlib.py") + ":size=tiny",
      "v5e-1", "--config.model.hidden_size=16384")
  assert result.returncode == 2
  assert "DOES NOT FIT" in result.stdout
  assert "ESTIMATE" in result.stdout and "libtpu is not installed" in result.stdout
  error = result.stderr.strip().splitlines()
  assert len(error) == 1, result.stderr
  assert error[0].startswith("ctjax: error: the train step needs ")
  assert "more than its 16.00 GiB" in error[0]
  assert error[0].index("config.mesh.fsdp=-1") < error[0].index(
      "config.grad_accum_steps=2 (now 1)")
  assert "config.model.remat='full' (now 'none')" in error[0]
  assert figures["state_bytes"] > 12 * GIB and not figures["fits"]


def test_the_1b_gpt_compiles_and_fits_one_h200(tmp_path):
  """configs/gpt_stdlib.py:size=1b: 1.2 billion parameters, their state, its
  FLOPs, and a step that fits one H200 (as an estimate on this CPU)."""
  result, figures = _compile(
      tmp_path, str(run_util.REPO / "configs" / "gpt_stdlib.py") + ":size=1b",
      "h200x1")
  assert result.returncode == 0, result.stderr
  hidden, layers, mlp = 2048, 24, 4 * 2048
  matmul_parameters = 256 * hidden + layers * (4 * hidden * hidden + 2 * hidden * mlp)
  assert 1.2e9 < matmul_parameters < 1.25e9
  # Parameters and both Adam moments in float32 (bfloat16 is the compute only).
  assert 12 * matmul_parameters < figures["state_bytes"] < 12.01 * matmul_parameters
  assert figures["flops_per_device"] == throughput.gpt_train_flops_per_token(
      matmul_parameters, layers, 2048, hidden) * 16 * 2048
  assert figures["fits"]
