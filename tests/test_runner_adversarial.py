"""The runner against bad input: every kind's requests, and bad model files at start.

Real handler, real demo models (tests/conftest.py ``demo_worker``). The promise
under attack: a bad request answers 4xx JSON ``{"error": ...}`` naming what is
wrong and the worker keeps serving (never a 500, never a traceback); a good but
odd request answers exactly CVAT's form (cvat-contract.md §2.3, §2.4); a bad
model file gets its own error at validation (``cvat-registry validate``) and at
start, and no code from it ever runs.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.manifest import Label
from common.publish.kinds import label_spec
from common.registry import cli
from common.reid import MAX_BATCH
from common.runner import RunnerSettings, load_model
from tests.conftest import write_model
from tests.cvat_answer import check_answer
from tests.test_conformance_detector import worker_for
from tests.test_conformance_kinds import check_interactor_answer, check_tracker_answer
from tools.assets import asset_path
from tools.demo import DEMO_MODELS
from tools.nuclio_harness import http_event

INTERACTOR = "selfie-person-interactor"
TRACKER = "face-aware-box-tracker"
REID = "mobilenet-reid"
TEXTURE = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)


def png(rgb: np.ndarray, **options) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", **options)
    return base64.b64encode(buf.getvalue()).decode()


def jpeg(rgb: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def frame(x: int = 10, y: int = 20) -> np.ndarray:
    out = np.full((120, 160, 3), 90, np.uint8)
    out[y:y + 30, x:x + 40] = TEXTURE
    return out


def post(worker, body, status=200):
    """The HTTP answer as CVAT gets it; the body goes as text (Python's json, NaN and all)."""
    result = worker.invoke(http_event(raw=json.dumps(body)))
    assert (result.status, result.content_type) == (status, "application/json"), result.body[:400]
    return json.loads(result.body, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in the answer"))


ASTRONAUT = png(np.asarray(Image.open(asset_path("astronaut.png")).convert("RGB")))

# -- interactor ------------------------------------------------------------------------------------

PROMPT = {"image": png(frame()), "pos_points": [[30, 35]], "neg_points": [], "obj_bbox": []}
BAD_PROMPTS = [
    ({"pos_points": [30, 35]}, "not a flat list"),
    ({"pos_points": [["30", 35]]}, 'pos_points[0][0] must be a number, got "30"'),
    ({"pos_points": [[math.nan, 35]]}, "pos_points[0][0] must be a number, got NaN"),
    ({"neg_points": [[math.inf, 35]]}, "neg_points[0][0] must be a number, got Infinity"),
    ({"pos_points": [[10 ** 400, 35]]}, "pos_points[0][0] must be a number, got 1000000"),  # was a 500
    ({"pos_points": [[1e300, 35]]}, "positive point [1e+300, 35] lies outside the 160x120 image"),
    ({"pos_points": [[-1, 35]]}, "positive point [-1, 35] lies outside the 160x120 image"),
    ({"pos_points": [[30, 35, 1]]}, "pos_points[0] must be one [x, y] pair"),
    ({"obj_bbox": [[20, 20], [20, 60]]}, "'obj_bbox' [20, 20, 20, 60] has no area inside the 160x120 image"),
    ({"obj_bbox": [[500, 500], [600, 600]]}, "has no area inside the 160x120 image"),
    ({"obj_bbox": [[1, 1], [2, 2], [3, 3]]}, "'obj_bbox' must be [[x1, y1], [x2, y2]], [] or null"),
    ({"obj_bbox": {"x1": 1, "y1": 1}}, "'obj_bbox' must be [[x1, y1], [x2, y2]], [] or null"),
    ({"obj_bbox": [[0, 0], [10 ** 400, 10]]}, "obj_bbox must be a number"),  # was a 500
    ({"threshold": 1.5}, "threshold must be in [0, 1], got 1.5"),
    ({"threshold": -0.1}, "threshold must be in [0, 1], got -0.1"),
    ({"image": None}, "missing 'image'"),
    ({"image": "!!! not base64 !!!"}, "the image is not valid base64"),
]


@pytest.mark.parametrize("change, message", BAD_PROMPTS)
def test_interactor_bad_prompts_answer_400_and_the_worker_keeps_serving(demo_worker, change, message):
    worker = demo_worker(INTERACTOR)
    assert message in post(worker, {**PROMPT, **change}, 400)["error"]
    check_interactor_answer(post(worker, PROMPT), (160, 120))


def grey16_png(height: int, width: int) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.arange(height * width).reshape(height, width) * 7 % 65536).astype(np.uint16)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_interactor_odd_but_valid_prompts_answer_the_shapes_form(demo_worker):
    worker = demo_worker(INTERACTOR)
    # a box given x2 < x1 is the same box; 10000 clicks (every pixel of a 100x100 block) on the astronaut
    flipped = {**PROMPT, "image": ASTRONAUT, "pos_points": [], "obj_bbox": [[400, 511], [100, 20]]}
    [shape] = check_interactor_answer(post(worker, flipped), (512, 512))["shapes"]
    assert shape["points"][-4:] == [100, 20, 399, 510]
    many = {**PROMPT, "image": ASTRONAUT, "pos_points": [[x, y] for y in range(150, 250) for x in range(180, 280)]}
    assert len(many["pos_points"]) == 10000
    [shape] = check_interactor_answer(post(worker, many), (512, 512))["shapes"]
    x1, y1, x2, y2 = shape["points"][-4:]
    assert x1 <= 180 and y1 <= 150 and x2 >= 279 and y2 >= 249  # every clicked pixel is in the mask's box
    # a 1x1 picture, a 16-bit grey PNG, a grey JPEG: the model runs, nothing found, the empty form
    one = {**PROMPT, "image": png(np.zeros((1, 1, 3), np.uint8)), "pos_points": [[1, 1]]}
    assert post(worker, one) == {"shapes": []}
    assert post(worker, {**one, "pos_points": [], "obj_bbox": [[0, 0], [1, 1]]}) == {"shapes": []}
    assert post(worker, {**PROMPT, "image": grey16_png(120, 160)}) == {"shapes": []}
    assert post(worker, {**PROMPT, "image": jpeg(np.full((120, 160), 90, np.uint8))}) == {"shapes": []}


# -- tracker ---------------------------------------------------------------------------------------

RECT = {"type": "rectangle", "points": [10, 20, 50, 50]}
POLY = {"type": "polygon", "points": [10, 20, 50, 20, 30, 50]}


@pytest.fixture(scope="module")
def started(demo_worker):
    """One state of each form: typed rectangle, typed polygon, legacy (bare points)."""
    worker = demo_worker(TRACKER)
    image = png(frame())
    init = {"image": image, "shapes": [RECT, POLY, [10, 20, 50, 50]], "states": []}
    answer = check_tracker_answer(post(worker, init), init, ("rectangle", "polygon"))
    return dict(zip(("rect", "poly", "legacy"), answer["states"]))


def big_template() -> str:
    return png(np.tile(TEXTURE, (10, 8, 1))[:300, :300])  # compresses small: passes the length check


TAMPERED = [
    ({"format": 2}, "states[0] is not a state of this tracker (format 2, expected 1)"),
    ({"model": "other-tracker@1.0.0"}, 'states[0] is not a state of this tracker (made by "other-tracker@1.0.0"'),
    ({"template": "A" * 40000}, "the tracker state's template is 40000 characters long; this tracker stores at most"),
    ({"template": jpeg(TEXTURE)}, "the tracker state's template is not a PNG picture of this tracker"),
    ({"template": "big"}, "it is 300x300, this tracker stores at most 64 pixels a side"),
    ({"box": [math.nan, 20, 50, 50]}, "states[0] is not a valid tracker state (ValueError: numbers must be finite"),
    ({"box": [-1e308, 20, 1e308, 50]}, "numbers must be finite and within ±1e+09"),  # was a 500
    ({"box": [50, 50, 10, 20]}, "states[0] holds an empty box [50.0, 50.0, 10.0, 20.0]"),
    ({"score": math.nan}, "states[0] is not a valid tracker state"),
    ({"anchor": [1e308, 0, -1e308, 1]}, "numbers must be finite and within ±1e+09"),
    ({"outline": []}, "states[0] holds an outline of 0 values, not a rectangle's"),  # was an empty shape
    ({"outline": [0, 0, 1]}, "states[0] holds an outline of 3 values, not a rectangle's"),  # was a 500
    ({"type": "points"}, 'states[0] tracks a "points"; this tracker tracks rectangle, polygon'),  # was answered
    ({"misses": "many"}, "states[0] is not a valid tracker state (ValueError"),
    ({"box": None}, "states[0] is not a valid tracker state"),
]


@pytest.mark.parametrize("change, message", TAMPERED)
def test_tampered_states_answer_400_and_the_worker_keeps_serving(demo_worker, started, change, message):
    worker = demo_worker(TRACKER)
    if change.get("template") == "big":
        change = {"template": big_template()}
    state = {**started["rect"], **change}
    assert message in post(worker, {"image": png(frame()), "shapes": [None], "states": [state]}, 400)["error"]
    missing = {k: v for k, v in started["rect"].items() if k != "velocity"}
    assert "KeyError: 'velocity'" in post(worker, {"image": png(frame()), "shapes": [None], "states": [missing]},
                                          400)["error"]
    follow = {"image": png(frame(12, 22)), "shapes": [None], "states": [started["rect"]]}
    assert check_tracker_answer(post(worker, follow), follow, ("rectangle",))["shapes"] == [
        {"type": "rectangle", "points": [12.0, 22.0, 52.0, 52.0]}]


def test_extra_state_keys_are_ignored_and_not_answered(demo_worker, started):
    follow = {"image": png(frame(12, 22)), "shapes": [None], "states": [{**started["rect"], "hello": "x"}]}
    answer = check_tracker_answer(post(demo_worker(TRACKER), follow), follow, ("rectangle",))
    assert "hello" not in answer["states"][0] and answer["shapes"][0]["points"] == [12.0, 22.0, 52.0, 52.0]


def test_a_state_pushed_off_the_picture_keeps_its_box(demo_worker, started):
    """A search window outside the picture was an OpenCV error (500): now the target is lost there."""
    worker = demo_worker(TRACKER)
    for change, box in (({"box": [5000, 5000, 5040, 5030]}, [5000.0, 5000.0, 5040.0, 5030.0]),
                        ({"velocity": [1e6, -1e6]}, [10.0, 20.0, 50.0, 50.0])):
        follow = {"image": png(frame()), "shapes": [None], "states": [{**started["rect"], **change}]}
        answer = check_tracker_answer(post(worker, follow), follow, ("rectangle",))
        assert answer["shapes"] == [{"type": "rectangle", "points": box}]
        assert answer["states"][0]["misses"] == 1 and answer["states"][0]["velocity"] == [0.0, 0.0]


BAD_TRACKER_CALLS = [
    ({"shapes": [None, None]}, "'shapes' has 2 entries and 'states' 1: one state per shape"),
    ({"shapes": [{"type": "ellipse", "points": [1, 2, 3, 4]}], "states": []},
     'This function does not support shapes of type "ellipse"'),
    ({"shapes": [{"type": "rectangle", "points": [1, 2, 3, 4, 5]}], "states": []},
     "shapes[0]: points expected 4 numbers"),
    ({"shapes": [{"type": "polygon", "points": [1, 2, 3, 4, 5, 6, 7]}], "states": []},
     "shapes[0]: a polygon needs at least 3 [x, y] points, got 7 values"),
    ({"shapes": [{"type": "rectangle", "points": [10, 20, 10 ** 400, 50]}], "states": []},
     "shapes[0]: points numbers must be finite and within ±1e+09"),  # was a 500
    ({"shapes": [{"type": "polygon", "points": [10, 20, 1.7e308, 20, 30, 50]}], "states": []},
     "shapes[0]: points numbers must be finite and within ±1e+09"),  # was answered, near overflow
    ({"shapes": [{"type": "polygon", "points": [12, 22, 52, 22, 30, 52]}]},
     "shapes[0] is a polygon, but states[0] tracks a rectangle"),  # was answered as a rectangle
    ({"shapes": {"a": 1}}, "'shapes' must be a list"),
    ({"states": "x"}, "'states' must be a list"),
]


@pytest.mark.parametrize("change, message", BAD_TRACKER_CALLS)
def test_bad_tracker_calls_answer_400(demo_worker, started, change, message):
    body = {"image": png(frame()), "shapes": [None], "states": [started["rect"]], **change}
    assert message in post(demo_worker(TRACKER), body, 400)["error"]


def test_a_legacy_track_continued_in_the_typed_form_answers_typed(demo_worker, started):
    worker = demo_worker(TRACKER)
    shape = {"type": "rectangle", "points": [12, 22, 52, 52]}
    follow = {"image": png(frame(12, 22)), "shapes": [shape], "states": [started["legacy"]]}
    answer = check_tracker_answer(post(worker, follow), follow, ("rectangle",))  # was bare points
    assert answer["shapes"] == [{"type": "rectangle", "points": [12.0, 22.0, 52.0, 52.0]}]
    assert answer["states"][0]["legacy"] is False
    bare = {"image": png(frame(12, 22)), "shapes": [[12, 22, 52, 52]], "states": [started["poly"]]}
    assert "shapes[0] is a rectangle, but states[0] tracks a polygon" in post(worker, bare, 400)["error"]


def test_a_thousand_shapes_at_once(demo_worker):
    worker = demo_worker(TRACKER)
    picture = png(np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    shapes = [{"type": "rectangle", "points": [i % 600, i // 600 * 300, i % 600 + 40, i // 600 * 300 + 40]}
              for i in range(1000)]
    init = {"image": picture, "shapes": shapes, "states": []}
    answer = check_tracker_answer(post(worker, init), init, ("rectangle",))
    follow = {"image": picture, "shapes": [None] * 1000, "states": answer["states"]}
    answer = check_tracker_answer(post(worker, follow), follow, ("rectangle",))
    # the same picture: every shape stays where it was (within the scale search's half pixel)
    np.testing.assert_allclose([s["points"] for s in answer["shapes"]], [s["points"] for s in shapes], atol=0.5)


# -- reid ------------------------------------------------------------------------------------------

def rect(points, label_id=1):
    return {"type": "rectangle", "points": points, "label_id": label_id}


FACE = rect([170, 80, 270, 180])
REID_CALL = {"image0": ASTRONAUT, "image1": ASTRONAUT, "boxes0": [FACE], "boxes1": [rect([172, 82, 272, 182])]}
BAD_REID = [
    ({"boxes0": [rect([1, 2, 3])]}, "boxes0[0].points must be [xtl, ytl, xbr, ybr] (4 numbers), got [1, 2, 3]"),
    ({"boxes1": [rect([1, 2, 3, 4, 5])]}, "boxes1[0].points must be [xtl, ytl, xbr, ybr] (4 numbers)"),
    ({"boxes0": [rect([170, 80, 270, 180], "1")]}, 'boxes0[0].label_id must be an integer, got "1"'),
    ({"max_distance": -1}, "max_distance must be 0 or more, got -1"),
    ({"max_distance": math.nan}, "max_distance must be a finite number, got NaN"),
    ({"threshold": 10 ** 400}, "threshold must be a number"),
    ({"boxes0": [rect([10 ** 400, 1, 2, 3])]}, "boxes0[0].points[0] must be a number"),
    ({"image1": "garbage!!"}, "image1: the image is not valid base64"),
    ({"boxes1": None}, "missing 'boxes1'"),
]


@pytest.mark.parametrize("change, message", BAD_REID)
def test_bad_reid_calls_answer_400_and_the_worker_keeps_serving(demo_worker, change, message):
    worker = demo_worker(REID)
    assert message in post(worker, {**REID_CALL, **change}, 400)["error"]
    assert post(worker, REID_CALL) == [0]


@pytest.mark.parametrize("change, answer", [
    ({"boxes0": [rect([10, 10, 10, 10])], "boxes1": [rect([10, 10, 10, 10])]}, [-1]),  # no pixel: unmatched
    ({"boxes0": [rect([1000, 1000, 1100, 1100])], "boxes1": [rect([1001, 1000, 1100, 1100])]}, [-1]),
    ({"boxes0": [{"type": "rectangle", "points": [170, 80, 270, 180]}],
      "boxes1": [{"type": "rectangle", "points": [172, 82, 272, 182]}]}, [0]),  # no label_id on either side
    ({"boxes0": [rect([-10, -10, 1990, 1990])], "boxes1": [rect([0, 0, 2000, 2000])]}, [0]),  # clamped
    ({"boxes0": [rect([1.7e308, 1, 1.7e308, 3])], "boxes1": [rect([1.7e308, 1, 1.7e308, 3])]}, [-1]),
    ({"threshold": 1e308}, [0]),
    ({"threshold": "0.5", "max_distance": "50"}, [0]),
])
def test_odd_reid_boxes_answer_a_list_of_ints(demo_worker, change, answer):
    assert post(demo_worker(REID), {**REID_CALL, **change}) == answer


def test_five_hundred_boxes_a_side_are_embedded_in_bounded_batches(demo_worker):
    worker = demo_worker(REID)
    pipeline = worker.context.user_data.model.pipeline
    rng = np.random.default_rng(3)
    boxes0 = [rect([float(x), float(y), float(x + 30), float(y + 40)]) for x, y in rng.integers(0, 470, (500, 2))]
    boxes1 = [rect([v + 2 for v in b["points"]]) for b in boxes0]
    batches = []
    run = pipeline.runtime.run

    def counted(feeds):  # the real runtime, each batch's size noted
        batches.append(next(iter(feeds.values())).shape[0])
        return run(feeds)

    pipeline.runtime.run = counted
    try:
        answer = post(worker, {**REID_CALL, "boxes0": boxes0, "boxes1": boxes1})
    finally:
        pipeline.runtime.run = run
    assert len(answer) == 500 and all(type(v) is int and -1 <= v < 500 for v in answer)
    assert len(set(v for v in answer if v >= 0)) == sum(v >= 0 for v in answer)  # one to one
    assert sum(batches) == 1000 and max(batches) == MAX_BATCH == 16 and len(batches) == 63


# -- detector kinds --------------------------------------------------------------------------------

def spec(worker) -> list[Label]:
    return [Label(s["id"], s["name"], s["type"], sublabels=tuple(Label(u["id"], u["name"], u["type"])
                                                                  for u in s.get("sublabels", ())))
            for s in label_spec(worker.context.user_data.model.record.manifest)]


def grey_png_bomb(width: int, height: int) -> bytes:
    """A real PNG of width x height black grey pixels, compressed to ~0.1% of its pixels."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def kind_workers(demo_worker, tmp_path_factory):
    """The synthetic segmentation / classification / keypoint / boxes models (exact outputs) and
    real demo detectors and classifiers."""
    workers = {}
    for name in ("semantic", "tags", "pose", "boxes"):
        workers[name] = worker_for(tmp_path_factory.mktemp(name), name)[0]
    for name in ("page-orientation-classifier", "ssdlite-person-detector", "ppocr-text-detector",
                 "blazeface-face-detector"):
        workers[name] = demo_worker(name)
    return workers


KINDS = ("semantic", "tags", "pose", "boxes", "page-orientation-classifier", "ssdlite-person-detector",
         "ppocr-text-detector", "blazeface-face-detector")


@pytest.mark.parametrize("name", KINDS)
def test_detector_kinds_on_odd_pictures_and_thresholds(kind_workers, name):
    worker, labels = kind_workers[name], spec(kind_workers[name])
    black = png(np.zeros((300, 400, 3), np.uint8))
    everything = check_answer(post(worker, {"image": black, "threshold": 0}), labels)
    as_text = check_answer(post(worker, {"image": black, "threshold": "0.5"}), labels)
    assert as_text == check_answer(post(worker, {"image": black, "threshold": 0.5}), labels)
    assert len(everything) >= len(as_text)
    for picture in (png(np.full((1, 10000, 3), 200, np.uint8)), jpeg(np.full((10000, 1, 3), 200, np.uint8)),
                    jpeg(np.full((3, 10000, 3), 200, np.uint8))):
        for threshold in (0, None):
            answer = check_answer(post(worker, {"image": picture, "threshold": threshold}), labels)
            assert all(0 <= v <= 10000 for item in answer for v in item.get("points", ()))
    assert "missing 'image'" in post(worker, {"image": ""}, 400)["error"]
    assert "threshold must be in [0, 1], got 2" in post(worker, {"image": black, "threshold": 2}, 400)["error"]
    assert "threshold must be a number in [0, 1], got \"half\"" in post(
        worker, {"image": black, "threshold": "half"}, 400)["error"]


@pytest.mark.parametrize("name", ["ssdlite-person-detector", "blazeface-face-detector",
                                  "page-orientation-classifier"])
def test_an_all_black_picture_is_the_empty_answer_with_200(kind_workers, name):
    assert post(kind_workers[name], {"image": png(np.zeros((300, 400, 3), np.uint8))}) == []


def test_a_pixel_bomb_is_refused_before_decoding(kind_workers, monkeypatch):
    bomb = grey_png_bomb(10000, 10000)
    assert len(bomb) < 200_000  # 10^8 pixels in a few hundred kB
    for name in ("semantic", "ssdlite-person-detector"):
        error = post(kind_workers[name], {"image": base64.b64encode(bomb).decode()}, 400)["error"]
        assert error == ("the image is too large: 10000x10000 = 100000000 pixels, more than the limit of 67108864 "
                         "pixels (RUNNER_MAX_IMAGE_PIXELS)")
    monkeypatch.setenv("RUNNER_MAX_IMAGE_PIXELS", "1000000")
    small_bomb = base64.b64encode(grey_png_bomb(2000, 1000)).decode()
    assert post(kind_workers["boxes"], {"image": small_bomb}, 400)["error"] == (
        "the image is too large: 2000x1000 = 2000000 pixels, more than the limit of 1000000 pixels "
        "(RUNNER_MAX_IMAGE_PIXELS)")
    monkeypatch.delenv("RUNNER_MAX_IMAGE_PIXELS")
    assert check_answer(post(kind_workers["boxes"], {"image": small_bomb}), spec(kind_workers["boxes"]))


# -- bad model files: at validation (cvat-registry validate) and at start -----------------------------

class _Payload:
    """An object whose unpickling would write ``marker``: proof that nothing unpickles it."""

    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _torch_bytes(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _classifier_json(name: str, file_name: str, framework: str = "pytorch", **extra) -> dict:
    data = {"name": name, "version": "1.0.0", "framework": framework, "type": "classification",
            "file_name": file_name, "labels": ["a", "b"], "input": {"shape": [1, 3, 8, 8]},
            "output": {"decoder": {"name": "classifier"}}}
    data.update(extra)
    return data


def _demo_json(folder: str, name: str, **extra) -> dict:
    return {**json.loads((DEMO_MODELS / folder / "model.json").read_text()), "name": name, **extra}


def bad_models(root: Path, marker: Path) -> dict[str, tuple[dict, dict[str, bytes], str]]:
    """folder -> (model.json, files, the error both validation and the runner give)."""
    import torch
    from torch import nn

    payload = _Payload()
    payload.marker = str(marker)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    script = io.BytesIO()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 3, 8, 8)), script)
    program = root / "program.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 8, 8),)), str(program))
    evil_program = io.BytesIO()
    with zipfile.ZipFile(program) as src, zipfile.ZipFile(evil_program, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, _torch_bytes(payload) if item.filename.endswith("sample_inputs/model.pt") else data)
    tflite = asset_path("face_detection_short_range.tflite").read_bytes()
    ir_xml = asset_path("face_detection.xml").read_text()
    assert '<net name="torch_jit" version="11">' in ir_xml or 'version="11"' in ir_xml
    from tests.test_runtime_torch import _identity_onnx

    onnx_new = _identity_onnx(root / "new.onnx", 30).read_bytes()
    onnx_ok = _identity_onnx(root / "ok.onnx", 17).read_bytes()
    ts = script.getvalue()
    no_resize = {"preprocessing": {"resize": {"width": 8, "height": 8}}}
    return {
        "state-dict": (_classifier_json("state-dict", "model.pt"), {"model.pt": _torch_bytes(nn.Linear(2, 2).state_dict())},
                       "model.pt: the file is a PyTorch state_dict: weights only"),
        "evil-pickle": (_classifier_json("evil-pickle", "model.pt"), {"model.pt": _torch_bytes(payload)},
                        "model.pt: the file is a pickled Python object that names builtins.exec; unpickling it "
                        "would run code from the file, so the runner never does"),
        "truncated-pt": (_classifier_json("truncated-pt", "model.pt"), {"model.pt": ts[: len(ts) // 2]},
                         f"model.pt: the file is truncated or damaged: it starts as a zip archive (TorchScript / "
                         f"torch.save) but has no end-of-archive directory ({len(ts) // 2} bytes)"),
        "evil-pt2": (_classifier_json("evil-pt2", "model.pt2", input=no_resize), {"model.pt2": evil_program.getvalue()},
                     "model.pt2: the torch.export program holds a pickle (program/data/sample_inputs/model.pt) that "
                     "names builtins.exec, not tensors only"),
        "truncated-tflite": (_demo_json("blazeface-face-detector-tflite", "truncated-tflite"),
                             {"face_detection_short_range.tflite": tflite[: len(tflite) // 2]},
                             "face_detection_short_range.tflite: the TensorFlow Lite model is damaged or truncated "
                             "(an offset at byte"),
        "new-opset": (_classifier_json("new-opset", "model.onnx", "onnx", input={"shape": [1, 3, 4, 4]}),
                      {"model.onnx": onnx_new}, "model.onnx: the model uses ONNX opset 30 (domain ai.onnx), but this "
                                                "runner's onnxruntime 1.32.0 runs opsets up to 28"),
        "shape-contradiction": (_classifier_json("shape-contradiction", "model.onnx", "onnx"), {"model.onnx": onnx_ok},
                                "model.onnx: model.json input.shape [1, 3, 8, 8] contradicts the model's input 'x' "
                                "[1, 3, 4, 4] (dimension 2, 3)"),
        "ir-v12": (_demo_json("blazeface-face-detector", "ir-v12"),
                   {"face_detection.xml": ir_xml.replace('version="11"', 'version="12"', 1).encode(),
                    "face_detection.bin": asset_path("face_detection.bin").read_bytes()},
                   "face_detection.xml: the file is OpenVINO IR version 12, but openvino"),
    }


@pytest.fixture(scope="module")
def bad_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-models")
    marker = root / "ran.txt"
    models = bad_models(root, marker)
    for folder, (manifest, files, _) in models.items():
        write_model(root / "registry", folder, manifest, files)
    return root / "registry", models, marker


def start_model(registry: Path, name: str, cache: Path):
    settings = RunnerSettings.from_env({"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": name,
                                        "MODEL_CACHE_DIR": str(cache), "MODEL_CACHE_SIZE": "1GiB",
                                        "MODEL_REFRESH_SECONDS": "0"})
    return load_model(settings)


BAD_FILES = ("state-dict", "evil-pickle", "truncated-pt", "evil-pt2", "truncated-tflite", "new-opset",
             "shape-contradiction", "ir-v12")


@pytest.mark.parametrize("folder", BAD_FILES)
def test_bad_model_files_get_their_error_at_validation_and_at_start(bad_registry, tmp_path, capsys, folder):
    registry, models, marker = bad_registry
    message = models[folder][2]
    assert cli.main(["validate", str(registry / folder)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"cvat-registry: error: {registry / folder}: not a valid model folder"
    assert err[1].startswith(f"  {registry / folder}/") and message.split(": ", 1)[1] in err[1]
    from common.errors import RuntimeLoadError

    with pytest.raises(RuntimeLoadError) as info:
        start_model(registry, folder, tmp_path / "cache")
    assert str(info.value).startswith(message)
    assert not marker.exists()


def _tf_models(root: Path) -> dict[str, tuple[dict, Path, str]]:
    """SavedModels and a Keras file made by the pinned TensorFlow: folder -> (model.json, files folder, error)."""
    from common.runtimes.tensorflow_engine import import_tensorflow
    from tests.test_runtime_tensorflow import _tiny_module

    tf = import_tensorflow()
    import keras

    def x_input(**more):
        return {"name": "x", "shape": [None, 2], "preprocessing": {"resize": {"mode": "none"}}, **more}

    made = {}
    for folder, signatures in (("no-variables", ("serving_default",)), ("two-signatures", ("detect", "classify"))):
        files = root / folder
        module = _tiny_module(tf, with_variable=True)
        tf.saved_model.save(module, str(files / "saved_model"),
                            signatures={s: module.detect if s != "classify" else module.classify for s in signatures})
        manifest = _classifier_json(folder, "saved_model/saved_model.pb", "tensorflow", input=x_input())
        made[folder] = (manifest, files, "")
    shutil.rmtree(root / "no-variables" / "saved_model" / "variables")
    made["no-variables"] = (made["no-variables"][0], root / "no-variables",
                            "the SavedModel loads its variables from a variables/ folder, which is missing")
    made["two-signatures"] = ({**made["two-signatures"][0], "extra_files": ["saved_model/variables"]},
                              root / "two-signatures",
                              "the SavedModel has 2 signatures ('classify', 'detect') and model.json names none: "
                              "set runtime.signature to one of them")
    inp = keras.Input((2,), name="x")
    model = keras.Model(inp, keras.layers.Dense(1)(keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)))
    (root / "keras-lambda").mkdir()
    model.save(root / "keras-lambda" / "lambda.keras")
    made["keras-lambda"] = (_classifier_json("keras-lambda", "lambda.keras", "keras", input=x_input()),
                            root / "keras-lambda", "Lambda layer")
    return made


def test_bad_tensorflow_files_get_their_error_at_validation_and_at_start(tmp_path, capsys):
    from common.errors import RuntimeLoadError

    registry = tmp_path / "registry"
    for folder, (manifest, files, message) in _tf_models(tmp_path / "made").items():
        shutil.copytree(files, registry / folder)
        (registry / folder / "model.json").write_text(json.dumps(manifest))
        assert cli.main(["validate", str(registry / folder)]) == 1, folder
        err = capsys.readouterr().err.splitlines()
        assert err[0] == f"cvat-registry: error: {registry / folder}: not a valid model folder"
        assert message in err[1], err
        with pytest.raises(RuntimeLoadError) as info:
            start_model(registry, folder, tmp_path / "cache")
        assert message in str(info.value) or (folder == "keras-lambda" and "refused in Keras safe mode" in str(
            info.value)), str(info.value)


MANIFEST_REFUSALS = [
    ("pb-as-onnx", {"framework": "onnx", "file_name": "model.pb"}, "model.pb", '"model.pb" is a tensorflow file name (.pb), not a onnx model'),
    ("tensorrt", {"framework": "tensorrt", "file_name": "model.engine"}, "model.engine",
     'framework "tensorrt" is not supported here'),
]


@pytest.mark.parametrize("folder, change, file_name, message", MANIFEST_REFUSALS)
def test_model_json_refusals_at_validation_and_at_start(tmp_path, capsys, folder, change, file_name, message):
    registry = tmp_path / "registry"
    write_model(registry, folder, _classifier_json(folder, **change), {file_name: b"\x0a\x02" + b"\x00" * 64})
    assert cli.main(["validate", str(registry / folder)]) == 1
    assert message in capsys.readouterr().err
    with pytest.raises(Exception) as info:
        start_model(registry, folder, tmp_path / "cache")
    assert message in str(info.value)


def test_an_ir_without_its_bin(tmp_path, capsys):
    registry = tmp_path / "registry"
    write_model(registry, "ir-no-bin", _demo_json("blazeface-face-detector", "ir-no-bin"),
                {"face_detection.xml": asset_path("face_detection.xml").read_bytes()})
    assert cli.main(["validate", str(registry / "ir-no-bin")]) == 1
    assert f"{registry}/ir-no-bin/face_detection.bin: not found (named by model.json)" in capsys.readouterr().err
    with pytest.raises(Exception) as info:
        start_model(registry, "ir-no-bin", tmp_path / "cache")
    assert "face_detection.bin" in str(info.value)


def test_a_load_failure_in_real_worker_processes_surfaces_clearly(bad_registry, tmp_path):
    """init_context raising ends the worker before it serves (the real processor then restarts the
    container): the failure names the bad file, and its code never ran."""
    from tests.nuclio_emu import FunctionServer, ProcessorFailed
    from tools.stage import stage

    registry, models, marker = bad_registry
    runner = stage("gdrive-runner", tmp_path / "staged")
    env = {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": "evil-pickle", "MODEL_CACHE_DIR": str(tmp_path / "c"),
           "MODEL_CACHE_SIZE": "1GiB"}
    server = FunctionServer(runner, env=env, num_workers=1)
    with pytest.raises(ProcessorFailed) as info:
        server.start()
    assert "exited unexpectedly with code 1 before init_context completed" in str(info.value)
    [line] = [line for line in server.logs if line.message == "Exception raised while running init_context"]
    assert models["evil-pickle"][2] in line.with_["exc"]
    assert [w.returncode for w in server.workers()] == [1]
    assert not marker.exists()
