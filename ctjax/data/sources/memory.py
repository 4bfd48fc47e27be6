"""Examples held in NumPy arrays: the fast, vectorised source."""
import numpy as np


class ArraySource:
  """A dict of equally long arrays; example i is {key: array[i]}.

  `columns` are raw values per example that are not model inputs (a table's
  columns by name), for evaluation slices (ctjax/data/slicing.py).
  """

  def __init__(self, arrays: dict[str, np.ndarray],
               columns: dict[str, np.ndarray] | None = None):
    lengths = {len(a) for a in arrays.values()}
    assert len(lengths) == 1, {k: len(a) for k, a in arrays.items()}
    self.arrays = arrays
    self.columns = columns or {}
    # Per-example labels, for stratified splits and label checks; token targets
    # are not.
    label = arrays.get("label")
    self.labels = label if label is not None and label.ndim == 1 else None

  def __len__(self) -> int:
    return len(next(iter(self.arrays.values())))

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: a[i] for k, a in self.arrays.items()}

  def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {k: a[indices] for k, a in self.arrays.items()}
