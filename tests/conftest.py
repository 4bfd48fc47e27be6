"""Test set-up: 8 fake CPU devices, so sharding code runs for real in every test.

XLA_FLAGS must be set before JAX initialises its backend, hence here, at import.
Subprocesses started by tests inherit it through the environment.
"""
import os

# A loaded 2-core machine can keep one of 8 fake devices' threads waiting longer
# than XLA's default 40 s before a collective gives up; give it more room.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=300")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
