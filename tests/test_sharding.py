"""The same config trains the same model on 1 device and on 8, whatever the layout.

Each layout runs `ctjax train` in its own process on a small GPT (byte-level, on
the standard library's source) and is compared step by step with a run on one
device. Sharding changes only the order of floating-point sums, so the curves agree
to float32 rounding, within bounds derived in tests/tolerances.py (from 3e-5 at
step 1 to 3e-4 at step 10). Measured, the largest relative difference in
train/loss over 10 steps is 3e-7 (data-parallel and FSDP) and 2e-7 (FSDP x tensor);
a real bug (a missing gradient all-reduce, a wrongly sharded batch, a dropped
microbatch) exceeds the bound by orders of magnitude from the first step.
"""
import re

import flax.linen as nn
import jax
import numpy as np
import pytest

import run_util
import tolerances
from ctjax import config as config_lib
from ctjax import models
from ctjax import sharding

LAYOUTS = {
    "data_parallel": {"data": 8, "fsdp": 1, "tensor": 1},
    "fsdp": {"data": 1, "fsdp": 8, "tensor": 1},
    "fsdp_tensor_data": {"data": 2, "fsdp": 2, "tensor": 2},
}


def mesh_overrides(mesh: dict[str, int]) -> dict[str, int]:
  return {f"mesh.{axis}": size for axis, size in mesh.items()}


def param_layouts(config_file: str, mesh: dict[str, int]
                  ) -> dict[str, tuple[tuple[int, ...], jax.sharding.NamedSharding]]:
  """{parameter path: (shape, sharding)} that ctjax.sharding gives this config."""
  config = config_lib.load_config(
      config_file, [f"{k}={v}" for k, v in mesh_overrides(mesh).items()])
  model = models.get_model(config.model)
  boxed = jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False)["params"],
      jax.ShapeDtypeStruct((1, config.data.seq_len), np.int32))
  rules = tuple(tuple(r) for r in config.sharding_rules)
  shardings = sharding.state_shardings(boxed, sharding.make_mesh(config.mesh), rules)
  return {"/".join(k.key for k in path): (leaf.shape, s)
          for (path, s), leaf in zip(jax.tree_util.tree_flatten_with_path(shardings)[0],
                                     jax.tree.leaves(nn.meta.unbox(boxed)))}


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  return run_util.shared_train(tmp_path_factory, run_util.GPT_CONFIG,
                               mesh_overrides({"data": 1, "fsdp": 1, "tensor": 1}),
                               devices=1)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_matches_single_device_loss_curve(layout, single_device,
                                                 tmp_path_factory):
  workdir = run_util.shared_train(tmp_path_factory, run_util.GPT_CONFIG,
                                  mesh_overrides(LAYOUTS[layout]), devices=8)
  reference = run_util.curve(single_device)
  sharded = run_util.curve(workdir)
  assert sorted(sharded) == list(range(1, 11))
  tolerances.assert_curves_close(sharded, reference, n=run_util.GPT_SUM_TERMS)
  # Evaluation too: the same validation loss from differently sharded params, after
  # 10 steps and one more forward pass.
  final = lambda w: run_util.metrics(w)[-1]["validation/loss"]
  assert final(workdir) == pytest.approx(
      final(single_device), rel=tolerances.curve_rtol(11, run_util.GPT_SUM_TERMS))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layout_shards_the_parameters(layout, tmp_path_factory):
  """Without this, the curves above could match because nothing was sharded."""
  mesh = LAYOUTS[layout]
  workdir = run_util.shared_train(tmp_path_factory, run_util.GPT_CONFIG,
                                  mesh_overrides(mesh), devices=8)
  layouts = param_layouts(str(workdir.parent / "config.py"), mesh)
  # Every weight matrix (and the embedding) is split into fsdp x tensor pieces:
  # FSDP and tensor-parallel layouts keep one piece per device; data-parallel
  # keeps a full copy.
  matrices = {p: v for p, v in layouts.items() if p.endswith(("kernel", "embedding"))}
  assert len(matrices) == 1 + 2 * 6  # The embedding; per layer q, k, v, out, 2 MLP.
  for path, (shape, s) in matrices.items():
    pieces = np.prod(shape) // np.prod(s.shard_shape(shape))
    assert pieces == mesh["fsdp"] * mesh["tensor"], (path, s.spec)
  # The run used these layouts: its parameter table prints each one.
  printed = dict(re.findall(r"^ +(\S+) +\([\d, ]*\) +\S+ +(P\(.*\))$",
                            (workdir.parent / "stdout.txt").read_text(), re.M))
  assert printed == {p: str(s.spec) for p, (_, s) in layouts.items()}
