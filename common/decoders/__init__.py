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
from typing import Any, Callable, Mapping, Sequence

import numpy as np


@dataclass
class Detections:
    """Detections in network-input pixel coordinates.

    boxes: (N, 4) float32 ``x1, y1, x2, y2``; scores: (N,) float32;
    class_ids: (N,) int64 (model class indices, mapped to labels by id);
    polygons: None, or one (K, 2) float32 array of ``x, y`` per detection.

    Optional results (None when the decoder has none; see docs/decoders.md):

    masks: one float32 (h, w) map per detection, "inside" where a value is
        greater than ``mask_threshold`` (a bool map counts as 0/1). The map
        covers ``mask_boxes[i]`` (x1, y1, x2, y2 in input pixels; None: the
        detection's own box) edge to edge; it is resampled bilinearly onto the
        image and cut to the detection's box.
    keypoints: (N, K, 3) float32 ``x, y, confidence`` in input pixels; a point
        whose confidence is below ``keypoint_threshold`` is outside.
    angles: (N,) float32 clockwise rotation in degrees of each box about its
        centre (a rotated rectangle; ``boxes`` hold it unrotated).
    tags: True when each row is a class of the whole image (a CVAT tag); the
        boxes mean nothing then.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    polygons: list[np.ndarray] | None = None
    masks: list[np.ndarray] | None = None
    mask_boxes: np.ndarray | None = None
    mask_threshold: float = 0.5
    keypoints: np.ndarray | None = None
    keypoint_threshold: float = 0.5
    angles: np.ndarray | None = None
    tags: bool = False

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
        masks = None if self.masks is None else [self.masks[i] for i in keep]

        def rows(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[keep]

        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep], polys, masks,
                          rows(self.mask_boxes), self.mask_threshold, rows(self.keypoints),
                          self.keypoint_threshold, rows(self.angles), self.tags)


@dataclass(frozen=True)
class DecodeContext:
    """What a decoder may know besides the outputs."""

    input_hw: tuple[int, int]  # height, width of the network input tensor
    score_threshold: float
    num_classes: int | None = None  # number of labels in model.json, if any


DecodeFn = Callable[[Mapping[str, np.ndarray], DecodeContext, Mapping[str, Any]], Detections]
# class_count(runtime_outputs, params): the number of class indices the outputs
# carry (runtime_outputs: the runtime's TensorInfo list, name and shape), or None
# when the shapes cannot tell (dynamic dimensions, classes as values).
ClassCountFn = Callable[[Sequence[Any], Mapping[str, Any]], "int | None"]


@dataclass(frozen=True)
class DecoderInfo:
    name: str
    decode: DecodeFn
    params_schema: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    # What its Detections hold: "boxes" (boxes, polygons or rotated boxes), "masks",
    # "tags" or "keypoints"; model.json types other than detector need their own.
    result: str = "boxes"
    # Optional: how many classes the model's outputs carry (see class_counter).
    class_count: "ClassCountFn | None" = None


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
_MODULES = ("yolo", "ssd", "db_text", "gfl", "ssd_anchors", "segmentation", "instance_seg", "classification",
            "keypoints", "landmarks")


RESULTS = ("boxes", "masks", "tags", "keypoints")


def register(name: str, params_schema: Mapping[str, Any] | None = None, *,
             result: str = "boxes") -> Callable[[DecodeFn], DecodeFn]:
    """Decorator: make ``fn(outputs, ctx, params)`` the decoder called ``name``
    (``result``: one of :data:`RESULTS`, what its Detections hold)."""
    if result not in RESULTS:
        raise ValueError(f"decoder {name!r}: result must be one of {RESULTS}, not {result!r}")

    def wrap(fn: DecodeFn) -> DecodeFn:
        _REGISTRY[name] = DecoderInfo(name, fn, params_schema or {"type": "object"}, result)
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


def class_counter(name: str) -> Callable[[ClassCountFn], ClassCountFn]:
    """Decorator: attach ``fn(runtime_outputs, params) -> int | None`` to the decoder
    ``name`` (registered before) as its :attr:`DecoderInfo.class_count` hook."""
    from dataclasses import replace

    def wrap(fn: ClassCountFn) -> ClassCountFn:
        _REGISTRY[name] = replace(_REGISTRY[name], class_count=fn)
        return fn

    return wrap


def class_count(name: str, runtime_outputs: Sequence[Any], params: Mapping[str, Any]) -> int | None:
    """The class count decoder ``name`` reads off the runtime's output shapes, or
    None (no hook, or the shapes cannot tell)."""
    hook = get(name).class_count
    return None if hook is None else hook(runtime_outputs, params)


def output_info(runtime_outputs: Sequence[Any], key: str | int | None) -> Any | None:
    """The output (TensorInfo) a decoder parameter names, as :func:`output_named`
    picks it from arrays: a name (``:0`` suffix optional), an index, or None for
    the first; None when there is no such output."""
    outputs = list(runtime_outputs)
    if key is None:
        return outputs[0] if outputs else None
    if isinstance(key, int):
        return outputs[key] if 0 <= key < len(outputs) else None
    alternatives = {key, f"{key}:0", key[:-2] if key.endswith(":0") else key}
    return next((o for o in outputs if o.name in alternatives), None)


def static_dims(shape: Sequence[Any] | None) -> tuple[int, ...] | None:
    """``shape`` as ints, or None when it is unknown or has a dynamic dimension."""
    if shape is None or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in shape):
        return None
    return tuple(shape)
