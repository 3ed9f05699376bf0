"""Keypoints (yolo_pose, heatmap_keypoints) -> CVAT skeletons, exact values."""

from __future__ import annotations

import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.decoders.keypoints import heatmap_peaks
from common.errors import ModelConfigError
from tests.cvat_answer import check_answer
from tests.test_decoder_segmentation import pipeline_for

SVG = '<line x1="1" y1="1" x2="2" y2="2" data-node-from="1" data-node-to="2"></line>'
# Sublabel ids are keypoint indices; listed out of order on purpose: elements follow this order.
PERSON = {"id": 0, "name": "person", "type": "skeleton", "svg": SVG,
          "sublabels": [{"id": 2, "name": "right_eye"}, {"id": 0, "name": "nose"}, {"id": 1, "name": "left_eye"}]}


def pose_rows():
    """[1, 4+1+3*3, N] v8 head: box (xywh), 1 class score, (x, y, conf) for nose, left eye, right eye."""
    rows = np.array([
        [20, 20, 10, 20, 0.9, 18, 12, 0.95, 22, 12, 0.2, 20, 25, 0.8],  # left eye barely seen
        [50, 50, 10, 10, 0.8, 48, 48, 0.1, 52, 48, 0.3, 50, 52, 0.49],  # nothing seen: not sent
        [10, 50, 8, 8, 0.1, 9, 49, 0.9, 11, 49, 0.9, 10, 52, 0.9],  # below the score threshold
    ], np.float32)
    return rows.T[None]


def test_yolo_pose_skeleton_with_an_unseen_point_and_none_for_an_unseen_object(tmp_path):
    decoder = {"name": "yolo_pose", "num_keypoints": 3, "keypoint_threshold": 0.5}
    pipe = pipeline_for(tmp_path, {"output0": pose_rows()}, decoder, [PERSON], hw=(64, 64), model_type="keypoint")
    answer = check_answer(pipe(np.zeros((128, 128, 3), np.uint8)), pipe.manifest.labels)  # 2x the input
    assert answer == [{"label": "person", "type": "skeleton", "confidence": "0.9000", "elements": [
        {"label": "right_eye", "type": "points", "points": [40.0, 50.0], "outside": False},
        {"label": "nose", "type": "points", "points": [36.0, 24.0], "outside": False},
        {"label": "left_eye", "type": "points", "points": [44.0, 24.0], "outside": True},
    ]}]
    # the second object: every point under 0.5, so no skeleton (CVAT would drop it anyway)
    assert len(pipe(np.zeros((128, 128, 3), np.uint8), 0.5)) == 1


def test_yolo_pose_keypoint_count_from_the_labels_and_sigmoid():
    info = get("yolo_pose")
    head = np.concatenate([pose_rows(), np.zeros((1, 14, 20), np.float32)], axis=2)  # more candidates than channels
    dets = info.decode({"o": head}, DecodeContext((64, 64), 0.5, 1), {"keypoint_activation": "sigmoid"})
    assert dets.keypoints.shape == (2, 3, 3)
    np.testing.assert_allclose(dets.keypoints[0, :, 2], 1 / (1 + np.exp(-np.array([0.95, 0.2, 0.8]))), rtol=1e-6)
    with pytest.raises(ModelConfigError, match="set num_keypoints"):
        info.decode({"o": head}, DecodeContext((64, 64), 0.5, 2), {})


def test_sublabel_ids_must_be_keypoints_of_the_model(tmp_path):
    wide = {**PERSON, "sublabels": PERSON["sublabels"] + [{"id": 7, "name": "ear"}]}
    pipe = pipeline_for(tmp_path, {"output0": pose_rows()}, {"name": "yolo_pose", "num_keypoints": 3}, [wide],
                        hw=(64, 64), model_type="keypoint")
    with pytest.raises(ModelConfigError, match="point 'ear' has id 7, but the model gives 3 keypoints"):
        pipe(np.zeros((64, 64, 3), np.uint8))


def heatmaps():
    maps = np.zeros((1, 2, 8, 8), np.float32)
    maps[0, 0, 2, 3], maps[0, 0, 2, 4], maps[0, 0, 2, 2] = 0.9, 0.5, 0.1  # right neighbour higher: x + 0.25
    maps[0, 0, 1, 3], maps[0, 0, 3, 3] = 0.2, 0.2  # equal vertical neighbours: y stays
    maps[0, 1, 7, 0] = 0.3  # in a corner, weak
    return maps


def test_heatmap_peaks_refine_by_a_quarter_pixel():
    np.testing.assert_allclose(heatmap_peaks(heatmaps()[0].astype(np.float64)),
                               [[3.25, 2, 0.9], [0, 7, 0.3]], rtol=1e-6)


def test_heatmap_keypoints_through_the_pipeline(tmp_path):
    labels = [{**PERSON, "sublabels": [{"id": 0, "name": "nose"}, {"id": 1, "name": "tail"}]}]
    pipe = pipeline_for(tmp_path, {"heatmaps": heatmaps()}, {"name": "heatmap_keypoints"}, labels, hw=(32, 32),
                        model_type="keypoint", threshold=0.5)
    # stride 4: map pixel 3.25 -> input (3.25 + 0.5) * 4 = 15; the mean confidence 0.6 passes 0.5
    answer = check_answer(pipe(np.zeros((32, 32, 3), np.uint8)), pipe.manifest.labels)
    assert answer == [{"label": "person", "type": "skeleton", "confidence": "0.6000", "elements": [
        {"label": "nose", "type": "points", "points": [15.0, 10.0], "outside": False},
        {"label": "tail", "type": "points", "points": [2.0, 30.0], "outside": True}]}]
    assert pipe(np.zeros((32, 32, 3), np.uint8), 0.7) == []
