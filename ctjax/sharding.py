"""The device mesh, logical-axis rules, and the shardings of state and batches.

Models name their parameter axes logically ("embed", "mlp", "heads", ...); the
config's `sharding_rules` map those names to the mesh axes `data`, `fsdp` and
`tensor`. Changing the layout (data-parallel, FSDP, tensor-parallel) is changing
the mesh sizes and rules, never the model.
"""
import itertools
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost

MESH_AXES = ("data", "fsdp", "tensor")
# A batch is split over every axis that holds different examples.
BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_config: Any, devices: list[Any] | None = None) -> Mesh:
  """The mesh from config sizes over `devices` (default: all of this run's);
  -1 takes the devices left over."""
  count = len(devices) if devices is not None else jax.device_count()
  sizes = [mesh_config[a] for a in MESH_AXES]
  fixed = int(np.prod([s for s in sizes if s > 0]))
  sizes = [count // fixed if s == -1 else s for s in sizes]
  return jax.make_mesh(tuple(sizes), MESH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def _fit_to_shape(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide evenly.

  A small model on a large mesh (say a 10-class head on 8 devices) would otherwise
  fail to compile; replicating that one dimension is the sensible fallback.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    kept = []
    for name in names:
      if dim % (mesh.shape[name] * int(np.prod([mesh.shape[k] for k in kept]))) == 0:
        kept.append(name)
    fitted.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return P(*fitted)


def state_shardings(abstract_boxed_state: Any, mesh: Mesh,
                    rules: Any) -> Any:
  """NamedShardings for a state whose leaves may be flax `Partitioned` boxes.

  Leaves without logical names (step counters, optimizer scalars, RNG keys) are
  replicated.
  """
  logical = nn.get_partition_spec(abstract_boxed_state)
  mesh_specs = nn.logical_to_mesh(logical, rules)
  shapes = nn.meta.unbox(abstract_boxed_state)
  return jax.tree.map(
      lambda spec, x: NamedSharding(mesh, _fit_to_shape(spec, x.shape, mesh)),
      mesh_specs, shapes, is_leaf=lambda s: isinstance(s, P))


def abstract_state(abstract_boxed_state: Any, mesh: Mesh, rules: Any
                   ) -> tuple[Any, Any]:
  """(ShapeDtypeStructs carrying their shardings, the shardings) of a boxed state,
  as `jax.eval_shape` of its initialiser gives it: what restoring and AOT
  compilation take."""
  shardings = state_shardings(abstract_boxed_state, mesh, rules)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.meta.unbox(abstract_boxed_state), shardings)
  return abstract, shardings


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles global arrays from each process's contiguous share of the batch."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
          for k, v in local_batch.items()}


_barrier_numbers = itertools.count()


def sync_processes(name: str, timeout_s: int = 600) -> None:
  """Every process waits here for the others (no-op in a single process).

  A barrier of jax.distributed's coordination service, not a collective. XLA's
  CPU collectives (gloo) connect the processes of a group of devices the first
  time a program uses that group, and fail if the others have not come within a
  fixed 30 s (once connected, a collective waits as long as it takes). On a
  loaded host one process can be that far behind, compiling or writing logs, so
  the processes meet here, with no such limit, before programs that may use a
  group for the first time. (`multihost_utils.sync_global_devices`, and so
  Orbax's own barriers, are such programs.)
  """
  if jax.process_count() == 1:
    return
  # Barrier names are used once; every process calls this in the same order.
  key = f"ctjax/{next(_barrier_numbers)}/{name}"
  multihost.get_jax_distributed_client().wait_at_barrier(key, timeout_s * 1000)


def describe_params(params: Any, shardings: Any) -> str:
  """One line per parameter: path, shape, dtype and mesh layout; then totals."""
  lines = []
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_shardings = jax.tree.leaves(shardings)
  total = 0
  for (path, leaf), sharding in zip(flat, flat_shardings):
    total += int(np.prod(leaf.shape))
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    lines.append(f"  {name:<60} {str(tuple(leaf.shape)):<18} {leaf.dtype!s:<9} "
                 f"{sharding.spec}")
  lines.append(f"  total parameters: {total:,}")
  return "\n".join(lines)
