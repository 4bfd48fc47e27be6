"""Test set-up: 8 fake CPU devices, so sharding code runs for real in every test.

XLA_FLAGS must be set before JAX initialises its backend, hence here, at import.
Subprocesses started by tests inherit it through the environment.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
