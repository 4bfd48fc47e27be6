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
  """A PIL image or uint8 HxW[xC] array resized (bilinear) to uint8 HxWxC.

  `size` is an int (square) or (height, width). The aspect ratio is not kept, so
  that every example of a batch has the same shape.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width = _height_width(size)
  if isinstance(image, np.ndarray):
    array = np.asarray(image, np.uint8)
    image = Image.fromarray(array[..., 0] if array.ndim == 3 and
                            array.shape[-1] == 1 else array)
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  return _to_array(image)
