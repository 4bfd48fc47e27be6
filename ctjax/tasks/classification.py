"""Classification: one class per example, or per token (language models).

The statistics and metrics are ctjax.metrics' (see its docstring for each option's
cost); this module adds the loss and what an export writes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ctjax import metrics

stats = metrics.classification_stats
summarize = metrics.summarize
per_class = metrics.per_class


# The metrics a final summary line and the slices report, where present.
HEADLINE = ("accuracy", "loss", "macro_f1", "roc_auc", "roc_auc_ovr",
            "expected_calibration_error")

def per_example_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example (or per token): the loss DP-SGD would clip."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels)


def predict(logits: jax.Array) -> dict[str, jax.Array]:
  """Class probabilities and the most probable class."""
  return {"scores": jax.nn.softmax(logits.astype(jnp.float32)),
          "prediction": jnp.argmax(logits, axis=-1)}


def check_labels(label: np.ndarray) -> str | None:
  if not np.issubdtype(label.dtype, np.integer):
    return (f"labels are {label.dtype}, not class ids; for real-valued targets set "
            "config.task='regression'")
  return None
