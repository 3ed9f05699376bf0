"""The demo's MediaPipe person segmenter (masks) and pose landmark model (skeletons), real TFLite
models from the pinned mediapipe wheel, through the runner's handler as CVAT calls it.

Expected values were recorded from this runner and checked on the pictures `make demo` draws
(.demo/output/<model>/<picture>.png): the mask outlines the astronaut with her helmet and Grace
Hopper; the skeleton's face points sit on the face, legs cut off by the picture are outside.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.cvat_answer import check_answer
from tests.test_golden import GOLDEN
from tools.assets import ASSETS, asset_path
from tools.demo import DEMO_MODELS, IMAGES, RUNNER_DIR, demo_image, framed_layout, skeleton_edges
from tools.nuclio_harness import Worker, http_event

SEGMENTER, POSE = "selfie-person-segmenter", "mediapipe-pose-landmarks"
POLYGONS = "selfie-person-polygons"
# MediaPipe's pose landmark names, in its order (the model's first 33 points).
MEDIAPIPE_POSE = ["nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
                  "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
                  "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky",
                  "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip",
                  "left_knee", "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel",
                  "left_foot_index", "right_foot_index"]
FACE = MEDIAPIPE_POSE[:11]
LEGS = MEDIAPIPE_POSE[25:]
HANDS = MEDIAPIPE_POSE[15:23]
# box, pixels inside, confidence. 54.5 % and 57.8 % of the pictures: what deps-and-models.md measured.
MASKS = {"astronaut.png": ([0, 15, 511, 511], 142862, 0.9857),
         "grace_hopper.jpg": ([0, 24, 511, 599], 177580, 0.9938)}


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    """``worker(model)``: a runner worker on a local registry holding the two demo models."""
    root = tmp_path_factory.mktemp("registry")
    for model in (SEGMENTER, POSE):
        manifest = json.loads((DEMO_MODELS / model / "model.json").read_text())
        (root / model).mkdir()
        shutil.copy(DEMO_MODELS / model / "model.json", root / model / "model.json")
        shutil.copy(asset_path(manifest["file_name"]), root / model / manifest["file_name"])
    # The segmenter with its label typed "polygon": outlines only.
    polygons = json.loads((DEMO_MODELS / SEGMENTER / "model.json").read_text())
    polygons["name"], polygons["labels"][0]["type"] = POLYGONS, "polygon"
    shutil.copytree(root / SEGMENTER, root / POLYGONS)
    (root / POLYGONS / "model.json").write_text(json.dumps(polygons))
    cache = tmp_path_factory.mktemp("cache")
    workers: dict[str, Worker] = {}

    def get(model: str) -> Worker:
        if model not in workers:
            workers[model] = Worker(RUNNER_DIR, env={"MODEL_REGISTRY": f"local:{root}", "MODEL_NAME": model,
                                                     "MODEL_CACHE_DIR": str(cache), "MODEL_CACHE_SIZE": "256MiB"})
        return workers[model]

    return get


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pictures")


def ask(worker: Worker, path: Path) -> list[dict]:
    result = worker.invoke(http_event({"image": base64.b64encode(path.read_bytes()).decode()}))
    assert (result.status, result.content_type) == (200, "application/json"), result.body[:300]
    return check_answer(result.json(), worker.context.user_data.model.record.manifest.labels)


# -- selfie segmentation: one person mask ------------------------------------------------------

@pytest.mark.parametrize("image", sorted(MASKS))
def test_segmenter_answers_one_person_mask_in_cvat_format(worker, image):
    [shape] = ask(worker(SEGMENTER), asset_path(image))
    box, pixels, confidence = MASKS[image]
    assert (shape["label"], shape["type"]) == ("person", "mask")
    assert set(shape) == {"label", "type", "points", "mask", "confidence"}
    mask = shape["mask"]
    x1, y1, x2, y2 = mask[-4:]
    assert len(mask) == (x2 - x1 + 1) * (y2 - y1 + 1) + 4  # the crop fills its inclusive box, CVAT's form
    assert set(mask[:-4]) == {0, 255}
    np.testing.assert_allclose(mask[-4:], box, atol=2)
    inside = sum(v == 255 for v in mask[:-4])
    assert abs(inside - pixels) <= 0.005 * pixels, inside
    assert abs(float(shape["confidence"]) - confidence) <= 0.005
    # the polygon (for "Return masks as polygons"): the outline of the mask's largest part
    xy = np.asarray(shape["points"], np.float32).reshape(-1, 2)
    assert len(xy) > 100
    assert (xy.min(0) >= [x1, y1]).all() and (xy.max(0) <= [x2, y2]).all()
    assert 0.98 * pixels <= cv2.contourArea(xy) <= pixels


@pytest.mark.parametrize("image", sorted(MASKS))
def test_a_segmenter_label_typed_polygon_answers_the_masks_outline_only(worker, image):
    [mask] = ask(worker(SEGMENTER), asset_path(image))
    [shape] = ask(worker(POLYGONS), asset_path(image))
    assert shape == {"label": "person", "type": "polygon", "points": mask["points"],
                     "confidence": mask["confidence"]}


def test_segmenter_model_is_the_pinned_selfie_model():
    manifest = json.loads((DEMO_MODELS / SEGMENTER / "model.json").read_text())
    assert ASSETS[manifest["file_name"]].package == "mediapipe==0.10.21"
    assert manifest["output"]["decoder"]["mode"] == "probability"
    assert IMAGES[SEGMENTER] == ("astronaut.png", "grace_hopper.jpg")


# -- pose landmarks: one 33-point skeleton -----------------------------------------------------

def skeleton_of(answer: list[dict]) -> dict[str, dict]:
    [shape] = answer
    assert (shape["label"], shape["type"]) == ("person", "skeleton")
    names = [e["label"] for e in shape["elements"]]
    assert names == MEDIAPIPE_POSE  # each sublabel once, in MediaPipe's order
    return {e["label"]: e for e in shape["elements"]}


def inside(point, box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_pose_on_the_astronaut_puts_the_nose_in_blazefaces_face_box(worker):
    answer = ask(worker(POSE), asset_path("astronaut.png"))
    assert abs(float(answer[0]["confidence"]) - 0.907) <= 0.02  # the model's presence score
    points = skeleton_of(answer)
    [(_, face)] = GOLDEN[("blazeface-face-detector", "astronaut.png")]
    assert inside(points["nose"]["points"], face)
    assert all(not points[n]["outside"] and inside(points[n]["points"], face) for n in FACE)
    assert not points["left_shoulder"]["outside"] and not points["right_shoulder"]["outside"]
    # the picture ends at her waist: legs and feet are not seen; the model sees neither hand (under 0.7)
    assert all(points[n]["outside"] for n in LEGS + HANDS)


def test_pose_on_a_framed_portrait(worker, pictures):
    framed = demo_image("hopper-framed.png", pictures)
    _, (ox, oy) = framed_layout("hopper-framed.png")
    answer = ask(worker(POSE), framed)
    assert float(answer[0]["confidence"]) >= 0.95
    points = skeleton_of(answer)
    [(_, face)] = GOLDEN[("blazeface-face-detector", "grace_hopper.jpg")]
    face = [face[0] + ox, face[1] + oy, face[2] + ox, face[3] + oy]  # the same face on the framed picture
    assert inside(points["nose"]["points"], face)
    assert all(not points[n]["outside"] and inside(points[n]["points"], face) for n in FACE)
    # the shoulders below the face, either side of it
    left, right = points["left_shoulder"]["points"], points["right_shoulder"]["points"]
    assert left[1] > face[3] and right[1] > face[3] and right[0] < face[0] + 50 and left[0] > face[2] - 50
    assert all(points[n]["outside"] for n in LEGS)  # below the portrait's edge


def test_pose_finds_no_body_in_an_unframed_portrait_or_a_cup(worker):
    # cut at the chest and filling the picture: the model's presence score is 0.04
    assert ask(worker(POSE), asset_path("grace_hopper.jpg")) == []
    assert ask(worker(POSE), asset_path("coffee.png")) == []


def test_pose_skeleton_svg_draws_mediapipes_body():
    manifest = json.loads((DEMO_MODELS / POSE / "model.json").read_text())
    assert ASSETS[manifest["file_name"]].package == "mediapipe==0.10.21"
    [label] = manifest["labels"]
    assert [(s["id"], s["name"]) for s in label["sublabels"]] == list(enumerate(MEDIAPIPE_POSE))
    from common.manifest import parse_manifest

    [parsed] = parse_manifest(manifest).labels
    edges = skeleton_edges([parsed])["person"]
    assert len(edges) == 35 and len(set(edges)) == 35  # MediaPipe's POSE_CONNECTIONS
    assert {n for edge in edges for n in edge} == set(MEDIAPIPE_POSE)
    for edge in [("nose", "left_eye_inner"), ("left_shoulder", "right_shoulder"), ("left_hip", "left_knee"),
                 ("right_ankle", "right_foot_index"), ("left_wrist", "left_thumb")]:
        assert edge in edges
    assert label["svg"].count('data-type="element node"') == 33
