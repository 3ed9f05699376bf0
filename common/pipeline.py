"""One model, end to end: RGB image -> tensor -> runtime -> decoder -> CVAT shapes.

:class:`DetectorPipeline` is built once per worker (model loaded) and then
called per request. Everything per request is pure numpy except the runtime
call itself.

Every model.json type served here answers CVAT as a detector function; the
decoder's result decides the shapes (:func:`to_cvat`): boxes -> rectangles
(rotated where the decoder gives angles) or polygons, masks -> mask shapes
with a polygon, tags -> tags, keypoints -> skeletons (elements named by the
label's sublabels). Types other than detector need a decoder of their result
(:data:`TYPE_RESULTS`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from common import cvat, decoders
from common.decoders import DecodeContext, Detections
from common.errors import ModelConfigError
from common.imaging import decode_image_for
from common.manifest import Label, ModelManifest
from common.model_input import pick_input, required_hw, tensor_hw
from common.preprocess import Transform, prepare
from common.runtimes import Runtime

log = logging.getLogger(__name__)

# model.json type -> the decoder result it needs (detectors take any).
TYPE_RESULTS = {"segmentation": "masks", "classification": "tags", "keypoint": "keypoints"}

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "uint8": np.uint8, "int8": np.int8,
                 "float64": np.float64, "int32": np.int32, "int64": np.int64}


def _decoder_for(manifest: ModelManifest) -> decoders.DecoderInfo:
    """The manifest's decoder, checked to give what its type answers with."""
    wanted = TYPE_RESULTS.get(manifest.type)
    fitting = sorted(name for name in decoders.names() if decoders.get(name).result == wanted) if wanted else []
    if manifest.output.decoder is None:
        raise ModelConfigError([("$.output.decoder", f"type {manifest.type!r} needs a decoder: one of "
                                                     f"{', '.join(fitting)} (see docs/decoders.md)")])
    info = decoders.get(manifest.output.decoder.name)
    if wanted is not None and info.result != wanted:
        raise ModelConfigError([("$.output.decoder.name", f"decoder {info.name!r} gives {info.result}, "
                                                          f"type {manifest.type!r} needs {wanted}: use one of "
                                                          f"{', '.join(fitting)}")])
    return info


class DetectorPipeline:
    def __init__(self, manifest: ModelManifest, runtime: Runtime):
        self.manifest = manifest
        self.runtime = runtime
        self.decoder = _decoder_for(manifest)
        self.labels = manifest.label_by_id()
        self.input = pick_input(manifest.input, runtime.inputs)
        # resize mode none: the picture goes in at its own size
        self.target_hw = None if manifest.input.resize.mode == "none" else required_hw(manifest.input, self.input)

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

    def detect(self, image: np.ndarray, threshold: float) -> tuple[Detections, Transform]:
        """The decoder's detections on an H×W×3 uint8 RGB image, in network-input pixels,
        and the transform that maps them back onto the image."""
        tensor, transform = self.preprocess(image)
        outputs = self.runtime.run({self.input.name: tensor})
        return self.decode(outputs, tensor_hw(tensor, self.manifest.input.layout), threshold), transform

    def needed_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) a picture of this size is resized to before the network."""
        if self.target_hw is None:
            return width, height
        th, tw = self.target_hw
        if self.manifest.input.resize.mode == "stretch":
            return tw, th
        r = min(th / height, tw / width)
        return max(1, round(width * r)), max(1, round(height * r))

    def handle(self, body: Any) -> list[dict[str, Any]]:
        """CVAT's detector call: ``{"image": <base64>, "threshold"?}`` (``event.body`` as
        Nuclio gives it) -> the JSON array of shapes (common.serving's interface)."""
        request = cvat.parse_detector_request(body)
        return self.annotate(request.image, request.threshold)

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
        detections, transform = self.detect(image, threshold)
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
    classes, and build CVAT items: tags, skeletons, masks, polygons, rotated
    or plain rectangles, by what the decoder gave."""
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
        if dets.tags:
            item = cvat.tag(label.name, score)
        elif dets.keypoints is not None:
            item = _keypoints_item(dets, i, label, transform, image_hw)
        elif dets.masks is not None and dets.masks[i] is not None:
            item = _mask_item(dets, i, label, boxes[i], transform, image_hw)
        elif dets.polygons is not None and dets.polygons[i] is not None:
            xy = transform.points_to_image(np.asarray(dets.polygons[i], np.float64).reshape(-1, 2))
            xy[:, 0] = np.clip(xy[:, 0], 0, width)
            xy[:, 1] = np.clip(xy[:, 1], 0, height)
            xy = cvat.clean_polygon(xy)
            item = None if xy is None else cvat.polygon(label.name, xy, score)
        elif dets.angles is not None and float(dets.angles[i]) % 360.0 != 0.0:
            item = _rotated_item(dets, i, label, transform)
        else:
            x1, y1, x2, y2 = boxes[i]
            item = cvat.rectangle(label.name, boxes[i], score) if x2 - x1 > 0 and y2 - y1 > 0 else None
        if item is not None:
            items.append(item)
    if unknown:
        log.debug("dropped %d detections of classes without a label in model.json", unknown)
    return items


def _rotated_item(dets: Detections, i: int, label: Label, transform: Transform) -> dict[str, Any] | None:
    """A rotated rectangle: its corners mapped to the image (a stretch may
    change the angle), then centre, side lengths and angle read back."""
    x1, y1, x2, y2 = (float(v) for v in dets.boxes[i])
    theta = np.deg2rad(float(dets.angles[i]))
    cos, sin = np.cos(theta), np.sin(theta)
    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    local = np.array([[-hw, -hh], [hw, -hh], [hw, hh], [-hw, hh]])
    # clockwise on screen (y down) by theta
    corners = np.stack([cx + local[:, 0] * cos - local[:, 1] * sin, cy + local[:, 0] * sin + local[:, 1] * cos], 1)
    c = transform.points_to_image(corners)
    w, h = float(np.hypot(*(c[1] - c[0]))), float(np.hypot(*(c[3] - c[0])))
    if w <= 0 or h <= 0:
        return None
    centre = c.mean(axis=0)
    angle = float(np.degrees(np.arctan2(c[1][1] - c[0][1], c[1][0] - c[0][0])))
    box = [centre[0] - w / 2, centre[1] - h / 2, centre[0] + w / 2, centre[1] + h / 2]
    return cvat.rectangle(label.name, box, float(dets.scores[i]), rotation=angle)


def _keypoints_item(dets: Detections, i: int, label: Label, transform: Transform,
                    image_hw: tuple[int, int]) -> dict[str, Any] | None:
    """A skeleton with one element per sublabel (keypoint ``sublabel.id``), or,
    for a label without sublabels, a points shape of the points seen. None
    when no point is seen."""
    height, width = image_hw
    kp = np.asarray(dets.keypoints[i], np.float64)
    xy = transform.points_to_image(kp[:, :2])
    xy[:, 0] = np.clip(xy[:, 0], 0, width)
    xy[:, 1] = np.clip(xy[:, 1], 0, height)
    seen = kp[:, 2] >= dets.keypoint_threshold
    score = float(dets.scores[i])
    if not label.sublabels:
        return cvat.points(label.name, xy[seen], score) if seen.any() else None
    elements = []
    for sub in label.sublabels:
        if not 0 <= sub.id < len(kp):
            raise ModelConfigError([("$.labels", f"skeleton {label.name!r}: point {sub.name!r} has id {sub.id}, "
                                                 f"but the model gives {len(kp)} keypoints (ids 0..{len(kp) - 1})")])
        elements.append(cvat.skeleton_point(sub.name, xy[sub.id], outside=not seen[sub.id]))
    if all(e["outside"] for e in elements):
        return None  # CVAT would drop it too
    return cvat.skeleton(label.name, elements, score)


# Rows of a mask resampled at once: bounds the float buffer of a large mask.
_MASK_STRIP_ROWS = 512


def _pixel_range(lo: float, hi: float, size: int) -> tuple[int, int]:
    """First and last pixel whose centre lies in [lo, hi] (continuous coords), clipped to [0, size - 1]."""
    return max(0, int(np.ceil(lo - 0.5))), min(size - 1, int(np.floor(hi - 0.5)))


def _axis_taps(positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps on an axis of ``n`` samples: (lower index, upper index, upper weight)."""
    u = np.clip(positions, 0.0, n - 1.0)
    lower = np.floor(u).astype(np.int64)
    return lower, np.minimum(lower + 1, n - 1), (u - lower).astype(np.float32)


def _mask_item(dets: Detections, i: int, label: Label, box: np.ndarray, transform: Transform,
               image_hw: tuple[int, int]) -> dict[str, Any] | None:
    """The mask of detection ``i`` on the image: its map (covering its mask box,
    in input pixels) sampled bilinearly at the centre of every image pixel of
    the detection's box, thresholded, cut to the pixels inside; None when empty."""
    height, width = image_hw
    values = np.asarray(dets.masks[i], np.float32)
    if values.ndim != 2 or values.size == 0:
        raise ModelConfigError([("$.output.decoder", f"a mask must be a 2-D map, got shape {list(values.shape)}")])
    extent = np.asarray(dets.mask_boxes[i] if dets.mask_boxes is not None else dets.boxes[i], np.float64)
    ex1, ey1, ex2, ey2 = extent
    if ex2 <= ex1 or ey2 <= ey1:
        return None
    on_image = transform.boxes_to_image(extent[None])[0]
    c0, c1 = _pixel_range(max(box[0], on_image[0]), min(box[2], on_image[2]), width)
    r0, r1 = _pixel_range(max(box[1], on_image[1]), min(box[3], on_image[3]), height)
    if c1 < c0 or r1 < r0:
        return None
    mh, mw = values.shape
    # image pixel centres -> input pixels -> positions on the map (sample centres at index + 0.5)
    xs = transform.points_to_input(np.stack([np.arange(c0, c1 + 1) + 0.5, np.zeros(c1 - c0 + 1)], 1))[:, 0]
    ys = transform.points_to_input(np.stack([np.zeros(r1 - r0 + 1), np.arange(r0, r1 + 1) + 0.5], 1))[:, 1]
    x_lo, x_hi, x_w = _axis_taps((xs - ex1) / (ex2 - ex1) * mw - 0.5, mw)
    y_lo, y_hi, y_w = _axis_taps((ys - ey1) / (ey2 - ey1) * mh - 0.5, mh)
    inside = np.empty((r1 - r0 + 1, c1 - c0 + 1), bool)
    for start in range(0, inside.shape[0], _MASK_STRIP_ROWS):
        rows = slice(start, start + _MASK_STRIP_ROWS)
        wy = y_w[rows, None]
        strip = values[y_lo[rows]] * (1 - wy) + values[y_hi[rows]] * wy
        inside[rows] = strip[:, x_lo] * (1 - x_w) + strip[:, x_hi] * x_w > dets.mask_threshold
    if not inside.any():
        return None
    ys_in, xs_in = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    crop = inside[ys_in[0]:ys_in[-1] + 1, xs_in[0]:xs_in[-1] + 1]
    x1, y1 = c0 + int(xs_in[0]), r0 + int(ys_in[0])
    if label.type == "polygon":
        # The label asks for polygons: the outline alone, not a value for every pixel of the box
        # (a large mask is megabytes of JSON).
        return cvat.polygon(label.name, cvat.mask_polygon(crop, (x1, y1)), float(dets.scores[i]))
    return cvat.mask(label.name, crop, (x1, y1, x1 + crop.shape[1] - 1, y1 + crop.shape[0] - 1),
                     float(dets.scores[i]))
