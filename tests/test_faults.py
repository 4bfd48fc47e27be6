"""Faults, a few of each: runs killed, checkpoints damaged, a full disk, a hang, a
dead peer; nothing may be lost.

These are the trials of benchmarks/faults.py, which tries each many times; its
docstring says what each one does and checks. Every trial hurts a real `ctjax
train` subprocess (a small MLP, 60 steps, 8 CPU devices) and compares the end with
an uninterrupted reference run, bit for bit where the work is the same.
"""
import gc
import logging
import shutil
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import run_util
from ctjax import checkpoint
from ctjax.errors import UserError

sys.path.insert(0, str(run_util.REPO / "benchmarks"))
import faults  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> faults.Setup:
  return faults.make_setup(tmp_path_factory.mktemp("faults"))


def assert_nothing_lost(trial: faults.Trial) -> None:
  assert not trial.failure, f"{trial.fault} ({trial.phase}): {trial.failure}"


@pytest.mark.parametrize("target", ["asynchronous save", "evaluation", "final save"])
def test_sigkill_then_same_command_ends_bit_identical(setup, tmp_path, target):
  # A step alone is test_checkpoint's SIGKILL test; the benchmark aims at all four.
  rng = np.random.default_rng(faults.KILL_PHASES.index(target))
  assert_nothing_lost(faults.kill_trial(setup, tmp_path / "run", rng, target))


def test_damaged_newest_checkpoints_are_set_aside_and_run_ends_bit_identical(
    setup, tmp_path):
  kinds = ["array file truncated", "tree metadata deleted", "step metadata deleted",
           "commit marker deleted"]
  assert_nothing_lost(faults.damage_trial(setup, tmp_path / "run", kinds))


# Once one array of a checkpoint fails to read, Orbax abandons the other reads;
# Python reports each (failing on the same damage) when it is collected. ctjax
# leaves these reports out, but pytest puts its own hook in place during a test,
# which makes them warnings; the test collects them before it ends.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_no_readable_checkpoint_is_one_error_naming_the_folder(setup, tmp_path,
                                                                capsys):
  """Every checkpoint damaged, one kind each: restore names each (newest first),
  renames none, and stops with a UserError naming the folder."""
  workdir = tmp_path / "run"
  shutil.copytree(setup.reference, workdir)
  steps = run_util.checkpoint_steps(workdir)[::-1]
  assert len(steps) == len(faults.DAMAGES)
  for step, damage in zip(steps, faults.DAMAGES.values()):
    damage(workdir / "checkpoints" / str(step))
  replicated = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P())
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                     sharding=replicated),
      run_util.saved_state(setup.reference))
  manager = checkpoint.make_manager(str(workdir / "checkpoints"), read_only=True)
  capsys.readouterr()
  with pytest.raises(UserError, match=f"checkpoint folder {workdir}/checkpoints: "
                     "none of its 5 checkpoint"):
    checkpoint.restore(manager, abstract, set_aside_damaged=True)
  gc.collect()
  warnings = [l for l in capsys.readouterr().err.splitlines()
              if l.startswith("ctjax: warning:")]
  assert [l.split()[3] for l in warnings] == [
      f"{workdir}/checkpoints/{step}" for step in steps], warnings
  assert run_util.checkpoint_steps(workdir) == steps[::-1]  # Nothing renamed.


def test_full_disk_stops_with_one_line_and_keeps_last_checkpoint(setup, tmp_path):
  trial = faults.disk_full_trial(setup, tmp_path / "run")
  if trial.phase.startswith("skipped"):
    pytest.skip(trial.phase)
  assert_nothing_lost(trial)


def test_watchdog_ends_a_hung_run_with_every_stack(setup, tmp_path):
  assert_nothing_lost(faults.hang_trial(setup, tmp_path / "run", minutes=0.05))


@pytest.mark.long
def test_survivor_of_a_killed_peer_exits_and_both_resume(setup, tmp_path):
  """Process 1 of 2 killed after the first checkpoint. Process 0 waits in a
  collective until JAX's coordination service misses process 1's heartbeats and
  aborts it, ~90 s later (benchmarks/README.md); the watchdog at 12 s ends it
  sooner, with every thread's stack."""
  trial = faults.peer_trial(setup, tmp_path / "run", np.random.default_rng(0),
                            victim=1, watchdog_minutes=0.2)
  assert_nothing_lost(trial)


def test_late_asyncio_reports_of_a_checkpoint_reported_damaged_are_left_out(
    setup, tmp_path):
  """Orbax's sibling read tasks of a damaged checkpoint fail too, and asyncio
  logs each, traceback and all, when it is collected: once the damage is named
  in a warning, those reports are dropped; others still show."""
  workdir = tmp_path / "run"
  shutil.copytree(setup.reference, workdir)
  manager = checkpoint.make_manager(str(workdir / "checkpoints"), read_only=True)
  older, newest = sorted(manager.all_steps())[-2:]
  read_error = lambda step: ValueError(
      f"Error reading \"{workdir / 'checkpoints' / str(step) / 'state'}/\"")

  def restore_step(step):
    if step == newest:
      raise read_error(step)
    return step

  assert checkpoint._newest_readable(  # pylint: disable=protected-access
      manager, restore_step, set_aside_damaged=False) == older
  shown = []
  handler = logging.Handler()
  handler.emit = shown.append
  asyncio_log = logging.getLogger("asyncio")
  asyncio_log.addHandler(handler)
  try:
    for step in (newest, older):
      try:
        raise read_error(step)
      except ValueError:
        asyncio_log.error("Task exception was never retrieved", exc_info=True)
  finally:
    asyncio_log.removeHandler(handler)
  assert [str(r.exc_info[1]) for r in shown] == [str(read_error(older))]
