"""The `ctjax train` command: config mistakes, the default workdir, config.json.

A mistake in the config must stop the run before anything compiles, with exit
status 2 and one line on stderr that names the key (or file) and the fix: no
traceback for a person to dig through. Each case runs the real command in its own
process, as a user would; all of them start at once, since each mostly waits for
Python and JAX to import.
"""
import pathlib
import subprocess

import pytest

import run_util
import shared_runs
from ctjax import config as config_lib

DEFAULT = "configs/default.py"
# A small experiment written to a file, for mistakes that live in config files.
MLP = dict(model=dict(name="mlp", num_classes=10, hidden_sizes=(16,)),
           data=dict(source="sklearn_datasets", name="digits",
                     split_fractions={"train": 0.8, "validation": 0.2}),
           batch_size=32, train_duration=5, final_eval_splits=("validation",))



class Source(str):
  """The text of an experiment file to write, as a user would have typed it."""


def _experiment(body: str) -> Source:
  """An experiment file whose get_config runs `body` (line 5 is body's first)."""
  return Source("from ml_collections import ConfigDict\n\n\n"
                "def get_config(arg=None):\n" +
                "".join(f"  {line}\n" for line in body.splitlines()))


# name: (config: a path, the dict of a file to write or a file's Source, overrides,
#        what the line names: one string or several)
MISTAKES = {
    "unknown_key_in_override": (DEFAULT, ["optim.lrr=1"], "optim.lrr"),
    "unknown_key_in_file": (dict(MLP, bach_size=64), [], "bach_size"),
    "unknown_model_field": (DEFAULT, ["model.widthz=(8, 8)"], "model.widthz"),
    "wrong_type_in_override": (DEFAULT, ["batch_size=abc"], "batch_size"),
    "wrong_type_in_file": (dict(MLP, batch_size="64"), [], "batch_size"),
    # 8 devices in the test environment: 60 examples do not split over them.
    "batch_not_divisible_by_data_parallel": (DEFAULT, ["batch_size=60"], "batch_size"),
    "microbatch_not_divisible": (DEFAULT, ["grad_accum_steps=16"], "batch_size"),
    "mesh_larger_than_devices": (DEFAULT, ["mesh.data=16"], "mesh"),
    "model_without_module": (DEFAULT, ["model.name=resnet9000"], "model.name"),
    "unknown_optimizer": (DEFAULT, ["optim.name=adamm"], "optim.name"),
    "bad_duration": (DEFAULT, ["train_duration=3 weeks"], "train_duration"),
    "unknown_eval_split": (DEFAULT, ["eval_splits=('valid',)"], "eval_splits"),
    "missing_config_file": ("configs/no_such_experiment.py", [],
                            "configs/no_such_experiment.py"),
    "bad_config_argument": (DEFAULT + ":foo=1", [], "foo"),
    # The config file's own mistakes: file and line, what went wrong, what to do.
    "group_field_set_alone": (
        _experiment("c = ConfigDict()\nc.optim.lr = 1e-3\nreturn c"), [],
        ("group_field_set_alone.py:6: config.optim is not set",
         "write `c.optim = dict(lr=1e-3)`", "c = base_config()")),
    "name_error": (_experiment("c = ConfigDict(batch_size=bach)\nreturn c"), [],
                   ("name_error.py:5: NameError: name 'bach' is not defined",)),
    "syntax_error": (_experiment("c = ConfigDict(\nreturn c"), [],
                     ("syntax_error.py:5: SyntaxError",)),
    "get_config_without_parameter": (
        Source("def get_config():\n  return {}\n"), [], "get_config() cannot be called"),
    "no_get_config": (Source("config = {}\n"), [], "defines no get_config"),
    "get_config_returns_nothing": (_experiment("c = dict(batch_size=8)"), [],
                                   "get_config returned NoneType"),
}


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
  """Runs every case of MISTAKES, all at once and once per session."""

  def run_all(folder):
    runs = {}
    for name, (config, overrides, _) in MISTAKES.items():
      if isinstance(config, dict):
        config = run_util.write_config(folder, config, name=f"{name}.py")
      elif isinstance(config, Source):
        (folder / f"{name}.py").write_text(config)
        # The argument reaches get_config(arg=None) but not get_config().
        config = str(folder / f"{name}.py") + (
            ":size=2" if name == "get_config_without_parameter" else "")
      runs[name] = run_util.start(config, folder / name,
                                  dict(o.split("=", 1) for o in overrides), devices=8)
    results = {name: run_util.finish(run, check=False) for name, run in runs.items()}
    return {name: {"args": r.args, "returncode": r.returncode, "stdout": r.stdout,
                   "stderr": r.stderr} for name, r in results.items()}

  _, results = run_util.once_per_session(tmp_path_factory, "mistakes", run_all)
  return {name: subprocess.CompletedProcess(**r) for name, r in results.items()}


@pytest.mark.parametrize("name", MISTAKES)
def test_config_mistake_stops_before_compiling_with_one_line(mistakes, name):
  result, named = mistakes[name], MISTAKES[name][2]
  lines = result.stderr.splitlines()
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("ctjax: error: "), lines[0]
  for part in (named,) if isinstance(named, str) else named:
    assert part in lines[0], lines[0]
  # Nothing was compiled: the compiled step's memory report comes first thing after
  # compilation, after the parameter overview.
  assert "train step memory" not in result.stdout
  assert "parameters:" not in result.stdout
  assert "Traceback" not in result.stdout + result.stderr


def test_verbose_shows_the_traceback_of_a_config_file_mistake(tmp_path):
  """--verbose and CTJAX_VERBOSE=1 add the traceback above the one line."""
  path = tmp_path / "experiment.py"
  path.write_text(MISTAKES["group_field_set_alone"][0])
  runs = [run_util.start(path, tmp_path / "verbose", devices=1,
                         extra_args=["--verbose"]),
          run_util.start(path, tmp_path / "env", devices=1,
                         extra_env={"CTJAX_VERBOSE": "1"})]
  for run in runs:
    result = run_util.finish(run, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert 'experiment.py", line 6, in get_config' in result.stderr
    assert result.stderr.splitlines()[-1].startswith("ctjax: error: "), result.stderr


def test_unrecognised_argument_is_a_usage_error():
  result = subprocess.run(
      run_util.command(DEFAULT, "unused") + ["--confg.optim.lr=1"],
      cwd=run_util.REPO, env=run_util.env(1), capture_output=True, text=True,
      timeout=run_util.TIMEOUT_S)
  assert result.returncode == 2
  assert "--confg.optim.lr=1" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> shared_runs.SharedRun:
  """configs/default.py:steps=20 with overrides and no --workdir."""
  return shared_runs.short_default_run(tmp_path_factory)


def test_workdir_defaults_to_runs_and_the_config_name(short_run):
  # The config argument is part of the name: "default:steps=20" and "default" are
  # different experiments and must not resume each other.
  assert [p.name for p in (short_run.dir / "runs").iterdir()] == ["default-steps_20"]
  assert (short_run.dir / "runs" / "default-steps_20" / "metrics.jsonl").is_file()


def test_config_json_is_the_resolved_config(short_run):
  workdir = short_run.dir / "runs" / "default-steps_20"
  text = (workdir / "config.json").read_text()
  config = config_lib.from_json(text)
  # The experiment's argument and every override are applied ...
  expected = config_lib.load_config(
      DEFAULT + ":steps=20", ["log_every=1", "eval_every=0", "checkpoint.every=0",
                              "optim.schedule.warmup=5"])
  assert config.train_duration == "20"
  assert config.optim.schedule.warmup == "5"
  assert config.model.name == "cnn" and config.batch_size == 64
  # ... and config.json reloads to exactly the config that ran.
  assert config_lib.to_json(config) == text == config_lib.to_json(expected)


def test_config_json_reruns_as_an_experiment(short_run, tmp_path):
  """A run's config.json, loaded back, describes the same run: sweeps rely on it."""
  text = (short_run.dir / "runs" / "default-steps_20" / "config.json").read_text()
  path = pathlib.Path(tmp_path) / "rerun.py"
  path.write_text("from ctjax import config\n\n\n"
                  f"def get_config(arg=None):\n  return config.from_json({text!r})\n")
  assert config_lib.to_json(config_lib.load_config(str(path))) == text
