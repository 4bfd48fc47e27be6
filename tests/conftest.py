"""Test set-up: 8 fake CPU devices, so sharding code runs for real in every test.

XLA_FLAGS must be set before JAX initialises its backend, hence here, at import.
Flags already in the environment are kept (`make test-isa` runs the suite with
`--xla_cpu_max_isa=AVX2`, say); subprocesses started by tests inherit them.
"""
import os
import tempfile

_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# A loaded 2-core machine can keep one of 8 fake devices' threads waiting longer
# than XLA's default 40 s before a collective gives up; give it more room.
if "--xla_cpu_collective_call_terminate_timeout_seconds" not in _flags:
  _flags += " --xla_cpu_collective_call_terminate_timeout_seconds=300"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the test processes and every `ctjax` they
# start (tests/run_util.py): a program compiled once is loaded, not recompiled.
# The cache returns the executable the compiler would build, so results are
# unchanged; only start-up gets faster.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "ctjax-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_collection_modifyitems(items):
  """Tests marked `long` go first, the rest in pytest-randomly's order (this
  stable sort runs after its shuffle). A long test started last would run alone
  while the other workers idle; started first, it overlaps the others (with
  `--dist worksteal`, an idle worker takes queued tests from a busy one)."""
  items.sort(key=lambda item: item.get_closest_marker("long") is None)
