"""Plain-text corpora for language modelling, packed into fixed-length sequences.

  config.data.source = "text"
  config.data.files = "stdlib:*.py"     # a glob; "stdlib:" means the Python
                                        # standard library's own source folder
  config.data.seq_len = 256
  config.data.splits = {"train": "[0%:90%]", "validation": "[90%:95%]",
                        "test": "[95%:100%]"}

Documents (files) are assigned to splits by a stable hash of their path relative to
the glob's folder, so a file never straddles two splits and adding a file does not
move the others. Each split's documents are read in sorted order, tokenised (bytes:
token = byte value, vocab 256) and concatenated; sequence i is tokens
[i*(L+1), (i+1)*(L+1)). The loss mask is 0 where the target is the first token of a
new document: predicting it from another file's context is noise, not signal.
"""
import glob
import os
import re
import sysconfig
import zlib
from typing import Any

import numpy as np

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
  """Token windows of length seq_len+1 over a concatenation of documents."""

  def __init__(self, tokens: np.ndarray, doc_ids: np.ndarray, seq_len: int):
    self.seq_len = seq_len
    n = len(tokens) // (seq_len + 1)
    self.tokens = tokens[:n * (seq_len + 1)].reshape(n, seq_len + 1)
    self.doc_ids = doc_ids[:n * (seq_len + 1)].reshape(n, seq_len + 1)

  def __len__(self) -> int:
    return len(self.tokens)

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    t, d = self.tokens[indices], self.doc_ids[indices]
    return {"inputs": t[:, :-1].astype(np.int32), "label": t[:, 1:].astype(np.int32),
            "mask": (d[:, 1:] == d[:, :-1]).astype(np.float32)}

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.get_batch(np.array([i])).items()}


def open_source(data_config: Any, split: str) -> PackedText:
  match = _SPLIT.match(split)
  if not match:
    raise UserError(f"config.data.splits: text splits are document-hash ranges like "
                    f"'[0%:90%]', got {split!r}")
  lo, hi = int(match[1]), int(match[2])
  root, files = _documents(data_config.files)
  chosen = [f for f in files if lo <= _bucket(root, f) < hi]
  docs = []
  for path in chosen:
    with open(path, "rb") as f:
      docs.append(np.frombuffer(f.read(), np.uint8))
  tokens = np.concatenate(docs) if docs else np.zeros(0, np.uint8)
  doc_ids = np.repeat(np.arange(len(docs)), [len(d) for d in docs])
  return PackedText(tokens, doc_ids, data_config.seq_len)
