"""What the transfer evaluators share: frozen features of a split, a ridge solver.

Features. A jitted `ctjax.models.features` runs over a split's padded, masked
evaluation batches (`pipeline.eval_batches`, the same walk as the trainer's
`evaluate`) on the run's mesh; the features, labels and mask of each global batch
come back replicated on every device, so every process holds the whole split's
features and fits the same probe. (The all-gather happens inside the compiled
program, as `multihost_utils.process_allgather` would do in a second one.) Padded
rows are dropped by the mask, so the batch size never changes what a probe sees.

Ridge. Least squares from features to one-hot class targets with an L2 penalty,
closed form, as big_vision's few-shot evaluator. Solved in float64 on the host,
from the SVD of the centred features: the normal matrix XᵀX squares the condition
number of X, and with small penalties float32 leaves too few correct digits for
the argmax between close classes; the host's float64 SVD costs O(n·d²), seconds
for tens of thousands of examples of a few hundred features, and gives every
penalty of a grid at once. Features and targets are centred by their training
means, which fits an unpenalised intercept: scikit-learn's `Ridge`, exactly.
"""
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ctjax import models
from ctjax import sharding
from ctjax.data import pipeline
from ctjax.errors import UserError

# Feature name -> what `models.features` must give for it. "pooled": what the
# model's classifier reads; "mean": the mean of the last hidden state over real
# tokens (sentence-transformers' mean pooling).
FEATURES = {"pooled": "pooled", "mean": "last_hidden_state"}


def check(condition: bool, key: str, message: str) -> None:
  """A one-line UserError `key: message` unless `condition`."""
  if not condition:
    raise UserError(f"{key}: {message}")


def check_positive_floats(key: str, values: Any) -> tuple[float, ...]:
  values = values if isinstance(values, tuple) else (values,)
  check(len(values) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                and v > 0 for v in values),
        f"{key}={values!r}", "give positive numbers")
  return tuple(float(v) for v in values)


def mean_over_tokens(model: nn.Module, inputs: jax.Array,
                     hidden: jax.Array) -> jax.Array:
  """[batch, hidden]: the mean of `hidden` over the positions that are not padding.

  Token inputs are padding where they equal the model's `pad_token_id` (what
  BERT masks out of attention); other inputs (image patches) have none.
  """
  pad_id = getattr(model, "pad_token_id", None)
  if pad_id is None or not jnp.issubdtype(inputs.dtype, jnp.integer):
    return jnp.mean(hidden, axis=1)
  real = (inputs != pad_id).astype(hidden.dtype)[..., None]
  return jnp.sum(hidden * real, axis=1) / jnp.maximum(jnp.sum(real, axis=1), 1.0)


def feature_of(model: nn.Module, feature: str) -> Callable[[Any, jax.Array], jax.Array]:
  """params, inputs -> float32 [batch, dim] features of kind `feature`."""
  def compute(params, inputs):
    outputs = models.features(model, params, inputs)
    if feature == "pooled":
      return outputs["pooled"].astype(jnp.float32)
    return mean_over_tokens(model, inputs,
                            outputs["last_hidden_state"]).astype(jnp.float32)
  return compute


class Extractor:
  """The `feature` of every example of a split, on every process."""

  def __init__(self, context: Any, feature: Any, option: str = "feature"):
    self._key = f"{context.key}.{option}={feature!r}"
    check(feature in FEATURES, self._key, f"choose one of {', '.join(FEATURES)}")
    self._context = context
    self.feature = feature
    compute = feature_of(context.model, feature)
    # The features, labels and mask of a global batch come back replicated: on
    # every process, whole.
    self._step = jax.jit(
        lambda params, batch: (compute(context.model_params(params), batch["inputs"]),
                               batch["label"], batch["mask"]),
        out_shardings=jax.sharding.NamedSharding(context.mesh,
                                                 jax.sharding.PartitionSpec()))

  def check_split(self, option: str, split: Any) -> None:
    """That the split exists, has class labels, and that the model gives the
    feature for its inputs: by tracing (jax.eval_shape), nothing compiled."""
    context = self._context
    check(split in context.loaders, f"{context.key}.{option}={split!r}",
          f"no such split; the data config defines {', '.join(context.loaders)}")
    sample = context.loaders[split].load(np.zeros(1, np.int64), None)
    label = np.asarray(sample.get("label", 0.0))
    check(label.ndim == 1 and np.issubdtype(label.dtype, np.integer),
          f"{context.key}.{option}={split!r}",
          "needs one integer class label per example")
    model = context.model

    def model_features(inputs):
      params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), inputs,
                                        train=False))["params"]
      return models.features(model, params, inputs)

    given = jax.eval_shape(model_features, sample["inputs"])
    check(FEATURES[self.feature] in given, self._key,
          f"{type(model).__module__}.Model gives no {FEATURES[self.feature]!r}; "
          f"choose one of {', '.join(f for f, g in FEATURES.items() if g in given)}")

  def __call__(self, params: Any, loader: pipeline.BatchLoader
               ) -> tuple[np.ndarray, np.ndarray]:
    """(features float32 [n, dim], labels [n]) of the loader's n examples, in
    order; the same on every process."""
    features, labels = [], []
    context = self._context
    for local in pipeline.eval_batches(loader, global_batch_size=context.batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
      # Fetched at once: one compiled program at a time, since two with
      # collectives in flight can deadlock XLA's CPU rendezvous (see
      # train.evaluate).
      x, y, mask = jax.device_get(self._step(params, sharding.global_batch(
          local, context.mesh)))
      context.on_batch()
      real = mask > 0
      features.append(x[real])
      labels.append(y[real])
    return np.concatenate(features), np.concatenate(labels)


@dataclasses.dataclass(frozen=True)
class Linear:
  """Class scores `x @ weights + bias`, float64."""
  weights: np.ndarray  # [dim, classes]
  bias: np.ndarray     # [classes]

  def predict(self, x: np.ndarray) -> np.ndarray:
    return np.argmax(np.asarray(x, np.float64) @ self.weights + self.bias, axis=-1)


def fit_ridge(x: np.ndarray, labels: np.ndarray, num_classes: int,
              l2_regs: Sequence[float]) -> list[Linear]:
  """Ridge regression onto one-hot targets, one classifier per penalty.

  Minimises |X W + 1 b - Y|² + λ|W|² (b unpenalised) for each λ in `l2_regs`:
  with X and Y centred by their means, W = (XᵀX + λI)⁻¹ XᵀY, computed from the SVD
  X = U S Vᵀ as W = V diag(s / (s² + λ)) Uᵀ Y, and b = mean(Y) - mean(X) W. The
  SVD's cost is shared by every λ and it never forms XᵀX (see the module's
  docstring). A class absent from `labels` gets zero weights and bias: a constant
  score of 0.
  """
  x = np.asarray(x, np.float64)
  targets = np.eye(num_classes)[labels]
  x_mean, y_mean = x.mean(axis=0), targets.mean(axis=0)
  u, s, vt = np.linalg.svd(x - x_mean, full_matrices=False)
  projected = u.T @ (targets - y_mean)
  fits = []
  for l2_reg in l2_regs:
    weights = vt.T @ ((s / (s * s + l2_reg))[:, None] * projected)
    fits.append(Linear(weights=weights, bias=y_mean - x_mean @ weights))
  return fits


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(predictions == labels))
