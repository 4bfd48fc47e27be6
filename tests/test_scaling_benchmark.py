"""benchmarks/scaling.py's count of collective bytes, on real compiled programs."""
import importlib.util
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "scaling.py")
_SPEC = importlib.util.spec_from_file_location("scaling_benchmark", _PATH)
scaling = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(scaling)


def test_counts_a_psum_and_an_all_gather_of_a_compiled_program():
  # x [8k, n] split by rows over 8 devices: its sum is an all-reduce of one f32
  # scalar, and 2 * x returned replicated is an all-gather of the whole array.
  k, n = 3, 16
  mesh = jax.make_mesh((8,), ("d",))
  x = jax.device_put(np.ones((8 * k, n), np.float32), NamedSharding(mesh, P("d")))
  replicated = NamedSharding(mesh, P())
  compiled = jax.jit(lambda x: (x.sum(), 2 * x),
                     out_shardings=(replicated, replicated)).lower(x).compile()
  assert scaling.collective_bytes(compiled.as_text()) == {
      "all-reduce": (1, 4), "all-gather": (1, 8 * k * n * 4)}


def test_counts_reduce_scatter_as_xla_cpu_writes_it():
  # A sum over the 8 row blocks kept split: XLA:CPU all-reduces each device's
  # whole [k, n] block, then slices its share.
  k, n = 8, 4
  mesh = jax.make_mesh((8,), ("d",))
  x = jax.device_put(np.ones((8 * k, n), np.float32), NamedSharding(mesh, P("d")))
  compiled = jax.jit(lambda x: x.reshape(8, k, n).sum(0),
                     out_shardings=NamedSharding(mesh, P("d"))).lower(x).compile()
  assert scaling.collective_bytes(compiled.as_text()) == {"all-reduce": (1, k * n * 4)}


def test_async_pairs_count_once_sized_by_their_done_and_tuples_add_up():
  # As GPU and TPU programs write them: a start's tuple holds operand and result.
  hlo = """
  %ags = (bf16[4,256]{1,0}, bf16[32,256]{1,0}) all-gather-start(bf16[4,256]{1,0} %p), dimensions={0}
  %agd = bf16[32,256]{1,0} all-gather-done((bf16[4,256]{1,0}, bf16[32,256]{1,0}) %ags)
  %ars = f32[1024]{0} all-reduce-start(%g), to_apply=%add
  %ard = f32[1024]{0} all-reduce-done(%ars)
  %ar.2 = (f32[256,1024]{1,0}, f32[], s32[7]{0}) all-reduce(%a, %b, %c), to_apply=%add
  ROOT %cp = u8[100]{0} collective-permute(%q), source_target_pairs={{0,1}}
  """
  assert scaling.collective_bytes(hlo) == {
      "all-gather": (1, 32 * 256 * 2),
      "all-reduce": (2, 1024 * 4 + (256 * 1024 * 4 + 4 + 7 * 4)),
      "collective-permute": (1, 100)}
