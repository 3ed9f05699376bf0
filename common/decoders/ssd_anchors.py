"""``ssd_anchors``: MediaPipe-style anchor SSDs (BlazeFace face detection, palm/pose detectors).

The model outputs raw regressors ``[1, A, 4 + 2K]`` (box, then K keypoints; keypoints are not
returned) and classification logits ``[1, A, C]`` (C is 1 for BlazeFace) for A fixed anchors.
The anchors are generated from the parameters exactly as MediaPipe's ``SsdAnchorsCalculator``
does: for each run of equal strides one feature map of ``ceil(input/stride)`` cells, and per
cell one anchor per (aspect ratio, layer) plus one interpolated-scale anchor per layer; anchor
centres at ``((x + anchor_offset_x) / map_w, (y + anchor_offset_y) / map_h)`` (0..1 of the
input). BlazeFace short range (128x128, strides [8, 16, 16, 16]) has 16*16*2 + 8*8*6 = 896.

Decoding (MediaPipe ``TensorsToDetectionsCalculator``), in 0..1 of the input:
``cx = raw_x / x_scale * anchor_w + anchor_cx`` (same for y), ``w = raw_w / w_scale * anchor_w``,
``h = raw_h / h_scale * anchor_h`` (anchor w = h = 1 with ``fixed_anchor_size``), then scaled to
input pixels. Score = sigmoid(clip(logit, -score_clip, score_clip)), best class per anchor.
Candidates below the threshold are dropped, then NMS (optionally MediaPipe's weighted NMS, which
averages each kept box with the boxes it suppresses).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any, Mapping

import numpy as np

from common.decoders import DecodeContext, Detections, output_named, param_defaults, register
from common.decoders.nms import nms, nms_params, weighted_nms
from common.errors import ModelConfigError

log = logging.getLogger(__name__)


def _number(default: float | None, description: str, **extra: Any) -> dict[str, Any]:
    kind: Any = "number" if default is not None else ["number", "null"]
    return {"type": kind, "default": default, "description": description, **extra}


PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "ssd_anchors decoder parameters",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "regressors": {
            "type": ["string", "integer", "null"],
            "minimum": 0,
            "default": None,
            "description": "Output holding the box regressors [1, A, 4+2K]: tensor name or 0-based index. "
                           "Default null: the output whose last dimension is largest.",
        },
        "classificators": {
            "type": ["string", "integer", "null"],
            "minimum": 0,
            "default": None,
            "description": "Output holding the class logits [1, A, C]: tensor name or 0-based index. "
                           "Default null: the other output (last dimension smallest, 1 for BlazeFace).",
        },
        "num_layers": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": "MediaPipe num_layers; must equal the number of strides. Default null: "
                           "len(strides).",
        },
        "strides": {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": 1024},
            "minItems": 1,
            "maxItems": 16,
            "default": [8, 16, 16, 16],
            "description": "Stride of each layer; consecutive equal strides share one feature map. "
                           "Default [8, 16, 16, 16] (BlazeFace short range, 896 anchors at 128x128).",
        },
        "min_scale": _number(0.1484375, "Anchor scale of the first layer (0..1 of the input). Default "
                                        "0.1484375 (BlazeFace short range).", exclusiveMinimum=0),
        "max_scale": _number(0.75, "Anchor scale of the last layer. Default 0.75.", exclusiveMinimum=0),
        "input_size_width": {
            "type": ["integer", "null"], "minimum": 1, "maximum": 16384, "default": None,
            "description": "Width the anchors are laid out for. Default null: the input tensor's width.",
        },
        "input_size_height": {
            "type": ["integer", "null"], "minimum": 1, "maximum": 16384, "default": None,
            "description": "Height the anchors are laid out for. Default null: the input tensor's height.",
        },
        "anchor_offset_x": _number(0.5, "Anchor centre offset within a cell, in cells. Default 0.5.",
                                   minimum=0, maximum=1),
        "anchor_offset_y": _number(0.5, "Anchor centre offset within a cell, in cells. Default 0.5.",
                                   minimum=0, maximum=1),
        "aspect_ratios": {
            "type": "array",
            "items": {"type": "number", "exclusiveMinimum": 0},
            "minItems": 1,
            "default": [1.0],
            "description": "Aspect ratios (w/h) of the anchors of every layer. Default [1.0].",
        },
        "interpolated_scale_aspect_ratio": _number(
            1.0, "Aspect ratio of the extra anchor per layer whose scale is the geometric mean of this "
                 "layer's and the next one's; 0 means no extra anchor. Default 1.0.", minimum=0),
        "reduce_boxes_in_lowest_layer": {
            "type": "boolean", "default": False,
            "description": "MediaPipe option: the first layer gets the 3 fixed anchors (scale 0.1, "
                           "ratios 1, 2, 0.5) instead of aspect_ratios. Default false.",
        },
        "fixed_anchor_size": {
            "type": "boolean", "default": True,
            "description": "True (default): every anchor is 1x1, so the regressors are plain sizes. "
                           "False: anchor sizes come from scales and aspect ratios.",
        },
        "box_order": {
            "type": "string", "enum": ["xywh", "yxhw"], "default": "xywh",
            "description": "Order of the 4 box regressors: 'xywh' (default; MediaPipe "
                           "reverse_output_order: true, as in BlazeFace) or 'yxhw'.",
        },
        "box_coord_offset": {
            "type": "integer", "minimum": 0, "default": 0,
            "description": "Index of the first box regressor in each row. Default 0.",
        },
        "x_scale": _number(None, "Divisor of the x regressor. Default null: the anchor input width "
                                 "(128 for BlazeFace).", exclusiveMinimum=0),
        "y_scale": _number(None, "Divisor of the y regressor. Default null: the anchor input height.",
                           exclusiveMinimum=0),
        "w_scale": _number(None, "Divisor of the width regressor. Default null: the anchor input width.",
                           exclusiveMinimum=0),
        "h_scale": _number(None, "Divisor of the height regressor. Default null: the anchor input height.",
                           exclusiveMinimum=0),
        "sigmoid_score": {
            "type": "boolean", "default": True,
            "description": "True (default): the class outputs are logits and go through a sigmoid.",
        },
        "score_clip": _number(100.0, "Logits are clipped to +-score_clip before the sigmoid. Default 100.",
                              exclusiveMinimum=0),
        "weighted_nms": {
            "type": "boolean", "default": False,
            "description": "True: MediaPipe's WEIGHTED suppression (each kept box is the score-weighted "
                           "mean of its group). Default false: plain greedy NMS.",
        },
        **nms_params(0.3, 100, source="MediaPipe face detection"),
    },
}

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _fail(message: str, param: str = "") -> ModelConfigError:
    return ModelConfigError([(f"$.output.decoder{'.' + param if param else ''}", f"ssd_anchors: {message}")])


def _layer_scale(min_scale: float, max_scale: float, index: int, count: int) -> float:
    if count == 1:
        return (min_scale + max_scale) / 2.0
    return min_scale + (max_scale - min_scale) * index / (count - 1.0)


@functools.lru_cache(maxsize=32)
def generate_anchors(strides: tuple[int, ...], input_hw: tuple[int, int], *, min_scale: float = 0.1484375,
                     max_scale: float = 0.75, anchor_offset_x: float = 0.5, anchor_offset_y: float = 0.5,
                     aspect_ratios: tuple[float, ...] = (1.0,), interpolated_scale_aspect_ratio: float = 1.0,
                     reduce_boxes_in_lowest_layer: bool = False, fixed_anchor_size: bool = True) -> np.ndarray:
    """(A, 4) float64 anchors ``cx, cy, w, h`` in 0..1 of the input, in MediaPipe's order."""
    height, width = input_hw
    count = len(strides)
    blocks = []
    layer = 0
    while layer < count:
        ratios: list[float] = []
        scales: list[float] = []
        last = layer
        while last < count and strides[last] == strides[layer]:
            scale = _layer_scale(min_scale, max_scale, last, count)
            if last == 0 and reduce_boxes_in_lowest_layer:
                ratios += [1.0, 2.0, 0.5]
                scales += [0.1, scale, scale]
            else:
                ratios += list(aspect_ratios)
                scales += [scale] * len(aspect_ratios)
            if interpolated_scale_aspect_ratio > 0:
                following = 1.0 if last == count - 1 else _layer_scale(min_scale, max_scale, last + 1, count)
                ratios.append(interpolated_scale_aspect_ratio)
                scales.append(math.sqrt(scale * following))
            last += 1
        root = np.sqrt(np.asarray(ratios))
        sizes_w, sizes_h = np.asarray(scales) * root, np.asarray(scales) / root
        map_h, map_w = math.ceil(height / strides[layer]), math.ceil(width / strides[layer])
        ys, xs = np.meshgrid(np.arange(map_h), np.arange(map_w), indexing="ij")
        cx = np.repeat(((xs.reshape(-1) + anchor_offset_x) / map_w), len(ratios))
        cy = np.repeat(((ys.reshape(-1) + anchor_offset_y) / map_h), len(ratios))
        if fixed_anchor_size:
            aw = ah = np.ones_like(cx)
        else:
            aw, ah = np.tile(sizes_w, map_h * map_w), np.tile(sizes_h, map_h * map_w)
        blocks.append(np.stack([cx, cy, aw, ah], axis=1))
        layer = last
    anchors = np.concatenate(blocks)
    anchors.setflags(write=False)
    return anchors


def _select(outputs: Mapping[str, np.ndarray], p: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    reg_key, cls_key = p["regressors"], p["classificators"]
    if reg_key is not None and cls_key is not None:
        return output_named(outputs, reg_key, "regressors"), output_named(outputs, cls_key, "classificators")
    arrays = [np.asarray(v) for v in outputs.values()]
    if len(arrays) < 2:
        raise _fail(f"needs a regressors and a classificators output, got {len(arrays)} output(s)")
    by_width = sorted(arrays, key=lambda a: a.shape[-1])
    regressors = output_named(outputs, reg_key, "regressors") if reg_key is not None else by_width[-1]
    classes = output_named(outputs, cls_key, "classificators") if cls_key is not None else by_width[0]
    return regressors, classes


@functools.lru_cache(maxsize=8)
def _anchors(strides, anchor_hw, min_scale, max_scale, offset_x, offset_y, aspect_ratios, interpolated,
             reduce_lowest, fixed_size) -> np.ndarray:
    """generate_anchors, computed once per layout (they do not change between requests)."""
    anchors = generate_anchors(strides, anchor_hw, min_scale=min_scale, max_scale=max_scale,
                               anchor_offset_x=offset_x, anchor_offset_y=offset_y, aspect_ratios=aspect_ratios,
                               interpolated_scale_aspect_ratio=interpolated,
                               reduce_boxes_in_lowest_layer=reduce_lowest, fixed_anchor_size=fixed_size)
    anchors.setflags(write=False)
    return anchors


@register("ssd_anchors", PARAMS_SCHEMA)
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    strides = tuple(int(s) for s in p["strides"])
    if p["num_layers"] is not None and p["num_layers"] != len(strides):
        raise _fail(f"num_layers {p['num_layers']} but {len(strides)} strides", "num_layers")
    anchor_hw = (p["input_size_height"] or ctx.input_hw[0], p["input_size_width"] or ctx.input_hw[1])
    regressors, logits = _select(outputs, p)
    regressors = regressors.reshape(-1, regressors.shape[-1]) if regressors.ndim < 3 else regressors[0]
    # At least one anchor per feature-map cell: refuse a layout far larger than
    # the outputs before building it (a wrong stride could ask for billions).
    cells = sum(-(-anchor_hw[0] // s) * -(-anchor_hw[1] // s) for s in strides)
    if cells > regressors.shape[0]:
        raise _fail(f"the strides give at least {cells} anchors but the outputs have "
                    f"{regressors.shape[0]} regressor rows", "strides")
    anchors = _anchors(strides, anchor_hw, float(p["min_scale"]), float(p["max_scale"]),
                       float(p["anchor_offset_x"]), float(p["anchor_offset_y"]),
                       tuple(float(a) for a in p["aspect_ratios"]), float(p["interpolated_scale_aspect_ratio"]),
                       bool(p["reduce_boxes_in_lowest_layer"]), bool(p["fixed_anchor_size"]))
    logits = logits[0] if logits.ndim >= 3 else logits.reshape(anchors.shape[0], -1)
    if regressors.shape[0] != anchors.shape[0] or logits.shape[0] != anchors.shape[0]:
        raise _fail(f"{anchors.shape[0]} anchors from the parameters but the outputs have "
                    f"{regressors.shape[0]} regressor rows and {logits.shape[0]} score rows", "strides")

    logits = logits.astype(np.float64)
    if p["sigmoid_score"]:
        logits = 1.0 / (1.0 + np.exp(-np.clip(logits, -p["score_clip"], p["score_clip"])))
    class_ids = np.argmax(logits, axis=1)
    scores = logits[np.arange(logits.shape[0]), class_ids]
    keep = np.flatnonzero(scores >= ctx.score_threshold)
    if not keep.shape[0]:
        return Detections.empty()

    off = p["box_coord_offset"]
    raw = regressors[keep, off:off + 4].astype(np.float64)
    if p["box_order"] == "yxhw":
        raw = raw[:, [1, 0, 3, 2]]
    a = anchors[keep]
    x_scale = p["x_scale"] or anchor_hw[1]
    y_scale = p["y_scale"] or anchor_hw[0]
    w_scale = p["w_scale"] or anchor_hw[1]
    h_scale = p["h_scale"] or anchor_hw[0]
    cx = raw[:, 0] / x_scale * a[:, 2] + a[:, 0]
    cy = raw[:, 1] / y_scale * a[:, 3] + a[:, 1]
    half_w = raw[:, 2] / w_scale * a[:, 2] / 2
    half_h = raw[:, 3] / h_scale * a[:, 3] / 2
    in_h, in_w = ctx.input_hw
    boxes = np.stack([(cx - half_w) * in_w, (cy - half_h) * in_h, (cx + half_w) * in_w, (cy + half_h) * in_h], 1)
    scores, class_ids = scores[keep], class_ids[keep].astype(np.int64)

    if p["weighted_nms"]:
        picked, boxes_out = weighted_nms(boxes, scores, p["iou_threshold"], class_ids, p["class_agnostic"],
                                         p["max_detections"])
    else:
        picked = nms(boxes, scores, p["iou_threshold"], class_ids, p["class_agnostic"], p["max_detections"])
        boxes_out = boxes[picked]
    log.debug("ssd_anchors: %d candidates, %d kept", keep.shape[0], picked.shape[0])
    return Detections(boxes_out.astype(np.float32), scores[picked].astype(np.float32), class_ids[picked])
