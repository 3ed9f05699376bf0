"""ReID answers through the real Nuclio handler, read the way CVAT's batch job reads them.

CVAT's reid job (cvat-contract.md §2.2-§2.4) posts each pair of consecutive
frames that both hold rectangles, with the full stored shapes, and chains the
answer into tracks: ``answer[i] >= 0`` continues the track of ``boxes0[i]``
with ``boxes1[answer[i]]``. An index out of range crashes that job, an index
given twice puts one box on two tracks. :func:`check_reid_answer` holds an
answer to those rules; :func:`cvat_reid_job` replays the job's loop over a
frame sequence. The runner is started on a registry folder by
tools/nuclio_harness.Worker (functions/gdrive-runner/main.py, dispatched by
common/serving.py to common.reid.ReidPipeline), with the mean-colour model of
tests/test_reid.py so every answer is known exactly.
"""

from __future__ import annotations

import json

import pytest

from tests.test_reid import BLUE, GREEN, RED, YELLOW, mean_colour_model, picture, reid_json
from tests.test_runner_synthetic import start
from tools.nuclio_harness import http_event


def check_reid_answer(result, boxes0: list, boxes1: list) -> list[int]:
    """The answer as CVAT reads it: a 200 compact JSON list of plain ints, one per
    box of ``boxes0``, each a valid index into ``boxes1`` or negative, no index twice."""
    assert (result.status, result.content_type) == (200, "application/json"), result.body[:200]
    answer = json.loads(result.body)
    assert isinstance(answer, list) and len(answer) == len(boxes0), answer
    assert all(type(v) is int for v in answer), answer
    matched = [v for v in answer if v >= 0]
    assert all(v < len(boxes1) for v in matched), f"index out of range of boxes1 ({len(boxes1)}): {answer}"
    assert len(set(matched)) == len(matched), f"one box of the next frame matched twice: {answer}"
    assert json.dumps(answer, separators=(",", ":")) == result.body.decode()  # the runner's compact encoding, nothing else
    return answer


def cvat_shape(ident: int, frame: int, points, label_id: int = 7) -> dict:
    """A stored rectangle as CVAT's annotation serializer gives it (no path_id yet: the job adds it)."""
    return {"id": ident, "type": "rectangle", "frame": frame, "label_id": label_id, "group": 0, "source": "manual",
            "occluded": False, "outside": False, "z_order": 0, "rotation": 0.0,
            "points": [float(v) for v in points], "attributes": [], "elements": []}


def cvat_reid_job(worker, frames: list[str], shapes: list[dict], threshold=None, max_distance=None):
    """CVAT's reid job over ``frames`` (base64 pictures): boxes grouped by frame, a track started
    for each box without one, the function invoked for consecutive frames that both have boxes
    (threshold and max_distance only when truthy), matches chained. Returns the tracks as lists
    of shape ids, and the answers."""
    by_frame = [[s for s in shapes if s["frame"] == f and s["type"] == "rectangle"] for f in range(len(frames))]
    paths: dict[int, list[dict]] = {}
    answers = []
    for frame0 in range(len(frames) - 1):
        boxes0, boxes1 = by_frame[frame0], by_frame[frame0 + 1]
        for box in boxes0:
            if "path_id" not in box:
                box["path_id"] = len(paths)
                paths[box["path_id"]] = [box]
        if not (boxes0 and boxes1):
            continue
        data = {"image0": frames[frame0], "image1": frames[frame0 + 1], "boxes0": boxes0, "boxes1": boxes1}
        if threshold:
            data["threshold"] = threshold
        if max_distance:
            data["max_distance"] = max_distance
        answer = check_reid_answer(worker.invoke(http_event(json.loads(json.dumps(data)))), boxes0, boxes1)
        answers.append(answer)
        for i, j in enumerate(answer):
            if j >= 0:
                boxes1[j]["path_id"] = boxes0[i]["path_id"]
                paths[boxes0[i]["path_id"]].append(boxes1[j])
    for box in by_frame[-1]:
        if "path_id" not in box:
            box["path_id"] = len(paths)
            paths[box["path_id"]] = [box]
    return [[s["id"] for s in path] for path in paths.values()], answers


@pytest.fixture
def worker(tmp_path):
    return start(tmp_path, "colour-reid", reid_json(), mean_colour_model())


def test_the_worker_serves_a_reid_model_with_the_reid_pipeline(worker):
    from common.reid import ReidPipeline

    assert isinstance(worker.context.user_data.model.pipeline, ReidPipeline)


def test_two_boxes_each_find_theirs_like_cvats_canned_answer(worker):
    frame0 = picture([((20, 20, 50, 60), RED), ((100, 20, 130, 60), BLUE)])
    frame1 = picture([((24, 22, 54, 62), RED), ((104, 22, 134, 62), BLUE)])
    boxes0 = [cvat_shape(1, 0, [20, 20, 50, 60]), cvat_shape(2, 0, [100, 20, 130, 60])]
    boxes1 = [cvat_shape(3, 1, [24, 22, 54, 62]), cvat_shape(4, 1, [104, 22, 134, 62])]
    for box in boxes0:
        box["path_id"] = box["id"]  # CVAT's own key on the boxes it has put on a track
    body = {"image0": frame0, "image1": frame1, "boxes0": boxes0, "boxes1": boxes1, "threshold": 0.5,
            "max_distance": 50}
    assert check_reid_answer(worker.invoke(http_event(body)), boxes0, boxes1) == [0, 1]  # §4.3: [0, 1]
    body["boxes0"] = boxes0[:1]
    assert check_reid_answer(worker.invoke(http_event(body)), boxes0[:1], boxes1) == [0]  # §4.3: [0]


def test_no_boxes_on_the_first_frame_is_an_empty_list_with_200(worker):
    frame = picture([((20, 20, 50, 60), RED)])
    body = {"image0": frame, "image1": frame, "boxes0": [], "boxes1": [cvat_shape(1, 1, [20, 20, 50, 60])]}
    result = worker.invoke(http_event(body))
    assert (result.status, result.body) == (200, b"[]")  # §4.3: [] (an empty JSON body, not a Nuclio batch)
    body = {**body, "boxes0": body["boxes1"], "boxes1": []}
    assert check_reid_answer(worker.invoke(http_event(body)), body["boxes0"], []) == [-1]


def test_cvats_job_chains_the_answers_into_tracks(worker):
    # Three frames: a red and a blue box drift right; a green box appears on frame 1 and
    # a yellow one jumps in on frame 2 where the blue one left. Label 8 is the yellow box's own.
    frames = [picture([((10, 20, 40, 60), RED), ((100, 20, 130, 60), BLUE)]),
              picture([((20, 20, 50, 60), RED), ((110, 20, 140, 60), BLUE), ((150, 70, 180, 110), GREEN)]),
              picture([((30, 20, 60, 60), RED), ((160, 72, 190, 112), GREEN), ((115, 20, 145, 60), YELLOW)])]
    shapes = [cvat_shape(1, 0, [10, 20, 40, 60]), cvat_shape(2, 0, [100, 20, 130, 60]),
              cvat_shape(3, 1, [110, 20, 140, 60]), cvat_shape(4, 1, [20, 20, 50, 60]),
              cvat_shape(5, 1, [150, 70, 180, 110]),
              cvat_shape(6, 2, [115, 20, 145, 60], label_id=8), cvat_shape(7, 2, [30, 20, 60, 60]),
              cvat_shape(8, 2, [160, 72, 190, 112])]
    tracks, answers = cvat_reid_job(worker, frames, shapes, threshold=0.5, max_distance=50)
    assert answers == [[1, 0], [-1, 1, 2]]
    assert tracks == [[1, 4, 7], [2, 3], [5, 8], [6]]


def test_cvat_leaves_out_a_zero_threshold_and_the_model_default_applies(worker):
    # red vs yellow: cosine distance 0.29, within model.json's 0.5; CVAT sends no threshold for 0
    frames = [picture([((20, 20, 50, 60), RED)]), picture([((20, 20, 50, 60), YELLOW)])]
    shapes = [cvat_shape(1, 0, [20, 20, 50, 60]), cvat_shape(2, 1, [20, 20, 50, 60])]
    tracks, answers = cvat_reid_job(worker, frames, shapes, threshold=0, max_distance=0)
    assert (tracks, answers) == ([[1, 2]], [[0]])
    shapes = [cvat_shape(1, 0, [20, 20, 50, 60]), cvat_shape(2, 1, [20, 20, 50, 60])]
    tracks, answers = cvat_reid_job(worker, frames, shapes, threshold=0.2)
    assert (tracks, answers) == ([[1], [2]], [[-1]])


@pytest.mark.parametrize("body, status, fragment", [
    ({"image1": "x", "boxes0": [], "boxes1": []}, 400, "missing 'image0'"),
    ({"image0": "x", "image1": "x", "boxes0": [{"points": [1, 2]}], "boxes1": []}, 400,
     "boxes0[0].points must be [xtl, ytl, xbr, ybr]"),
    ({"image0": "x", "image1": "x", "boxes0": [], "boxes1": [], "threshold": "high"}, 400,
     'threshold must be a number, got \\"high\\"'),
    ({"image0": "bm90IGFuIGltYWdl", "image1": "bm90IGFuIGltYWdl", "boxes0": [{"points": [1, 2, 5, 6]}],
      "boxes1": [{"points": [1, 2, 5, 6]}]}, 400, "image0: the data is not an image in a known format"),
])
def test_bad_payloads_are_4xx_json_errors_and_the_worker_keeps_serving(worker, body, status, fragment):
    result = worker.invoke(http_event(body))
    assert (result.status, result.content_type) == (status, "application/json")
    assert list(result.json()) == ["error"] and fragment in result.body.decode()
    frame = picture([((20, 20, 50, 60), RED)])
    box = cvat_shape(1, 0, [20, 20, 50, 60])
    good = {"image0": frame, "image1": frame, "boxes0": [box], "boxes1": [box]}
    assert check_reid_answer(worker.invoke(http_event(good)), [box], [box]) == [0]


def test_a_body_sent_as_text_is_read_too(worker):
    frame = picture([((20, 20, 50, 60), RED)])
    box = cvat_shape(1, 0, [20, 20, 50, 60])
    raw = json.dumps({"image0": frame, "image1": frame, "boxes0": [box], "boxes1": [box]})
    result = worker.invoke(http_event(raw=raw, content_type="text/plain"))
    assert check_reid_answer(result, [box], [box]) == [0]
