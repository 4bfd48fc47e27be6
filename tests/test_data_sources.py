"""The file sources, splits and preprocessing ops, on small files written here.

Each source is checked against an independent reading of the same data: NumPy
statistics of the training rows, the bytes written, the `tokenizers` package's own
encoding, the pixels saved with PIL.
"""
import csv
import io
import json
import os

from ml_collections import ConfigDict
import numpy as np
from PIL import Image
import pytest

from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data import splits as splits_lib
from ctjax.errors import UserError


def _write_csv(path, header, rows, delimiter=","):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f, delimiter=delimiter)
    writer.writerow(header)
    writer.writerows(rows)
  return str(path)


def _open(tmp_path=None, **data):
  state_dir = str(tmp_path) if tmp_path is not None else None
  return splits_lib.open_splits(ConfigDict(data), state_dir=state_dir)


def _all(source):
  return pipeline.BatchLoader(source, num_threads=1).load(
      np.arange(len(source)), None)


def _tokenizer_json(path, texts):
  """A small word-level tokenizer.json with BERT-style special tokens."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
  tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(
      special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
  tokenizer.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tokenizer.save(str(path))
  return str(path), Tokenizer.from_file(str(path))


# --- CSV ------------------------------------------------------------------------

TRAIN_ROWS = [["30", "M", "22.5", "benign"], ["40", "F", "NA", "malignant"],
              ["50", "F", "30", "benign"], ["60", "", "28", "malignant"]]
HEADER = ["age", "sex", "bmi", "diagnosis"]


def test_csv_features_use_training_statistics_and_vocabularies(tmp_path):
  train = _write_csv(tmp_path / "train.csv", HEADER, TRAIN_ROWS)
  # Validation has a category the training split never had ("X"): unknown id 0.
  val = _write_csv(tmp_path / "val.csv", ["diagnosis", "bmi", "sex", "age"],
                   [["malignant", "26", "X", "70"], ["benign", "20", "M", "20"]])
  splits = _open(tmp_path, source="csv", splits={"train": train, "validation": val},
                 label_column="diagnosis", categorical_columns=("sex",),
                 missing="mean")
  age = np.array([30, 40, 50, 60.])
  bmi = np.array([22.5, 30, 28])  # The missing value does not count.
  got = _all(splits["validation"])
  # Features: age, bmi standardised by training rows; sex one-hot [unk, F, M].
  np.testing.assert_allclose(got["inputs"], [
      [(70 - age.mean()) / age.std(), (26 - bmi.mean()) / bmi.std(), 1, 0, 0],
      [(20 - age.mean()) / age.std(), (20 - bmi.mean()) / bmi.std(), 0, 0, 1]],
                             rtol=1e-6)
  np.testing.assert_array_equal(got["label"], [1, 0])  # benign=0, malignant=1
  train_inputs = _all(splits["train"])["inputs"]
  assert train_inputs[1, 1] == 0  # Missing bmi: the training mean, standardised.
  np.testing.assert_array_equal(train_inputs[3, 2:], [1, 0, 0])  # Missing sex.
  saved = json.load(open(tmp_path / splits_lib.STATE_FILE))["state"]
  assert saved["label_names"] == ["benign", "malignant"]
  assert saved["vocabularies"] == {"sex": ["F", "M"]}


def test_csv_categorical_ids_zero_fill_and_integer_labels(tmp_path):
  path = _write_csv(tmp_path / "t.tsv", ["x", "colour", "y"],
                    [["1", "red", "2"], ["", "blue", "0"], ["3", "red", "1"]],
                    delimiter="\t")  # Tab-separated, found by the extension.
  splits = _open(source="csv", splits={"train": path}, label_column="y",
                 categorical_columns=("colour",), categorical_encoding="ids",
                 missing="zero", standardize=False)
  got = _all(splits["train"])
  np.testing.assert_array_equal(got["inputs"], [[1, 2], [0, 1], [3, 2]])
  np.testing.assert_array_equal(got["label"], [2, 0, 1])  # Integers are ids.


def test_csv_fractions_fit_statistics_on_the_training_part_only(tmp_path):
  rng = np.random.default_rng(0)
  values = rng.normal(5, 3, size=200)
  labels = (values > 5).astype(int)
  path = _write_csv(tmp_path / "all.csv", ["v", "label"],
                    [[str(float(v)), str(l)] for v, l in zip(values, labels)])
  splits = _open(source="csv", path=path, stratify=True, split_seed=3,
                 split_fractions={"train": 0.5, "validation": 0.25, "test": 0.25})
  train_values = values[splits["train"].indices]
  expected = (values[splits["test"].indices] - train_values.mean()) / \
      train_values.std()
  np.testing.assert_allclose(_all(splits["test"])["inputs"][:, 0], expected,
                             rtol=1e-5)
  # Stratified: each part keeps the class balance of the whole.
  for part in splits.values():
    assert abs(labels[part.indices].mean() - labels.mean()) < 0.03
  all_indices = np.concatenate([s.indices for s in splits.values()])
  assert sorted(all_indices) == list(range(200))


def test_csv_resumed_run_reuses_the_saved_vocabulary(tmp_path):
  data = {"source": "csv", "label_column": "diagnosis",
          "categorical_columns": ("sex",), "missing": "mean"}
  train = _write_csv(tmp_path / "train.csv", HEADER, TRAIN_ROWS)
  first = _open(tmp_path, splits={"train": train}, **data)
  # The file changes under the run: a new category, other statistics.
  _write_csv(tmp_path / "train.csv", HEADER,
             TRAIN_ROWS + [["90", "Z", "50", "benign"]])
  resumed = _open(tmp_path, splits={"train": train}, **data)
  np.testing.assert_array_equal(_all(resumed["train"])["inputs"][:4],
                                _all(first["train"])["inputs"])
  np.testing.assert_array_equal(_all(resumed["train"])["inputs"][4, 2:], [1, 0, 0])


def test_csv_split_may_be_a_glob_of_files(tmp_path):
  for i in range(3):
    _write_csv(tmp_path / f"part-{i}.csv", ["a", "label"], [[str(i), "0"]] * (i + 1))
  splits = _open(source="csv", splits={"train": str(tmp_path / "part-*.csv")})
  assert len(splits["train"]) == 6
  assert splits["train"].location(5) == f"{tmp_path / 'part-2.csv'}:4"


# --- JSONL and text ----------------------------------------------------------------

def _write_jsonl(path, records):
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return str(path)


def test_jsonl_bytes_pads_short_texts_with_the_pad_id_and_truncates_long_ones(
    tmp_path):
  texts = ["hi", "héllo", "a long text"]  # 2 bytes, 6 (é is 2), 11
  path = _write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": l} for t, l in
                                             zip(texts, ["pos", "neg", "pos"])])
  splits = _open(source="jsonl", splits={"train": path}, seq_len=6)
  assert splits["train"].vocab_size == 256
  got = pipeline.train_batch(pipeline.BatchLoader(splits["train"], num_threads=1),
                             0, global_batch_size=3, seed=0)
  order = pipeline.train_indices(0, num_examples=3, global_batch_size=3, seed=0)
  want = np.array([[104, 105, 0, 0, 0, 0],  # "hi", then the byte pad id 0
                   list("héllo".encode("utf-8")),  # exactly 6 bytes
                   list(b"a long")])  # cut to 6 bytes
  np.testing.assert_array_equal(got["inputs"], want[order])
  assert got["inputs"].dtype == np.int32
  np.testing.assert_array_equal(got["label"], np.array([1, 0, 1])[order])
  # Every example is real: padding inside a sequence is the model's to mask (by
  # its pad_token_id), not the loss's.
  np.testing.assert_array_equal(got["mask"], [1, 1, 1])


def test_bert_attends_to_no_byte_padding(tmp_path):
  """A short text's encoding does not depend on how far it is padded.

  The source pads with id 0 and BERT (pad_token_id=0) hides id 0 from attention,
  so padding to 6 or to 16 must give the same [CLS] features; were the pads seen,
  the extra keys would change every attention average.
  """
  import flax.linen as nn
  import jax
  from ctjax.models import bert
  path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "hi", "label": 0},
                                             {"text": "abc", "label": 1}])
  short, long = (_all(_open(source="jsonl", splits={"train": path},
                            seq_len=n)["train"])["inputs"] for n in (6, 16))
  np.testing.assert_array_equal(long[:, :6], short)
  np.testing.assert_array_equal(long[:, 6:], 0)
  model = bert.Model(num_classes=3, vocab_size=256, hidden_size=16, num_layers=2,
                     num_heads=2, intermediate_size=32, dropout=0.0)
  # Random parameters of the model's shapes, drawn here: compiling the model's own
  # initialiser takes longer than the rest of this file. Weights of 0.3 make
  # attention far from uniform, so that any pad it saw would show.
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda x: rng.normal(0, 0.3, x.shape).astype(x.dtype),
      nn.meta.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), short)))

  @jax.jit
  def pooler_input(tokens):  # The pooler's projection of [CLS].
    _, state = model.apply(params, tokens, capture_intermediates=lambda m, _: (
        m.name == "pooler"), mutable=["intermediates"])
    return state["intermediates"]["pooler"]["__call__"][0]

  def cls_features(tokens):
    return np.asarray(pooler_input(tokens))

  features = cls_features(short)  # Of size ~1 with these weights.
  # Visible tokens in place of the padding change them (by ~0.2), thousands of
  # times the tolerance below.
  assert np.abs(cls_features(np.where(short == 0, 7, short)) - features).max() > 0.05
  # Masked keys add exactly 0 to each softmax; what may differ is only the order
  # of the float32 reductions (6 vs 16 terms). Per token about 200 reorderable
  # terms through two layers of attention, MLP and LayerNorm over 16 features:
  # tests/tolerances.sum_rtol(200) = 1.0e-5 of values ~1, the bound below, for any
  # CPU's vector width (measured 2e-7).
  np.testing.assert_allclose(cls_features(long), features, rtol=0, atol=1e-5)


def test_jsonl_classification_with_tokenizer_json_matches_tokenizers(tmp_path):
  texts = ["the cat sat", "the dog sat on the mat", "a cat"]
  tok_path, reference = _tokenizer_json(tmp_path / "tokenizer.json", texts)
  path = _write_jsonl(tmp_path / "d.jsonl", [{"text": t, "y": i % 2}
                                             for i, t in enumerate(texts)])
  splits = _open(source="jsonl", splits={"train": path}, label_key="y",
                 tokenizer=tok_path, seq_len=5)
  got = _all(splits["train"])
  reference.enable_truncation(5)
  for row, text in zip(got["inputs"], texts):
    ids = reference.encode(text).ids  # [CLS] ... [SEP], truncated as HF does.
    np.testing.assert_array_equal(row, ids + [0] * (5 - len(ids)))
  assert got["inputs"][1, -1] == 3  # The truncated text still ends in [SEP].
  np.testing.assert_array_equal(got["label"], [0, 1, 0])


def test_jsonl_tokenizer_json_pads_with_its_own_pad_id(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"[UNK]": 0, "the": 1, "cat": 2, "[PAD]": 3}
  tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.save(str(tmp_path / "tokenizer.json"))
  path = _write_jsonl(tmp_path / "d.jsonl", [{"text": "the cat", "label": 0}])
  splits = _open(source="jsonl", splits={"train": path}, seq_len=5,
                 tokenizer=str(tmp_path / "tokenizer.json"))
  np.testing.assert_array_equal(_all(splits["train"])["inputs"], [[1, 2, 3, 3, 3]])


def test_jsonl_language_modelling_packs_documents_with_boundary_mask(tmp_path):
  docs = ["abcdef", "ghij", "klmnopqrstu"]
  path = _write_jsonl(tmp_path / "d.jsonl", [{"text": d} for d in docs])
  splits = _open(source="jsonl", splits={"train": path}, label_key="", seq_len=4)
  got = _all(splits["train"])
  stream = np.frombuffer("".join(docs).encode(), np.uint8)
  assert len(splits["train"]) == len(stream) // 5
  for i in range(len(splits["train"])):
    window = stream[i * 5:(i + 1) * 5]
    np.testing.assert_array_equal(got["inputs"][i], window[:-1])
    np.testing.assert_array_equal(got["label"][i], window[1:])
  # Targets "g" (stream position 6) and "k" (10) start documents: masked.
  starts = {6, 10}
  expected_mask = [[float(i * 5 + t + 1 not in starts) for t in range(4)]
                   for i in range(len(splits["train"]))]
  np.testing.assert_array_equal(got["mask"], expected_mask)


def test_text_with_tokenizer_json_packs_its_ids(tmp_path):
  texts = ["the cat sat", "the dog sat on the mat"]
  tok_path, reference = _tokenizer_json(tmp_path / "tokenizer.json", texts)
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i, t in enumerate(texts):
    (corpus / f"{i}.txt").write_text(t)
  splits = _open(source="text", files=str(corpus / "*.txt"), tokenizer=tok_path,
                 seq_len=3, splits={"train": "[0%:100%]"})
  stream = np.concatenate([reference.encode(t, add_special_tokens=False).ids
                           for t in sorted(texts)])  # Files are read sorted.
  got = _all(splits["train"])
  windows = stream[:len(stream) // 4 * 4].reshape(-1, 4)
  np.testing.assert_array_equal(got["inputs"], windows[:, :3])
  np.testing.assert_array_equal(got["label"], windows[:, 1:])
  assert got["mask"][0].tolist() == [1, 1, 0]  # Target 4 starts document 2.
  assert splits["train"].vocab_size == reference.get_vocab_size()


def test_tokenizer_larger_than_model_vocabulary_is_an_error(tmp_path):
  tok_path, _ = _tokenizer_json(tmp_path / "tokenizer.json", ["a b c d e f"])
  (tmp_path / "doc.txt").write_text("a b c d e f " * 10)
  with pytest.raises(UserError, match=r"config.model.vocab_size=5: .* set "
                     r"config.model.vocab_size=10"):
    splits_lib.open_splits(ConfigDict(dict(
        source="text", files=str(tmp_path / "*.txt"), tokenizer=tok_path, seq_len=4,
        splits={"train": "[0%:100%]"})), vocab_size=5)


# --- Image folders --------------------------------------------------------------

def _write_images(root, classes, size=(6, 4), fmt="PNG", seed=0):
  """Writes random images per class; returns {path: pixels}."""
  rng = np.random.default_rng(seed)
  written = {}
  for name, count in classes.items():
    os.makedirs(root / name, exist_ok=True)
    for i in range(count):
      pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
      path = root / name / f"{i}.{fmt.lower()}"
      Image.fromarray(pixels).save(path, format=fmt)
      written[str(path)] = pixels
  (root / "README.txt").write_text("not an image, not a class")
  return written


def test_image_folder_decodes_pngs_and_numbers_classes_by_sorted_name(tmp_path):
  written = _write_images(tmp_path / "train", {"zebra": 2, "ant": 1, "moth": 1})
  _write_images(tmp_path / "val", {"moth": 1}, seed=1)
  splits = _open(tmp_path, source="image_folder", image_size=(6, 4),
                 splits={"train": str(tmp_path / "train"),
                         "validation": str(tmp_path / "val")})
  train = _all(splits["train"])
  assert train["inputs"].dtype == np.float32 and train["inputs"].shape == (4, 6, 4, 3)
  np.testing.assert_array_equal(train["label"], [0, 1, 2, 2])  # ant, moth, zebra
  for i, path in enumerate(sorted(written)):  # ant/0, moth/0, zebra/0, zebra/1
    pixels = written[path]
    np.testing.assert_allclose(train["inputs"][i], pixels / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(_all(splits["validation"])["label"], [1])


def test_image_folder_greyscale_and_rgb_are_pillows_convert_and_resize(tmp_path):
  written = _write_images(tmp_path / "all", {"a": 4, "b": 4}, size=(30, 40))
  options = dict(path=str(tmp_path / "all"), stratify=True, image_size=(8, 10),
                 split_fractions={"train": 0.5, "validation": 0.5})
  grey = _open(source="image_folder", channels=1, dtype="uint8", **options)
  rgb = _open(source="image_folder", channels=3, **options)
  paths = sorted(written)  # a/0..3, b/0..3: the source's order
  for split in ("train", "validation"):
    indices = grey[split].indices
    np.testing.assert_array_equal(indices, rgb[split].indices)
    got_grey, got_rgb = _all(grey[split]), _all(rgb[split])
    assert got_grey["inputs"].shape == (4, 8, 10, 1)
    assert got_grey["inputs"].dtype == np.uint8
    assert sorted(got_grey["label"]) == [0, 0, 1, 1]
    for row, i in enumerate(indices):
      image = Image.open(paths[i])
      # PNG: Pillow's own conversion (ITU-R 601 luma) and bilinear resize, so
      # equal bit for bit; float32 images are those bytes / 255.
      want = np.asarray(image.convert("L").resize((10, 8), Image.BILINEAR))
      np.testing.assert_array_equal(got_grey["inputs"][row, ..., 0], want)
      want = np.asarray(image.convert("RGB").resize((10, 8), Image.BILINEAR))
      np.testing.assert_array_equal(got_rgb["inputs"][row],
                                    want.astype(np.float32) / np.float32(255))


def test_image_folder_shrinks_jpegs_by_averaging_pillows_full_size_decode(tmp_path):
  """A JPEG shrunk by a whole factor is decoded at that scale: an area average.

  PIL's draft mode lets the JPEG decoder scale 4x4 blocks down in the DCT domain
  (and take the luma channel straight out for greyscale), several times cheaper
  than decoding every pixel and filtering; so a JPEG shrunk 4x is the 4x4 area
  average of its full-size decode rather than Pillow's bilinear resize (which
  differs from that average by a few levels on this image). Both averages come
  from the same coefficients: they differ by the rounding of the scaled inverse
  DCT and of the average, under 1 level for greyscale; for RGB the colour
  conversion is rounded at either scale too, within 2. (Chroma is stored at full
  resolution, subsampling=0: halved chroma would be upsampled differently at the
  two scales.) A decoder that mixed up channels, size or orientation would be off
  by tens.
  """
  y, x = np.mgrid[0:32, 0:40] / np.array([32.0, 40.0])[:, None, None]
  pixels = np.stack([255 * x, 255 * y, 127 + 100 * np.sin(3 * x + 2 * y)], -1)
  os.makedirs(tmp_path / "jpegs" / "c")
  path = tmp_path / "jpegs" / "c" / "smooth.jpg"
  Image.fromarray(pixels.round().astype(np.uint8)).save(path, quality=90,
                                                        subsampling=0)
  for channels, mode, levels in ((1, "L", 1), (3, "RGB", 2)):
    splits = _open(source="image_folder", splits={"train": str(tmp_path / "jpegs")},
                   image_size=(8, 10), channels=channels, dtype="uint8")
    got = _all(splits["train"])["inputs"][0].astype(float)
    full = np.asarray(Image.open(path).convert(mode), float).reshape(32, 40, -1)
    area_average = full.reshape(8, 4, 10, 4, channels).mean(axis=(1, 3))
    assert np.abs(got - area_average).max() <= levels, mode


# --- Arrays -------------------------------------------------------------------------

def test_arrays_from_npz_with_custom_keys_and_npy_folder_memory_mapped(tmp_path):
  x = np.arange(24, dtype=np.float64).reshape(6, 4)
  y = np.array([0, 1, 2, 0, 1, 2])  # int64, as NumPy saves by default
  np.savez(tmp_path / "d.npz", features=x, target=y)
  os.makedirs(tmp_path / "folder")
  np.save(tmp_path / "folder" / "inputs.npy", x)
  np.save(tmp_path / "folder" / "label.npy", y)
  from_npz = _open(source="arrays", keys={"inputs": "features", "label": "target"},
                   splits={"train": str(tmp_path / "d.npz")})
  from_npy = _open(source="arrays", splits={"train": str(tmp_path / "folder")})
  assert isinstance(from_npy["train"].arrays["inputs"], np.memmap)
  for splits in (from_npz, from_npy):
    got = _all(splits["train"])
    assert got["inputs"].dtype == np.float32 and got["label"].dtype == np.int32
    np.testing.assert_array_equal(got["inputs"], x)
    np.testing.assert_array_equal(got["label"], y)


# --- Every file source: a path per split, or fractions of one path ----------------

def _file_source_configs(tmp_path):
  """For each file source: its options, a path holding 8 examples, another."""
  rows = [[str(i), str(i % 2)] for i in range(8)]
  csv_a = _write_csv(tmp_path / "a.csv", ["x", "label"], rows)
  csv_b = _write_csv(tmp_path / "b.csv", ["x", "label"], rows[:3])
  lines = [{"text": f"doc {i}", "label": i % 2} for i in range(8)]
  jsonl_a = _write_jsonl(tmp_path / "a.jsonl", lines)
  jsonl_b = _write_jsonl(tmp_path / "b.jsonl", lines[:3])
  _write_images(tmp_path / "img_a", {"c0": 4, "c1": 4})
  _write_images(tmp_path / "img_b", {"c0": 2, "c1": 1})
  for name, n in (("a", 8), ("b", 3)):
    np.savez(tmp_path / f"{name}.npz", inputs=np.ones((n, 2)), label=np.arange(n) % 2)
  return {
      "csv": ({}, csv_a, csv_b),
      "jsonl": ({"seq_len": 8}, jsonl_a, jsonl_b),
      "image_folder": ({"image_size": 4}, str(tmp_path / "img_a"),
                       str(tmp_path / "img_b")),
      "arrays": ({}, str(tmp_path / "a.npz"), str(tmp_path / "b.npz")),
  }


@pytest.mark.parametrize("source", ["csv", "jsonl", "image_folder", "arrays"])
def test_every_file_source_takes_a_path_per_split_or_fractions(tmp_path, source):
  options, path_a, path_b = _file_source_configs(tmp_path)[source]
  explicit = _open(source=source, splits={"train": path_a, "test": path_b},
                   **options)
  assert {k: len(v) for k, v in explicit.items()} == {"train": 8, "test": 3}
  fractions = _open(source=source, path=path_a, stratify=True,
                    split_fractions={"train": 0.5, "test": 0.5}, **options)
  assert {k: len(v) for k, v in fractions.items()} == {"train": 4, "test": 4}
  for split in fractions.values():
    assert sorted(_all(split)["label"]) == [0, 0, 1, 1]


# --- Preprocessing ops -------------------------------------------------------------

def test_decode_and_resize_ops_on_image_bytes():
  pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  png = io.BytesIO()
  Image.fromarray(pixels).save(png, format="PNG")
  example = {"inputs": np.frombuffer(png.getvalue(), np.uint8), "label": 1}
  decoded = ops.compose(["decode"])(example, None)
  np.testing.assert_array_equal(decoded["inputs"], pixels)
  resized = ops.compose(["decode", "resize((3, 4))"])(example, None)
  expected = np.asarray(Image.fromarray(pixels).resize((4, 3), Image.BILINEAR))
  np.testing.assert_array_equal(resized["inputs"], expected)


def test_tokenize_and_truncate_pad_ops_for_classification_and_lm():
  classify = ops.compose(["tokenize('bytes')", "truncate_pad(4)"])
  got = classify({"text": "hi", "label": 1}, None)
  np.testing.assert_array_equal(got["inputs"], [104, 105, 0, 0])
  assert got["label"] == 1 and "mask" not in got
  lm = ops.compose(["truncate_pad(4)"])
  got = lm({"inputs": np.array([5, 6]), "label": np.array([6, 7])}, None)
  np.testing.assert_array_equal(got["label"], [6, 7, 0, 0])
  np.testing.assert_array_equal(got["mask"], [1, 1, 0, 0])  # Padding never counts.
  got = lm({"inputs": np.arange(6), "label": np.arange(1, 7),
            "mask": np.array([1, 1, 0, 1, 1, 1.])}, None)
  np.testing.assert_array_equal(got["label"], [1, 2, 3, 4])
  np.testing.assert_array_equal(got["mask"], [1, 1, 0, 1])


def test_unknown_op_is_an_error_naming_it():
  with pytest.raises(UserError, match="unknown op 'one_hot'"):
    ops.compose(["one_hot(10)"])


def test_op_arguments_may_be_plain_arithmetic():
  example = {"inputs": np.array([[[255]]], np.uint8)}
  assert ops.compose(["scale(1/255)"])(example, None)["inputs"].item() == 1.0
  for spec in ("scale(1/0)", "scale(open('x'))"):
    with pytest.raises(UserError, match="cannot parse"):
      ops.parse(spec)


# --- Label types: numbers (regression) and label sets (multi-label). ----------------


def test_csv_number_labels_are_standardised_by_the_training_split(tmp_path):
  header = ["x", "price"]
  train = _write_csv(tmp_path / "train.csv", header, [["1", "100"], ["2", "300"]])
  val = _write_csv(tmp_path / "val.csv", header, [["3", "250"]])
  splits = _open(tmp_path, source="csv", splits={"train": train, "validation": val},
                 label_column="price", label_type="number")
  # Training mean 200, standard deviation 100.
  np.testing.assert_allclose(_all(splits["validation"])["label"], [0.5])
  assert splits["validation"].label_mean == 200 and splits["train"].label_std == 100
  bad = _write_csv(tmp_path / "bad.csv", header, [["1", "100"], ["2", "cheap"]])
  with pytest.raises(UserError, match=r"bad.csv:3: the label \(column 'price'\): "
                                      r"'cheap' is not a finite number"):
    _open(source="csv", splits={"train": bad}, label_column="price",
          label_type="number")


def test_csv_and_jsonl_label_sets_become_vectors_over_the_training_names(tmp_path):
  header = ["x", "tags"]
  train = _write_csv(tmp_path / "train.csv", header,
                     [["1", "urgent|billing"], ["2", ""], ["3", "billing"]])
  val = _write_csv(tmp_path / "val.csv", header, [["4", "urgent"]])
  splits = _open(tmp_path / "csv", source="csv",
                 splits={"train": train, "validation": val},
                 label_column="tags", label_type="multilabel")
  # Names sorted: billing, urgent; an empty field is the empty set.
  assert splits["train"].label_names == ["billing", "urgent"]
  np.testing.assert_array_equal(_all(splits["train"])["label"],
                                [[1, 1], [0, 0], [1, 0]])
  np.testing.assert_array_equal(_all(splits["validation"])["label"], [[0, 1]])
  records = [{"text": "refund please", "label": ["billing"]},
             {"text": "site down!!", "label": ["urgent", "outage"]},
             {"text": "hello", "label": []}]
  path = _write_jsonl(tmp_path / "t.jsonl", records)
  unseen = _write_jsonl(tmp_path / "u.jsonl", [{"text": "?", "label": ["legal"]}])
  data = dict(source="jsonl", label_type="multilabel", tokenizer="bytes", seq_len=8)
  splits = _open(tmp_path / "jsonl", splits={"train": path}, **data)
  assert splits["train"].label_names == ["billing", "outage", "urgent"]
  np.testing.assert_array_equal(_all(splits["train"])["label"],
                                [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
  # A name the training split never had is a bad record, named by file and line.
  with pytest.raises(UserError, match=r"u.jsonl:1: a label name is not one of the "
                                      "training split's labels"):
    _open(tmp_path / "jsonl", splits={"train": path, "test": unseen}, **data)
  bad = _write_jsonl(tmp_path / "b.jsonl", [{"text": "x", "label": "billing"}])
  with pytest.raises(UserError, match=r"b.jsonl:1: no label under 'label'.*a list "
                                      "of names"):
    _open(splits={"train": bad}, **data)
