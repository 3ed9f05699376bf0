"""``db_text``: DB (Differentiable Binarization) text detection — PaddleOCR / RapidOCR detectors.

The model outputs a text-probability map ``[1, 1, h, w]`` (``[1, h, w]`` and ``[h, w]`` are accepted
too), normally the input's own size; if smaller, coordinates are scaled up to the input. Steps:

1. binarise: ``prob > binary_threshold`` (optionally dilated with a 2x2 kernel, ``use_dilation``);
2. ``cv2.findContours`` (external and inner, simple chains); the first ``max_candidates`` are used;
3. per contour, the minimum-area rotated rectangle; shorter side < ``min_size`` -> dropped;
4. score = mean probability inside the shape (``score_mode`` "fast": the rotated rectangle, or in
   "contour" mode the simplified polygon; "slow": the exact contour); score < the request's
   threshold -> dropped;
5. "unclip": DB shrinks text regions during training, so each shape is grown back by
   ``d = area * unclip_ratio / perimeter`` on every side. Without pyclipper:

   * ``polygon_mode: "quad"``: the rotated rectangle is grown by ``d`` on each side
     (w + 2d, h + 2d, same centre and angle). This is exactly the minimum-area rectangle of
     the round-joined offset polygon PaddleOCR computes with pyclipper, since its input is the
     same rectangle.
   * ``polygon_mode: "contour"``: the polygon (``cv2.approxPolyDP`` with
     ``epsilon = epsilon_ratio * perimeter``) is rasterised and grown with a Euclidean distance
     transform (every pixel within ``d`` joins: a round-joined offset, to the pixel grid), then
     traced and simplified again;
6. the grown shape's shorter side < ``min_size + 2`` -> dropped.

Each detection carries its polygon (quad: 4 corners clockwise from top-left) and its axis-aligned
box, all of class ``label_id``, sorted by score.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import cv2
import numpy as np

from common.decoders import (DecodeContext, Detections, output_named, output_param, param_defaults,
                             params_schema, register)
from common.errors import ModelConfigError

log = logging.getLogger(__name__)

PARAMS_SCHEMA: dict[str, Any] = params_schema("db_text decoder parameters", {
        "output": output_param("the probability map"),
        "binary_threshold": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.3,
            "description": "Pixels with probability above this are text when binarising. Default 0.3.",
        },
        "use_dilation": {
            "type": "boolean",
            "default": False,
            "description": "Dilate the binary map with a 2x2 kernel before finding contours (joins "
                           "broken strokes; RapidOCR turns it on). Default false.",
        },
        "score_mode": {
            "type": "string",
            "enum": ["fast", "slow"],
            "default": "fast",
            "description": "How a region is scored: 'fast' (default) mean probability inside its "
                           "rotated rectangle (in contour mode: its simplified polygon); 'slow' inside "
                           "the exact contour.",
        },
        "unclip_ratio": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 10,
            "default": 1.5,
            "description": "Growth of each region: it is offset outwards by area * unclip_ratio / "
                           "perimeter. Default 1.5 (PaddleOCR; RapidOCR uses 1.6).",
        },
        "min_size": {
            "type": "number",
            "minimum": 0,
            "default": 3,
            "description": "Regions whose rotated rectangle's shorter side (map pixels) is below this "
                           "are dropped; after growing, below min_size + 2. Default 3.",
        },
        "max_candidates": {
            "type": "integer",
            "minimum": 1,
            "maximum": 100000,
            "default": 1000,
            "description": "At most this many contours are examined. Default 1000.",
        },
        "polygon_mode": {
            "type": "string",
            "enum": ["quad", "contour"],
            "default": "quad",
            "description": "Polygon returned: 'quad' (default) the 4 corners of the grown rotated "
                           "rectangle; 'contour' the grown outline, simplified (curved text).",
        },
        "epsilon_ratio": {
            "type": "number",
            "exclusiveMinimum": 0,
            "default": 0.002,
            "description": "With polygon_mode 'contour': cv2.approxPolyDP tolerance as a fraction of the "
                           "outline's perimeter. Default 0.002 (PaddleOCR's polygon mode).",
        },
        "label_id": {
            "type": "integer",
            "minimum": 0,
            "maximum": 10000000,
            "default": 0,
            "description": "Class id given to every detection (the model has one class). Default 0.",
        },
})

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _prob_map(outputs: Mapping[str, np.ndarray], key: str | int | None) -> np.ndarray:
    value = output_named(outputs, key, "output")
    value = np.asarray(value, np.float32)
    if value.ndim == 4:  # [batch, 1, h, w]: batch item 0, channel 0
        value = value[0, 0]
    elif value.ndim == 3:  # [batch, h, w]
        value = value[0]
    if value.ndim != 2:
        raise ModelConfigError([("$.output.decoder.output", f"expected a probability map [1, 1, h, w], "
                                                           f"got {list(np.shape(value))}")])
    return value


def _mean_inside(prob: np.ndarray, polygon: np.ndarray) -> float:
    """Mean of ``prob`` over the pixels covered by ``polygon`` (float (K, 2) x, y)."""
    h, w = prob.shape
    x0 = int(np.clip(np.floor(polygon[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(np.ceil(polygon[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(np.floor(polygon[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(np.ceil(polygon[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    local = (polygon - np.asarray([x0, y0], np.float32)).astype(np.int32)
    cv2.fillPoly(mask, [local.reshape(-1, 1, 2)], 1)
    inside = mask.astype(bool)
    if not inside.any():
        return 0.0
    return float(prob[y0:y1 + 1, x0:x1 + 1][inside].mean())


def _order_clockwise(quad: np.ndarray) -> np.ndarray:
    """4 points clockwise on screen (y down), starting at the top-left one (smallest x + y)."""
    centre = quad.mean(axis=0)
    angles = np.arctan2(quad[:, 1] - centre[1], quad[:, 0] - centre[0])
    quad = quad[np.argsort(angles, kind="stable")]
    return np.roll(quad, -int(np.argmin(quad.sum(axis=1))), axis=0)


def _grow_polygon(polygon: np.ndarray, distance: float, epsilon_ratio: float) -> np.ndarray | None:
    """Round-joined outward offset of ``polygon`` by ``distance``, traced on the pixel grid."""
    margin = int(math.ceil(distance)) + 2
    origin = np.floor(polygon.min(axis=0)) - margin
    size = np.ceil(polygon.max(axis=0) - origin).astype(int) + margin + 1
    inside = np.zeros((size[1], size[0]), np.uint8)
    cv2.fillPoly(inside, [np.round(polygon - origin).astype(np.int32).reshape(-1, 1, 2)], 1)
    # distance of every outside pixel to the nearest inside pixel
    dist = cv2.distanceTransform((1 - inside).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    grown = (dist <= distance).astype(np.uint8)
    contours, _ = cv2.findContours(grown, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    outline = max(contours, key=cv2.contourArea)
    outline = cv2.approxPolyDP(outline, epsilon_ratio * cv2.arcLength(outline, True), True)
    return outline.reshape(-1, 2).astype(np.float32) + origin.astype(np.float32)


@register("db_text", PARAMS_SCHEMA)
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    prob = _prob_map(outputs, p["output"])
    map_h, map_w = prob.shape
    in_h, in_w = ctx.input_hw
    to_input = np.asarray([in_w / map_w, in_h / map_h], np.float32)

    bitmap = (prob > p["binary_threshold"]).astype(np.uint8)
    if p["use_dilation"]:
        bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)

    polygons, scores = [], []
    min_size = p["min_size"]
    for contour in contours[: p["max_candidates"]]:
        (cx, cy), (rw, rh), angle = cv2.minAreaRect(contour)
        if min(rw, rh) < min_size:
            continue
        points = contour.reshape(-1, 2).astype(np.float32)
        if p["polygon_mode"] == "quad":
            shape = cv2.boxPoints(((cx, cy), (rw, rh), angle))
            area, perimeter = rw * rh, 2.0 * (rw + rh)
        else:
            shape = cv2.approxPolyDP(contour, p["epsilon_ratio"] * cv2.arcLength(contour, True), True)
            shape = shape.reshape(-1, 2).astype(np.float32)
            if shape.shape[0] < 4:
                continue
            area, perimeter = abs(cv2.contourArea(shape)), cv2.arcLength(shape.reshape(-1, 1, 2), True)
        score = _mean_inside(prob, points if p["score_mode"] == "slow" else shape)
        if score < ctx.score_threshold or perimeter <= 0:
            continue
        # Never grow past the map itself: the shape is clipped to it anyway.
        distance = min(area * p["unclip_ratio"] / perimeter, float(max(prob.shape)))
        if p["polygon_mode"] == "quad":
            grown = ((cx, cy), (rw + 2 * distance, rh + 2 * distance), angle)
            if min(grown[1]) < min_size + 2:
                continue
            polygon = _order_clockwise(cv2.boxPoints(grown))
        else:
            polygon = _grow_polygon(shape, distance, p["epsilon_ratio"])
            if polygon is None or polygon.shape[0] < 3:
                continue
            if min(cv2.minAreaRect(polygon.reshape(-1, 1, 2))[1]) < min_size + 2:
                continue
        polygon = polygon * to_input
        polygon[:, 0] = np.clip(polygon[:, 0], 0, in_w)
        polygon[:, 1] = np.clip(polygon[:, 1], 0, in_h)
        polygons.append(polygon.astype(np.float32))
        scores.append(score)

    if not polygons:
        return Detections.empty()
    order = np.argsort(-np.asarray(scores), kind="stable")
    polygons = [polygons[i] for i in order]
    boxes = np.asarray([[q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()] for q in polygons],
                       np.float32)
    scores_arr = np.asarray(scores, np.float32)[order]
    log.debug("db_text: %d contours, %d text regions", len(contours), len(polygons))
    return Detections(boxes, scores_arr, np.full(len(polygons), p["label_id"], np.int64), polygons)
