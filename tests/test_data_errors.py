"""Bad data: one error line naming the file and record, before training; or skipped.

Every source's bad data goes through the real command once (exit status 2, one line
on stderr, no traceback): all those runs start at once, in one fixture, since each
mostly waits for Python and JAX to import. So do two runs that train: one whose
image folder is not verified and holds a corrupt file that training reaches, and
one whose splits.json and data_state.json are checked against the data by hand.
The rest call `open_splits` directly, as the trainer does before anything compiles.
"""
import csv
import hashlib
import json
import os
import pathlib
import re
import subprocess

import jax
from ml_collections import ConfigDict
import numpy as np
from PIL import Image
import pytest

import run_util
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError


def _write(path, text):
  path.write_text(text)
  return str(path)


def _open(num_classes=None, state_dir=None, **data):
  return splits_lib.open_splits(ConfigDict(data), num_classes=num_classes,
                                state_dir=state_dir)


class _Payload:
  """Unpickling this creates the file `path`: proof that code from a data file ran.

  NumPy stores an object array as a pickle, and unpickling calls what
  `__reduce__` names; here `open(path, "w")`, harmless but visible.
  """

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (open, (self.path, "w"))


def _save_object_npz(path, marker, rows=4):
  inputs = np.empty(rows, dtype=object)
  inputs[:] = [_Payload(marker) for _ in range(rows)]
  np.savez(path, inputs=inputs, label=np.zeros(rows, np.int64))  # Pickles inputs.


def _word_tokenizer(path, words):
  """A word-level tokenizer.json with [PAD] and [UNK]: len(words) + 2 ids."""
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(path))
  return str(path)


def _write_images(folder, classes, rng, size=(8, 8)):
  for name, count in classes.items():
    os.makedirs(folder / name, exist_ok=True)
    for i in range(count):
      Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
          folder / name / f"{i}.png")


# Small enough to build in well under a second; the runs differ in their data.
_SMALL = {"eval_every": 0, "log_every": 1, "batch_size": 4, "train_duration": 2,
          "eval_splits": (), "final_eval_splits": (), "seed": 0}
_MODELS = {
    "mlp": {"name": "mlp", "num_classes": 2, "hidden_sizes": (8,)},
    "cnn": {"name": "cnn", "num_classes": 2, "widths": (8,), "norm_groups": 4},
    "bert": {"name": "bert", "num_classes": 2, "vocab_size": 256, "hidden_size": 16,
             "num_layers": 1, "num_heads": 2, "intermediate_size": 32},
    "gpt": {"name": "gpt", "vocab_size": 256, "hidden_size": 16, "num_layers": 1,
            "num_heads": 2, "mlp_dim": 32},
}
# The unverified image folder: 16 images, one corrupt, first read by step 4 (the
# 4th batch of seed 0's shuffle; see test_..._stops_when_training_reads_it), with
# a checkpoint after every step before it.
_UNVERIFIED_BAD = "b/5.png"
_STATE_FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}


def _cases(folder: pathlib.Path) -> dict[str, tuple[str, dict]]:
  """Writes each case's data; returns {name: (config spec or file, overrides)}."""
  rng = np.random.default_rng(0)
  cases = {}

  def experiment(name, data, model, **extra):
    config = {**_SMALL, "data": {"num_threads": 1, **data},
              "model": _MODELS[model] if isinstance(model, str) else model, **extra}
    cases[name] = (run_util.write_config(folder, config, f"{name}.py"), {})

  # CSV, through the shipped clinical config pointed at a user's file.
  clinical = "configs/clinical_csv.py:csv="
  cases["csv_missing_file"] = (clinical + str(folder / "absent.csv"), {})
  _write(folder / "number.csv",
         "radius,diagnosis\n1.5,benign\n2.5,malignant\nabc,benign\n")
  cases["csv_unparsable_number"] = (clinical + str(folder / "number.csv"), {})
  _write(folder / "classes.csv", "radius,diagnosis\n" +
         "".join(f"{i}.0,{i % 3}\n" for i in range(30)))
  cases["csv_label_outside_num_classes"] = (clinical + str(folder / "classes.csv"),
                                            {})
  # JSONL: line 3 is not JSON (line 2 is blank, and blank lines still count).
  _write(folder / "d.jsonl", '{"text": "ok", "label": 0}\n\n{"text": "a", "label"\n')
  experiment("jsonl_bad_json", {"source": "jsonl",
                                "splits": {"train": str(folder / "d.jsonl")},
                                "seq_len": 8}, "bert")
  # JSONL with a tokenizer of 8 ids, for a BERT of 5.
  _write(folder / "words.jsonl", "".join(
      json.dumps({"text": "a b c", "label": i % 2}) + "\n" for i in range(8)))
  experiment("tokenizer_larger_than_vocab",
             {"source": "jsonl", "splits": {"train": str(folder / "words.jsonl")},
              "tokenizer": _word_tokenizer(folder / "tokenizer.json",
                                           ["a", "b", "c", "d", "e", "f"]),
              "seq_len": 8},
             {**_MODELS["bert"], "vocab_size": 5})
  # An image folder, verified when it opens (the default).
  _write_images(folder / "verified", {"a": 2, "b": 2}, rng)
  (folder / "verified" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
  experiment("image_corrupt_verified",
             {"source": "image_folder", "image_size": 8,
              "splits": {"train": str(folder / "verified")}}, "cnn")
  # Arrays: a label outside the model's 2 classes in row 3.
  np.savez(folder / "rows.npz", inputs=np.ones((6, 3)),
           label=np.array([0, 1, 0, 5, 1, 0]))
  experiment("arrays_label_outside_num_classes",
             {"source": "arrays", "splits": {"train": str(folder / "rows.npz")}},
             "mlp")
  # Arrays: an object array, which NumPy pickles, holding a payload.
  _save_object_npz(folder / "objects.npz", folder / "payload-ran")
  experiment("arrays_object_array",
             {"source": "arrays", "splits": {"train": str(folder / "objects.npz")}},
             "mlp")
  # Text: a Latin-1 file, with a tokenizer.json (which needs UTF-8).
  (folder / "corpus").mkdir()
  (folder / "corpus" / "good.txt").write_text("a b c d e f " * 20)
  (folder / "corpus" / "latin1.txt").write_bytes("caf\xe9 a b".encode("latin-1"))
  experiment("text_not_utf8",
             {"source": "text", "files": str(folder / "corpus" / "*.txt"),
              "tokenizer": str(folder / "tokenizer.json"), "seq_len": 4,
              "splits": {"train": "[0%:100%]"}}, "gpt")

  # Trains 3 steps, then reads the corrupt file.
  _write_images(folder / "unverified", {"a": 8, "b": 8}, rng)
  (folder / "unverified" / _UNVERIFIED_BAD).write_bytes(b"\x89PNG\r\n\x1a\n cut")
  experiment("image_corrupt_unverified",
             {"source": "image_folder", "image_size": 8, "verify": False,
              "num_threads": 2, "preprocess": ("flip_lr",),
              "splits": {"train": str(folder / "unverified")}}, "cnn",
             train_duration=6, checkpoint={"every": 1, "keep": 10})
  # Trains 2 steps on a table divided by fractions: its splits.json and
  # data_state.json are checked against the table.
  _write_table(folder / "table.csv", rng)
  experiment("csv_state",
             {"source": "csv", "path": str(folder / "table.csv"),
              "label_column": "diagnosis", "categorical_columns": ("sex",),
              "missing": "mean", "split_fractions": _STATE_FRACTIONS,
              "split_seed": 5, "stratify": True}, "mlp",
             final_eval_splits=("validation",))
  return cases


def _write_table(path, rng):
  """60 patients: 35 benign, 25 malignant; some ages and sexes missing."""
  labels = ["benign"] * 35 + ["malignant"] * 25
  rng.shuffle(labels)
  sexes = ["F", "M", "", "U"]  # "U" on one row only: in the vocabulary or not.
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["age", "sex", "bmi", "diagnosis"])
    for i, label in enumerate(labels):
      age = "NA" if i % 7 == 3 else f"{rng.normal(50, 12):.3f}"
      sex = "U" if i == 17 else sexes[i % 3]
      writer.writerow([age, sex, f"{rng.normal(26, 4):.3f}", label])


@pytest.fixture(scope="module")
def runs(tmp_path_factory
         ) -> tuple[pathlib.Path, dict[str, subprocess.CompletedProcess]]:
  """Every case of `_cases`, run at once and once per session: (folder, results)."""

  def run_all(folder):
    started = {name: run_util.start(config, folder / name, overrides, devices=1)
               for name, (config, overrides) in _cases(folder).items()}
    results = {name: run_util.finish(run, check=False)
               for name, run in started.items()}
    return {name: {"args": r.args, "returncode": r.returncode, "stdout": r.stdout,
                   "stderr": r.stderr} for name, r in results.items()}

  folder, results = run_util.once_per_session(tmp_path_factory, "data-errors",
                                              run_all)
  return folder, {name: subprocess.CompletedProcess(**r)
                  for name, r in results.items()}


def _assert_one_error_line(result, *fragments, before_training=True):
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("ctjax: error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  assert "Traceback" not in result.stdout + result.stderr
  if before_training:  # Stopped before building the model, let alone compiling.
    assert "parameters:" not in result.stdout
    assert "train step memory" not in result.stdout


# --- Through the command line -------------------------------------------------------

def test_cli_missing_file_names_it(runs):
  _assert_one_error_line(runs[1]["csv_missing_file"], "config.data.path",
                         "absent.csv", "no file matches")


def test_cli_unparsable_number_names_file_and_line(runs):
  folder, results = runs
  _assert_one_error_line(results["csv_unparsable_number"], f"{folder}/number.csv:4",
                         "'radius'", "'abc' is not a finite number",
                         "skip_bad_records")


def test_cli_label_outside_num_classes_names_file_and_line(runs):
  folder, results = runs
  # Labels are integer ids 0..2; the model has 2 classes.
  result = results["csv_label_outside_num_classes"]
  _assert_one_error_line(result, f"{folder}/classes.csv:",
                         "label 2 is outside config.model.num_classes=2",
                         "set config.model.num_classes=3")
  # The line it names is one whose label is 2 (which one depends on the split).
  line = int(re.search(r"classes\.csv:(\d+): ", result.stderr)[1])
  assert (folder / "classes.csv").read_text().splitlines()[line - 1].endswith(",2")


def test_cli_jsonl_line_that_is_not_json_names_file_and_line(runs):
  folder, results = runs
  _assert_one_error_line(results["jsonl_bad_json"], f"{folder}/d.jsonl:3: ",
                         "not valid JSON", "skip_bad_records")


def test_cli_tokenizer_larger_than_the_model_vocabulary(runs):
  # [PAD], [UNK] and six words: 8 ids for a model of 5.
  _assert_one_error_line(runs[1]["tokenizer_larger_than_vocab"],
                         "config.model.vocab_size=5",
                         "tokenised into 8 token ids",
                         "set config.model.vocab_size=8")


def test_cli_corrupt_image_found_when_the_folder_opens(runs):
  folder, results = runs
  _assert_one_error_line(results["image_corrupt_verified"],
                         f"{folder}/verified/b/broken.jpg: cannot decode the image",
                         "replace or delete the file", "skip_bad_records")


def test_cli_arrays_label_names_file_and_row(runs):
  folder, results = runs
  _assert_one_error_line(results["arrays_label_outside_num_classes"],
                         f"{folder}/rows.npz, row 3: ",
                         "label 5 is outside config.model.num_classes=2")


def test_cli_text_file_not_utf8_names_the_file(runs):
  folder, results = runs
  _assert_one_error_line(results["text_not_utf8"],
                         f"{folder}/corpus/latin1.txt: not UTF-8 text",
                         "tokenizer='bytes'", "skip_bad_records")


def test_cli_object_array_is_refused_without_unpickling_it(runs):
  folder, results = runs
  _assert_one_error_line(results["arrays_object_array"],
                         f"{folder}/objects.npz (array 'inputs'): holds Python "
                         "objects", "save numeric arrays")
  # The payload's constructor never ran: the file was read as data only.
  # (test_object_arrays_are_refused_... shows the payload does run if unpickled.)
  assert not (folder / "payload-ran").exists()


def test_cli_corrupt_image_stops_training_when_read_and_keeps_checkpoints(runs):
  folder, results = runs
  workdir = folder / "image_corrupt_unverified"
  bad = folder / "unverified" / _UNVERIFIED_BAD
  # The file is first in step 4's batch: steps 1-3 train, and are checkpointed.
  paths = sorted(str(p) for p in (folder / "unverified").glob("*/*.png"))
  first_step = next(s + 1 for s in range(10) if paths.index(str(bad)) in
                    pipeline.train_indices(s, num_examples=16, global_batch_size=4,
                                           seed=0))
  assert first_step == 4
  _assert_one_error_line(results["image_corrupt_unverified"],
                         f"{bad}: cannot decode the image",
                         "config.data.verify=True finds", before_training=False)
  assert [r["step"] for r in run_util.metrics(workdir)] == [1, 2, 3]
  # Every checkpoint is whole: finalised (no Orbax temporary folder left) and
  # readable, with the step it is named after and finite parameters.
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == \
      ["1", "2", "3"]
  for step in (1, 2, 3):
    state = run_util.saved_state(workdir, step)
    assert int(state["step"]) == step
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  # What it recorded about the data: one split of 16 files, classes a and b.
  recorded = json.loads((workdir / "splits.json").read_text())
  assert recorded["sizes"] == {"train": 16} and recorded["index_sha256"] == {}
  assert json.loads((workdir / splits_lib.STATE_FILE).read_text()) == {
      "source": "image_folder", "state": {"label_names": ["a", "b"]}}


def test_cli_splits_and_data_state_describe_the_training_split(runs):
  folder, results = runs
  result = results["csv_state"]
  assert result.returncode == 0, result.stderr
  workdir = folder / "csv_state"
  with open(folder / "table.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  labels = np.array([r["diagnosis"] for r in rows])
  recorded = json.loads((workdir / "splits.json").read_text())
  assert {k: recorded[k] for k in ("source", "split_fractions", "split_seed",
                                   "stratify")} == {
      "source": "csv", "split_fractions": _STATE_FRACTIONS, "split_seed": 5,
      "stratify": True}
  # Sizes by hand: each class divided at round(cumulative fraction x its count):
  # benign 35 -> 21, 7, 7; malignant 25 -> 15, 5, 5.
  assert recorded["sizes"] == {"train": 36, "validation": 12, "test": 12}
  # The digests are SHA-256 of each split's int64 row indices, which the recorded
  # seed and fractions give again. In the recorded order: the config holds the
  # fractions by name, sorted (a ConfigDict's order), and the parts are cut in it.
  assert list(recorded["split_fractions"]) == ["test", "train", "validation"]
  indices = splits_lib.fraction_indices(len(rows), recorded["split_fractions"],
                                        seed=5, labels=labels)
  for name, idx in indices.items():
    assert recorded["index_sha256"][name] == hashlib.sha256(
        idx.astype(np.int64).tobytes()).hexdigest(), name
    assert (labels[idx] == "malignant").sum() == {"train": 15}.get(name, 5)
  # The fitted state is the training rows' own, computed here by scikit-learn
  # (which, like ctjax, leaves missing values out of the mean and the standard
  # deviation, and divides by n). Equal statistics also show the indices above
  # are the rows the run trained on.
  from sklearn.preprocessing import StandardScaler
  train = [rows[i] for i in indices["train"]]
  numbers = np.array([[float(r[c]) if r[c] != "NA" else np.nan
                       for c in ("age", "bmi")] for r in train])
  scaler = StandardScaler().fit(numbers)
  state = json.loads((workdir / splits_lib.STATE_FILE).read_text())
  assert state["source"] == "csv"
  state = state["state"]
  assert state["numeric"]["columns"] == ["age", "bmi"]
  # The same float64 sums, by NumPy on both sides (XLA's vector width plays no
  # part), in perhaps another order: 36 terms differ by at most 2 x 35 x 2**-53
  # relative (Higham's worst case), 8e-15, far inside 1e-12.
  np.testing.assert_allclose(state["numeric"]["mean"], scaler.mean_, rtol=1e-12)
  np.testing.assert_allclose(state["numeric"]["std"], scaler.scale_, rtol=1e-12)
  assert state["vocabularies"] == {"sex": sorted({r["sex"] for r in train} - {""})}
  assert state["label_names"] == ["benign", "malignant"]


# --- CSV ---------------------------------------------------------------------------

def test_csv_schema_mismatch_names_the_missing_column(tmp_path):
  path = _write(tmp_path / "t.csv", "age,label\n1,0\n")
  with pytest.raises(UserError, match=rf"{path}:1: no column 'sex' "
                     r"\(config.data.categorical_columns\); the header has age, "
                     "label"):
    _open(source="csv", splits={"train": path}, categorical_columns=("sex",))


def test_csv_row_with_wrong_number_of_fields(tmp_path):
  path = _write(tmp_path / "t.csv", "a,b,label\n1,2,0\n1,2,3,0\n")
  with pytest.raises(UserError, match=rf"{path}:3: 4 fields, but the header has 3"):
    _open(source="csv", splits={"train": path})


def test_csv_missing_values_error_by_default_and_missing_label_always(tmp_path):
  path = _write(tmp_path / "t.csv", "a,label\n1,0\n,1\n")
  with pytest.raises(UserError, match=rf"{path}:3: column 'a' is missing; fill it "
                     "in, or set config.data.missing='mean'"):
    _open(source="csv", splits={"train": path})
  assert len(_open(source="csv", splits={"train": path}, missing="mean")["train"]) == 2
  path = _write(tmp_path / "u.csv", "a,label\n1,0\n2,NA\n")
  with pytest.raises(UserError, match=rf"{path}:3: the label \(column 'label'\) is "
                     "missing"):
    _open(source="csv", splits={"train": path}, missing="mean")


def test_csv_label_unseen_in_training_names_file_and_line(tmp_path):
  train = _write(tmp_path / "train.csv", "a,label\n1,cat\n2,dog\n")
  val = _write(tmp_path / "val.csv", "a,label\n1,cat\n2,cow\n")
  with pytest.raises(UserError, match=rf"{val}:3: label is not one of the 2 classes "
                     r"of the training split \(cat, dog\)"):
    _open(source="csv", splits={"train": train, "validation": val})


def test_empty_split_is_an_error_naming_it(tmp_path):
  train = _write(tmp_path / "train.csv", "a,label\n1,0\n")
  empty = _write(tmp_path / "val.csv", "a,label\n")
  with pytest.raises(UserError, match=r"config.data.splits.validation=.*val.csv'"
                     ": split 'validation' has no examples"):
    _open(source="csv", splits={"train": train, "validation": empty})


def test_skip_bad_records_drops_them_and_logs_count_and_locations(tmp_path, capsys):
  rows = ["1,0", "x,1", "2,0", "3,1,9", "4,5", "5,1"]
  path = _write(tmp_path / "t.csv", "a,label\n" + "\n".join(rows) + "\n")
  splits = _open(num_classes=2, source="csv", splits={"train": path},
                 standardize=False, skip_bad_records=True)
  got = pipeline.BatchLoader(splits["train"], num_threads=1).load(
      np.arange(len(splits["train"])), None)
  np.testing.assert_array_equal(got["inputs"][:, 0], [1, 2, 5])
  out = capsys.readouterr().out
  assert f"skipped 2 bad record(s) in {path}: {path}:3, {path}:5" in out
  assert f"skipped 1 bad record(s) in split 'train': {path}:6" in out  # label 5


# --- JSONL, images, arrays, text, saved state -----------------------------------

@pytest.mark.parametrize("line, problem", [
    ('{"text": "a", "label": 1', "not valid JSON"),
    ('["a", 1]', "not a JSON object"),
    ('{"body": "a", "label": 1}', "no text under 'text'"),
    ('{"text": "a"}', "no label under 'label'"),
])
def test_jsonl_bad_record_names_file_and_line(tmp_path, line, problem):
  path = _write(tmp_path / "d.jsonl", '{"text": "ok", "label": 0}\n\n' + line + "\n")
  with pytest.raises(UserError, match=rf"{path}:3: {problem}"):
    _open(source="jsonl", splits={"train": path})
  kept = _open(source="jsonl", splits={"train": path}, skip_bad_records=True)
  assert len(kept["train"]) == 1


def _image_folder(tmp_path):
  os.makedirs(tmp_path / "imgs" / "a")
  Image.new("RGB", (4, 4)).save(tmp_path / "imgs" / "a" / "good.png")
  bad = tmp_path / "imgs" / "a" / "bad.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  return str(tmp_path / "imgs"), str(bad)


def test_corrupt_image_found_when_opening_or_when_read(tmp_path):
  folder, bad = _image_folder(tmp_path)
  data = dict(source="image_folder", splits={"train": folder}, image_size=4)
  with pytest.raises(UserError, match=rf"{bad}: cannot decode the image"):
    _open(**data)
  assert len(_open(**data, skip_bad_records=True)["train"]) == 1
  unverified = _open(**data, verify=False)["train"]  # bad.png sorts first
  with pytest.raises(UserError, match=rf"{bad}: cannot decode the image .*"
                     "config.data.verify=True finds"):
    pipeline.BatchLoader(unverified, num_threads=2).load(np.array([1, 0]), None)


def test_arrays_schema_errors_name_the_file(tmp_path):
  np.savez(tmp_path / "rows.npz", inputs=np.ones((3, 2)), label=np.zeros(2, int))
  np.savez(tmp_path / "float.npz", inputs=np.ones((2, 2)), label=np.zeros(2))
  cases = {"rows.npz": "arrays have different numbers of rows",
           "float.npz": "the label array .* has dtype float64; save integer class ids"}
  for name, problem in cases.items():
    with pytest.raises(UserError, match=rf"{tmp_path / name}: {problem}"):
      _open(source="arrays", splits={"train": str(tmp_path / name)})
  with pytest.raises(UserError, match=r"no array 'x' \(config.data.keys.inputs\); "
                     "it has inputs, label"):
    _open(source="arrays", splits={"train": str(tmp_path / "rows.npz")},
          keys={"inputs": "x", "label": "label"})
  os.makedirs(tmp_path / "folder")
  np.save(tmp_path / "folder" / "inputs.npy", np.ones((2, 2)))
  with pytest.raises(UserError, match=r"label.npy: no such file .* the folder has "
                     "inputs.npy"):
    _open(source="arrays", splits={"train": str(tmp_path / "folder")})


def test_object_arrays_are_refused_and_never_unpickled(tmp_path):
  marker = tmp_path / "payload-ran"
  _save_object_npz(tmp_path / "objects.npz", marker)
  os.makedirs(tmp_path / "folder")
  np.save(tmp_path / "folder" / "inputs.npy",  # np.save pickles object arrays.
          np.array([_Payload(marker), _Payload(marker)], dtype=object))
  np.save(tmp_path / "folder" / "label.npy", np.zeros(2, np.int64))
  with open(tmp_path / "single.npz", "wb") as f:
    np.save(f, np.ones(3))  # One array, saved under a .npz name.
  cases = {"objects.npz": r"objects.npz \(array 'inputs'\): holds Python objects",
           "folder": r"folder/inputs.npy: holds Python objects",
           "single.npz": r"single.npz: holds one array, not a .npz archive"}
  for name, problem in cases.items():
    with pytest.raises(UserError, match=problem):
      _open(source="arrays", splits={"train": str(tmp_path / name)})
  assert not marker.exists()
  # The payload is live: NumPy told to unpickle runs it. So the absence above
  # means ctjax never unpickled the files.
  with np.load(tmp_path / "objects.npz", allow_pickle=True) as npz:
    npz["inputs"]  # pylint: disable=pointless-statement
  assert marker.exists()


def test_file_that_is_not_an_npz_archive_is_an_error_naming_it(tmp_path):
  (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
  with pytest.raises(UserError, match=r"broken.npz: not a readable .npz file"):
    _open(source="arrays", splits={"train": str(tmp_path / "broken.npz")})


def test_text_not_utf8_with_a_tokenizer_json_is_a_bad_record(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  tokenizer = tmp_path / "tokenizer.json"
  words = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
  words.pre_tokenizer = pre_tokenizers.Whitespace()
  words.save(str(tokenizer))
  (tmp_path / "good.txt").write_text("a a a a a a")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
  data = dict(source="text", files=str(tmp_path / "*.txt"), seq_len=2,
              tokenizer=str(tokenizer), splits={"train": "[0%:100%]"})
  with pytest.raises(UserError, match=r"latin1.txt: not UTF-8 text"):
    _open(**data)
  assert len(_open(**data, skip_bad_records=True)["train"]) == 2
  with pytest.raises(UserError, match="config.data.tokenizer='missing.json': no "
                     "such file"):
    _open(**{**data, "tokenizer": "missing.json"})


def test_saved_state_of_another_source_is_refused(tmp_path):
  path = _write(tmp_path / "t.csv", "a,label\n1,x\n")
  (tmp_path / splits_lib.STATE_FILE).write_text(json.dumps(
      {"source": "jsonl", "state": {"label_names": ["x"]}}))
  with pytest.raises(UserError, match=r"data_state.json: was fitted for source "
                     "'jsonl'"):
    _open(source="csv", splits={"train": path}, state_dir=str(tmp_path))
