"""Preprocessing ops, composed from the config.

  config.data.preprocess = ("random_crop(32, padding=4)", "flip_lr",
                            "normalize(mean=0.5, std=0.25)")

Each string names a function in this module, called with the given arguments; it
returns an op `op(example, rng) -> example`. `rng` is a NumPy Generator seeded by
(seed, position in the stream) during training and None during evaluation, so random
ops are reproducible and become their deterministic counterpart at evaluation (a
centre crop, no flip). Adding an op is adding one function here.
"""
import ast
from collections.abc import Callable, Sequence

import numpy as np

from ctjax.errors import UserError

Example = dict[str, np.ndarray]
Op = Callable[[Example, np.random.Generator | None], Example]


def parse(spec: str) -> Op:
  """Builds one op from a string like "resize(32)" or "flip_lr"."""
  try:
    node = ast.parse(spec.strip(), mode="eval").body
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    else:
      raise ValueError
  except (SyntaxError, ValueError):
    raise UserError(f"config.data.preprocess: cannot parse {spec!r}; write ops like "
                    "'resize(32)' or 'flip_lr'") from None
  factory = globals().get(name)
  if name.startswith("_") or name in ("parse", "compose") or not callable(factory):
    raise UserError(f"config.data.preprocess: unknown op {name!r} in {spec!r}; ops are "
                    "the functions in ctjax/data/ops.py")
  try:
    return factory(*args, **kwargs)
  except TypeError as e:
    raise UserError(f"config.data.preprocess: {spec!r}: {e}") from None


def compose(specs: Sequence[str] | None) -> Op | None:
  """All ops in order, as one; None when there are none (the fast path)."""
  ops = [parse(s) for s in specs or ()]
  if not ops:
    return None

  def run(example: Example, rng: np.random.Generator | None) -> Example:
    for op in ops:
      example = op(example, rng)
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


def random_crop(size: int, padding: int = 0, key: str = "inputs") -> Op:
  """Pads by `padding` (zeros) and crops size x size at random; centre when eval."""
  def op(example, rng):
    x = example[key]
    if padding:
      x = np.pad(x, ((padding, padding), (padding, padding), (0, 0)))
    h, w = x.shape[:2]
    if rng is None:
      top, left = (h - size) // 2, (w - size) // 2
    else:
      top, left = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    return {**example, key: x[top:top + size, left:left + size]}
  return op

