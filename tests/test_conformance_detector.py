"""Every detector-kind answer, through the real Nuclio handler, as CVAT reads it (cvat-contract.md §2.4).

Each model type the runner serves (detector, segmentation, classification,
keypoint) is published to CVAT as a detector function; its answers are
checked against the label spec CVAT would be given (common/publish/kinds.py)
with the checker in tests/cvat_answer.py, parsed from the HTTP body.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from common.decoders import Detections
from common.manifest import Label, parse_manifest
from common.pipeline import to_cvat
from common.preprocess import IDENTITY, Transform
from common.publish.kinds import cvat_kind, label_spec
from tests.cvat_answer import check_answer, cvat_stored_mask
from tests.synthetic_outputs import constant_outputs
from tests.test_decoder_keypoints import PERSON, pose_rows
from tests.test_runner_synthetic import png_b64, start
from tools.nuclio_harness import http_event

# The crop of cvat-contract.md §2.4 / §4.3 as a class map: class 1 where the mask is set.
CONTRACT_CROP = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]])


def manifest(name, model_type, decoder, labels, hw):
    return {"name": name, "version": "1.0.0", "framework": "onnx", "type": model_type, "file_name": "model.onnx",
            "labels": labels, "input": {"shape": [1, 3, *hw], "preprocessing": {"resize": {"mode": "stretch"}}},
            "output": {"decoder": decoder, "score_threshold": 0.5}}


def spec_labels(data) -> list[Label]:
    """The labels as CVAT gets them: the published spec (types filled in per model type)."""
    spec = label_spec(parse_manifest(data))
    return [Label(s["id"], s["name"], s["type"],
                  sublabels=tuple(Label(u["id"], u["name"], u["type"]) for u in s.get("sublabels", ())))
            for s in spec]


def ask(worker, pixels: np.ndarray, **payload):
    result = worker.invoke(http_event({"image": png_b64(Image.fromarray(pixels)), **payload}))
    assert (result.status, result.content_type) == (200, "application/json")
    return result.json()


MODELS = {
    # name: (type, decoder, labels, input hw, outputs when something is found, outputs when nothing is)
    "semantic": ("segmentation", {"name": "semantic_segmentation", "mode": "class_map", "regions": "class",
                                  "ignore_classes": [0]}, ["background", "car"], (4, 3),
                 {"classes": CONTRACT_CROP[None]}, {"classes": np.zeros((1, 4, 3), np.int64)}),
    "tags": ("classification", {"name": "classifier"}, ["cat", "dog"], (4, 3),
             {"probs": np.array([[0.2, 0.8]], np.float32)}, {"probs": np.array([[0.4, 0.4]], np.float32)}),
    "pose": ("keypoint", {"name": "yolo_pose", "num_keypoints": 3}, [PERSON], (64, 64),
             {"output0": pose_rows()}, {"output0": np.zeros((1, 14, 3), np.float32)}),
    "boxes": ("detector", {"name": "yolo", "nms_in_graph": True}, ["car"], (8, 8),
              {"output0": np.array([[[1, 2, 5, 6, 0.9, 0]]], np.float32)},
              {"output0": np.zeros((1, 1, 6), np.float32)}),
}


def worker_for(tmp_path, name, found=True):
    model_type, decoder, labels, hw, hit, miss = MODELS[name]
    data = manifest(name, model_type, decoder, labels, hw)
    return start(tmp_path, name, data, constant_outputs(hit if found else miss, hw)), spec_labels(data)


def test_the_contract_mask_comes_out_of_the_handler_exactly(tmp_path):
    worker, labels = worker_for(tmp_path, "semantic")
    [item] = check_answer(ask(worker, np.zeros((4, 3, 3), np.uint8)), labels)
    assert item["mask"] == [255, 255, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 0, 0, 2, 3]  # §4.3's canned answer
    assert cvat_stored_mask(item) == [0, 2, 2, 2, 2, 2, 2, 0, 0, 2, 3]  # what CVAT stores (§2.4)
    # "Return masks as polygons": the outline of the larger part (the lone pixel at (0, 3) is the smaller)
    assert item["points"] == [0.0, 0.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.0]
    assert [s["type"] for s in label_spec(worker.context.user_data.model.record.manifest)] == ["mask", "mask"]


@pytest.mark.parametrize("name, shape_type", [("semantic", "mask"), ("tags", "tag"), ("pose", "skeleton"),
                                              ("boxes", "rectangle")])
def test_every_served_type_answers_as_a_cvat_detector(tmp_path, name, shape_type):
    worker, labels = worker_for(tmp_path, name)
    model = worker.context.user_data.model.record.manifest
    assert cvat_kind(model.type) == "detector"
    hw = MODELS[name][3]
    answer = check_answer(ask(worker, np.full((hw[0] * 2, hw[1] * 2, 3), 255, np.uint8)), labels)
    assert [a["type"] for a in answer] == [shape_type]
    assert check_answer(ask(worker, np.zeros((hw[0], hw[1], 3), np.uint8), threshold=0.3), labels)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_nothing_found_is_an_empty_list_with_200(tmp_path, name):
    worker, _ = worker_for(tmp_path, name, found=False)
    hw = MODELS[name][3]
    assert ask(worker, np.full((hw[0], hw[1], 3), 255, np.uint8)) == []


def test_rotated_rectangles_map_back_with_their_angle():
    labels = {0: Label(0, "ship", "rectangle")}
    dets = Detections(np.array([[10, 20, 30, 24]], np.float32), np.array([0.9], np.float32),
                      np.array([0]), angles=np.array([90], np.float32))
    # letterbox-like: a uniform scale of 0.5 and a pad of 4 on x -> centre (32, 44), 40 x 8, same angle
    [item] = check_answer(to_cvat(dets, Transform(0.5, 0.5, 4, 0), (200, 200), labels), list(labels.values()))
    assert item == {"label": "ship", "type": "rectangle", "points": [12.0, 40.0, 52.0, 48.0], "rotation": 90.0,
                    "confidence": "0.9000"}
    # stretch x2 in x: the box's own x axis points down the picture (stays 20 long), its y axis
    # across it (4 -> 8); centre (40, 22)
    [item] = to_cvat(dets, Transform(0.5, 1.0, 0, 0), (100, 100), labels)
    assert item["points"] == [30.0, 18.0, 50.0, 26.0] and item["rotation"] == 90.0
    dets.angles[:] = 45  # a stretch turns the box's x axis from 45 degrees to atan(1 / 2)
    [item] = to_cvat(dets, Transform(0.5, 1.0, 0, 0), (100, 100), labels)
    assert item["rotation"] == 26.57
    dets.angles[:] = 0  # no angle: a plain rectangle, no rotation key
    assert to_cvat(dets, IDENTITY, (100, 100), labels) == [
        {"label": "ship", "type": "rectangle", "points": [10.0, 20.0, 30.0, 24.0], "confidence": "0.9000"}]
