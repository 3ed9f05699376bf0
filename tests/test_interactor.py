"""The interactor (common/interactor.py): the prompt rules, the classic refinement on exact
bitmaps, and the demo interactor (MediaPipe selfie segmentation) through the real handler."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest

from common.cvat import parse_mask_rle_points
from common.errors import BadRequest
from common.interactor import InteractorSettings, fill_holes, parse_interactor_request, refine
from tests.test_tracker import kind_registry, png, start_worker
from tools.assets import asset_path
from tools.nuclio_harness import http_event

MODEL = "selfie-person-interactor"
ASTRONAUT = base64.b64encode(asset_path("astronaut.png").read_bytes()).decode()


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    registry = kind_registry(tmp_path_factory.mktemp("kinds") / "registry", MODEL)
    return start_worker(registry, MODEL, tmp_path_factory.mktemp("cache"))


def ask(worker, status=200, **payload):
    body = {"image": ASTRONAUT, "pos_points": [], "neg_points": [], "obj_bbox": [], **payload}
    result = worker.invoke(http_event(body))
    assert (result.status, result.content_type) == (status, "application/json"), result.body[:300]
    return result.json()


def on_image(shape, size=(512, 512)):
    """The shape's mask on the whole picture (its RLE decoded over its own box)."""
    bitmap, (x1, y1, x2, y2) = parse_mask_rle_points(shape["points"])
    full = np.zeros(size[::-1], bool)
    full[y1:y2 + 1, x1:x2 + 1] = bitmap
    return full, (x1, y1, x2, y2)


# -- prompts -----------------------------------------------------------------------------

@pytest.mark.parametrize("payload, message", [
    ({"image": "x", "neg_points": []}, "missing 'pos_points'"),
    ({"image": "x", "pos_points": [10, 20], "neg_points": []}, "list of [x, y] pairs such as [[10, 20], [30, 40]], "
                                                               "not a flat list"),
    ({"image": "x", "pos_points": [[10, 20, 30]], "neg_points": []}, "pos_points[0] must be one [x, y] pair"),
    ({"image": "x", "pos_points": [[10, "a"]], "neg_points": []}, "pos_points[0][1] must be a number"),
    ({"image": "x", "pos_points": [], "neg_points": [], "obj_bbox": []}, "needs a box or at least 1 positive point"),
    ({"image": "x", "pos_points": [[1, 1]], "neg_points": [], "obj_bbox": [1, 2, 3, 4]}, "'obj_bbox' must be"),
    ({"pos_points": [[1, 1]], "neg_points": []}, "missing 'image'"),
])
def test_bad_prompts_are_refused(payload, message):
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_interactor_request(payload)


def test_a_box_is_a_prompt_and_model_json_sets_the_minimums():
    request = parse_interactor_request({"image": "x", "pos_points": [], "neg_points": [],
                                        "obj_bbox": [[30, 40], [10, 20]]})
    assert request.box == (10.0, 20.0, 30.0, 40.0) and request.pos_points == ()
    assert parse_interactor_request({"image": "x", "pos_points": [[1, 2]], "neg_points": None}).box is None
    with pytest.raises(BadRequest, match="needs a box or at least 2 positive point"):
        parse_interactor_request({"image": "x", "pos_points": [[1, 2]], "neg_points": []}, InteractorSettings(2, 0))
    with pytest.raises(BadRequest, match="'neg_points' has 0 point.*at least 1"):
        parse_interactor_request({"image": "x", "pos_points": [[1, 2]], "neg_points": []}, InteractorSettings(1, 1))
    with pytest.raises(BadRequest, match="starts with a box"):
        parse_interactor_request({"image": "x", "pos_points": [[1, 2]], "neg_points": []},
                                 InteractorSettings(1, -1, startswith_box=True))


# -- refinement on exact bitmaps -----------------------------------------------------------

def blobs():
    inside = np.zeros((10, 20), bool)
    inside[1:6, 1:6] = True  # a ring with a hole at (3, 3)
    inside[3, 3] = False
    inside[2:8, 9:12] = True  # a bar
    inside[7:9, 15:19] = True  # a small block
    return inside


def test_the_clicked_part_is_kept_and_its_hole_filled():
    mask = refine(blobs(), [(2, 2)], [])
    expected = np.zeros((10, 20), bool)
    expected[1:6, 1:6] = True
    assert (mask == expected).all()


def test_without_clicks_the_largest_part_is_kept_and_negative_parts_are_dropped():
    assert refine(blobs(), [], []).sum() == 25  # the ring, filled
    assert refine(blobs(), [], [(1, 1)]).sum() == 18  # the ring refused: the bar is the largest left
    assert refine(blobs(), [(10, 4)], [(10, 5)]).sum() == 9  # the bar cut between the clicks: rows 2-4 stay
    assert not refine(blobs(), [(0, 0)], []).any()  # a click on the background selects nothing


def test_a_negative_click_in_a_hole_keeps_the_hole():
    mask = refine(blobs(), [(1, 1)], [(3, 3)])
    assert mask.sum() == 24 and not mask[3, 3]
    assert fill_holes(blobs())[3, 3]


# -- the real model through the handler --------------------------------------------------

def test_a_click_on_the_face_masks_the_whole_astronaut(worker):
    answer = ask(worker, pos_points=[[225, 120]])
    [shape] = answer["shapes"]
    assert shape["type"] == "mask" and set(shape) == {"type", "points", "attributes"}
    assert shape["attributes"] == [{"spec_id": 0, "value": shape["attributes"][0]["value"]}]
    assert 0.98 <= float(shape["attributes"][0]["value"]) <= 1.0
    mask, box = on_image(shape)
    # the region around the click grew until the person no longer touched its sides
    assert box == (0, 15, 503, 511)
    assert mask[120, 225] and mask[440, 380] and not mask[60, 480]  # face, helmet in her arm; not the wall
    assert 140_000 <= mask.sum() <= 146_000


def test_a_negative_click_cuts_off_the_helmet(worker):
    mask, box = on_image(ask(worker, pos_points=[[225, 120]], neg_points=[[380, 440]])["shapes"][0])
    assert mask[120, 225] and not mask[440, 380]
    assert box[2] < 380


def test_a_box_bounds_the_mask(worker):
    mask, box = on_image(ask(worker, obj_bbox=[[100, 20], [400, 511]])["shapes"][0])
    assert box == (100, 20, 399, 510)
    assert mask[120, 225] and not mask[:, :100].any() and not mask[:, 400:].any()


def test_a_blank_picture_answers_no_shapes(worker):
    blank = png(np.zeros((64, 48, 3), np.uint8))
    assert ask(worker, image=blank, pos_points=[[20, 30]]) == {"shapes": []}


@pytest.mark.parametrize("payload, message", [
    ({"pos_points": [[600, 10]]}, "positive point [600, 10] lies outside the 512x512 image"),
    ({"pos_points": [], "obj_bbox": [[600, 600], [700, 700]]}, "has no area inside the 512x512 image"),
    ({"pos_points": [[1, 2, 3, 4]]}, "must be one [x, y] pair"),
])
def test_bad_prompts_answer_400_and_the_worker_keeps_serving(worker, payload, message):
    assert message in ask(worker, status=400, **payload)["error"]
    assert len(ask(worker, pos_points=[[225, 120]])["shapes"]) == 1


def test_edge_clicks_count_as_inside(worker):
    # CVAT's coordinates are continuous: the right/bottom edge is x = width, y = height
    mask, _ = on_image(ask(worker, pos_points=[[225, 120], [512, 512]])["shapes"][0])
    assert mask[120, 225]
    assert "[512.5, 512] lies outside" in ask(worker, status=400, pos_points=[[512.5, 512]])["error"]
