"""yolo decoder: hand-made heads with known answers."""

import jsonschema
import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.errors import ModelConfigError

CTX = DecodeContext(input_hw=(100, 200), score_threshold=0.25, num_classes=2)


def decode(outputs, params=None, ctx=CTX):
    info = get("yolo")
    jsonschema.Draft7Validator(info.params_schema).validate(params or {})
    return info.decode(outputs, ctx, params or {})


def v8_rows():
    """(N, 4+C) rows: centre box + 2 class scores; rows 0 and 1 overlap heavily."""
    return np.array([
        [50, 50, 20, 20, 0.90, 0.10],  # class 0, box [40,40,60,60]
        [52, 50, 20, 20, 0.80, 0.05],  # class 0, overlaps row 0 (IoU 0.82)
        [150, 50, 10, 40, 0.05, 0.60],  # class 1, box [145,30,155,70]
        [10, 10, 4, 4, 0.10, 0.20],  # below threshold
    ], np.float32)


def test_v8_channels_first_threshold_and_nms():
    det = decode({"output0": v8_rows().T[None]})
    np.testing.assert_allclose(det.boxes, [[40, 40, 60, 60], [145, 30, 155, 70]])
    np.testing.assert_allclose(det.scores, [0.9, 0.6], rtol=1e-6)
    assert det.class_ids.tolist() == [0, 1]
    assert det.boxes.dtype == np.float32 and det.class_ids.dtype == np.int64


def test_v8_transposed_is_auto_detected_with_known_class_count():
    a = decode({"output0": v8_rows().T[None]})
    b = decode({"output0": v8_rows()[None]})
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)
    c = decode({"output0": v8_rows()[None]}, {"layout": "v8_transposed"}, DecodeContext((100, 200), 0.25))
    np.testing.assert_array_equal(a.boxes, c.boxes)


def test_v5_equivalent_data_gives_the_same_result():
    rows = v8_rows()
    obj = np.array([0.9, 0.8, 0.6, 0.2], np.float32)
    # objectness x class score reproduces the v8 scores when class scores are v8 / obj
    cls = rows[:, 4:] / obj[:, None]
    v5 = np.concatenate([rows[:, :4], obj[:, None], cls], axis=1)
    a = decode({"output0": rows.T[None]})
    b = decode({"output0": v5[None]})
    c = decode({"output0": v5[None]}, {"layout": "v5"})
    np.testing.assert_allclose(a.boxes, b.boxes)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6)
    assert a.class_ids.tolist() == b.class_ids.tolist() == c.class_ids.tolist()


def test_v5_score_is_objectness_times_class():
    v5 = np.array([[50, 50, 20, 20, 0.5, 0.4, 0.8]], np.float32)  # 0.5*0.8 = 0.4 -> class 1
    det = decode({"out": v5[None]})
    np.testing.assert_allclose(det.scores, [0.4], rtol=1e-6)
    assert det.class_ids.tolist() == [1]
    assert len(decode({"out": v5[None]}, ctx=DecodeContext((100, 200), 0.45, 2))) == 0


def test_class_aware_vs_agnostic():
    rows = np.array([[50, 50, 20, 20, 0.9, 0.1], [51, 50, 20, 20, 0.1, 0.8]], np.float32)
    aware = decode({"o": rows.T[None]})
    agnostic = decode({"o": rows.T[None]}, {"class_agnostic": True})
    assert aware.class_ids.tolist() == [0, 1]
    assert agnostic.class_ids.tolist() == [0]


def test_iou_threshold_param():
    rows = np.array([[50, 50, 20, 20, 0.9, 0], [60, 50, 20, 20, 0.8, 0]], np.float32)  # IoU 1/3
    assert len(decode({"o": rows.T[None]})) == 2  # default 0.45
    assert len(decode({"o": rows.T[None]}, {"iou_threshold": 0.3})) == 1


def test_xyxy_and_normalized():
    rows = np.array([[0.1, 0.2, 0.3, 0.6, 0.9, 0.0]], np.float32)
    det = decode({"o": rows.T[None]}, {"box_format": "xyxy", "normalized": True})
    np.testing.assert_allclose(det.boxes, [[20, 20, 60, 60]], rtol=1e-6)  # input is 200 wide, 100 high
    det = decode({"o": rows.T[None]}, {"normalized": True})  # xywh: centre (20, 20), size (60, 60)
    np.testing.assert_allclose(det.boxes, [[-10, -10, 50, 50]], rtol=1e-6, atol=1e-5)


def test_max_detections():
    rows = np.array([[10 + 30 * i, 50, 10, 10, 0.9 - 0.1 * i, 0] for i in range(5)], np.float32)
    det = decode({"o": rows.T[None]}, {"max_detections": 2})
    np.testing.assert_allclose(det.scores, [0.9, 0.8], rtol=1e-6)


def test_output_by_name_and_index_and_batch_item_0():
    other = np.zeros((1, 6, 3), np.float32)
    head = np.stack([v8_rows().T, np.zeros((6, 4), np.float32)])  # batch of 2; item 1 empty
    outs = {"proto": other, "det": head}
    assert len(decode(outs, {"output": "det"})) == 2
    assert len(decode(outs, {"output": 1})) == 2
    assert len(decode(outs, {"output": "det:0"})) == 2
    with pytest.raises(ModelConfigError):
        decode(outs, {"output": "missing"})


def test_auto_layout_without_labels_and_ambiguity():
    no_labels = DecodeContext((100, 200), 0.25)
    # [1, 6, 4]: more channels than candidates, and no labels to tell -> refuse to guess
    with pytest.raises(ModelConfigError, match="layout"):
        decode({"o": v8_rows().T[None]}, ctx=no_labels)
    assert len(decode({"o": v8_rows().T[None]}, {"layout": "v8"}, ctx=no_labels)) == 2
    square = np.zeros((1, 6, 6), np.float32)  # 6 = 4+2 both ways
    with pytest.raises(ModelConfigError, match="layout"):
        decode({"o": square})
    with pytest.raises(ModelConfigError, match="layout"):
        decode({"o": np.zeros((1, 8400, 9), np.float32)})  # matches nothing for 2 classes


def test_auto_without_labels_channels_first_heuristic():
    no_labels = DecodeContext((100, 200), 0.25)
    head = np.zeros((1, 6, 8400), np.float32)
    head[0, :, 7] = [50, 50, 20, 20, 0.0, 0.7]
    det = decode({"o": head}, ctx=no_labels)
    assert det.class_ids.tolist() == [1]
    with pytest.raises(ModelConfigError):
        decode({"o": head.transpose(0, 2, 1)}, ctx=no_labels)


def test_nms_in_graph_xyxy_score_class_skips_padding():
    rows = np.zeros((1, 5, 6), np.float32)
    rows[0, 0] = [10, 10, 50, 50, 0.9, 1]
    rows[0, 1] = [12, 12, 52, 52, 0.8, 1]  # overlaps, but NMS is not run again
    rows[0, 2] = [0, 0, 5, 5, 0.1, 0]  # below threshold
    rows[0, 3] = [1, 1, 2, 2, 0.7, -1]  # padding: class -1
    # row 4 all zeros: padding
    det = decode({"output0": rows}, {"nms_in_graph": True})
    np.testing.assert_allclose(det.boxes, [[10, 10, 50, 50], [12, 12, 52, 52]])
    np.testing.assert_allclose(det.scores, [0.9, 0.8], rtol=1e-6)
    assert det.class_ids.tolist() == [1, 1]


def test_nms_in_graph_yolov7_rows_batch_zero_only():
    rows = np.array([
        [0, 10, 10, 50, 50, 2, 0.9],
        [1, 10, 10, 50, 50, 2, 0.95],  # batch item 1: ignored
        [0, 60, 10, 90, 50, 0, 0.5],
        [0, 0, 0, 0, 0, 0, 0],  # padding
    ], np.float32)
    det = decode({"output": rows}, {"nms_in_graph": True, "rows": "batch_xyxy_class_score"})
    np.testing.assert_allclose(det.boxes, [[10, 10, 50, 50], [60, 10, 90, 50]])
    assert det.class_ids.tolist() == [2, 0]
    with pytest.raises(ModelConfigError):
        decode({"output": rows[:, :6]}, {"nms_in_graph": True, "rows": "batch_xyxy_class_score"})


def test_nothing_over_threshold_is_empty():
    det = decode({"o": v8_rows().T[None]}, ctx=DecodeContext((100, 200), 0.99, 2))
    assert len(det) == 0 and det.boxes.shape == (0, 4)


def test_schema_rejects_unknown_and_bad_params():
    schema = get("yolo").params_schema
    for bad in ({"iou": 0.5}, {"layout": "v9"}, {"iou_threshold": 2}, {"max_detections": 0}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(schema).validate(bad)


# -- rotated boxes: an angle column (YOLOv8-OBB) ---------------------------------------------

def obb_rows():
    """(N, 4+2+1) rows: centre box, 2 class scores, angle in radians (YOLOv8-OBB's last column)."""
    return np.array([
        [32, 20, 20, 10, 0.10, 0.90, np.pi / 6],  # class 1, 30 degrees clockwise
        [33, 20, 20, 10, 0.10, 0.70, np.pi / 6],  # the same object, weaker: NMS drops it
        [10, 50, 16, 8, 0.80, 0.05, -np.pi / 2],  # class 0, a quarter turn anticlockwise
        [50, 50, 8, 8, 0.60, 0.10, 0.0],  # class 0, not turned
        [5, 5, 4, 4, 0.10, 0.20, 1.0],  # below the threshold
    ], np.float32)


def test_angle_column_gives_clockwise_degrees_and_is_not_a_class():
    # auto layout with 2 labels: rows of 4 + 2 + 1 read as v8 once the angle is counted
    det = decode({"output0": obb_rows().T[None]}, {"angle": -1})
    np.testing.assert_allclose(det.boxes, [[22, 15, 42, 25], [2, 46, 18, 54], [46, 46, 54, 54]])
    np.testing.assert_allclose(det.scores, [0.9, 0.8, 0.6], rtol=1e-6)
    assert det.class_ids.tolist() == [1, 0, 0]
    np.testing.assert_allclose(det.angles, [30.0, -90.0, 0.0], atol=1e-5)
    assert det.angles.dtype == np.float32
    same = decode({"output0": obb_rows()[None]}, {"angle": 6, "layout": "v8_transposed"})
    np.testing.assert_array_equal(same.angles, det.angles)
    assert decode({"output0": obb_rows().T[None]}, {"layout": "v8"}).angles is None  # without the param: none


def test_angle_column_errors_and_class_count():
    from common.runtimes import TensorInfo

    with pytest.raises(ModelConfigError, match=r"angle 2 must be a column after the box, with at least one class"):
        decode({"output0": obb_rows().T[None]}, {"angle": 2})
    with pytest.raises(ModelConfigError, match="angle is read from raw heads only"):
        decode({"output0": obb_rows()[None, :, :6]}, {"angle": -1, "nms_in_graph": True})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(get("yolo").params_schema).validate({"angle": 1.5})
    head = [TensorInfo("output0", (1, 7, 21), np.dtype(np.float32))]
    assert get("yolo").class_count(head, {"angle": -1}) == 2
    assert get("yolo").class_count(head, {}) == 3


def test_handler_answers_rotated_rectangles(tmp_path):
    from tests import synthetic_models as sm
    from tests.cvat_answer import check_answer
    from tests.test_runner_synthetic import detector_manifest, start, white
    from tools.nuclio_harness import http_event

    manifest = detector_manifest("obb", decoder={"name": "yolo", "output": "output0", "angle": -1},
                                 labels=("plane", "ship"))
    worker = start(tmp_path, "obb", manifest, sm.fixed_rows_detector(obb_rows().T[None], (64, 64)))
    result = worker.invoke(http_event({"image": white(128, 128)}))  # twice the input: no pad, same angles
    assert result.status == 200, result.body
    answer = check_answer(result.json(), worker.context.user_data.model.record.manifest.labels)
    assert answer == [
        {"label": "ship", "type": "rectangle", "points": [44.0, 30.0, 84.0, 50.0], "confidence": "0.9000",
         "rotation": 30.0},
        {"label": "plane", "type": "rectangle", "points": [4.0, 92.0, 36.0, 108.0], "confidence": "0.8000",
         "rotation": 270.0},
        {"label": "plane", "type": "rectangle", "points": [92.0, 92.0, 108.0, 108.0], "confidence": "0.6000"},
    ]
