"""JSON Lines: one JSON object per line; text plus label, or text alone (LM).

  config.data.source = "jsonl"
  config.data.splits = {"train": "data/train.jsonl", "validation": "data/val.jsonl"}
  # or config.data.path = "data/all.jsonl" with config.data.split_fractions
  config.data.text_key = "text"
  config.data.label_key = "label"    # "" for language modelling
  config.data.tokenizer = "bytes"    # or the path of a tokenizer.json
  config.data.seq_len = 128
  config.data.length_buckets = (32, 64)   # optional: pad a batch only to the
                                         # smallest of these (or seq_len) that
                                         # holds its longest text
  config.data.group_by_length = True     # batches of similar lengths (train)

Classification (`label_key` set): each example is {"inputs": int32 [seq_len] token
ids, "label": int32}; the text is tokenised when its batch is read (the tokenizers
package works on a whole batch in parallel), with the tokenizer's special tokens
([CLS] ... [SEP] for BERT; `config.data.special_tokens=False` leaves them out),
truncated, and padded with the tokenizer's pad id, which BERT masks out of
attention. With `config.data.label_type = "number"` the label is a real number
(regression), with "multilabel" a list of label names ({"text": ..., "label":
["billing", "urgent"]}): see ctjax/data/records.py. With `length_buckets`, every text is tokenised once when the split
opens to learn its length, and each batch is padded to the smallest bucket that
holds its longest text: a handful of compiled shapes instead of one, and short
texts do not pay for the longest (see ctjax/data/pipeline.py). Labels are names (a vocabulary of the training split's, sorted, saved in
WORKDIR/data_state.json) or integer ids.

Language modelling (`label_key = ""`): every record is a document; documents are
tokenised and packed into windows exactly as by the `text` source, the loss mask
cutting at document boundaries.

A line that is not a JSON object, or lacks the text or the label, stops the run
naming the file and line, or is skipped with `config.data.skip_bad_records=True`.
"""
import json
from typing import Any

import numpy as np

from ctjax.data import records
from ctjax.data import tokenizer as tokenizer_lib
from ctjax.data.sources import text as text_source
from ctjax.errors import UserError

DEFAULTS = {"text_key": "text", "label_key": "label", "tokenizer": "bytes",
            "seq_len": 128, "special_tokens": True, "length_buckets": ()}


def _option(data_config: Any, key: str) -> Any:
  return data_config.get(key, DEFAULTS[key])


class Records:
  """The texts and raw labels of a split, as read; `encode` makes examples."""

  def __init__(self, texts: list[str], labels: list[Any], locations: list[str],
               data_config: Any):
    self.texts = texts
    self.labels = (labels if records.label_type(data_config) != "class" else
                   np.array([str(v) for v in labels], dtype=object))
    self.data_config = data_config
    self.locations = locations
    self.tokenizer = tokenizer_lib.load(_option(data_config, "tokenizer"))
    self.vocab_size = self.tokenizer.vocab_size
    self.seq_len = _option(data_config, "seq_len")
    self.special_tokens = bool(_option(data_config, "special_tokens"))
    buckets = _option(data_config, "length_buckets")
    if not isinstance(buckets, (list, tuple)) or not all(
        isinstance(b, int) and b > 0 for b in buckets):
      raise UserError(f"config.data.length_buckets={buckets!r}: give padded "
                      "lengths as a tuple of positive ints, e.g. (32, 64)")
    # seq_len is always the last bucket: the longest texts are truncated to it.
    self.length_buckets = tuple(sorted({b for b in buckets if b < self.seq_len}
                                       | {self.seq_len})) if buckets else ()

  def __len__(self) -> int:
    return len(self.texts)

  def location(self, i: int) -> str:
    return self.locations[i]

  def __getitem__(self, i: int) -> dict[str, Any]:
    return {"text": self.texts[i], "label": self.labels[i]}

  def encode(self, state: dict[str, Any]) -> "TokenizedRecords":
    return TokenizedRecords(self, state)


class TokenizedRecords:
  """Model-ready examples: token ids and a label (see records.label_type)."""

  def __init__(self, raw: Records, state: dict[str, Any]):
    self.raw = raw
    self.vocab_size = raw.vocab_size
    for name, value in records.label_attributes(state).items():
      setattr(self, name, value)
    self.labels = records.encode_fitted_labels(raw.data_config, raw.labels, state)
    self.location = raw.location
    self.length_buckets = raw.length_buckets
    if self.length_buckets:
      self.lengths = np.array([len(ids) for ids in self._encode(range(len(raw)))])

  def __len__(self) -> int:
    return len(self.labels)

  def _encode(self, indices) -> list[np.ndarray]:
    raw = self.raw
    return raw.tokenizer.encode([raw.texts[i] for i in indices],
                                special_tokens=raw.special_tokens,
                                max_length=raw.seq_len)

  def get_batch(self, indices: np.ndarray,
                length: int | None = None) -> dict[str, np.ndarray]:
    """Token ids padded to `length` (a bucket), by default to seq_len."""
    return {"inputs": tokenizer_lib.fixed_length(
                self._encode(indices), length or self.raw.seq_len,
                self.raw.tokenizer.pad_id),
            "label": self.labels[indices]}

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.get_batch(np.array([i])).items()}


_LABEL_FORMS = {"class": "a name or an integer", "number": "a number",
                "multilabel": "a list of names"}


def _is_label(value: Any, kind: str) -> bool:
  """Whether a record's label has the form `kind` (records.LABEL_TYPES) needs."""
  if isinstance(value, bool):
    return False
  if kind == "number":
    return isinstance(value, (int, float)) and np.isfinite(value)
  if kind == "multilabel":
    return isinstance(value, list) and all(
        isinstance(v, (str, int)) and not isinstance(v, bool) for v in value)
  return isinstance(value, (str, int))


def _read(files: list[str], data_config: Any, bad: records.BadRecords
          ) -> tuple[list[str], list[Any], list[str]]:
  text_key, label_key = _option(data_config, "text_key"), _option(data_config,
                                                                   "label_key")
  kind = records.label_type(data_config)
  texts, labels, locations = [], [], []
  for path in files:
    line_number = 0
    with open(path, encoding="utf-8") as f:
      try:
        for line_number, line in enumerate(f, 1):
          if not line.strip():
            continue
          where = f"{path}:{line_number}"
          try:
            record = json.loads(line)
          except ValueError as e:
            bad(where, f"not valid JSON ({e}); fix the line")
            continue
          if not isinstance(record, dict):
            bad(where, "not a JSON object; write one {...} per line")
          elif not isinstance(record.get(text_key), str):
            bad(where, f"no text under {text_key!r} (config.data.text_key); the "
                       f"record has keys {', '.join(record)}")
          elif label_key and not _is_label(record.get(label_key), kind):
            bad(where, f"no label under {label_key!r} (config.data.label_key) "
                       f"({_LABEL_FORMS[kind]}, as config.data.label_type={kind!r} "
                       "says); add it, or set label_key='' for language modelling")
          else:
            texts.append(record[text_key])
            labels.append(record.get(label_key) if label_key else None)
            locations.append(where)
      except UnicodeDecodeError as e:
        raise UserError(f"{path}:{line_number + 1}: not UTF-8 text ({e.reason}); "
                        "save the file as UTF-8") from None
  return texts, labels, locations


def open_source(data_config: Any, split: str) -> Records | text_source.PackedText:
  spec = records.split_path(data_config, split)
  files = records.find_files(spec, "config.data.path" if split == "all" else
                             "config.data.splits")
  bad = records.BadRecords(data_config, spec)
  texts, labels, locations = _read(files, data_config, bad)
  bad.report()
  if _option(data_config, "label_key"):
    return Records(texts, labels, locations, data_config)
  tokenizer = tokenizer_lib.load(_option(data_config, "tokenizer"))
  return text_source.pack(tokenizer.encode(texts), _option(data_config, "seq_len"),
                          tokenizer.vocab_size)


def fit(data_config: Any, train: Records) -> dict[str, Any] | None:
  """The label vocabulary of the training split; nothing to fit for an LM."""
  if not _option(data_config, "label_key"):
    return None
  return records.fit_labels(data_config, train.labels)
