"""One model, end to end: RGB image -> tensor -> runtime -> decoder -> CVAT shapes.

:class:`DetectorPipeline` is built once per worker (model loaded) and then
called per request. Everything per request is pure numpy except the runtime
call itself.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from common import cvat, decoders
from common.decoders import DecodeContext, Detections
from common.errors import RuntimeLoadError
from common.imaging import decode_image_for
from common.manifest import ModelManifest
from common.preprocess import Transform, prepare
from common.runtimes import Runtime

log = logging.getLogger(__name__)

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int8": np.int8,
                 "float64": np.float64, "int32": np.int32, "int64": np.int64}


class DetectorPipeline:
    def __init__(self, manifest: ModelManifest, runtime: Runtime):
        self.manifest = manifest
        self.runtime = runtime
        self.decoder = decoders.get(manifest.output.decoder.name)
        self.labels = manifest.label_by_id()
        self.input = self._pick_input()
        self.target_hw = self._target_hw()

    def _pick_input(self):
        wanted = self.manifest.input.name
        if wanted is None:
            return self.runtime.inputs[0]
        for info in self.runtime.inputs:
            if info.name == wanted:
                return info
        names = ", ".join(i.name for i in self.runtime.inputs)
        raise RuntimeLoadError(f"model.json input.name {wanted!r} is not an input of the model (inputs: {names})")

    def _target_hw(self) -> tuple[int, int] | None:
        resize = self.manifest.input.resize
        if resize.mode == "none":
            return None
        if resize.width and resize.height:
            return resize.height, resize.width
        shape = self.input.shape
        if len(shape) == 4:
            h, w = (shape[2], shape[3]) if self.manifest.input.layout == "NCHW" else (shape[1], shape[2])
            if h and w:
                return int(h), int(w)
        raise RuntimeLoadError(f"cannot tell the input size of {self.input.name} {shape}: "
                               "set input.preprocessing.resize.width and .height in model.json")

    def warm_up(self) -> None:
        """One inference on a blank picture at start: the first CVAT request
        is not the slow one, and a model.json whose decoder does not fit the
        model's outputs fails at start instead of on every request."""
        hw = self.target_hw or (64, 64)
        self(np.zeros((hw[0], hw[1], 3), np.uint8), 1.0)

    # -- per request ------------------------------------------------------
    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Transform]:
        tensor, transform = prepare(image, self.manifest.input, self.target_hw)
        dtype = self.input.dtype
        if dtype is not None and tensor.dtype != dtype and np.dtype(dtype) in map(np.dtype, _NUMPY_DTYPES.values()):
            tensor = tensor.astype(dtype, copy=False)
        return tensor, transform

    def decode(self, outputs: dict[str, np.ndarray], input_hw: tuple[int, int], threshold: float) -> Detections:
        ctx = DecodeContext(input_hw=input_hw, score_threshold=threshold, num_classes=len(self.labels) or None)
        return self.decoder.decode(outputs, ctx, self.manifest.output.decoder.params)

    def needed_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) a picture of this size is resized to before the network."""
        if self.target_hw is None:
            return width, height
        th, tw = self.target_hw
        if self.manifest.input.resize.mode == "stretch":
            return tw, th
        r = min(th / height, tw / width)
        return max(1, round(width * r)), max(1, round(height * r))

    def annotate(self, data: bytes | str, threshold: float | None = None) -> list[dict[str, Any]]:
        """CVAT detector items for an encoded picture (raw or base64), in its own pixels.

        A large JPEG is decoded at the reduced scale the network needs
        (see :func:`common.imaging.decode_image_for`); shapes are mapped back
        to the full picture.
        """
        pixels, full_size = decode_image_for(data, self.needed_size)
        return self(pixels, threshold, full_size=full_size)

    def __call__(self, image: np.ndarray, threshold: float | None = None, *,
                 full_size: tuple[int, int] | None = None) -> list[dict[str, Any]]:
        """CVAT detector items for an H×W×3 uint8 RGB image.

        ``full_size`` (width, height): the picture ``image`` was decoded from
        at a reduced scale; shapes are scaled back to it.
        """
        if threshold is None:
            threshold = self.manifest.output.score_threshold
        tensor, transform = self.preprocess(image)
        outputs = self.runtime.run({self.input.name: tensor})
        hw = (tensor.shape[2], tensor.shape[3]) if self.manifest.input.layout == "NCHW" else tensor.shape[1:3]
        detections = self.decode(outputs, (int(hw[0]), int(hw[1])), threshold)
        height, width = image.shape[:2]
        if full_size is not None and full_size != (width, height):
            transform = transform.then_scale(_reduction(full_size[0], width), _reduction(full_size[1], height))
            width, height = full_size
        return to_cvat(detections, transform, (height, width), self.labels)


def _reduction(full: int, decoded: int) -> float:
    """The scale between a picture and its reduced decode. A JPEG decoded at
    1/f has ceil(full / f) pixels, each covering exactly f source pixels (the
    last one fewer), so the factor is f, not full / decoded."""
    for f in (2, 4, 8):
        if -(-full // f) == decoded:
            return float(f)
    return full / decoded


def to_cvat(dets: Detections, transform: Transform, image_hw: tuple[int, int], labels: dict) -> list[dict[str, Any]]:
    """Map detections back to the image, clamp, drop empty shapes and unknown
    classes, and build CVAT items (polygons where the decoder gave them)."""
    height, width = image_hw
    items: list[dict[str, Any]] = []
    if len(dets) == 0:
        return items
    boxes = transform.boxes_to_image(dets.boxes.astype(np.float64))
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    unknown = 0
    for i in range(len(dets)):
        label = labels.get(int(dets.class_ids[i]))
        if label is None:
            unknown += 1
            continue
        score = float(dets.scores[i])
        if dets.polygons is not None and dets.polygons[i] is not None:
            xy = transform.points_to_image(np.asarray(dets.polygons[i], np.float64).reshape(-1, 2))
            xy[:, 0] = np.clip(xy[:, 0], 0, width)
            xy[:, 1] = np.clip(xy[:, 1], 0, height)
            xy = _clean_polygon(xy)
            if xy is not None:
                items.append(cvat.polygon(label.name, xy, score))
            continue
        x1, y1, x2, y2 = boxes[i]
        if x2 - x1 > 0 and y2 - y1 > 0:
            items.append(cvat.rectangle(label.name, boxes[i], score))
    if unknown:
        log.debug("dropped %d detections of classes without a label in model.json", unknown)
    return items


def _clean_polygon(xy: np.ndarray) -> np.ndarray | None:
    """Drop repeated neighbours; None when fewer than 3 distinct vertices or no area."""
    xy = np.round(xy, 2)
    keep = np.any(xy != np.roll(xy, 1, axis=0), axis=1)
    xy = xy[keep] if keep.any() else xy[:1]
    if len(xy) < 3:
        return None
    x, y = xy[:, 0], xy[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    return xy if area > 0 else None
