"""Real example data sets that build offline, for configs, the README and benchmarks.

  python -m ctjax.data.example_sets docstring_topics OUT   # text classification
  python -m ctjax.data.example_sets digit_images OUT       # an image folder

Each is made from data on this machine (no download) and written the same, byte
for byte, by the same versions and arguments.

docstring_topics: which part of Python a docstring comes from. Every docstring of
at least 40 characters on a function, method or class of the standard library's
own source (of the interpreter running this; test packages left out) is one
example, labelled with the topic of its module (`TOPICS`); a topic keeps at most
`per_topic` docstrings (a seeded draw) so that none dominates, and exact duplicates
are dropped. Each topic is split 70/15/15 into OUT/{train,validation,test}.jsonl,
one {"text": ..., "label": topic} per line. One module's docstrings may fall on both
sides; one docstring never does.

digit_images: scikit-learn's real 8x8 handwritten digits as 32x32 RGB PNGs, each
scaled to 24-32 px, placed at a random position, dark ink of a random colour on
light paper of another: the class is in the shape, not in fixed pixels.
OUT/{train,validation,test}/<digit>/<index>.png, 60/20/20 per class.
"""
import argparse
import ast
import json
import os
import shutil
import sys
import sysconfig

import numpy as np
from PIL import Image

# topic -> the top-level modules or packages it gathers.
TOPICS = {
    "gui": ("tkinter", "turtle", "turtledemo"),
    "async": ("asyncio",),
    "mail": ("email", "mailbox", "imaplib", "smtplib", "poplib"),
    "web": ("http", "urllib", "wsgiref", "html", "webbrowser"),
    "xml": ("xml",),
    "concurrency": ("multiprocessing", "threading", "concurrent", "queue",
                    "sched", "subprocess"),
    "testing": ("unittest", "doctest"),
    "logging": ("logging",),
    "numbers": ("_pydecimal", "fractions", "statistics", "numbers", "random",
                "decimal"),
    "files": ("tarfile", "zipfile", "pathlib", "shutil", "gzip", "bz2", "lzma",
              "zipimport", "tempfile", "filecmp", "fileinput", "glob"),
}


def docstrings(path: str) -> list[str]:
  """Docstrings of the functions, methods and classes in one source file."""
  try:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
  except (SyntaxError, UnicodeDecodeError):
    return []
  found = []
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      text = ast.get_docstring(node)
      if text and len(text) >= 40:
        found.append(" ".join(text.split()))  # One line: JSONL and tokenizers.
  return found


def topic_docstrings(root: str, modules: tuple[str, ...]) -> list[str]:
  """Sorted, unique docstrings of the given top-level modules and packages."""
  texts = set()
  for module in modules:
    single = os.path.join(root, module + ".py")
    files = [single] if os.path.isfile(single) else sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(os.path.join(root, module))
        if "test" not in os.path.relpath(folder, root).split(os.sep)
        for name in names if name.endswith(".py"))
    for path in files:
      texts.update(docstrings(path))
  return sorted(texts)


def docstring_topics(out: str, *, per_topic: int = 250, seed: int = 0) -> dict[str, int]:
  """Writes OUT/{train,validation,test}.jsonl; returns the examples per split."""
  root = sysconfig.get_paths()["stdlib"]
  rng = np.random.default_rng(seed)
  splits = {"train": [], "validation": [], "test": []}
  seen = set()
  for topic, modules in TOPICS.items():
    texts = [t for t in topic_docstrings(root, modules) if t not in seen]
    seen.update(texts)
    texts = [texts[i] for i in rng.permutation(len(texts))[:per_topic]]
    cut = np.cumsum([round(0.7 * len(texts)), round(0.15 * len(texts))])
    for split, part in zip(splits, np.split(np.array(texts, dtype=object), cut)):
      splits[split] += [{"text": t, "label": topic} for t in part]
  os.makedirs(out, exist_ok=True)
  for split, examples in splits.items():
    order = rng.permutation(len(examples))
    # Written whole, then renamed: a reader never sees half a file.
    temporary = os.path.join(out, f".{split}.jsonl.{os.getpid()}")
    with open(temporary, "w", encoding="utf-8") as f:
      for i in order:
        f.write(json.dumps(examples[i], ensure_ascii=False) + "\n")
    os.replace(temporary, os.path.join(out, f"{split}.jsonl"))
  return {split: len(examples) for split, examples in splits.items()}


def _digit_image(digit: np.ndarray, rng: np.random.Generator,
                 size: int) -> Image.Image:
  """One 8x8 digit (values 0-16) drawn at a random scale, place and colour."""
  side = int(rng.integers(size - size // 4, size + 1))
  shape = Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize(
      (side, side), Image.BILINEAR)
  alpha = np.zeros((size, size), np.float32)
  top, left = rng.integers(0, size - side + 1, size=2)
  alpha[top:top + side, left:left + side] = np.asarray(shape, np.float32) / 255
  # Ink darker than paper, each of a random colour.
  foreground, background = rng.uniform(0, 100, size=3), rng.uniform(155, 255, size=3)
  pixels = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
  return Image.fromarray(np.round(pixels).astype(np.uint8), "RGB")


def digit_images(out: str, *, per_class: int = 50, size: int = 32,
                 seed: int = 0) -> dict[str, int]:
  """Writes OUT/{train,validation,test}/<digit>/*.png; returns images per split."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  rng = np.random.default_rng(seed)
  counts = {"train": 0, "validation": 0, "test": 0}
  for label in range(10):
    chosen = rng.permutation(np.flatnonzero(digits.target == label))[:per_class]
    cut = np.cumsum([int(0.6 * len(chosen)), int(0.2 * len(chosen))])
    for split, indices in zip(counts, np.split(chosen, cut)):
      folder = os.path.join(out, split, str(label))
      os.makedirs(folder, exist_ok=True)
      for i in indices:
        _digit_image(digits.images[i], rng, size).save(
            os.path.join(folder, f"{i:04d}.png"))
      counts[split] += len(indices)
  return counts


SETS = ("docstring_topics", "digit_images")
CACHE = "~/.cache/ctjax"


def folder(path: str) -> str:
  """`path` with ~ expanded; CACHE/NAME for a set NAME is made on first use.

  Configs take their data folder as an argument whose default is the set's place
  in the cache: a user's own folder is used as it is, never written to.
  """
  path = os.path.expanduser(path)
  name = os.path.basename(path)
  if os.path.dirname(path) == os.path.expanduser(CACHE) and name in SETS:
    return cached(name)
  return path


def cached(name: str) -> str:
  """CACHE/NAME, holding the set NAME (default arguments), made on first use.
  Written whole to a temporary folder and then renamed, so a killed run never
  leaves half a set there, and of several processes making it at once one wins."""
  path = os.path.join(os.path.expanduser(CACHE), name)
  if not os.path.exists(path):
    temporary = f"{path}.{os.getpid()}.tmp"
    globals()[name](temporary)
    try:
      os.rename(temporary, path)
    except OSError:  # Another process renamed its copy first.
      if not os.path.exists(path):
        raise
      shutil.rmtree(temporary)
  return path


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("name", choices=SETS)
  parser.add_argument("out")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  counts = globals()[args.name](args.out, seed=args.seed)
  print(f"Python {sys.version.split()[0]}: wrote {counts} to {args.out}")


if __name__ == "__main__":
  main()
