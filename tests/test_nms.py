"""common.decoders.nms: IoU and greedy / weighted NMS, exact values."""

import numpy as np
import pytest

from common.decoders.nms import box_iou, nms, weighted_nms


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [10, 10, 20, 20], [20, 20, 30, 30], [2, 2, 2, 8]], np.float32)
    iou = box_iou(a, b)
    assert iou.shape == (1, 5)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0, 0.0, 0.0])


def test_box_iou_degenerate_pair_is_zero_not_nan():
    z = np.array([[3, 3, 3, 3]], np.float32)
    assert box_iou(z, z)[0, 0] == 0.0


def test_overlapping_boxes_one_class_keep_best():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == [1, 2]
    assert keep.dtype == np.int64


def test_class_aware_keeps_both_agnostic_keeps_one():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    classes = np.array([0, 1])
    assert nms(boxes, scores, 0.5, classes).tolist() == [0, 1]
    assert nms(boxes, scores, 0.5, classes, class_agnostic=True).tolist() == [0]
    assert nms(boxes, scores, 0.5).tolist() == [0]  # no classes: agnostic


def test_class_aware_with_negative_coordinates_and_sparse_class_ids():
    boxes = np.array([[-100, -100, -90, -90], [-99, -99, -89, -89], [-100, -100, -90, -90]], np.float32)
    scores = np.array([0.5, 0.6, 0.7], np.float32)
    classes = np.array([7, 7, 1000])
    assert nms(boxes, scores, 0.3, classes).tolist() == [2, 1]


def test_threshold_is_strict():
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10]], np.float32)  # IoU exactly 1/3
    scores = np.array([0.9, 0.8], np.float32)
    assert nms(boxes, scores, 1 / 3).tolist() == [0, 1]
    assert nms(boxes, scores, 0.33).tolist() == [0]


def test_ties_are_stable_and_max_detections():
    boxes = np.array([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21], [30, 30, 31, 31]], np.float32)
    scores = np.array([0.5, 0.9, 0.5, 0.5], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 0, 2, 3]
    assert nms(boxes, scores, 0.5, max_detections=2).tolist() == [1, 0]


def test_chain_suppression_is_greedy():
    # A suppresses B; B would suppress C, but B is gone so C survives.
    boxes = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.4).tolist() == [0, 2]


def test_empty_input():
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    keep, merged = weighted_nms(np.zeros((0, 4)), np.zeros(0), 0.5)
    assert keep.shape == (0,) and merged.shape == (0, 4)


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError):
        nms(np.zeros((2, 4)), np.zeros(3), 0.5)


def test_many_boxes_is_fast_and_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 500, (2000, 2))
    wh = rng.uniform(5, 60, (2000, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, 2000)
    keep = nms(boxes, scores, 0.5)
    kept = boxes[keep]
    iou = box_iou(kept, kept)
    np.fill_diagonal(iou, 0)
    assert iou.max() <= 0.5  # no two survivors overlap too much
    assert np.all(np.diff(scores[keep]) <= 0)  # best first
    # every dropped box overlaps a better survivor by more than the threshold
    dropped = np.setdiff1d(np.arange(2000), keep)
    over = box_iou(boxes[dropped], kept) > 0.5
    better = scores[keep][None, :] >= scores[dropped][:, None]
    assert np.all((over & better).any(axis=1))


def test_weighted_nms_averages_group_by_score():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [100, 100, 110, 110]], np.float64)
    scores = np.array([0.6, 0.2, 0.5])
    keep, merged = weighted_nms(boxes, scores, 0.3)
    assert keep.tolist() == [0, 2]
    np.testing.assert_allclose(merged[0], [0.5, 0, 10.5, 10])  # (0.6*0 + 0.2*2) / 0.8
    np.testing.assert_allclose(merged[1], boxes[2])


def test_a_non_finite_box_does_not_switch_suppression_off():
    from common.decoders.nms import weighted_nms

    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, np.inf, 5], [0, 0, 4, 4]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, np.nan], np.float32)
    classes = np.array([0, 0, 1, 1])
    assert nms(boxes, scores, 0.5, classes).tolist() == [0]  # the two class-0 boxes still merge
    keep, merged = weighted_nms(boxes, scores, 0.5, classes)
    assert keep.tolist() == [0] and merged.shape == (1, 4)
