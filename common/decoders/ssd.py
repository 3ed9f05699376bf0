"""``ssd``: detectors that output boxes, scores and classes as separate tensors.

The TensorFlow Object Detection API layout is the default (SSD, SSDLite, Faster R-CNN,
EfficientDet exports): ``detection_boxes [1, N, 4]`` (ymin, xmin, ymax, xmax in 0..1),
``detection_scores [1, N]``, ``detection_classes [1, N]`` (float class ids) and
``num_detections [1]`` (valid rows; rows past it are padding). Tensor names may carry a ``:0``
suffix (TF1 frozen graphs). Batch item 0 is decoded.

Without a classes tensor, scores may be per class, ``[1, N, C]``: each row's class is the argmax
(skipping ``background_class``) and its score that class's score. Without a classes tensor and
with ``[1, N]`` scores, every detection is class 0.

NMS is normally inside these graphs; set ``nms`` to run it here too.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from common.decoders import DecodeContext, Detections, output_named, param_defaults, register
from common.decoders import class_counter, output_info, static_dims
from common.decoders.nms import nms
from common.errors import ModelConfigError

log = logging.getLogger(__name__)


def _tensor_param(default: str | None, what: str) -> dict[str, Any]:
    return {
        "type": ["string", "integer", "null"],
        "minimum": 0,
        "default": default,
        "description": f"Output holding {what}: tensor name (a ':0' suffix is tolerated either way) or "
                       f"0-based output index. Default {default!r}.",
    }


PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "ssd decoder parameters",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "boxes": _tensor_param("detection_boxes", "the boxes, [1, N, 4]"),
        "scores": _tensor_param("detection_scores", "the scores, [1, N] or per class [1, N, C]"),
        "classes": {
            **_tensor_param("detection_classes", "the class ids, [1, N]"),
            "description": "Output holding the class ids [1, N]: tensor name (':0' suffix tolerated) or "
                           "0-based index. Default 'detection_classes'; null, or a name the model does not "
                           "have, means no classes tensor (classes come from per-class scores).",
        },
        "num_detections": {
            **_tensor_param("num_detections", "the count of valid rows"),
            "description": "Output holding the number of valid rows [1]: name (':0' tolerated) or index. "
                           "Default 'num_detections'; null, or a name the model does not have, means "
                           "every row is valid.",
        },
        "box_order": {
            "type": "string",
            "enum": ["yxyx", "xyxy"],
            "default": "yxyx",
            "description": "Column order of the boxes: 'yxyx' ymin, xmin, ymax, xmax (TF default) or "
                           "'xyxy' xmin, ymin, xmax, ymax.",
        },
        "normalized": {
            "type": "boolean",
            "default": True,
            "description": "True (default) when box coordinates are fractions (0..1) of the input; "
                           "false when they are input pixels.",
        },
        "background_class": {
            "type": ["integer", "null"],
            "minimum": 0,
            "default": None,
            "description": "With per-class scores [1, N, C] and no classes tensor: this score column is "
                           "background and never chosen. Default null (no background column).",
        },
        "nms": {
            "type": ["object", "null"],
            "default": None,
            "description": "Null (default): NMS was done in the graph. An object runs NMS here.",
            "additionalProperties": False,
            "properties": {
                "iou_threshold": {
                    "type": "number", "minimum": 0, "maximum": 1, "default": 0.45,
                    "description": "IoU above which the weaker box is dropped. Default 0.45.",
                },
                "class_agnostic": {
                    "type": "boolean", "default": False,
                    "description": "True: suppress across classes. Default false (per class).",
                },
            },
        },
        "max_detections": {
            "type": "integer",
            "minimum": 1,
            "default": 300,
            "description": "At most this many detections are returned (best first). Default 300.",
        },
    },
}

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _find(outputs: Mapping[str, np.ndarray], key: str | int | None, param: str,
          required: bool) -> np.ndarray | None:
    # Here a null name means "the model has no such output".
    if key is None and not required:
        return None
    return output_named(outputs, key, param, required=required)


def _item0(x: np.ndarray, rank: int) -> np.ndarray:
    """Batch item 0 of a tensor whose per-item rank is ``rank`` (a missing batch axis is allowed)."""
    return x[0] if x.ndim > rank else x


@register("ssd", PARAMS_SCHEMA)
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    boxes = _find(outputs, p["boxes"], "boxes", required=True)
    scores = _find(outputs, p["scores"], "scores", required=True)
    classes = _find(outputs, p["classes"], "classes", required=False)
    count = _find(outputs, p["num_detections"], "num_detections", required=False)

    boxes = np.asarray(boxes, np.float32)
    boxes = (boxes[0] if boxes.ndim >= 3 else boxes).reshape(-1, 4)  # [1, N, 4] or [1, N, 1, 4]
    n = boxes.shape[0]
    scores = np.asarray(scores, np.float32)
    if classes is not None:
        scores = _item0(scores, 1).reshape(-1)
        class_ids = np.rint(_item0(np.asarray(classes, np.float32), 1).reshape(-1)).astype(np.int64)
    elif scores.ndim >= 2 and scores.shape[-1] > 1 and scores.reshape(-1, scores.shape[-1]).shape[0] == n:
        per_class = scores.reshape(n, scores.shape[-1]).copy()
        bg = p["background_class"]
        if bg is not None and 0 <= bg < per_class.shape[1]:
            per_class[:, bg] = -np.inf
        class_ids = np.argmax(per_class, axis=1).astype(np.int64)
        scores = per_class[np.arange(n), class_ids]
    else:
        scores = scores.reshape(-1)
        class_ids = np.zeros(scores.shape[0], np.int64)
    if scores.shape[0] != n or class_ids.shape[0] != n:
        raise ModelConfigError([("$.output.decoder", f"ssd: {n} boxes but {scores.shape[0]} scores and "
                                                     f"{class_ids.shape[0]} classes")])

    valid = n
    if count is not None and count.size:
        valid = int(np.clip(np.asarray(count, np.float64).reshape(-1)[0], 0, n))
    keep = np.flatnonzero(scores[:valid] >= ctx.score_threshold)
    if not keep.shape[0]:
        return Detections.empty()
    boxes, scores, class_ids = boxes[keep], scores[keep], class_ids[keep]
    if p["box_order"] == "yxyx":
        boxes = boxes[:, [1, 0, 3, 2]]
    if p["normalized"]:
        h, w = ctx.input_hw
        boxes = boxes * np.asarray([w, h, w, h], np.float32)
    boxes = boxes.astype(np.float32)

    if p["nms"] is not None:
        settings = {"iou_threshold": 0.45, "class_agnostic": False, **p["nms"]}
        order = nms(boxes, scores, settings["iou_threshold"], class_ids, settings["class_agnostic"],
                    p["max_detections"])
    else:
        order = np.argsort(-scores, kind="stable")[: p["max_detections"]]
    log.debug("ssd: %d valid rows, %d kept", valid, order.shape[0])
    return Detections(boxes[order], scores[order].astype(np.float32), class_ids[order])


@class_counter("ssd")
def class_count(runtime_outputs, params: Mapping[str, Any]) -> int | None:
    """C of per-class scores [1, N, C] (no classes tensor; the background column
    counts, as its index does); 1 for plain [1, N] scores without classes (every row
    is class 0). None when a classes tensor gives ids as values, or dims are dynamic."""
    p = {**_DEFAULTS, **params}
    if p["classes"] is not None and output_info(runtime_outputs, p["classes"]) is not None:
        return None
    boxes = output_info(runtime_outputs, p["boxes"])
    scores = output_info(runtime_outputs, p["scores"])
    box_dims = static_dims(boxes.shape) if boxes is not None else None
    score_dims = static_dims(scores.shape) if scores is not None else None
    if not box_dims or not score_dims:
        return None
    n = box_dims[1] if len(box_dims) >= 3 else box_dims[0]
    last = score_dims[-1]
    rows = int(np.prod(score_dims[:-1])) if len(score_dims) >= 2 else 1
    if len(score_dims) >= 2 and last > 1 and rows == n:
        return last
    return 1
