"""ssd_anchors decoder (MediaPipe BlazeFace-style): anchors and decoding, exact values."""

import math

import jsonschema
import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.decoders.ssd_anchors import generate_anchors
from common.errors import ModelConfigError

CTX = DecodeContext(input_hw=(128, 128), score_threshold=0.5)


def decode(outputs, params=None, ctx=CTX):
    info = get("ssd_anchors")
    jsonschema.Draft7Validator(info.params_schema).validate(params or {})
    return info.decode(outputs, ctx, params or {})


def blank(n=896):
    return np.zeros((1, n, 16), np.float32), np.full((1, n, 1), -20.0, np.float32)


def test_blazeface_short_range_anchors():
    a = generate_anchors((8, 16, 16, 16), (128, 128))
    assert a.shape == (896, 4)
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1])  # (0.03125, 0.03125)
    np.testing.assert_allclose(a[1], [0.5 / 16, 0.5 / 16, 1, 1])  # 2 anchors per cell in the first map
    np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16, 1, 1])  # then along x
    np.testing.assert_allclose(a[511], [15.5 / 16, 15.5 / 16, 1, 1])
    np.testing.assert_allclose(a[512:518], [[0.5 / 8, 0.5 / 8, 1, 1]] * 6)  # 6 per cell at stride 16
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8, 1, 1])  # (0.9375, 0.9375)


def test_blazeface_full_range_anchor_count():
    a = generate_anchors((4,), (192, 192), interpolated_scale_aspect_ratio=0.0)
    assert a.shape == (2304, 4)
    np.testing.assert_allclose(a[-1, :2], [47.5 / 48, 47.5 / 48])


def test_anchor_sizes_when_not_fixed():
    s = [0.2 + (0.8 - 0.2) * i / 2 for i in range(3)]  # layer scales 0.2, 0.5, 0.8
    a = generate_anchors((8, 16, 32), (64, 64), min_scale=0.2, max_scale=0.8, aspect_ratios=(1.0, 2.0),
                         fixed_anchor_size=False, reduce_boxes_in_lowest_layer=True)
    # first layer: the 3 fixed anchors (0.1 @ 1, s0 @ 2, s0 @ 0.5) + interpolated sqrt(s0*s1) @ 1
    r2 = math.sqrt(2)
    np.testing.assert_allclose(a[:4, 2:], [[0.1, 0.1], [s[0] * r2, s[0] / r2], [s[0] / r2, s[0] * r2],
                                           [math.sqrt(s[0] * s[1])] * 2])
    assert a.shape[0] == 8 * 8 * 4 + 4 * 4 * 3 + 2 * 2 * 3
    last = a[-3:, 2:]  # last layer: s2 @ 1, s2 @ 2, interpolated with the next scale 1.0
    np.testing.assert_allclose(last, [[s[2], s[2]], [s[2] * r2, s[2] / r2], [math.sqrt(s[2]), math.sqrt(s[2])]])


def test_decode_one_face_exact_box():
    reg, cls = blank()
    reg[0, 0, :4] = [4, -2, 20, 30]  # anchor 0 centre (4, 4) px -> box centre (8, 2), 20 x 30
    cls[0, 0, 0] = 2.0
    det = decode({"output": reg, "525": cls})
    np.testing.assert_allclose(det.boxes, [[-2, -13, 18, 17]], atol=1e-5)
    np.testing.assert_allclose(det.scores, [1 / (1 + math.exp(-2.0))], rtol=1e-6)
    assert det.class_ids.tolist() == [0]


def test_decode_last_anchor_and_yxhw_order():
    reg, cls = blank()
    reg[0, 895, :4] = [-2, 4, 30, 20]  # y, x, h, w
    cls[0, 895, 0] = 5.0
    det = decode({"r": reg, "c": cls}, {"box_order": "yxhw"})
    # anchor 895 centre (120, 120) px -> (124, 118), w 20, h 30
    np.testing.assert_allclose(det.boxes, [[114, 103, 134, 133]], atol=1e-4)


def test_scales_and_non_square_input():
    reg, cls = blank()
    reg[0, 0, :4] = [1, 1, 0.5, 0.25]  # in units of 1/scale
    cls[0, 0, 0] = 3.0
    ctx = DecodeContext(input_hw=(128, 256), score_threshold=0.5)
    det = decode({"r": reg, "c": cls}, {"input_size_width": 128, "input_size_height": 128,
                                        "x_scale": 4, "y_scale": 4, "w_scale": 1, "h_scale": 1}, ctx)
    # normalised: cx = 1/4 + 0.03125, cy = same; w = 0.5, h = 0.25 -> x * 256, y * 128
    cx, cy = 0.28125, 0.28125
    np.testing.assert_allclose(det.boxes, [[(cx - 0.25) * 256, (cy - 0.125) * 128,
                                            (cx + 0.25) * 256, (cy + 0.125) * 128]], atol=1e-4)


def test_outputs_chosen_by_shape_or_name():
    reg, cls = blank()
    reg[0, 100, :4] = [0, 0, 10, 10]
    cls[0, 100, 0] = 4.0
    a = decode({"525": cls, "output": reg})  # order swapped: picked by last dimension
    b = decode({"x": cls, "y": reg}, {"regressors": "y", "classificators": "x"})
    c = decode({"x": cls, "y": reg}, {"regressors": 1, "classificators": 0})
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.boxes, c.boxes)
    with pytest.raises(ModelConfigError):
        decode({"x": cls, "y": reg}, {"regressors": "nope", "classificators": "x"})


def test_score_clip_and_threshold():
    reg, cls = blank()
    cls[0, 10, 0] = 1000.0
    cls[0, 20, 0] = 0.0  # sigmoid 0.5: kept at threshold 0.5
    reg[0, 20, :4] = [0, 0, 8, 8]
    reg[0, 10, :4] = [0, 0, 8, 8]
    det = decode({"r": reg, "c": cls}, {"score_clip": 10})
    np.testing.assert_allclose(det.scores, [1 / (1 + math.exp(-10)), 0.5], rtol=1e-6)
    assert len(decode({"r": reg, "c": cls}, ctx=DecodeContext((128, 128), 0.6))) == 1


def test_plain_and_weighted_nms():
    reg, cls = blank()
    # anchors 0 and 1 share the centre (4, 4); boxes 20x20 shifted by 2 px: IoU 0.82
    reg[0, 0, :4] = [0, 0, 20, 20]
    reg[0, 1, :4] = [2, 0, 20, 20]
    cls[0, 0, 0], cls[0, 1, 0] = 3.0, 1.0
    s0, s1 = 1 / (1 + math.exp(-3.0)), 1 / (1 + math.exp(-1.0))
    plain = decode({"r": reg, "c": cls})
    np.testing.assert_allclose(plain.boxes, [[-6, -6, 14, 14]], atol=1e-5)
    weighted = decode({"r": reg, "c": cls}, {"weighted_nms": True})
    shift = 2 * s1 / (s0 + s1)
    np.testing.assert_allclose(weighted.boxes, [[-6 + shift, -6, 14 + shift, 14]], atol=1e-5)
    np.testing.assert_allclose(weighted.scores, [s0], rtol=1e-6)
    assert len(decode({"r": reg, "c": cls}, {"iou_threshold": 0.9})) == 2


def test_anchor_count_must_match_outputs():
    reg, cls = blank(2304)
    with pytest.raises(ModelConfigError, match="896 anchors"):
        decode({"r": reg, "c": cls})
    with pytest.raises(ModelConfigError, match="num_layers"):
        decode({"r": reg, "c": cls}, {"num_layers": 3})


def test_nothing_over_threshold():
    reg, cls = blank()
    det = decode({"r": reg, "c": cls})
    assert len(det) == 0 and det.boxes.shape == (0, 4)


def test_a_layout_far_larger_than_the_outputs_is_refused_before_it_is_built():
    from common.decoders import DecodeContext, get
    from common.errors import ModelConfigError

    outputs = {"regressors": np.zeros((1, 896, 16), np.float32), "classificators": np.zeros((1, 896, 1), np.float32)}
    params = {"strides": [1], "input_size_width": 16384, "input_size_height": 16384}
    with pytest.raises(ModelConfigError, match=r"at least 268435456 anchors but the outputs have 896"):
        get("ssd_anchors").decode(outputs, DecodeContext((128, 128), 0.5), params)
