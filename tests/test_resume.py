"""Resuming, beyond test_checkpoint.py: what the README's "Checkpoints and resuming"
promises for sharded state, dropout, several processes, the wall-clock trigger and
the input position.

- a checkpoint of state sharded over fsdp and tensor (8 devices) restores on 1 and
  on 4 devices, every array (params and optimizer state) bit for bit, in the
  sharding the restoring run asks for;
- a run with dropout, interrupted and resumed, ends bit-identical to an
  uninterrupted one, and would not if the dropout RNG were not restored;
- two processes, interrupted at a checkpoint or by SIGTERM on one of them, resume
  and end bit-identical to an uninterrupted two-process run;
- checkpoint.every_minutes saves by the clock, and a run resumes from such a save;
- resuming at step k reads only the batches of steps after k: no replay.

Where the work is the same (same devices, same layout, same batches), results must
be equal bit for bit: on CPU the same program is deterministic. In-process runs
(`train.train` in this process, 8 devices) are used where no fresh process or
other device count is needed: they spare a subprocess's start-up (importing JAX and
TensorFlow, connecting processes), and let a test wrap the data source.
"""
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import multiprocess_util
import run_util
from ctjax import checkpoint
from ctjax import config as config_lib
from ctjax import train
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib


def flat(tree) -> dict[str, np.ndarray]:
  """{path: array} with paths that do not depend on how the tree was read: a
  restored optimizer state may come back as dicts where it was namedtuples."""
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                   for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_bitwise_equal(actual, expected) -> None:
  """Same paths, dtypes, shapes and bytes (so 0.0 and -0.0 differ, NaNs match)."""
  actual, expected = flat(actual), flat(expected)
  assert sorted(actual) == sorted(expected)
  for path, want in expected.items():
    got = actual[path]
    assert (got.dtype, got.shape) == (want.dtype, want.shape), path
    assert got.tobytes() == want.tobytes(), f"{path} differs"


def truncate(workdir, step: int) -> None:
  """Makes `workdir` look as if its run had been killed just after saving `step`:
  later checkpoints are removed (metrics.jsonl keeps later records, as a killed
  run's would; the rerun replaces them)."""
  steps = run_util.checkpoint_steps(workdir)
  assert step in steps, (step, steps)
  for later in steps[steps.index(step) + 1:]:
    shutil.rmtree(workdir / "checkpoints" / str(later))


def train_in_process(tmp_path, config: dict, workdir) -> dict:
  return train.train(config_lib.load_config(run_util.write_config(tmp_path, config)),
                     str(workdir))


# --- 1. Sharded state restores on other device counts, exactly. ------------------

GPT_MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}

# Runs in a fresh process with the device count under test: restores a checkpoint
# through ctjax.checkpoint.restore into the shardings that ctjax.sharding gives
# this process's mesh (the abstract state built as train.py builds it), and writes
# every array (OUT.npz) and its layout (OUT.json).
RESTORE_SCRIPT = r"""
import json, sys
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from ctjax import checkpoint, config as config_lib, models, optim, sharding
a = json.loads(sys.argv[1])
config = config_lib.load_config(a["config"], a["overrides"])
model = models.get_model(config.model)
tx, _ = optim.make_optimizer(config.optim, total_steps=1,
                             global_batch_size=config.batch_size, train_examples=None)
def init_state(rng):  # train.py's
  params = model.init({"params": rng}, jnp.zeros((1, config.data.seq_len), jnp.int32),
                      train=False)["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": tx.init(params), "rng": jax.random.fold_in(rng, 1)}
mesh = sharding.make_mesh(config.mesh)
rules = tuple(tuple(r) if isinstance(r, list) else r for r in config.sharding_rules)
with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
  boxed = jax.eval_shape(init_state, jax.random.PRNGKey(0))
shardings = sharding.state_shardings(boxed, mesh, rules)
abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nn.meta.unbox(boxed), shardings)
manager = checkpoint.make_manager(checkpoint.checkpoint_dir(a["workdir"]), read_only=True)
state, position = checkpoint.restore(manager, abstract)  # The latest step.
out, arrays = {"devices": jax.device_count(), "position": position, "leaves": []}, {}
for i, ((path, x), want) in enumerate(zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                          jax.tree.leaves(shardings))):
  arrays[str(i)] = np.asarray(x)
  out["leaves"].append({
      "path": "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                       for k in path),
      "spec": str(x.sharding.spec),
      "is_target": x.sharding.is_equivalent_to(want, x.ndim),
      "devices": len(x.sharding.device_set),
      "shard_shapes": sorted({tuple(s.data.shape) for s in x.addressable_shards})})
np.savez(a["out"] + ".npz", **arrays)
with open(a["out"] + ".json", "w") as f:
  json.dump(out, f)
"""


@pytest.fixture(scope="module")
def sharded_gpt(tmp_path_factory):
  """GPT_CONFIG trained on data=2 x fsdp=2 x tensor=2: every weight matrix in 4
  pieces. The same run as test_sharding.py's and test_multiprocess.py's reference."""
  return run_util.shared_train(tmp_path_factory, run_util.GPT_CONFIG, GPT_MESH)


def restore_in_fresh_process(workdir, devices: int, mesh: dict, out):
  """Starts RESTORE_SCRIPT with `devices` devices; returns the Popen."""
  overrides = [f"mesh.{axis}={size}" for axis, size in mesh.items()]
  args = {"config": str(workdir.parent / "config.py"), "overrides": overrides,
          "workdir": str(workdir), "out": str(out)}
  return subprocess.Popen([sys.executable, "-c", RESTORE_SCRIPT, json.dumps(args)],
                          cwd=run_util.REPO, env=run_util.env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sharded_checkpoint_restores_exactly_on_one_and_four_devices(sharded_gpt,
                                                                      tmp_path):
  """Restoring is copying, no arithmetic: every array of the state (params, Adam's
  moments and count, step, RNG) must come back bit for bit, whatever the layout.
  On 4 devices the target is fsdp=4: each restored piece is cut across the saved
  2 x 2 pieces, so Orbax must reassemble, not just reload, the shards."""
  step = run_util.checkpoint_steps(sharded_gpt)[-1]
  saved = run_util.saved_state(sharded_gpt, step)
  targets = {1: {"data": 1, "fsdp": 1, "tensor": 1},
             4: {"data": 1, "fsdp": 4, "tensor": 1}}
  # Both at once: start-up is most of their time, and it overlaps.
  processes = {n: restore_in_fresh_process(sharded_gpt, n, mesh,
                                           tmp_path / f"restored_{n}")
               for n, mesh in targets.items()}
  for n, process in processes.items():
    output, _ = process.communicate(timeout=run_util.TIMEOUT_S)
    assert process.returncode == 0, f"restore on {n} devices failed:\n{output[-3000:]}"

  for n in targets:
    restored = json.loads((tmp_path / f"restored_{n}.json").read_text())
    arrays = np.load(tmp_path / f"restored_{n}.npz", allow_pickle=False)
    assert restored["devices"] == n
    assert restored["position"]["step"] == step
    leaves = restored["leaves"]
    paths = [leaf["path"] for leaf in leaves]
    assert_bitwise_equal({p: arrays[str(i)] for i, p in enumerate(paths)}, saved)
    # Each array lies in the sharding this mesh asks for, over all its devices.
    for path, leaf in zip(paths, leaves):
      assert leaf["is_target"] and leaf["devices"] == n, (n, path, leaf["spec"])
    # ... and that sharding really cuts the state: with 4 devices every weight
    # matrix (params and both Adam moments) is in 4 pieces.
    matrices = [(i, p, l) for i, (p, l) in enumerate(zip(paths, leaves))
                if p.endswith(("kernel", "embedding"))]
    assert len(matrices) == 3 * 13, [p for _, p, _ in matrices]  # params, mu, nu
    for i, path, leaf in matrices:
      (shard_shape,) = leaf["shard_shapes"]
      pieces = np.prod(arrays[str(i)].shape) // np.prod(shard_shape)
      assert pieces == n, (n, path, leaf["spec"], shard_shape)
  # A state worth comparing: trained, with the optimizer's counts at its step.
  counts = [x for p, x in flat(saved["opt_state"]).items() if p.endswith("count")]
  assert saved["step"] == step and counts and all(c == step for c in counts)


# --- 2 and 5. Dropout, and resuming without replay. --------------------------------

DROPOUT_STEPS, DROPOUT_EVERY = 12, 4
DROPOUT_CONFIG = {
    **run_util.MLP_CONFIG, "model": {**run_util.MLP_CONFIG["model"], "dropout": 0.5},
    "train_duration": DROPOUT_STEPS,
    "checkpoint": {"every": DROPOUT_EVERY, "keep": 10},
}
RESUME_AT = 2 * DROPOUT_EVERY


@pytest.fixture(scope="module")
def dropout_reference(tmp_path_factory):
  """The uninterrupted run of an MLP with dropout 0.5, in this process."""
  directory = tmp_path_factory.mktemp("dropout_reference")
  train_in_process(directory, DROPOUT_CONFIG, directory / "run")
  assert run_util.checkpoint_steps(directory / "run") == [4, 8, 12]
  return directory / "run"


@pytest.fixture(scope="module")
def dropout_resumed(dropout_reference, tmp_path_factory):
  """The reference's run killed after its step-8 checkpoint and run again, with the
  pipeline's reads recorded: the steps train_batch is asked for, and the example
  indices the train split is read at."""
  directory = tmp_path_factory.mktemp("dropout_resumed")
  workdir = directory / "run"
  shutil.copytree(dropout_reference, workdir)
  truncate(workdir, RESUME_AT)
  steps, reads, sizes = [], [], []
  original_train_batch, original_open_splits = pipeline.train_batch, splits_lib.open_splits

  def recording_train_batch(loader, step, **kwargs):
    steps.append(step)
    return original_train_batch(loader, step, **kwargs)

  def recording_open_splits(*args, **kwargs):
    splits = original_open_splits(*args, **kwargs)
    # Digits need no preprocessing, so the loader reads whole batches by get_batch.
    sizes.append(len(splits["train"]))
    read = splits["train"].get_batch
    splits["train"].get_batch = lambda idx: (reads.append(np.array(idx)), read(idx))[1]
    return splits

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(pipeline, "train_batch", recording_train_batch)
    patch.setattr(splits_lib, "open_splits", recording_open_splits)
    train_in_process(directory, DROPOUT_CONFIG, workdir)
  (num_examples,) = sizes
  return workdir, steps, reads, num_examples


def test_resume_with_dropout_is_bit_identical(dropout_reference, dropout_resumed):
  workdir, *_ = dropout_resumed
  assert_bitwise_equal(run_util.saved_state(workdir, DROPOUT_STEPS),
                       run_util.saved_state(dropout_reference, DROPOUT_STEPS))
  assert run_util.curve(workdir) == run_util.curve(dropout_reference)


def test_resume_with_dropout_depends_on_the_restored_rng(dropout_reference, tmp_path):
  """Without this, the test above could pass with dropout doing nothing, or with an
  RNG the resumed run did not take from the checkpoint. Step s draws its dropout
  masks from fold_in(state["rng"], state["step"]), both restored. Here the saved
  key is replaced by another before resuming: the run must then end elsewhere."""
  workdir = tmp_path / "run"
  shutil.copytree(dropout_reference, workdir)
  truncate(workdir, RESUME_AT)
  state = run_util.saved_state(workdir, RESUME_AT)
  other_rng = np.asarray(jax.random.PRNGKey(12345))
  assert other_rng.dtype == state["rng"].dtype and other_rng.shape == state["rng"].shape
  assert not np.array_equal(other_rng, state["rng"])
  shutil.rmtree(workdir / "checkpoints" / str(RESUME_AT))
  manager = checkpoint.make_manager(str(workdir / "checkpoints"))
  checkpoint.save(manager, jax.device_put({**state, "rng": other_rng}, jax.devices()[0]),
                  {"step": RESUME_AT, "seed": DROPOUT_CONFIG["seed"],
                   "examples_seen": RESUME_AT * DROPOUT_CONFIG["batch_size"]})
  manager.close()  # Waits for the write.

  train_in_process(tmp_path, DROPOUT_CONFIG, workdir)
  final = run_util.saved_state(workdir, DROPOUT_STEPS)
  expected = run_util.saved_state(dropout_reference, DROPOUT_STEPS)
  # The key is carried through (so it was read from the checkpoint) ...
  assert np.array_equal(final["rng"], other_rng)
  # ... and every trained parameter ends elsewhere: the masks changed.
  for path, want in flat(expected["params"]).items():
    assert not np.array_equal(flat(final["params"])[path], want), path


def test_resume_reads_only_the_batches_after_its_checkpoint(dropout_resumed):
  """Resuming at step k reads steps k..N-1's batches (0-based: batch s trains step
  s+1), not 1..k first. The one exception is batch 0, read once before the model
  is built for the shapes and dtypes of the inputs (init and compilation need them,
  and the step to resume from is not known until the state is restored): one
  batch, whatever k, so resume time does not grow with k."""
  _, steps, reads, num_examples = dropout_resumed
  assert steps == [0, *range(RESUME_AT, DROPOUT_STEPS)]
  # The train split itself is read at exactly those batches' examples, in order.
  expected = [pipeline.train_indices(s, num_examples=num_examples,
                                     global_batch_size=DROPOUT_CONFIG["batch_size"],
                                     seed=DROPOUT_CONFIG["seed"]) for s in steps]
  assert len(reads) == len(expected)
  for got, want in zip(reads, expected):
    assert np.array_equal(got, want)


# --- 3. Two processes. --------------------------------------------------------------

MP_STEPS, MP_EVERY = 200, 10
MP_CONFIG = {**run_util.MLP_CONFIG, "train_duration": MP_STEPS,
             "checkpoint": {"every": MP_EVERY, "keep": 2}}
# One device per process, fsdp over both: each process holds half of every hidden
# layer's weights (and their Adam moments), so every step and every checkpoint
# needs both. One device each keeps a run to seconds of work on two cores.
MP_MESH = {"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 1}


def multiprocess_train(config: str, workdir, **kwargs):
  return multiprocess_util.train(config, workdir, MP_MESH, num_processes=2,
                                 devices_per_process=1, **kwargs)


@pytest.fixture(scope="module")
def multiprocess_reference(tmp_path_factory):
  """An uninterrupted two-process run; returns (config file, workdir)."""
  def make(directory):
    multiprocess_train(run_util.write_config(directory, MP_CONFIG), directory / "run")
  directory, _ = run_util.once_per_session(tmp_path_factory, "resume-two-processes",
                                           make)
  return str(directory / "config.py"), directory / "run"


def assert_ends_like(workdir, reference) -> None:
  assert_bitwise_equal(run_util.saved_state(workdir, MP_STEPS),
                       run_util.saved_state(reference, MP_STEPS))
  assert run_util.curve(workdir) == run_util.curve(reference)


def logged_a_step(workdir) -> bool:
  try:
    return bool(run_util.curve(workdir))
  except (FileNotFoundError, json.JSONDecodeError):  # Not yet, or half a line.
    return False


def test_two_processes_resume_from_a_checkpoint_bit_identical(multiprocess_reference,
                                                              tmp_path):
  """A two-process run cut back to its second-last checkpoint (as if both processes
  had been killed after it) and rerun on two processes: the same work in the same
  order, so the same result bit for bit."""
  config, reference = multiprocess_reference
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  resume_at = MP_STEPS - MP_EVERY
  truncate(workdir, resume_at)
  process_0, _ = multiprocess_train(config, workdir)
  assert run_util.first_trained_step(process_0.stdout) == resume_at + 1
  assert_ends_like(workdir, reference)


@pytest.mark.long
def test_sigterm_to_one_process_stops_both_at_one_step_then_resumes_bit_identical(
    multiprocess_reference, tmp_path):
  """SIGTERM reaches process 1 only, as when one host of a slice is preempted
  first. Through JAX's preemption sync, both must stop after the same step, save
  it together and exit 0; the rerun resumes from it."""
  config, reference = multiprocess_reference
  workdir = tmp_path / "run"
  runs = multiprocess_util.start(config, workdir, MP_MESH, num_processes=2,
                                 devices_per_process=1)
  # Signalled as soon as step 1 is logged (both processes are in the loop: a step
  # needs both), so that the rest of the run leaves JAX's preemption notifier,
  # which watches for the signal from a thread of its own (about once a second),
  # ample time to see it and agree on a step with the other process.
  deadline = time.monotonic() + run_util.TIMEOUT_S
  while not logged_a_step(workdir):
    if not all(r.running() for r in runs) or time.monotonic() > deadline:
      multiprocess_util.finish(runs, timeout=1)  # Fails with their output.
      raise AssertionError("the run ended before its first step")
    time.sleep(0.01)
  runs[1].process.send_signal(signal.SIGTERM)
  process_0, process_1 = multiprocess_util.finish(runs)  # Both exit 0.

  stopped = re.search(r"SIGTERM: saving step (\d+)", process_0.stdout)
  assert stopped, f"the run did not stop on SIGTERM:\n{process_0.stdout[-2000:]}"
  step = int(stopped[1])
  assert 1 <= step < MP_STEPS
  # Each process reports the sync point it reached (Orbax logs it): the same step.
  for result in (process_0, process_1):
    reached = set(re.findall(r"Reached preemption sync point, step=(\d+)",
                             result.stderr))
    assert reached == {str(step)}, result.stderr[-2000:]
  # That step is saved, whole (half of it by each process), and nothing after it.
  assert run_util.checkpoint_steps(workdir)[-1] == step
  assert max(run_util.curve(workdir)) == step
  assert run_util.saved_state(workdir, step)["step"] == step

  process_0, _ = multiprocess_train(config, workdir)
  assert run_util.first_trained_step(process_0.stdout) == step + 1
  assert_ends_like(workdir, reference)


# --- 4. The wall-clock checkpoint trigger. ------------------------------------------

CLOCK_STEPS = 30
# Every 60 ms, and nothing else: checkpoint.every=0 turns the step trigger off.
CLOCK_CONFIG = {**run_util.MLP_CONFIG, "train_duration": CLOCK_STEPS,
                "checkpoint": {"every": 0, "every_minutes": 0.001, "keep": 100}}
BATCH_DELAY_S = 0.02


def test_every_minutes_saves_by_the_clock_and_resumes_from_such_a_save(tmp_path,
                                                                      capsys):
  """Each batch is read 20 ms late, so the 30 steps take at least 0.5 s (28 steps
  after the two prefetched ones): about 8 intervals of 60 ms, so the clock must
  fire several times. With checkpoint.every=0, no SIGTERM and the last step saved
  by the end of the run, any earlier checkpoint is the clock's. The run is then
  cut back to one of them and rerun: it resumes there and ends bit-identical."""
  workdir = tmp_path / "run"

  def slow_open_splits(*args, **kwargs):
    splits = original_open_splits(*args, **kwargs)
    read = splits["train"].get_batch
    splits["train"].get_batch = lambda idx: (time.sleep(BATCH_DELAY_S), read(idx))[1]
    return splits

  original_open_splits = splits_lib.open_splits
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(splits_lib, "open_splits", slow_open_splits)
    train_in_process(tmp_path, CLOCK_CONFIG, workdir)
  steps = run_util.checkpoint_steps(workdir)
  assert steps[-1] == CLOCK_STEPS
  by_clock = steps[:-1]
  assert len(by_clock) >= 2, steps
  resume_at = by_clock[len(by_clock) // 2]

  expected = run_util.saved_state(workdir, CLOCK_STEPS)
  expected_curve = run_util.curve(workdir)

  truncate(workdir, resume_at)
  capsys.readouterr()
  train_in_process(tmp_path, CLOCK_CONFIG, workdir)
  stdout = capsys.readouterr().out
  assert f"step {resume_at}; training steps {resume_at}..{CLOCK_STEPS}" in stdout
  assert run_util.first_trained_step(stdout) == resume_at + 1
  assert_bitwise_equal(run_util.saved_state(workdir, CLOCK_STEPS), expected)
  assert run_util.curve(workdir) == expected_curve


def test_saves_that_fall_on_one_step_save_it_once(tmp_path):
  """With every_minutes tiny, the clock asks for a save at every step: on the step
  SIGTERM stops at, and on the last step, which the run saves anyway after its
  final evaluation. Each must save the step once: Orbax raises on a second save of
  a step, which would crash a preempted run instead of saving it, and crash a run
  at its very end. SIGTERM is sent to this process while the loop runs, when the
  batch of step 2 is read (the trainer's handler is installed by then)."""
  config = {**run_util.MLP_CONFIG, "train_duration": 6,
            "checkpoint": {"every": 2, "every_minutes": 1e-9, "keep": 10}}
  workdir = tmp_path / "run"
  reads = []

  def signalling_open_splits(*args, **kwargs):
    splits = original_open_splits(*args, **kwargs)
    read = splits["train"].get_batch

    def get_batch(idx):
      reads.append(idx)
      # Reads: the shape probe (batch 0), then the loop's batches 0, 1, ...
      if len(reads) == 3:
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        signal.raise_signal(signal.SIGTERM)
      return read(idx)

    splits["train"].get_batch = get_batch
    return splits

  original_open_splits = splits_lib.open_splits
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(splits_lib, "open_splits", signalling_open_splits)
    assert train_in_process(tmp_path, config, workdir) == {}  # Stopped, not ended.
  stopped_at = max(run_util.curve(workdir))
  assert stopped_at < 6
  assert run_util.checkpoint_steps(workdir) == list(range(1, stopped_at + 1))

  final = train_in_process(tmp_path, config, workdir)
  assert "validation/loss" in final
  assert run_util.checkpoint_steps(workdir) == list(range(1, 7))
