"""Interactor and tracker answers, through the real Nuclio handler, as CVAT reads them.

CVAT's payloads are replayed as lambda_manager builds them (cvat-contract.md
§2.3: the v2.60+ interactor call with ``obj_bbox`` ``[]`` or a box, its ROI
form; the v2.40+ tracker init/continue calls in the ``supported_shape_types``
form and in the legacy bare-points form, §4.3) and every answer is checked
with the rules CVAT and its UI apply (§2.4): interactor shapes of type
``mask`` whose RLE covers exactly their box and is at least 6 values long,
the confidence as a string attribute with ``spec_id`` 0; tracker answers
with one shape and one state per input, in order, states that survive
CVAT's ``json.dumps(state, separators=(",", ":"))`` signing. Blank pictures
answer the kind's empty form with 200; bad payloads answer 4xx JSON and the
worker keeps serving.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.cvat import parse_mask_rle_points
from common.interactor import InteractorPipeline
from common.publish.kinds import kind_annotations
from common.serving import KIND_PIPELINES, pipeline_class
from common.tracker import TrackerPipeline
from tests.test_tracker import kind_registry, patch_frame, png, start_worker
from tools.nuclio_harness import http_event

INTERACTOR = "selfie-person-interactor"
TRACKER = "face-aware-box-tracker"


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    registry = kind_registry(tmp_path_factory.mktemp("kinds") / "registry", INTERACTOR, TRACKER)
    cache = tmp_path_factory.mktemp("cache")
    return {name: start_worker(registry, name, cache) for name in (INTERACTOR, TRACKER)}


def post(worker, body, status=200, **options):
    result = worker.invoke(http_event(body, **options))
    assert (result.status, result.content_type) == (status, "application/json"), result.body[:300]
    return result.json()


# -- CVAT's rules -------------------------------------------------------------------------

def check_interactor_answer(answer, size):
    """What cvat-core and the UI's tools-control read of an interactor answer (v2.60+)."""
    json.dumps(answer)
    assert isinstance(answer, dict) and isinstance(answer.get("shapes"), list)
    width, height = size
    for shape in answer["shapes"]:
        assert shape["type"] == "mask"  # the UI uses only masks
        points = shape["points"]
        assert all(type(v) is int for v in points) and len(points) >= 6  # the UI needs RLE length >= 6
        bitmap, (x1, y1, x2, y2) = parse_mask_rle_points(points)  # the runs cover exactly the box
        assert 0 <= x1 <= x2 < width and 0 <= y1 <= y2 < height
        assert bitmap.any() and bitmap[0].any() and bitmap[-1].any() and bitmap[:, 0].any() and bitmap[:, -1].any()
        [confidence] = [a for a in shape["attributes"] if a["spec_id"] == 0]
        assert isinstance(confidence["value"], str) and 0.0 <= float(confidence["value"]) <= 1.0
    return answer


def check_tracker_answer(answer, request, supported):
    """What lambda_manager's tracker call requires (v2.40+): one shape and one state per input,
    in order, shapes in the request's form, states JSON CVAT can sign."""
    assert set(answer) >= {"shapes", "states"}
    n = len(request["shapes"])
    assert len(answer["shapes"]) == n and len(answer["states"]) == n
    for given, shape, state in zip(request["shapes"], answer["shapes"], answer["states"]):
        json.loads(json.dumps(state, separators=(",", ":")))
        if isinstance(shape, list):  # legacy: CVAT wraps it as a rectangle
            assert len(shape) == 4 and all(type(v) is float for v in shape) and shape[0] < shape[2]
            assert given is None or isinstance(given, list)
        else:
            assert shape["type"] in supported and all(type(v) is float for v in shape["points"])
            if given is not None:
                assert shape["type"] == given["type"]  # the type comes back unchanged
    return answer


# -- dispatch ------------------------------------------------------------------------------

def test_each_kind_has_its_pipeline(workers):
    assert set(KIND_PIPELINES) == {"detector", "interactor", "tracker", "reid"}
    assert pipeline_class("segmentation").__name__ == "DetectorPipeline"
    assert type(workers[INTERACTOR].context.user_data.model.pipeline) is InteractorPipeline
    assert type(workers[TRACKER].context.user_data.model.pipeline) is TrackerPipeline


def test_published_kind_annotations_match_what_the_runner_enforces(workers):
    interactor = workers[INTERACTOR].context.user_data.model.pipeline
    assert kind_annotations(interactor.manifest)["min_pos_points"] == str(interactor.settings.min_pos_points) == "1"
    tracker = workers[TRACKER].context.user_data.model.pipeline
    assert kind_annotations(tracker.manifest) == {"supported_shape_types": "rectangle,polygon"}
    assert tracker.shape_types == ("rectangle", "polygon")


# -- interactor -------------------------------------------------------------------------------

FRAME = patch_frame(10, 20)  # 160x120


def test_interactor_calls_as_cvat_sends_them(workers):
    from tests.test_interactor import ASTRONAUT

    worker = workers[INTERACTOR]
    clicks = {"image": ASTRONAUT, "pos_points": [[225, 120]], "neg_points": [], "obj_bbox": []}
    [shape] = check_interactor_answer(post(worker, clicks), (512, 512))["shapes"]
    boxed = {**clicks, "pos_points": [], "obj_bbox": [[100, 20], [400, 511]], "threshold": 0.5}
    [boxed_shape] = check_interactor_answer(post(worker, boxed), (512, 512))["shapes"]
    assert boxed_shape["points"][-4:] == [100, 20, 399, 510]
    # the same call with a text body (no exact application/json: Nuclio gives bytes)
    assert post(worker, None, raw=json.dumps(clicks), content_type="text/plain") == {"shapes": [shape]}


def test_interactor_roi_call_and_blank_pictures_answer_the_empty_form(workers):
    worker = workers[INTERACTOR]
    # §4.4's ROI case: a 20x30 crop, prompts already shifted into it
    roi = {"image": png(np.zeros((30, 20, 3), np.uint8)), "pos_points": [[2, 3], [19, 29]], "neg_points": [],
           "obj_bbox": [[0, 0], [20, 30]]}
    assert check_interactor_answer(post(worker, roi), (20, 30)) == {"shapes": []}
    blank = {"image": png(np.full((48, 64, 3), 255, np.uint8)), "pos_points": [[30, 20]], "neg_points": [],
             "obj_bbox": None}
    assert post(worker, blank) == {"shapes": []}


# -- tracker ---------------------------------------------------------------------------------

def test_tracker_init_and_continue_in_the_supported_shape_types_form(workers):
    worker = workers[TRACKER]
    init = {"image": png(FRAME), "shapes": [{"type": "rectangle", "points": [10.0, 20.0, 50.0, 50.0]},
                                            {"type": "polygon", "points": [10, 20, 50, 35, 20, 50]}], "states": []}
    answer = check_tracker_answer(post(worker, init), init, ("rectangle", "polygon"))
    # CVAT signs each state as compact JSON and gives it back decoded with shapes all null
    states = [json.loads(json.dumps(s, separators=(",", ":"))) for s in answer["states"]]
    follow = {"image": png(patch_frame(14, 22)), "shapes": [None, None], "states": states}
    answer = check_tracker_answer(post(worker, follow), follow, ("rectangle", "polygon"))
    assert answer["shapes"][0] == {"type": "rectangle", "points": [14.0, 22.0, 54.0, 52.0]}
    assert answer["shapes"][1] == {"type": "polygon", "points": [14.0, 22.0, 54.0, 37.0, 24.0, 52.0]}


def test_tracker_legacy_form(workers):
    # a function without supported_shape_types gets bare rectangles and answers bare points (§4.3)
    worker = workers[TRACKER]
    init = {"image": png(FRAME), "shapes": [[10, 20, 50, 50]], "states": []}
    answer = check_tracker_answer(post(worker, init), init, ())
    assert answer["shapes"] == [[10.0, 20.0, 50.0, 50.0]]
    follow = {"image": png(patch_frame(19, 25)), "shapes": [None], "states": answer["states"]}
    assert check_tracker_answer(post(worker, follow), follow, ())["shapes"] == [[19.0, 25.0, 59.0, 55.0]]
    # CVAT before v2.40 sent the previous frame's shape with the state: the track goes on from it
    older = {"image": png(patch_frame(25, 27)), "shapes": [[19.0, 25.0, 59.0, 55.0]], "states": answer["states"]}
    assert check_tracker_answer(post(worker, older), older, ())["shapes"] == [[25.0, 27.0, 65.0, 57.0]]


def test_tracker_empty_forms_and_blank_pictures(workers):
    worker = workers[TRACKER]
    assert post(worker, {"image": png(FRAME), "shapes": [], "states": []}) == {"shapes": [], "states": []}
    blank = np.zeros((120, 160, 3), np.uint8)
    init = {"image": png(blank), "shapes": [{"type": "rectangle", "points": [10, 20, 50, 50]}], "states": []}
    answer = check_tracker_answer(post(worker, init), init, ("rectangle", "polygon"))
    follow = {"image": png(blank), "shapes": [None], "states": answer["states"]}
    answer = check_tracker_answer(post(worker, follow), follow, ("rectangle", "polygon"))
    # nothing to match on a blank picture: the shape stays where it was (the Trackers tab cannot take null)
    assert answer["shapes"] == [{"type": "rectangle", "points": [10.0, 20.0, 50.0, 50.0]}]
    assert answer["states"][0]["misses"] == 1


# -- bad requests: 4xx JSON, the worker keeps serving -------------------------------------------

BAD = [
    (INTERACTOR, {"raw": "{not json"}, "request body is not valid JSON"),
    (INTERACTOR, {"json_body": [1, 2]}, "request body must be a JSON object, not list"),
    (INTERACTOR, {"json_body": {"image": "", "pos_points": [[1, 1]], "neg_points": []}}, "missing 'image'"),
    (INTERACTOR, {"json_body": {"image": "bm90IGFuIGltYWdl", "pos_points": [[1, 1]], "neg_points": []}}, "image"),
    (INTERACTOR, {"json_body": {"image": "x", "pos_points": [1, 1], "neg_points": []}}, "not a flat list"),
    (TRACKER, {"json_body": {"image": "x", "shapes": [{"type": "points", "points": [1, 2]}], "states": []}},
     "This function does not support shapes of type \"points\""),
    (TRACKER, {"json_body": {"image": "x", "shapes": [None], "states": ["signed-by-cvat"]}},
     "states[0] must be a tracker state object"),
    (TRACKER, {"raw": b""}, "empty request body"),
]


@pytest.mark.parametrize("model, request_, message", BAD)
def test_bad_payloads_answer_400_json(workers, model, request_, message):
    worker = workers[model]
    body = request_.get("json_body")
    options = {"raw": request_["raw"]} if "raw" in request_ else {}
    if model == TRACKER and isinstance(body, dict) and body.get("image") == "x":
        body = {**body, "image": png(FRAME)}
    answer = post(worker, body, status=400, **options)
    assert message in answer["error"]
    if model == INTERACTOR:
        ok = {"image": png(FRAME), "pos_points": [[20, 30]], "neg_points": [], "obj_bbox": []}
        check_interactor_answer(post(worker, ok), (160, 120))
    else:
        ok = {"image": png(FRAME), "shapes": [[10, 20, 50, 50]], "states": []}
        check_tracker_answer(post(worker, ok), ok, ())
