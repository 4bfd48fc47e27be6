"""Two processes on localhost train exactly like one process with all the devices.

2 processes x 4 fake CPU devices, gloo collectives, one shared workdir. The layout
(data=2, fsdp=2, tensor=2) spreads the shards of each weight matrix over both
processes, so every step and every checkpoint needs both. The reference is the
same layout in one process with 8 devices (a run test_sharding.py shares).
"""
import pytest

import multiprocess_util
import run_util
import tolerances

MESH = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
# Gloo sums across processes in another order than XLA does within one: float32
# rounding, as between the layouts of test_sharding.py, bounded as derived in
# tests/tolerances.py. Measured: train/loss within 1e-7 relative, parameters after
# 10 Adam steps within 3e-7 absolute.
STEPS = run_util.GPT_CONFIG["train_duration"]
# Process 1 compiles its train step 40 s after process 0 (a loaded host): XLA's
# CPU collectives give up when one process waits over 30 s for the others to
# connect a device group, so the trainer has the processes meet first.
LATE_PROCESS = """
import time
from ctjax import train
compile_now = train.CompiledPerShape.compile
def compile_late(self, batch):
  time.sleep(0 if self._compiled else 40)
  return compile_now(self, batch)
train.CompiledPerShape.compile = compile_late
"""


@pytest.mark.long
def test_two_processes_match_one_process(tmp_path, tmp_path_factory):
  reference = run_util.shared_train(tmp_path_factory, run_util.GPT_CONFIG, MESH)
  config = run_util.write_config(tmp_path, run_util.GPT_CONFIG)
  workdir = tmp_path / "run"
  process_0, _ = multiprocess_util.train(config, workdir, MESH, num_processes=2,
                                         devices_per_process=4,
                                         preludes={1: LATE_PROCESS})
  assert "over 8 cpu devices, 2 process(es)" in process_0.stdout

  # Only process 0 writes metrics.jsonl: each step once, not once per process.
  records = run_util.metrics(workdir)
  assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 11))
  tolerances.assert_curves_close(run_util.curve(workdir), run_util.curve(reference),
                                 n=run_util.GPT_SUM_TERMS)
  # The validation loss: 10 steps and one more forward pass.
  assert records[-1]["validation/loss"] == pytest.approx(
      run_util.metrics(reference)[-1]["validation/loss"],
      rel=tolerances.curve_rtol(STEPS + 1, run_util.GPT_SUM_TERMS))

  # Every process wrote its shards: the checkpoints are the reference's steps, and
  # their parameters read back whole and equal to the reference's.
  assert run_util.checkpoint_steps(workdir) == [5, 10]
  assert run_util.checkpoint_steps(reference) == [5, 10]
  tolerances.assert_close_normwise(
      run_util.saved_state(workdir)["params"], run_util.saved_state(reference)["params"],
      tolerances.curve_rtol(STEPS, run_util.GPT_SUM_TERMS))
