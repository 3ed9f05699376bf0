"""Keypoints (poses): one skeleton per object, its points named by the label's sublabels.

``yolo_pose`` — YOLOv8/v11 pose exports: one head ``[1, 4+C+3K, N]`` (``v8``) or
``[1, N, 4+C+3K]`` (``v8_transposed``): box, C class scores, then ``x, y, confidence`` for each
of the K keypoints, in input pixels. Rows are thresholded and NMS'd like ``yolo``. K is
``num_keypoints``, or what the row width leaves after the box and the labels' classes.

``heatmap_keypoints`` — top-down pose models (SimpleBaseline, HRNet, ...): heatmaps
``[1, K, h, w]`` (or ``[1, h, w, K]``) over the whole input, one object. Each keypoint is its
heatmap's maximum, moved a quarter pixel towards the higher neighbour on each axis (the usual
sub-pixel refinement); its confidence is the maximum. The object's score is the mean
confidence of its keypoints, its class ``label_id``.

A keypoint whose confidence is below ``keypoint_threshold`` is sent ``outside``; an object with
every keypoint outside is not sent (CVAT would drop it too).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from common.decoders import (DecodeContext, Detections, output_named, output_param, param_defaults,
                             params_schema, register)
from common.decoders.classification import activate
from common.decoders.instance_seg import HEAD_PARAMS, best_classes, head_boxes, head_rows
from common.decoders.nms import nms_params
from common.errors import ModelConfigError

log = logging.getLogger(__name__)

# The single-object keypoint decoders (heatmaps, landmarks) name the skeleton label by id.
SKELETON_LABEL_ID = {
    "type": "integer",
    "minimum": 0,
    "maximum": 10000000,
    "default": 0,
    "description": "Class id of the object (the skeleton label's id). Default 0.",
}
KEYPOINT_THRESHOLD = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "default": 0.5,
    "description": "Keypoints less confident than this are sent outside (not visible). Default 0.5.",
}
KEYPOINT_ACTIVATION = {
    "type": "string",
    "enum": ["none", "sigmoid"],
    "default": "none",
    "description": "'sigmoid' when keypoint confidences are logits; 'none' (default) when they are "
                   "probabilities (ultralytics ONNX exports).",
}

YOLO_POSE_SCHEMA: dict[str, Any] = params_schema("yolo_pose decoder parameters", {
    "output": output_param("the head"),
    **HEAD_PARAMS,
    "num_keypoints": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 1000,
        "default": None,
        "description": "K, keypoints per object. Default null: from the row width and the number of labels "
                       "(1 class without labels).",
    },
    "keypoint_threshold": KEYPOINT_THRESHOLD,
    "keypoint_activation": KEYPOINT_ACTIVATION,
    **nms_params(0.45, 300),
})

_POSE_DEFAULTS = param_defaults(YOLO_POSE_SCHEMA)


def _error(param: str, message: str) -> ModelConfigError:
    return ModelConfigError([(f"$.output.decoder.{param}", message)])


@register("yolo_pose", YOLO_POSE_SCHEMA, result="keypoints")
def decode_yolo_pose(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_POSE_DEFAULTS, **params}
    known = p["num_keypoints"] is not None and ctx.num_classes
    rows = head_rows(output_named(outputs, p["output"], "output"), p["layout"],
                     4 + ctx.num_classes + 3 * p["num_keypoints"] if known else None)
    width = rows.shape[1]
    if p["num_keypoints"] is not None:
        k = p["num_keypoints"]
        num_classes = width - 4 - 3 * k
    else:
        num_classes = ctx.num_classes or 1
        k, rest = divmod(width - 4 - num_classes, 3)
        if rest or k < 1:
            raise _error("num_keypoints", f"rows of {width} values do not hold a box, {num_classes} class "
                                          f"score(s) and x, y, confidence per keypoint: set num_keypoints")
    if num_classes < 1:
        raise _error("num_keypoints", f"rows of {width} values cannot hold a box, classes and {k} keypoints")
    keep, scores, classes = best_classes(rows, num_classes, ctx, p)
    if keep.size == 0:
        return Detections.empty()
    kp = rows[keep, 4 + num_classes:4 + num_classes + 3 * k].reshape(-1, k, 3).astype(np.float32)
    if p["normalized"]:
        kp[:, :, 0] *= ctx.input_hw[1]
        kp[:, :, 1] *= ctx.input_hw[0]
    kp[:, :, 2] = activate(kp[:, :, 2], p["keypoint_activation"])
    log.debug("yolo_pose: %d objects of %d keypoints", keep.size, k)
    return Detections(head_boxes(rows[keep], p, ctx), scores, classes, keypoints=kp,
                      keypoint_threshold=p["keypoint_threshold"])


HEATMAP_SCHEMA: dict[str, Any] = params_schema("heatmap_keypoints decoder parameters", {
    "output": output_param("the heatmaps"),
    "layout": {
        "type": "string",
        "enum": ["NCHW", "NHWC"],
        "default": "NCHW",
        "description": "Heatmap axis order: 'NCHW' [1, K, h, w] (default) or 'NHWC' [1, h, w, K].",
    },
    "keypoint_threshold": KEYPOINT_THRESHOLD,
    "keypoint_activation": KEYPOINT_ACTIVATION,
    "label_id": SKELETON_LABEL_ID,
})

_HEATMAP_DEFAULTS = param_defaults(HEATMAP_SCHEMA)


def heatmap_peaks(maps: np.ndarray) -> np.ndarray:
    """(K, 3) ``x, y, value`` of each (K, h, w) map's maximum in map pixel indices,
    refined a quarter pixel towards the larger neighbour on each axis."""
    k, h, w = maps.shape
    flat = maps.reshape(k, -1)
    best = np.argmax(flat, axis=1)
    ys, xs = np.divmod(best, w)
    out = np.zeros((k, 3), np.float64)
    for i in range(k):
        x, y, m = int(xs[i]), int(ys[i]), maps[i]
        dx = float(m[y, x + 1] - m[y, x - 1]) if 0 < x < w - 1 else 0.0
        dy = float(m[y + 1, x] - m[y - 1, x]) if 0 < y < h - 1 else 0.0
        out[i] = (x + 0.25 * np.sign(dx), y + 0.25 * np.sign(dy), m[y, x])
    return out


@register("heatmap_keypoints", HEATMAP_SCHEMA, result="keypoints")
def decode_heatmaps(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_HEATMAP_DEFAULTS, **params}
    maps = np.asarray(output_named(outputs, p["output"], "output"), np.float64)
    if maps.ndim == 4:
        maps = maps[0]
    if maps.ndim != 3:
        raise _error("output", f"expected heatmaps [1, K, h, w], got {list(maps.shape)}")
    if p["layout"] == "NHWC":
        maps = np.moveaxis(maps, -1, 0)
    maps = activate(maps, p["keypoint_activation"])
    _, h, w = maps.shape
    peaks = heatmap_peaks(maps)
    # map pixel i spans [i, i+1) scaled to the input: its centre is (i + 0.5) * stride
    sx, sy = ctx.input_hw[1] / w, ctx.input_hw[0] / h
    kp = np.stack([(peaks[:, 0] + 0.5) * sx, (peaks[:, 1] + 0.5) * sy, peaks[:, 2]], 1).astype(np.float32)
    score = float(np.mean(peaks[:, 2]))
    if score < ctx.score_threshold:
        return Detections.empty()
    seen = kp[kp[:, 2] >= p["keypoint_threshold"]]
    box = ([seen[:, 0].min(), seen[:, 1].min(), seen[:, 0].max(), seen[:, 1].max()] if len(seen)
           else [0, 0, ctx.input_hw[1], ctx.input_hw[0]])
    return Detections(np.asarray([box], np.float32), np.asarray([score], np.float32),
                      np.asarray([p["label_id"]], np.int64), keypoints=kp[None],
                      keypoint_threshold=p["keypoint_threshold"])
