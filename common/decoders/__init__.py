"""Output decoders: raw network outputs -> :class:`Detections`.

A decoder is chosen by ``output.decoder.name`` in model.json. Each lives in
its own module here and registers itself with :func:`register`, declaring a
JSON Schema for its parameters (checked when model.json is parsed). Decoders
are pure numpy: outputs in, detections out, in the pixel coordinates of the
network input tensor (the caller maps them back to the image).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np


@dataclass
class Detections:
    """Detections in network-input pixel coordinates.

    boxes: (N, 4) float32 ``x1, y1, x2, y2``; scores: (N,) float32;
    class_ids: (N,) int64 (model class indices, mapped to labels by id);
    polygons: None, or one (K, 2) float32 array of ``x, y`` per detection.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    polygons: list[np.ndarray] | None = None

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, keep: np.ndarray) -> "Detections":
        """Rows picked by an index or boolean array, in that order."""
        keep = np.asarray(keep)
        if keep.dtype == bool:
            keep = np.flatnonzero(keep)
        polys = None if self.polygons is None else [self.polygons[i] for i in keep]
        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep], polys)


@dataclass(frozen=True)
class DecodeContext:
    """What a decoder may know besides the outputs."""

    input_hw: tuple[int, int]  # height, width of the network input tensor
    score_threshold: float
    num_classes: int | None = None  # number of labels in model.json, if any


DecodeFn = Callable[[Mapping[str, np.ndarray], DecodeContext, Mapping[str, Any]], Detections]


@dataclass(frozen=True)
class DecoderInfo:
    name: str
    decode: DecodeFn
    params_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})


def params_schema(title: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    """A decoder's parameter schema: an object of exactly these ``properties``."""
    return {"$schema": "http://json-schema.org/draft-07/schema#", "title": title, "type": "object",
            "additionalProperties": False, "properties": dict(properties)}


def output_param(holds: str) -> dict[str, Any]:
    """The schema of a parameter naming one model output (see :func:`output_named`)."""
    return {"type": ["string", "integer", "null"], "minimum": 0, "default": None,
            "description": f"Output holding {holds}: tensor name (a ':0' suffix is tolerated) or 0-based "
                           "index in the model's output order. Default null: the first output."}


def param_defaults(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The ``default`` of every parameter a decoder's schema declares."""
    return {k: v["default"] for k, v in schema["properties"].items() if "default" in v}


def output_named(outputs: Mapping[str, np.ndarray], key: str | int | None, param: str, *,
                 required: bool = True) -> np.ndarray | None:
    """The output a decoder parameter names: a tensor name (TensorFlow's ``:0``
    suffix optional either way), an index into the outputs, or None for the
    first output. A miss is a ModelConfigError at ``$.output.decoder.<param>``
    listing the outputs, or None when not ``required``."""
    from common.errors import ModelConfigError

    names = list(outputs)
    found = None
    if key is None:
        found = outputs[names[0]] if names else None
    elif isinstance(key, int):
        found = outputs[names[key]] if 0 <= key < len(names) else None
    else:
        alternatives = (key, f"{key}:0", key[:-2] if key.endswith(":0") else None)
        found = next((outputs[n] for n in alternatives if n is not None and n in outputs), None)
    if found is None:
        if required:
            raise ModelConfigError([(f"$.output.decoder.{param}", f"no output {key!r}; outputs are {names}")])
        return None
    return np.asarray(found)


_REGISTRY: dict[str, DecoderInfo] = {}

# Modules that define decoders; imported on first lookup.
_MODULES = ("yolo", "ssd", "db_text", "gfl", "ssd_anchors")


def register(name: str, params_schema: Mapping[str, Any] | None = None) -> Callable[[DecodeFn], DecodeFn]:
    """Decorator: make ``fn(outputs, ctx, params)`` the decoder called ``name``."""

    def wrap(fn: DecodeFn) -> DecodeFn:
        _REGISTRY[name] = DecoderInfo(name, fn, params_schema or {"type": "object"})
        return fn

    return wrap


def _load_all() -> None:
    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def get(name: str) -> DecoderInfo:
    """The decoder called ``name``; KeyError lists the known ones."""
    if name not in _REGISTRY:
        _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown decoder {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)
