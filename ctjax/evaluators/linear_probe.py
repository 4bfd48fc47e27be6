"""Linear probe: ridge regression on frozen features, accuracy on another split.

  dict(type="linear_probe", train_split="train", eval_split="validation",
       feature="pooled", l2_regs=(1e-3, 1e-2, 0.1, 1, 10, 100, 1000),
       holdout_fraction=0.2, seed=0)

Features of `train_split` (see `common.Extractor`: "pooled" is what the model's
classifier reads, "mean" the mean of its last hidden state over real tokens) are
regressed onto one-hot classes in closed form (`common.fit_ridge`, scikit-learn's
`Ridge`). With several `l2_regs`, each is fitted on a seeded `1 - holdout_fraction`
of the training split and the one most accurate on the rest is refitted on all of
it (ties go to the larger penalty); with one, that one is used.

Metrics: "accuracy" on `eval_split` and the "l2_reg" used.
"""
from typing import Any

import numpy as np

from ctjax.evaluators import common

DEFAULT_L2_REGS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)


def holdout_indices(num_examples: int, fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(fit, held out) indices into a split of `num_examples`, seeded."""
  permutation = np.random.default_rng(seed).permutation(num_examples)
  held_out = max(1, int(round(fraction * num_examples)))
  return np.sort(permutation[held_out:]), np.sort(permutation[:held_out])


def choose_l2_reg(x: np.ndarray, labels: np.ndarray, num_classes: int,
                  l2_regs: tuple[float, ...], holdout_fraction: float,
                  seed: int) -> float:
  """The penalty most accurate on a held-out part of the training features."""
  if len(l2_regs) == 1:
    return l2_regs[0]
  fit, held_out = holdout_indices(len(x), holdout_fraction, seed)
  scores = [common.accuracy(f.predict(x[held_out]), labels[held_out])
            for f in common.fit_ridge(x[fit], labels[fit], num_classes, l2_regs)]
  # Ties go to the larger penalty: the simpler classifier.
  return max(zip(scores, l2_regs))[1]


class Evaluator:
  """Options: see the module's docstring."""

  def __init__(self, context: Any, *, train_split: str = "train",
               eval_split: str = "validation", feature: str = "pooled",
               l2_regs: tuple[float, ...] = DEFAULT_L2_REGS,
               holdout_fraction: float = 0.2, seed: int = 0):
    self.extract = common.Extractor(context, feature)
    self.extract.check_split("train_split", train_split)
    self.extract.check_split("eval_split", eval_split)
    self.l2_regs = common.check_positive_floats(f"{context.key}.l2_regs", l2_regs)
    common.check(isinstance(holdout_fraction, float) and 0 < holdout_fraction < 1,
                 f"{context.key}.holdout_fraction={holdout_fraction!r}",
                 "give a fraction between 0 and 1")
    common.check(isinstance(seed, int), f"{context.key}.seed={seed!r}",
                 "give an int")
    self.train_loader = context.loaders[train_split]
    self.eval_loader = context.loaders[eval_split]
    self.holdout_fraction, self.seed = holdout_fraction, seed

  def predict(self, params: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """(predicted classes, true classes) of the eval split, and the penalty."""
    x, labels = self.extract(params, self.train_loader)
    x_eval, labels_eval = self.extract(params, self.eval_loader)
    num_classes = int(max(labels.max(), labels_eval.max())) + 1
    l2_reg = choose_l2_reg(x, labels, num_classes, self.l2_regs,
                           self.holdout_fraction, self.seed)
    [probe] = common.fit_ridge(x, labels, num_classes, [l2_reg])
    return probe.predict(x_eval), labels_eval, l2_reg

  def run(self, params: Any) -> dict[str, float]:
    predictions, labels, l2_reg = self.predict(params)
    return {"accuracy": common.accuracy(predictions, labels), "l2_reg": l2_reg}
