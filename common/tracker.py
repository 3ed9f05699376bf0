"""CVAT trackers: follow shapes from frame to frame, the track kept in a JSON state.

CVAT calls a tracker with ``{"image", "shapes", "states"}`` (cvat-contract.md
§2.3, §2.4; docs/kinds.md):

* init: ``shapes`` = the shapes to follow, ``states`` = ``[]``;
* continue: ``shapes`` = ``[null] * n``, ``states`` = the states it answered last
  (CVAT before v2.40 sent the previous frame's shapes instead of nulls: a shape
  given with a state is where the track continues from).

The answer is ``{"shapes": [...], "states": [...]}``, one entry per input, in
order. Shapes are ``{"type", "points"}`` objects when the request's shapes are
(functions with ``supported_shape_types``), bare ``[x1, y1, x2, y2]`` arrays in
CVAT's legacy form (the form is kept in the state, so continue calls, whose
shapes are null, answer in the form the track started with).

A state is a plain JSON object holding everything a worker needs to continue
the track, whichever worker process started it (:class:`TrackState`): the
target's template as a small base64 PNG, the tracked box, velocity, the shape's
outline relative to the box, the model and a format version. Nothing is kept
in process memory between calls.

The algorithm (:class:`TrackerPipeline`): classic template matching
(normalised cross-correlation, OpenCV ``TM_CCOEFF_NORMED``) of the initial
template in a window around the predicted place, at a few scales, with
sub-pixel peak refinement; combined with a real detector (model.json's model
and ``output.decoder``) that re-checks each frame: when the target was a
detection at init, the detection that best overlaps the template match pulls
the box towards it (corrects drift and scale) and recovers the target when
the template no longer matches.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from common import cvat
from common.errors import BadRequest
from common.imaging import decode_image
from common.manifest import ModelManifest
from common.publish.kinds import tracker_annotations
from common.runtimes import Runtime

log = logging.getLogger(__name__)

STATE_FORMAT = 1
TEMPLATE_SIDE = 64  # longest side of the stored template, pixels (keeps states small)
SCALE_STEP = 1.04  # scales 1/step, 1 and step are tried per frame; the best scale is interpolated
SCALE_DEADBAND = 0.004  # a scale this close to 1 is 1 (noise must not make the box breathe)
SEARCH = 1.0  # the search window reaches this many box sizes beyond the predicted box
MIN_SCORE = 0.35  # below this correlation the template match counts as lost
DETECTION_IOU = 0.5  # a detection this close to the box (IoU) is the target
TRUSTED_SCORE = 0.8  # a template match this good is not corrected by the detector
MIN_SIDE = 2.0  # pixels: smaller boxes cannot be tracked
MIN_TEXTURE = 2.0  # grey levels (std): a flatter template matches anything equally well, i.e. nothing
# Coordinates (shapes, state boxes, velocities) beyond this are no picture's: larger ones would
# overflow the geometry (inf - inf) and make non-JSON answers.
MAX_COORD = 1e9
# A stored template is a PNG of at most TEMPLATE_SIDE pixels a side: this many base64 characters
# hold any such PNG (raw 64x64 RGB + filter bytes + headers), so a bigger one was not made here.
MAX_TEMPLATE_CHARS = 32 * 1024


@dataclass(frozen=True)
class TrackState:
    """One track, as JSON (``asdict``): everything needed to continue it anywhere.

    ``box`` is the tracked template box [x1, y1, x2, y2] (floats, image pixels);
    ``outline`` the shape's points relative to it (0..1 of its width/height);
    ``anchor`` the box relative to the detection that matched it at init, or None."""

    format: int
    model: str
    type: str
    legacy: bool
    box: list[float]
    velocity: list[float]
    outline: list[float]
    template: str  # base64 PNG, RGB
    anchor: list[float] | None
    score: float
    misses: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: Any, index: int) -> "TrackState":
        where = f"states[{index}]"
        if not isinstance(value, Mapping):
            raise BadRequest(f"{where} must be a tracker state object, got {cvat._shown(value)}")
        if value.get("format") != STATE_FORMAT:
            raise BadRequest(f"{where} is not a state of this tracker (format {cvat._shown(value.get('format'))}, "
                             f"expected {STATE_FORMAT}): start the track again")
        try:
            state = cls(format=STATE_FORMAT, model=str(value["model"]), type=str(value["type"]),
                        legacy=bool(value["legacy"]), box=_floats(value["box"], 4), velocity=_floats(value["velocity"], 2),
                        outline=_floats(value["outline"], None), template=str(value["template"]),
                        anchor=None if value.get("anchor") is None else _floats(value["anchor"], 4),
                        score=_floats([value["score"]], 1)[0], misses=int(value["misses"]))
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise BadRequest(f"{where} is not a valid tracker state ({type(exc).__name__}: {exc})") from None
        if state.box[2] - state.box[0] < MIN_SIDE or state.box[3] - state.box[1] < MIN_SIDE:
            raise BadRequest(f"{where} holds an empty box {state.box}")
        return state


def _floats(value: Any, count: int | None) -> list[float]:
    if not isinstance(value, list) or (count is not None and len(value) != count):
        raise ValueError(f"expected {count or 'a list of'} numbers, got {cvat._shown(value)}")
    try:
        out = [float(v) for v in value]
    except OverflowError:  # a JSON integer too large for a float
        out = [math.inf]
    if not all(math.isfinite(v) and abs(v) <= MAX_COORD for v in out):
        raise ValueError(f"numbers must be finite and within ±{MAX_COORD:g}, got {cvat._shown(value)}")
    return out


# -- templates --------------------------------------------------------------------

def encode_template(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_template(text: str) -> np.ndarray:
    """The template of a state: a PNG of at most TEMPLATE_SIDE pixels a side (what
    :meth:`TrackerPipeline.start` stores); anything else is a tampered state."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise BadRequest(f"the tracker state's template is {len(text)} characters long; this tracker stores at "
                         f"most {MAX_TEMPLATE_CHARS}: start the track again")
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True)), formats=["PNG"]) as img:
            if max(img.size) > TEMPLATE_SIDE or min(img.size) < 1:
                raise ValueError(f"it is {img.size[0]}x{img.size[1]}, this tracker stores at most "
                                 f"{TEMPLATE_SIDE} pixels a side")
            return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        raise BadRequest("the tracker state's template is not a PNG picture of this tracker: start the track "
                         "again") from None
    except Exception as exc:  # any decoding failure is a bad state
        raise BadRequest(f"the tracker state's template is not a PNG picture of this tracker "
                         f"({str(exc)[:120]})") from None


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _peak_offset(left: float, centre: float, right: float) -> float:
    """Sub-pixel position of a peak from three samples (parabola through them), in -0.5..0.5."""
    denom = left - 2 * centre + right
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


@dataclass(frozen=True)
class Match:
    box: tuple[float, float, float, float]
    score: float


def match_template(image: np.ndarray, template: np.ndarray, box: Sequence[float], scale: float) -> Match | None:
    """Where ``template`` (the whole target) best matches near ``box`` at ``scale`` x its size.

    The search window (``box`` grown by :data:`SEARCH` of its size) is resampled so
    the template keeps its stored size; without resampling (a template stored at the
    box's size, scale 1) positions are exact pixels, refined to sub-pixel."""
    if float(template.std()) < MIN_TEXTURE:
        return None
    x1, y1, x2, y2 = box
    w, h = (x2 - x1) * scale, (y2 - y1) * scale
    th, tw = template.shape[:2]
    fx, fy = tw / w, th / h
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    height, width = image.shape[:2]
    rx1 = max(0, int(math.floor(cx - w / 2 - SEARCH * w)))
    ry1 = max(0, int(math.floor(cy - h / 2 - SEARCH * h)))
    rx2 = min(width, int(math.ceil(cx + w / 2 + SEARCH * w)))
    ry2 = min(height, int(math.ceil(cy + h / 2 + SEARCH * h)))
    if rx2 <= rx1 or ry2 <= ry1:  # the search window lies off the picture
        return None
    region = image[ry1:ry2, rx1:rx2]
    if abs(fx - 1) > 1e-6 or abs(fy - 1) > 1e-6:
        size = (max(1, round((rx2 - rx1) * fx)), max(1, round((ry2 - ry1) * fy)))
        region = cv2.resize(region, size, interpolation=cv2.INTER_AREA if fx < 1 else cv2.INTER_LINEAR)
        fx, fy = size[0] / (rx2 - rx1), size[1] / (ry2 - ry1)
    if region.shape[0] < th or region.shape[1] < tw:
        return None
    scores = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)
    # flat windows divide by zero: no evidence there
    scores = np.clip(np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0), -1.0, 1.0)
    _, best, _, (px, py) = cv2.minMaxLoc(scores)
    dx = _peak_offset(scores[py, px - 1], best, scores[py, px + 1]) if 0 < px < scores.shape[1] - 1 else 0.0
    dy = _peak_offset(scores[py - 1, px], best, scores[py + 1, px]) if 0 < py < scores.shape[0] - 1 else 0.0
    left, top = rx1 + (px + dx) / fx, ry1 + (py + dy) / fy
    return Match((left, top, left + w, top + h), float(best))


# -- requests -----------------------------------------------------------------------

@dataclass(frozen=True)
class TrackerRequest:
    image: bytes | str
    shapes: list[Any]
    states: list[Any]


def parse_tracker_request(body: Any) -> TrackerRequest:
    data = cvat.parse_body(body)
    image = cvat.request_image(data)
    shapes, states = data.get("shapes"), data.get("states")
    if states is None:
        states = []
    if not isinstance(shapes, list):
        raise BadRequest(f"'shapes' must be a list (of shapes, or of nulls with 'states'), got {cvat._shown(shapes)}")
    if not isinstance(states, list):
        raise BadRequest(f"'states' must be a list, got {cvat._shown(states)}")
    if states and len(states) != len(shapes):
        raise BadRequest(f"'shapes' has {len(shapes)} entries and 'states' {len(states)}: one state per shape")
    if not states and any(s is None for s in shapes):
        raise BadRequest("a null shape needs its state: 'states' is empty")
    return TrackerRequest(image, shapes, states)


class TrackerPipeline:
    """Template matching with a detector's re-check behind CVAT's tracker call."""

    def __init__(self, manifest: ModelManifest, runtime: Runtime):
        from common.pipeline import DetectorPipeline  # the detector part: preprocess, run, decode

        self.manifest = manifest
        self.runtime = runtime
        self.model = f"{manifest.name}@{manifest.version}"
        self.shape_types = tuple(tracker_annotations(manifest)["supported_shape_types"].split(","))
        # The re-check needs a detector: model.json's output.decoder says how to read the model.
        self.detector = DetectorPipeline(manifest, runtime) if manifest.output.decoder is not None else None

    def warm_up(self) -> None:
        if self.detector is not None:
            self.detector.warm_up()

    # -- detector ----------------------------------------------------------------
    def detections(self, image: np.ndarray) -> np.ndarray:
        """(N, 4) detector boxes on the image (score over model.json's threshold); empty without one."""
        if self.detector is None:
            return np.zeros((0, 4))
        found, transform = self.detector.detect(image, self.manifest.output.score_threshold)
        if len(found) == 0:
            return np.zeros((0, 4))
        return transform.boxes_to_image(found.boxes.astype(np.float64))

    # -- per request ------------------------------------------------------------
    def handle(self, body: Any) -> dict[str, list[Any]]:
        request = parse_tracker_request(body)
        image = decode_image(request.image)
        detections: np.ndarray | None = None

        def found() -> np.ndarray:  # run the detector once per request, and only if needed
            nonlocal detections
            if detections is None:
                detections = self.detections(image)
            return detections

        shapes, states = [], []
        for i, shape in enumerate(request.shapes):
            if request.states:
                state = self._checked(TrackState.from_json(request.states[i], i), i)
                if shape is not None:  # CVAT before v2.40: the previous frame's shape comes along
                    kind, legacy, values = self._parse_shape(shape, i)
                    if kind != state.type:
                        raise BadRequest(f"shapes[{i}] is a {kind}, but states[{i}] tracks a {state.type}: send "
                                         f"the shape of this track (or null), or start the track again")
                    state = self._moved_to(replace(state, legacy=legacy), values, i)
                state = self.track(image, state, found)
            else:
                state = self.start(image, shape, i, found)
            shapes.append(self.shape_of(state))
            states.append(state.to_json())
        return {"shapes": shapes, "states": states}

    def _checked(self, state: TrackState, index: int) -> TrackState:
        """The state, when this tracker could have made it: its model (any version: a refresh
        must not break tracks in progress), a shape type it tracks, an outline of that type."""
        where = f"states[{index}]"
        made_by = state.model.rpartition("@")[0] or state.model
        if made_by != self.manifest.name:
            raise BadRequest(f"{where} is not a state of this tracker (made by {cvat._shown(state.model)}, this is "
                             f"{self.model}): start the track again")
        if state.type not in self.shape_types:
            raise BadRequest(f"{where} tracks a {cvat._shown(state.type)}; this tracker tracks "
                             f"{', '.join(self.shape_types)}: start the track again")
        n = len(state.outline)
        if n % 2 or n < (6 if state.type != "rectangle" else 4) or (state.type == "rectangle" and n != 4):
            raise BadRequest(f"{where} holds an outline of {n} values, not a {state.type}'s: start the track again")
        return state

    def _parse_shape(self, shape: Any, index: int) -> tuple[str, bool, list[float]]:
        """(type, legacy form, points) of a request shape."""
        where = f"shapes[{index}]"
        if isinstance(shape, list):  # legacy: bare [x1, y1, x2, y2] of a rectangle
            kind, points, legacy = "rectangle", shape, True
        elif isinstance(shape, Mapping):
            kind, points, legacy = shape.get("type"), shape.get("points"), False
            if kind not in self.shape_types:
                raise BadRequest(f"This function does not support shapes of type {cvat._shown(kind)} ({where}); "
                                 f"it tracks {', '.join(self.shape_types)}")
        else:
            raise BadRequest(f"{where} must be a shape {{\"type\", \"points\"}} or [x1, y1, x2, y2], "
                             f"got {cvat._shown(shape)}")
        try:
            values = _floats(points, 4 if kind == "rectangle" else None)
        except ValueError as exc:
            raise BadRequest(f"{where}: points {exc}") from None
        if kind != "rectangle" and (len(values) < 6 or len(values) % 2):
            raise BadRequest(f"{where}: a {kind} needs at least 3 [x, y] points, got {len(values)} values")
        return kind, legacy, values

    def start(self, image: np.ndarray, shape: Any, index: int, found) -> TrackState:
        kind, legacy, values = self._parse_shape(shape, index)
        height, width = image.shape[:2]
        xs, ys = values[0::2], values[1::2]
        box = [max(0.0, min(xs)), max(0.0, min(ys)), min(float(width), max(xs)), min(float(height), max(ys))]
        if box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
            raise BadRequest(f"shapes[{index}] covers less than {MIN_SIDE:g}x{MIN_SIDE:g} pixels of the "
                             f"{width}x{height} image: nothing to track")
        # The template covers whole pixels; the shape is kept relative to it.
        tx1, ty1 = math.floor(box[0]), math.floor(box[1])
        tx2, ty2 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
        template = image[ty1:ty2, tx1:tx2]
        factor = TEMPLATE_SIDE / max(template.shape[:2])
        if factor < 1:
            size = (max(4, round(template.shape[1] * factor)), max(4, round(template.shape[0] * factor)))
            template = cv2.resize(template, size, interpolation=cv2.INTER_AREA)
        tw, th = tx2 - tx1, ty2 - ty1
        outline = [v for x, y in zip(xs, ys) for v in ((x - tx1) / tw, (y - ty1) / th)]
        tbox = [float(tx1), float(ty1), float(tx2), float(ty2)]
        anchor = None
        for det in found():
            if iou(det, tbox) >= DETECTION_IOU:
                dw, dh = det[2] - det[0], det[3] - det[1]
                anchor = [float(v) for v in ((tbox[0] - det[0]) / dw, (tbox[1] - det[1]) / dh, (tbox[2] - det[0]) / dw,
                          (tbox[3] - det[1]) / dh)]
                break
        return TrackState(STATE_FORMAT, self.model, kind, legacy, tbox, [0.0, 0.0], outline, encode_template(template),
                          anchor, 1.0, 0)

    def _moved_to(self, state: TrackState, values: list[float], index: int) -> TrackState:
        """The state continued from a shape CVAT sent along (older CVAT): its box replaces the state's."""
        xs, ys = values[0::2], values[1::2]
        ox, oy = state.outline[0::2], state.outline[1::2]
        # the outline spans the same share of the template box as before
        sx = (max(xs) - min(xs)) / max(1e-9, max(ox) - min(ox))
        sy = (max(ys) - min(ys)) / max(1e-9, max(oy) - min(oy))
        x1, y1 = min(xs) - min(ox) * sx, min(ys) - min(oy) * sy
        if sx < MIN_SIDE or sy < MIN_SIDE:
            raise BadRequest(f"shapes[{index}] is too small to track")
        if max(abs(x1), abs(y1), abs(x1 + sx), abs(y1 + sy)) > MAX_COORD:  # a degenerate (tampered) outline
            raise BadRequest(f"shapes[{index}] does not fit the outline of states[{index}]: start the track again")
        return TrackState(**{**asdict(state), "box": [x1, y1, x1 + sx, y1 + sy]})

    def track(self, image: np.ndarray, state: TrackState, found) -> TrackState:
        template = decode_template(state.template)
        x1, y1, x2, y2 = state.box
        vx, vy = state.velocity
        predicted = (x1 + vx, y1 + vy, x2 + vx, y2 + vy)
        best = self._best_match(image, template, predicted)
        box = list(best.box) if best is not None and best.score >= MIN_SCORE else None
        score = best.score if best is not None else 0.0
        if state.anchor is not None and score < TRUSTED_SCORE:
            snapped, near_match = self._detected(state.anchor, box, predicted, found())
            if snapped is not None:
                # A weak template match is pulled towards the target's detection (the weaker, the
                # further); one that went elsewhere, or none, gives way to it.
                pull = min(1.0, (TRUSTED_SCORE - score) / (TRUSTED_SCORE - MIN_SCORE)) if near_match else 1.0
                box = [float(b + pull * (s - b)) for b, s in zip(box or snapped, snapped)]
        if box is None:
            log.debug("tracker: target lost (correlation %.2f); keeping the last box", score)
            return TrackState(**{**asdict(state), "velocity": [0.0, 0.0], "score": score, "misses": state.misses + 1})
        velocity = [((box[0] + box[2]) - (x1 + x2)) / 2, ((box[1] + box[3]) - (y1 + y2)) / 2]
        return TrackState(**{**asdict(state), "box": box, "velocity": velocity, "score": score, "misses": 0})

    @staticmethod
    def _detected(anchor: Sequence[float], match: list[float] | None, predicted: Sequence[float],
                  detections: np.ndarray) -> tuple[list[float] | None, bool]:
        """The target's box from the detection that overlaps the template match (then True) or,
        failing that, the predicted box (then False); (None, False) when none does."""
        ax1, ay1, ax2, ay2 = anchor
        boxes = [[d[0] + ax1 * (d[2] - d[0]), d[1] + ay1 * (d[3] - d[1]), d[0] + ax2 * (d[2] - d[0]),
                  d[1] + ay2 * (d[3] - d[1])] for d in detections]
        for reference, near_match in ((match, True), (predicted, False)):
            if reference is None or not boxes:
                continue
            close, box = max(((iou(b, reference), b) for b in boxes), key=lambda t: t[0])
            if close >= DETECTION_IOU:
                return [float(v) for v in box], near_match
        return None, False

    def _best_match(self, image: np.ndarray, template: np.ndarray, predicted: Sequence[float]) -> Match | None:
        """The template's best match near ``predicted``: scores at three scales give the best
        scale (a parabola through them, in log scale), matched once more when it is not 1."""
        steps = (1 / SCALE_STEP, 1.0, SCALE_STEP)
        matches = [match_template(image, template, predicted, s) for s in steps]
        if any(m is None for m in matches):
            found = [m for m in matches if m is not None]
            return max(found, key=lambda m: m.score, default=None)
        low, mid, high = (m.score for m in matches)
        if mid >= low and mid >= high:
            scale = SCALE_STEP ** _peak_offset(low, mid, high)
        else:
            scale = steps[0] if low > high else steps[2]
        if abs(scale - 1.0) < SCALE_DEADBAND:
            return matches[1]
        rescaled = match_template(image, template, predicted, scale)
        return rescaled if rescaled is not None and rescaled.score >= mid else matches[1]

    def shape_of(self, state: TrackState) -> Any:
        """The answer's shape: the outline on the tracked box (legacy: bare points)."""
        x1, y1, x2, y2 = state.box
        ox, oy = np.asarray(state.outline[0::2]), np.asarray(state.outline[1::2])
        xy = np.stack([x1 + ox * (x2 - x1), y1 + oy * (y2 - y1)], 1)
        points = cvat._coords(xy)
        if state.legacy:
            return points
        return {"type": state.type, "points": points}


def state_text(state: Mapping[str, Any]) -> str:
    """The state as CVAT signs it (``json.dumps`` with compact separators)."""
    return json.dumps(state, separators=(",", ":"))
