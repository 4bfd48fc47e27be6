"""Checkpoints: exact resumption after SIGKILL and SIGTERM, across device counts,
the resume order, model_init, retention, refusal of another model's checkpoint, and
the files Orbax's default handler writes and reads.

The reference is one uninterrupted `ctjax train` run of a small MLP on the digits
(200 steps, a checkpoint every 50). Interrupted runs use the same command and must
end with a train state (params, optimizer state, RNG, step) equal to it bit for bit:
on CPU, the same program on the same devices is deterministic, and a resumed run
sees exactly the batches it would have seen.
"""
import re
import shutil
import signal
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import run_util
import tolerances
from ctjax import checkpoint
from ctjax import models

STEPS, EVERY = 200, 50
CONFIG = {
    **run_util.MLP_CONFIG, "train_duration": STEPS, "eval_every": EVERY,
    # Keep the last 2 plus the "best" by the *highest* validation loss: that is the
    # first checkpoint, one the keep-last rule alone would delete.
    "checkpoint": {"every": EVERY, "keep": 2, "best_metric": "validation/loss",
                   "best_mode": "max"},
}
# Resuming on another number of devices changes the order of float32 sums for the
# last 50 steps (tests/tolerances.py): a bound of 5e-4 of each array's scale. The
# parameters (magnitudes up to 0.5) differ by at most 3e-8 (measured, 1 and 4
# devices). A wrong restore (a missing shard, a stale optimizer state, the wrong
# batches) differs by orders of magnitude more.
CROSS_DEVICE_RTOL = tolerances.curve_rtol(STEPS - 3 * EVERY, run_util.MLP_SUM_TERMS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run every interrupted one must reproduce."""
  return run_util.shared_train(tmp_path_factory, CONFIG)


def config_of(reference) -> str:
  return str(reference.parent / "config.py")


def wait_until(run: run_util.Run, condition, what: str) -> None:
  """Polls `condition` every 2 ms while the run goes on."""
  deadline = time.monotonic() + run_util.TIMEOUT_S
  while not condition():
    if not run.running():
      raise AssertionError(f"the run ended before {what}\n{run_util.output_tail(run)}")
    if time.monotonic() > deadline:
      run.kill()
      raise AssertionError(f"no {what} after {run_util.TIMEOUT_S}s")
    time.sleep(0.002)


def partial_saves(workdir) -> list[str]:
  """Checkpoint folders Orbax has started but not finalised."""
  directory = workdir / "checkpoints"
  return [p.name for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]


def assert_completes_like_reference(config: str, workdir, reference,
                                    resumes_at: int) -> None:
  """Reruns the command on `workdir`; it must continue and end as the reference."""
  rerun = run_util.train(config, workdir)
  assert run_util.first_trained_step(rerun.stdout) == resumes_at + 1
  run_util.assert_trees_close(run_util.saved_state(workdir, STEPS),
                              run_util.saved_state(reference, STEPS))
  # Later records of a step (the rerun's) replace the interrupted run's.
  assert run_util.curve(workdir) == run_util.curve(reference)
  # The best checkpoint (the first, see CONFIG) outlives the restart: the resumed
  # run's manager reads the saved checkpoints' metrics from disk.
  assert run_util.checkpoint_steps(workdir) == run_util.checkpoint_steps(reference)


def test_keeps_last_k_and_best_checkpoints(reference):
  saved = list(range(EVERY, STEPS + 1, EVERY))
  loss = run_util.curve(reference, "validation/loss")
  assert sorted(loss) == saved
  worst = max(saved, key=loss.get)
  assert worst not in saved[-2:], "the test needs a best outside the last 2"
  assert run_util.checkpoint_steps(reference) == sorted({*saved[-2:], worst})


def test_a_run_without_final_evaluation_ends_with_a_best_metric_configured(tmp_path):
  """The last save has no metrics when nothing is evaluated at the end
  (final_eval_splits=()): it must not be ranked by the best metric, nor crash
  the run (Orbax's ranking once failed on an empty dict there)."""
  config = run_util.write_config(tmp_path, {
      **run_util.MLP_CONFIG, "train_duration": 6, "eval_every": 0,
      "final_eval_splits": (), "checkpoint": {"every": 2, "keep": 2,
                                              "best_metric": "validation/loss"}})
  run_util.train(config, tmp_path / "run", devices=1)
  assert run_util.checkpoint_steps(tmp_path / "run") == [4, 6]


def test_sigkill_after_checkpoint_then_rerun_is_bit_identical(reference, tmp_path):
  workdir = tmp_path / "run"
  run = run_util.start(config_of(reference), workdir)
  wait_until(run, lambda: run_util.checkpoint_steps(workdir), "a checkpoint")
  run.process.send_signal(signal.SIGKILL)
  assert run_util.finish(run, check=False).returncode == -signal.SIGKILL
  last_good = run_util.checkpoint_steps(workdir)[-1]
  assert last_good < STEPS
  assert_completes_like_reference(config_of(reference), workdir, reference, last_good)


def test_sigterm_saves_current_step_and_exits_cleanly(reference, tmp_path):
  workdir = tmp_path / "run"
  run = run_util.start(config_of(reference), workdir)
  wait_until(run, lambda: run_util.checkpoint_steps(workdir), "a checkpoint")
  run.process.send_signal(signal.SIGTERM)
  stopped = run_util.finish(run)  # Exit status 0.
  step = int(re.search(r"SIGTERM: saving step (\d+)", stopped.stdout)[1])
  assert step < STEPS
  # The step it stopped at is saved, and it trained no further.
  assert run_util.checkpoint_steps(workdir)[-1] == step
  assert max(run_util.curve(workdir)) == step
  assert_completes_like_reference(config_of(reference), workdir, reference, step)


def test_sigkill_during_async_save_keeps_last_good_checkpoint(reference, tmp_path):
  workdir = tmp_path / "run"
  run = run_util.start(config_of(reference), workdir)
  wait_until(run, lambda: run_util.checkpoint_steps(workdir) and partial_saves(workdir),
             "a save started after a finalised checkpoint")
  run.process.send_signal(signal.SIGKILL)
  run_util.finish(run, check=False)
  assert partial_saves(workdir), "the kill landed after the save completed"
  last_good = run_util.checkpoint_steps(workdir)[-1]
  assert_completes_like_reference(config_of(reference), workdir, reference, last_good)


def truncated_copy(reference, destination):
  """A copy of the reference workdir as if it had stopped at its second-last
  checkpoint; returns that checkpoint's step."""
  shutil.copytree(reference, destination)
  *_, step, last = run_util.checkpoint_steps(destination)
  shutil.rmtree(destination / "checkpoints" / str(last))
  return step


def assert_params_close_to_reference(workdir, reference):
  tolerances.assert_close_normwise(run_util.saved_state(workdir, STEPS)["params"],
                                   run_util.saved_state(reference, STEPS)["params"],
                                   CROSS_DEVICE_RTOL)


def tree_snapshot(directory) -> dict[str, tuple[int, int]]:
  """{relative path: (size, mtime in ns)} of every file and folder under `directory`."""
  return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
          for p in sorted(directory.rglob("*"))}


def test_rerun_on_one_device_resumes_checkpoint_from_eight(reference, tmp_path):
  workdir = tmp_path / "run"
  step = truncated_copy(reference, workdir)
  rerun = run_util.train(config_of(reference), workdir, devices=1)
  assert "over 1 cpu devices" in rerun.stdout
  assert run_util.first_trained_step(rerun.stdout) == step + 1
  assert_params_close_to_reference(workdir, reference)


def test_resume_from_another_run_on_four_devices_continues_at_its_step(
    reference, tmp_path):
  other = tmp_path / "other"
  step = truncated_copy(reference, other)
  before = tree_snapshot(other)
  workdir = tmp_path / "run"
  result = run_util.train(config_of(reference), workdir, {"resume": str(other)},
                          devices=4)
  assert "over 4 cpu devices" in result.stdout
  assert run_util.first_trained_step(result.stdout) == step + 1
  assert_params_close_to_reference(workdir, reference)
  # The run read the other workdir and wrote only its own: its retention policy
  # (keep 2) pruned nothing there, and no file was touched.
  assert tree_snapshot(other) == before


def test_model_init_loads_params_keeps_skipped_head_fresh(reference, tmp_path):
  """Fine-tuning to 12 classes: the hidden layers come from the reference, the new
  classifier and the optimizer start fresh, and training starts at step 0. A zero
  learning rate keeps the parameters as they were loaded, to compare exactly."""
  workdir = tmp_path / "run"
  num_steps = 3
  before = tree_snapshot(reference)
  run_util.train(config_of(reference), workdir, {
      "model_init": str(reference), "model_init_skip": ("^classifier/",),
      "model.num_classes": 12, "optim.lr": 0.0, "train_duration": num_steps})
  assert min(run_util.curve(workdir)) == 1
  assert tree_snapshot(reference) == before  # Read, never written.
  state = run_util.saved_state(workdir)
  pretrained = run_util.saved_state(reference, STEPS)["params"]
  assert state["step"] == num_steps
  counts = [x for p, x in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]
            if jax.tree_util.keystr(p).endswith("['count']")]
  assert counts and all(c == num_steps for c in counts)  # Not the reference's 200.
  params = dict(state["params"])
  head = params.pop("classifier")
  del pretrained["classifier"]
  run_util.assert_trees_close(params, pretrained)
  # The head is the fresh initialisation of the 12-class model (seed 0).
  model = models.get_model({**CONFIG["model"], "num_classes": 12})
  fresh = nn.meta.unbox(model.init(jax.random.PRNGKey(CONFIG["seed"]),
                                   jnp.zeros((1, 8, 8, 1)), train=False))
  run_util.assert_trees_close(head, fresh["params"]["classifier"], rtol=1e-6)


def test_resume_from_another_model_names_the_parameter(reference, tmp_path):
  result = run_util.train(config_of(reference), tmp_path / "run",
                          {"resume": str(reference), "model.hidden_sizes": (48, 32)},
                          check=False)
  assert result.returncode == 2
  errors = [l for l in result.stderr.splitlines() if l.startswith("ctjax: error:")]
  assert len(errors) == 1, result.stderr
  assert re.search(r"params/hidden_0/\w+ has shape \(64,?", errors[0]), errors[0]
  assert "Traceback" not in result.stderr


def test_resume_order_workdir_then_resume_then_model_init_then_scratch(tmp_path):
  """restore_or_initialize, in process: each source holds a state whose values are
  its own step number, so the result shows which one was used."""
  replicated = NamedSharding(jax.make_mesh((jax.device_count(),), ("data",)), P())

  def state(step):
    return jax.device_put({"step": jnp.int32(step),
                           "params": {"w": jnp.full((8,), step, jnp.float32)},
                           "opt_state": {"mu": jnp.full((8,), -step, jnp.float32)}},
                          replicated)

  def saved_run(name, step):
    manager = checkpoint.make_manager(str(tmp_path / name / "checkpoints"))
    checkpoint.save(manager, state(step), {"step": step, "seed": 0,
                                           "examples_seen": 0})
    manager.close()  # Waits for the write.
    return str(tmp_path / name)

  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                         sharding=x.sharding), state(0))
  sources = {"workdir": saved_run("workdir", 3), "resume": saved_run("resume", 5),
             "model_init": saved_run("model_init", 7)}

  def restore(workdir, **config):
    config = ml_collections.ConfigDict({"resume": "", "model_init": "",
                                        "model_init_skip": (), **config})
    manager = checkpoint.make_manager(checkpoint.checkpoint_dir(workdir))
    restored, position, _ = checkpoint.restore_or_initialize(
        manager, config, abstract, lambda: state(0))
    manager.close()
    return jax.device_get(restored), position

  both = {"resume": sources["resume"], "model_init": sources["model_init"]}
  restored, position = restore(sources["workdir"], **both)
  assert position["step"] == restored["step"] == 3 and restored["params"]["w"][0] == 3
  restored, position = restore(str(tmp_path / "new1"), **both)
  assert position["step"] == restored["step"] == 5 and restored["params"]["w"][0] == 5
  restored, position = restore(str(tmp_path / "new2"),
                               model_init=sources["model_init"])
  assert position is None and restored["step"] == 0
  assert restored["params"]["w"][0] == 7 and restored["opt_state"]["mu"][0] == 0
  restored, position = restore(str(tmp_path / "new3"))
  assert position is None and restored["params"]["w"][0] == 0


def test_checkpoints_of_orbaxs_default_handler_restore_bit_for_bit_and_back(tmp_path):
  """ctjax writes replicated arrays under 1 MiB a replica whole, from one replica
  (ctjax/checkpoint.py), where Orbax's default divides them among the replicas:
  the files mean the same either way, so checkpoints written before that change
  (and by plain Orbax) restore, and ctjax's restore with Orbax's default. The large
  array's replica shares are 1.5 MiB: divided in both."""
  replicated = NamedSharding(jax.make_mesh((8,), ("data",)), P())
  state = jax.device_put({
      "kernel": jnp.arange(64 * 16, dtype=jnp.float32).reshape(64, 16),
      "rng": jax.random.PRNGKey(3),
      "large": jnp.arange(3 * 2**20, dtype=jnp.float32).reshape(-1, 1024)}, replicated)

  def manager(directory, kind):
    if kind == "ctjax":
      return checkpoint.make_manager(str(directory))
    return ocp.CheckpointManager(str(directory), item_handlers={
        "state": ocp.PyTreeCheckpointHandler(), "data": ocp.JsonCheckpointHandler()})

  for writer, reader in (("orbax", "ctjax"), ("ctjax", "orbax")):
    written = manager(tmp_path / writer, writer)
    written.save(1, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                            data=ocp.args.JsonSave({"step": 1})))
    written.wait_until_finished()
    written.close()
    restored = manager(tmp_path / writer, reader).restore(1, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(), data=ocp.args.JsonRestore()))["state"]
    for key, value in state.items():
      np.testing.assert_array_equal(np.asarray(restored[key]), np.asarray(value),
                                    err_msg=f"{writer} -> {reader}: {key}")
