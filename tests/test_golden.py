"""Golden answers of the real demo models on real images, through the runner's handler.

The expected shapes were recorded from this runner and checked by eye on the
pictures `make demo` draws (.demo/output/<model>/<image>.png): the face box
sits on the astronaut's and Grace Hopper's faces, each text line of page.png
has its own quad, the layout model marks the page title. Coordinates must stay
within 1 px, labels exactly.
"""

from __future__ import annotations

import base64
import subprocess
import sys

import numpy as np
import pytest

from tools.assets import asset_path
from tools.demo import KIND_DEMOS, IMAGES
from tools.nuclio_harness import http_event

GOLDEN = {
    ("blazeface-face-detector", "astronaut.png"): [("face", [179.1, 81.3, 271.7, 173.9])],
    ("blazeface-face-detector", "grace_hopper.jpg"): [("face", [167.8, 146.2, 364.4, 342.5])],
    ("blazeface-face-detector", "coffee.png"): [],
    ("blazeface-face-detector", "page.png"): [],
    ("cdla-layout-detector", "page.png"): [("title", [11.1, 12.9, 291.4, 33.9]),
                                           ("title", [1.1, 48.9, 380.9, 137.5])],
    ("cdla-layout-detector", "astronaut.png"): [("figure", [0, 0, 512, 512])],
    ("ppocr-text-detector", "page.png"): [
        ("text", [3.0, 8.3, 295.9, 9.2, 295.8, 36.4, 2.9, 35.6]),
        ("text", [3.3, 113.6, 174.2, 119.7, 173.4, 139.9, 2.6, 133.8]),
        ("text", [1.9, 44.9, 379.8, 45.8, 379.7, 67.3, 1.8, 66.3]),
        ("text", [36.9, 167.2, 242.9, 175.3, 242.3, 191.0, 36.2, 184.9]),
        ("text", [1.1, 79.3, 380.6, 81.0, 380.5, 105.1, 1.0, 103.4]),
        ("text", [0.6, 61.7, 380.6, 62.5, 380.6, 86.9, 0.6, 86.0]),
        ("text", [0.7, 94.8, 381.5, 97.0, 381.3, 123.8, 0.5, 121.7]),
    ],
    # The name tag and the ribbon bar on Grace Hopper's uniform.
    ("ppocr-text-detector", "grace_hopper.jpg"): [
        ("text", [359.7, 510.9, 411.1, 510.9, 411.1, 527.2, 359.7, 527.2]),
        ("text", [108.2, 491.1, 163.3, 496.0, 161.9, 511.0, 106.8, 506.1]),
        ("text", [359.7, 496.6, 428.2, 497.5, 428.0, 516.2, 359.5, 515.4]),
        ("text", [0.0, 0.0, 181.1, 0.0, 168.1, 423.8, 0.0, 417.8]),
    ],
}


def ask(worker, image: str, **payload):
    event = http_event({"image": base64.b64encode(asset_path(image).read_bytes()).decode(), **payload})
    result = worker.invoke(event)
    assert (result.status, result.content_type) == (200, "application/json")
    return result.json()


@pytest.mark.parametrize("model, image", sorted(GOLDEN))
def test_golden(demo_worker, model, image):
    shapes = ask(demo_worker(model), image)
    expected = GOLDEN[(model, image)]
    assert [s["label"] for s in shapes] == [label for label, _ in expected]
    for shape, (_, points) in zip(shapes, expected):
        assert shape["type"] == ("polygon" if len(points) > 4 else "rectangle")
        assert set(shape) == {"label", "type", "points", "confidence"}
        assert all(type(v) is float for v in shape["points"])
        assert 0.0 <= float(shape["confidence"]) <= 1.0
        np.testing.assert_allclose(shape["points"], points, atol=1.0)


def test_onnx_through_openvino_gives_the_onnx_runtime_answer(demo_worker):
    for image in ("page.png", "astronaut.png", "coffee.png"):
        ort = ask(demo_worker("cdla-layout-detector"), image)
        ov = ask(demo_worker("cdla-layout-detector-openvino"), image)
        assert [s["label"] for s in ov] == [s["label"] for s in ort]
        np.testing.assert_allclose([s["points"] for s in ov], [s["points"] for s in ort], atol=0.5)
        np.testing.assert_allclose([float(s["confidence"]) for s in ov], [float(s["confidence"]) for s in ort],
                                   atol=1e-3)


def test_threshold_from_the_request_overrides_model_json(demo_worker):
    worker = demo_worker("ppocr-text-detector")
    assert len(ask(worker, "page.png", threshold=0.75)) == 2  # only the two strongest lines
    assert len(ask(worker, "page.png", threshold="0.75")) == 2
    assert len(ask(worker, "page.png")) == 7  # model.json's score_threshold 0.5


def test_make_demo_writes_json_and_pictures(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tools.demo", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    assert ["blazeface-face-detector", "astronaut.png", "1", "face"] in [row[:4] for row in rows]
    # Image names in full, however long.
    assert ["selfie-person-interactor", "astronaut.png", "click-minus-helmet", "1"] in [row[:4] for row in rows]
    outputs = sorted(p.relative_to(tmp_path / "output").as_posix() for p in (tmp_path / "output").rglob("*.*"))
    kinds = [o for o in outputs if o.split("/")[0] in KIND_DEMOS]  # interactor: 3 prompts; tracker: 1 sequence
    assert len(kinds) == 2 * (3 + 1)
    assert len(outputs) - len(kinds) == 2 * sum(len(images) for images in IMAGES.values())  # a JSON and a PNG each
    assert "ppocr-text-detector/page.png" in outputs and "ppocr-text-detector/page.json" in outputs
