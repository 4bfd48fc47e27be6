"""Bad data: one error line naming the file and record, before training; or skipped.

A few cases go through the real command (exit status 2, one line on stderr); the
rest call `open_splits` directly, as the trainer does before anything compiles.
"""
import json
import os
import subprocess
import sys

from ml_collections import ConfigDict
import numpy as np
from PIL import Image
import pytest

from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
  path.write_text(text)
  return str(path)


def _open(num_classes=None, state_dir=None, **data):
  return splits_lib.open_splits(ConfigDict(data), num_classes=num_classes,
                                state_dir=state_dir)


def _train(tmp_path, csv_path, *overrides):
  """`ctjax train` on configs/clinical_csv.py reading `csv_path`."""
  return subprocess.run(
      [sys.executable, "-m", "ctjax", "train",
       "--config", f"configs/clinical_csv.py:csv={csv_path}",
       "--workdir", str(tmp_path / "run"), *overrides],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def _assert_one_error_line(result, *fragments):
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("ctjax: error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0]
  assert "parameters:" not in result.stdout  # Stopped before building the model.


# --- Through the command line -------------------------------------------------------

def test_cli_missing_file_names_it(tmp_path):
  result = _train(tmp_path, tmp_path / "absent.csv")
  _assert_one_error_line(result, "config.data.path", "absent.csv", "no file matches")


def test_cli_unparsable_number_names_file_and_line(tmp_path):
  path = _write(tmp_path / "t.csv",
                "radius,diagnosis\n1.5,benign\n2.5,malignant\nabc,benign\n")
  _assert_one_error_line(_train(tmp_path, path), f"{path}:4", "'radius'",
                         "'abc' is not a finite number", "skip_bad_records")


def test_cli_label_outside_num_classes_names_file_and_line(tmp_path):
  rows = "".join(f"{i}.0,{i % 3}\n" for i in range(30))
  path = _write(tmp_path / "t.csv", "radius,diagnosis\n" + rows)
  # Labels are integer ids 0..2; the model has 2 classes.
  _assert_one_error_line(_train(tmp_path, path), f"{path}:",
                         "label 2 is outside config.model.num_classes=2",
                         "set config.model.num_classes=3")


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
