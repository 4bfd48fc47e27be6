"""Plain-text corpora for language modelling, packed into fixed-length sequences.

  config.data.source = "text"
  config.data.files = "stdlib:*.py"     # a glob; "stdlib:" means the Python
                                        # standard library's own source folder
  config.data.tokenizer = "bytes"       # or the path of a tokenizer.json
  config.data.seq_len = 256
  config.data.splits = {"train": "[0%:90%]", "validation": "[90%:95%]",
                        "test": "[95%:100%]"}

Documents (files) are assigned to splits by a stable hash of their path relative to
the glob's folder, so a file never straddles two splits and adding a file does not
move the others. Each split's documents are read in sorted order, tokenised (bytes:
token = byte value, vocab 256; a tokenizer.json: its ids, and
config.model.vocab_size must cover them) and concatenated; sequence i is tokens
[i*(L+1), (i+1)*(L+1)). The loss mask is 0 where the target is the first token of a
new document: predicting it from another file's context is noise, not signal.
With a tokenizer.json, a file that is not UTF-8 is a bad record (see
`config.data.skip_bad_records`).
"""
import glob
import os
import re
import sysconfig
import zlib
from typing import Any

import numpy as np

from ctjax.data import records
from ctjax.data import tokenizer as tokenizer_lib
from ctjax.errors import UserError

_SPLIT = re.compile(r"^\[(\d+)%:(\d+)%\]$")


def _documents(pattern: str) -> tuple[str, list[str]]:
  if pattern.startswith("stdlib:"):
    root = sysconfig.get_paths()["stdlib"]
    pattern = os.path.join(root, pattern[len("stdlib:"):])
  else:
    root = os.path.dirname(pattern.split("*")[0]) or "."
  files = sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))
  if not files:
    raise UserError(f"config.data.files={pattern!r}: no files match; check the path")
  return root, files


def _bucket(root: str, path: str) -> int:
  return zlib.crc32(os.path.relpath(path, root).encode()) % 100


class PackedText:
  """Token windows of length seq_len+1 over a concatenation of documents.

  Attributes:
    vocab_size: the tokenizer's number of ids, checked against the model's.
  """

  def __init__(self, tokens: np.ndarray, starts: np.ndarray, seq_len: int,
               vocab_size: int):
    self.seq_len = seq_len
    self.vocab_size = vocab_size
    n = len(tokens) // (seq_len + 1)
    self.tokens = tokens[:n * (seq_len + 1)].reshape(n, seq_len + 1)
    # True at the first token of each document.
    self.starts = starts[:n * (seq_len + 1)].reshape(n, seq_len + 1)

  def __len__(self) -> int:
    return len(self.tokens)

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    t = self.tokens[indices]
    return {"inputs": t[:, :-1].astype(np.int32), "label": t[:, 1:].astype(np.int32),
            "mask": (~self.starts[indices, 1:]).astype(np.float32)}

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.get_batch(np.array([i])).items()}


def pack(documents: list[np.ndarray], seq_len: int, vocab_size: int) -> PackedText:
  """Concatenates tokenised documents into windows, marking where each starts."""
  documents = [d for d in documents if len(d)]
  if not documents:
    return PackedText(np.zeros(0, np.int32), np.zeros(0, bool), seq_len, vocab_size)
  tokens = np.concatenate(documents)
  starts = np.zeros(len(tokens), bool)
  starts[np.cumsum([0] + [len(d) for d in documents[:-1]])] = True
  return PackedText(tokens, starts, seq_len, vocab_size)


def open_source(data_config: Any, split: str) -> PackedText:
  match = _SPLIT.match(split)
  if not match:
    raise UserError(f"config.data.splits: text splits are document-hash ranges like "
                    f"'[0%:90%]', got {split!r}")
  lo, hi = int(match[1]), int(match[2])
  root, files = _documents(data_config.files)
  tokenizer = tokenizer_lib.load(data_config.get("tokenizer", "bytes"))
  bad = records.BadRecords(data_config, f"{data_config.files} {split}")
  texts = []
  for path in (f for f in files if lo <= _bucket(root, f) < hi):
    with open(path, "rb") as f:
      data = f.read()
    if tokenizer.spec != "bytes":
      try:
        data = data.decode("utf-8")
      except UnicodeDecodeError as e:
        bad(path, f"not UTF-8 text ({e.reason} at byte {e.start}); convert it, or "
                  "use config.data.tokenizer='bytes'")
        continue
    texts.append(data)
  bad.report()
  return pack(tokenizer.encode(texts), data_config.seq_len, tokenizer.vocab_size)
