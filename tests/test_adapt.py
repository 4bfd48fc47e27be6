"""`ctjax adapt`: the replay mix of old and new training data, the warm-started
adaptation judged on old and new validation data, and the follower that monitors
each new window and adapts when it drifted. The data are configs/
transactions_drift.py's months: card testing, a fraud pattern the base month
never showed, appears in later ones."""
import argparse
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from ctjax import adapt
from ctjax import checkpoint
from ctjax import config as config_lib
from ctjax import drift
from ctjax import train
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError

import run_util
import test_resume

_spec = importlib.util.spec_from_file_location(
    "transactions_drift", run_util.REPO / "configs" / "transactions_drift.py")
months = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(months)

# Small and quick, yet the base model learns card-present fraud well (~0.93) and
# misses most card testing: the adaptations' gains are tens of points.
BASE_STEPS = 300
ADAPT_STEPS = 300
# `ctjax adapt`'s defaults, as adapt.follow takes them.
OPTIONS = dict(checkpoint="latest", replay=0.3, validation_fraction=0.2, metric=None,
               tolerance=0.01, min_gain=0.0)


def _base_config(csv: str) -> dict:
  return dict(
      seed=0,
      data=dict(source="csv", path=csv, label_column="fraud",
                categorical_columns=("channel",),
                split_fractions={"train": 0.8, "validation": 0.2}, stratify=True,
                num_threads=1, prefetch=0),
      model=dict(name="mlp", num_classes=2, hidden_sizes=(64, 64)),
      batch_size=64, train_duration=BASE_STEPS, log_every=100, eval_every=0,
      eval_splits=("validation",), final_eval_splits=("validation",),
      optim=dict(lr=3e-3), reference_statistics=True,
      checkpoint=dict(every=150, keep=2, best_metric="validation/accuracy"))


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
  """A run trained on month 0 (2000 rows), and months 1 (alike) and 2 (half card
  testing) beside it."""
  folder = tmp_path_factory.mktemp("adapt")
  months.write_window(str(folder / "month_0.csv"), seed=0, rows=2000)
  months.write_window(str(folder / "month_1.csv"), seed=1, rows=600)
  months.write_window(str(folder / "month_2.csv"), seed=2, rows=1000, new_share=0.5)
  final = train.train(config_lib.load_config(run_util.write_config(
      folder, _base_config(str(folder / "month_0.csv")))), str(folder / "base"))
  return folder, final


def _sha256(path) -> str:
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_replay_appends_a_seeded_sample_of_the_parents_training_split(parent):
  folder, _ = parent
  base = str(folder / "base")
  config = config_lib.from_json(open(folder / "base" / "config.json").read())
  config.data.path = str(folder / "month_2.csv")
  config.data.replay = {"workdir": base, "fraction": 0.25, "seed": 3}
  state_dir = folder / "replay_state"
  splits = splits_lib.open_splits(config.data, state_dir=str(state_dir))
  # The new data are encoded with the parent's fitted statistics, not refitted,
  # and that encoding is kept with this run.
  assert (json.load(open(state_dir / "data_state.json")) ==
          json.load(open(folder / "base" / "data_state.json")))
  own, replayed = splits["train"].parts
  assert len(own) == 800  # 80% of month 2's 1000 rows.
  # A quarter of the mix is old: 800 new and round(800 / 3) old examples.
  assert len(replayed) == round(0.25 / 0.75 * 800) == len(splits["train"]) - 800
  # The replayed examples are the parent's training examples (never its
  # validation ones), encoded as the parent encoded them.
  parent_config = config_lib.from_json(open(folder / "base" / "config.json").read())
  parent_splits = splits_lib.open_splits(parent_config.data, state_dir=base,
                                         write_state=False)
  old_train = parent_splits["train"]
  np.testing.assert_array_equal(
      splits["train"].get_batch(np.arange(800, len(splits["train"])))["inputs"],
      old_train.get_batch(replayed.indices)["inputs"])
  assert len(np.unique(replayed.indices)) == len(replayed.indices)
  # A batch across both parts is the examples one by one, labels alike.
  mixed = np.array([5, 900, 0, len(splits["train"]) - 1, 799, 800])
  batch = splits["train"].get_batch(mixed)
  for row, i in enumerate(mixed):
    np.testing.assert_array_equal(batch["inputs"][row], splits["train"][i]["inputs"])
    assert batch["label"][row] == splits["train"].labels[i]
  # The same seed draws the same sample; splits.json records it.
  again = splits_lib.open_splits(config.data, state_dir=str(state_dir))
  np.testing.assert_array_equal(again["train"].parts[1].indices, replayed.indices)
  record = splits_lib.describe(config.data, splits)["replay"]
  assert record["replayed_examples"] == len(replayed)
  assert record["replayed_index_sha256"] == hashlib.sha256(
      replayed.indices.tobytes()).hexdigest()


@pytest.mark.parametrize("replay, message", [
    ({"workdir": "", "fraction": 1.0}, "fraction=1.0"),
    ({"workdir": "", "fractoin": 0.3}, "replay.fractoin: unknown option"),
    ({"workdir": "/nonexistent", "fraction": 0.3}, "replay.workdir='/nonexistent'"),
])
def test_a_wrong_replay_option_is_named(parent, replay, message):
  folder, _ = parent
  config = config_lib.from_json(open(folder / "base" / "config.json").read())
  config.data.replay = {**replay, "workdir": replay["workdir"] or str(folder / "base")}
  with pytest.raises(UserError, match=message):
    splits_lib.open_splits(config.data, state_dir=None)


@pytest.fixture(scope="module")
def adapted(parent):
  """Month 2 adapted to, with half the training data replayed."""
  folder, _ = parent
  record = adapt.adapt(str(folder / "base"), str(folder / "month_2.csv"),
                       out=str(folder / "adapted"), replay=0.5, tolerance=0.05,
                       overrides=[f"train_duration={ADAPT_STEPS}"])
  return folder, record


def test_adapting_to_drifted_data_gains_on_it_and_keeps_the_old(adapted, parent):
  folder, record = adapted
  _, parent_final = parent
  parent_eval, candidate = (record["evaluations"][k] for k in ("parent", "candidate"))
  # The parent misses card testing; the candidate learned it, and kept the old
  # validation accuracy within the tolerance: promoted.
  assert candidate["new_validation/accuracy"] > parent_eval["new_validation/accuracy"] + 0.1
  assert (candidate["old_validation/accuracy"] >=
          parent_eval["old_validation/accuracy"] - 0.05)
  assert record["promoted"] and record["decision"] == "promoted"
  assert (record["metric"], record["mode"]) == ("accuracy", "max")
  # "Old validation" is the parent's own validation split: its accuracy there is
  # the one the parent's training reported (same parameters, same examples).
  assert parent_eval["old_validation/accuracy"] == parent_final["validation/accuracy"]
  assert parent_eval["step"] == BASE_STEPS and candidate["step"] == ADAPT_STEPS
  # The decision follows from the recorded evaluations.
  assert adapt.decide(parent_eval, candidate, metric="accuracy", mode="max",
                      tolerance=0.05, min_gain=0.0)[0]
  # Lineage: the parent, its checkpoint, and the sha256 of every data file.
  lineage = record["lineage"]
  assert lineage["parent"]["workdir"] == str(folder / "base")
  assert lineage["parent"]["step"] == BASE_STEPS
  assert lineage["parent"]["data_sha256"] == {
      str(folder / "month_0.csv"): _sha256(folder / "month_0.csv")}
  assert lineage["data_sha256"] == {
      str(folder / "month_2.csv"): _sha256(folder / "month_2.csv")}
  assert lineage["splits"]["replay"]["replayed_examples"] == 800  # Half of 1600.
  assert json.load(open(folder / "adapted" / "adapt.json")) == record
  # The adapted run warm-started from the parent's checkpoint, and saved the
  # reference the next window is compared with.
  child = json.load(open(folder / "adapted" / "config.json"))
  assert (child["model_init"], child["model_init_step"]) == (
      str(folder / "base"), BASE_STEPS)
  assert (folder / "adapted" / "reference" / "reference.json").exists()


def test_adapting_again_repeats_the_decision_without_training(adapted):
  folder, record = adapted
  before = (folder / "adapted" / "metrics.jsonl").read_text()
  again = adapt.adapt(str(folder / "base"), str(folder / "month_2.csv"),
                      out=str(folder / "adapted"))
  assert again == record
  assert (folder / "adapted" / "metrics.jsonl").read_text() == before


def test_decide_needs_a_gain_on_new_data_and_no_loss_beyond_the_tolerance():
  parent = {"new_validation/loss": 0.50, "old_validation/loss": 0.20}
  better = {"new_validation/loss": 0.30, "old_validation/loss": 0.22}
  kw = dict(metric="loss", mode="min", min_gain=0.0)
  assert adapt.decide(parent, better, tolerance=0.03, **kw)[0]  # Lower is better.
  promoted, reasons = adapt.decide(parent, better, tolerance=0.01, **kw)
  assert not promoted and reasons[1].endswith("not met")
  assert not adapt.decide(parent, parent, tolerance=1.0, **kw)[0]  # No gain.
  assert not adapt.decide(parent, better, tolerance=1.0, metric="loss", mode="min",
                          min_gain=0.2)[0]


def test_a_candidate_that_does_not_gain_enough_is_not_promoted(parent):
  folder, _ = parent
  parser = argparse.ArgumentParser()
  adapt.add_arguments(parser)
  args = parser.parse_args([
      "--workdir", str(folder / "base"), "--data", str(folder / "month_2.csv"),
      "--out", str(folder / "unpromoted"), "--min-gain", "0.9"])
  assert adapt.adapt_command(args, ["train_duration=50"]) == 1
  record = json.load(open(folder / "unpromoted" / "adapt.json"))
  assert record["decision"] == "kept the parent" and not record["promoted"]
  assert "must gain more than 0.9): not met" in record["reasons"][0]


def test_a_missing_data_file_is_one_line_and_exit_status_2(parent, tmp_path):
  folder, _ = parent
  result = subprocess.run(
      [sys.executable, "-m", "ctjax", "adapt", "--workdir", str(folder / "base"),
       "--data", str(tmp_path / "nope.csv")],
      capture_output=True, text=True, env=run_util.env(1), timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"ctjax: error: --data={tmp_path / 'nope.csv'}: no such file")
  assert not (folder / "base-adapted-nope").exists()


def test_following_a_folder_adapts_only_to_drifted_windows(parent, tmp_path):
  folder, _ = parent
  incoming = tmp_path / "incoming"
  incoming.mkdir()
  (incoming / "a_month_1.csv").write_bytes((folder / "month_1.csv").read_bytes())
  (incoming / "b_month_2.csv").write_bytes((folder / "month_2.csv").read_bytes())
  (incoming / ".c_partial.csv").write_text("half written")
  (incoming / "a_bad.csv").write_text(
      (folder / "month_1.csv").read_text().replace("\n", "\nnot,a,row\n", 1))
  follow = lambda: adapt.follow(
      str(incoming), str(folder / "base"), out=str(tmp_path / "follow"), once=True,
      poll=0, window_rows=0, thresholds=drift.Thresholds(),
      adapt_options={**OPTIONS, "replay": 0.5, "tolerance": 0.05},
      overrides=[f"train_duration={ADAPT_STEPS}"])
  state = follow()
  bad, first, second = state["windows"]
  # A window with a malformed row is recorded, not used, and passed over.
  assert bad["window"] == "a_bad.csv" and bad["drifted"] is None
  assert "a_bad.csv:2" in bad["error"] and bad["deployed"] == str(folder / "base")
  # Month 1 is like month 0: no drift, nothing trained, the base stays.
  assert first["window"] == "a_month_1.csv" and not first["drifted"]
  assert "adapted" not in first and first["deployed"] == str(folder / "base")
  # Month 2 drifted (card testing's features, the accuracy drop); its adaptation
  # was promoted and is deployed.
  assert second["drifted"] and "amount (psi+ks)" in second["crossed"]
  assert second["decision"] == "promoted"
  assert state["deployed"] == second["adapted"] == str(tmp_path / "follow" / "adapted"
                                                       / "b_month_2")
  assert second["sha256"] == _sha256(incoming / "b_month_2.csv")
  assert json.load(open(tmp_path / "follow" / "follow.json")) == state
  assert "| b_month_2.csv |" in (tmp_path / "follow" / "decisions.md").read_text()
  # Run again, it finds nothing new; a new window is compared with the deployed
  # (adapted) run.
  assert follow()["windows"] == state["windows"]
  (incoming / "c_month_2_again.csv").write_bytes((folder / "month_2.csv").read_bytes())
  third = follow()["windows"][3]
  assert third["window"] == "c_month_2_again.csv" and not third["drifted"]
  assert third["deployed"] == state["deployed"]


def test_following_a_jsonl_file_cuts_windows_of_complete_lines(parent, tmp_path):
  folder, _ = parent
  rows = (folder / "month_1.csv").read_text().splitlines()
  header = rows[0].split(",")
  as_json = [json.dumps(dict(zip(header, r.split(",")))) for r in rows[1:]]
  stream = tmp_path / "stream.jsonl"
  stream.write_text("\n".join(as_json[:450]) + "\n" + as_json[450][:10])
  follow = lambda: adapt.follow(
      str(stream), str(folder / "base"), out=str(tmp_path / "follow"), once=True,
      poll=0, window_rows=300, thresholds=drift.Thresholds(), adapt_options=OPTIONS,
      overrides=[])
  state = follow()
  # 450 complete lines: one window of 300; the rest waits for more.
  assert [w["window"] for w in state["windows"]] == ["window_00000.csv"]
  window = (tmp_path / "follow" / "windows" / "window_00000.csv").read_text()
  assert window.splitlines() == rows[:301]
  assert not state["windows"][0]["drifted"]
  with open(stream, "a") as f:  # The cut line completed, and more.
    f.write(as_json[450][10:] + "\n" + "\n".join(as_json[451:600]) + "\n")
  state = follow()
  assert [w["window"] for w in state["windows"]] == ["window_00000.csv",
                                                     "window_00001.csv"]
  window = (tmp_path / "follow" / "windows" / "window_00001.csv").read_text()
  assert window.splitlines() == [rows[0], *rows[301:601]]
  assert state["jsonl_offset"] == sum(len(line) + 1 for line in as_json[:600])


def test_model_init_step_warm_starts_from_that_checkpoint(parent):
  folder, _ = parent
  base = str(folder / "base")
  assert run_util.checkpoint_steps(base) == [150, 300]
  saved = {step: run_util.saved_state(base, step)["params"] for step in (150, 300)}
  zeros = jax.tree.map(np.zeros_like, saved[150])
  for step in (150, 300):
    run_util.assert_trees_close(
        checkpoint.restore_params(base, zeros, zeros, step=step), saved[step])
  # 0, the default, takes the newest.
  run_util.assert_trees_close(checkpoint.restore_params(base, zeros, zeros),
                              saved[300])
  with pytest.raises(UserError, match="model_init_step=200: .* it has 150, 300"):
    checkpoint.restore_params(base, zeros, zeros, step=200)


@pytest.mark.parametrize("options, overrides, message", [
    ({}, ["optim.lrr=0.1"], "optim.lrr"),
    ({"replay": 1.5}, [], "--replay=1.5"),
])
def test_a_mistake_in_the_follow_command_stops_it_before_any_window(
    parent, tmp_path, options, overrides, message):
  folder, _ = parent
  (tmp_path / "incoming").mkdir()
  (tmp_path / "incoming" / "month_2.csv").write_bytes(
      (folder / "month_2.csv").read_bytes())
  with pytest.raises(UserError, match=message):
    adapt.follow(str(tmp_path / "incoming"), str(folder / "base"),
                 out=str(tmp_path / "follow"), once=True, poll=0, window_rows=0,
                 thresholds=drift.Thresholds(), adapt_options={**OPTIONS, **options},
                 overrides=overrides)
  assert not (tmp_path / "follow" / "follow.json").exists()


def test_an_adaptation_killed_after_a_checkpoint_resumes_to_the_same_result(
    adapted, tmp_path):
  """The adapted run as if killed just after its step-150 checkpoint, before any
  decision, and run again: the same parameters, bit for bit, and the same
  evaluations and decision."""
  folder, record = adapted
  resumed = tmp_path / "resumed"
  shutil.copytree(folder / "adapted", resumed)
  test_resume.truncate(resumed, 150)
  shutil.rmtree(resumed / "adapt")
  (resumed / "adapt.json").unlink()
  again = adapt.adapt(str(folder / "base"), str(folder / "month_2.csv"),
                      out=str(resumed), replay=0.5, tolerance=0.05,
                      overrides=[f"train_duration={ADAPT_STEPS}"])
  test_resume.assert_bitwise_equal(run_util.saved_state(resumed, ADAPT_STEPS),
                                   run_util.saved_state(folder / "adapted",
                                                        ADAPT_STEPS))
  assert again["evaluations"] == record["evaluations"]
  assert (again["decision"], again["reasons"]) == (record["decision"],
                                                   record["reasons"])
