"""Regression: one or more real-valued targets per example.

Labels are float [batch] (one target) or [batch, T]; the model gives T outputs
(`config.model.num_classes = T`). The loss is the squared error, averaged over
targets.

Targets are best standardised by the data layer (the table and scikit-learn
sources do: (y - mean) / std with the training split's mean and std, saved with
the data state), for the optimiser's sake and for the statistics': they are float32
sums, and R² subtracts two of them (sum y² - (sum y)²/n), which cancels badly when
the mean is large against the spread. `summarize(stats, label_std=...)` reports
the errors in the original units.

The statistics, per target ([T] float32 sums over real examples, and the count):

  count, squared_error, absolute_error, label_sum, label_squares    16·T + 4 bytes
"""
import jax
import jax.numpy as jnp
import numpy as np


def _as_targets(outputs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Outputs and labels as float32 [B, T] (a [B] label is one target)."""
  labels = jnp.asarray(labels).astype(jnp.float32)
  if labels.ndim == 1:
    labels = labels[:, None]
  return outputs.astype(jnp.float32).reshape(labels.shape), labels


# The metrics a final summary line and the slices report, where present.
HEADLINE = ("r2", "rmse", "mae")

def per_example_loss(outputs: jax.Array, labels: jax.Array) -> jax.Array:
  """Squared error, the mean over targets: [batch]."""
  outputs, labels = _as_targets(outputs, labels)
  return jnp.mean(jnp.square(outputs - labels), axis=-1)


def predict(outputs: jax.Array) -> dict[str, jax.Array]:
  """The outputs are the predictions (in the labels' standardised units)."""
  outputs = outputs.astype(jnp.float32)
  return {"scores": outputs, "prediction": outputs}


def check_labels(label: np.ndarray) -> str | None:
  if not np.issubdtype(label.dtype, np.floating) or label.ndim > 2:
    return (f"labels have shape {label.shape[1:]} and dtype {label.dtype}; "
            "regression needs one float target per example (or a vector of them); "
            "tables give float labels with config.data.label_type='number'")
  return None


def stats(outputs: jax.Array, labels: jax.Array, mask: jax.Array
          ) -> dict[str, jax.Array]:
  """Per-target sums over the real examples of a padded batch (see the module)."""
  outputs, labels = _as_targets(outputs, labels)
  weight = jnp.asarray(mask).astype(jnp.int32)
  real = (weight > 0)[:, None]
  w = weight[:, None].astype(jnp.float32)
  # jnp.where, not a product: padded positions may hold NaN.
  total = lambda x: jnp.sum(jnp.where(real, x * w, 0.0), axis=0)
  error = outputs - labels
  return {"count": jnp.sum(weight), "squared_error": total(jnp.square(error)),
          "absolute_error": total(jnp.abs(error)), "label_sum": total(labels),
          "label_squares": total(jnp.square(labels))}


def per_class(stats: dict, label_std: float | np.ndarray = 1.0
              ) -> dict[str, np.ndarray]:
  """Per target: "mse", "mae", "r2" (errors in the original units)."""
  s = {k: np.asarray(v, np.float64) for k, v in stats.items()}
  n, std = s["count"], np.asarray(label_std, np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    variance_sum = s["label_squares"] - np.square(s["label_sum"]) / n
    return {"mse": s["squared_error"] / n * std ** 2,
            "mae": s["absolute_error"] / n * std,
            # scikit-learn's r2_score: 1 for a perfect fit of constant labels, else 0.
            "r2": np.where(variance_sum > 0, 1 - s["squared_error"] / variance_sum,
                           np.where(s["squared_error"] == 0, 1.0, 0.0))}


def summarize(stats: dict, label_std: float | np.ndarray = 1.0
              ) -> dict[str, float]:
  """mse, rmse, mae and r2, averaged over targets (scikit-learn's
  multioutput="uniform_average"; rmse is the root of the averaged mse), in the
  original units when `label_std` (the data's standardisation scale) is given;
  "loss" is the training loss, in the standardised units."""
  targets = per_class(stats, label_std)
  mse = targets["mse"].mean()
  n = float(np.asarray(stats["count"]))
  loss = np.asarray(stats["squared_error"], np.float64).mean() / n if n else np.nan
  return {"loss": float(loss), "mse": float(mse), "rmse": float(np.sqrt(mse)),
          "mae": float(targets["mae"].mean()), "r2": float(targets["r2"].mean())}
