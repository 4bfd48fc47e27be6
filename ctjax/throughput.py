"""Model FLOPs, throughput and MFU (model FLOPs utilisation) of the train step.

The FLOPs are the compiled step's own count (XLA's cost analysis of the program
each device runs: for a sharded program, one device's share), so they cover
whatever the model does, attention and remat recomputation included. MFU is
that count per second against the device's peak:

  mfu = flops per device per step * steps per second / peak FLOP/s per device

The peak is the dense bfloat16 matrix-unit rate of the chip, from the table
below by `jax.Device.device_kind`, or `config.peak_flops` (FLOP/s per device),
which wins where set; a CPU has no entry, so MFU is logged only where a peak is
known. (MFU counts the model's FLOPs, not the hardware's: a float32 model on a
bf16 peak reads low, as it should.)
"""
from typing import Any

import numpy as np

# Dense bf16 peak FLOP/s per device, from the vendors' data sheets, matched by a
# lower-case substring of device_kind, in this order ("v5 lite" before "v5").
PEAK_FLOPS = (
    ("h200", 989e12),     # NVIDIA H200 SXM (the H100 SXM's compute)
    ("h100", 989e12),     # NVIDIA H100 SXM (the PCIe card: 756e12; set peak_flops)
    ("a100", 312e12),     # NVIDIA A100
    ("v6 lite", 918e12),  # TPU v6e (Trillium)
    ("v6e", 918e12),
    ("v5 lite", 197e12),  # TPU v5e
    ("v5e", 197e12),
    ("v5p", 459e12),      # TPU v5p
    ("v5", 459e12),
    ("v4", 275e12),       # TPU v4
)


def peak_flops(device_kind: str, configured: float = 0.0) -> float | None:
  """FLOP/s per device: `configured` if positive, else the table's, else None."""
  if configured and configured > 0:
    return float(configured)
  kind = device_kind.lower()
  for name, flops in PEAK_FLOPS:
    if name in kind:
      return flops
  return None


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs one device runs per call of a compiled program, or None where the
  backend does not say."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(analysis, (list, tuple)):  # One per program on older JAX.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


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
