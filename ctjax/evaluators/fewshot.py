"""Few-shot classification: k examples per class, a ridge classifier, accuracy.

  dict(type="fewshot", train_split="train", eval_split="validation",
       feature="pooled", shots=(1, 5, 10), l2_reg=1.0, repeats=1, seed=0)

One pass computes the features of both splits (see `common.Extractor`); then for
each k in `shots` and each of `repeats` draws, k examples of every class of the
training split are drawn without replacement (seeded by (seed, k, draw), so a
draw is reproducible and does not depend on the other shots), a ridge classifier
(`common.fit_ridge`) is fitted on them alone, and its accuracy is measured on all
of `eval_split`. Nothing of the evaluation split is used to fit.

Metrics: "{k}shot_accuracy", the mean over draws, and with repeats > 1
"{k}shot_accuracy_std", their standard deviation.
"""
from typing import Any

import numpy as np

from ctjax.errors import UserError
from ctjax.evaluators import common


def draw(labels: np.ndarray, shots: int, seed: int, repeat: int) -> np.ndarray:
  """Indices of `shots` examples of each class in `labels`, sorted by class."""
  rng = np.random.default_rng([seed, shots, repeat])
  return np.concatenate([rng.choice(np.flatnonzero(labels == c), shots,
                                    replace=False) for c in np.unique(labels)])


class Evaluator:
  """Options: see the module's docstring."""

  def __init__(self, context: Any, *, train_split: str = "train",
               eval_split: str = "validation", feature: str = "pooled",
               shots: tuple[int, ...] = (1, 5, 10), l2_reg: float = 1.0,
               repeats: int = 1, seed: int = 0):
    key = context.key
    self.extract = common.Extractor(context, feature)
    self.extract.check_split("train_split", train_split)
    self.extract.check_split("eval_split", eval_split)
    shots = shots if isinstance(shots, tuple) else (shots,)
    common.check(len(shots) > 0 and all(type(k) is int and k > 0 for k in shots),
                 f"{key}.shots={shots!r}", "give positive ints, e.g. (1, 5, 10)")
    [self.l2_reg] = common.check_positive_floats(f"{key}.l2_reg", l2_reg)
    common.check(type(repeats) is int and repeats > 0, f"{key}.repeats={repeats!r}",
                 "give a positive int")
    common.check(type(seed) is int, f"{key}.seed={seed!r}", "give an int")
    self.train_loader = context.loaders[train_split]
    self.eval_loader = context.loaders[eval_split]
    self.shots, self.repeats, self.seed = shots, repeats, seed
    self._key, self._train_split = key, train_split
    # Sources that know their labels are checked now, before anything compiles;
    # others when the features are there.
    labels = getattr(self.train_loader.source, "labels", None)
    if labels is not None:
      self._check_enough(np.asarray(labels))

  def _check_enough(self, labels: np.ndarray) -> None:
    classes, counts = np.unique(labels, return_counts=True)
    if max(self.shots) > counts.min():
      raise UserError(
          f"{self._key}.shots={self.shots!r}: class {classes[counts.argmin()]} has "
          f"only {counts.min()} example(s) in split {self._train_split!r}; use "
          f"shots of at most {counts.min()}")

  def predict(self, params: Any) -> tuple[dict[int, list[np.ndarray]], np.ndarray]:
    """({k: predicted classes of the eval split, one array per draw}, true
    classes)."""
    x, labels = self.extract(params, self.train_loader)
    x_eval, labels_eval = self.extract(params, self.eval_loader)
    self._check_enough(labels)
    num_classes = int(max(labels.max(), labels_eval.max())) + 1
    predictions = {}
    for k in self.shots:
      predictions[k] = []
      for repeat in range(self.repeats):
        chosen = draw(labels, k, self.seed, repeat)
        [classifier] = common.fit_ridge(x[chosen], labels[chosen], num_classes,
                                        [self.l2_reg])
        predictions[k].append(classifier.predict(x_eval))
    return predictions, labels_eval

  def run(self, params: Any) -> dict[str, float]:
    predictions, labels = self.predict(params)
    results = {}
    for k, draws in predictions.items():
      accuracies = [common.accuracy(p, labels) for p in draws]
      results[f"{k}shot_accuracy"] = float(np.mean(accuracies))
      if self.repeats > 1:
        results[f"{k}shot_accuracy_std"] = float(np.std(accuracies))
    return results
