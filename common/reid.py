"""Re-identification: match CVAT's boxes on one frame to its boxes on the next.

CVAT's batch "reid" job (cvat-contract.md §2.2-§2.4) posts two consecutive
frames with their rectangles::

    {"image0": <base64>, "image1": <base64>, "boxes0": [<shape>, ...],
     "boxes1": [<shape>, ...], "threshold"?: 0.5, "max_distance"?: 50}

and reads back a list of ``len(boxes0)`` ints: the index into ``boxes1`` of
each box's match, or -1. CVAT chains the matches into tracks.

:class:`ReidPipeline` (built once per worker) answers it:

1. each shape is read as CVAT sends it (``points`` = ``[xtl, ytl, xbr, ybr]``,
   ``label_id``; other keys ignored). Shapes of another ``type`` than
   ``rectangle`` are left unmatched (-1) and never matched to: CVAT sends
   rectangles only and turns only rectangles into tracks;
2. a pair (i, j) may match only when both boxes have the same ``label_id``
   and their centres are at most ``max_distance`` pixels apart (default 50,
   CVAT's own example function's);
3. every box that has such a candidate is cropped from its frame (the box
   clamped to the picture; a box with no pixel inside it stays unmatched),
   fitted to the network input as model.json says (``input.preprocessing``)
   and embedded, in batches; embeddings are L2-normalised;
4. the cosine distance ``1 - cos`` of each candidate pair is kept when it is
   at most ``threshold`` (default model.json ``output.score_threshold``, 0.5);
5. the one-to-one assignment is exact: the largest number of matches, and
   among those the smallest total distance (a min-cost assignment, solved by
   :func:`min_cost_assignment`). A greedy "closest pair first" can lose
   matches (A's best partner may be B's only one); CVAT's example ran a
   min-cost assignment too, but over pairs above the threshold as well, which
   can spend a box on a pair it then drops.

model.json for type ``reid``: ``input`` as for any model (its
``preprocessing.resize`` width/height or a static ``input.shape`` give the
embedding input size), ``output.name`` names the output holding the
embedding (tensor name or 0-based index; default the first output), and
``output.score_threshold`` is the default distance threshold. No decoder.
See docs/reid.md.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from common.cvat import _shown, parse_body, request_image
from common.decoders import output_info
from common.errors import BadRequest, InvalidImage, ModelConfigError
from common.imaging import decode_image
from common.manifest import ModelManifest
from common.model_input import fixed_hw, pick_input
from common.preprocess import prepare
from common.runtimes import Runtime, TensorInfo

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE = 50.0  # pixels between box centres, CVAT's person-reidentification example's default
# Crops embedded per runtime call when the model's batch dimension is dynamic.
MAX_BATCH = 16
_NO_MATCH = -1


@dataclass(frozen=True)
class Box:
    """One shape of the request: its position in its list, label and corners."""

    index: int
    label_id: int | None
    x1: float
    y1: float
    x2: float
    y2: float
    rectangle: bool  # False: another shape type, never matched

    @property
    def centre(self) -> tuple[float, float]:
        return self.x1 / 2 + self.x2 / 2, self.y1 / 2 + self.y2 / 2  # halves first: no overflow to inf


@dataclass(frozen=True)
class ReidRequest:
    image0: str | bytes
    image1: str | bytes
    boxes0: tuple[Box, ...]
    boxes1: tuple[Box, ...]
    threshold: float | None
    max_distance: float | None


# -- the request --------------------------------------------------------------

def _number(value: Any, what: str) -> float:
    """A finite JSON number (or numeric ASCII string) for ``what``."""
    if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
        raise BadRequest(f"{what} must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise BadRequest(f"{what} must be a number, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise BadRequest(f"{what} must be a finite number, got {_shown(value)}")
    return number


def _optional_limit(data: dict, key: str) -> float | None:
    """``threshold`` / ``max_distance``: absent, null or "" means the default; else a number >= 0."""
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = _number(value, key)
    if number < 0:
        raise BadRequest(f"{key} must be 0 or more, got {_shown(value)}")
    return number


def _box(item: Any, where: str, index: int) -> Box:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be a CVAT shape object, not {type(item).__name__}")
    shape_type = item.get("type", "rectangle")
    if shape_type != "rectangle":  # CVAT sends rectangles only; anything else is left unmatched
        return Box(index, None, 0.0, 0.0, 0.0, 0.0, rectangle=False)
    points = item.get("points")
    if not isinstance(points, list) or len(points) != 4:
        raise BadRequest(f"{where}.points must be [xtl, ytl, xbr, ybr] (4 numbers), got {_shown(points)}")
    x1, y1, x2, y2 = (_number(v, f"{where}.points[{k}]") for k, v in enumerate(points))
    label_id = item.get("label_id")
    if label_id is not None and (isinstance(label_id, bool) or not isinstance(label_id, int)):
        raise BadRequest(f"{where}.label_id must be an integer, got {_shown(label_id)}")
    return Box(index, label_id, min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2), rectangle=True)


def _boxes(data: dict, key: str) -> tuple[Box, ...]:
    items = data.get(key)
    if items is None:
        raise BadRequest(f"missing {key!r} (a list of CVAT rectangle shapes)")
    if not isinstance(items, list):
        raise BadRequest(f"{key!r} must be a list of CVAT shapes, not {type(items).__name__}")
    return tuple(_box(item, f"{key}[{i}]", i) for i, item in enumerate(items))


def parse_reid_request(body: Any) -> ReidRequest:
    """CVAT's reid payload (cvat-contract.md §2.3); BadRequest names what is wrong."""
    data = parse_body(body)
    return ReidRequest(image0=request_image(data, "image0"), image1=request_image(data, "image1"),
                       boxes0=_boxes(data, "boxes0"), boxes1=_boxes(data, "boxes1"),
                       threshold=_optional_limit(data, "threshold"),
                       max_distance=_optional_limit(data, "max_distance"))


# -- geometry and assignment --------------------------------------------------

def candidates(boxes0: Sequence[Box], boxes1: Sequence[Box], max_distance: float) -> np.ndarray:
    """(len(boxes0), len(boxes1)) bool: the pairs that may match (same label_id,
    centres at most ``max_distance`` apart, both rectangles)."""
    if not boxes0 or not boxes1:
        return np.zeros((len(boxes0), len(boxes1)), bool)
    c0 = np.array([b.centre for b in boxes0], np.float64)
    c1 = np.array([b.centre for b in boxes1], np.float64)
    near = np.hypot(c0[:, None, 0] - c1[None, :, 0], c0[:, None, 1] - c1[None, :, 1]) <= max_distance
    codes: dict[int | None, int] = {}
    labels0 = np.array([codes.setdefault(b.label_id, len(codes)) for b in boxes0])
    labels1 = np.array([codes.setdefault(b.label_id, len(codes)) for b in boxes1])
    same = labels0[:, None] == labels1[None, :]
    rect = np.array([b.rectangle for b in boxes0])[:, None] & np.array([b.rectangle for b in boxes1])[None, :]
    return near & same & rect


def min_cost_assignment(cost: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """The (row, column) pairs of a one-to-one matching over ``allowed`` pairs
    with the most pairs, and among those the least total ``cost``.

    Rows and columns without an allowed pair are dropped first; the rest is a
    rectangular assignment problem in which forbidden pairs cost more than
    any matching's whole real cost can differ, so leaving a pair out is only
    chosen when no allowed pair remains. Solved exactly by the shortest
    augmenting path method (Hungarian algorithm with potentials), O(n² m) with
    the inner loop in numpy: a few hundred boxes a frame take milliseconds.
    """
    rows = np.flatnonzero(allowed.any(axis=1))
    cols = np.flatnonzero(allowed.any(axis=0))
    if rows.size == 0:
        return []
    sub_allowed = allowed[np.ix_(rows, cols)]
    sub = np.asarray(cost, np.float64)[np.ix_(rows, cols)]
    sub = sub - sub[sub_allowed].min()  # costs >= 0 keep "forbidden" above every real sum
    spread = float(sub[sub_allowed].max())
    forbidden = (spread + 1.0) * (min(sub.shape) + 1)
    sub = np.where(sub_allowed, sub, forbidden)
    transposed = sub.shape[0] > sub.shape[1]
    if transposed:
        sub = sub.T
    pairs = _assign(sub)
    if transposed:
        pairs = [(c, r) for r, c in pairs]
        sub = sub.T
    return sorted((int(rows[r]), int(cols[c])) for r, c in pairs if sub_allowed[r, c])


def _assign(cost: np.ndarray) -> list[tuple[int, int]]:
    """Min-cost assignment of every row of ``cost`` (n x m, n <= m) to a distinct column."""
    n, m = cost.shape
    u = np.zeros(n + 1)
    v = np.zeros(m + 1)
    owner = np.zeros(m + 1, np.int64)  # owner[j]: 1-based row holding column j (1-based); 0 free
    way = np.zeros(m + 1, np.int64)
    for i in range(1, n + 1):
        owner[0] = i
        j0 = 0
        slack = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, bool)
        while True:
            used[j0] = True
            i0 = owner[j0]
            free = ~used[1:]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            way[1:][better] = j0
            masked = np.where(free, slack[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            u[owner[used]] += delta  # distinct rows: each used column has its own owner
            v[used] -= delta
            slack[1:][free] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return [(int(owner[j]) - 1, j - 1) for j in range(1, m + 1) if owner[j]]


# -- the pipeline ---------------------------------------------------------------

class ReidPipeline:
    """One reid model, loaded: CVAT's reid payload in, the list of matches out."""

    def __init__(self, manifest: ModelManifest, runtime: Runtime):
        self.manifest = manifest
        self.runtime = runtime
        self.input = pick_input(manifest.input, runtime.inputs)
        self.output = self._pick_output()
        self.target_hw = self._target_hw()
        batch = self.input.shape[0] if self.input.shape else None
        # A static batch dimension is what each call must carry; a dynamic one takes MAX_BATCH at most.
        self.static_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.batch = self.static_batch or MAX_BATCH
        self.default_threshold = manifest.output.score_threshold
        self.default_max_distance = DEFAULT_MAX_DISTANCE

    def _pick_output(self) -> TensorInfo:
        output = self.manifest.raw.get("output") if self.manifest.raw else None
        key = output.get("name") if isinstance(output, dict) else None
        if key is not None and (isinstance(key, bool) or not isinstance(key, (str, int))
                                or (isinstance(key, int) and key < 0) or key == ""):
            raise ModelConfigError([("$.output.name", f"must name the embedding output: a tensor name or a "
                                                      f"0-based index, got {_shown(key)}")])
        info = output_info(self.runtime.outputs, key)
        if info is None:
            names = ", ".join(o.name for o in self.runtime.outputs)
            raise ModelConfigError([("$.output.name", f"the model has no output {key!r} (outputs: {names})")])
        return info

    def _target_hw(self) -> tuple[int, int]:
        hw = None if self.manifest.input.resize.mode == "none" else fixed_hw(self.manifest.input, self.input)
        if hw is not None:
            return hw
        raise ModelConfigError([("$.input.preprocessing.resize", "a reid model embeds crops at one size: set "
                                 "resize.mode to stretch or letterbox with width and height, or give a static "
                                 "input.shape")])

    def warm_up(self) -> None:
        """Embeddings of blank crops at start (two, unless the batch is fixed): the first
        request is not the slow one, and an output that is not one vector per crop
        fails at start."""
        h, w = self.target_hw
        vectors = self.embed([np.zeros((h, w, 3), np.uint8)] * (self.static_batch or 2))
        log.info("reid model %s: %d-d embeddings from output %r, input %dx%d", self.manifest.name,
                 vectors.shape[1], self.output.name, w, h)

    # -- embedding ----------------------------------------------------------
    def _tensor(self, crop: np.ndarray) -> np.ndarray:
        tensor, _ = prepare(crop, self.manifest.input, self.target_hw)
        dtype = self.input.dtype
        if dtype is not None and tensor.dtype != dtype:
            tensor = tensor.astype(dtype, copy=False)
        return tensor

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(len(crops), D) L2-normalised float64 embeddings of H x W x 3 uint8 RGB crops.

        A zero vector stays zero (its cosine distance to anything is then 1)."""
        out: list[np.ndarray] = []
        for start in range(0, len(crops), self.batch):
            tensors = [self._tensor(c) for c in crops[start:start + self.batch]]
            real = len(tensors)
            if self.static_batch is not None and real < self.static_batch:  # a fixed batch: filled with blanks
                tensors += [np.zeros_like(tensors[0])] * (self.static_batch - real)
            out.append(self._run(np.concatenate(tensors, axis=0))[:real])
        vectors = np.concatenate(out, axis=0) if out else np.zeros((0, 0))
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        outputs = self.runtime.run({self.input.name: batch})
        values = outputs.get(self.output.name)
        if values is None:  # engines key outputs by name; take the one picked at load
            values = list(outputs.values())[self.runtime.outputs.index(self.output)]
        values = np.asarray(values)
        n = batch.shape[0]
        if values.ndim == 0 or values.shape[0] != n:
            raise ModelConfigError([("$.output.name", f"output {self.output.name!r} gives shape "
                                                      f"{list(values.shape)} for {n} crops: a reid model must "
                                                      f"give one embedding per crop ([batch, D] or [batch, D, 1, 1])")])
        return values.reshape(n, -1).astype(np.float64)

    # -- per request ---------------------------------------------------------
    def handle(self, body: Any) -> list[int]:
        """CVAT's answer to a reid request body (dict, or JSON bytes/str)."""
        request = parse_reid_request(body)
        return self.match(request)

    def match(self, request: ReidRequest) -> list[int]:
        answer = [_NO_MATCH] * len(request.boxes0)
        if not request.boxes0 or not request.boxes1:
            return answer
        threshold = self.default_threshold if request.threshold is None else request.threshold
        max_distance = self.default_max_distance if request.max_distance is None else request.max_distance
        frame0, frame1 = _decode(request.image0, "image0"), _decode(request.image1, "image1")
        allowed = candidates(request.boxes0, request.boxes1, max_distance)
        distances = self.distances(frame0, request.boxes0, frame1, request.boxes1, allowed)
        allowed &= distances <= threshold
        for i, j in min_cost_assignment(distances, allowed):
            answer[i] = j
        log.debug("reid: %d of %d boxes matched (threshold %.3f, max_distance %.1f)",
                  sum(a >= 0 for a in answer), len(answer), threshold, max_distance)
        return answer

    def distances(self, frame0: np.ndarray, boxes0: Sequence[Box], frame1: np.ndarray, boxes1: Sequence[Box],
                  pairs: np.ndarray | None = None) -> np.ndarray:
        """Cosine distances (0..2) of the ``pairs`` (default: all); inf elsewhere
        and for boxes without a pixel on their frame."""
        pairs = np.ones((len(boxes0), len(boxes1)), bool) if pairs is None else pairs
        rows = [i for i in np.flatnonzero(pairs.any(axis=1)) if _crop(frame0, boxes0[i]) is not None]
        cols = [j for j in np.flatnonzero(pairs.any(axis=0)) if _crop(frame1, boxes1[j]) is not None]
        result = np.full(pairs.shape, np.inf)
        if not rows or not cols:
            return result
        vectors = self.embed([_crop(frame0, boxes0[i]) for i in rows] + [_crop(frame1, boxes1[j]) for j in cols])
        cosine = vectors[:len(rows)] @ vectors[len(rows):].T
        block = np.clip(1.0 - cosine, 0.0, 2.0)
        sub = pairs[np.ix_(rows, cols)]
        result[np.ix_(rows, cols)] = np.where(sub, block, np.inf)
        return result


def _decode(data: str | bytes, key: str) -> np.ndarray:
    try:
        return decode_image(data)
    except InvalidImage as exc:
        raise InvalidImage(f"{key}: {exc}") from None


def _crop(frame: np.ndarray, box: Box) -> np.ndarray | None:
    """The pixels the box covers (every pixel it touches), clamped to the frame; None when none."""
    height, width = frame.shape[:2]
    x1, y1 = max(0, math.floor(box.x1)), max(0, math.floor(box.y1))
    x2, y2 = min(width, math.ceil(box.x2)), min(height, math.ceil(box.y2))
    if x2 <= x1 or y2 <= y1:
        return None
    return frame[y1:y2, x1:x2]
