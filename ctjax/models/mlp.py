"""A multilayer perceptron classifier: the smallest model, for tabular data and tests.

Parameters: `hidden_{i}/{kernel,bias}` for each hidden layer, then
`classifier/{kernel,bias}`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax.models import layers


class Model(nn.Module):
  """Flattens its input, applies ReLU hidden layers, returns class logits.

  Attributes:
    num_classes: number of output logits.
    hidden_sizes: width of each hidden layer; () gives logistic regression.
    dropout: dropout rate after each hidden activation.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_classes: int = 10
  hidden_sizes: tuple[int, ...] = (128,)
  dropout: float = 0.0
  dtype: layers.Dtype = jnp.float32
  param_dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jax.Array, *, train: bool = False) -> jax.Array:
    """inputs: float [batch, ...]; returns float32 logits [batch, num_classes]."""
    x = inputs.reshape(inputs.shape[0], -1).astype(self.dtype)
    # Each layer's input is its "embed" axis and its output its "mlp" axis, so a
    # rule set written for transformers shards these weights the same way.
    for i, size in enumerate(self.hidden_sizes):
      x = layers.dense(size, ("embed", "mlp"), name=f"hidden_{i}",
                       kernel_init=nn.initializers.he_normal(),
                       dtype=self.dtype, param_dtype=self.param_dtype)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    self.sow("intermediates", "pooled", x)
    return layers.classifier_logits(x, self.num_classes, dtype=self.dtype,
                                    param_dtype=self.param_dtype)
