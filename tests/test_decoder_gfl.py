"""gfl decoder (PP-PicoDet / GFL heads): hand-made distribution maps with known boxes."""

import jsonschema
import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.errors import ModelConfigError

# 64x96 input, strides 8/16/32/64 -> grids 8x12, 4x6, 2x3, 1x2 -> 96, 24, 6, 2 cells
HW = (64, 96)
GRIDS = {8: (8, 12), 16: (4, 6), 32: (2, 3), 64: (1, 2)}
C = 3
BINS = 8
CTX = DecodeContext(input_hw=HW, score_threshold=0.5, num_classes=C)


def decode(outputs, params=None, ctx=CTX):
    info = get("gfl")
    jsonschema.Draft7Validator(info.params_schema).validate(params or {})
    return info.decode(outputs, ctx, params or {})


def one_hot_dist(sides):
    """Logits putting (almost) all mass on bin ``sides[i]`` for each of the 4 sides."""
    logits = np.full((4, BINS), -50.0, np.float32)
    for i, b in enumerate(sides):
        logits[i, b] = 50.0
    return logits.reshape(-1)


def empty_maps():
    scores = {s: np.zeros((1, r * c, C), np.float32) for s, (r, c) in GRIDS.items()}
    boxes = {s: np.zeros((1, r * c, 4 * BINS), np.float32) for s, (r, c) in GRIDS.items()}
    return scores, boxes


def as_outputs(scores, boxes, order=None):
    names = [f"score_{s}" for s in GRIDS] + [f"box_{s}" for s in GRIDS]
    arrays = [scores[s] for s in GRIDS] + [boxes[s] for s in GRIDS]
    idx = order or range(len(names))
    return {names[i]: arrays[i] for i in idx}


def put(scores, boxes, stride, row, col, cls, score, sides):
    cell = row * GRIDS[stride][1] + col
    scores[stride][0, cell, cls] = score
    boxes[stride][0, cell] = one_hot_dist(sides)


def test_one_cell_exact_box():
    scores, boxes = empty_maps()
    put(scores, boxes, 8, 2, 3, 1, 0.9, (1, 2, 3, 1))  # centre (28, 20); l,t,r,b = 8,16,24,8
    det = decode(as_outputs(scores, boxes))
    np.testing.assert_allclose(det.boxes, [[20, 4, 52, 28]], atol=1e-4)
    np.testing.assert_allclose(det.scores, [0.9], rtol=1e-6)
    assert det.class_ids.tolist() == [1]


def test_every_stride_and_expectation_between_bins():
    scores, boxes = empty_maps()
    put(scores, boxes, 16, 1, 5, 0, 0.8, (1, 1, 1, 1))  # centre (88, 24), 16 each side -> clipped at 96
    put(scores, boxes, 32, 1, 0, 2, 0.7, (0, 0, 0, 0))  # centre (16, 48): a point
    put(scores, boxes, 64, 0, 1, 0, 0.6, (0, 0, 0, 0))  # centre (96, 32)
    cell = 0  # stride 8, cell (0, 0): centre (4, 4); left side split between bins 1 and 2 -> 1.5 * 8 = 12
    scores[8][0, cell, 2] = 0.95
    logits = one_hot_dist((0, 0, 1, 1)).reshape(4, BINS)
    logits[0] = -50
    logits[0, 1] = logits[0, 2] = 10.0
    boxes[8][0, cell] = logits.reshape(-1)
    det = decode(as_outputs(scores, boxes))
    np.testing.assert_allclose(det.scores, [0.95, 0.8, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(det.boxes, [[0, 4, 12, 12],  # x1 = 4 - 12 clipped to 0
                                           [72, 8, 96, 40],  # x2 = 104 clipped to 96
                                           [16, 48, 16, 48],
                                           [96, 32, 96, 32]], atol=1e-4)
    assert det.class_ids.tolist() == [2, 0, 2, 0]


def test_output_order_does_not_matter():
    scores, boxes = empty_maps()
    put(scores, boxes, 8, 2, 3, 1, 0.9, (1, 2, 3, 1))
    put(scores, boxes, 32, 1, 2, 0, 0.8, (1, 1, 1, 1))
    a = decode(as_outputs(scores, boxes))
    b = decode(as_outputs(scores, boxes, order=[7, 2, 4, 1, 6, 0, 5, 3]))
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_nms_class_aware_and_agnostic_and_multi_label():
    scores, boxes = empty_maps()
    put(scores, boxes, 8, 2, 3, 0, 0.9, (2, 2, 2, 2))
    put(scores, boxes, 8, 2, 4, 0, 0.8, (2, 2, 2, 2))  # shifted 8 px: IoU 0.6 with the first
    scores[8][0, 2 * 12 + 4, 1] = 0.7  # the second cell also says class 1
    outs = as_outputs(scores, boxes)
    det = decode(outs)
    assert det.class_ids.tolist() == [0, 1]
    np.testing.assert_allclose(det.scores, [0.9, 0.7], rtol=1e-6)
    assert decode(outs, {"iou_threshold": 0.7}).class_ids.tolist() == [0, 0, 1]
    assert decode(outs, {"class_agnostic": True}).class_ids.tolist() == [0]
    assert decode(outs, {"multi_label": False, "iou_threshold": 0.7}).class_ids.tolist() == [0, 0]


def test_sigmoid_activation_and_cell_offset():
    scores, boxes = empty_maps()
    put(scores, boxes, 8, 0, 0, 0, 2.0, (1, 1, 1, 1))  # a logit
    outs = as_outputs(scores, boxes)
    for s in GRIDS:
        scores[s][scores[s] == 0] = -10.0
    det = decode(outs, {"scores_activation": "sigmoid", "cell_offset": 0.0})
    np.testing.assert_allclose(det.scores, [1 / (1 + np.exp(-2.0))], rtol=1e-6)
    np.testing.assert_allclose(det.boxes, [[0, 0, 8, 8]], atol=1e-4)  # centre (0, 0), clipped


def test_pre_nms_top_k_and_max_detections():
    scores, boxes = empty_maps()
    for col in range(12):
        put(scores, boxes, 8, 7, col, 0, 0.9 - 0.01 * col, (0, 0, 0, 0))  # 12 separate points
    outs = as_outputs(scores, boxes)
    assert len(decode(outs)) == 12
    assert len(decode(outs, {"pre_nms_top_k": 5})) == 5
    np.testing.assert_allclose(decode(outs, {"max_detections": 3}).scores, [0.9, 0.89, 0.88], rtol=1e-6)


def test_reg_max_and_strides_must_fit_the_outputs():
    scores, boxes = empty_maps()
    with pytest.raises(ModelConfigError, match="stride"):
        decode(as_outputs(scores, boxes), {"strides": [8, 16, 32]})
    with pytest.raises(ModelConfigError):
        decode(as_outputs(scores, boxes), {"reg_max": 15})
    with pytest.raises(ModelConfigError, match="cells"):
        decode(as_outputs(scores, boxes), ctx=DecodeContext((64, 64), 0.5))


def test_nothing_over_threshold():
    scores, boxes = empty_maps()
    assert len(decode(as_outputs(scores, boxes))) == 0
