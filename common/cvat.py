"""CVAT's wire formats, built exactly as CVAT's lambda_manager reads them.

Detector answers are a JSON array of ``{label, type, points, confidence}``
(cvat-contract.md §2.4): ``points`` is a flat list of plain floats, labels are
the names the function publishes, confidence is a string by CVAT convention
(CVAT ignores it). Every shape type a detector may return has its builder
here: rectangles (optionally rotated), polygons, points, masks (raw crop +
inclusive box, with a polygon for "Return masks as polygons"), skeletons and
tags; attribute values are always strings. CVAT's mask RLE (what CVAT stores,
and what interactors answer) is encoded and decoded here only. Requests are
parsed here too, so handlers stay thin. Everything returned is plain Python
(ints, floats, strings), so ``json.dumps`` with the default encoder works.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cv2
import numpy as np

from common.errors import BadRequest


def _coords(values: np.ndarray | Sequence[float]) -> list[float]:
    # Plain Python floats (json.dumps refuses numpy scalars), 2 decimals is
    # far below a pixel and keeps answers small.
    return [round(float(v), 2) for v in np.asarray(values, dtype=np.float64).ravel()]


def _confidence(score: float) -> str:
    return f"{float(score):.4f}"


def attributes(values: Mapping[str, Any]) -> list[dict[str, str]]:
    """CVAT's ``attributes`` list: ``[{"name", "value"}]`` with every value a string
    (booleans as ``"true"``/``"false"``, whole floats without ``.0``)."""
    out = []
    for name, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (float, np.floating)) and float(value).is_integer():
            text = str(int(value))
        elif isinstance(value, np.generic):
            text = str(value.item())
        else:
            text = str(value)
        out.append({"name": str(name), "value": text})
    return out


def _with_attributes(item: dict[str, Any], attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    if attrs:
        item["attributes"] = attributes(attrs)
    return item


def rectangle(label: str, box: Sequence[float], score: float, rotation: float = 0.0,
              attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A rectangle: ``points`` = [xtl, ytl, xbr, ybr]; ``rotation`` (degrees,
    clockwise about the centre, the box given unrotated) only when not 0."""
    item = {"label": label, "type": "rectangle", "points": _coords(box), "confidence": _confidence(score)}
    angle = round(float(rotation) % 360.0, 2)
    if angle not in (0.0, 360.0):
        item["rotation"] = angle
    return _with_attributes(item, attrs)


def polygon(label: str, xy: np.ndarray, score: float, attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A polygon: ``points`` = [x0, y0, x1, y1, ...] (see :func:`clean_polygon`)."""
    return _with_attributes({"label": label, "type": "polygon", "points": _coords(xy),
                             "confidence": _confidence(score)}, attrs)


def points(label: str, xy: np.ndarray, score: float, attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A points shape: ``points`` = [x0, y0, x1, y1, ...], at least one point."""
    coords = _coords(xy)
    if len(coords) < 2 or len(coords) % 2:
        raise ValueError(f"points need x, y pairs, got {len(coords)} values")
    return _with_attributes({"label": label, "type": "points", "points": coords,
                             "confidence": _confidence(score)}, attrs)


def tag(label: str, score: float, attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A tag: a class of the whole image (no points)."""
    return _with_attributes({"label": label, "type": "tag", "confidence": _confidence(score)}, attrs)


def skeleton_point(label: str, xy: Sequence[float], outside: bool = False,
                   attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One element of a skeleton: the sublabel's point, ``outside`` when not seen."""
    coords = _coords(xy)
    if len(coords) != 2:
        raise ValueError(f"a skeleton point is one x, y pair, got {len(coords)} values")
    return _with_attributes({"label": label, "type": "points", "points": coords, "outside": bool(outside)}, attrs)


def skeleton(label: str, elements: Sequence[dict[str, Any]], score: float,
             attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A skeleton of :func:`skeleton_point` elements, each sublabel once.

    CVAT drops a skeleton whose points are all outside; so does this builder's
    caller (it raises here, since such a skeleton is a mistake)."""
    names = [e["label"] for e in elements]
    if not names:
        raise ValueError("a skeleton needs at least one element")
    if len(set(names)) != len(names):
        raise ValueError(f"skeleton {label!r}: every sublabel once, got {names}")
    if all(e.get("outside") for e in elements):
        raise ValueError(f"skeleton {label!r}: every point is outside")
    return _with_attributes({"label": label, "type": "skeleton", "elements": [dict(e) for e in elements],
                             "confidence": _confidence(score)}, attrs)


def clean_polygon(xy: np.ndarray) -> np.ndarray | None:
    """The (K, 2) polygon rounded to 2 decimals (as sent) without repeated
    neighbours (first and last included); None when it keeps fewer than 3
    distinct vertices or encloses no area."""
    xy = np.round(np.asarray(xy, np.float64).reshape(-1, 2), 2)
    if len(xy) == 0:
        return None
    keep = np.any(xy != np.roll(xy, 1, axis=0), axis=1)
    xy = xy[keep] if keep.any() else xy[:1]
    if len(xy) < 3 or len(np.unique(xy, axis=0)) < 3:
        return None
    x, y = xy[:, 0], xy[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return xy if area > 0 else None


# -- masks ---------------------------------------------------------------------


def rle_encode(bitmap: np.ndarray) -> list[int]:
    """CVAT's mask RLE of ``bitmap`` (any shape, non-zero = inside), row-major:
    alternating run lengths starting with a background run (0 when the first
    pixel is inside). The box CVAT appends is the caller's (``+ [x1, y1, x2, y2]``)."""
    flat = np.asarray(bitmap).ravel() != 0
    if flat.size == 0:
        return []
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], edges, [flat.size]))).tolist()
    return ([0] + runs) if flat[0] else runs


def rle_decode(rle: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """The bool (h, w) bitmap of CVAT RLE ``rle`` (no box); ValueError when the
    runs do not cover exactly h * w pixels."""
    runs = np.asarray(rle, dtype=np.int64).ravel()
    h, w = int(shape[0]), int(shape[1])
    if np.any(runs < 0) or int(runs.sum()) != h * w:
        raise ValueError(f"RLE runs sum to {int(runs.sum())}, the {w}x{h} box has {h * w} pixels")
    values = np.arange(runs.size) % 2 == 1  # runs alternate background, foreground, ...
    return np.repeat(values, runs).reshape(h, w)


def mask_rle_points(bitmap: np.ndarray, origin: tuple[int, int] = (0, 0)) -> list[int]:
    """CVAT's mask ``points`` (stored shapes, interactor answers): RLE of
    ``bitmap`` + its inclusive box ``[x1, y1, x2, y2]``, ``bitmap[0, 0]`` at ``origin``."""
    h, w = np.asarray(bitmap).shape[:2]
    x, y = int(origin[0]), int(origin[1])
    return rle_encode(bitmap) + [x, y, x + w - 1, y + h - 1]


def parse_mask_rle_points(values: Sequence[int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The inverse of :func:`mask_rle_points`: (bool bitmap, inclusive box)."""
    values = [int(v) for v in values]
    if len(values) < 5:
        raise ValueError("mask points need runs and a 4-value box")
    x1, y1, x2, y2 = values[-4:]
    if x2 < x1 or y2 < y1:
        raise ValueError(f"mask box [{x1}, {y1}, {x2}, {y2}] is empty")
    return rle_decode(values[:-4], (y2 - y1 + 1, x2 - x1 + 1)), (x1, y1, x2, y2)


def mask_polygon(bitmap: np.ndarray, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A polygon for a mask: the outline of its largest part through the
    centres of its border pixels (what CVAT's own examples send), offset by
    ``origin``; a part too thin for that (a line, a pixel) gets the rectangle
    around its pixels instead. Empty bitmaps are a ValueError."""
    inside = (np.asarray(bitmap) != 0).astype(np.uint8)
    if not inside.any():
        raise ValueError("the mask has no pixel inside")
    contours, _ = cv2.findContours(inside, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    best = max(contours, key=lambda c: (cv2.contourArea(c), len(c)))
    xy = clean_polygon(best.reshape(-1, 2).astype(np.float64))
    if xy is None:
        bx, by, bw, bh = cv2.boundingRect(best)
        xy = np.array([[bx, by], [bx + bw, by], [bx + bw, by + bh], [bx, by + bh]], np.float64)
    return xy + np.asarray(origin, np.float64)


def mask(label: str, bitmap_crop: np.ndarray, box: Sequence[int], score: float,
         polygon_xy: np.ndarray | None = None, attrs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A mask as CVAT reads it from detectors (cvat-contract.md §2.4): ``mask`` =
    the crop's pixels row-major as 0/255 over the inclusive box
    ``[xtl, ytl, xbr, ybr]``, then those four ints; ``points`` = a polygon
    (``polygon_xy``, or :func:`mask_polygon` of the crop), used when CVAT is
    asked to return masks as polygons."""
    crop = np.asarray(bitmap_crop) != 0
    if crop.ndim != 2:
        raise ValueError(f"a mask crop is 2-D, got shape {crop.shape}")
    x1, y1, x2, y2 = (int(v) for v in box)
    if crop.shape != (y2 - y1 + 1, x2 - x1 + 1):
        raise ValueError(f"mask crop {crop.shape[1]}x{crop.shape[0]} does not fill the inclusive box "
                         f"[{x1}, {y1}, {x2}, {y2}]")
    if polygon_xy is None:
        polygon_xy = mask_polygon(crop, (x1, y1))
    values = np.where(crop, 255, 0).astype(np.uint8).ravel().tolist() + [x1, y1, x2, y2]
    return _with_attributes({"label": label, "type": "mask", "points": _coords(polygon_xy), "mask": values,
                             "confidence": _confidence(score)}, attrs)


@dataclass(frozen=True)
class DetectorRequest:
    image: bytes | str
    threshold: float | None


def parse_body(body: Any) -> dict[str, Any]:
    """The JSON object of a request body (Nuclio gives a dict only for an
    exact ``application/json`` content type; bytes or str otherwise)."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        if not body.strip():
            raise BadRequest("empty request body; expected a JSON object with 'image'")
        try:
            body = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from None
        except RecursionError:
            raise BadRequest("request body is not valid JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def _shown(value: Any, limit: int = 60) -> str:
    """A request value quoted in an error message: JSON, and short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


def parse_threshold(value: Any) -> float | None:
    """A number or numeric string (ASCII) in [0, 1]; None when absent."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
        raise BadRequest(f"threshold must be a number in [0, 1], got {_shown(value)}")
    try:
        threshold = float(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"threshold must be a number in [0, 1], got {_shown(value)}") from None
    if not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise BadRequest(f"threshold must be in [0, 1], got {_shown(value)}")
    return threshold


def request_image(data: Mapping[str, Any], key: str = "image") -> bytes | str:
    """The encoded picture under ``key`` of a request object (every function kind sends one)."""
    image = data.get(key)
    if image is None or image == "":
        raise BadRequest(f"missing {key!r} (base64-encoded picture)")
    if not isinstance(image, (str, bytes)):
        raise BadRequest(f"{key!r} must be a base64 string, not {type(image).__name__}")
    return image


def parse_detector_request(body: Any) -> DetectorRequest:
    """CVAT detector payload: ``{"image": <base64>, "threshold"?: number}``."""
    data = parse_body(body)
    return DetectorRequest(image=request_image(data), threshold=parse_threshold(data.get("threshold")))
