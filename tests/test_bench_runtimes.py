"""The per-runtime benchmark (tools/bench_runtimes.py): its variants and the JSON it writes.

No timing is checked here (timings belong in ``make bench``): the variants must be
valid model.json files covering every engine, and a short run must produce the
figures' structure and the real answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.manifest import parse_manifest
from tools.bench_runtimes import BY_NAME, CANNOT, VARIANTS, run, variant_manifest
from tools.demo import demo_manifest

FORMAT_FIELDS = {"name", "framework", "file_name", "extra_files", "runtime", "input"}


def test_every_engine_has_a_variant_and_each_family_one_network():
    manifests = [parse_manifest(variant_manifest(v)) for v in VARIANTS]
    # (runtime, file kind): a .tflite file runs on the TFLite engine of the tensorflow runtime
    assert {(m.runtime.name, Path(m.file_name).suffix) for m in manifests} == {
        ("onnxruntime", ".onnx"), ("openvino", ".xml"), ("openvino", ".onnx"), ("torch", ".pt"),
        ("tensorflow", ".pb"), ("tensorflow", ".tflite")}
    assert {v.family: v.base for v in VARIANTS} == {"MobileNetV2": "mobilenet-v2-classifier",
                                                     "SSDLite": "ssdlite-person-detector",
                                                     "BlazeFace": "blazeface-face-detector-tflite"}
    assert {(f, r) for f, r, _ in CANNOT} >= {("MobileNetV2", "tensorflow (SavedModel / frozen .pb)")}


def test_variants_differ_from_their_demo_model_in_format_fields_only():
    for variant in VARIANTS:
        manifest, base = variant_manifest(variant), demo_manifest(variant.base)
        changed = {k for k in manifest.keys() | base.keys() if manifest.get(k) != base.get(k)}
        assert changed <= FORMAT_FIELDS, (variant.name, changed)
        assert manifest["name"] == variant.name
        if "input" in changed:  # the ONNX export's input name, nothing else
            assert {k for k in base["input"] if manifest["input"][k] != base["input"][k]} == {"name"}
            assert manifest["input"]["name"] == "input"
    assert len(parse_manifest(variant_manifest(BY_NAME["mobilenet-v2-openvino-ir"])).labels) == 1000


def test_a_short_run_writes_the_figures(tmp_path):
    names = ("mobilenet-v2-onnxruntime", "blazeface-tflite")
    report = run(tmp_path, repeat=2, loads=1, names=names)
    assert json.loads((tmp_path / "runtimes.json").read_text()) == report
    assert (report["repeat"], report["loads"]) == (2, 1)
    assert list(report["variants"]) == list(names)
    keys = {"family", "runtime", "image", "device", "handler_ms", "bare_ms", "ratio", "overhead_ms", "load_ms",
            "load_files_ms", "load_runtime_ms", "load_warm_up_ms", "answer"}
    for figures in report["variants"].values():
        assert set(figures) == keys
        assert figures["device"] == "CPU"
        assert figures["ratio"] == figures["handler_ms"] / figures["bare_ms"]
        assert all(figures[k] > 0 for k in keys if k.endswith("_ms"))
    mobilenet, blazeface = report["variants"].values()
    assert (mobilenet["family"], mobilenet["image"]) == ("MobileNetV2", "chelsea.png")
    assert mobilenet["answer"] == ["Egyptian cat 0.726", "tiger cat 0.164", "tabby 0.094"]
    assert blazeface["answer"] == ["face 0.921"]
    assert [item["family"] for item in report["not_measured"]] == [f for f, _, _ in CANNOT]
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == sorted(names)
