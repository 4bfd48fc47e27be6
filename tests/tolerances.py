"""Tolerances for float32 results computed in different orders: derived, not tuned.

Two runs that do the same arithmetic in another order (8 devices against 1, two
processes against one, k microbatches against one batch, another CPU's vector
width) round differently. How far apart they may end follows from the arithmetic:

- One reordered sum. Summing n float32 terms in any order is within (n - 1)·u of
  the exact sum, relative to the sum of the terms' magnitudes (Higham, "Accuracy
  and Stability of Numerical Algorithms", 2nd ed., §4.2; u = 2**-24, the unit
  roundoff). That worst case needs every rounding error to go the same way; they
  go both ways, and the probabilistic analysis of Higham & Mary ("A new approach
  to probabilistic rounding error analysis", SIAM J. Sci. Comput. 2019, Thm. 3.1)
  bounds the error by λ·√n·u instead, failing with probability at most about
  2n·exp(-λ²/2): for λ = 6, under 1e-7 for every sum in these tests. Two orders are
  within twice that of each other.
- A chain of sums. A value computed through several reductions (a batch mean of
  losses, each loss through layers whose matrix products, norms and softmaxes sum
  over their inputs) collects independent rounding errors from each: they add
  like the terms of one sum of all their lengths. So n below is the total count
  of reorderable terms on the path to the compared value, stated in each test.
- A training curve. Step k's parameters carry every earlier step's difference
  forward and add their own. With a learning rate small enough that an update
  does not amplify a perturbation (the regime every test here trains in), the
  differences at most add up: after k steps, k times one step's. Adam divides by
  the gradient's running scale, so a gradient entry that is itself of the order of
  its rounding error could differ by more; the tests' models have none (the
  measured differences, stated in each test, are far below these bounds).

The bounds hold for any CPU's vector width and summation tree, which is the
point: `make test-isa` checks them with XLA limited to AVX2 and to SSE4.2, as
other CPUs compute. Runs that do exactly the same work in the same order (a
resumed run on the same devices, a restored checkpoint) are compared bit for bit.
"""
import math
from typing import Any

import jax
import numpy as np

# Unit roundoff of float32: half the distance from 1.0 to the next float32.
U32 = float(np.finfo(np.float32).eps) / 2
# Standard deviations of the probabilistic bound (see the module docstring).
LAMBDA = 6.0


def sum_rtol(n: int) -> float:
  """Largest relative difference between two orders of n float32 terms' sum(s)."""
  return 2 * LAMBDA * math.sqrt(n) * U32


def curve_rtol(steps: int, n: int) -> float:
  """Bound after `steps` training steps, each through n reorderable terms."""
  return steps * sum_rtol(n)


def assert_close_normwise(actual: Any, expected: Any, rtol: float,
                          params: Any = None) -> None:
  """Same paths; each array within `rtol` of the expected array's largest magnitude.

  Normwise, not elementwise: a rounding difference in a sum is relative to the
  magnitudes summed, so an entry near zero (a sum that cancelled) may differ by
  far more than its own size, never by more than the scale of its array.

  `params`: when the arrays compared are updates read back from float32
  parameters (new - params). Each new parameter was rounded on its own: an
  update far smaller than its parameter moves by up to half a unit in the last
  place of that parameter, whatever its own scale, so each array is also allowed
  one unit in the last place of its largest new parameter (half for each side).
  """
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x, np.float64)
                       for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  actual, expected = flat(actual), flat(expected)
  assert sorted(actual) == sorted(expected)
  ulp = {}
  if params is not None:
    for path, old in flat(params).items():
      largest = max(np.abs(old + update[path]).max(initial=0.0)
                    for update in (actual, expected))
      ulp[path] = float(np.spacing(np.float32(largest)))
  for path, want in expected.items():
    scale = np.abs(want).max(initial=0.0)
    difference = np.abs(actual[path] - want).max(initial=0.0)
    assert difference <= rtol * scale + ulp.get(path, 0.0), (
        f"{path}: differs by {difference:.3g}, more than {rtol:.3g} of its scale "
        f"{scale:.3g}" + (f" plus {ulp[path]:.3g}, one ulp of its parameters"
                          if path in ulp else ""))


def assert_curves_close(actual: dict[int, float], expected: dict[int, float],
                        n: int) -> None:
  """Loss curves {step: value} over the same steps, step k within curve_rtol(k, n).

  Step k's bound grows with k: the first step is held as tightly as one step's
  rounding allows, not as loosely as the last.
  """
  assert sorted(actual) == sorted(expected)
  first = min(expected) - 1  # Steps counted from the comparison's start.
  for step, want in expected.items():
    rtol = curve_rtol(step - first, n)
    assert abs(actual[step] - want) <= rtol * abs(want), (
        f"step {step}: {actual[step]!r} vs {want!r}, relative difference "
        f"{abs(actual[step] - want) / abs(want):.3g} > {rtol:.3g}")
