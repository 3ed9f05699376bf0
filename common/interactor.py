"""CVAT interactors: a prompt (box and/or clicks) -> one object mask.

CVAT sends ``{"image", "pos_points": [[x, y], ...], "neg_points": [...],
"obj_bbox": [[x1, y1], [x2, y2]] | [] | null, "threshold"?}`` and, since
v2.60, reads ``{"shapes": [{"type": "mask", "points": <RLE + box>,
"attributes": [{"spec_id": 0, "value": "<confidence>"}]}]}``
(cvat-contract.md §2.3, §2.4; docs/kinds.md).

:class:`InteractorPipeline` runs a segmentation model that gives a
per-pixel probability (model.json ``output.decoder``: ``semantic_segmentation``)
on the region around the prompt, then refines with classic image processing:

1. region: the box (grown by :data:`BOX_CONTEXT` for the model's context; the
   mask stays inside the box), or without a box the points' bounding box grown
   by :func:`point_margin`, grown further while the mask reaches its inner sides;
2. the model's probability map, resampled onto the region; pixels above the
   threshold (request ``threshold``, else the decoder's ``threshold``) are in;
3. the connected parts holding a positive click are kept (with a box and no
   click: the largest part inside the box); a part holding a negative click
   is dropped, or, when it holds a positive click too, cut between them
   (pixels nearer a negative click than any positive one go);
4. holes are filled; confidence = the mean probability inside the mask.

The mask is answered over its own bounding box (:func:`common.cvat.mask_rle_points`).
Nothing is found -> ``{"shapes": []}`` (status 200).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

from common import cvat
from common.decoders import output_named
from common.decoders.classification import activate
from common.errors import BadRequest, ModelConfigError
from common.imaging import decode_image
from common.manifest import ModelManifest
from common.model_input import pick_input, required_hw, tensor_hw
from common.preprocess import prepare
from common.publish.kinds import interactor_annotations
from common.runtimes import Runtime

log = logging.getLogger(__name__)

# The box is grown by this share of its size on each side before the model sees it (context).
BOX_CONTEXT = 0.1
DECODER = "semantic_segmentation"
_SEG_DEFAULTS = {"output": None, "mode": "argmax", "layout": "auto", "activation": "none", "threshold": 0.5,
                 "ignore_classes": []}


@dataclass(frozen=True)
class InteractorSettings:
    """model.json's ``interactor`` object, as published to CVAT (common.publish.kinds)."""

    min_pos_points: int = 1
    min_neg_points: int = -1  # -1: CVAT's "no negative points"
    startswith_box: bool = False

    @classmethod
    def of(cls, manifest: ModelManifest) -> "InteractorSettings":
        ann = interactor_annotations(manifest)  # the same source the published annotations come from
        return cls(int(ann["min_pos_points"]), int(ann["min_neg_points"]), "startswith_box" in ann)


@dataclass(frozen=True)
class InteractorRequest:
    image: bytes | str
    pos_points: tuple[tuple[float, float], ...]
    neg_points: tuple[tuple[float, float], ...]
    box: tuple[float, float, float, float] | None  # x1, y1, x2, y2
    threshold: float | None


def _number(value: Any, where: str) -> float:
    try:  # a JSON integer may be too large for a float (OverflowError)
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:
        number = math.nan
    if not math.isfinite(number):
        raise BadRequest(f"{where} must be a number, got {cvat._shown(value)}")
    return number


def _points(data: Mapping[str, Any], key: str) -> tuple[tuple[float, float], ...]:
    if key not in data:
        raise BadRequest(f"missing {key!r}: a list of [x, y] pairs (may be empty)")
    value = data[key]
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest(f"{key!r} must be a list of [x, y] pairs, got {cvat._shown(value)}")
    if value and not all(isinstance(p, list) for p in value):
        raise BadRequest(f"{key!r} must be a list of [x, y] pairs such as [[10, 20], [30, 40]], "
                         f"not a flat list: got {cvat._shown(value)}")
    out = []
    for i, pair in enumerate(value):
        if len(pair) != 2:
            raise BadRequest(f"{key}[{i}] must be one [x, y] pair, got {cvat._shown(pair)}")
        out.append((_number(pair[0], f"{key}[{i}][0]"), _number(pair[1], f"{key}[{i}][1]")))
    return tuple(out)


def _box(value: Any) -> tuple[float, float, float, float] | None:
    if value is None or value == []:
        return None  # CVAT sends [] (or drops null) when no box was drawn
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(p, list) and len(p) == 2 for p in value)):
        raise BadRequest(f"'obj_bbox' must be [[x1, y1], [x2, y2]], [] or null, got {cvat._shown(value)}")
    (x1, y1), (x2, y2) = [(_number(p[0], "obj_bbox"), _number(p[1], "obj_bbox")) for p in value]
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return x1, y1, x2, y2


def parse_interactor_request(body: Any, settings: InteractorSettings = InteractorSettings()) -> InteractorRequest:
    """CVAT's interactor payload, checked; BadRequest says what is wrong.

    A box counts as a prompt: without one, at least ``max(1, min_pos_points)``
    positive points are needed; with one, positive points are optional."""
    data = cvat.parse_body(body)
    image = cvat.request_image(data)
    pos, neg = _points(data, "pos_points"), _points(data, "neg_points")
    box = _box(data.get("obj_bbox"))
    if box is None and settings.startswith_box:
        raise BadRequest("this interactor starts with a box: 'obj_bbox' [[x1, y1], [x2, y2]] is required")
    if box is None and len(pos) < max(1, settings.min_pos_points):
        raise BadRequest(f"'pos_points' has {len(pos)} point(s); this interactor needs a box or at least "
                         f"{max(1, settings.min_pos_points)} positive point(s)")
    if settings.min_neg_points > 0 and len(neg) < settings.min_neg_points:
        raise BadRequest(f"'neg_points' has {len(neg)} point(s); this interactor needs at least "
                         f"{settings.min_neg_points}")
    return InteractorRequest(image, pos, neg, box, cvat.parse_threshold(data.get("threshold")))


def point_margin(span: float, width: int, height: int) -> float:
    """How far the region first reaches beyond the clicks without a box: half the clicks'
    extent, and at least a quarter of the image's longer side (one click has no extent).
    While the mask reaches a side of the region inside the image, the margin doubles:
    whole-object models need the whole object in view (a small region around a click on
    a person's chest shows the model cloth, not a person)."""
    return max(0.5 * span, 0.25 * max(width, height))


def _pixel(xy: tuple[float, float], width: int, height: int, key: str) -> tuple[int, int]:
    """A click as a pixel index. CVAT's coordinates are continuous (the right edge is x = width):
    a click on [0, width] x [0, height] is taken; one further out is a mistake (wrong frame or ROI)."""
    x, y = xy
    if not (0 <= x <= width and 0 <= y <= height):
        raise BadRequest(f"{key} point [{x:g}, {y:g}] lies outside the {width}x{height} image")
    return min(int(x), width - 1), min(int(y), height - 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background area that does not reach the border filled."""
    padded = np.pad(mask.astype(np.uint8), 1)
    outside = padded.copy()
    flood = np.zeros((padded.shape[0] + 2, padded.shape[1] + 2), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 1)
    return (padded.astype(bool) | ~outside.astype(bool))[1:-1, 1:-1]


def _nearest(shape: tuple[int, int], seeds: list[tuple[int, int]]) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest seed (x, y)."""
    grid = np.ones(shape, np.uint8)
    for x, y in seeds:
        grid[y, x] = 0
    return cv2.distanceTransform(grid, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def refine(inside: np.ndarray, pos: list[tuple[int, int]], neg: list[tuple[int, int]]) -> np.ndarray:
    """The object mask from the thresholded map ``inside`` and clicks (x, y in its pixels):
    parts with a positive click (none given: the largest part), minus parts with a negative
    click (cut between the clicks where a part holds both), holes filled except those
    holding a negative click."""
    inside = inside.astype(bool)
    count, ids = cv2.connectedComponents(inside.astype(np.uint8), connectivity=8)
    both = ({int(ids[y, x]) for x, y in pos} & {int(ids[y, x]) for x, y in neg}) - {0}
    if both:
        # Where one part holds clicks of both kinds, its pixels nearer a negative click go.
        shared = np.isin(ids, sorted(both))
        inside = inside & ~(shared & (_nearest(inside.shape, neg) < _nearest(inside.shape, pos)))
        count, ids = cv2.connectedComponents(inside.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(inside)
    dropped = {int(ids[y, x]) for x, y in neg} - {0}
    if pos:
        kept = {int(ids[y, x]) for x, y in pos} - {0}
    else:
        areas = np.bincount(ids.ravel(), minlength=count)
        areas[0] = 0
        areas[sorted(dropped)] = 0
        kept = {int(np.argmax(areas))} if areas.max() > 0 else set()
    kept -= dropped
    if not kept:
        return np.zeros_like(inside)
    mask = np.isin(ids, sorted(kept))
    filled = fill_holes(mask)
    if neg:
        _, holes = cv2.connectedComponents((filled & ~mask).astype(np.uint8), connectivity=4)
        marked = {int(holes[y, x]) for x, y in neg} - {0}
        if marked:
            filled &= ~np.isin(holes, sorted(marked))
    return filled


class InteractorPipeline:
    """A probability-map model behind CVAT's interactor call (see the module docstring)."""

    def __init__(self, manifest: ModelManifest, runtime: Runtime):
        self.manifest = manifest
        self.runtime = runtime
        self.settings = InteractorSettings.of(manifest)
        decoder = manifest.output.decoder
        if decoder is None or decoder.name != DECODER:
            raise ModelConfigError([("$.output.decoder", f"an interactor reads a per-pixel probability map: set "
                                                         f"output.decoder to {{\"name\": \"{DECODER}\", ...}} "
                                                         f"(see docs/kinds.md)")])
        self.params = {**_SEG_DEFAULTS, **decoder.params}
        self.input = pick_input(manifest.input, runtime.inputs)
        # regions of any size are fitted to one network size, whatever resize.mode says
        self.target_hw = required_hw(manifest.input, self.input)

    def warm_up(self) -> None:
        h, w = self.target_hw
        self.probability(np.zeros((h, w, 3), np.uint8))

    # -- model -------------------------------------------------------------
    def probability(self, region: np.ndarray) -> np.ndarray:
        """The object probability (float32, 0..1) of every pixel of an RGB ``region``."""
        tensor, transform = prepare(region, self.manifest.input, self.target_hw)
        if self.input.dtype is not None and tensor.dtype != self.input.dtype:
            tensor = tensor.astype(self.input.dtype, copy=False)
        outputs = self.runtime.run({self.input.name: tensor})
        plane = self._object_plane(np.asarray(output_named(outputs, self.params["output"], "output")))
        in_h, in_w = tensor_hw(tensor, self.manifest.input.layout)
        # the map covers the network input; the region occupies [pad, pad + size * scale) of it
        plane = cv2.resize(plane, (int(in_w), int(in_h)), interpolation=cv2.INTER_LINEAR)
        h, w = region.shape[:2]
        x0, y0 = transform.points_to_input(np.array([[0.0, 0.0]]))[0]
        x1, y1 = transform.points_to_input(np.array([[float(w), float(h)]]))[0]
        xs = np.clip(x0 + (np.arange(w) + 0.5) * (x1 - x0) / w - 0.5, 0, in_w - 1).astype(np.float32)
        ys = np.clip(y0 + (np.arange(h) + 0.5) * (y1 - y0) / h - 0.5, 0, in_h - 1).astype(np.float32)
        map_x, map_y = np.meshgrid(xs, ys)
        return np.clip(cv2.remap(plane, map_x, map_y, cv2.INTER_LINEAR), 0.0, 1.0)

    def _object_plane(self, value: np.ndarray) -> np.ndarray:
        """The (h, w) object probability from the decoder-configured output."""
        p = self.params
        ignored = set(p["ignore_classes"])
        if p["mode"] == "class_map":
            classes = np.rint(value.reshape([d for d in value.shape if d != 1] or [1, 1]))
            return (~np.isin(classes, sorted(ignored))).astype(np.float32)
        if value.ndim == 3:
            value = value[:, None] if p["layout"] != "NHWC" else value[..., None]
        if value.ndim != 4:
            raise ModelConfigError([("$.output.decoder", f"expected a map [1, C, h, w] or [1, h, w, C], got "
                                                         f"{list(value.shape)}")])
        layout = p["layout"]
        if layout == "auto":
            layout = "NCHW" if value.shape[1] <= value.shape[3] else "NHWC"
        maps = value[0] if layout == "NCHW" else np.moveaxis(value[0], -1, 0)
        if p["activation"] == "softmax":
            maps = np.moveaxis(activate(np.moveaxis(maps, 0, -1), "softmax"), -1, 0)
        else:
            maps = activate(maps, p["activation"])
        keep = [c for c in range(maps.shape[0]) if c not in ignored]
        if not keep:
            raise ModelConfigError([("$.output.decoder.ignore_classes", "every class is ignored")])
        return np.clip(maps[keep].max(axis=0), 0.0, 1.0).astype(np.float32)

    # -- per request ---------------------------------------------------------
    def handle(self, body: Any) -> dict[str, Any]:
        return self.interact(parse_interactor_request(body, self.settings))

    def interact(self, request: InteractorRequest) -> dict[str, Any]:
        image = decode_image(request.image)
        height, width = image.shape[:2]
        pos = [_pixel(p, width, height, "positive") for p in request.pos_points]
        neg = [_pixel(p, width, height, "negative") for p in request.neg_points]
        threshold = request.threshold if request.threshold is not None else float(self.params["threshold"])
        if request.box is not None:
            bx1, by1, bx2, by2 = request.box
            fence = (max(0, math.floor(bx1)), max(0, math.floor(by1)), min(width, math.ceil(bx2)),
                     min(height, math.ceil(by2)))
            if fence[2] <= fence[0] or fence[3] <= fence[1]:
                raise BadRequest(f"'obj_bbox' [{bx1:g}, {by1:g}, {bx2:g}, {by2:g}] has no area inside the "
                                 f"{width}x{height} image")
            mx, my = BOX_CONTEXT * (fence[2] - fence[0]), BOX_CONTEXT * (fence[3] - fence[1])
            region = _clip((fence[0] - mx, fence[1] - my, fence[2] + mx, fence[3] + my), width, height)
            mask, prob = self._segment(image, region, fence, pos, neg, threshold)
        else:
            xs, ys = [x for x, _ in pos], [y for _, y in pos]
            margin = point_margin(max(max(xs) - min(xs), max(ys) - min(ys)), width, height)
            while True:
                region = _clip((min(xs) - margin, min(ys) - margin, max(xs) + 1 + margin, max(ys) + 1 + margin),
                               width, height)
                mask, prob = self._segment(image, region, None, pos, neg, threshold)
                if region == (0, 0, width, height) or not _touches_inner_edge(mask, region, width, height):
                    break
                margin *= 2  # the object reaches out of the region: show the model more of it
        if not mask.any():
            log.debug("interactor: nothing above %.2f at the prompt", threshold)
            return {"shapes": []}
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        crop = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        confidence = float(prob[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1][crop].mean())
        return {"shapes": [interactor_mask(crop, (region[0] + int(cols[0]), region[1] + int(rows[0])), confidence)]}

    def _segment(self, image: np.ndarray, region: tuple[int, int, int, int], fence: tuple[int, int, int, int] | None,
                 pos: list[tuple[int, int]], neg: list[tuple[int, int]], threshold: float
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(mask, probability) over ``region`` (x1, y1, x2, y2); the mask kept inside ``fence``."""
        rx1, ry1, rx2, ry2 = region
        prob = self.probability(np.ascontiguousarray(image[ry1:ry2, rx1:rx2]))
        inside = prob > threshold
        fenced = np.ones_like(inside)
        if fence is not None:  # a box bounds the object
            fenced[:] = False
            fenced[fence[1] - ry1:fence[3] - ry1, fence[0] - rx1:fence[2] - rx1] = True
            inside &= fenced
        # clicks outside the region (possible only with a box) cannot select anything in it
        local = [(x - rx1, y - ry1) for x, y in pos if rx1 <= x < rx2 and ry1 <= y < ry2]
        local_neg = [(x - rx1, y - ry1) for x, y in neg if rx1 <= x < rx2 and ry1 <= y < ry2]
        return refine(inside, local, local_neg) & fenced, prob


def _clip(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    return (max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1]))),
            min(width, int(math.ceil(box[2]))), min(height, int(math.ceil(box[3]))))


def _touches_inner_edge(mask: np.ndarray, region: tuple[int, int, int, int], width: int, height: int) -> bool:
    """Whether the mask reaches a side of the region that is not the image's border."""
    x1, y1, x2, y2 = region
    return bool((x1 > 0 and mask[:, 0].any()) or (y1 > 0 and mask[0].any())
                or (x2 < width and mask[:, -1].any()) or (y2 < height and mask[-1].any()))


def interactor_mask(crop: np.ndarray, origin: tuple[int, int], confidence: float) -> dict[str, Any]:
    """One shape of an interactor answer: CVAT RLE over the crop's inclusive box, the
    confidence as the ``spec_id`` 0 attribute (a string, as CVAT's UI reads it)."""
    return {"type": "mask", "points": cvat.mask_rle_points(crop, origin),
            "attributes": [{"spec_id": 0, "value": f"{min(max(confidence, 0.0), 1.0):.4f}"}]}
