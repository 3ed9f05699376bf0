"""``semantic_segmentation``: per-pixel class maps -> one mask per class region.

CVAT expects one mask shape per object; a semantic model knows classes, not objects, so each
connected region of a class (``regions: "components"``, default) becomes one mask, or each class
present one mask with all its regions (``regions: "class"``). Regions smaller than ``min_area``
map pixels are dropped.

The map covers the whole network input (any resolution: it is scaled to the input, then the
runner resamples it bilinearly onto the image). ``mode``:

* ``argmax``: per-class scores ``[1, C, h, w]`` (or ``[1, h, w, C]``); each pixel belongs to its
  best class. A region's score is the mean of its class's score over it, after ``activation``
  (``softmax`` over classes for logits; with ``none`` the values are taken as probabilities,
  clipped to 0..1).
* ``class_map``: the class index per pixel (``[1, h, w]``, ``[1, 1, h, w]``, ``[1, h, w, 1]``),
  e.g. a model with the argmax in its graph. Score 1.
* ``probability``: independent per-class probabilities ``[1, C, h, w]`` / ``[1, h, w, C]`` (``C``
  may be 1: a person/background model such as MediaPipe selfie segmentation,
  ``[1, 256, 256, 1]``); a pixel is in class ``c`` where its value (after ``activation``:
  ``sigmoid`` for logits) is above ``threshold``. A region's score is its mean probability. The
  probabilities themselves are resampled, so outlines stay smooth at any upscaling.

``layout`` ``auto`` takes the channel axis to be the one of length C (the number of labels), or
without labels the shorter of axes 1 and 3. Classes listed in ``ignore_classes`` (e.g. a
background class) give no masks; so do classes without a label in model.json.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Mapping

import cv2
import numpy as np

from common.decoders import (DecodeContext, Detections, output_named, output_param, param_defaults,
                             params_schema, register)
from common.decoders.classification import activate, activation_param
from common.errors import ModelConfigError

log = logging.getLogger(__name__)

PARAMS_SCHEMA: dict[str, Any] = params_schema("semantic_segmentation decoder parameters", {
    "output": output_param("the segmentation map"),
    "mode": {
        "type": "string",
        "enum": ["argmax", "class_map", "probability"],
        "default": "argmax",
        "description": "'argmax' (default): per-class scores, best class per pixel; 'class_map': the class "
                       "index per pixel; 'probability': independent per-class probabilities over 'threshold'.",
    },
    "layout": {
        "type": "string",
        "enum": ["auto", "NCHW", "NHWC"],
        "default": "auto",
        "description": "Axis order of per-class maps: 'NCHW' [1, C, h, w], 'NHWC' [1, h, w, C], 'auto' "
                       "(default) the axis as long as the label count (without labels: the shorter of axes 1, 3).",
    },
    "activation": activation_param("Applied to per-class values: 'softmax' over classes, 'sigmoid', or 'none' "
                                   "(default: already probabilities)."),
    "threshold": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "default": 0.5,
        "description": "mode 'probability': a pixel is in a class where its probability is above this. "
                       "Default 0.5.",
    },
    "regions": {
        "type": "string",
        "enum": ["components", "class"],
        "default": "components",
        "description": "'components' (default): one mask per connected region of a class; 'class': one "
                       "mask per class holding all its regions.",
    },
    "connectivity": {
        "type": "integer",
        "enum": [4, 8],
        "default": 8,
        "description": "Pixels touching by a side (4) or also by a corner (8, default) are one region.",
    },
    "min_area": {
        "type": "integer",
        "minimum": 1,
        "maximum": 100000000,
        "default": 1,
        "description": "Regions of fewer map pixels than this are dropped. Default 1.",
    },
    "ignore_classes": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0},
        "uniqueItems": True,
        "default": [],
        "description": "Class indices that give no masks (e.g. background). Default none.",
    },
    "max_regions": {
        "type": "integer",
        "minimum": 1,
        "maximum": 100000,
        "default": 300,
        "description": "Most masks per image, best score first. Default 300.",
    },
})

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _error(message: str) -> ModelConfigError:
    return ModelConfigError([("$.output.decoder", message)])


def _per_class(value: np.ndarray, layout: str, num_classes: int | None) -> np.ndarray:
    """(C, h, w) maps of batch item 0."""
    if value.ndim == 3:  # [1, h, w]: one class
        return value[:1]
    if value.ndim != 4:
        raise _error(f"expected per-class maps [1, C, h, w] or [1, h, w, C], got {list(value.shape)}")
    a, c = value.shape[1], value.shape[3]
    if layout == "auto":
        if num_classes and (a == num_classes) != (c == num_classes):
            layout = "NCHW" if a == num_classes else "NHWC"
        elif a != c:
            layout = "NCHW" if a < c else "NHWC"
        else:
            raise _error(f"cannot tell the class axis of {list(value.shape)}: set output.decoder.layout")
    return value[0] if layout == "NCHW" else np.moveaxis(value[0], -1, 0)


def _class_map(value: np.ndarray) -> np.ndarray:
    squeezed = value.reshape([d for d in value.shape if d != 1] or [1, 1])
    if squeezed.ndim != 2:
        raise _error(f"mode 'class_map' expects one class index per pixel [1, h, w], got {list(value.shape)}")
    return np.rint(squeezed).astype(np.int64)


def _class_planes(value: np.ndarray, p: Mapping[str, Any], num_classes: int | None
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None, float]]:
    """(class, member map, value map or None, mask threshold) for each class present."""
    ignored = set(p["ignore_classes"])
    if p["mode"] == "class_map":
        classes = _class_map(value)
        for c in np.unique(classes):
            if c >= 0 and int(c) not in ignored:
                yield int(c), classes == c, None, 0.5
        return
    maps = _per_class(value, p["layout"], num_classes)
    if p["activation"] == "softmax":  # over the classes of each pixel
        maps = np.moveaxis(activate(np.moveaxis(maps, 0, -1), "softmax"), -1, 0)
    else:
        maps = activate(maps, p["activation"])
    if p["mode"] == "probability":
        for c in range(maps.shape[0]):
            member = maps[c] > p["threshold"]
            if c not in ignored and member.any():
                yield c, member, maps[c], float(p["threshold"])
        return
    winner = np.argmax(maps, axis=0)
    best = np.clip(np.take_along_axis(maps, winner[None], 0)[0], 0.0, 1.0)
    for c in np.unique(winner):
        if int(c) not in ignored:
            yield int(c), winner == c, best, 0.5


@register("semantic_segmentation", PARAMS_SCHEMA, result="masks")
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    value = np.asarray(output_named(outputs, p["output"], "output"))
    probability = p["mode"] == "probability"
    boxes, extents, scores, classes, masks = [], [], [], [], []
    threshold = 0.5
    map_hw = None
    for c, member, values, threshold in _class_planes(value, p, ctx.num_classes):
        map_hw = member.shape
        if p["regions"] == "components":
            count, ids, stats, _ = cv2.connectedComponentsWithStats(member.astype(np.uint8), connectivity=p["connectivity"])
            regions = [(k, stats[k]) for k in range(1, count)]
        else:
            ids = member.astype(np.int32)
            ys, xs = np.nonzero(member)
            regions = [(1, (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1, xs.size))]
        h, w = member.shape
        for k, (x, y, bw, bh, area) in regions:
            if area < p["min_area"]:
                continue
            region = ids[y:y + bh, x:x + bw] == k
            score = 1.0 if values is None else float(values[y:y + bh, x:x + bw][region].mean())
            if score < ctx.score_threshold:
                continue
            # One map pixel more on each side: the outline is interpolated against what is outside.
            x0, y0, x1, y1 = max(0, x - 1), max(0, y - 1), min(w, x + bw + 1), min(h, y + bh + 1)
            ring = ids[y0:y1, x0:x1] == k
            if probability:
                near = cv2.dilate(ring.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
                near &= ~(member[y0:y1, x0:x1] & ~ring)  # other regions of the class stay out
                mask = np.where(near, values[y0:y1, x0:x1], 0.0).astype(np.float32)
                boxes.append((x0, y0, x1, y1))
            else:
                mask = ring.astype(np.float32)
                boxes.append((x, y, x + bw, y + bh))
            extents.append((x0, y0, x1, y1))
            masks.append(mask)
            scores.append(score)
            classes.append(c)
    if not masks:
        return Detections.empty()
    to_input = np.array([ctx.input_hw[1] / map_hw[1], ctx.input_hw[0] / map_hw[0]] * 2, np.float32)
    order = np.argsort(-np.asarray(scores), kind="stable")[: p["max_regions"]]
    log.debug("semantic_segmentation: %d regions, %d kept", len(masks), order.size)
    return Detections(np.asarray(boxes, np.float32)[order] * to_input, np.asarray(scores, np.float32)[order],
                      np.asarray(classes, np.int64)[order], masks=[masks[i] for i in order],
                      mask_boxes=np.asarray(extents, np.float32)[order] * to_input, mask_threshold=threshold)
