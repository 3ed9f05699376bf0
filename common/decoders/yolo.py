"""``yolo``: YOLO-family detection heads (v5/v7 with objectness, v8/v11 without, end-to-end exports).

Raw head layouts (batch item 0 is decoded; C = number of classes, N = candidates):

* ``v8``: ``[1, 4+C, N]`` — box then per-class scores, channels first
  (YOLOv8/v9/v11 ``output0``).
* ``v8_transposed``: ``[1, N, 4+C]`` — the same, one row per candidate.
* ``v5``: ``[1, N, 5+C]`` — box, objectness, per-class scores; score = objectness × class score
  (YOLOv5/v7 without NMS).
* ``auto`` (default): with the class count known (model.json labels), the one layout whose
  width matches; without it, ``[1, 4+C, N]`` when the second dimension is the smaller one.
  Anything ambiguous is an error asking for ``layout``.

Boxes are ``xywh`` (centre, size; default) or ``xyxy``, in input-tensor pixels, or in 0..1 of
the input when ``normalized``. Candidates below the score threshold are dropped, then NMS.

With ``nms_in_graph`` the model already ran NMS and emits final rows, either
``xyxy_score_class`` (``[1, K, 6]``: x1, y1, x2, y2, score, class — YOLOv8/v10 end-to-end exports)
or ``batch_xyxy_class_score`` (``[K, 7]``: batch, x1, y1, x2, y2, class, score — yolov7's
``--end2end``/``--include-nms`` ONNX). Padding rows (score <= 0, class < 0, all zeros) are skipped
and no NMS is run again.

With ``angle`` (YOLOv8-OBB heads, ``[1, 4+C+1, N]``: box, class scores, angle in radians) each
row's angle column is read as a clockwise rotation of its (unrotated) box and is not a class;
NMS compares the unrotated boxes.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from common.decoders import (DecodeContext, Detections, output_named, output_param, param_defaults,
                             params_schema, register)
from common.decoders import class_counter, output_info, static_dims
from common.decoders.nms import nms, nms_params
from common.errors import ModelConfigError

log = logging.getLogger(__name__)

PARAMS_SCHEMA: dict[str, Any] = params_schema("yolo decoder parameters", {
        "output": output_param("the head"),
        "layout": {
            "type": "string",
            "enum": ["auto", "v8", "v8_transposed", "v5"],
            "default": "auto",
            "description": "Raw head layout: 'v8' [1, 4+C, N]; 'v8_transposed' [1, N, 4+C]; "
                           "'v5' [1, N, 5+C] with objectness; 'auto' (default) picks the one that "
                           "matches the number of labels. Ignored with nms_in_graph.",
        },
        "box_format": {
            "type": "string",
            "enum": ["xywh", "xyxy"],
            "default": "xywh",
            "description": "Box columns: 'xywh' centre x, centre y, width, height (default) or "
                           "'xyxy' corners. Ignored with nms_in_graph (rows are always xyxy).",
        },
        "normalized": {
            "type": "boolean",
            "default": False,
            "description": "True when box coordinates are fractions (0..1) of the input width/height "
                           "rather than input pixels. Default false.",
        },
        "nms_in_graph": {
            "type": "boolean",
            "default": False,
            "description": "True when the model already ran NMS and outputs final rows (see 'rows'). "
                           "Default false: threshold + NMS are done here.",
        },
        "rows": {
            "type": "string",
            "enum": ["xyxy_score_class", "batch_xyxy_class_score"],
            "default": "xyxy_score_class",
            "description": "Row format with nms_in_graph: 'xyxy_score_class' [1, K, 6] (default; "
                           "YOLOv8/v10 end-to-end) or 'batch_xyxy_class_score' [K, 7] (yolov7 NMS export).",
        },
        "angle": {
            "type": ["integer", "null"],
            "minimum": -1000,
            "maximum": 1000,
            "default": None,
            "description": "Rotated boxes (YOLOv8-OBB: cx, cy, w, h, class scores..., angle): index of the angle "
                           "in each candidate row, negative from the end (-1: the last). The angle is in "
                           "radians, clockwise on the picture; boxes are the unrotated rectangles. Default "
                           "null: no angle. Not read with nms_in_graph.",
        },
        **nms_params(0.45, 300),
})

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _layout_error(shape: tuple[int, ...], why: str) -> ModelConfigError:
    return ModelConfigError([("$.output.decoder.layout", f"yolo output of shape {list(shape)}: {why}")])


def _rows(head: np.ndarray, layout: str, num_classes: int | None) -> tuple[np.ndarray, bool]:
    """(N, 4+C or 5+C) candidate rows of batch item 0, and whether they carry objectness."""
    if head.ndim == 2:
        head = head[None]
    if head.ndim != 3:
        raise _layout_error(head.shape, "expected 3 dimensions [batch, a, b]")
    shape = head.shape
    if layout == "auto":
        a, b = shape[1], shape[2]
        if num_classes:
            matches = [name for name, ok in (("v8", a == 4 + num_classes),
                                             ("v8_transposed", b == 4 + num_classes),
                                             ("v5", b == 5 + num_classes)) if ok]
            if len(matches) != 1:
                raise _layout_error(shape, f"with {num_classes} labels the layout is "
                                    f"{'ambiguous ' + str(matches) if matches else 'none of v8/v8_transposed/v5'}; "
                                    "set output.decoder.layout")
            layout = matches[0]
        elif a < b:
            layout = "v8"
        else:
            raise _layout_error(shape, "cannot tell v5 from v8_transposed without labels; set output.decoder.layout")
    item = head[0]
    if layout == "v8":
        item = item.T
    need = 5 if layout == "v5" else 4
    if item.shape[1] <= need:
        raise _layout_error(shape, f"layout {layout!r} needs more than {need} values per candidate")
    return item, layout == "v5"


def _to_xyxy(box: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "xyxy":
        return box.astype(np.float32, copy=True)
    cx, cy, w, h = box[:, 0], box[:, 1], box[:, 2] / 2, box[:, 3] / 2
    return np.stack([cx - w, cy - h, cx + w, cy + h], axis=1).astype(np.float32)


def _scale(boxes: np.ndarray, ctx: DecodeContext) -> np.ndarray:
    h, w = ctx.input_hw
    return boxes * np.asarray([w, h, w, h], np.float32)


def _decode_final_rows(head: np.ndarray, p: Mapping[str, Any], ctx: DecodeContext) -> Detections:
    head = np.asarray(head, np.float32)
    if p["rows"] == "batch_xyxy_class_score":
        rows = head.reshape(-1, head.shape[-1])
        if rows.shape[1] != 7:
            raise _layout_error(head.shape, "rows 'batch_xyxy_class_score' need 7 columns")
        rows = rows[rows[:, 0] == 0]
        boxes, classes, scores = rows[:, 1:5], rows[:, 5], rows[:, 6]
    else:
        rows = head[0] if head.ndim == 3 else head.reshape(-1, head.shape[-1])
        if rows.shape[-1] != 6:
            raise _layout_error(head.shape, "rows 'xyxy_score_class' need 6 columns")
        boxes, scores, classes = rows[:, :4], rows[:, 4], rows[:, 5]
    real = (scores > 0) & (classes >= 0) & np.any(rows != 0, axis=1)
    keep = real & (scores >= ctx.score_threshold)
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    order = np.argsort(-scores, kind="stable")[: p["max_detections"]]
    boxes = boxes[order].astype(np.float32)
    if p["normalized"]:
        boxes = _scale(boxes, ctx)
    return Detections(boxes, scores[order].astype(np.float32), np.rint(classes[order]).astype(np.int64))


@register("yolo", PARAMS_SCHEMA)
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    head = output_named(outputs, p["output"], "output")
    if p["nms_in_graph"]:
        if p["angle"] is not None:
            raise ModelConfigError([("$.output.decoder.angle", "angle is read from raw heads only, not with "
                                                               "nms_in_graph")])
        return _decode_final_rows(head, p, ctx)

    rotated = p["angle"] is not None
    # An angle column (YOLOv8-OBB) widens each row by one: one more "class" when matching the layout.
    expected = ctx.num_classes + 1 if rotated and ctx.num_classes else ctx.num_classes
    rows, has_objectness = _rows(np.asarray(head), p["layout"], expected)
    rows = rows.astype(np.float32, copy=False)
    first_class = 5 if has_objectness else 4
    class_scores = rows[:, first_class:]
    if rotated:
        column = _angle_column(p["angle"], rows.shape[1], first_class, has_objectness)
        class_scores = np.delete(class_scores, column - first_class, axis=1)
    class_ids = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(rows.shape[0]), class_ids]
    if has_objectness:
        scores = scores * rows[:, 4]
    keep = np.flatnonzero(scores >= ctx.score_threshold)
    if not keep.shape[0]:
        return Detections.empty()
    boxes = _to_xyxy(rows[keep, :4], p["box_format"])
    if p["normalized"]:
        boxes = _scale(boxes, ctx)
    scores, class_ids = scores[keep].astype(np.float32), class_ids[keep].astype(np.int64)
    picked = nms(boxes, scores, p["iou_threshold"], class_ids, p["class_agnostic"], p["max_detections"])
    log.debug("yolo: %d candidates over threshold, %d after NMS", keep.shape[0], picked.shape[0])
    if not rotated:
        return Detections(boxes[picked], scores[picked], class_ids[picked])
    # Angles in radians become clockwise degrees (the pipeline's convention).
    angles = np.degrees(rows[keep, column].astype(np.float64)).astype(np.float32)
    return Detections(boxes[picked], scores[picked], class_ids[picked], angles=angles[picked])


@class_counter("yolo")
def class_count(runtime_outputs, params: Mapping[str, Any]) -> int | None:
    """C from the head's static shape: ``v8`` [1, 4+C, N], ``v8_transposed`` [1, N, 4+C],
    ``v5`` [1, N, 5+C]; ``auto`` only when it reads as v8 without labels (second
    dimension the smaller). None with ``nms_in_graph`` (classes are values) or dynamic dims."""
    p = {**_DEFAULTS, **params}
    if p["nms_in_graph"]:
        return None
    info = output_info(runtime_outputs, p["output"])
    dims = static_dims(info.shape) if info is not None else None
    if dims is None or len(dims) not in (2, 3):
        return None
    a, b = dims[-2], dims[-1]
    layout = p["layout"]
    if layout == "auto":
        layout = "v8" if a < b else None
    count = {"v8": a - 4, "v8_transposed": b - 4, "v5": b - 5}.get(layout)
    if count is not None and p["angle"] is not None:
        count -= 1  # the angle column is not a class
    return count if count is not None and count > 0 else None


def _angle_column(angle: int, width: int, first_class: int, has_objectness: bool) -> int:
    """The angle's column in rows of ``width`` values (negative counts from the end); it
    must come after the box (and objectness) and leave at least one class column."""
    column = angle if angle >= 0 else width + angle
    if not first_class <= column < width or width - first_class < 2:
        after = "box and objectness" if has_objectness else "box"
        raise ModelConfigError([("$.output.decoder.angle", f"rows of {width} values: angle {angle} must be "
                                                           f"a column after the {after}, with at least one class "
                                                           "column besides it")])
    return column
