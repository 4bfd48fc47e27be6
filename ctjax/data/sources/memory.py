"""Examples held in NumPy arrays: the fast, vectorised source."""
import numpy as np


class ArraySource:
  """A dict of equally long arrays; example i is {key: array[i]}."""

  def __init__(self, arrays: dict[str, np.ndarray]):
    lengths = {len(a) for a in arrays.values()}
    assert len(lengths) == 1, {k: len(a) for k, a in arrays.items()}
    self.arrays = arrays
    # Per-example class labels, for stratified splits; token targets are not.
    label = arrays.get("label")
    self.labels = label if label is not None and label.ndim == 1 else None

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: a[i] for k, a in self.arrays.items()}

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: a[indices] for k, a in self.arrays.items()}
