"""The runner end to end on tiny synthetic ONNX models whose answers are exact.

Each test lays out a registry folder, starts a runner worker on it through
real nuclio-sdk objects (tools/nuclio_harness.py) and checks the HTTP answer
CVAT would get.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from common.errors import ModelConfigError
from common.manifest import parse_manifest
from common.pipeline import DetectorPipeline
from common.runtimes import load_runtime
from tests import synthetic_models as sm
from tests.conftest import write_model
from tools.demo import RUNNER_DIR
from tools.nuclio_harness import Worker, http_event

PAD = 114


def detector_manifest(name, *, decoder=None, labels=("thing", "other"), hw=(64, 64), **input_extra):
    return {
        "name": name, "version": "1.0.0", "framework": "onnx", "type": "detector", "file_name": "model.onnx",
        "labels": list(labels),
        "input": {"shape": [1, 3, *hw], "preprocessing": {"normalize": True, "resize": {"pad_value": PAD}},
                  **input_extra},
        "output": {"decoder": decoder or {"name": "yolo"}, "score_threshold": 0.5},
    }


def start(tmp_path, name, manifest, onnx_bytes, **env):
    root = tmp_path / "registry"
    write_model(root, name, manifest, {"model.onnx": onnx_bytes})
    return Worker(RUNNER_DIR, env={"MODEL_REGISTRY": f"local:{root}", "MODEL_NAME": name,
                                   "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_CACHE_SIZE": "64MiB", **env})


def png_b64(image: Image.Image, fmt="PNG") -> str:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return base64.b64encode(out.getvalue()).decode()


def white(w, h) -> str:
    return png_b64(Image.new("RGB", (w, h), (255, 255, 255)))


# -- letterbox: the content rectangle maps back to exactly the whole image ------

@pytest.mark.parametrize("size", [(3775, 1571), (1571, 3775), (641, 479)])
@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_content_box_round_trip_is_exact(tmp_path, size, mode):
    manifest = detector_manifest("content", labels=("thing",), hw=(640, 480))
    manifest["input"]["preprocessing"]["resize"]["mode"] = mode
    worker = start(tmp_path, "content", manifest, sm.content_box_detector(640, 480, PAD / 255.0))
    pipeline = worker.context.user_data.model.pipeline
    image = np.full((size[1], size[0], 3), 255, np.uint8)
    tensor, transform = pipeline.preprocess(image)
    outputs = pipeline.runtime.run({pipeline.input.name: tensor})
    detections = pipeline.decode(outputs, (640, 480), 0.5)
    # Before clamping: the inverse undoes exactly the scale and pads used forward.
    np.testing.assert_allclose(transform.boxes_to_image(detections.boxes), [[0, 0, size[0], size[1]]], atol=1e-3)
    result = worker.invoke(http_event({"image": white(*size)}))
    assert result.status == 200 and result.content_type == "application/json"
    [shape] = result.json()
    assert shape["label"] == "thing" and shape["type"] == "rectangle"
    np.testing.assert_allclose(shape["points"], [0, 0, size[0], size[1]], atol=1e-3)


@pytest.mark.parametrize("batch", [1, "batch"])
def test_fixed_and_symbolic_batch(tmp_path, batch):
    manifest = detector_manifest("content", labels=("thing",))
    manifest["input"]["shape"] = [batch if batch == 1 else None, 3, 64, 64]
    worker = start(tmp_path, "content", manifest, sm.content_box_detector(64, 64, PAD / 255.0, batch=batch))
    assert worker.context.user_data.model.pipeline.input.shape[0] == (1 if batch == 1 else None)
    [shape] = worker.invoke(http_event({"image": white(100, 50)})).json()
    np.testing.assert_allclose(shape["points"], [0, 0, 100, 50], atol=1e-3)


# -- NMS inside the graph, padded rows ------------------------------------------

ROWS = np.array([[[8, 8, 24, 40, 0.9, 1], [30, 10, 60, 20, 0.4, 0],
                  [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]], np.float32)


def test_nms_in_graph_rows_and_padding(tmp_path):
    decoder = {"name": "yolo", "nms_in_graph": True, "rows": "xyxy_score_class"}
    worker = start(tmp_path, "e2e", detector_manifest("e2e", decoder=decoder, hw=(64, 64)),
                   sm.fixed_rows_detector(ROWS, (64, 64)))
    # 128x64 image letterboxed into 64x64: scale 0.5, pad_y 16.
    body = worker.invoke(http_event({"image": white(128, 64)})).json()
    assert body == [{"label": "other", "type": "rectangle", "points": [16.0, 0.0, 48.0, 48.0],
                     "confidence": "0.9000"}]
    low = worker.invoke(http_event({"image": white(128, 64), "threshold": 0.3})).json()
    assert [s["label"] for s in low] == ["other", "thing"]
    assert low[1]["points"] == [60.0, 0.0, 120.0, 8.0]  # y clamped at the top, nothing below 0


def test_yolov7_style_nms_rows(tmp_path):
    rows = np.array([[0, 8, 8, 24, 40, 1, 0.9], [0, 30, 10, 60, 20, 0, 0.8], [0, 0, 0, 0, 0, -1, 0]], np.float32)
    decoder = {"name": "yolo", "nms_in_graph": True, "rows": "batch_xyxy_class_score"}
    worker = start(tmp_path, "v7", detector_manifest("v7", decoder=decoder), sm.nms_rows_detector(rows, (64, 64)))
    body = worker.invoke(http_event({"image": white(64, 64)})).json()
    assert [(s["label"], s["points"]) for s in body] == [("other", [8.0, 8.0, 24.0, 40.0]),
                                                         ("thing", [30.0, 10.0, 60.0, 20.0])]


# -- colour order ---------------------------------------------------------------

@pytest.mark.parametrize("order, expected", [("RGB", (1.0, 0.0)), ("BGR", (0.0, 1.0))])
def test_red_and_blue_channel_order(tmp_path, order, expected):
    # The probe is no detector, so it is wired by hand rather than by a worker.
    manifest = parse_manifest(detector_manifest("probe", color_order=order))
    path = tmp_path / "probe.onnx"
    sm.channel_probe(64, 64, path=path)
    pipeline = DetectorPipeline(manifest, load_runtime("onnxruntime", path))
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 255
    tensor, _ = pipeline.preprocess(red)
    out = pipeline.runtime.run({pipeline.input.name: tensor})
    assert (float(out["mean0"][0]), float(out["mean2"][0])) == pytest.approx(expected, abs=1e-6)


def test_a_decoder_that_does_not_fit_the_model_fails_at_start(tmp_path):
    # Warm-up runs one inference at start: a wrong model.json is a start error, not 500s later.
    with pytest.raises(ModelConfigError, match=r"\$\.output\.decoder\.layout: yolo output of shape \[1\]"):
        start(tmp_path, "probe", detector_manifest("probe"), sm.channel_probe(64, 64))


# -- requests -------------------------------------------------------------------

@pytest.fixture
def rows_worker(tmp_path):
    decoder = {"name": "yolo", "nms_in_graph": True, "rows": "xyxy_score_class"}
    return start(tmp_path, "e2e", detector_manifest("e2e", decoder=decoder), sm.fixed_rows_detector(ROWS, (64, 64)))


@pytest.mark.parametrize("threshold, count", [(None, 1), (0.3, 2), ("0.3", 2), (" 0.95 ", 0), (0, 2), (1, 0),
                                              ("", 1)])
def test_threshold_forms(rows_worker, threshold, count):
    payload = {"image": white(64, 64)}
    if threshold is not None:
        payload["threshold"] = threshold
    result = rows_worker.invoke(http_event(payload))
    assert result.status == 200
    assert len(result.json()) == count


def test_nothing_found_answers_an_empty_json_array(rows_worker):
    result = rows_worker.invoke(http_event({"image": white(64, 64), "threshold": 0.99}))
    assert (result.status, result.content_type, result.body) == (200, "application/json", b"[]")


BAD = [
    (http_event({"threshold": 0.5}), "missing 'image'"),
    (http_event({"image": ""}), "missing 'image'"),
    (http_event({"image": 5}), "'image' must be a base64 string"),
    (http_event({"image": "aGVsbG8gd29ybGQ="}), "not an image in a known format"),  # base64 of "hello world": not a picture
    (http_event({"image": "%%%not base64%%%"}), "not valid base64"),
    (http_event({"image": "x", "threshold": 1.5}), "threshold must be in [0, 1]"),
    (http_event({"image": "x", "threshold": -0.1}), "threshold must be in [0, 1]"),
    (http_event({"image": "x", "threshold": "high"}), "threshold must be a number"),
    (http_event({"image": "x", "threshold": True}), "threshold must be a number"),
    (http_event({"image": "x", "threshold": "nan"}), "threshold must be in [0, 1]"),
    (http_event(raw=b"{not json", content_type="application/json"), "not valid JSON"),
    (http_event(raw=b"", content_type="application/json"), "empty request body"),
    (http_event([1, 2]), "must be a JSON object"),
    (http_event({"image": "x", "threshold": 10 ** 400}), "threshold must be a number"),
    (http_event({"image": "x", "threshold": "\u0661"}), "threshold must be a number"),  # Arabic-Indic one
    (http_event({"image": "x", "threshold": "9" * 5000}), "threshold must be in [0, 1], got \"999"),
    (http_event(raw="[" * 100000 + "]" * 100000, content_type="application/json"), "nested too deeply"),
    (http_event(raw="[" * 100000 + "]" * 100000, content_type="text/plain"), "nested too deeply"),
]


@pytest.mark.parametrize("event, message", BAD, ids=range(len(BAD)))
def test_bad_requests_answer_400_json_and_the_worker_keeps_serving(rows_worker, event, message):
    result = rows_worker.invoke(event)
    assert (result.status, result.content_type) == (400, "application/json")
    error = result.json()["error"]
    assert isinstance(error, str) and message in error and len(error) < 300
    good = rows_worker.invoke(http_event({"image": white(64, 64)}))
    assert good.status == 200 and len(good.json()) == 1


def test_json_body_sent_as_text_plain_is_accepted(rows_worker):
    # Nuclio parses the body only for an exact application/json content type.
    raw = json.dumps({"image": white(64, 64)})
    for content_type in ("text/plain", "application/json; charset=utf-8"):
        result = rows_worker.invoke(http_event(raw=raw, content_type=content_type))
        assert result.status == 200 and len(result.json()) == 1


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16"])
def test_every_image_mode_reaches_the_model(tmp_path, mode):
    worker = start(tmp_path, "content", detector_manifest("content", labels=("thing",)),
                   sm.content_box_detector(64, 64, PAD / 255.0))
    image = Image.new("RGB", (90, 30), (255, 255, 255)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    [shape] = worker.invoke(http_event({"image": png_b64(image, fmt)})).json()
    np.testing.assert_allclose(shape["points"], [0, 0, 90, 30], atol=1e-3)


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_a_large_jpeg_decoded_at_reduced_scale_maps_back_to_full_size(tmp_path, mode):
    manifest = detector_manifest("content", labels=("thing",), hw=(640, 480))
    manifest["input"]["preprocessing"]["resize"]["mode"] = mode
    worker = start(tmp_path, "content", manifest, sm.content_box_detector(640, 480, PAD / 255.0))
    [shape] = worker.invoke(http_event({"image": png_b64(Image.new("RGB", (3775, 1571), (255, 255, 255)),
                                                                  "JPEG")})).json()
    # 1/2 DCT scale (1888x786): the edges come back to the full picture within a pixel.
    np.testing.assert_allclose(shape["points"], [0, 0, 3775, 1571], atol=1.0)


def test_reduced_jpeg_coordinates_use_the_exact_dct_factor(tmp_path):
    # 1001 px wide at 1/8 is 126 px; pixel 119 starts at source column 952, not 945.4 (1001/126).
    from common.pipeline import _reduction

    assert _reduction(1001, 126) == 8.0 and _reduction(1920, 960) == 2.0 and _reduction(600, 128) == 600 / 128
    manifest = detector_manifest("content", labels=("thing",), hw=(64, 64))
    worker = start(tmp_path, "content", manifest, sm.content_box_detector(64, 64, PAD / 255.0))
    [shape] = worker.invoke(http_event({"image": png_b64(Image.new("RGB", (1001, 1001), (255, 255, 255)),
                                                                  "JPEG")})).json()
    np.testing.assert_allclose(shape["points"], [0, 0, 1001, 1001], atol=1.0)
