"""What a model learns to predict: one module per task, chosen by `config.task`.

  config.task = "classification"   one class per example (or per token, for language
                                   models): softmax cross-entropy (the default)
  config.task = "multilabel"       any subset of C labels per example: a [C] 0/1
                                   label vector, sigmoid cross-entropy per label
  config.task = "regression"       one or more real numbers: squared error

The model is the same for all three: its head gives `config.model.num_classes`
outputs (classes, labels, or regression targets). A task module defines

  per_example_loss(outputs, labels) -> [...] losses        what the train step sums
  stats(outputs, labels, mask, **options) -> {name: array}  mergeable sums, jitted
  summarize(stats, **options) -> {metric: float}            on the host, at the end
  per_class(stats) -> {name: [C] array}                     per class or label
  predict(outputs) -> {"scores": ..., "prediction": ...}    what an export writes
  check_labels(label) -> str | None                         what is wrong with a batch
                                                            of labels for this task
  HEADLINE                                                  the metrics a summary shows

`stats` takes a padded batch whose `mask` weighs each example (0: padding; an
integer w > 1 counts it w times, for bootstrap resampling) and its keyword options
(the metrics it can add, with their costs, in each module's docstring); the
evaluator checks a config's options against its signature. Adding a task is adding
one file here.
"""
from types import ModuleType

from ctjax import by_name
from ctjax.errors import UserError


def names() -> list[str]:
  return by_name.names(__name__, "per_example_loss")


def get(name: str, key: str = "config.task") -> ModuleType:
  """The module of task `name`; a UserError naming `key` if there is none."""
  module = by_name.find(__name__, name, "per_example_loss")
  if module is None:
    raise UserError(f"{key}={name!r}: no task module ctjax/tasks/{name}.py; choose "
                    f"one of {', '.join(names())}")
  return module
