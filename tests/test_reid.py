"""ReID (common/reid.py): payload parsing, gating, thresholds, the exact assignment, and a real backbone.

The exact tests embed crops with a tiny ONNX model whose embedding is the
crop's mean colour, on pictures of flat-coloured rectangles, so every cosine
distance is known in advance. The real-model test runs the MobileNetV2
feature extractor built by tools/models/reid_features.py.
"""

from __future__ import annotations

import base64
import io
import itertools
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from common.errors import BadRequest, InvalidImage, ModelConfigError
from common.imaging import decode_image
from common.manifest import parse_manifest
from common.reid import Box, ReidPipeline, candidates, min_cost_assignment, parse_reid_request
from common.runtimes.start import open_model_runtime
from tools.assets import asset_path

RED, ORANGE, YELLOW, GREEN, BLUE = (255, 0, 0), (255, 128, 0), (255, 255, 0), (0, 255, 0), (0, 0, 255)


# -- a model whose embedding is the crop's mean colour -----------------------------

def mean_colour_model(batch: int | str = "N", *, keepdims: bool = False, decoy_first: bool = False) -> bytes:
    """Input ``crops`` [batch, 3, 8, 8] -> ``colour`` [batch, 3] (or [batch, 3, 1, 1]), the mean
    of each channel; ``decoy_first`` puts an output ``decoy`` (the channel maxima) before it."""
    shape = [batch, 3, 1, 1] if keepdims else [batch, 3]
    nodes = [helper.make_node("ReduceMean", ["crops"], ["colour"], axes=[2, 3], keepdims=int(keepdims))]
    outputs = [helper.make_tensor_value_info("colour", TensorProto.FLOAT, shape)]
    if decoy_first:
        nodes.append(helper.make_node("ReduceMax", ["crops"], ["decoy"], axes=[2, 3], keepdims=0))
        outputs.insert(0, helper.make_tensor_value_info("decoy", TensorProto.FLOAT, [batch, 3]))
    graph = helper.make_graph(nodes, "mean_colour", [helper.make_tensor_value_info(
        "crops", TensorProto.FLOAT, [batch, 3, 8, 8])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def reid_json(**output) -> dict:
    return {"name": "colour-reid", "version": "1.0.0", "framework": "onnx", "type": "reid",
            "file_name": "model.onnx",
            "input": {"preprocessing": {"resize": {"mode": "stretch", "width": 8, "height": 8}}},
            "output": {"score_threshold": 0.5, **output}}


def pipeline(tmp_path, onnx_bytes: bytes | None = None, **output) -> ReidPipeline:
    path = tmp_path / "model.onnx"
    path.write_bytes(onnx_bytes or mean_colour_model())
    manifest = parse_manifest(reid_json(**output))
    reid = ReidPipeline(manifest, open_model_runtime(manifest, {"model.onnx": path}))
    reid.warm_up()
    return reid


def picture(rects, size=(200, 120)) -> str:
    """Base64 PNG: grey background with flat-coloured rectangles ``((x1, y1, x2, y2), colour)``."""
    pixels = np.full((size[1], size[0], 3), 128, np.uint8)
    for (x1, y1, x2, y2), colour in rects:
        pixels[y1:y2, x1:x2] = colour
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def shape(points, label_id=1, frame=0, ident=1, shape_type="rectangle") -> dict:
    """A rectangle as CVAT's reid job sends it: the whole stored shape (cvat-contract.md §2.3)."""
    return {"id": ident, "label_id": label_id, "frame": frame, "type": shape_type, "points": list(points),
            "attributes": [], "group": 0, "occluded": False, "source": "manual", "z_order": 0, "path_id": None}


def payload(rects0, rects1, boxes0=None, boxes1=None, **extra) -> dict:
    """Two frames of coloured rectangles and, by default, one CVAT shape per rectangle."""
    boxes0 = [shape(r, frame=0, ident=i) for i, (r, _) in enumerate(rects0)] if boxes0 is None else boxes0
    boxes1 = [shape(r, frame=1, ident=10 + i) for i, (r, _) in enumerate(rects1)] if boxes1 is None else boxes1
    return {"image0": picture(rects0), "image1": picture(rects1), "boxes0": boxes0, "boxes1": boxes1, **extra}


def cosine_distance(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# -- matching ------------------------------------------------------------------------

def test_each_box_finds_its_colour_on_the_next_frame(tmp_path):
    reid = pipeline(tmp_path)
    body = payload([((20, 20, 50, 60), RED), ((100, 20, 130, 60), GREEN), ((150, 70, 190, 110), BLUE)],
                   [((110, 25, 140, 65), GREEN), ((160, 75, 200, 115), BLUE), ((25, 22, 55, 62), RED)])
    assert reid.handle(body) == [2, 0, 1]


def test_the_distances_are_the_cosine_distances_of_the_mean_colours(tmp_path):
    reid = pipeline(tmp_path)
    frame0 = decode_image(picture([((0, 0, 20, 20), RED), ((40, 0, 60, 20), ORANGE)]))
    frame1 = decode_image(picture([((0, 0, 20, 20), YELLOW), ((40, 0, 60, 20), BLUE)]))
    boxes = [Box(0, 1, 0, 0, 20, 20, True), Box(1, 1, 40, 0, 60, 20, True)]
    got = reid.distances(frame0, boxes, frame1, boxes)
    want = [[cosine_distance(a, b) for b in (YELLOW, BLUE)] for a in (RED, ORANGE)]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[0, 0] == pytest.approx(1 - 2 ** -0.5, abs=1e-6)  # red vs yellow: 45 degrees apart


def test_threshold_is_the_largest_cosine_distance_that_matches(tmp_path):
    reid = pipeline(tmp_path)
    body = payload([((20, 20, 50, 60), RED)], [((20, 20, 50, 60), YELLOW)])  # 1 - cos 45° = 0.2929
    assert reid.handle({**body, "threshold": 0.29}) == [-1]
    assert reid.handle({**body, "threshold": 0.30}) == [0]
    assert reid.handle({**body, "threshold": "0.3"}) == [0]  # numeric strings as for detectors
    assert reid.handle(body) == [0]  # no threshold: model.json score_threshold (0.5)
    assert pipeline(tmp_path, score_threshold=0.25).handle(body) == [-1]


def test_only_boxes_of_the_same_label_match(tmp_path):
    reid = pipeline(tmp_path)
    rects = [((20, 20, 50, 60), RED), ((100, 20, 130, 60), RED)]
    body = payload(rects, rects, boxes0=[shape(rects[0][0], label_id=1), shape(rects[1][0], label_id=2)],
                   boxes1=[shape(rects[1][0], label_id=2), shape(rects[0][0], label_id=3)])
    assert reid.handle(body) == [-1, 0]


def test_box_centres_farther_apart_than_max_distance_do_not_match(tmp_path):
    reid = pipeline(tmp_path)
    near = payload([((0, 0, 20, 20), RED)], [((50, 0, 70, 20), RED)])  # centres 50 px apart
    far = payload([((0, 0, 20, 20), RED)], [((30, 40, 50, 60), RED)])  # 50 px too: 30-40-50 triangle
    farther = payload([((0, 0, 20, 20), RED)], [((51, 0, 71, 20), RED)])
    assert reid.handle(near) == [0] and reid.handle(far) == [0]  # CVAT's default, 50, is inclusive
    assert reid.handle(farther) == [-1]
    assert reid.handle({**farther, "max_distance": 51}) == [0]
    assert reid.handle({**farther, "max_distance": 50.9}) == [-1]


def test_one_to_one_takes_the_most_matches_where_greedy_would_lose_one(tmp_path):
    # a (0°) and b (30.5°) on frame 0; x (8.9°) and y (19.4°) on frame 1, as angles of red->yellow.
    # Closest pair first takes a-x (0.012) and leaves b alone (b-y is 110 px apart);
    # the optimum is a-y (0.057) + b-x (0.070).
    a, b, x, y = (255, 0, 0), (255, 150, 0), (255, 40, 0), (255, 90, 0)
    rects0 = [((40, 40, 60, 60), a), ((140, 40, 160, 60), b)]
    rects1 = [((90, 40, 110, 60), x), ((30, 50, 50, 70), y)]
    assert cosine_distance(a, x) < cosine_distance(a, y) < cosine_distance(b, x)
    assert pipeline(tmp_path).handle(payload(rects0, rects1)) == [1, 0]


def test_every_box_of_the_next_frame_is_used_once(tmp_path):
    reid = pipeline(tmp_path)
    body = payload([((20, 20, 40, 40), (255, 30, 0)), ((45, 20, 65, 40), RED), ((70, 20, 90, 40), (255, 0, 30))],
                   [((45, 20, 65, 40), RED)])
    assert reid.handle(body) == [-1, 0, -1]  # all three fit; one box continues one track: the closest


def test_shapes_other_than_rectangles_are_left_unmatched(tmp_path):
    reid = pipeline(tmp_path)
    rect = (20, 20, 50, 60)
    body = payload([(rect, RED), (rect, RED)], [(rect, RED), (rect, RED)],
                   boxes0=[shape([20, 20, 50, 20, 35, 60], shape_type="polygon"), shape(rect)],
                   boxes1=[shape([35, 40], shape_type="points"), shape(rect)])
    assert reid.handle(body) == [-1, 1]


def test_boxes_are_clamped_to_the_frame_and_boxes_outside_it_stay_unmatched(tmp_path):
    reid = pipeline(tmp_path)
    # half of the box lies left of the picture: its visible part is still pure red
    body = payload([((0, 20, 20, 40), RED)], [((0, 20, 20, 40), RED)],
                   boxes0=[shape([-20, 20, 20, 40]), shape([300, 300, 340, 340])],
                   boxes1=[shape([-10, 20, 20, 40]), shape([300, 300, 340, 340])])
    assert reid.handle(body) == [0, -1]


def test_empty_box_lists(tmp_path):
    reid = pipeline(tmp_path)
    body = payload([((0, 0, 20, 20), RED)], [((0, 0, 20, 20), RED)])
    assert reid.handle({**body, "boxes0": []}) == []
    assert reid.handle({**body, "boxes1": []}) == [-1]


def test_bodies_come_as_a_dict_json_text_or_json_bytes(tmp_path):
    reid = pipeline(tmp_path)
    body = payload([((20, 20, 50, 60), RED)], [((22, 20, 52, 60), RED)], threshold=0.5, max_distance=50)
    assert reid.handle(body) == reid.handle(json.dumps(body)) == reid.handle(json.dumps(body).encode()) == [0]


# -- bad requests -----------------------------------------------------------------------

GOOD = {"image0": "aGVsbG8=", "image1": "aGVsbG8=", "boxes0": [shape([0, 0, 5, 5])], "boxes1": []}


@pytest.mark.parametrize("change, message", [
    ({"image0": None}, "missing 'image0' (base64-encoded picture)"),
    ({"image1": ""}, "missing 'image1' (base64-encoded picture)"),
    ({"image0": 7}, "'image0' must be a base64 string, not int"),
    ({"boxes0": None}, "missing 'boxes0' (a list of CVAT rectangle shapes)"),
    ({"boxes1": {"points": [0, 0, 1, 1]}}, "'boxes1' must be a list of CVAT shapes, not dict"),
    ({"boxes0": [[0, 0, 5, 5]]}, "boxes0[0] must be a CVAT shape object, not list"),
    ({"boxes0": [shape([0, 0, 5])]}, "boxes0[0].points must be [xtl, ytl, xbr, ybr] (4 numbers), got [0, 0, 5]"),
    ({"boxes0": [shape([0, 0, "x", 5])]}, 'boxes0[0].points[2] must be a number, got "x"'),
    ({"boxes0": [shape([0, 0, 5, 5], label_id="car")]}, 'boxes0[0].label_id must be an integer, got "car"'),
    ({"threshold": -0.1}, "threshold must be 0 or more, got -0.1"),
    ({"threshold": True}, "threshold must be a number, got true"),
    ({"max_distance": "far"}, 'max_distance must be a number, got "far"'),
    ({"max_distance": -5}, "max_distance must be 0 or more, got -5"),
])
def test_bad_payloads_say_what_is_wrong(change, message):
    with pytest.raises(BadRequest) as caught:
        parse_reid_request({**GOOD, **change})
    assert str(caught.value) == message


def test_a_body_that_is_not_a_json_object_is_a_bad_request(tmp_path):
    reid = pipeline(tmp_path)
    for body, message in ((b"", "empty request body"), ("[1, 2]", "must be a JSON object, not list"),
                          (b"{oops", "request body is not valid JSON")):
        with pytest.raises(BadRequest, match=message.replace("[", r"\[")):
            reid.handle(body)


def test_a_picture_that_does_not_decode_is_an_invalid_image(tmp_path):
    reid = pipeline(tmp_path)
    body = payload([((0, 0, 20, 20), RED)], [((0, 0, 20, 20), RED)])
    with pytest.raises(InvalidImage, match="^image1: the data is not an image in a known format"):
        reid.handle({**body, "image1": "bm90IGFuIGltYWdl"})  # "not an image"


# -- model.json -------------------------------------------------------------------------------

def test_output_name_picks_the_embedding_among_several_outputs(tmp_path):
    body = payload([((20, 20, 50, 60), RED), ((60, 20, 90, 60), BLUE)],
                   [((60, 20, 90, 60), BLUE), ((20, 20, 50, 60), RED)])
    two = mean_colour_model(decoy_first=True)
    assert pipeline(tmp_path, two, name="colour").output.name == "colour"
    assert pipeline(tmp_path, two, name=1).output.name == "colour"
    assert pipeline(tmp_path, two).output.name == "decoy"  # default: the first output
    assert pipeline(tmp_path, two, name="colour").handle(body) == [1, 0]
    with pytest.raises(ModelConfigError, match=r"\$.output.name: the model has no output 'features' "
                                               r"\(outputs: decoy, colour\)"):
        pipeline(tmp_path, two, name="features")
    with pytest.raises(ModelConfigError, match=r"\$.output.name: \[1\] is not of type \"string\", \"integer\""):  # the schema, at the edge
        pipeline(tmp_path, two, name=[1])


@pytest.mark.parametrize("batch, keepdims", [(1, False), ("N", True), (3, False)])
def test_fixed_batches_and_4d_embeddings_give_the_same_matches(tmp_path, batch, keepdims):
    reid = pipeline(tmp_path, mean_colour_model(batch, keepdims=keepdims))
    assert reid.static_batch == (batch if isinstance(batch, int) else None)
    rects0 = [((10 + 30 * i, 20, 35 + 30 * i, 60), c) for i, c in enumerate((RED, GREEN, BLUE, YELLOW, ORANGE))]
    rects1 = [(r, c) for r, c in reversed(rects0)]
    assert reid.handle(payload(rects0, rects1, threshold=0.01)) == [4, 3, 2, 1, 0]


def test_a_reid_model_needs_an_input_size(tmp_path):
    data = reid_json()
    data["input"] = {"preprocessing": {"resize": {"mode": "none"}}}
    (tmp_path / "model.onnx").write_bytes(mean_colour_model())
    manifest = parse_manifest(data)
    with pytest.raises(ModelConfigError, match="a reid model embeds crops at one size"):
        ReidPipeline(manifest, open_model_runtime(manifest, {"model.onnx": tmp_path / "model.onnx"}))


def test_the_demo_model_json_is_valid_for_type_reid():
    from tools.demo import DEMO_MODELS

    manifest = parse_manifest(json.loads((DEMO_MODELS / "mobilenet-reid" / "model.json").read_text()))
    assert (manifest.type, manifest.output.decoder, manifest.raw["output"]["name"]) == ("reid", None, "features")


# -- the assignment --------------------------------------------------------------------------

def _best_by_brute_force(cost, allowed):
    n, m = cost.shape
    best = (0, 0.0)
    for k in range(min(n, m), 0, -1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                if all(allowed[r, c] for r, c in zip(rows, cols)):
                    total = sum(cost[r, c] for r, c in zip(rows, cols))
                    if best[0] < k or total < best[1]:
                        best = (k, total)
        if best[0]:
            return best
    return best


def test_the_assignment_is_the_exact_optimum():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n, m = (int(v) for v in rng.integers(1, 6, 2))
        cost = rng.random((n, m)) * 2
        allowed = rng.random((n, m)) < 0.6
        pairs = min_cost_assignment(cost, allowed)
        assert len({r for r, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)
        assert all(allowed[r, c] for r, c in pairs)
        count, total = _best_by_brute_force(cost, allowed)
        assert len(pairs) == count
        assert sum(cost[r, c] for r, c in pairs) == pytest.approx(total, abs=1e-9)


def test_the_assignment_handles_hundreds_of_boxes():
    rng = np.random.default_rng(3)
    n = 300
    truth = rng.permutation(n)
    cost = rng.random((n, n)) * 0.5 + 0.5
    cost[np.arange(n), truth] = rng.random(n) * 0.1
    pairs = min_cost_assignment(cost, np.ones((n, n), bool))
    assert pairs == [(i, int(truth[i])) for i in range(n)]


def test_candidates_need_the_same_label_both_rectangles_and_near_centres():
    boxes0 = [Box(0, 1, 0, 0, 10, 10, True), Box(1, 2, 0, 0, 10, 10, True), Box(2, 1, 0, 0, 10, 10, False)]
    boxes1 = [Box(0, 1, 30, 40, 40, 50, True), Box(1, 2, 0, 0, 10, 10, True), Box(2, None, 0, 0, 10, 10, True)]
    assert candidates(boxes0, boxes1, 50).tolist() == [[True, False, False], [False, True, False],
                                                       [False, False, False]]
    assert candidates(boxes0, boxes1, 49.99).tolist()[0] == [False, False, False]


# -- the real backbone ------------------------------------------------------------------------

ASTRONAUT_BOXES = {"face": (170, 60, 280, 190), "flag": (0, 0, 95, 290), "rocket": (355, 0, 470, 280),
                   "helmet": (280, 345, 510, 512)}
SHIFT = (24, 16)  # the next frame: the picture cropped by this much on the left and top


@pytest.fixture(scope="module")
def mobilenet_reid():
    from tools.demo import DEMO_MODELS
    from tools.models.reid_features import build_reid_features

    manifest = parse_manifest(json.loads((DEMO_MODELS / "mobilenet-reid" / "model.json").read_text()))
    reid = ReidPipeline(manifest, open_model_runtime(manifest, {manifest.file_name: build_reid_features().onnx}))
    reid.warm_up()
    return reid


def astronaut_frames():
    frame0 = Image.open(asset_path("astronaut.png")).convert("RGB")
    frame1 = frame0.crop((SHIFT[0], SHIFT[1], frame0.width, frame0.height))
    out = []
    for frame in (frame0, frame1):
        buf = io.BytesIO()
        frame.save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def test_the_real_backbone_matches_the_astronauts_face_and_flag_on_a_shifted_frame(mobilenet_reid):
    image0, image1 = astronaut_frames()
    names = list(ASTRONAUT_BOXES)
    order1 = ["helmet", "flag", "face", "rocket"]
    # the next frame's boxes: shifted, and drawn a few pixels differently, as an annotator would
    boxes1 = [shape([x1 - SHIFT[0] + 5, y1 - SHIFT[1] - 4, x2 - SHIFT[0] + 3, y2 - SHIFT[1] + 6], frame=1)
              for x1, y1, x2, y2 in (ASTRONAUT_BOXES[n] for n in order1)]
    body = {"image0": image0, "image1": image1, "boxes0": [shape(ASTRONAUT_BOXES[n]) for n in names],
            "boxes1": boxes1, "threshold": 0.3, "max_distance": 1000}  # far enough that only looks decide
    assert mobilenet_reid.handle(body) == [order1.index(n) for n in names]  # [2, 1, 3, 0]

    request = parse_reid_request(body)
    d = mobilenet_reid.distances(decode_image(image0), request.boxes0, decode_image(image1), request.boxes1)
    same = [d[i, order1.index(n)] for i, n in enumerate(names)]
    others = [d[i, j] for i, n in enumerate(names) for j, m in enumerate(order1) if n != m]
    assert max(same) < 0.1 < 0.3 < 0.4 < min(others)

    # Without its partner on the next frame, the face stays unmatched rather than take another box.
    alone = {**body, "boxes1": [b for b, n in zip(boxes1, order1) if n != "face"]}
    assert mobilenet_reid.handle(alone) == [-1, 1, 2, 0]


def test_the_demo_scene_goes_through_the_handler_and_is_drawn(tmp_path):
    from tests.conftest import write_model
    from tools import demo_reid
    from tools.demo import DEMO_MODELS, RUNNER_DIR
    from tools.models.reid_features import FILE_NAME, build_reid_features
    from tools.nuclio_harness import Worker

    data = json.loads((DEMO_MODELS / "mobilenet-reid" / "model.json").read_text())
    write_model(tmp_path / "registry", "mobilenet-reid", data, {FILE_NAME: build_reid_features().onnx.read_bytes()})
    worker = Worker(RUNNER_DIR, env={"MODEL_REGISTRY": f"local:{tmp_path / 'registry'}", "MODEL_NAME": "mobilenet-reid",
                                     "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_CACHE_SIZE": "64MiB"})
    rows, failures = demo_reid.run(worker, "mobilenet-reid", tmp_path / "images", tmp_path)
    assert failures == 0 and [r[:4] for r in rows] == [("mobilenet-reid", "astronaut pair", 4,
                                                        "matched 4 of 4 (reid)")]
    result = json.loads((tmp_path / "astronaut.json").read_text())
    assert result == {"answer": [3, 1, 4, 0], "pairs": {"face": "face", "flag": "flag", "rocket": "rocket",
                                                         "helmet": "helmet"}}  # the patch has no partner
    assert Image.open(tmp_path / "astronaut.png").size == (512 + demo_reid.GAP + 512 - 24, 512)
