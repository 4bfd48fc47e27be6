"""A watchdog for hung runs: no progress for too long, and the process exits.

A run can hang where nothing raises: a collective waiting for a process that died,
a file system that stopped answering, a data reader stuck on a network mount. A
scheduler sees a live process and waits forever. With `config.watchdog_minutes`
set, a daemon thread checks how long ago the trainer last made progress; past the
limit it prints one line and every thread's stack on stderr (where each thread
was stuck), and ends the process with exit status 3, so that a scheduler restarts
it and the run resumes from its last checkpoint.

What counts as progress (the trainer calls `step_finished()`): a training step
dispatched, and each evaluation batch. The loop waits for the devices at every log
and evaluation (and on several CPU devices every step), so a device that stops
also stops the marks. Checkpoint writes do not mark progress while they run, but
the next step does once they return: `watchdog_minutes` must exceed the longest
of one step, one evaluation batch (the first one compiles the evaluation step)
and one checkpoint write, so that only a real hang trips it.

Exit status 3 is distinct from 1 (a crash: a Python traceback) and 2 (a mistake
in the config or data, which a restart would only repeat): a hang is worth a
restart. The process exits with os._exit: a hung thread cannot be joined, and the
last finalised checkpoint is intact whatever was in flight.

A thread cannot interrupt native code that holds Python's lock (the GIL) forever;
JAX, XLA and file reads release it while they wait, so their hangs are caught.
"""
import faulthandler
import os
import sys
import threading
import time

HANG_EXIT_STATUS = 3


class Watchdog:
  """Exits the process when `step_finished()` is not called for `minutes`.

    with Watchdog(config.watchdog_minutes) as watchdog:   # 0 or less: off
      for step in ...:
        ...
        watchdog.step_finished()
  """

  def __init__(self, minutes: float):
    if minutes < 0:
      raise ValueError(f"watchdog minutes={minutes}: must be >= 0 (0 is off)")
    self.minutes = minutes
    self._last_progress = time.monotonic()
    self._stopped = threading.Event()
    self._thread: threading.Thread | None = None

  def start(self) -> "Watchdog":
    """Starts watching (if minutes > 0); progress is counted from now."""
    self._last_progress = time.monotonic()
    if self.minutes > 0 and self._thread is None:
      self._stopped.clear()
      self._thread = threading.Thread(target=self._watch, name="ctjax-watchdog",
                                      daemon=True)
      self._thread.start()
    return self

  def step_finished(self) -> None:
    """Marks progress. One clock read: cheap enough to call every step."""
    self._last_progress = time.monotonic()

  def stop(self) -> None:
    if self._thread is not None:
      self._stopped.set()
      self._thread.join()
      self._thread = None

  def __enter__(self) -> "Watchdog":
    return self.start()

  def __exit__(self, *exc_info) -> None:
    self.stop()

  def _watch(self) -> None:
    limit = 60.0 * self.minutes
    while True:
      idle = time.monotonic() - self._last_progress
      if idle >= limit:
        self._exit_hung(idle)
      if self._stopped.wait(timeout=limit - idle):
        return

  def _exit_hung(self, idle_s: float) -> None:
    print(f"ctjax: error: no progress for {idle_s / 60:.2f} minutes "
          f"(config.watchdog_minutes={self.minutes:g}): the run is hung; the stack "
          f"of every thread follows; exiting with status {HANG_EXIT_STATUS} so that "
          "a scheduler restarts it (it resumes from its last checkpoint)",
          file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(HANG_EXIT_STATUS)  # pylint: disable=protected-access
