"""CVAT's wire formats, built exactly as CVAT's lambda_manager reads them.

Detector answers are a JSON array of ``{label, type, points, confidence}``
(cvat-contract.md §2.4): ``points`` is a flat list of plain floats, labels are
the names the function publishes, confidence is a string by CVAT convention
(CVAT ignores it). Requests are parsed here too, so handlers stay thin.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from common.errors import BadRequest


def _coords(values: np.ndarray | Sequence[float]) -> list[float]:
    # Plain Python floats (json.dumps refuses numpy scalars), 2 decimals is
    # far below a pixel and keeps answers small.
    return [round(float(v), 2) for v in np.asarray(values, dtype=np.float64).ravel()]


def _confidence(score: float) -> str:
    return f"{float(score):.4f}"


def rectangle(label: str, box: Sequence[float], score: float) -> dict[str, Any]:
    """A rectangle: ``points`` = [xtl, ytl, xbr, ybr]."""
    return {"label": label, "type": "rectangle", "points": _coords(box), "confidence": _confidence(score)}


def polygon(label: str, xy: np.ndarray, score: float) -> dict[str, Any]:
    """A polygon: ``points`` = [x0, y0, x1, y1, ...]."""
    return {"label": label, "type": "polygon", "points": _coords(xy), "confidence": _confidence(score)}


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


def parse_detector_request(body: Any) -> DetectorRequest:
    """CVAT detector payload: ``{"image": <base64>, "threshold"?: number}``."""
    data = parse_body(body)
    image = data.get("image")
    if image is None or image == "":
        raise BadRequest("missing 'image' (base64-encoded picture)")
    if not isinstance(image, (str, bytes)):
        raise BadRequest(f"'image' must be a base64 string, not {type(image).__name__}")
    return DetectorRequest(image=image, threshold=parse_threshold(data.get("threshold")))
