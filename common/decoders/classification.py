"""``classifier``: image classification scores -> tags (the whole image's classes).

The output holds one score per class for batch item 0: ``[1, C]`` (also ``[C]``, ``[1, C, 1, 1]``,
``[1, 1, 1, C]``). ``activation`` turns raw values into probabilities: ``softmax`` (one class per
image), ``sigmoid`` (independent classes, multi-label) or ``none`` (the model already gives them).

Single-label (default): the ``top_k`` (default 1) best classes whose score reaches the threshold.
``multi_label``: every class whose score reaches the threshold, best first, at most ``top_k`` when
it is set. The threshold is the request's, else model.json's ``output.score_threshold``.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np

from common.decoders import (DecodeContext, Detections, output_named, output_param, param_defaults,
                             params_schema, register)
from common.errors import ModelConfigError

log = logging.getLogger(__name__)

ACTIVATIONS = ("none", "softmax", "sigmoid")  # what activate() applies


def activation_param(description: str) -> dict[str, Any]:
    """The schema of a decoder parameter naming one of :data:`ACTIVATIONS` (default none)."""
    return {"type": "string", "enum": list(ACTIVATIONS), "default": "none", "description": description}


PARAMS_SCHEMA: dict[str, Any] = params_schema("classifier decoder parameters", {
    "output": output_param("the class scores"),
    "activation": activation_param("Applied to the scores first: 'softmax' (logits of one-of-C classes), 'sigmoid' "
                                   "(independent logits, multi-label) or 'none' (default: already probabilities)."),
    "multi_label": {
        "type": "boolean",
        "default": False,
        "description": "Every class reaching the threshold is a tag (at most top_k when set). Default "
                       "false: the top_k best classes reaching the threshold.",
    },
    "top_k": {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": 1000,
        "default": None,
        "description": "Most tags per image, best first. Default null: 1, or no limit with multi_label.",
    },
})

_DEFAULTS = param_defaults(PARAMS_SCHEMA)


def _scores(value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float64)
    if value.ndim >= 2:
        value = value[0]  # batch item 0
    flat = value.reshape(-1)
    if value.ndim > 1 and sorted(value.shape)[:-1] != [1] * (value.ndim - 1):
        raise ModelConfigError([("$.output.decoder.output", f"expected class scores [1, C], got a batch item "
                                                           f"of shape {list(value.shape)}")])
    if flat.size == 0:
        raise ModelConfigError([("$.output.decoder.output", "the class scores are empty")])
    return flat


def activate(values: np.ndarray, activation: str) -> np.ndarray:
    """``values`` through ``activation`` (none, softmax over the last axis, sigmoid), float64."""
    values = np.asarray(values, np.float64)
    if activation == "softmax":
        e = np.exp(values - values.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if activation == "sigmoid":
        return 0.5 * (1.0 + np.tanh(0.5 * values))  # sigmoid without overflow warnings
    return values


@register("classifier", PARAMS_SCHEMA, result="tags")
def decode(outputs: Mapping[str, np.ndarray], ctx: DecodeContext, params: Mapping[str, Any]) -> Detections:
    p = {**_DEFAULTS, **params}
    scores = activate(_scores(output_named(outputs, p["output"], "output")), p["activation"])
    top_k = p["top_k"] if p["top_k"] is not None else (None if p["multi_label"] else 1)
    order = np.argsort(-scores, kind="stable")
    if top_k is not None:
        order = order[:top_k]
    order = order[scores[order] >= ctx.score_threshold]
    log.debug("classifier: best class %d (%.4f), %d tags", int(np.argmax(scores)), float(scores.max()), order.size)
    return Detections(np.zeros((order.size, 4), np.float32), scores[order].astype(np.float32),
                      order.astype(np.int64), tags=True)
