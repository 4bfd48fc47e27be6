"""Zero-shot classification for text encoders: the nearest class description.

  dict(type="zeroshot", eval_split="validation",
       classes=("billing question", "technical problem", ...), feature="mean")

Each class's text (`classes`, in class-id order; by default the class names of
the split's data, as the training split named them) is tokenised with the run's
tokenizer (`config.data.tokenizer`, with `config.data.special_tokens` as the data
was) to the length of the data's inputs, and embedded by the model being trained,
as the examples are: by default the mean of the last hidden state over real tokens,
as sentence-transformers embeds sentences. Each example of `eval_split` is assigned
the class whose embedding has the highest cosine similarity with its own.

Metrics: "accuracy", to compare with few-shot accuracy beside it.
"""
from typing import Any

import numpy as np

from ctjax.data import pipeline
from ctjax.data import tokenizer as tokenizer_lib
from ctjax.data.sources.memory import ArraySource
from ctjax.evaluators import common


def nearest_class(embeddings: np.ndarray, class_embeddings: np.ndarray) -> np.ndarray:
  """The index of the row of `class_embeddings` most cosine-similar to each row
  of `embeddings` (float64)."""
  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True),
                          np.finfo(np.float64).tiny)
  return np.argmax(unit(embeddings) @ unit(class_embeddings).T, axis=-1)


class Evaluator:
  """Options: see the module's docstring."""

  def __init__(self, context: Any, *, eval_split: str = "validation",
               classes: tuple[str, ...] = (), feature: str = "mean"):
    key = context.key
    self.extract = common.Extractor(context, feature)
    self.extract.check_split("eval_split", eval_split)
    self.eval_loader = context.loaders[eval_split]
    names = getattr(self.eval_loader.source, "label_names", None)
    classes = classes if isinstance(classes, tuple) else (classes,)
    common.check(bool(classes or names), f"{key}.classes",
                 "the data has no class names; give one text per class, in "
                 "class-id order, e.g. classes=('billing question', ...)")
    classes = classes or tuple(names)
    common.check(all(isinstance(c, str) and c for c in classes),
                 f"{key}.classes={classes!r}", "give one non-empty text per class")
    common.check(names is None or len(classes) == len(names),
                 f"{key}.classes", f"gives {len(classes)} texts but the data has "
                 f"{len(names or ())} classes; give one per class, in class-id order")
    inputs = np.asarray(self.eval_loader.load(np.zeros(1, np.int64), None)["inputs"])
    common.check(inputs.ndim == 2 and np.issubdtype(inputs.dtype, np.integer),
                 f"{key}.eval_split={eval_split!r}",
                 "zero-shot needs token ids as inputs (a text model)")
    tokenizer = tokenizer_lib.load(context.data_config.get("tokenizer", "bytes"))
    ids = tokenizer_lib.fixed_length(
        tokenizer.encode(classes, special_tokens=bool(
            context.data_config.get("special_tokens", True)),
                         max_length=inputs.shape[1]),
        inputs.shape[1], tokenizer.pad_id)
    # The class texts go through the same padded, sharded pass as a split.
    self.class_loader = pipeline.BatchLoader(
        ArraySource({"inputs": ids, "label": np.arange(len(classes), dtype=np.int32)}),
        num_threads=1)
    self.classes = classes

  def predict(self, params: Any) -> tuple[np.ndarray, np.ndarray]:
    """(assigned classes, true classes) of the eval split."""
    class_embeddings, _ = self.extract(params, self.class_loader)
    embeddings, labels = self.extract(params, self.eval_loader)
    return nearest_class(embeddings, class_embeddings), labels

  def run(self, params: Any) -> dict[str, float]:
    predictions, labels = self.predict(params)
    return {"accuracy": common.accuracy(predictions, labels)}
