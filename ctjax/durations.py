"""Durations given as steps, epochs or examples.

Researchers think in different units: a step count for a quick debug run, epochs for
a small dataset, examples seen for comparing batch sizes. Every duration field in a
config (`train_duration`, `log_every`, `eval_every`, `checkpoint_every`,
`optim.schedule.warmup`) takes one of:

  500             an int: steps
  "500 steps"
  "3 epochs"      needs the training split's size
  "1e6 examples"  rounded up to whole steps of the global batch
"""
import math

from ctjax.errors import UserError

_UNITS = ("steps", "step", "epochs", "epoch", "examples", "example")


def to_steps(value: int | float | str, *, key: str, global_batch_size: int,
             train_examples: int | None) -> int:
  """Converts a duration to a whole number of steps; `key` names it in errors."""
  if isinstance(value, bool):
    raise UserError(f"config.{key}={value!r}: a duration is an int (steps) or a "
                    "string like '500 steps', '3 epochs' or '100000 examples'")
  if isinstance(value, (int, float)):
    amount, unit = float(value), "steps"
  else:
    parts = str(value).split()
    try:
      amount = float(parts[0])
      unit = parts[1] if len(parts) == 2 else "steps"
      if len(parts) > 2 or unit not in _UNITS:
        raise ValueError
    except (ValueError, IndexError):
      raise UserError(
          f"config.{key}={value!r}: write a duration as '500 steps', '3 epochs' or "
          "'100000 examples'") from None
  if amount < 0:
    raise UserError(f"config.{key}={value!r}: a duration cannot be negative")
  if unit.startswith("step"):
    return int(math.ceil(amount))
  examples = amount
  if unit.startswith("epoch"):
    if not train_examples:
      raise UserError(f"config.{key}={value!r}: epochs need a training split of "
                      "known size; give steps or examples instead")
    examples = amount * train_examples
  return int(math.ceil(examples / global_batch_size))
