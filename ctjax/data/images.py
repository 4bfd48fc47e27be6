"""Decoding and resizing images with PIL, for the image_folder source and the ops."""
from collections.abc import Sequence
import io

import numpy as np

_MODES = {1: "L", 3: "RGB"}


def _height_width(size: int | Sequence[int]) -> tuple[int, int]:
  return (size, size) if isinstance(size, int) else tuple(size)


def _to_array(image) -> np.ndarray:
  array = np.asarray(image, np.uint8)
  return array[..., None] if array.ndim == 2 else array


def decode(data: bytes, channels: int = 3,
           size: int | Sequence[int] | None = None) -> np.ndarray:
  """Encoded bytes (JPEG, PNG, ...) to uint8 HxWxC, resized to `size` if given.

  A JPEG is decoded straight at a reduced scale when that still covers `size`
  (PIL's draft mode), which makes large photos several times cheaper.
  Raises PIL's errors (OSError, ValueError, ...) for bytes that are not an image.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = Image.open(io.BytesIO(data))
  if size is not None:
    height, width = _height_width(size)
    image.draft(_MODES[channels], (width, height))
  image = image.convert(_MODES[channels])
  return resize(image, size) if size is not None else _to_array(image)


def resize(image, size: int | Sequence[int]) -> np.ndarray:
  """A PIL image or an HxW[xC] array resized (bilinear) to HxWxC.

  `size` is an int (square) or (height, width). The aspect ratio is not kept, so
  that every example of a batch has the same shape. A PIL image or a uint8 array
  gives uint8 (rounded as PIL rounds); any other array (an image already scaled
  to [0, 1] or normalised) is resized in float32, channel by channel, and stays
  float32: casting it to bytes would turn [0, 1] into zeros.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width = _height_width(size)
  if isinstance(image, np.ndarray) and image.dtype != np.uint8:
    array = np.asarray(image, np.float32)
    array = array[..., None] if array.ndim == 2 else array
    if array.shape[:2] == (height, width):
      return array
    channels = (Image.fromarray(np.ascontiguousarray(array[..., c]))  # mode "F"
                for c in range(array.shape[-1]))
    return np.stack([np.asarray(c.resize((width, height), Image.BILINEAR))
                     for c in channels], axis=-1)
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image[..., 0] if image.ndim == 3 and
                            image.shape[-1] == 1 else image)
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  return _to_array(image)
