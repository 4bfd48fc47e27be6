"""Preprocessing ops: values against hand computation, reproducible wherever they run.

Random ops (`random_crop`, `flip_lr`) draw from a generator seeded by (seed, position
in the training stream), so an augmented batch must depend on nothing else: not on
the number of decoding threads, not on how many processes share the global batch,
not on whether the stream started at step 0 or was resumed at step k. Each output
is checked against NumPy slicing and flipping of a hand-padded image, `normalize`
against float32 arithmetic by hand, `resize` against Pillow's own resize, and the
evaluation counterparts (centre crop, no flip) against slices written out by hand.

The images have a distinct, non-zero value in every pixel and channel of every
example, so a crop identifies exactly which window (and which example) it came
from, and zero can only be padding.
"""
import itertools

import numpy as np
from PIL import Image
import pytest

from ctjax.data import ops
from ctjax.data import pipeline
from ctjax.data.sources.memory import ArraySource
from ctjax.errors import UserError

N, H, W, C = 10, 6, 8, 2     # examples, image height, width, channels
SIZE, PAD = 6, 2             # random_crop(6, padding=2): a 10x12 padded image
MEAN, STD = (1.0, 2.0), (2.0, 4.0)
# Powers of two as std: dividing by them is exact, so x * std + mean undoes the
# normalisation bit for bit and a normalised crop can be matched to its window.
AUGMENT = (f"random_crop({SIZE}, padding={PAD})", "flip_lr",
           f"normalize(mean={MEAN}, std={STD})")


def _images() -> np.ndarray:
  """[N, H, W, C] float32; value 1 + (flat index), exact in float32 (< 2**24)."""
  return (1 + np.arange(N * H * W * C, dtype=np.float32)).reshape(N, H, W, C)


def _source() -> ArraySource:
  return ArraySource({"inputs": _images(), "label": np.arange(N, dtype=np.int32)})


def _padded(image: np.ndarray) -> np.ndarray:
  """Zero padding by hand, PAD pixels on each side of height and width."""
  out = np.zeros((H + 2 * PAD, W + 2 * PAD, C), np.float32)
  out[PAD:PAD + H, PAD:PAD + W] = image
  return out


def _window(crop: np.ndarray, image: np.ndarray) -> tuple[int, int, bool]:
  """(top, left, flipped) of the one window of the padded `image` that `crop` is.

  Every window holds pixels of the image itself (PAD < SIZE), whose values are
  unique, so at most one (top, left, flipped) can match.
  """
  padded = _padded(image)
  matches = [
      (top, left, flipped)
      for top in range(padded.shape[0] - SIZE + 1)
      for left in range(padded.shape[1] - SIZE + 1)
      for flipped in (False, True)
      if np.array_equal(crop, (lambda w: w[:, ::-1] if flipped else w)(
          padded[top:top + SIZE, left:left + SIZE]))]
  assert len(matches) == 1, matches
  return matches[0]


def _denormalize(x: np.ndarray) -> np.ndarray:
  return x * np.float32(STD) + np.float32(MEAN)  # Exact: see STD.


def _stream(loader, steps, *, batch=8, seed=0, **shares):
  return [pipeline.train_batch(loader, s, global_batch_size=batch, seed=seed,
                               **shares) for s in range(steps)]


# --- Each op by hand ---------------------------------------------------------------

def test_random_crop_is_a_window_of_the_zero_padded_image_and_reaches_every_one():
  crop = ops.compose([f"random_crop({SIZE}, padding={PAD})"])
  image = _images()[3]
  offsets = []
  for position in range(700):
    out = crop({"inputs": image}, np.random.default_rng([0, position]))["inputs"]
    top, left, flipped = _window(out, image)
    assert not flipped
    offsets.append((top, left))
  # 5 x 7 possible windows of a 10x12 padded image; 700 draws reach each about 20
  # times (binomial sd 4.4), so 5..40 only fails for a draw that is not uniform.
  counts = {o: offsets.count(o) for o in itertools.product(range(5), range(7))}
  assert all(5 <= n <= 40 for n in counts.values()), counts


@pytest.mark.parametrize("mode", ["edge", "reflect"])
def test_random_crop_pads_with_the_images_own_border_when_asked(mode):
  crop = ops.compose([f"random_crop({SIZE}, padding={PAD}, mode='{mode}')"])
  image = _images()[3]
  # Written out by hand for the top-left window: row/column 0 of the padded image.
  rows = [2, 1, 0, 1, 2, 3] if mode == "reflect" else [0, 0, 0, 1, 2, 3]
  cols = [2, 1, 0, 1, 2, 3] if mode == "reflect" else [0, 0, 0, 1, 2, 3]
  for position in range(200):
    out = crop({"inputs": image}, np.random.default_rng([0, position]))["inputs"]
    if np.array_equal(out, image[np.ix_(rows, cols)]):
      break
  else:
    raise AssertionError("no draw of 200 took the top-left window")
  with pytest.raises(UserError, match=r"random_crop\(mode='wrap'\): choose one of "
                     "constant, edge, reflect"):
    ops.compose([f"random_crop({SIZE}, mode='wrap')"])


def test_flip_lr_mirrors_about_half_the_examples_and_none_at_evaluation():
  flip = ops.compose(["flip_lr"])
  image = _images()[0]
  flipped = []
  for position in range(400):
    out = flip({"inputs": image}, np.random.default_rng([0, position]))["inputs"]
    assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
    flipped.append(np.array_equal(out, image[:, ::-1]))
  # Binomial(400, 1/2): sd 10, so 160..240 is four sd either side.
  assert 160 <= sum(flipped) <= 240
  np.testing.assert_array_equal(flip({"inputs": image}, None)["inputs"], image)


def test_normalize_is_float32_arithmetic_per_channel():
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
  got = ops.compose(["normalize(mean=(0.5, 100, 3), std=(0.25, 64.0, 7))"])(
      {"inputs": x}, None)["inputs"]
  # The same IEEE float32 operations, element by element: equal bit for bit.
  want = ((x.astype(np.float32) - np.array([0.5, 100, 3], np.float32))
          / np.array([0.25, 64, 7], np.float32))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  got = ops.compose(["scale(1/255)", "normalize(mean=0.5, std=0.25)"])(
      {"inputs": x}, None)["inputs"]
  np.testing.assert_array_equal(
      got, (x.astype(np.float32) * np.float32(1 / 255) - np.float32(0.5))
      / np.float32(0.25))


def test_random_crop_at_evaluation_is_the_centre_crop():
  image = _images()[1]
  centre = ops.compose([f"random_crop({SIZE}, padding={PAD})"])(
      {"inputs": image}, None)["inputs"]
  # The padded image is 10x12: 2 rows above and below a 6-row crop, 3 columns
  # left and right of a 6-column one.
  np.testing.assert_array_equal(centre, _padded(image)[2:8, 3:9])
  # An odd margin: 7 -> 4 leaves 3 rows, 1 above and 2 below.
  odd = np.arange(7 * 7, dtype=np.float32).reshape(7, 7, 1)
  np.testing.assert_array_equal(
      ops.compose(["random_crop(4)"])({"inputs": odd}, None)["inputs"],
      odd[1:5, 1:5])


@pytest.mark.parametrize("channels", [1, 3])
def test_resize_matches_pillow_bilinear(channels):
  rng = np.random.default_rng(channels)
  x = rng.integers(0, 256, (9, 13, channels), dtype=np.uint8)
  got = ops.compose(["resize((5, 4))"])({"inputs": x}, None)["inputs"]
  pil = Image.fromarray(x[..., 0] if channels == 1 else x)
  want = np.asarray(pil.resize((4, 5), Image.BILINEAR)).reshape(5, 4, channels)
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, want)  # Pillow itself: bit for bit.


def test_resize_after_scale_keeps_float_values():
  x = np.random.default_rng(0).integers(0, 256, (9, 13, 3), dtype=np.uint8)
  got = ops.compose(["scale(1/255)", "resize((5, 4))"])({"inputs": x}, None)
  got = got["inputs"]
  as_bytes = ops.compose(["resize((5, 4))"])({"inputs": x}, None)["inputs"]
  assert got.dtype == np.float32 and got.shape == (5, 4, 3)
  # The same bilinear weights on x / 255. Pillow resizes bytes in two passes
  # (rows, then columns), rounding to a whole byte after each: <= 0.5 each, and
  # the first pass's error is carried through non-negative weights summing to 1,
  # so <= 1 level in all; its fixed-point weights (2**-22) and float32 (~1e-7)
  # add far less. So they agree within 1.01 / 255. Casting floats in [0, 1] to
  # bytes, as resize did before, gave zeros.
  np.testing.assert_allclose(got, as_bytes / 255.0, rtol=0, atol=1.01 / 255)
  assert got.max() > 0.5


def test_ops_that_do_not_fit_the_data_are_errors_naming_the_op():
  image = {"inputs": np.zeros((4, 4, 3), np.float32)}
  with pytest.raises(UserError, match=r"random_crop\(8, padding=1\): the image is "
                     "6x6 after padding, smaller than the crop"):
    ops.compose(["random_crop(8, padding=1)"])(image, np.random.default_rng(0))
  with pytest.raises(UserError, match=r"'normalize\(mean=\(1, 2\)\)' does not fit "
                     "the examples"):
    ops.compose(["normalize(mean=(1, 2))"])(image, None)
  # Names the ops module imports or defines as types are not ops, callable or not.
  for name in ("Example", "UserError", "np", "images"):
    with pytest.raises(UserError, match=f"unknown op '{name}'"):
      ops.parse(name)


# --- In the pipeline: (seed, position) and nothing else ---------------------------

def test_augmented_batches_are_hand_crops_flips_and_normalisation():
  loader = pipeline.BatchLoader(_source(), ops.compose(AUGMENT), num_threads=1)
  images, windows = _images(), []
  for step in range(8):  # 64 positions: each example about 6 times, over 6 epochs.
    batch = pipeline.train_batch(loader, step, global_batch_size=8, seed=0)
    indices = pipeline.train_indices(step, num_examples=N, global_batch_size=8,
                                     seed=0)
    np.testing.assert_array_equal(batch["label"], indices)
    for row, index in zip(batch["inputs"], indices):
      windows.append((int(index), _window(_denormalize(row), images[index])))
  # Augmentation varies with the position: the same example is cropped and
  # flipped differently when it comes round again.
  for index in range(N):
    seen = {w for i, w in windows if i == index}
    assert len(seen) > 1, index
  assert {flipped for _, (_, _, flipped) in windows} == {False, True}


def test_augmentation_is_seeded_by_seed_and_position_in_the_stream():
  loader = pipeline.BatchLoader(_source(), ops.compose(AUGMENT), num_threads=1)
  augment = ops.compose(AUGMENT)
  step, batch_size, seed = 5, 8, 3
  batch = pipeline.train_batch(loader, step, global_batch_size=batch_size,
                               seed=seed)
  indices = pipeline.train_indices(step, num_examples=N,
                                   global_batch_size=batch_size, seed=seed)
  for row, (index, got) in enumerate(zip(indices, batch["inputs"])):
    # The README's contract: a generator seeded by (seed, position).
    rng = np.random.default_rng([seed, step * batch_size + row])
    want = augment({"inputs": _images()[index]}, rng)["inputs"]
    np.testing.assert_array_equal(got, want)
  other_seed = pipeline.train_batch(loader, step, global_batch_size=batch_size,
                                    seed=seed + 1)
  assert not np.array_equal(other_seed["inputs"], batch["inputs"])


def test_augmented_stream_is_the_same_for_any_threads_processes_or_resume_step():
  augment = ops.compose(AUGMENT)
  one_thread = pipeline.BatchLoader(_source(), augment, num_threads=1)
  stream = _stream(one_thread, 7, seed=1)
  # 4 threads decode the examples of a batch in any order.
  four_threads = pipeline.BatchLoader(_source(), augment, num_threads=4)
  for step, batch in enumerate(_stream(four_threads, 7, seed=1)):
    for key in batch:
      np.testing.assert_array_equal(batch[key], stream[step][key], err_msg=key)
  # Two processes each read their half of every global batch.
  halves = [_stream(four_threads, 7, seed=1, process_index=p, process_count=2)
            for p in range(2)]
  for step, batch in enumerate(stream):
    assert len(halves[0][step]["inputs"]) == 4
    for key in batch:
      np.testing.assert_array_equal(
          np.concatenate([halves[0][step][key], halves[1][step][key]]),
          batch[key], err_msg=key)
  # A resumed run computes step k directly, from a fresh loader and no cached
  # permutation: exactly the batch the uninterrupted stream had at step k.
  for step in (0, 3, 6):
    pipeline._epoch_permutation.cache_clear()  # pylint: disable=protected-access
    resumed = pipeline.train_batch(
        pipeline.BatchLoader(_source(), ops.compose(AUGMENT), num_threads=4), step,
        global_batch_size=8, seed=1)
    for key in resumed:
      np.testing.assert_array_equal(resumed[key], stream[step][key], err_msg=key)


@pytest.mark.parametrize("process_count", [1, 2])
def test_evaluation_batches_are_centre_crops_unflipped(process_count):
  loader = pipeline.BatchLoader(_source(), ops.compose(AUGMENT), num_threads=2)
  images, seen = _images(), []
  for p in range(process_count):
    for batch in pipeline.eval_batches(loader, global_batch_size=4,
                                       process_index=p, process_count=process_count):
      for row, label, valid in zip(batch["inputs"], batch["label"], batch["mask"]):
        # Centre crop [2:8, 3:9] of the 10x12 padded image, never flipped, then
        # normalised by hand in float32.
        want = ((_padded(images[label])[2:8, 3:9] - np.float32(MEAN))
                / np.float32(STD))
        np.testing.assert_array_equal(row, want)
        if valid:
          seen.append(int(label))
  assert sorted(seen) == list(range(N))  # 10 examples in 3 batches of 4: padded.
