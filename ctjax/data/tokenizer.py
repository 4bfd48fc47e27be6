"""Tokenizers for text sources and ops: bytes, or a Hugging Face tokenizer.json.

  config.data.tokenizer = "bytes"                   # token = byte of UTF-8, 256 ids
  config.data.tokenizer = "path/to/tokenizer.json"  # via the `tokenizers` package
  config.data.tokenizer = "path/to/hf_dir"          # its tokenizer.json (say the
                                                    # config.model_init directory)

A tokenizer.json is what `tokenizer.save(...)` or `save_pretrained` writes, and what
Hugging Face model repositories ship (BERT, GPT-2, MiniLM, ...). Tokenising a list
of texts runs in parallel in Rust, outside the GIL.
"""
from collections.abc import Sequence
import functools
import os

import numpy as np

from ctjax.errors import UserError

# Names that tokenizer.json files commonly give their padding token.
_PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>")


class Tokenizer:
  """Turns texts into arrays of token ids.

  Attributes:
    spec: "bytes" or the path of the tokenizer.json.
    vocab_size: the number of token ids (the model's vocab_size must be at least
      this).
    pad_id: the id that pads sequences to a fixed length; models such as BERT mask
      it out of attention.
    dtype: the smallest integer type holding every id, for packed corpora.
  """

  def __init__(self, spec: str):
    self.spec = spec
    if spec == "bytes":
      self.vocab_size, self.pad_id = 256, 0
    else:
      tokenizer = _hf_tokenizer(spec, None)
      self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
      pad = tokenizer.padding["pad_id"] if tokenizer.padding else next(
          (tokenizer.token_to_id(t) for t in _PAD_TOKENS
           if tokenizer.token_to_id(t) is not None), 0)
      self.pad_id = int(pad)
    self.dtype = (np.uint8 if self.vocab_size <= 2**8 else
                  np.uint16 if self.vocab_size <= 2**16 else np.int32)

  def encode(self, texts: Sequence[str | bytes], *, special_tokens: bool = False,
             max_length: int | None = None) -> list[np.ndarray]:
    """Token ids of each text (of `self.dtype`).

    Args:
      texts: strings, or bytes (UTF-8) for the byte tokenizer.
      special_tokens: add the tokenizer's own markers, e.g. BERT's [CLS] ... [SEP]
        (for classification; not for packing a corpus).
      max_length: truncate to this many ids; a tokenizer.json truncates the text
        and keeps its special tokens, as Hugging Face does.
    """
    if self.spec == "bytes":
      return [np.frombuffer(t if isinstance(t, bytes) else t.encode("utf-8"),
                            np.uint8)[:max_length] for t in texts]
    texts = [t.decode("utf-8") if isinstance(t, bytes) else t for t in texts]
    encodings = _hf_tokenizer(self.spec, max_length).encode_batch(
        texts, add_special_tokens=special_tokens)
    return [np.asarray(e.ids, self.dtype) for e in encodings]


@functools.lru_cache(maxsize=16)
def load(spec: str) -> Tokenizer:
  """The tokenizer `spec` names ("bytes" or a tokenizer.json path), cached."""
  return Tokenizer(spec)


@functools.lru_cache(maxsize=16)
def _hf_tokenizer(path: str, max_length: int | None):
  import tokenizers  # pylint: disable=g-import-not-at-top
  file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise UserError(f"config.data.tokenizer={path!r}: no such file; give \"bytes\", "
                    "the path of a Hugging Face tokenizer.json, or a directory "
                    "holding one")
  try:
    tokenizer = tokenizers.Tokenizer.from_file(file)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"config.data.tokenizer={path!r}: not a tokenizer.json "
                    f"({str(e).splitlines()[0]}); save one with "
                    "tokenizer.save(path)") from None
  tokenizer.no_padding()
  if max_length:
    tokenizer.enable_truncation(max_length)
  else:
    tokenizer.no_truncation()
  return tokenizer


def fixed_length(sequences: Sequence[np.ndarray], length: int,
                 pad_id: int = 0) -> np.ndarray:
  """[len(sequences), length] int32: each sequence cut to `length` or padded."""
  out = np.full((len(sequences), length), pad_id, np.int32)
  for row, ids in zip(out, sequences):
    ids = ids[:length]
    row[:len(ids)] = ids
  return out
