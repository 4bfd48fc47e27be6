"""Model FLOPs, throughput and MFU (model FLOPs utilisation) of the train step.

The FLOPs are the model's: its matrix products and convolutions, forward and
backward, counted in the traced model (`train_step_flops` says why not in the
compiled program), for the global batch and divided evenly among the devices.
MFU is that count per second against the devices' peak:

  mfu = model flops per step / devices * steps per second / peak FLOP/s per device

The peak is the dense bfloat16 matrix-unit rate of the chip, from the table
below by `jax.Device.device_kind`, or `config.peak_flops` (FLOP/s per device),
which wins where set; a CPU has no entry, so MFU is logged only where a peak is
known. (MFU counts the model's FLOPs, not the hardware's: a float32 model on a
bf16 peak reads low, as it should.)
"""
import dataclasses
from typing import Any

import numpy as np

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  peak_flops: float    # dense bf16 matrix FLOP/s per device
  memory_bytes: float  # accelerator memory (HBM) per device


# From the vendors' data sheets (GPU memory as nvidia-smi reports it), matched by
# a lower-case substring of device_kind, in this order ("v5 lite" before "v5").
CHIPS = (
    ("h200", Chip(989e12, 143771 * 2**20)),  # NVIDIA H200 SXM (the H100's compute)
    ("h100", Chip(989e12, 81559 * 2**20)),   # H100 SXM (the PCIe card: 756e12)
    ("a100-sxm4-80gb", Chip(312e12, 80 * GIB)),
    ("a100", Chip(312e12, 40 * GIB)),        # A100 40 GB
    ("v6 lite", Chip(918e12, 32 * GIB)),     # TPU v6e (Trillium)
    ("v6e", Chip(918e12, 32 * GIB)),
    ("v5 lite", Chip(197e12, 16 * GIB)),     # TPU v5e
    ("v5e", Chip(197e12, 16 * GIB)),
    ("v5p", Chip(459e12, 95 * GIB)),         # TPU v5p
    ("v5", Chip(459e12, 95 * GIB)),
    ("v4", Chip(275e12, 32 * GIB)),          # TPU v4 (a megacore: two TensorCores)
)


def chip(device_kind: str) -> Chip | None:
  """The table's entry for a `jax.Device.device_kind`, or None."""
  kind = device_kind.lower()
  return next((c for name, c in CHIPS if name in kind), None)


def peak_flops(device_kind: str, configured: float = 0.0) -> float | None:
  """FLOP/s per device: `configured` if positive, else the table's, else None."""
  if configured and configured > 0:
    return float(configured)
  known = chip(device_kind)
  return known.peak_flops if known else None


def _sub_jaxprs(eqn: Any) -> list[Any]:
  """The jaxprs an equation runs (jit, remat, custom_jvp, scan, cond, ...)."""
  from jax.extend import core  # pylint: disable=g-import-not-at-top
  found = []
  for value in eqn.params.values():
    for item in value if isinstance(value, (tuple, list)) else [value]:
      if isinstance(item, core.ClosedJaxpr):
        found.append(item.jaxpr)
      elif isinstance(item, core.Jaxpr):
        found.append(item)
  return found


def matmul_flops(jaxpr: Any) -> float:
  """FLOPs of a jaxpr's matrix products and convolutions (2 per multiply-add),
  a scan's body times its length, a cond's costliest branch, a while loop's
  body once (its trip count is not known when tracing)."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(
          [lhs[d] for d in lhs_contract])
    elif name == "conv_general_dilated":
      # Each output element sums kernel window x input features / groups terms:
      # the kernel's size over its output features.
      kernel = eqn.invars[1].aval.shape
      out_features = kernel[eqn.params["dimension_numbers"].rhs_spec[0]]
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * (
          np.prod(kernel) / out_features)
    elif name == "scan":
      total += eqn.params["length"] * sum(map(matmul_flops, _sub_jaxprs(eqn)))
    elif name == "cond":
      total += max(map(matmul_flops, _sub_jaxprs(eqn)), default=0.0)
    else:
      total += sum(map(matmul_flops, _sub_jaxprs(eqn)))
  return total


def train_step_flops(model: Any, inputs: Any) -> float:
  """Model FLOPs of one train step on a batch shaped like `inputs` (an array or
  ShapeDtypeStruct, the global batch): 3 x the forward pass's matrix products,
  as PaLM (appendix B) and MaxText count them: the backward pass multiplies
  each product's output gradient by both of its inputs, twice the forward.

  Counted in the traced forward, not in the compiled program, for two reasons:
  XLA's cost analysis counts a loop body once, so scanned layers and
  accumulated microbatches would read as one layer or one microbatch; and it
  cannot see into fused kernels (cuDNN's attention is a custom call), which
  are traced here as the XLA attention they equal. Rematerialisation is not
  counted: it is work the hardware redoes, not the model's (hence MFU, not
  hardware FLOPs utilisation). Norms, activations and the optimizer are not
  either; for transformers they are a few percent.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if getattr(model, "attention_impl", None) not in (None, "xla"):
    model = model.clone(attention_impl="xla")
  example = jax.ShapeDtypeStruct((1, *inputs.shape[1:]), inputs.dtype)
  params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), example)
  batch = jax.ShapeDtypeStruct(inputs.shape, inputs.dtype)
  forward = jax.make_jaxpr(lambda p, x: model.apply(p, x, train=False))(params, batch)
  return 3 * matmul_flops(forward.jaxpr)


def tokens_per_step(inputs: Any, global_batch_size: int) -> int | None:
  """Tokens a step reads: batch x length for token ids [batch, length] (texts),
  None for other inputs (tables, images)."""
  if inputs.ndim == 2 and np.issubdtype(inputs.dtype, np.integer):
    return global_batch_size * inputs.shape[1]
  return None


def gpt_train_flops_per_token(parameters: int, num_layers: int, seq_len: int,
                              hidden_size: int) -> float:
  """The analytic count for a decoder: 6 FLOPs per parameter per token (forward
  2, backward 4), plus attention's scores and weighted values, 6 * 2 * layers *
  seq_len * hidden (Kaplan et al. 2020; PaLM, appendix B, without the causal
  halving, as XLA computes the whole score matrix)."""
  return 6.0 * parameters + 12.0 * num_layers * seq_len * hidden_size


def scalars(flops_per_device: float | None, steps_per_s: float,
            peak: float | None, tokens_per_step: int | None) -> dict[str, float]:
  """The throughput metrics of a log interval, as the trainer logs them:
  train/tokens_per_s (token inputs only), train/device_tflops_per_s (the model
  FLOPs one device ran per second) and train/mfu (that over its peak)."""
  out = {}
  if tokens_per_step:
    out["train/tokens_per_s"] = steps_per_s * tokens_per_step
  if flops_per_device:
    out["train/device_tflops_per_s"] = flops_per_device * steps_per_s / 1e12
    if peak:
      out["train/mfu"] = flops_per_device * steps_per_s / peak
  return out
