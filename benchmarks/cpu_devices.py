"""A benchmark's number of (fake) CPU devices, fixed before JAX starts.

  import cpu_devices        # benchmarks/ is the script's folder, first on sys.path
  cpu_devices.use(ARGS.devices)
  import jax
"""
import os
import re


def use(devices: int) -> None:
  """Sets XLA_FLAGS so that JAX's CPU backend has `devices` devices (any count
  already there replaced), and quiets TensorFlow's start-up notices."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 os.environ.get("XLA_FLAGS", "")).split()
  os.environ["XLA_FLAGS"] = " ".join(
      flags + [f"--xla_force_host_platform_device_count={devices}"])
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
