"""``landmarks``: regression landmark models (one object per image) -> one skeleton.

Landmark models such as MediaPipe's pose, hand and face landmark networks regress the points of
the single object their input shows: one output holds K points of S values each (``[1, K*S]``,
``[1, K, S]`` or ``[K, S]``; MediaPipe's full pose model: ``Identity [1, 195]``, 39 points of
``x, y, z, visibility, presence``). ``x_index`` and ``y_index`` pick the coordinates, in input
pixels (or fractions of the input with ``normalized``); ``visibility_index`` (optional) the value
that says whether a point is seen, after ``visibility_activation`` (MediaPipe's are logits:
``sigmoid``). A point whose visibility is below ``visibility_threshold`` is sent ``outside``.
Only the first ``num_points`` are kept (MediaPipe pose: 33 body points; the last 6 are
auxiliary points of its tracker).

The object's score is the optional ``score_output`` (a whole-object flag such as MediaPipe's
pose presence ``Identity_1 [1, 1]``, after ``score_activation``), else the mean visibility of the
kept points (1 without ``visibility_index``); below the score threshold nothing is sent. Its box
is the bounds of the visible points; with no point visible nothing is sent (CVAT would drop a
skeleton with every point outside). The class is ``label_id``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from common.decoders import (DecodeContext, Detections, output_named, output_param, param_defaults,
                             params_schema, register)
from common.decoders.classification import activate
from common.decoders.keypoints import SKELETON_LABEL_ID
from common.errors import ModelConfigError

log = logging.getLogger(__name__)


def _index(description: str, default: int | None) -> dict[str, Any]:
    kinds = "integer" if default is not None else ["integer", "null"]
    return {"type": kinds, "minimum": 0, "maximum": 1000, "default": default, "description": description}


def _activation(what: str) -> dict[str, Any]:
    return {"type": "string", "enum": ["none", "sigmoid"], "default": "none",
            "description": f"'sigmoid' when {what} are logits (MediaPipe); 'none' (default) when they are "
                           "probabilities already."}


PARAMS_SCHEMA: dict[str, Any] = params_schema("landmarks decoder parameters", {
    "output": output_param("the landmark rows"),
    "values_per_point": {
        "type": "integer",
        "minimum": 2,
        "maximum": 1000,
        "default": 3,
        "description": "S, values per point (MediaPipe: 3 for x, y, z; 5 for pose's x, y, z, visibility, "
                       "presence). The output holds K*S values. Default 3.",
    },
    "x_index": _index("Which of a point's values is x. Default 0.", 0),
    "y_index": _index("Which of a point's values is y. Default 1.", 1),
    "visibility_index": _index("Which of a point's values says whether it is seen (MediaPipe pose: 3). "
                               "Default null: every point is seen.", None),
    "visibility_activation": _activation("visibility values"),
    "visibility_threshold": {
        "type": "number",
        "minimum": 0,
        "maximum": 1,
        "default": 0.5,
        "description": "Points less visible than this are sent outside (not visible). Default 0.5.",
    },
    "num_points": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 100000,
        "default": None,
        "description": "Keep the first this many points (MediaPipe pose: 33 of 39). Default null: all.",
    },
    "normalized": {
        "type": "boolean",
        "default": False,
        "description": "True when x, y are fractions (0..1) of the input width/height rather than input "
                       "pixels. Default false.",
    },
    "score_output": {
        "type": ["string", "integer", "null"],
        "minimum": 0,
        "default": None,
        "description": "Output holding the object's score (e.g. MediaPipe pose's presence flag "
                       "Identity_1 [1, 1]): tensor name or 0-based output index. Default null: the mean "
                       "visibility of the kept points.",
    },
    "score_activation": _activation("the object scores"),
    "label_id": SKELETON_LABEL_ID,
})

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _error(param: str, message: str) -> ModelConfigError:
    return ModelConfigError([(f"$.output.decoder.{param}", message)])


def landmark_rows(value: np.ndarray, values_per_point: int) -> np.ndarray:
    """(K, S) float64 rows of batch item 0 of ``[1, K*S]``, ``[1, K, S]`` or ``[K, S]``."""
    value = np.asarray(value, np.float64)
    if value.ndim >= 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim == 2 and value.shape[1] != values_per_point:
        raise _error("values_per_point", f"landmarks of shape {list(value.shape)} hold {value.shape[1]} values "
                                         f"per point, not {values_per_point}")
    flat = value.reshape(-1)
    if flat.size == 0 or flat.size % values_per_point:
        raise _error("values_per_point", f"an output of {flat.size} values is not whole points of "
                                         f"{values_per_point} values")
    return flat.reshape(-1, values_per_point)


def _score(outputs: Mapping[str, np.ndarray], p: Mapping[str, Any]) -> float:
    value = np.asarray(output_named(outputs, p["score_output"], "score_output"), np.float64)
    if value.size != 1:
        raise _error("score_output", f"the object score must be one value, got shape {list(value.shape)}")
    return float(activate(value.reshape(1), p["score_activation"])[0])


@register("landmarks", PARAMS_SCHEMA, result="keypoints")
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    s = p["values_per_point"]
    rows = landmark_rows(output_named(outputs, p["output"], "output"), s)
    for param in ("x_index", "y_index", "visibility_index"):
        if p[param] is not None and p[param] >= s:
            raise _error(param, f"{param} {p[param]} is not one of the {s} values of a point (0..{s - 1})")
    k = p["num_points"] if p["num_points"] is not None else rows.shape[0]
    if k > rows.shape[0]:
        raise _error("num_points", f"num_points {k}, but the model gives {rows.shape[0]} points")
    rows = rows[:k]
    x, y = rows[:, p["x_index"]].copy(), rows[:, p["y_index"]].copy()
    if p["normalized"]:
        x *= ctx.input_hw[1]
        y *= ctx.input_hw[0]
    if p["visibility_index"] is None:
        seen = np.ones(k)
    else:
        seen = activate(rows[:, p["visibility_index"]], p["visibility_activation"])
    score = _score(outputs, p) if p["score_output"] is not None else float(seen.mean())
    visible = seen >= p["visibility_threshold"]
    log.debug("landmarks: score %.4f, %d of %d points visible", score, int(visible.sum()), k)
    if score < ctx.score_threshold or not visible.any():
        return Detections.empty()
    box = [x[visible].min(), y[visible].min(), x[visible].max(), y[visible].max()]
    keypoints = np.stack([x, y, seen], 1).astype(np.float32)[None]
    return Detections(np.asarray([box], np.float32), np.asarray([score], np.float32),
                      np.asarray([p["label_id"]], np.int64), keypoints=keypoints,
                      keypoint_threshold=p["visibility_threshold"])
