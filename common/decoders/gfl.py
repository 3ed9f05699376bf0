"""``gfl``: anchor-free Generalized-Focal-Loss heads (PP-PicoDet, NanoDet, GFL).

Per stride s the model outputs a score map ``[1, N_s, C]`` and a box-distribution map
``[1, N_s, 4*(reg_max+1)]``, N_s = ceil(H/s) * ceil(W/s) cells in row-major order (H, W = the
input tensor's size). For each cell and each side (left, top, right, bottom) the box map holds
``reg_max+1`` logits over the distances 0..reg_max (in units of the stride); the distance is the
expectation under their softmax, times the stride. The cell centre is
``((col + cell_offset) * s, (row + cell_offset) * s)`` and the box is
``[cx - left, cy - top, cx + right, cy + bottom]``, clipped to the input.

Maps are matched to strides by their candidate count N_s, so output order does not matter; a
map is a score map when its width is the class count and a box map when it is 4*(reg_max+1)
(if those are equal, the first half of the outputs are scores, as PaddleDetection exports them).

Scoring follows PaddleDetection/rapid-layout: the best ``pre_nms_top_k`` cells of each stride
(by their best class score), then every (cell, class) pair with score >= the threshold is a
candidate (``multi_label``; or only each cell's best class), then NMS per class.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np

from common.decoders import DecodeContext, Detections, param_defaults, register
from common.decoders import class_counter, static_dims
from common.decoders.nms import nms, nms_params
from common.errors import ModelConfigError

log = logging.getLogger(__name__)

PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "gfl decoder parameters",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "strides": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 1024},
            "minItems": 1,
            "maxItems": 16,
            "uniqueItems": True,
            "default": [8, 16, 32, 64],
            "description": "Feature-map strides of the head, one score map and one box map each. "
                           "Default [8, 16, 32, 64] (PP-PicoDet).",
        },
        "reg_max": {
            "type": "integer",
            "minimum": 1,
            "maximum": 256,
            "default": 7,
            "description": "Distance bins per side are 0..reg_max, so box maps have 4*(reg_max+1) "
                           "channels. Default 7 (32 channels).",
        },
        "scores_activation": {
            "type": "string",
            "enum": ["none", "sigmoid"],
            "default": "none",
            "description": "'none' (default) when the score maps are already probabilities (PicoDet "
                           "ONNX exports apply the sigmoid in the graph); 'sigmoid' when they are logits.",
        },
        "cell_offset": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0.5,
            "description": "Cell centre offset in cells: centre = (index + cell_offset) * stride. "
                           "Default 0.5 (PP-PicoDet; some older GFL heads use 0).",
        },
        "multi_label": {
            "type": "boolean",
            "default": True,
            "description": "True (default, as PaddleDetection): a cell yields a candidate for every "
                           "class scoring above the threshold. False: only its best class.",
        },
        "pre_nms_top_k": {
            "type": "integer",
            "minimum": 1,
            "default": 1000,
            "description": "Only the best this-many cells of each stride (by best class score) are "
                           "considered. Default 1000 (PaddleDetection's nms_top_k).",
        },
        **nms_params(0.5, 100, source="rapid-layout's iou_thres, PaddleDetection's keep_top_k"),
    },
}

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _fail(message: str) -> ModelConfigError:
    return ModelConfigError([("$.output.decoder", f"gfl: {message}")])


def _split_maps(outputs: Mapping[str, np.ndarray], bins: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Batch item 0 of every output, as (N_s, C) score maps and (N_s, 4*bins) box maps."""
    maps = []
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 3:
            value = value[0]
        if value.ndim != 2:
            raise _fail(f"output {name!r} has shape {list(np.shape(outputs[name]))}, expected [1, N, channels]")
        maps.append(value)
    box_width = 4 * bins
    widths = {m.shape[1] for m in maps}
    if widths == {box_width}:  # as many classes as box channels: PaddleDetection order (scores first)
        half = len(maps) // 2
        return maps[:half], maps[half:]
    scores = [m for m in maps if m.shape[1] != box_width]
    boxes = [m for m in maps if m.shape[1] == box_width]
    if len({m.shape[1] for m in scores}) > 1:
        raise _fail(f"score maps disagree on the class count: {sorted({m.shape[1] for m in scores})}; "
                    f"are reg_max ({bins - 1}) and the outputs right?")
    return scores, boxes


def _by_count(maps: list[np.ndarray], count: int, what: str, stride: int) -> np.ndarray:
    found = [m for m in maps if m.shape[0] == count]
    if len(found) != 1:
        raise _fail(f"expected one {what} map with {count} cells for stride {stride}, found {len(found)} "
                    f"(cells per map: {[m.shape[0] for m in maps]})")
    return found[0]


def _softmax_expectation(logits: np.ndarray, bins: int) -> np.ndarray:
    """(N, 4*bins) logits -> (N, 4) expected bin index per side."""
    x = logits.reshape(-1, 4, bins).astype(np.float64)
    x = x - x.max(axis=2, keepdims=True)
    e = np.exp(x)
    return (e * np.arange(bins)).sum(axis=2) / e.sum(axis=2)


@register("gfl", PARAMS_SCHEMA)
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    bins = p["reg_max"] + 1
    score_maps, box_maps = _split_maps(outputs, bins)
    strides = p["strides"]
    if len(score_maps) != len(strides) or len(box_maps) != len(strides):
        raise _fail(f"{len(strides)} strides {strides} but {len(score_maps)} score maps and {len(box_maps)} "
                    f"box maps (box maps have {4 * bins} channels for reg_max {p['reg_max']})")
    in_h, in_w = ctx.input_hw

    all_boxes, all_scores = [], []
    for stride in strides:
        rows, cols = math.ceil(in_h / stride), math.ceil(in_w / stride)
        count = rows * cols
        score = _by_count(score_maps, count, "score", stride).astype(np.float32)
        dist = _by_count(box_maps, count, "box", stride)
        if p["scores_activation"] == "sigmoid":
            score = 1.0 / (1.0 + np.exp(-score))
        best = score.max(axis=1)
        top = np.argsort(-best, kind="stable")[: p["pre_nms_top_k"]]
        top = top[best[top] >= ctx.score_threshold]
        if not top.shape[0]:
            continue
        cy = (top // cols + p["cell_offset"]) * stride
        cx = (top % cols + p["cell_offset"]) * stride
        ltrb = _softmax_expectation(dist[top], bins) * stride
        boxes = np.stack([cx - ltrb[:, 0], cy - ltrb[:, 1], cx + ltrb[:, 2], cy + ltrb[:, 3]], axis=1)
        all_boxes.append(boxes)
        all_scores.append(score[top])
    if not all_boxes:
        return Detections.empty()

    boxes = np.concatenate(all_boxes).astype(np.float32)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, in_w)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, in_h)
    scores = np.concatenate(all_scores)
    if p["multi_label"]:
        cell, class_ids = np.nonzero(scores >= ctx.score_threshold)
    else:
        cell = np.arange(scores.shape[0])
        class_ids = np.argmax(scores, axis=1)
    cand_scores = scores[cell, class_ids].astype(np.float32)
    cand_boxes = boxes[cell]
    class_ids = class_ids.astype(np.int64)
    picked = nms(cand_boxes, cand_scores, p["iou_threshold"], class_ids, p["class_agnostic"], p["max_detections"])
    log.debug("gfl: %d candidates, %d after NMS", cand_scores.shape[0], picked.shape[0])
    return Detections(cand_boxes[picked], cand_scores[picked], class_ids[picked])


@class_counter("gfl")
def class_count(runtime_outputs, params: Mapping[str, Any]) -> int | None:
    """C, the width of the score maps [1, N_s, C] (box maps are 4*(reg_max+1) wide; when
    every map has that width, C is that width too). None for dynamic or odd shapes."""
    p = {**_DEFAULTS, **params}
    box_width = 4 * (p["reg_max"] + 1)
    widths = []
    for info in runtime_outputs:
        dims = static_dims(info.shape)
        if dims is None or len(dims) not in (2, 3):
            return None
        widths.append(dims[-1])
    score_widths = {w for w in widths if w != box_width}
    if not widths:
        return None
    if not score_widths:
        return box_width
    return score_widths.pop() if len(score_widths) == 1 else None
