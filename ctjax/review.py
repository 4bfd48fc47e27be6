"""What a domain expert reviews: the model's worst mistakes, and its doubts.

  queue = review.review_queue(predictions, size=20)   # predictions.jsonl records
  view = review.example_view(splits["test"], index)  # what example `index` is

`review_queue` picks, from an evaluation's predictions, the examples most worth a
person's time: in classification the most confidently wrong (the model was sure
and the label disagrees: a model error, or a label error) and the least confident
(where the model hesitates); in regression the largest errors.

`example_view` shows an example as the person knows it, not as the model sees it:
the text of a JSONL record, a thumbnail of an image (a file of an image folder, or
an image held in an array such as scikit-learn's digits), the row of a table as
read (a CSV file's columns, scikit-learn's features by name, before scaling).
Where a source keeps nothing better, a summary of the model inputs.
"""
import base64
import io
from typing import Any

import numpy as np
from PIL import Image

# The longest side of a thumbnail, in pixels.
THUMBNAIL_SIZE = 96
# A text longer than this is cut in the view (the id still names the record).
MAX_TEXT_CHARS = 2000


def review_queue(predictions: list[dict], size: int) -> dict[str, list[dict]]:
  """The examples a reviewer should see first, most important first.

  Args:
    predictions: records of predictions.jsonl ({"index", "id", "label",
      "prediction", "scores", "confidence"}).
    size: the most examples in each list.

  Returns:
    Classification (integer labels): {"confidently_wrong": wrong predictions by
    decreasing confidence, "least_confident": the others by increasing
    confidence}. Multilabel (lists of 0/1 labels): the same, a record's
    confidence being that of its least certain label decision (the distance of
    its probability from 0.5, doubled), and a wrong record's that of its most
    certain wrong one. Regression (confidence null): {"largest_errors": by
    decreasing absolute error, averaged over the targets of several}. The
    records themselves, or copies with "error" added (regression) or
    "confidence" replaced (multilabel); ties keep split order.
  """
  if not predictions:
    return {}
  first = predictions[0]
  if first.get("confidence") is None:
    errors = [float(np.mean(np.abs(np.subtract(p["prediction"], p["label"]))))
              for p in predictions]
    order = np.argsort(-np.asarray(errors), kind="stable")[:size]
    return {"largest_errors": [{**predictions[i], "error": errors[i]}
                               for i in order]}
  # (record, confidence in its mistake or None if right), in split order.
  if isinstance(first["label"], list):
    ranked = [_multilabel_ranking(p) for p in predictions]
  else:
    ranked = [(p, p["confidence"] if p["prediction"] != p["label"] else None)
              for p in predictions]
  wrong = sorted((r for r in ranked if r[1] is not None), key=lambda r: -r[1])
  wrong = [record for record, _ in wrong[:size]]
  shown = {r["index"] for r in wrong}
  # An example already among the confident mistakes is not shown twice.
  doubtful = sorted((record for record, _ in ranked if record["index"] not in shown),
                    key=lambda r: r["confidence"])[:size]
  return {"confidently_wrong": wrong, "least_confident": doubtful}


def _multilabel_ranking(prediction: dict) -> tuple[dict, float | None]:
  """The record with "confidence" that of its least certain label, and the
  confidence of its most certain wrong label (None if every label is right)."""
  scores = np.asarray(prediction["scores"], np.float64)
  certainty = np.abs(scores - 0.5) * 2
  mistakes = np.asarray(prediction["prediction"]) != np.asarray(prediction["label"])
  record = {**prediction, "confidence": float(certainty.min())}
  return record, float(certainty[mistakes].max()) if mistakes.any() else None


def example_view(source: Any, index: int) -> dict[str, Any]:
  """What example `index` of a split is, for a person.

  Args:
    source: a split as `ctjax.data.splits.open_splits` returns it (a source, or a
      Subset of one, possibly encoded).
    index: the example's position in the split (predictions.jsonl's "index").

  Returns:
    {"kind": "text", "text": str} for text records;
    {"kind": "image", "src": "data:image/png;base64,...", "path": str or None}
      for images (files or arrays);
    {"kind": "table", "columns": {name: text or None where missing}} for table
      rows;
    {"kind": "values", "text": str}: a summary of the model inputs otherwise.
    With "location" (file:line, path) when the source knows where it came from.
  """
  location = source.location(index) if hasattr(source, "location") else None
  # A Subset holds examples of a larger source: find the example there.
  while hasattr(source, "source") and hasattr(source, "indices"):
    source, index = source.source, int(source.indices[index])
  view = _view(source, index)
  if location is not None:
    view["location"] = str(location)
  return view


def _view(source: Any, index: int) -> dict[str, Any]:
  raw = getattr(source, "raw", source)  # Tokenised JSONL records keep the raw ones.
  if hasattr(raw, "texts"):
    return _text_view(raw.texts[index])
  if hasattr(source, "paths"):  # Image folders, decoded or not.
    return _image_file_view(source.paths[index])
  # Tables keep their columns as read (an encoded table's inputs are scaled and
  # one-hot), scikit-learn's tables their features by name, before scaling.
  if getattr(source, "columns", None):
    return {"kind": "table", "columns": {name: _cell(values[index])
                                         for name, values in source.columns.items()}}
  inputs = np.asarray(source[index]["inputs"])
  if _looks_like_image(inputs):
    return {"kind": "image", "src": _png_data_uri(_to_uint8(inputs)), "path": None}
  return {"kind": "values", "text": _summarise(inputs)}


def _text_view(text: str) -> dict[str, Any]:
  if len(text) > MAX_TEXT_CHARS:
    text = (text[:MAX_TEXT_CHARS] +
            f" ... [{len(text) - MAX_TEXT_CHARS} more characters]")
  return {"kind": "text", "text": text}


def _image_file_view(path: str) -> dict[str, Any]:
  with Image.open(path) as image:
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
  return {"kind": "image", "path": path, "src": _data_uri(buffer.getvalue())}


def _looks_like_image(inputs: np.ndarray) -> bool:
  """[H, W] or [H, W, 1|3] with both sides at least 4: a picture, not features."""
  return (inputs.ndim == 2 or (inputs.ndim == 3 and inputs.shape[-1] in (1, 3))) \
      and min(inputs.shape[:2]) >= 4


def _to_uint8(inputs: np.ndarray) -> np.ndarray:
  """Pixels as uint8: floats in [0, 1] are scaled, others stretched to 0..255."""
  if inputs.dtype == np.uint8:
    return inputs
  x = inputs.astype(np.float64)
  low, high = (0.0, 1.0) if x.min() >= 0 and x.max() <= 1 else (x.min(), x.max())
  return np.round(255 * (x - low) / max(high - low, 1e-12)).astype(np.uint8)


def _png_data_uri(pixels: np.ndarray) -> str:
  image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and
                          pixels.shape[-1] == 1 else pixels)
  # Nearest-neighbour upscaling keeps an 8x8 digit's pixels crisp, not blurred.
  scale = max(1, THUMBNAIL_SIZE // max(image.size))
  image = image.resize((image.width * scale, image.height * scale),
                       Image.Resampling.NEAREST)
  image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return _data_uri(buffer.getvalue())


def _data_uri(png: bytes) -> str:
  return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _summarise(inputs: np.ndarray) -> str:
  """The shape, range and first values of model inputs."""
  flat = inputs.ravel()
  if flat.size == 0:
    return f"inputs {inputs.dtype}{list(inputs.shape)}: empty"
  head = ", ".join(f"{v:.4g}" if np.issubdtype(flat.dtype, np.floating) else str(v)
                   for v in flat[:12])
  more = ", ..." if flat.size > 12 else ""
  return (f"inputs {inputs.dtype}{list(inputs.shape)}, min {flat.min():.4g}, "
          f"max {flat.max():.4g}: [{head}{more}]")


def _cell(value: Any) -> str | None:
  """A table value as text: numbers to 6 significant digits, None if missing."""
  if isinstance(value, (tuple, list)):  # A multi-label field's names.
    return ", ".join(map(str, value))
  if value is None or (isinstance(value, float) and np.isnan(value)):
    return None
  if isinstance(value, (float, np.floating)):
    return format(float(value), ".6g")
  return str(value)
