"""The model zoo: one module per family, each defining a flax.linen `Model`.

`config.model.name = "gpt"` selects `ctjax.models.gpt.Model`, and the other keys of
`config.model` are its dataclass fields. Adding a family is adding one file.

Every `Model` is called as `model.apply({"params": params}, inputs, train=...,
rngs={"dropout": key})` and returns float32 logits; its parameters carry logical
axis names for sharding (see `ctjax/models/layers.py`). `features` gives what a
model computes before its head (for probes, retrieval and parity checks).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ctjax import by_name
from ctjax.errors import UserError

# Fields that every flax Module has; they are not model configuration.
_MODULE_FIELDS = ("parent", "name")


def families() -> list[str]:
  """Names of the modules in ctjax/models/ that define a `Model`."""
  return by_name.names(__name__, "Model")


def get_model(model_config: Any) -> nn.Module:
  """Builds `ctjax.models.<name>.Model` from `config.model`.

  Args:
    model_config: a ConfigDict or dict with `name` and any fields of that Model.
      Lists become tuples (sequence fields such as `widths` are tuples) and dtype
      names such as "bfloat16" become dtypes.

  Returns:
    The unbound Model.

  Raises:
    UserError: the name has no module, or a key is not a field of its Model.
  """
  if hasattr(model_config, "to_dict"):
    model_config = model_config.to_dict()
  kwargs = dict(model_config)
  name = kwargs.pop("name", None)
  module = by_name.find(__name__, name, "Model")
  if module is None:
    raise UserError(f"config.model.name={name!r}: no module ctjax/models/{name}.py "
                    f"with a Model; choose one of {', '.join(families())}")

  model_class = module.Model
  fields = [f.name for f in dataclasses.fields(model_class)
            if f.name not in _MODULE_FIELDS]
  for key, value in kwargs.items():
    if key not in fields:
      raise UserError(f"config.model.{key}: not a field of "
                      f"{module.__name__}.Model; valid fields: {', '.join(fields)}")
    if isinstance(value, list):
      kwargs[key] = tuple(value)
    elif key in ("dtype", "param_dtype") and isinstance(value, str):
      try:
        kwargs[key] = jnp.dtype(value)
      except TypeError:
        raise UserError(f"config.model.{key}={value!r} is not a dtype; use e.g. "
                        f"'float32' or 'bfloat16'") from None
  return model_class(**kwargs)


def features(model: nn.Module, params: Any, inputs: jax.Array) -> dict[str, jax.Array]:
  """What the model computes before its head, at evaluation (no dropout).

  Every model sows its features into the "intermediates" collection; this collects
  them beside the logits:

    "logits"             what `model.apply` returns
    "pooled"             [batch, hidden]: the vector the classifier reads (BERT:
                         the tanh pooler output, Hugging Face's `pooler_output`;
                         ViT: the [CLS] token or the mean of patch tokens after the
                         final norm; CNN and MLP: the last hidden layer). Not for
                         GPT, which has no classifier.
    "last_hidden_state"  [batch, length, hidden], transformers only: the
                         encoder's (decoder's) output after its final norm, as
                         Hugging Face's `last_hidden_state`.

  Jit it like any function of params: `jax.jit(functools.partial(features, model))`.
  """
  logits, state = model.apply({"params": params}, inputs, train=False,
                              mutable="intermediates")
  # sow stores a tuple of every value sown under a name; each is sown once.
  return {"logits": logits,
          **{name: values[0] for name, values in state["intermediates"].items()}}
