"""ssd decoder: TF Object Detection API style outputs with known answers."""

import jsonschema
import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.errors import ModelConfigError

CTX = DecodeContext(input_hw=(300, 200), score_threshold=0.5)


def decode(outputs, params=None, ctx=CTX):
    info = get("ssd")
    jsonschema.Draft7Validator(info.params_schema).validate(params or {})
    return info.decode(outputs, ctx, params or {})


def tf_outputs(suffix=""):
    boxes = np.zeros((1, 5, 4), np.float32)
    boxes[0, 0] = [0.1, 0.2, 0.5, 0.6]  # ymin xmin ymax xmax -> x 40..120, y 30..150
    boxes[0, 1] = [0.0, 0.0, 1.0, 1.0]
    boxes[0, 2] = [0.2, 0.2, 0.3, 0.3]  # low score
    boxes[0, 3] = [0.5, 0.5, 0.6, 0.6]  # past num_detections
    scores = np.array([[0.9, 0.7, 0.3, 0.99, 0.0]], np.float32)
    classes = np.array([[1, 3, 1, 2, 0]], np.float32)
    return {f"detection_boxes{suffix}": boxes, f"detection_scores{suffix}": scores,
            f"detection_classes{suffix}": classes, f"num_detections{suffix}": np.array([3.0], np.float32)}


def test_tf_defaults_yxyx_normalized_and_num_detections():
    det = decode(tf_outputs())
    np.testing.assert_allclose(det.boxes, [[40, 30, 120, 150], [0, 0, 200, 300]], rtol=1e-6)
    np.testing.assert_allclose(det.scores, [0.9, 0.7], rtol=1e-6)
    assert det.class_ids.tolist() == [1, 3]
    assert det.class_ids.dtype == np.int64


def test_colon_zero_suffix_tolerated_both_ways():
    assert len(decode(tf_outputs(":0"))) == 2
    outs = tf_outputs()
    params = {"boxes": "detection_boxes:0", "scores": "detection_scores:0",
              "classes": "detection_classes:0", "num_detections": "num_detections:0"}
    assert len(decode(outs, params)) == 2


def test_without_num_detections_all_rows_count():
    outs = tf_outputs()
    del outs["num_detections"]
    det = decode(outs)
    assert det.class_ids.tolist() == [2, 1, 3]  # the 0.99 row is now valid
    assert len(decode(tf_outputs(), {"num_detections": None})) == 3


def test_xyxy_pixels():
    outs = {"b": np.array([[[10, 20, 30, 40]]], np.float32), "s": np.array([[0.8]], np.float32),
            "c": np.array([[4]], np.float32)}
    det = decode(outs, {"boxes": "b", "scores": "s", "classes": "c", "box_order": "xyxy", "normalized": False})
    np.testing.assert_allclose(det.boxes, [[10, 20, 30, 40]])
    assert det.class_ids.tolist() == [4]


def test_outputs_by_index():
    outs = tf_outputs()
    det = decode(outs, {"boxes": 0, "scores": 1, "classes": 2, "num_detections": 3})
    assert det.class_ids.tolist() == [1, 3]


def test_per_class_scores_argmax_with_background():
    boxes = np.array([[[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]]], np.float32)
    scores = np.array([[[0.95, 0.6, 0.1], [0.1, 0.2, 0.7], [0.9, 0.3, 0.2]]], np.float32)  # column 0 = background
    outs = {"boxes": boxes, "scores": scores}
    det = decode(outs, {"boxes": "boxes", "scores": "scores", "background_class": 0})
    assert det.class_ids.tolist() == [2, 1]
    np.testing.assert_allclose(det.scores, [0.7, 0.6], rtol=1e-6)
    det = decode(outs, {"boxes": "boxes", "scores": "scores"})  # no background: column 0 wins
    assert det.class_ids.tolist() == [0, 0, 2]


def test_scores_without_classes_are_class_zero():
    outs = {"boxes": np.array([[[0, 0, 1, 1]]], np.float32), "scores": np.array([[0.8]], np.float32)}
    det = decode(outs, {"boxes": "boxes", "scores": "scores", "classes": None})
    assert det.class_ids.tolist() == [0]


def test_optional_nms():
    boxes = np.array([[[0, 0, 0.5, 0.5], [0.01, 0.01, 0.5, 0.5], [0.01, 0.01, 0.5, 0.5]]], np.float32)
    outs = {"detection_boxes": boxes, "detection_scores": np.array([[0.9, 0.8, 0.7]], np.float32),
            "detection_classes": np.array([[1, 1, 2]], np.float32)}
    assert len(decode(outs)) == 3  # NMS is in the graph: nothing removed
    assert decode(outs, {"nms": {"iou_threshold": 0.5}}).class_ids.tolist() == [1, 2]
    assert decode(outs, {"nms": {"class_agnostic": True}}).class_ids.tolist() == [1]


def test_boxes_with_extra_axis_and_max_detections():
    boxes = np.tile(np.array([0.1, 0.1, 0.2, 0.2], np.float32), (1, 4, 1, 1))  # [1, 4, 1, 4]
    outs = {"detection_boxes": boxes, "detection_scores": np.array([[0.6, 0.9, 0.7, 0.8]], np.float32),
            "detection_classes": np.ones((1, 4), np.float32)}
    det = decode(outs, {"max_detections": 2})
    np.testing.assert_allclose(det.scores, [0.9, 0.8], rtol=1e-6)


def test_missing_required_output_names_it():
    with pytest.raises(ModelConfigError, match="boxes"):
        decode({"foo": np.zeros((1, 3, 4), np.float32)})


def test_schema_rejects_bad_params():
    schema = get("ssd").params_schema
    for bad in ({"box_order": "xywh"}, {"nms": {"iou": 0.5}}, {"normalised": True}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(schema).validate(bad)
