"""landmarks: regression landmark rows (MediaPipe style) from tiny constant ONNX models -> exact skeletons."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.errors import ModelConfigError
from tests.cvat_answer import check_answer
from tests.test_decoder_segmentation import pipeline_for

SVG = ('<line x1="50" y1="10" x2="30" y2="40" data-type="edge" data-node-from="1" data-node-to="2"></line>'
       '<circle r="1" cx="50" cy="10" data-type="element node" data-element-id="1" data-node-id="1" '
       'data-label-name="nose"></circle>')
# Sublabel ids are point indices; listed out of order on purpose: elements follow this order.
BODY = {"id": 0, "name": "body", "type": "skeleton", "svg": SVG,
        "sublabels": [{"id": 0, "name": "nose"}, {"id": 2, "name": "right_hand"}, {"id": 1, "name": "left_hand"},
                      {"id": 3, "name": "left_foot"}, {"id": 4, "name": "right_foot"}]}


def rows():
    """[1, 6*5]: x, y, z, visibility logit, presence logit per point, as MediaPipe pose gives;
    the sixth point is auxiliary (num_points 5 drops it)."""
    return np.array([
        [32, 8, -3, 4.0, 9],  # nose, seen
        [10, 30, 1, 2.0, 9],  # left hand, seen
        [54, 28, 1, -1.0, 9],  # right hand, hidden (sigmoid 0.27)
        [20, 60, 5, 0.5, 9],  # left foot, just seen (sigmoid 0.62)
        [44, 62, 5, -3.0, 9],  # right foot, hidden
        [0, 0, 0, 9.0, 9],  # auxiliary point: not a body point
    ], np.float32).reshape(1, -1)


POSE = {"name": "landmarks", "output": "Identity", "values_per_point": 5, "visibility_index": 3,
        "visibility_activation": "sigmoid", "num_points": 5, "score_output": "Identity_1"}


def decode(outputs, params, ctx=DecodeContext((64, 64), 0.5)):
    info = get("landmarks")
    params = {k: v for k, v in params.items() if k != "name"}  # model.json's decoder name is no parameter
    jsonschema.Draft7Validator(info.params_schema).validate(params)
    return info.decode(outputs, ctx, params)


def test_pose_rows_through_the_pipeline_give_one_exact_skeleton(tmp_path):
    outputs = {"Identity": rows(), "Identity_1": np.array([[0.93]], np.float32)}
    pipe = pipeline_for(tmp_path, outputs, POSE, [BODY], hw=(64, 64), model_type="keypoint")
    answer = check_answer(pipe(np.zeros((128, 128, 3), np.uint8)), pipe.manifest.labels)  # 2x the input
    assert answer == [{"label": "body", "type": "skeleton", "confidence": "0.9300", "elements": [
        {"label": "nose", "type": "points", "points": [64.0, 16.0], "outside": False},
        {"label": "right_hand", "type": "points", "points": [108.0, 56.0], "outside": True},
        {"label": "left_hand", "type": "points", "points": [20.0, 60.0], "outside": False},
        {"label": "left_foot", "type": "points", "points": [40.0, 120.0], "outside": False},
        {"label": "right_foot", "type": "points", "points": [88.0, 124.0], "outside": True},
    ]}]
    # the presence under the request's threshold: no skeleton
    assert pipe(np.zeros((128, 128, 3), np.uint8), 0.95) == []


def test_letterboxed_picture_maps_points_back(tmp_path):
    outputs = {"Identity": rows(), "Identity_1": np.array([[0.93]], np.float32)}
    pipe = pipeline_for(tmp_path, outputs, POSE, [BODY], hw=(64, 64), mode="letterbox", model_type="keypoint")
    # 128 wide, 64 high: half size, 16 input rows of padding above and below
    [skeleton] = pipe(np.zeros((64, 128, 3), np.uint8))
    assert [e["points"] for e in skeleton["elements"]] == [[64.0, 0.0], [108.0, 24.0], [20.0, 28.0],
                                                           [40.0, 64.0], [88.0, 64.0]]  # clipped to the picture


def test_decoder_values_box_and_visibility():
    dets = decode({"Identity": rows(), "Identity_1": np.array([[0.93]], np.float32)}, POSE)
    assert dets.keypoints.shape == (1, 5, 3) and dets.keypoints.dtype == np.float32
    np.testing.assert_allclose(dets.keypoints[0, :, :2], [[32, 8], [10, 30], [54, 28], [20, 60], [44, 62]])
    np.testing.assert_allclose(dets.keypoints[0, :, 2], 1 / (1 + np.exp(-np.array([4.0, 2.0, -1.0, 0.5, -3.0]))),
                               rtol=1e-6)
    np.testing.assert_allclose(dets.boxes, [[10, 8, 32, 60]])  # bounds of the visible points only
    np.testing.assert_allclose(dets.scores, [0.93], rtol=1e-6)
    assert dets.class_ids.tolist() == [0] and dets.keypoint_threshold == 0.5
    stricter = decode({"Identity": rows(), "Identity_1": np.array([[0.93]], np.float32)},
                      {**POSE, "visibility_threshold": 0.9, "label_id": 3})
    np.testing.assert_allclose(stricter.boxes, [[32, 8, 32, 8]])  # only the nose (0.982) is seen
    assert stricter.class_ids.tolist() == [3] and stricter.keypoint_threshold == 0.9


def test_score_without_a_score_output_is_the_mean_visibility():
    params = {k: v for k, v in POSE.items() if k != "score_output"}
    dets = decode({"Identity": rows()}, params, DecodeContext((64, 64), 0.1))
    expected = float(np.mean(1 / (1 + np.exp(-np.array([4.0, 2.0, -1.0, 0.5, -3.0])))))  # 0.5963
    np.testing.assert_allclose(dets.scores, [expected], rtol=1e-6)
    assert len(decode({"Identity": rows()}, params, DecodeContext((64, 64), 0.6))) == 0
    # neither visibility nor score: every point seen, score 1
    plain = decode({"Identity": rows()}, {"values_per_point": 5, "num_points": 5}, DecodeContext((64, 64), 0.99))
    assert plain.scores.tolist() == [1.0] and plain.keypoints[0, :, 2].tolist() == [1.0] * 5
    np.testing.assert_allclose(plain.boxes, [[10, 8, 54, 62]])


def test_normalized_xyz_rows_in_any_shape():
    # a hand model's form: [1, K, 3] x, y, z as fractions of a 64 x 32 (h x w) input
    xyz = np.array([[[0.5, 0.25, 0.0], [1.0, 1.0, 0.1]]], np.float32)
    dets = decode({"o": xyz}, {"normalized": True}, DecodeContext((64, 32), 0.5))
    np.testing.assert_allclose(dets.keypoints[0], [[16, 16, 1], [32, 64, 1]])
    flat = decode({"o": xyz.reshape(1, 6)}, {"normalized": True}, DecodeContext((64, 32), 0.5))
    np.testing.assert_array_equal(flat.keypoints, dets.keypoints)
    swapped = decode({"o": xyz[0]}, {"x_index": 1, "y_index": 0}, DecodeContext((64, 32), 0.5))
    np.testing.assert_allclose(swapped.keypoints[0, :, :2], [[0.25, 0.5], [1, 1]])


def test_no_visible_point_is_no_object():
    hidden = rows().reshape(6, 5).copy()
    hidden[:, 3] = -5.0
    params = {**POSE, "score_output": None}
    assert len(decode({"Identity": hidden.reshape(1, -1)}, params, DecodeContext((64, 64), 0.0))) == 0


@pytest.mark.parametrize("outputs, params, message", [
    ({"o": np.zeros((1, 31), np.float32)}, {"values_per_point": 5},
     r"values_per_point: an output of 31 values is not whole points of 5 values"),
    ({"o": np.zeros((1, 6, 4), np.float32)}, {"values_per_point": 5},
     r"landmarks of shape \[6, 4\] hold 4 values per point, not 5"),
    ({"o": rows()}, {"values_per_point": 5, "visibility_index": 5},
     r"visibility_index: visibility_index 5 is not one of the 5 values of a point \(0..4\)"),
    ({"o": rows()}, {"values_per_point": 5, "num_points": 7}, r"num_points 7, but the model gives 6 points"),
    ({"o": rows(), "s": np.zeros((1, 2), np.float32)}, {"values_per_point": 5, "score_output": "s"},
     r"score_output: the object score must be one value, got shape \[1, 2\]"),
    ({"o": rows()}, {"values_per_point": 5, "score_output": "presence"}, r"no output 'presence'; outputs are"),
])
def test_outputs_that_do_not_fit_are_clear_errors(outputs, params, message):
    with pytest.raises(ModelConfigError, match=message):
        decode(outputs, params)


def test_schema_and_registration():
    info = get("landmarks")
    assert info.result == "keypoints"
    validator = jsonschema.Draft7Validator(info.params_schema)
    for bad in ({"points": 33}, {"values_per_point": 1}, {"visibility_activation": "softmax"},
                {"visibility_threshold": 1.5}, {"num_points": 0}, {"x_index": None}):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)
