"""db_text decoder: probability maps with text regions at known places."""

import cv2
import jsonschema
import numpy as np
import pytest

from common.decoders import DecodeContext, get

CTX = DecodeContext(input_hw=(100, 200), score_threshold=0.5)


def decode(prob, params=None, ctx=CTX):
    info = get("db_text")
    jsonschema.Draft7Validator(info.params_schema).validate(params or {})
    return info.decode({"fetch_name_0": prob[None, None].astype(np.float32)}, ctx, params or {})


def two_rects():
    prob = np.zeros((100, 200), np.float32)
    prob[10:30, 20:80] = 0.9  # pixels x 20..79, y 10..29
    prob[50:90, 120:180] = 0.8  # pixels x 120..179, y 50..89
    return prob


def expected_quad(x0, y0, x1, y1, ratio):
    """The rectangle through the contour's pixel centres grown by area * ratio / perimeter."""
    w, h = x1 - x0, y1 - y0
    d = w * h * ratio / (2 * (w + h))
    return np.array([[x0 - d, y0 - d], [x1 + d, y0 - d], [x1 + d, y1 + d], [x0 - d, y1 + d]], np.float32)


def test_two_rectangles_give_two_quads_at_known_corners():
    det = decode(two_rects())
    assert len(det) == 2
    np.testing.assert_allclose(det.scores, [0.9, 0.8], rtol=1e-5)
    assert det.class_ids.tolist() == [0, 0]
    # d = 59*19*1.5 / 156 = 10.78 for the first; 59*39*1.5/196 = 17.61 for the second
    np.testing.assert_allclose(det.polygons[0], expected_quad(20, 10, 79, 29, 1.5), atol=1.0)
    # the second grows past the bottom edge (89 + 17.6 > 100): clipped to the input
    q = expected_quad(120, 50, 179, 89, 1.5)
    q[:, 1] = np.clip(q[:, 1], 0, 100)
    np.testing.assert_allclose(det.polygons[1], q, atol=1.0)
    for poly, box in zip(det.polygons, det.boxes):
        assert poly.shape == (4, 2) and poly.dtype == np.float32
        np.testing.assert_allclose(box, [poly[:, 0].min(), poly[:, 1].min(), poly[:, 0].max(), poly[:, 1].max()])


def test_unclip_ratio_controls_growth():
    det = decode(two_rects(), {"unclip_ratio": 1.0})
    np.testing.assert_allclose(det.polygons[0], expected_quad(20, 10, 79, 29, 1.0), atol=1.0)


def test_rotated_region_quad():
    prob = np.zeros((100, 200), np.float32)
    rect = ((100.0, 50.0), (80.0, 16.0), 30.0)
    cv2.fillPoly(prob, [np.round(cv2.boxPoints(rect)).astype(np.int32)], 1.0)
    det = decode(prob, {"unclip_ratio": 1.5})
    assert len(det) == 1
    # the region's own minimum-area rectangle, from its traced outline
    contours, _ = cv2.findContours((prob > 0.3).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    (rx, ry), (rw, rh), angle = cv2.minAreaRect(contours[0])
    assert abs(rx - 100) < 1 and abs(ry - 50) < 1 and 78 < max(rw, rh) < 83 and 14 < min(rw, rh) < 19
    d = rw * rh * 1.5 / (2 * (rw + rh))
    (cx, cy), (w, h), grown_angle = cv2.minAreaRect(det.polygons[0])
    assert (cx, cy) == pytest.approx((rx, ry), abs=0.5)
    assert sorted([w, h]) == pytest.approx(sorted([rw + 2 * d, rh + 2 * d]), abs=1.0)
    assert abs(((grown_angle - angle) + 45) % 90 - 45) < 1  # same orientation
    first = det.polygons[0][0]
    assert first.sum() == det.polygons[0].sum(axis=1).min()  # starts at the top-left corner


def test_score_threshold_binary_threshold_and_min_size():
    prob = two_rects()
    prob[60:64, 10:60] = 0.45  # over the binary threshold, under the score threshold
    prob[94:97, 10:60] = 0.95  # 3 px high: its outline is 2 px high, below min_size 3
    det = decode(prob)
    assert len(det) == 2
    assert len(decode(prob, ctx=DecodeContext((100, 200), 0.4))) == 3
    assert len(decode(prob, {"binary_threshold": 0.85})) == 1  # only the 0.9 and 0.95 regions; 0.95 too thin
    assert len(decode(prob, {"min_size": 1})) == 3  # the thin one passes (grown: 2 + 2*1.44 >= 1 + 2)


def test_score_mode_slow_scores_the_contour():
    prob = np.zeros((100, 200), np.float32)
    cv2.fillPoly(prob, [np.array([[20, 10], [90, 10], [20, 80]], np.int32)], 1.0)  # a triangle
    fast = decode(prob, ctx=DecodeContext((100, 200), 0.0))
    slow = decode(prob, {"score_mode": "slow"}, ctx=DecodeContext((100, 200), 0.0))
    assert fast.scores[0] < 0.8 < slow.scores[0]
    assert len(decode(prob, ctx=DecodeContext((100, 200), 0.8))) == 0
    assert len(decode(prob, {"score_mode": "slow"}, ctx=DecodeContext((100, 200), 0.8))) == 1


def test_contour_mode_keeps_the_shape_and_grows_it():
    prob = np.zeros((100, 200), np.float32)
    prob[20:40, 20:120] = 0.9  # an L: bar ...
    prob[20:80, 100:120] = 0.9  # ... and leg
    det = decode(prob, {"polygon_mode": "contour", "unclip_ratio": 0.5})
    assert len(det) == 1
    poly = det.polygons[0]
    assert poly.shape[0] >= 6  # not a quad
    contour = np.array([[20, 20], [119, 20], [119, 79], [100, 79], [100, 39], [20, 39]], np.float32)
    d = cv2.contourArea(contour) * 0.5 / cv2.arcLength(contour.reshape(-1, 1, 2), True)
    np.testing.assert_allclose(det.boxes[0], [20 - d, 20 - d, 119 + d, 79 + d], atol=1.5)
    assert cv2.pointPolygonTest(poly.reshape(-1, 1, 2), (60.0, 60.0), False) < 0  # the L's notch stays out
    assert cv2.pointPolygonTest(poly.reshape(-1, 1, 2), (110.0, 70.0), False) > 0


def test_map_smaller_than_input_is_scaled():
    prob = two_rects()[::2, ::2]  # 50 x 100 map for a 100 x 200 input
    det = decode(prob)
    full = decode(two_rects(), {"unclip_ratio": 1.5})
    assert len(det) == 2
    np.testing.assert_allclose(det.boxes[0], full.boxes[0], atol=3.0)


def test_dilation_joins_a_one_pixel_gap():
    prob = np.zeros((100, 200), np.float32)
    prob[10:30, 20:60] = 0.9
    prob[10:30, 61:100] = 0.9  # gap at x = 60
    assert len(decode(prob)) == 2
    assert len(decode(prob, {"use_dilation": True})) == 1


def test_label_id_max_candidates_and_empty():
    det = decode(two_rects(), {"label_id": 3, "max_candidates": 1})
    assert len(det) == 1 and det.class_ids.tolist() == [3]
    empty = decode(np.zeros((100, 200), np.float32))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4)


def test_accepts_map_without_channel_axis_and_by_name():
    info = get("db_text")
    prob = two_rects()
    det = info.decode({"other": np.zeros(3), "maps": prob[None]}, CTX, {"output": "maps"})
    assert len(det) == 2


def test_schema_rejects_bad_params():
    schema = get("db_text").params_schema
    for bad in ({"polygon_mode": "poly"}, {"unclip_ratio": 0}, {"box_thresh": 0.5}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(schema).validate(bad)
