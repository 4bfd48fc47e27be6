"""Preprocessing ops, composed from the config.

  config.data.preprocess = ("random_crop(32, padding=4)", "flip_lr",
                            "normalize(mean=0.5, std=0.25)")
  config.data.preprocess = ("decode", "resize(64)", "scale(1/255)")  # image bytes
  config.data.preprocess = ("tokenize('tokenizer.json')", "truncate_pad(128)")

Each string names a function in this module, called with the given arguments; it
returns an op `op(example, rng) -> example`. `rng` is a NumPy Generator seeded by
(seed, position in the stream) during training and None during evaluation, so random
ops are reproducible and become their deterministic counterpart at evaluation (a
centre crop, no flip). Adding an op is adding one function here.

Two ops of the issue's list are deliberately absent. `pack` joins several examples
into one, so it cannot be a per-example op: the text and jsonl sources pack when
they open (`ctjax.data.sources.text.pack`), which keeps random access and so
resumption without replay. `one_hot` would not feed the trainer's loss, which takes
integer labels (`optax.softmax_cross_entropy_with_integer_labels`), and integer
labels are what the metrics count.
"""
import ast
import inspect
import operator
from collections.abc import Callable, Sequence

import numpy as np

from ctjax.data import images
from ctjax.data import tokenizer as tokenizer_lib
from ctjax.errors import UserError

Example = dict[str, np.ndarray]
Op = Callable[[Example, np.random.Generator | None], Example]


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv}


def _value(node: ast.AST):
  """A literal, or plain arithmetic on numbers ("1/255", "(0.5, 0.5, 0.5)")."""
  if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
    return _ARITHMETIC[type(node.op)](_value(node.left), _value(node.right))
  if isinstance(node, (ast.Tuple, ast.List)):
    return tuple(_value(e) for e in node.elts)
  return ast.literal_eval(node)


def parse(spec: str) -> Op:
  """Builds one op from a string like "resize(32)" or "flip_lr"."""
  try:
    node = ast.parse(spec.strip(), mode="eval").body
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      args = [_value(a) for a in node.args]
      kwargs = {k.arg: _value(k.value) for k in node.keywords}
    else:
      raise ValueError
  except (SyntaxError, ValueError, TypeError, ArithmeticError):
    raise UserError(f"config.data.preprocess: cannot parse {spec!r}; write ops like "
                    "'resize(32)' or 'flip_lr'") from None
  factory = globals().get(name)
  # Only the ops defined here: not the names this module imports (np, UserError)
  # or its type aliases, which are callable too.
  if (name.startswith("_") or name in ("parse", "compose") or
      not inspect.isfunction(factory) or factory.__module__ != __name__):
    raise UserError(f"config.data.preprocess: unknown op {name!r} in {spec!r}; ops are "
                    "the functions in ctjax/data/ops.py")
  try:
    return factory(*args, **kwargs)
  except TypeError as e:
    raise UserError(f"config.data.preprocess: {spec!r}: {e}") from None


def compose(specs: Sequence[str] | None) -> Op | None:
  """All ops in order, as one; None when there are none (the fast path)."""
  specs = list(specs or ())
  ops = [parse(s) for s in specs]
  if not ops:
    return None

  def run(example: Example, rng: np.random.Generator | None) -> Example:
    for spec, op in zip(specs, ops):
      try:
        example = op(example, rng)
      except UserError:
        raise
      except (ValueError, TypeError, IndexError, KeyError) as e:
        # An op that does not fit the data (a mean per channel for another number
        # of channels, a missing key): the first batch is read before anything
        # compiles, so this names the op instead of showing a traceback.
        raise UserError(f"config.data.preprocess: {spec!r} does not fit the "
                        f"examples ({type(e).__name__}: {e}); fix its arguments "
                        "or the ops before it") from None
    return example
  return run


def _map_key(key: str, fn: Callable[[np.ndarray], np.ndarray]) -> Op:
  def op(example, rng):
    del rng
    return {**example, key: fn(example[key])}
  return op


def normalize(mean: float | Sequence[float] = 0.0, std: float | Sequence[float] = 1.0,
              key: str = "inputs") -> Op:
  """(x - mean) / std, per channel when given sequences."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return _map_key(key, lambda x: (x.astype(np.float32) - mean) / std)


def scale(factor: float, key: str = "inputs") -> Op:
  """Multiplies by `factor` in float32, e.g. scale(1/255) for uint8 images."""
  return _map_key(key, lambda x: x.astype(np.float32) * np.float32(factor))


def flip_lr(key: str = "inputs") -> Op:
  """Mirrors an image left-right with probability 1/2 (training only)."""
  def op(example, rng):
    if rng is None or rng.random() < 0.5:
      return example
    return {**example, key: example[key][:, ::-1]}
  return op


PAD_MODES = ("constant", "edge", "reflect")


def random_crop(size: int, padding: int = 0, mode: str = "constant",
                key: str = "inputs") -> Op:
  """Pads by `padding` and crops size x size at random; centre when eval.

  `mode` fills the padding as `np.pad` does: "constant" with zeros (CIFAR's
  recipe, meant after `normalize`, where zero is the mean), "edge" repeating the
  border, "reflect" mirroring it. Before `normalize`, zeros are black bars that
  evaluation images never have; "reflect" keeps the image's own background.
  """
  if mode not in PAD_MODES:
    raise UserError(f"config.data.preprocess: random_crop(mode={mode!r}): choose "
                    f"one of {', '.join(PAD_MODES)}")

  def op(example, rng):
    x = example[key]
    if padding:
      x = np.pad(x, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
    h, w = x.shape[:2]
    if h < size or w < size:
      raise UserError(f"config.data.preprocess: random_crop({size}, padding="
                      f"{padding}): the image is {h}x{w} after padding, smaller "
                      "than the crop; resize first, or crop less")
    if rng is None:
      top, left = (h - size) // 2, (w - size) // 2
    else:
      top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    return {**example, key: x[top:top + size, left:left + size]}
  return op


def decode(channels: int = 3, key: str = "inputs") -> Op:
  """Encoded image bytes (JPEG, PNG, ...) to a uint8 HxWxC array."""
  def op(example, rng):
    del rng
    data = example[key]
    data = data.tobytes() if isinstance(data, np.ndarray) else data
    return {**example, key: images.decode(data, channels)}
  return op


def resize(size: int | Sequence[int], key: str = "inputs") -> Op:
  """Resizes an image to size x size, or (height, width), bilinear.

  uint8 images stay uint8; float images (after `scale` or `normalize`) are
  resized in float32.
  """
  return _map_key(key, lambda x: images.resize(x, size))


def tokenize(tokenizer: str = "bytes", key: str = "text", out: str = "inputs",
             special_tokens: bool = True, max_length: int | None = None) -> Op:
  """Text (str or bytes) to token ids: bytes, or a tokenizer.json path.

  `special_tokens` adds the tokenizer's markers ([CLS] ... [SEP] for BERT). Follow
  with truncate_pad(length) to give every example the same length.
  """
  tok = tokenizer_lib.load(tokenizer)

  def op(example, rng):
    del rng
    text = example[key]
    text = text.item() if isinstance(text, np.ndarray) else text
    ids = tok.encode([text], special_tokens=special_tokens, max_length=max_length)
    return {**example, out: ids[0].astype(np.int32)}
  return op


def truncate_pad(length: int, key: str = "inputs", pad_id: int = 0) -> Op:
  """Cuts or pads a token sequence to `length` with `pad_id`.

  Classification models mask attention by the pad id (BERT's `pad_token_id`).
  When the label is a sequence too (language modelling), it is cut and padded
  alike, and `mask` is 0 on the padding so it never counts in the loss.
  """
  def op(example, rng):
    del rng
    ids = np.asarray(example[key])
    example = {**example, key: tokenizer_lib.fixed_length([ids], length, pad_id)[0]}
    label = np.asarray(example["label"]) if "label" in example else None
    if label is not None and label.ndim == 1:
      mask = np.asarray(example.get("mask", np.ones(len(label), np.float32)))
      example["label"] = tokenizer_lib.fixed_length([label], length, 0)[0]
      example["mask"] = np.zeros(length, np.float32)
      example["mask"][:min(length, len(mask))] = mask[:length]
    return example
  return op
