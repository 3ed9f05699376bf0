"""Non-maximum suppression and box overlap, in plain numpy.

Boxes are ``x1, y1, x2, y2`` (any float dtype; computed in float64). NMS is
the usual greedy algorithm: take the best remaining box, drop every box that
overlaps it by more than ``iou_threshold`` (IoU strictly greater: a pair at
exactly the threshold survives), repeat. Candidates are visited in descending
score order with a *stable* sort, so equal scores are taken in input order and
the result is deterministic.

Class-aware suppression (the default) shifts each class's boxes into its own
far-away region of the plane, so boxes of different classes never overlap and
one NMS pass handles every class at once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_iou", "nms", "weighted_nms"]


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): (N, M) float64.

    Degenerate boxes (zero or negative width/height) have zero area; a pair
    whose union is empty has IoU 0.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _iou_one(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one box (4,) with (M, 4) boxes: (M,)."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = _area(box) + _area(others) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _prepare(boxes, scores, class_ids, class_agnostic) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if class_ids is not None and not class_agnostic and boxes.shape[0]:
        class_ids = np.asarray(class_ids).reshape(-1)
        if class_ids.shape[0] != boxes.shape[0]:
            raise ValueError(f"nms: {boxes.shape[0]} boxes but {class_ids.shape[0]} class ids")
        # Move each class to its own region: the offset step exceeds the
        # extent of all boxes, so boxes of different classes cannot touch.
        _, dense = np.unique(class_ids, return_inverse=True)
        span = float(boxes.max() - boxes.min()) + 1.0
        boxes = boxes + (dense.reshape(-1).astype(np.float64) * span)[:, None]
    return boxes, scores


def _finite_only(fn):
    """Run an NMS on the rows whose box and score are finite, and map the kept
    indices back. One inf box (an fp16 overflow) would otherwise turn the
    per-class offsets into NaN and switch suppression off for every class."""

    def wrapper(boxes, scores, iou_threshold, class_ids=None, class_agnostic=False, max_detections=None):
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if boxes.shape[0] != scores.shape[0]:
            raise ValueError(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
        finite = np.flatnonzero(np.isfinite(boxes).all(axis=1) & np.isfinite(scores))
        if finite.shape[0] == scores.shape[0]:
            return fn(boxes, scores, iou_threshold, class_ids, class_agnostic, max_detections)
        ids = None if class_ids is None else np.asarray(class_ids).reshape(-1)[finite]
        result = fn(boxes[finite], scores[finite], iou_threshold, ids, class_agnostic, max_detections)
        if isinstance(result, tuple):  # weighted_nms: (indices, merged boxes)
            return finite[result[0]], result[1]
        return finite[result]

    wrapper.__doc__, wrapper.__name__ = fn.__doc__, fn.__name__
    return wrapper


@_finite_only
def nms(boxes, scores, iou_threshold: float, class_ids=None, class_agnostic: bool = False,
        max_detections: int | None = None) -> np.ndarray:
    """Greedy NMS; returns the kept indices (int64), best score first.

    ``class_ids`` None, or ``class_agnostic`` True, suppresses across all
    boxes; otherwise a box only suppresses boxes of its own class.
    ``max_detections`` None keeps every survivor; otherwise stops after that
    many.
    """
    boxes, scores = _prepare(boxes, scores, class_ids, class_agnostic)
    order = np.argsort(-scores, kind="stable")
    limit = order.shape[0] if max_detections is None else max(int(max_detections), 0)
    keep: list[int] = []
    while order.shape[0] and len(keep) < limit:
        best = order[0]
        keep.append(int(best))
        rest = order[1:]
        if not rest.shape[0]:
            break
        order = rest[_iou_one(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, np.int64)


@_finite_only
def weighted_nms(boxes, scores, iou_threshold: float, class_ids=None, class_agnostic: bool = False,
                 max_detections: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Weighted NMS (MediaPipe's ``WEIGHTED`` algorithm, BlazeFace).

    Like :func:`nms`, but each kept box is replaced by the score-weighted mean
    of itself and every box it suppresses (IoU strictly greater than the
    threshold); its score stays the best score of the group. Returns
    ``(kept_indices, merged_boxes)``: indices of the group leaders, best first,
    and their (K, 4) float64 averaged boxes in the original coordinates.
    """
    original = np.asarray(boxes, np.float64).reshape(-1, 4)
    shifted, scores = _prepare(original, scores, class_ids, class_agnostic)
    order = np.argsort(-scores, kind="stable")
    limit = order.shape[0] if max_detections is None else max(int(max_detections), 0)
    keep: list[int] = []
    merged: list[np.ndarray] = []
    while order.shape[0] and len(keep) < limit:
        best = order[0]
        overlap = _iou_one(shifted[best], shifted[order]) > iou_threshold
        overlap[0] = True  # the leader is always in its own group
        group = order[overlap]
        weights = scores[group]
        total = weights.sum()
        if group.shape[0] > 1 and total > 0:
            merged.append((original[group] * weights[:, None]).sum(axis=0) / total)
        else:
            merged.append(original[best].copy())
        keep.append(int(best))
        order = order[~overlap]
    return np.asarray(keep, np.int64), np.asarray(merged, np.float64).reshape(-1, 4)


def nms_params(iou_threshold: float, max_detections: int, *, source: str = "") -> dict:
    """The JSON Schema properties every NMS-running decoder takes
    (iou_threshold, class_agnostic, max_detections), with its defaults;
    ``source`` says where a default comes from, e.g. "rapid-layout's"."""
    origin = f" ({source})" if source else ""
    return {
        "iou_threshold": {
            "type": "number", "minimum": 0, "maximum": 1, "default": iou_threshold,
            "description": "NMS IoU threshold: a box overlapping a better one by more than this is "
                           f"dropped. Default {iou_threshold}{origin}.",
        },
        "class_agnostic": {
            "type": "boolean", "default": False,
            "description": "True: boxes of different classes suppress each other. Default false "
                           "(NMS per class).",
        },
        "max_detections": {
            "type": "integer", "minimum": 1, "maximum": 100000, "default": max_detections,
            "description": f"At most this many detections are returned (best first). Default {max_detections}.",
        },
    }
