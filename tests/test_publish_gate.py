"""The validation gate (common/publish/gate.py): one test per rule, and the cross-check
that what the gate accepts the dashboard deploys and CVAT's list parser lists."""

from __future__ import annotations

import copy
import io
import json
import logging
import shutil
import sys

import pytest

from common.cache import ModelCache
from common.errors import PackError
from common.publish import CONFIG_HASH_ANNOTATION
from common.publish.config import FunctionConfig
from common.publish.gate import (PublishRefused, SampleResult, SmokeResult, check_files, check_function,
                                 smoke_test)
from common.publish.render import PublishSettings, render
from common.registry import RemoteFile
from common.registry.local import LocalRegistry
from tests import synthetic_models as sm
from tests.conftest import model_json, write_model
from tests.nuclio_dashboard import CVAT_HEADERS, DashboardStandIn, call, cvat_list
from tools.assets import asset_path

SKELETON = {"id": 0, "name": "person", "type": "skeleton", "svg": "<circle r='1'/>",
            "sublabels": [{"name": "nose"}, {"name": "eye"}]}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A rendered detector with one attribute, to break one rule at a time."""
    root = tmp_path_factory.mktemp("gate") / "registry"
    labels = [{"id": 0, "name": "car", "attributes": [{"name": "parked", "input_type": "checkbox",
                                                       "values": ["true", "false"]}]}, {"id": 1, "name": "person"}]
    write_model(root, "cars", model_json("cars", labels=labels), {"model.onnx": b"w"})
    return render(LocalRegistry(root).resolve("cars"), PublishSettings.from_env({}))


def refusal(base: FunctionConfig, mutate, *, name: str | None = None) -> str:
    body = copy.deepcopy(dict(base.body))
    mutate(body)
    config = FunctionConfig(name=name or base.name, folder=base.folder, version=base.version, body=body,
                            hash=base.hash)
    with pytest.raises(PublishRefused) as err:
        check_function(config)
    assert isinstance(err.value, PackError) and err.value.reason == str(err.value)
    return err.value.reason


def ann(key, value):
    def mutate(body):
        if value is None:
            body["metadata"]["annotations"].pop(key)
        else:
            body["metadata"]["annotations"][key] = value
    return mutate


def labels(spec):
    return ann("spec", json.dumps(spec))


def spec_set(key, value):
    def mutate(body):
        body["spec"][key] = value
    return mutate


def name(value):
    def mutate(body):
        body["metadata"]["name"] = value
    return mutate


def http(**changes):
    def mutate(body):
        body["spec"]["triggers"]["http"].update(changes)
    return mutate


ATTR = {"name": "a", "input_type": "select", "values": ["x"]}

RULES = {
    "body needs metadata and spec": (lambda b: b.pop("spec"), None,
                                     "the function body needs 'metadata' and 'spec' objects"),
    "name non-empty": (name(""), "", "metadata.name must be a non-empty string"),
    "name is the config's": (name("gdrive-other"), None,
                             "metadata.name 'gdrive-other' is not the config's name 'gdrive-cars'"),
    "name at most 63": (name("a" * 64), "a" * 64, f"function name {'a' * 64!r} is longer than 63 characters"),
    "name matches CVAT's URL pattern": (name("cars/v2"), "cars/v2",
                                        "function name 'cars/v2' does not match CVAT's URL pattern "
                                        "[a-zA-Z0-9_.-]+ (it would be listed but could not be called)"),
    "name is a DNS label": (name("Cars_v2"), "Cars_v2",
                            "function name 'Cars_v2' is not a lowercase DNS-1123 label ([a-z0-9-], "
                            "alphanumeric at both ends)"),
    "name not reserved": (name("dashboard"), "dashboard", "function name 'dashboard' is reserved by Nuclio"),
    "labels are label values": (lambda b: b["metadata"]["labels"].update({"x": "-bad-"}), None,
                                "metadata.labels must map names to label values"),
    "annotations exist": (lambda b: b["metadata"].pop("annotations"), None,
                          "metadata.annotations is missing (CVAT reads it for every function)"),
    "annotations are strings": (ann("version", 1), None, "annotation 'version' is int, not a string "
                                                         "(Nuclio annotations are strings)"),
    "type is a kind": (ann("type", "classifier"), None,
                       "annotation type 'classifier' is not a CVAT function kind (detector, interactor, reid, "
                       "tracker); CVAT would leave the function out of its list"),
    "type present": (ann("type", None), None, "annotation type None is not a CVAT function kind"),
    "spec is JSON": (ann("spec", '[{"name": "car"},]'), None, "annotation spec is not valid JSON (Expecting "
                                                              "value: line 1 column 18 (char 17)); CVAT's whole "
                                                              "model list would fail"),
    "spec is an array": (ann("spec", '{"name": "car"}'), None,
                         "annotation spec must be a JSON array of labels, got dict"),
    "label is an object": (labels(["car"]), None, "spec[0] is not a label object"),
    "label has a name": (labels([{"id": 0, "name": ""}]), None,
                         "spec[0] has no name (CVAT's whole model list would fail)"),
    "label names unique": (labels([{"name": "car"}, {"name": "car"}]), None,
                           "spec[1]: label name 'car' is used twice at this level (CVAT would leave the "
                           "function out)"),
    "label type known": (labels([{"name": "car", "type": "box"}]), None,
                         "spec[0] ('car'): label type 'box' is not a CVAT label type"),
    "attributes are a list": (labels([{"name": "car", "attributes": {}}]), None,
                              "spec[0] ('car'): attributes must be a list"),
    "attribute has a name": (labels([{"name": "car", "attributes": [{**ATTR, "name": ""}]}]), None,
                             "spec[0] ('car'): attribute 0 has no name"),
    "attribute has an input_type": (labels([{"name": "car", "attributes": [{"name": "a", "values": []}]}]), None,
                                    "spec[0] ('car'): attribute 'a' needs input_type, one of number, checkbox, "
                                    "radio, select, text"),
    "attribute values are strings": (labels([{"name": "car", "attributes": [{**ATTR, "values": [1]}]}]), None,
                                     "spec[0] ('car'): attribute 'a' needs values, a list of strings"),
    "attribute names unique": (labels([{"name": "car", "attributes": [ATTR, ATTR]}]), None,
                               "spec[0] ('car'): attribute name 'a' is used twice (CVAT would leave the "
                               "function out)"),
    "skeleton has sublabels": (labels([{**SKELETON, "sublabels": []}]), None,
                               "spec[0] ('person'): a skeleton needs a non-empty sublabels list"),
    "skeleton has svg": (labels([{k: v for k, v in SKELETON.items() if k != "svg"}]), None,
                         "spec[0] ('person'): a skeleton needs its svg"),
    "sublabel names unique": (labels([{**SKELETON, "sublabels": [{"name": "eye"}, {"name": "eye"}]}]), None,
                              "spec[0].sublabels[1]: label name 'eye' is used twice at this level"),
    "version is an integer": (ann("version", "1.0"), None,
                              "annotation version '1.0' is not an integer (CVAT calls int() on it)"),
    "min points are integers": (ann("min_pos_points", "one"), None,
                                "annotation min_pos_points 'one' is not an integer (CVAT calls int() on it)"),
    "no false-looking booleans": (ann("startswith_box", "false"), None,
                                  "annotation startswith_box 'false' would read as true: CVAT takes any "
                                  "non-empty string as true; leave the key out for false"),
    "no zero booleans": (ann("startswith_box_optional", "0"), None,
                         "annotation startswith_box_optional '0' would read as true"),
    "tracker shapes non-empty": (ann("supported_shape_types", " , "), None,
                                 "annotation supported_shape_types is empty; CVAT would leave the tracker out"),
    "tracker shapes known": (ann("supported_shape_types", "rectangle,circle"), None,
                             "annotation supported_shape_types names unknown shape types ['circle']"),
    "description non-empty": (spec_set("description", " "), None,
                              "spec.description is empty: the dashboard drops it and CVAT's whole model list "
                              "fails"),
    "triggers are a map": (spec_set("triggers", []), None, "spec.triggers must map trigger names to triggers"),
    "one http trigger": (lambda b: b["spec"]["triggers"].update({"web": {"kind": "http"}}), None,
                         "spec.triggers must hold exactly one http trigger, found 2"),
    "an http trigger": (spec_set("triggers", {}), None, "spec.triggers must hold exactly one http trigger, "
                                                        "found 0 (without one Nuclio adds a default with a 4 MiB "
                                                        "body limit)"),
    "trigger name is its key": (http(name="web"), None,
                                "http trigger 'http': its name 'web' must equal its key"),
    "body limit at least 64 MiB": (http(attributes={"maxRequestBodySize": 33554432}), None,
                                   "http trigger 'http': attributes.maxRequestBodySize 33554432 is below "
                                   "67108864 (64 MiB): CVAT's base64 frames would be refused"),
    "env is a list": (spec_set("env", {"MODEL_NAME": "cars"}), None,
                      "spec.env must be a list of {name, value} with string values"),
    "env values are strings": (spec_set("env", [{"name": "RUNNER_WORKERS", "value": 2}]), None,
                               "spec.env must be a list of {name, value} with string values"),
    "env names unique": (spec_set("env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]), None,
                         "spec.env sets a variable twice: ['A']"),
    "volumes are a list": (spec_set("volumes", {}), None, "spec.volumes must be a list"),
    "volume names match": (lambda b: b["spec"]["volumes"][0]["volumeMount"].update({"name": "cache"}), None,
                           "spec.volumes[0]: volume name 'model-cache' and volumeMount name 'cache' must be "
                           "set and equal"),
    "volume names unique": (lambda b: b["spec"]["volumes"].append(copy.deepcopy(b["spec"]["volumes"][0])), None,
                            "spec.volumes[1]: volume name 'model-cache' is used twice"),
    "hash matches the body": (ann("name", "Renamed"), None,
                              "annotation cvat-gdrive-pack/config-hash"),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_each_rule_refuses_with_its_reason(base, rule):
    mutate, new_name, reason = RULES[rule]
    assert refusal(base, mutate, name=new_name).startswith(reason)


def test_the_rendered_config_passes(base):
    check_function(base)
    assert base.body["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == base.hash


# ---- files ------------------------------------------------------------------------


def test_check_files(tmp_path):
    root = tmp_path / "registry"
    write_model(root, "ok", model_json("ok", extra_files=["vars"]), {"model.onnx": b"w", "vars/a.bin": b"a"})
    write_model(root, "empty", model_json("empty", extra_files=["more.bin"]), {"model.onnx": b"w", "more.bin": b""})
    reg = LocalRegistry(root)
    check_files(reg.resolve("ok"))
    with pytest.raises(PublishRefused, match=r"^empty: model file more.bin is empty \(0 bytes\)$"):
        check_files(reg.resolve("empty"))
    record = reg.resolve("ok")
    weights = record.files[0]
    no_weights = type(record)(record.folder, record.manifest, record.files[1:])
    with pytest.raises(PublishRefused, match=r"^ok: the weights file model.onnx is missing$"):
        check_files(no_weights)
    no_folder = type(record)(record.folder, record.manifest, (weights,))
    with pytest.raises(PublishRefused, match=r"^ok: extra file vars is missing \(or an empty folder\)$"):
        check_files(no_folder)
    zero = type(record)(record.folder, record.manifest,
                        (RemoteFile("model.onnx", 0, weights.locator, sha256=weights.sha256),) + record.files[1:])
    with pytest.raises(PublishRefused, match=r"model file model.onnx is empty"):
        check_files(zero)


# ---- what the gate accepts, CVAT lists ---------------------------------------------


def extra_kinds(root):
    """Models of the other kinds (no runner serves them yet; they only need to render)."""
    write_model(root, "clicker", model_json("clicker", type="interactor", labels=[], version="2.1.0",
                                            interactor={"min_neg_points": 0, "startswith_box_optional": True,
                                                        "help_message": "Click inside"}), {"model.onnx": b"w"})
    write_model(root, "follow", model_json("follow", type="tracker", labels=[],
                                           tracker={"supported_shape_types": ["rectangle", "polygon"]}),
                {"model.onnx": b"w"})
    write_model(root, "Pose Net", model_json("pose", type="keypoint", labels=[SKELETON]), {"model.onnx": b"w"})
    write_model(root, "seg", model_json("seg", type="segmentation", labels=["road", "sky"]), {"model.onnx": b"w"})
    write_model(root, "cls", model_json("cls", type="classification", labels=["cat", "dog"]), {"model.onnx": b"w"})
    return root


def test_rendered_models_pass_the_gate_deploy_and_are_listed_by_cvat(demo_registry, tmp_path):
    demo = LocalRegistry(demo_registry).list_models()
    more = LocalRegistry(extra_kinds(tmp_path / "more")).list_models()
    assert not demo.errors and not more.errors and len(more.models) == 5
    configs = [render(r, PublishSettings.from_env({})) for r in demo.models + more.models]
    for config in configs:
        check_function(config)
    with DashboardStandIn() as dash:
        assert call(dash.url, "POST", "/api/projects",
                    {"metadata": {"name": "cvat", "namespace": "nuclio"}, "spec": {}})[0] == 201
        for config in configs:
            status, _ = call(dash.url, "POST", "/api/functions", dict(config.body), {"x-nuclio-project-name": "cvat"})
            assert status == 202, config.name
        status, listing = call(dash.url, "GET", "/api/functions", headers=CVAT_HEADERS)
    assert status == 200
    listed = {f["id"]: f for f in cvat_list(listing)}
    assert sorted(listed) == sorted(c.name for c in configs)
    summary = {name: (f["kind"], [(lab["name"], lab["type"]) for lab in f["labels_v2"]])
               for name, f in listed.items()}
    assert summary["gdrive-blazeface-face-detector"] == ("detector", [("face", "rectangle")])
    assert summary["gdrive-ppocr-text-detector"] == ("detector", [("text", "polygon")])
    assert summary["gdrive-cdla-layout-detector"][1][:2] == [("text", "rectangle"), ("title", "rectangle")]
    assert len(summary["gdrive-cdla-layout-detector-openvino"][1]) == 10
    assert summary["gdrive-seg"] == ("detector", [("road", "mask"), ("sky", "mask")])
    assert summary["gdrive-cls"] == ("detector", [("cat", "tag"), ("dog", "tag")])
    pose = next(f for f in listed.values() if f["name"] == "pose")
    assert pose["id"].startswith("gdrive-pose-net-") and pose["kind"] == "detector"
    assert [s["name"] for s in pose["labels_v2"][0]["sublabels"]] == ["nose", "eye"]
    clicker = listed["gdrive-clicker"]
    assert {k: clicker[k] for k in ("kind", "labels_v2", "version", "min_pos_points", "min_neg_points",
                                    "startswith_box", "startswith_box_optional", "help_message")} == {
        "kind": "interactor", "labels_v2": [], "version": 2, "min_pos_points": 1, "min_neg_points": 0,
        "startswith_box": False, "startswith_box_optional": True, "help_message": "Click inside"}
    assert listed["gdrive-follow"]["supported_shape_types"] == ["rectangle", "polygon"]
    assert {f["description"] for f in listed.values()} >= {configs[0].body["spec"]["description"]}


# ---- smoke test on samples/ ---------------------------------------------------------

PAD = 114


def synthetic(labels, **decoder):
    """A model.json for tests/synthetic_models.content_box_detector (one class, [1, 5, 1] output)."""
    return {"name": "content", "version": "1.0.0", "framework": "onnx", "type": "detector",
            "file_name": "model.onnx", "labels": list(labels),
            "input": {"shape": [1, 3, 64, 64], "preprocessing": {"normalize": True, "resize": {"pad_value": PAD}}},
            "output": {"decoder": {"name": "yolo", **decoder}, "score_threshold": 0.5}}


def png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (255, 255, 255)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def cache(tmp_path):
    return ModelCache(tmp_path / "cache", 1 << 30)


def smoke(root, folder, cache):
    reg = LocalRegistry(root)
    record = reg.resolve(folder)
    return smoke_test(record, reg, cache, samples=reg.samples(record))


def test_demo_models_pass_the_smoke_test(demo_registry, tmp_path, cache):
    root = tmp_path / "registry"
    pictures = {"cdla-layout-detector": ["page.png"], "blazeface-face-detector": ["astronaut.png", "coffee.png"],
                "ppocr-text-detector": ["page.png"]}
    for folder, names in pictures.items():
        shutil.copytree(demo_registry / folder, root / folder)
        (root / folder / "samples").mkdir()
        for picture in names:
            shutil.copy(asset_path(picture), root / folder / "samples" / picture)
    assert smoke(root, "cdla-layout-detector", cache) == SmokeResult(
        ran=True, samples=(SampleResult("samples/page.png", 2, ("title",)),), class_count=10)
    assert smoke(root, "blazeface-face-detector", cache) == SmokeResult(
        ran=True, samples=(SampleResult("samples/astronaut.png", 1, ("face",)),
                           SampleResult("samples/coffee.png", 0, ())), class_count=None)  # ssd_anchors: no hook
    assert smoke(root, "ppocr-text-detector", cache) == SmokeResult(
        ran=True, samples=(SampleResult("samples/page.png", 7, ("text",)),), class_count=None)


def test_a_synthetic_model_passes_when_its_labels_match(tmp_path, cache):
    root = tmp_path / "registry"
    write_model(root, "content", synthetic(["thing"], layout="v8"),
                {"model.onnx": sm.content_box_detector(64, 64, PAD / 255.0), "samples/white.png": png(40, 20)})
    assert smoke(root, "content", cache) == SmokeResult(
        ran=True, samples=(SampleResult("samples/white.png", 1, ("thing",)),), class_count=1)


def test_labels_that_do_not_match_the_class_count_are_refused(tmp_path, cache):
    root = tmp_path / "registry"
    write_model(root, "content", synthetic(["thing", "other"], layout="v8"),
                {"model.onnx": sm.content_box_detector(64, 64, PAD / 255.0), "samples/white.png": png(40, 20)})
    with pytest.raises(PublishRefused) as err:
        smoke(root, "content", cache)
    assert err.value.reason == ("content: model.json has 2 labels (ids 0..1) but the model's outputs carry 1 "
                                "classes (yolo decoder; label_id_offset 0): expected 1 labels with ids below 1")


def test_a_sample_that_fails_refuses_the_model(tmp_path, cache):
    root = tmp_path / "registry"
    write_model(root, "content", synthetic(["thing"], layout="v8"),
                {"model.onnx": sm.content_box_detector(64, 64, PAD / 255.0), "samples/a.png": png(8, 8),
                 "samples/b.png": b"not a picture"})
    with pytest.raises(PublishRefused, match=r"^content: sample samples/b.png failed: "):
        smoke(root, "content", cache)


def test_a_model_that_does_not_load_is_refused(tmp_path, cache):
    root = tmp_path / "registry"
    write_model(root, "content", synthetic(["thing"]), {"model.onnx": b"not an onnx graph",
                                                        "samples/a.png": png(8, 8)})
    with pytest.raises(PublishRefused, match=r"^content: the model does not load: "):
        smoke(root, "content", cache)


def test_smoke_tests_are_skipped_with_a_reason(tmp_path, cache, caplog, monkeypatch):
    root = tmp_path / "registry"
    write_model(root, "content", synthetic(["thing"], layout="v8"),
                {"model.onnx": sm.content_box_detector(64, 64, PAD / 255.0)})
    write_model(root, "clicker", model_json("clicker", type="interactor", labels=[]),
                {"model.onnx": b"w", "samples/a.png": png(8, 8)})
    with caplog.at_level(logging.INFO, logger="common.publish.gate"):
        assert smoke(root, "content", cache) == SmokeResult(ran=False, skipped="no sample pictures in samples/")
        assert smoke(root, "clicker", cache) == SmokeResult(
            ran=False, skipped="a CVAT interactor needs more than a picture per call (clicks, shapes or frame pairs)")
    assert ("smoke test of clicker 1.0.0 skipped: a CVAT interactor needs more than a picture per call (clicks, "
            "shapes or frame pairs)") in caplog.messages

    (root / "content" / "samples").mkdir()
    (root / "content" / "samples" / "a.png").write_bytes(png(8, 8))
    # The engine cannot be imported in this process (as in an image without it).
    monkeypatch.setitem(sys.modules, "common.runtimes.onnxruntime_engine", None)
    result = smoke(root, "content", cache)
    assert not result.ran and result.skipped.startswith("runtime 'onnxruntime' is not installed here (")


def outputs(**shapes):
    import numpy as np

    from common.runtimes import TensorInfo

    return [TensorInfo(name, shape, np.dtype("float32")) for name, shape in shapes.items()]


@pytest.mark.parametrize("decoder, runtime_outputs, params, expected", [
    ("yolo", outputs(output0=(1, 84, 8400)), {}, 80),
    ("yolo", outputs(output0=(1, 8400, 84)), {"layout": "v8_transposed"}, 80),
    ("yolo", outputs(output0=(1, 25200, 85)), {"layout": "v5"}, 80),
    ("yolo", outputs(output0=(1, 25200, 85)), {}, None),  # auto cannot tell v5 from v8_transposed
    ("yolo", outputs(output0=(1, None, 8400)), {}, None),
    ("yolo", outputs(output0=(1, 100, 6)), {"nms_in_graph": True}, None),
    ("yolo", outputs(boxes=(1, 4, 10), head=(1, 7, 10)), {"output": "head"}, 3),
    ("ssd", outputs(detection_boxes=(1, 100, 4), detection_scores=(1, 100, 91)), {}, 91),
    ("ssd", outputs(detection_boxes=(1, 100, 4), detection_scores=(1, 100)), {}, 1),
    ("ssd", outputs(detection_boxes=(1, 100, 4), detection_scores=(1, 100), detection_classes=(1, 100)), {}, None),
    ("gfl", outputs(s8=(1, 7600, 10), s16=(1, 1900, 10), b8=(1, 7600, 32), b16=(1, 1900, 32)), {}, 10),
    ("gfl", outputs(s8=(1, 7600, 32), b8=(1, 7600, 32)), {}, 32),
    ("gfl", outputs(s8=(1, 7600, 10), b8=(1, 7600, 64)), {"reg_max": 15}, 10),
    ("gfl", outputs(s8=(1, None, 10), b8=(1, 7600, 32)), {}, None),
    ("db_text", outputs(maps=(1, 1, 960, 960)), {}, None),  # no hook
])
def test_class_count_hooks(decoder, runtime_outputs, params, expected):
    from common import decoders

    assert decoders.class_count(decoder, runtime_outputs, params) == expected
