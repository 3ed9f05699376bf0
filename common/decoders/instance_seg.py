"""Instance segmentation: one mask per detected object.

``yolo_seg`` — YOLOv5/v8/v11 segmentation exports: a detection head whose rows end in ``M`` mask
coefficients, ``[1, 4+C+M, N]`` (``v8``) or ``[1, N, 4+C+M]`` (``v8_transposed``), and mask
prototypes ``[1, M, mh, mw]`` (or ``[1, mh, mw, M]``) covering the whole input, usually at a
quarter of its resolution. Rows are thresholded and NMS'd like ``yolo``; an object's mask is
``sigmoid(coefficients @ prototypes)`` over the prototype pixels under its box, cut to the box.

``mask_rcnn`` — Mask R-CNN style graphs with NMS inside: boxes ``[N, 4]`` (or ``[N, 5]`` with the
score last), scores ``[N]``, classes ``[N]``, and per-box masks ``[N, h, w]`` / ``[N, 1, h, w]``, or
per class ``[N, C, h, w]`` (the channel of the row's class is used). A per-box mask (e.g. 28x28)
covers its box edge to edge (``masks_cover: "box"``); torchvision's ONNX export pastes masks into
the whole input instead (``masks_cover: "input"``). A leading batch dimension of 1 is accepted
everywhere.

Both return float maps that the runner resamples bilinearly onto the image and thresholds at
``mask_threshold`` (probabilities; ``mask_activation: "sigmoid"`` for logits).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from common.decoders import (DecodeContext, Detections, output_named, output_param, param_defaults,
                             params_schema, register)
from common.decoders.classification import activate
from common.decoders.nms import nms, nms_params
from common.errors import ModelConfigError

log = logging.getLogger(__name__)


def _error(param: str, message: str) -> ModelConfigError:
    return ModelConfigError([(f"$.output.decoder.{param}", message)])


MASK_THRESHOLD = {
    "type": "number",
    "minimum": 0,
    "maximum": 1,
    "default": 0.5,
    "description": "A pixel is in the object where its mask probability is above this. Default 0.5.",
}

HEAD_PARAMS: dict[str, Any] = {
    "layout": {
        "type": "string",
        "enum": ["auto", "v8", "v8_transposed"],
        "default": "auto",
        "description": "Head layout: 'v8' [1, channels, N], 'v8_transposed' [1, N, channels]; 'auto' "
                       "(default): the one axis as long as the expected row (when the labels tell it), "
                       "else the shorter axis holds the channels.",
    },
    "box_format": {
        "type": "string",
        "enum": ["xywh", "xyxy"],
        "default": "xywh",
        "description": "Box columns: 'xywh' centre and size (default) or 'xyxy' corners.",
    },
    "normalized": {
        "type": "boolean",
        "default": False,
        "description": "True when coordinates are fractions (0..1) of the input width/height. Default false.",
    },
}


def head_rows(head: np.ndarray, layout: str, width: int | None = None) -> np.ndarray:
    """(N, channels) float32 candidate rows of batch item 0 of a YOLO-style head.
    ``auto`` layout: the one axis of the expected row ``width`` when known and
    only one axis has it, else the shorter axis holds the channels."""
    head = np.asarray(head, np.float32)
    if head.ndim == 2:
        head = head[None]
    if head.ndim != 3:
        raise _error("layout", f"head of shape {list(head.shape)}: expected [1, channels, N] or [1, N, channels]")
    if layout == "auto" and width is not None and (head.shape[1] == width) != (head.shape[2] == width):
        layout = "v8" if head.shape[1] == width else "v8_transposed"
    if layout == "auto":
        if head.shape[1] == head.shape[2]:
            raise _error("layout", f"head of shape {list(head.shape)}: set 'v8' or 'v8_transposed'")
        layout = "v8" if head.shape[1] < head.shape[2] else "v8_transposed"
    return head[0].T if layout == "v8" else head[0]


def head_boxes(rows: np.ndarray, p: Mapping[str, Any], ctx: DecodeContext) -> np.ndarray:
    """xyxy input-pixel boxes of the first 4 columns (``box_format``, ``normalized``)."""
    b = rows[:, :4].astype(np.float32)
    if p["box_format"] == "xywh":
        b = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    if p["normalized"]:
        h, w = ctx.input_hw
        b = b * np.asarray([w, h, w, h], np.float32)
    return b


def best_classes(rows: np.ndarray, num_classes: int, ctx: DecodeContext, p: Mapping[str, Any]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept row indices, scores, classes): best class per row over the threshold, then NMS."""
    class_scores = rows[:, 4:4 + num_classes]
    classes = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(rows.shape[0]), classes]
    keep = np.flatnonzero(scores >= ctx.score_threshold)
    if keep.size == 0:
        return keep, scores[keep], classes[keep]
    boxes = head_boxes(rows[keep], p, ctx)
    picked = nms(boxes, scores[keep], p["iou_threshold"], classes[keep], p["class_agnostic"], p["max_detections"])
    keep = keep[picked]
    return keep, scores[keep].astype(np.float32), classes[keep].astype(np.int64)


# ---- yolo_seg -----------------------------------------------------------------

YOLO_SEG_SCHEMA: dict[str, Any] = params_schema("yolo_seg decoder parameters", {
    "output": output_param("the detection head"),
    "protos": {**output_param("the mask prototypes [1, M, mh, mw]"), "default": 1,
               "description": "Output holding the mask prototypes [1, M, mh, mw] (or [1, mh, mw, M]): tensor "
                              "name or 0-based index. Default 1: the second output."},
    **HEAD_PARAMS,
    "mask_threshold": MASK_THRESHOLD,
    **nms_params(0.45, 300),
})

_SEG_DEFAULTS = param_defaults(YOLO_SEG_SCHEMA)


def _protos(value: np.ndarray) -> np.ndarray:
    """(M, mh, mw) prototypes of batch item 0."""
    value = np.asarray(value, np.float32)
    if value.ndim == 4:
        value = value[0]
    if value.ndim != 3:
        raise _error("protos", f"expected prototypes [1, M, mh, mw], got {list(value.shape)}")
    # channels first unless the last axis is clearly the short one (TFLite [1, mh, mw, M])
    return value if value.shape[0] <= value.shape[2] else np.moveaxis(value, -1, 0)


@register("yolo_seg", YOLO_SEG_SCHEMA, result="masks")
def decode_yolo_seg(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_SEG_DEFAULTS, **params}
    protos = _protos(output_named(outputs, p["protos"], "protos"))
    m, mh, mw = protos.shape
    rows = head_rows(output_named(outputs, p["output"], "output"), p["layout"],
                     4 + ctx.num_classes + m if ctx.num_classes else None)
    num_classes = rows.shape[1] - 4 - m
    if num_classes < 1:
        raise _error("output", f"head rows of {rows.shape[1]} values cannot hold a box, classes and {m} mask "
                               f"coefficients")
    keep, scores, classes = best_classes(rows, num_classes, ctx, p)
    if keep.size == 0:
        return Detections.empty()
    boxes = head_boxes(rows[keep], p, ctx)
    coeffs = rows[keep, 4 + num_classes:]
    sx, sy = mw / ctx.input_hw[1], mh / ctx.input_hw[0]
    masks, extents = [], []
    for box, coeff in zip(boxes, coeffs):
        # prototype pixels under the box (the runner cuts the mask to the box itself)
        x0 = int(np.clip(np.floor(box[0] * sx), 0, mw))
        x1 = int(np.clip(np.ceil(box[2] * sx), 0, mw))
        y0 = int(np.clip(np.floor(box[1] * sy), 0, mh))
        y1 = int(np.clip(np.ceil(box[3] * sy), 0, mh))
        if x1 <= x0 or y1 <= y0:
            masks.append(None)
            extents.append((0.0, 0.0, 0.0, 0.0))
            continue
        logits = np.tensordot(coeff, protos[:, y0:y1, x0:x1], axes=1)
        masks.append(activate(logits, "sigmoid").astype(np.float32))
        extents.append((x0 / sx, y0 / sy, x1 / sx, y1 / sy))
    log.debug("yolo_seg: %d objects", keep.size)
    return Detections(boxes, scores, classes, masks=masks, mask_boxes=np.asarray(extents, np.float32),
                      mask_threshold=p["mask_threshold"])


# ---- mask_rcnn ----------------------------------------------------------------

MASK_RCNN_SCHEMA: dict[str, Any] = params_schema("mask_rcnn decoder parameters", {
    "boxes": {**output_param("the boxes [N, 4] (or [N, 5], score last)"), "default": "boxes",
              "description": "Output holding the boxes [N, 4], or [N, 5] with the score last: tensor name or "
                             "index. Default \"boxes\"."},
    "scores": {**output_param("the scores [N]"), "default": "scores",
               "description": "Output holding the scores [N]: name or index. Default \"scores\"; when the model "
                              "has no such output the boxes' fifth column is the score."},
    "classes": {**output_param("the class indices [N]"), "default": "labels",
                "description": "Output holding the class index of each row [N]: name or index. Default \"labels\"."},
    "masks": {**output_param("the masks"), "default": "masks",
              "description": "Output holding the masks [N, h, w], [N, 1, h, w] or per class [N, C, h, w]: name "
                             "or index. Default \"masks\"."},
    "box_order": {"type": "string", "enum": ["xyxy", "yxyx"], "default": "xyxy",
                  "description": "Box columns: 'xyxy' (default) or 'yxyx'."},
    "normalized": {"type": "boolean", "default": False,
                   "description": "True when box coordinates are fractions (0..1) of the input. Default false."},
    "masks_cover": {"type": "string", "enum": ["box", "input"], "default": "box",
                    "description": "What a mask spans: 'box' (default; e.g. 28x28 per box) or 'input' (the whole "
                                   "network input, as torchvision's ONNX export gives)."},
    "mask_activation": {"type": "string", "enum": ["none", "sigmoid"], "default": "none",
                        "description": "'sigmoid' for mask logits; 'none' (default) for probabilities."},
    "mask_class_offset": {"type": "integer", "minimum": -1000, "maximum": 1000, "default": 0,
                          "description": "Per-class masks: the channel of class k is k - offset (1 when "
                                         "channel 0 is the first real class and class 0 background). Default 0."},
    "mask_threshold": MASK_THRESHOLD,
    "max_detections": {"type": "integer", "minimum": 1, "maximum": 100000, "default": 300,
                       "description": "At most this many objects, best first. Default 300."},
})

_RCNN_DEFAULTS = param_defaults(MASK_RCNN_SCHEMA)


def _rows_of(value: np.ndarray, width: int | None, param: str) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim >= 2 and value.shape[0] == 1 and (width is None or value.ndim > 2):
        value = value[0]  # batch of 1
    if width is not None and (value.ndim != 2 or value.shape[1] not in (width, width + 1)):
        raise _error(param, f"expected [N, {width}] rows, got {list(value.shape)}")
    if width is None:
        value = value.reshape(-1)
    return value


@register("mask_rcnn", MASK_RCNN_SCHEMA, result="masks")
def decode_mask_rcnn(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_RCNN_DEFAULTS, **params}
    boxes = _rows_of(output_named(outputs, p["boxes"], "boxes"), 4, "boxes").astype(np.float32)
    scores = output_named(outputs, p["scores"], "scores", required=False)
    if scores is None:
        if boxes.shape[1] != 5:
            raise _error("scores", f"no output {p['scores']!r} and the boxes have no score column; "
                                   f"outputs are {list(outputs)}")
        scores = boxes[:, 4]
    scores = _rows_of(scores, None, "scores").astype(np.float32)
    classes = np.rint(_rows_of(output_named(outputs, p["classes"], "classes"), None, "classes")).astype(np.int64)
    masks = np.asarray(output_named(outputs, p["masks"], "masks"), np.float32)
    if masks.ndim == 5 and masks.shape[0] == 1:
        masks = masks[0]
    if masks.ndim == 3:
        masks = masks[:, None]
    n = boxes.shape[0]
    if masks.ndim != 4 or not (scores.shape[0] == classes.shape[0] == masks.shape[0] == n):
        raise _error("masks", f"rows disagree: boxes {n}, scores {scores.shape[0]}, classes {classes.shape[0]}, "
                              f"masks {list(masks.shape)}")
    boxes = boxes[:, :4]
    if p["box_order"] == "yxyx":
        boxes = boxes[:, [1, 0, 3, 2]]
    if p["normalized"]:
        h, w = ctx.input_hw
        boxes = boxes * np.asarray([w, h, w, h], np.float32)
    keep = np.flatnonzero((scores >= ctx.score_threshold) & (classes >= 0))
    keep = keep[np.argsort(-scores[keep], kind="stable")][: p["max_detections"]]
    out_masks = []
    for i in keep:
        channel = 0 if masks.shape[1] == 1 else int(classes[i]) - p["mask_class_offset"]
        if not 0 <= channel < masks.shape[1]:
            raise _error("mask_class_offset", f"class {int(classes[i])} has no mask channel (masks "
                                              f"{list(masks.shape)}, offset {p['mask_class_offset']})")
        plane = masks[i, channel]
        out_masks.append(activate(plane, "sigmoid").astype(np.float32) if p["mask_activation"] == "sigmoid"
                         else plane)
    if p["masks_cover"] == "input":
        h, w = ctx.input_hw
        extents = np.tile(np.asarray([[0, 0, w, h]], np.float32), (keep.size, 1))
    else:
        extents = None
    log.debug("mask_rcnn: %d of %d rows kept", keep.size, n)
    return Detections(boxes[keep], scores[keep], classes[keep], masks=out_masks, mask_boxes=extents,
                      mask_threshold=p["mask_threshold"])
