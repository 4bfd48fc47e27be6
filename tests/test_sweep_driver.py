"""The sweep driver (ctjax/sweep_driver.py), run as a user runs it.

- The default config's "width" sweep with 2 workers: the driver is killed outright
  while trials run; its trials save checkpoints as they die with it, and the same
  command then skips the finished trials, resumes the others from their
  checkpoints, and writes the table and plots.
- A search with median pruning on an MLP: a trial worse than the median at an
  evaluation is stopped there, told PRUNED, and keeps its checkpoint.
- Two drivers sharing one study in a real PostgreSQL server: no trial twice, and
  the trial of a driver killed mid-trial is retried by the other, resuming from
  its checkpoint.
- Mistakes stop before any trial with one line: SQLite with several workers, a
  study that holds another search.
"""
import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import optuna
import pytest

import postgres_server
import run_util
from ctjax import search
from ctjax import sweep_driver
from ctjax.errors import UserError

REPO = run_util.REPO


def _driver(arguments: list[str], log: pathlib.Path) -> subprocess.Popen:
  """`experiments/sweep.py ARGS` with one CPU device per trial, output to `log`."""
  with open(log, "a") as out:
    return subprocess.Popen(
        [sys.executable, str(REPO / "experiments" / "sweep.py"), *arguments],
        stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=run_util.env(devices=1))


def _wait(process: subprocess.Popen, log: pathlib.Path) -> int:
  try:
    return process.wait(timeout=run_util.TIMEOUT_S)
  except subprocess.TimeoutExpired:
    process.kill()
    raise AssertionError(f"the driver timed out:\n{log.read_text()[-3000:]}")


def _until(condition, process: subprocess.Popen, log: pathlib.Path) -> None:
  deadline = time.monotonic() + run_util.TIMEOUT_S
  while not condition():
    if process.poll() is not None or time.monotonic() > deadline:
      raise AssertionError(f"the driver ended (or hung) before the awaited "
                           f"moment:\n{log.read_text()[-3000:]}")
    time.sleep(0.2)


def _processes_in(folder: pathlib.Path) -> list[int]:
  """The processes whose command line names `folder` (the trials of a sweep)."""
  pids = []
  for cmdline in pathlib.Path("/proc").glob("[0-9]*/cmdline"):
    try:
      if str(folder).encode() in cmdline.read_bytes():
        pids.append(int(cmdline.parent.name))
    except OSError:  # It ended meanwhile.
      pass
  return pids


def _attempts(run_dir: pathlib.Path) -> int:
  return sum(line.startswith("=== ") for line in
             (run_dir / "log.txt").read_text().splitlines())


@pytest.mark.long
def test_default_sweep_resumes_after_the_driver_is_killed(tmp_path):
  sweep = tmp_path / "sweep"
  arguments = ["--config", "configs/default.py:steps=100", "--sweep", "width",
               "--workers", "2", "--workdir", str(sweep),
               "--config.eval_every=50", "--config.log_every=25",
               "--config.checkpoint.every=25"]
  log = tmp_path / "driver.txt"
  driver = _driver(arguments, log)
  checkpoints = lambda: [p for p in sweep.glob("trials/*/checkpoints/*")
                         if p.name.isdigit()]
  _until(lambda: checkpoints(), driver, log)
  driver.kill()  # SIGKILL: the driver cannot pass anything on to its trials.
  saved = {p.parent.parent.name for p in checkpoints()}
  driver.wait()
  # Its trials got SIGTERM from the kernel as it died: wait until they have
  # saved and exited, as a user rerunning the command after a crash would find.
  deadline = time.monotonic() + run_util.TIMEOUT_S
  while _processes_in(sweep) and time.monotonic() < deadline:
    time.sleep(0.2)

  status = _wait(_driver(arguments, log), log)
  text = log.read_text()
  assert status == 0, text[-3000:]
  trials = sorted((sweep / "trials").iterdir())
  assert [t.name for t in trials] == ["model.widths=_16,_32_,optim.lr=0.003",
                                      "model.widths=_32,_64_,optim.lr=0.003"]
  # A trial that had saved when the driver died resumes from its checkpoint,
  # not from scratch. (One still starting up then may have died unsaved, and
  # one may have finished before.)
  resumed = [t for t in trials if t.name in saved and _attempts(t) == 2]
  assert resumed, text[-3000:]
  for trial in resumed:
    second = (trial / "log.txt").read_text().split("\n=== ")[-1]
    assert "resumed from" in second, second[-2000:]
  for trial in trials:
    record = json.loads((trial / "trial.json").read_text())
    assert record["status"] == "finished"
    assert record["metrics"]["validation/accuracy"] > 0
  with open(sweep / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["trial"] for r in rows) == [t.name for t in trials]
  best = max(rows, key=lambda r: float(r["best validation/accuracy"]))
  assert rows[0] == best  # Best first.
  assert (sweep / "plots" / "learning_curves.png").stat().st_size > 1000
  assert "trials: 2 finished" in text


PRUNED_SWEEP_CONFIG = '''
from ml_collections import ConfigDict
from ctjax import search

def get_config(arg=None):
  return ConfigDict({config!r})

def get_sweeps(arg=None):
  return {{"lr": search.Search(
      space={{"optim.lr": search.categorical([0.05, 1e-6, 2e-6])}},
      objectives={{"validation/accuracy": "max"}}, sampler="grid",
      pruner="median", trials=3,
      pruner_options={{"n_startup_trials": 1, "n_warmup_steps": 0}})}}
'''


def _write_search_config(directory: pathlib.Path, **changes) -> str:
  config = dict(run_util.MLP_CONFIG, train_duration=30, eval_every=10,
                log_every=10, checkpoint={"every": 10, "keep": 3}, **changes)
  path = directory / "search_config.py"
  path.write_text(PRUNED_SWEEP_CONFIG.format(config=config))
  return str(path)


@pytest.mark.long
def test_search_prunes_trials_below_the_median(tmp_path):
  """lr 1e-6 and 2e-6 barely move from chance; lr 0.05 learns. In any order of
  the grid, a bad trial meets a median that includes the good one (a lone
  completed trial is its own median) and is pruned at an evaluation."""
  config, sweep, log = _write_search_config(tmp_path), tmp_path / "s", tmp_path / "d"
  arguments = ["--config", config, "--sweep", "lr", "--workdir", str(sweep)]
  assert _wait(_driver(arguments, log), log) == 0, log.read_text()[-3000:]
  study = optuna.load_study(study_name="search_config-lr", storage=(
      search.make_storage(str(sweep / "optuna.journal"), workers=1)))
  states = {t.params["optim.lr"]: t.state for t in study.trials}
  assert len(study.trials) == 3
  pruned = [lr for lr, s in states.items() if s == optuna.trial.TrialState.PRUNED]
  assert pruned and 0.05 not in pruned, states
  assert states[0.05] == optuna.trial.TrialState.COMPLETE
  for trial in study.trials:
    run_dir = sweep / "trials" / trial.user_attrs["name"]
    records = run_util.metrics(run_dir)
    if trial.state == optuna.trial.TrialState.PRUNED:
      stop = [r["step"] for r in records if r.get(search.PRUNED_METRIC)]
      assert stop and stop[0] < 30
      assert stop[0] in run_util.checkpoint_steps(run_dir)
      # What the pruner saw is what the run evaluated.
      assert trial.intermediate_values[stop[0]] == pytest.approx(
          next(r["validation/accuracy"] for r in records
               if r["step"] == stop[0] and "validation/accuracy" in r))
    else:
      final = json.loads((run_dir / "trial.json").read_text())["metrics"]
      assert trial.value == final["validation/accuracy"]
  assert (sweep / "plots" / "optuna_history.png").exists()
  # A rerun finds the budget spent and trains nothing.
  assert _wait(_driver(arguments, log), log) == 0
  assert len(optuna.load_study(study_name="search_config-lr", storage=(
      search.make_storage(str(sweep / "optuna.journal"), workers=1))).trials) == 3


def _args(config: str, workdir: pathlib.Path, **options):
  parser = sweep_driver.argparse.ArgumentParser()
  sweep_driver.add_arguments(parser)
  return parser.parse_args(["--config", config, "--sweep", "lr", "--workdir",
                            str(workdir), *(f"--{k.replace('_', '-')}={v}"
                                            for k, v in options.items())])


def test_sqlite_with_several_workers_and_a_foreign_study_are_refused(tmp_path):
  config = _write_search_config(tmp_path)
  with pytest.raises(UserError, match=r"--storage sqlite.*2 workers.*journal"):
    sweep_driver.run_sweep(_args(config, tmp_path / "a", workers=2,
                                 storage=f"sqlite:///{tmp_path}/s.db"), [])
  journal = tmp_path / "shared.journal"
  optuna.create_study(study_name="other", storage=search.make_storage(
      str(journal), workers=1)).set_user_attr("ctjax", {"config": "x.py",
                                                        "overrides": []})
  with pytest.raises(UserError, match=r"--study other: that study holds another"):
    sweep_driver.run_sweep(_args(config, tmp_path / "b", storage=str(journal),
                                 study="other"), [])


POSTGRES_SWEEP_CONFIG = '''
from ml_collections import ConfigDict
from ctjax import search

def get_config(arg=None):
  return ConfigDict({config!r})

def get_sweeps(arg=None):
  return {{"lr": search.Search(
      space={{"optim.lr": search.log_uniform(1e-3, 1e-1)}},
      objectives={{"validation/accuracy": "max"}}, sampler="random", trials=2)}}
'''


@pytest.mark.skipif(bool(postgres_server.unavailable()),
                    reason=postgres_server.unavailable() or "-")
@pytest.mark.long
def test_two_drivers_share_a_postgres_study_and_retry_a_killed_ones_trial(tmp_path):
  # Trials long enough to be caught between checkpoints: a checkpoint every 20
  # of 400 steps.
  config = dict(run_util.MLP_CONFIG, train_duration=400, eval_every=0,
                log_every=20, checkpoint={"every": 20, "keep": 2})
  path = tmp_path / "pg_config.py"
  path.write_text(POSTGRES_SWEEP_CONFIG.format(config=config))
  sweep = tmp_path / "sweep"  # Shared by both drivers, as on shared storage.
  with postgres_server.running(tmp_path) as url:
    arguments = ["--config", str(path), "--sweep", "lr", "--workdir", str(sweep),
                 "--storage", url, "--study", "shared", "--heartbeat-s", "2"]
    # (A trial is failed 6 s after its driver's last heartbeat: the killed
    # driver's trial, which gets SIGTERM as its driver dies, has saved and
    # exited by then, as on a machine that is gone.)
    log_a, log_b = tmp_path / "a.txt", tmp_path / "b.txt"
    driver_a = _driver(arguments, log_a)
    checkpoints = lambda: [p for p in sweep.glob("trials/*/checkpoints/*")
                           if p.name.isdigit()]
    _until(lambda: checkpoints(), driver_a, log_a)
    killed_dir = checkpoints()[0].parent.parent
    driver_b = _driver([*arguments, "--workers", "2"], log_b)
    driver_a.kill()
    driver_a.wait()
    assert _wait(driver_b, log_b) == 0, log_b.read_text()[-3000:]
    trials = optuna.load_study(study_name="shared", storage=url).get_trials()
  by_state = {}
  for trial in trials:
    by_state.setdefault(trial.state.name, []).append(trial)
  complete = by_state.get("COMPLETE", [])
  assert len(complete) == 2, [(t.number, t.state, t.params) for t in trials]
  names = [t.user_attrs["name"] for t in complete]
  assert len(set(names)) == 2  # No trial trained twice.
  failed = by_state.get("FAIL", [])
  assert [t.user_attrs["name"] for t in failed] == [killed_dir.name]
  # The retry took the killed trial's values, in its folder, from its checkpoint.
  assert killed_dir.name in names
  assert _attempts(killed_dir) == 2
  second = (killed_dir / "log.txt").read_text().split("\n=== ")[-1]
  assert "resumed from" in second, second[-2000:]


def test_each_worker_gets_its_own_share_of_the_devices(monkeypatch):
  from ctjax import run_pool  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")  # A scheduler's share.
  pool = run_pool.Pool(workers=2, devices_per_run=2)
  assert [e["CUDA_VISIBLE_DEVICES"] for e in pool._slot_env] == ["4,5", "6,7"]  # pylint: disable=protected-access
  with pytest.raises(UserError, match=r"need 6 GPUs; 4 are visible"):
    run_pool.Pool(workers=3, devices_per_run=2)
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
  if run_pool.gpu_count() == 0 and len(os.sched_getaffinity(0)) >= 2:
    shares = run_pool.Pool(workers=2)._cpus  # pylint: disable=protected-access
    assert shares[0] and shares[1] and not shares[0] & shares[1]


LIST_SWEEP_CONFIG = '''
from ml_collections import ConfigDict

def get_config(arg=None):
  return ConfigDict({config!r})

def get_sweeps(arg=None):
  return {{"lr": [{{"optim.lr": 1e30}}]}}
'''


@pytest.mark.long
def test_a_failed_trial_is_reported_with_its_log_and_retried_when_asked(tmp_path):
  """lr 1e30 diverges (the trainer stops with exit status 2, naming the step):
  the driver says so with the end of the trial's log and exits 1; a rerun skips
  the failed trial, unless --retry-failed."""
  config = dict(run_util.MLP_CONFIG, train_duration=20, log_every=10)
  path = tmp_path / "list_config.py"
  path.write_text(LIST_SWEEP_CONFIG.format(config=config))
  sweep, log = tmp_path / "sweep", tmp_path / "driver.txt"
  arguments = ["--config", str(path), "--sweep", "lr", "--workdir", str(sweep)]
  assert _wait(_driver(arguments, log), log) == 1
  text = log.read_text()
  assert "trial optim.lr=1e+30: failed (exit status 2)" in text, text[-3000:]
  assert "the run diverged" in text  # The end of its log, shown.
  failed = sweep / "trials" / "optim.lr=1e+30"
  assert json.loads((failed / "trial.json").read_text())["status"] == "failed"

  assert _wait(_driver(arguments, log), log) == 1
  assert "trial optim.lr=1e+30: failed before" in log.read_text()
  assert _attempts(failed) == 1
  assert _wait(_driver([*arguments, "--retry-failed"], log), log) == 1
  assert _attempts(failed) == 2
