"""Federated training deployed with Flower on localhost: a server process and
three site processes, each reading only its own file (ctjax/flower.py).

One scenario, since each Flower process costs seconds to start: the deployment
trains round 1 as the simulation does on the same partitions; a site killed in
the middle of round 2 is dropped (config.federated.on_client_failure="drop")
and the round ends with the other two; the server's command run again with a
third round resumes from its checkpoint, with secure aggregation (SecAgg+) and
on_client_failure="retry": the round is run again when the killed site is back,
and ends where the simulation does from that checkpoint."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ctjax import checkpoint
from ctjax import federated
from ctjax.errors import UserError
import multiprocess_util
import run_util
import tolerances

SITES = ("a", "b", "c")
FEATURES = 8


def _write_tables(folder: pathlib.Path) -> None:
  """The breast-cancer table's first 8 features (standardised), each tumour
  assigned a site: train.csv (all sites), one file per site, val.csv."""
  from sklearn.datasets import load_breast_cancer  # pylint: disable=g-import-not-at-top
  data = load_breast_cancer()
  x = (data.data - data.data.mean(0)) / data.data.std(0)
  rng = np.random.default_rng(0)
  site = rng.choice(SITES, len(x))
  order = rng.permutation(len(x))
  validation, train = order[:100], np.sort(order[100:])
  header = ",".join([f"f{i}" for i in range(FEATURES)] + ["site", "label"]) + "\n"

  def write(name, rows):
    (folder / name).write_text(header + "".join(
        ",".join(f"{v:.6f}" for v in x[i, :FEATURES]) + f",{site[i]},{data.target[i]}\n"
        for i in rows))

  write("train.csv", train)
  write("val.csv", validation)
  for s in SITES:  # In the simulation's order: a site's rows keep theirs.
    write(f"site_{s}.csv", train[site[train] == s])


def _config(folder: pathlib.Path, rounds: int, **federated: object) -> dict:
  return {
      "seed": 0,
      "data": {"source": "csv", "label_column": "label", "standardize": False,
               "numeric_columns": tuple(f"f{i}" for i in range(FEATURES)),
               "slices": {"site": "site"}, "num_threads": 1, "prefetch": 0,
               "splits": {"train": str(folder / "train.csv"),
                          "validation": str(folder / "val.csv")}},
      "model": {"name": "mlp", "num_classes": 2, "hidden_sizes": (16,)},
      "batch_size": 16, "eval_every": 1, "eval_splits": ("validation",),
      "final_eval_splits": ("validation",),
      "optim": {"name": "sgd", "lr": 0.1, "schedule": {"name": "constant"}},
      "checkpoint": {"every": 1, "keep": 5},
      "federated": {"clients": 3, "rounds": rounds, "local_steps": 3,
                    "algorithm": "fedavg", "partition_column": "site",
                    "on_client_failure": "drop", "min_clients": 2,
                    # A site's reply takes seconds (Flower starts a process for
                    # each message; 5-20 s with the suite's other tests beside
                    # it); a killed one is given up on after this.
                    "round_timeout": 40.0, **federated}}


def _params(workdir: pathlib.Path, step: int):
  manager = checkpoint.make_manager(checkpoint.checkpoint_dir(str(workdir)),
                                    read_only=True)
  return manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore()))["state"]["params"]


def _environment() -> dict[str, str]:
  env = dict(os.environ)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
  return env


def _start(args: list[str], log: pathlib.Path) -> subprocess.Popen:
  with open(log, "a") as f:
    return subprocess.Popen([sys.executable, "-m", "ctjax", "federated", *args],
                            stdout=f, stderr=subprocess.STDOUT, env=_environment(),
                            start_new_session=True)  # Its Flower children too.


def _wait_for(log: pathlib.Path, text: str, timeout: float) -> None:
  deadline = time.monotonic() + timeout
  while text not in log.read_text():
    assert time.monotonic() < deadline, f"{log}: no {text!r}:\n{log.read_text()}"
    time.sleep(0.2)


def _kill(process: subprocess.Popen) -> None:
  try:
    os.killpg(process.pid, signal.SIGKILL)
  except ProcessLookupError:
    pass
  process.wait()


@pytest.mark.long
def test_a_deployed_federation_trains_as_the_simulation_drops_or_retries_a_killed_site_and_resumes(
    tmp_path):
  _write_tables(tmp_path)
  config = run_util.write_config(tmp_path, _config(tmp_path, rounds=2))
  simulation = tmp_path / "simulation"
  subprocess.run([sys.executable, "-m", "ctjax", "train", "--config", config,
                  "--workdir", str(simulation)], check=True, capture_output=True)
  # Every process encodes its file with the one agreed data_state.json.
  server_dir = tmp_path / "server"
  for name in ("server", *(f"site_{s}" for s in SITES)):
    (tmp_path / name).mkdir()
    shutil.copy(simulation / "data_state.json", tmp_path / name)

  port = multiprocess_util.free_port()
  server_args = ["server", "--config", config, "--workdir", str(server_dir),
                 "--port", str(port), "--insecure"]
  server = _start(server_args, tmp_path / "server.log")
  site_args = {
      s: ["client", "--config", config, "--workdir", str(tmp_path / f"site_{s}"),
          "--site", s, "--server", f"127.0.0.1:{port}", "--insecure",
          "--port", str(multiprocess_util.free_port()),
          f"--config.data.splits.train={tmp_path / f'site_{s}.csv'}"]
      for s in SITES}
  sites = {s: _start(args, tmp_path / f"site_{s}.log") for s, args in site_args.items()}
  try:
    # Site c dies while it trains round 2.
    _wait_for(tmp_path / "site_c.log", "ROUND 2]", timeout=240)
    _kill(sites["c"])
    assert server.wait(timeout=240) == 0, (tmp_path / "server.log").read_text()

    # Round 1 is the simulation's: the sites trained what the simulated
    # clients did; only the float order of the mean differs (the simulation's
    # vmapped clients and its float32 mean against one site each and a float64
    # mean). Terms on a parameter's path as in tests/test_federated.py: a batch
    # of 16 through an 8-16-2 network, twice, over 3 local steps.
    tolerances.assert_close_normwise(
        _params(server_dir, 1), _params(simulation, 1),
        tolerances.curve_rtol(3, 16 + 2 * (FEATURES + 16 + 2)))
    records = {r["step"]: r for r in run_util.metrics(server_dir)}
    assert records[1]["federated/sites"] == 3
    assert records[2]["federated/sites"] == 2  # c dropped
    assert "client_c/loss" not in records[2]
    assert "dropped 1 site" in (tmp_path / "server.log").read_text()
    round_2 = _params(server_dir, 2)

    # The same command with a third round resumes from round 2's checkpoint,
    # now with SecAgg+ and on_client_failure="retry": c is still dead, so the
    # round's first attempt has two sites and is run again once c is back.
    config_3 = run_util.write_config(tmp_path, _config(
        tmp_path, rounds=3, secure_aggregation=True, on_client_failure="retry"),
                                     name="config_3.py")
    server_args[2] = config_3
    server = _start(server_args, tmp_path / "server.log")
    _wait_for(tmp_path / "server.log", "retrying", timeout=240)
    sites["c"] = _start(site_args["c"], tmp_path / "site_c.log")
    assert server.wait(timeout=240) == 0, (tmp_path / "server.log").read_text()
    assert "resumed at round 2" in (tmp_path / "server.log").read_text()
    records = {r["step"]: r for r in run_util.metrics(server_dir)}
    assert sorted(records) == [1, 2, 3] and records[3]["federated/sites"] == 3
    run_util.assert_trees_close(_params(server_dir, 2), round_2)

    # Round 3 is what the simulation trains from that checkpoint, up to SecAgg+'s
    # quantization (ctjax/flower.py `secure_aggregation`): each site's change,
    # times its weight w_i = examples / 1000 (itself rounded to 2**-22), is
    # rounded stochastically to a step of 16 / 2**22, an error below one step;
    # the sum of the 3 sites' is divided by sum(w_i). So the mean change is off
    # by less than 3 steps / sum(w_i), plus the weights' rounding (relative
    # 2**-23 / w_i each) and the float order of the local training as above.
    simulated = tmp_path / "simulation_3"
    (simulated / "checkpoints").mkdir(parents=True)
    shutil.copy(simulation / "data_state.json", simulated)
    shutil.copytree(server_dir / "checkpoints" / "2", simulated / "checkpoints" / "2")
    subprocess.run([sys.executable, "-m", "ctjax", "train", "--config", config_3,
                    "--workdir", str(simulated)], check=True, capture_output=True)
    weights = np.array([len((tmp_path / f"site_{s}.csv").read_text().splitlines()) - 1
                        for s in SITES]) / 1000
    atol = 3 * (16 / 2**22) / weights.sum()
    rtol = (tolerances.curve_rtol(3, 16 + 2 * (FEATURES + 16 + 2))
            + 2 * np.sum(2**-23 / weights))
    deployed, expected = _params(server_dir, 3), _params(simulated, 3)
    for path, want in jax.tree_util.tree_flatten_with_path(expected)[0]:
      got = np.asarray(dict(jax.tree_util.tree_flatten_with_path(deployed)[0])[path])
      assert np.abs(got - want).max() <= rtol * np.abs(want).max() + atol, path
  finally:
    for process in (server, *sites.values()):
      _kill(process)


def test_a_site_without_rows_of_its_name_is_refused_before_connecting(tmp_path):
  _write_tables(tmp_path)
  config = run_util.write_config(tmp_path, _config(tmp_path, rounds=1))
  result = subprocess.run(
      [sys.executable, "-m", "ctjax", "federated", "client", "--config", config,
       "--workdir", str(tmp_path / "site"), "--site", "z", "--insecure",
       "--server", "127.0.0.1:1", f"--config.data.splits.train={tmp_path / 'site_a.csv'}"],
      capture_output=True, text=True, env=_environment())
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(
      "ctjax: error: --site 'z': no row of this site's train split has site='z'")


def test_federated_options_are_checked(tmp_path):
  from ctjax import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config(run_util.write_config(
      tmp_path, {**_config(tmp_path, rounds=1), "federated": {
          **_config(tmp_path, 1)["federated"], "on_client_failure": "wait"}}))
  with pytest.raises(UserError, match="on_client_failure='wait'"):
    federated._options(config)  # pylint: disable=protected-access
