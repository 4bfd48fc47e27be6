"""jax.distributed for a run of several processes, and a check that all of them came.

Where the processes are described:
  - by hand: JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (tests/multiprocess_util.py starts processes on localhost so);
  - by the machine: a Cloud TPU VM pod slice (its metadata server) or SLURM
    (SLURM_NTASKS, SLURM_PROCID, ...), read by JAX's own detection, the one
    jax.distributed.initialize() runs when called without arguments. A single
    process (a laptop, a one-host TPU VM, one SLURM task) starts nothing.

The join check. jax.distributed.initialize waits for every process; when one never
comes (its host failed to start it, SLURM lost a node, a typo in --worker), JAX
ends the waiting processes after its timeout from C++, with DEADLINE_EXCEEDED, a
stack trace and no word on who was missing. So first the processes meet at the
coordinator's own port: process 0 listens there and notes each process id that
says hello; once all have, it answers "go" to each, closes the port, and JAX's
coordination service takes it over. If the time runs out first, process 0 stops
with one line naming how many of how many processes joined and which ids did not,
and sends that line to those that did, so that every host says the same thing and
exits with status 2 (ctjax/main.py). The timeout is CTJAX_JOIN_TIMEOUT_S seconds
(default 300), also handed to JAX for its own connection.
"""
import os
import socket
import time

from ctjax.errors import UserError

JOIN_TIMEOUT_ENV = "CTJAX_JOIN_TIMEOUT_S"
DEFAULT_JOIN_TIMEOUT_S = 300
# How long a process that reached the coordinator waits for its answer beyond the
# timeout: process 0 decides at its own deadline, and it may have started later.
_ANSWER_GRACE_S = 30
_RETRY_S = 0.5  # between attempts to reach a coordinator that is not up yet


def join_timeout_s() -> int:
  """CTJAX_JOIN_TIMEOUT_S, or 300."""
  value = os.environ.get(JOIN_TIMEOUT_ENV, "")
  if not value:
    return DEFAULT_JOIN_TIMEOUT_S
  try:
    seconds = int(value)
  except ValueError:
    seconds = 0
  if seconds < 1:
    raise UserError(f"{JOIN_TIMEOUT_ENV}={value!r}: give a whole number of seconds, "
                    "1 or more")
  return seconds


def initialize(timeout_s: int | None = None) -> None:
  """Starts jax.distributed when this is one process of several; else nothing.

  Must run before anything touches a device. `timeout_s` (default
  CTJAX_JOIN_TIMEOUT_S) bounds the wait for the other processes; past it, a
  UserError names the process ids that did not join.
  """
  timeout_s = join_timeout_s() if timeout_s is None else timeout_s
  cluster = _detect(timeout_s)
  if cluster is None:
    return
  address, num_processes, process_id, local_device_ids = cluster
  if process_id == 0:
    _gather(address, num_processes, timeout_s)
  else:
    _join(address, num_processes, process_id, timeout_s)
  import jax  # pylint: disable=g-import-not-at-top
  if (jax.config.jax_platforms in (None, "", "cpu")
      or os.environ.get("JAX_PLATFORMS") == "cpu"):
    # Collectives between CPU processes need gloo; accelerators bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(address, num_processes=num_processes,
                             process_id=process_id,
                             local_device_ids=local_device_ids,
                             cluster_detection_method="deactivate",
                             initialization_timeout=timeout_s)


def _detect(timeout_s: int) -> tuple[str, int, int, list[int] | None] | None:
  """(coordinator host:port, process count, this process's id, local device ids),
  or None when this process runs alone."""
  address = os.environ.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = _int_env("JAX_NUM_PROCESSES")
  process_id = _int_env("JAX_PROCESS_ID")
  local_ids = os.environ.get("JAX_LOCAL_DEVICE_IDS")
  local_device_ids = [int(i) for i in local_ids.split(",")] if local_ids else None
  if num_processes == 1:  # Said so (a sweep's trial in a SLURM job, say).
    return None
  # JAX's private names below: the detection jax.distributed.initialize runs when
  # called without arguments, whose answer the join check needs before JAX starts
  # (JAX is pinned below 0.11, where they are stable). It runs only where it has
  # something to find, SLURM or a Cloud TPU VM: it also probes Kubernetes, which
  # would warn, or query the cluster's API, at every start in any pod.
  from jax._src import cloud_tpu_init, clusters  # pylint: disable=g-import-not-at-top
  if (None in (address, num_processes, process_id) and
      (int(os.environ.get("SLURM_NTASKS") or 1) > 1
       or cloud_tpu_init.running_in_cloud_tpu_vm)):
    address, num_processes, process_id, local_device_ids = (
        clusters.ClusterEnv.auto_detect_unset_distributed_params(
            address, num_processes, process_id, local_device_ids, None, timeout_s))
  if address and num_processes is None:
    raise UserError("JAX_COORDINATOR_ADDRESS is set: set JAX_NUM_PROCESSES and "
                    "JAX_PROCESS_ID (0 to JAX_NUM_PROCESSES - 1) too")
  if not num_processes or num_processes < 2:
    return None
  if not address or process_id is None:
    raise UserError(f"JAX_NUM_PROCESSES={num_processes}: set JAX_COORDINATOR_ADDRESS"
                    "=host:port (process 0's host) and JAX_PROCESS_ID (0 to "
                    f"{num_processes - 1}) too")
  if not 0 <= process_id < num_processes:
    raise UserError(f"process id {process_id} is not one of 0..{num_processes - 1}: "
                    "check JAX_PROCESS_ID and JAX_NUM_PROCESSES")
  return address, num_processes, process_id, local_device_ids


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if not value:
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"{name}={value!r}: give a whole number") from None


def _gather(address: str, num_processes: int, timeout_s: int) -> None:
  """Process 0: waits at the coordinator's port until every other process said
  hello; answers "go" to all, or the line naming those missing."""
  port = int(address.rsplit(":", 1)[1])
  # Where JAX's service will listen (jax.distributed.initialize's default).
  bind = os.environ.get("JAX_COORDINATOR_BIND_ADDRESS", f"[::]:{port}")
  host = bind.rsplit(":", 1)[0].strip("[]")
  try:
    if ":" in host or not host:
      server = socket.create_server((host, port), family=socket.AF_INET6,
                                    dualstack_ipv6=socket.has_dualstack_ipv6())
    else:
      server = socket.create_server((host, port))
  except OSError as e:
    raise UserError(f"process 0 cannot listen on port {port} for the other "
                    f"processes ({e.strerror}): another program (a run not yet "
                    "ended?) holds it; end it, or pick another port") from None
  deadline = time.monotonic() + timeout_s
  joined: dict[int, socket.socket] = {}
  try:
    with server:
      while len(joined) < num_processes - 1:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
          break
        server.settimeout(remaining)
        try:
          connection, _ = server.accept()
        except TimeoutError:
          break
        try:  # The hello follows the connection at once.
          connection.settimeout(min(remaining, 10))
          process_id, count = (int(x) for x in _read_line(connection).split())
        except (OSError, ValueError):  # Not one of ours (say, a port scanner).
          connection.close()
          continue
        problem = (f"process {process_id} counts {count} processes, process 0 "
                   f"{num_processes}: start them all with the same settings"
                   if count != num_processes else
                   f"two processes have id {process_id}: give each its own"
                   if process_id in joined or process_id == 0 else None)
        if problem:
          _answer([*joined.values(), connection], "stop " + problem)
          raise UserError(problem)
        joined[process_id] = connection
    if len(joined) == num_processes - 1:
      _answer(joined.values(), "go")
      return
    missing = sorted(set(range(1, num_processes)) - set(joined))
    several = len(missing) > 1
    message = (f"{len(joined) + 1} of {num_processes} processes joined within "
               f"{timeout_s} s ({JOIN_TIMEOUT_ENV}); process id{'s' * several} "
               f"{_ranges(missing)} did not: check that the same command started "
               f"on {'their hosts' if several else 'its host'} and that "
               f"{'they reach' if several else 'it reaches'} {address}")
    _answer(joined.values(), "stop " + message)
    raise UserError(message)
  finally:
    for connection in joined.values():
      connection.close()


def _join(address: str, num_processes: int, process_id: int, timeout_s: int) -> None:
  """Process 1 and on: says hello to process 0 and waits for its answer."""
  host, port = address.rsplit(":", 1)
  host = host.strip("[]")
  who = f"process {process_id} of {num_processes}"
  deadline = time.monotonic() + timeout_s
  while True:  # Process 0 may not be listening yet.
    try:
      connection = socket.create_connection(
          (host, int(port)), timeout=max(1.0, min(10.0, deadline - time.monotonic())))
      break
    except OSError:
      if time.monotonic() >= deadline:
        raise UserError(f"{who}: process 0 (the coordinator, {address}) did not "
                        f"answer within {timeout_s} s ({JOIN_TIMEOUT_ENV}): check "
                        "that the same command started on its host and that this "
                        "host reaches it") from None
      time.sleep(_RETRY_S)
  with connection:
    try:
      connection.sendall(f"{process_id} {num_processes}\n".encode())
      connection.settimeout(timeout_s + _ANSWER_GRACE_S)
      answer = _read_line(connection)
    except OSError:
      answer = ""
  if answer == "go":
    return
  if answer.startswith("stop "):
    raise UserError(answer[len("stop "):])
  raise UserError(f"{who}: no answer from process 0 at {address} (it ended, or "
                  "another program holds that port): see process 0's output")


def _read_line(connection: socket.socket) -> str:
  data = b""
  while not data.endswith(b"\n"):
    chunk = connection.recv(4096)
    if not chunk:
      break
    data += chunk
  return data.decode("utf-8", "replace").strip()


def _answer(connections, line: str) -> None:
  for connection in connections:
    try:
      connection.sendall((line + "\n").encode())
    except OSError:  # That process has gone; the others still hear.
      pass


def _ranges(ids: list[int]) -> str:
  """[1, 2, 3, 7] -> "1-3, 7": short even when most of 256 hosts are missing."""
  parts, start = [], None
  for i, value in enumerate(ids):
    if start is None:
      start = value
    if i + 1 == len(ids) or ids[i + 1] != value + 1:
      parts.append(str(start) if start == value else f"{start}-{value}")
      start = None
  return ", ".join(parts)
