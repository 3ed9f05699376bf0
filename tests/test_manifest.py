"""model.json: schema, defaults and error reporting (common/manifest.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging

from pathlib import Path

import pytest
from jsonschema import Draft7Validator

from common import decoders
from common.errors import ModelConfigError
from common.manifest import (
    SCHEMA_PATH,
    Attribute,
    Label,
    load_manifest,
    load_schema,
    parse_manifest,
)

# The "Example model.json" of the registry design, verbatim.
DESIGN_EXAMPLE = r"""
{
  "name": "yolov8_coco_detector",
  "display_name": "YOLOv8 COCO Object Detector",
  "version": "1.0.0",
  "framework": "onnx",
  "type": "detector",
  "description": "YOLOv8 model trained on COCO dataset with 80 classes. Optimized for real-time detection with high accuracy.",
  "file_name": "yolov8n.onnx",
  "input": {
    "shape": [1, 3, 640, 640],
    "dtype": "float32",
    "preprocessing": {
      "normalize": true,
      "mean": [0.0, 0.0, 0.0],
      "std": [255.0, 255.0, 255.0],
      "resize": {
        "width": 640,
        "height": 640,
        "keep_aspect_ratio": true
      }
    }
  },
  "output": {
    "shape": [1, 84, 8400],
    "dtype": "float32",
    "format": "xyxy",
    "description": "Boxes (4), confidence (1), class probabilities (80)"
  },
  "labels": [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench"
  ],
  "tags": ["real-time", "coco", "general-purpose", "yolo", "detection"],
  "metrics": {
    "mAP50": 0.678,
    "mAP50-95": 0.456,
    "fps": 142,
    "inference_time_ms": 7.0
  },
  "requirements": {
    "min_memory_mb": 512,
    "gpu_required": false,
    "runtime_dependencies": ["onnxruntime>=1.12.0"]
  },
  "author": {
    "name": "Ultralytics",
    "organization": "Ultralytics LLC"
  },
  "license": "AGPL-3.0",
  "created_at": "2024-01-15T10:30:00Z",
  "updated_at": "2024-01-15T10:30:00Z"
}
"""


@pytest.fixture
def throwaway_decoder():
    name = "test_manifest_throwaway"

    @decoders.register(name, {
        "type": "object",
        "additionalProperties": False,
        "required": ["anchors"],
        "properties": {
            "anchors": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
            "iou_threshold": {"type": "number", "minimum": 0, "maximum": 1},
        },
    })
    def _decode(outputs, ctx, params):  # pragma: no cover - never called
        return decoders.Detections.empty()

    yield name
    decoders._REGISTRY.pop(name, None)


def doc(**overrides):
    """A minimal valid model.json, with top-level keys replaced (None deletes)."""
    data = {
        "name": "m",
        "version": "1.0.0",
        "framework": "onnx",
        "type": "detector",
        "file_name": "model.onnx",
        "input": {"shape": [1, 3, 320, 320]},
    }
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def with_pre(**pre):
    return doc(input={"shape": [1, 3, 320, 320], "preprocessing": pre})


def problems_of(data):
    with pytest.raises(ModelConfigError) as info:
        parse_manifest(data)
    return info.value.problems


# ---- the schema file ---------------------------------------------------------


def test_schema_is_valid_draft7():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_schema_keeps_design_constraints():
    schema = load_schema()
    props = schema["properties"]
    assert schema["required"] == ["name", "version", "framework", "type", "file_name"]
    assert props["version"]["pattern"] == r"^\d+\.\d+\.\d+$"
    assert props["framework"]["enum"] == ["onnx", "pytorch", "tensorflow", "keras", "openvino", "tensorrt", "other"]
    assert props["type"]["enum"] == [
        "detector", "segmentation", "classification", "keypoint", "tracker", "reid", "interactor", "other"]
    assert "additionalProperties" not in schema  # teams may add their own keys


def test_every_schema_property_is_described():
    schema = load_schema()
    undocumented = []

    def walk(node, path):
        if isinstance(node, dict):
            for name, sub in node.get("properties", {}).items():
                if isinstance(sub, dict) and sub.get("not") != {} and "description" not in sub:
                    undocumented.append(f"{path}.{name}")
            for key, sub in node.items():
                if key != "if":  # a condition restates properties, it does not declare them
                    walk(sub, f"{path}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}[{i}]")

    walk(schema, "#")
    assert undocumented == []


def test_design_example_validates_against_schema_alone():
    assert list(Draft7Validator(load_schema()).iter_errors(json.loads(DESIGN_EXAMPLE))) == []


# ---- the design example ------------------------------------------------------


def test_design_example_parses_to_typed_values():
    m = load_manifest(DESIGN_EXAMPLE, source="CVAT_Models/yolov8_coco_detector/model.json")
    assert (m.name, m.version, m.framework, m.type) == ("yolov8_coco_detector", "1.0.0", "onnx", "detector")
    assert m.display_name == "YOLOv8 COCO Object Detector"
    assert m.file_name == "yolov8n.onnx"
    assert m.input.shape == (1, 3, 640, 640)
    assert m.input.dtype == "float32"
    assert m.input.layout == "NCHW"
    assert m.input.color_order == "RGB"
    assert (m.input.resize.mode, m.input.resize.width, m.input.resize.height) == ("letterbox", 640, 640)
    assert m.input.resize.pad_value == 114.0
    assert m.input.scale == 1.0
    assert m.input.mean == (0.0, 0.0, 0.0)
    assert m.input.std == (255.0, 255.0, 255.0)
    assert m.output.decoder.name == "yolo"
    assert dict(m.output.decoder.params) == {}
    assert m.output.score_threshold == 0.5
    assert m.output.shape == (1, 84, 8400)
    assert m.output.format == "xyxy"
    assert (m.runtime.name, m.runtime.precision, m.runtime.device) == ("onnxruntime", "f32", "CPU")
    assert [label.id for label in m.labels] == list(range(14))
    assert m.labels[0] == Label(id=0, name="person", type="any", attributes=())
    assert m.labels[13].name == "bench"
    assert m.label_by_id()[9].name == "traffic light"
    assert m.label_id_offset == 0
    assert m.extra_files == ()
    assert m.raw["metrics"]["mAP50-95"] == 0.456


def test_examples_in_the_docs_parse():
    text = (Path(__file__).resolve().parents[1] / "docs" / "model-json.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```json\n")[1:]]
    documents = [b for b in blocks if '"file_name"' in b]
    assert len(documents) == 3
    parsed = [load_manifest(b) for b in documents]
    assert parsed[2] == load_manifest(DESIGN_EXAMPLE)
    full, small = parsed[0], parsed[1]
    # the small form differs only by the input name and the label object's details
    assert dataclasses.replace(full.input, name=None) == small.input
    assert full.labels[:3] == small.labels[:3] and full.labels[3].name == small.labels[3].name
    assert full.labels[3].attributes[0].name == "has_rider"
    assert full.output.decoder.params["iou_threshold"] == 0.45


# ---- defaults ----------------------------------------------------------------


def test_display_name_and_description_default():
    m = parse_manifest(doc())
    assert m.display_name == "m"
    assert m.description == ""


@pytest.mark.parametrize("inp, layout", [
    ({"shape": [1, 3, 320, 320]}, "NCHW"),
    ({"shape": [1, 1, 320, 320]}, "NCHW"),
    ({"shape": [1, 320, 320, 3]}, "NHWC"),
    ({"shape": [None, None, None, 1], "preprocessing": {"resize": {"mode": "none"}}}, "NHWC"),
    ({"shape": [1, 4, 320, 320]}, "NCHW"),
    ({"shape": [1, 3, 320, 320], "layout": "NHWC", "preprocessing": {"resize": {"width": 320, "height": 3}}},
     "NHWC"),
    ({"preprocessing": {"resize": {"width": 64, "height": 64}}}, "NCHW"),
])
def test_layout_default(inp, layout):
    assert parse_manifest(doc(input=inp)).input.layout == layout


def test_resize_size_from_static_shape_per_layout():
    nchw = parse_manifest(doc(input={"shape": [1, 3, 480, 640]})).input.resize
    assert (nchw.mode, nchw.width, nchw.height) == ("letterbox", 640, 480)
    nhwc = parse_manifest(doc(input={"shape": [1, 480, 640, 3]})).input.resize
    assert (nhwc.width, nhwc.height) == (640, 480)


def test_resize_size_explicit_with_dynamic_shape():
    r = parse_manifest(doc(input={"shape": [1, 3, None, None],
                                  "preprocessing": {"resize": {"width": 512, "height": 384}}})).input.resize
    assert (r.width, r.height) == (512, 384)


@pytest.mark.parametrize("resize, mode", [
    ({}, "letterbox"),
    ({"keep_aspect_ratio": True}, "letterbox"),
    ({"keep_aspect_ratio": False}, "stretch"),
    ({"mode": "stretch"}, "stretch"),
    ({"mode": "letterbox", "keep_aspect_ratio": True}, "letterbox"),
    ({"mode": "none"}, "none"),
])
def test_resize_mode_default(resize, mode):
    assert parse_manifest(with_pre(resize=resize)).input.resize.mode == mode


def test_resize_mode_none_feeds_own_size():
    r = parse_manifest(doc(input={"shape": [1, 3, None, None],
                                  "preprocessing": {"resize": {"mode": "none", "multiple_of": 32,
                                                               "pad_value": 0}}})).input.resize
    assert (r.mode, r.width, r.height, r.multiple_of, r.pad_value) == ("none", None, None, 32, 0.0)


def test_preprocessing_defaults():
    i = parse_manifest(doc()).input
    assert (i.scale, i.mean, i.std) == (1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert (i.name, i.dtype, i.color_order) == (None, "float32", "RGB")
    assert i.resize.pad_value == 114.0 and i.resize.multiple_of == 1


def test_normalize_true_without_mean_std_means_std_255():
    i = parse_manifest(with_pre(normalize=True)).input
    assert (i.mean, i.std) == ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0))


def test_normalize_true_with_given_values_keeps_them():
    i = parse_manifest(with_pre(normalize=True, scale=1 / 255, mean=[0.485, 0.456, 0.406],
                                std=[0.229, 0.224, 0.225])).input
    assert i.scale == pytest.approx(1 / 255)
    assert (i.mean, i.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_normalize_true_with_only_mean_keeps_std_1():
    i = parse_manifest(with_pre(normalize=True, mean=[127.5])).input
    assert (i.mean, i.std) == ((127.5,) * 3, (1.0,) * 3)


def test_normalize_false_ignores_mean_std(caplog):
    with caplog.at_level(logging.WARNING, logger="common.manifest"):
        i = parse_manifest(with_pre(normalize=False, mean=[1, 2, 3], std=[4, 5, 6])).input
    assert (i.mean, i.std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert "normalize is false" in caplog.text


def test_single_mean_std_broadcast_to_three():
    i = parse_manifest(with_pre(mean=[127.5], std=[128], scale=2)).input
    assert (i.scale, i.mean, i.std) == (2.0, (127.5, 127.5, 127.5), (128.0, 128.0, 128.0))
    assert all(isinstance(v, float) for v in i.mean + i.std)


def test_input_fields_explicit():
    i = parse_manifest(doc(input={"name": "images", "shape": [1, 320, 320, 3], "dtype": "uint8",
                                  "color_order": "BGR"})).input
    assert (i.name, i.dtype, i.color_order, i.layout) == ("images", "uint8", "BGR", "NHWC")


@pytest.mark.parametrize("framework, file_name, runtime", [
    ("onnx", "model.onnx", "onnxruntime"),
    ("openvino", "model.xml", "openvino"),
])
def test_runtime_defaults_from_framework(framework, file_name, runtime):
    r = parse_manifest(doc(framework=framework, file_name=file_name)).runtime
    assert (r.name, r.precision, r.device) == (runtime, "f32", "CPU")


def test_onnx_may_run_on_openvino():
    r = parse_manifest(doc(runtime={"name": "openvino", "precision": "bf16", "device": "GPU"})).runtime
    assert (r.name, r.precision, r.device) == ("openvino", "bf16", "GPU")


def test_decoder_defaults_to_yolo_for_detectors():
    out = parse_manifest(doc()).output
    assert out.decoder.name == "yolo"
    assert dict(out.decoder.params) == {}
    assert out.score_threshold == 0.5


def test_decoder_params_are_kept_and_read_only():
    data = doc(output={"decoder": {"name": "yolo", "iou_threshold": 0.6}, "score_threshold": 0.25})
    out = parse_manifest(data).output
    assert out.decoder.name == "yolo"
    assert dict(out.decoder.params) == {"iou_threshold": 0.6}
    assert out.score_threshold == 0.25
    with pytest.raises(TypeError):
        out.decoder.params["iou_threshold"] = 0.1
    data["output"]["decoder"]["iou_threshold"] = 0.9
    assert out.decoder.params["iou_threshold"] == 0.6


@pytest.mark.parametrize("kind", ["segmentation", "classification", "keypoint", "tracker", "reid",
                                  "interactor", "other"])
def test_other_types_are_parsed_without_default_decoder(kind):
    m = parse_manifest(doc(type=kind))
    assert m.type == kind
    assert m.output.decoder is None


def test_plain_labels_take_ids_from_offset():
    m = parse_manifest(doc(labels=["cat", "dog"], label_id_offset=1))
    assert [(label.id, label.name) for label in m.labels] == [(1, "cat"), (2, "dog")]
    assert m.label_id_offset == 1


def test_mixed_labels_number_plain_names_in_order():
    m = parse_manifest(doc(labels=["cat", {"id": 7, "name": "car", "type": "rectangle"}, "dog"]))
    assert [(label.id, label.name, label.type) for label in m.labels] == [
        (0, "cat", "any"), (7, "car", "rectangle"), (1, "dog", "any")]


def test_label_objects_with_attributes():
    m = parse_manifest(doc(labels=[{
        "id": 0, "name": "car",
        "attributes": [
            {"name": "color", "input_type": "select", "values": ["red", "blue"], "default_value": "red"},
            {"name": "doors", "input_type": "number", "values": [2, 5, 1.0]},
            {"name": "parked", "input_type": "checkbox", "values": [False], "default_value": True,
             "mutable": True},
        ],
    }]))
    car = m.labels[0]
    assert car.type == "any"
    assert car.attributes == (
        Attribute("color", "select", ("red", "blue"), "red"),
        Attribute("doors", "number", ("2", "5", "1"), None),
        Attribute("parked", "checkbox", ("false",), "true"),
    )


def test_skeleton_label_keeps_sublabels_and_svg():
    svg = '<line x1="1" y1="2" x2="3" y2="4" data-node-from="1" data-node-to="2"></line>'
    m = parse_manifest(doc(labels=[{
        "id": 0, "name": "person", "type": "skeleton", "svg": svg,
        "sublabels": [{"name": "nose"}, {"name": "eye", "id": 5}],
    }]))
    person = m.labels[0]
    assert person.type == "skeleton" and person.svg == svg
    assert person.sublabels == (Label(0, "nose", "points"), Label(5, "eye", "points"))


def test_openvino_bin_is_added_to_extra_files():
    m = parse_manifest(doc(framework="openvino", file_name="ir/model.xml", extra_files=["labels.txt"]))
    assert m.extra_files == ("labels.txt", "ir/model.bin")


def test_openvino_bin_not_duplicated():
    m = parse_manifest(doc(framework="openvino", file_name="model.xml", extra_files=["model.bin"]))
    assert m.extra_files == ("model.bin",)


def test_extra_files_kept_as_given_for_onnx():
    m = parse_manifest(doc(extra_files=["weights.data", "tokenizer/"]))
    assert m.extra_files == ("weights.data", "tokenizer/")


def test_result_is_immutable_and_raw_is_a_copy():
    data = doc(labels=["cat"], team_key={"anything": [1, 2]})
    m = parse_manifest(data)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.input.resize.width = 1
    assert isinstance(m.labels, tuple) and isinstance(m.input.mean, tuple)
    assert m.raw == data
    with pytest.raises(TypeError):
        m.raw["name"] = "x"
    data["labels"].append("dog")
    assert m.raw["labels"] == ["cat"]


def test_top_level_extra_keys_are_allowed():
    assert parse_manifest(doc(team_owner="vision-team")).raw["team_owner"] == "vision-team"


def test_load_manifest_accepts_bytes_with_bom():
    m = load_manifest(b"\xef\xbb\xbf" + json.dumps(doc()).encode())
    assert m.name == "m"


# ---- errors ------------------------------------------------------------------


def test_bad_layout():
    assert problems_of(doc(input={"shape": [1, 3, 8, 8], "layout": "NCWH"})) == [
        ("$.input.layout", "'NCWH' is not one of ['NCHW', 'NHWC']")]


def test_missing_version():
    assert problems_of(doc(version=None)) == [("$", "'version' is a required property")]


def test_bad_version_pattern():
    assert problems_of(doc(version="1.0")) == [
        ("$.version", "a version must look like MAJOR.MINOR.PATCH, e.g. '1.2.0'")]


def test_bad_model_name():
    assert problems_of(doc(name="my model")) == [
        ("$.name", "a model name may hold only letters, digits, '_' and '-'")]


def test_duplicate_label_names():
    assert problems_of(doc(labels=["cat", "car", "car"])) == [
        ("$.labels[2]", "duplicate label name 'car' (already used by $.labels[1])")]


def test_duplicate_label_ids_across_forms():
    assert problems_of(doc(labels=["cat", "dog", {"id": 1, "name": "car"}])) == [
        ("$.labels[2]", "duplicate label id 1 (already used by $.labels[1])")]


def test_duplicate_attribute_and_sublabel_names():
    assert problems_of(doc(labels=[{
        "id": 0, "name": "p", "type": "skeleton", "svg": "",
        "attributes": [{"name": "a", "input_type": "text", "values": [""]},
                       {"name": "a", "input_type": "text", "values": [""]}],
        "sublabels": [{"name": "x"}, {"name": "x"}],
    }])) == [
        ("$.labels[0].attributes[1]", "duplicate attribute name 'a' (already used by $.labels[0].attributes[0])"),
        ("$.labels[0].sublabels[1]", "duplicate sublabel name 'x' (already used by $.labels[0].sublabels[0])"),
    ]


def test_unknown_decoder_lists_known_ones():
    known = decoders.names()
    assert "yolo" in known
    assert problems_of(doc(output={"decoder": {"name": "yolo9000"}})) == [
        ("$.output.decoder.name", f"unknown decoder 'yolo9000'; known: {', '.join(known)}")]


def test_bad_yolo_decoder_param():
    if "iou_threshold" not in decoders.get("yolo").params_schema.get("properties", {}):
        pytest.skip("the yolo decoder declares no iou_threshold")
    assert problems_of(doc(output={"decoder": {"name": "yolo", "iou_threshold": 1.5}})) == [
        ("$.output.decoder.iou_threshold", "1.5 is greater than the maximum of 1")]


def test_decoder_params_checked_by_its_schema(throwaway_decoder):
    assert problems_of(doc(output={"decoder": {"name": throwaway_decoder, "iou_threshold": -1,
                                               "anchor": [[1, 2]]}})) == [
        ("$.output.decoder", "'anchors' is a required property"),
        ("$.output.decoder", "Additional properties are not allowed ('anchor' was unexpected)"),
        ("$.output.decoder.iou_threshold", "-1 is less than the minimum of 0"),
    ]
    m = parse_manifest(doc(output={"decoder": {"name": throwaway_decoder, "anchors": [[10, 13]]}}))
    assert m.output.decoder.params == {"anchors": [[10, 13]]}


def test_decoder_without_name():
    assert problems_of(doc(output={"decoder": {"iou_threshold": 0.5}})) == [
        ("$.output.decoder", "'name' is a required property")]


def test_several_errors_reported_together_sorted_by_path():
    data = doc(version="one", framework="tensorrt", labels=["a", "a"],
               input={"shape": [1, 3, 8, 8], "layout": "NCWH",
                      "preprocessing": {"std": [1, 0, 1], "resize": {"widht": 8}}},
               output={"score_threshold": 2})
    with pytest.raises(ModelConfigError) as info:
        parse_manifest(data, source="CVAT_Models/m/model.json")
    assert info.value.problems == [
        ("$.framework", "framework 'tensorrt' is not supported by this runner yet (supported: onnx, openvino)"),
        ("$.input.layout", "'NCWH' is not one of ['NCHW', 'NHWC']"),
        ("$.input.preprocessing.resize", "Additional properties are not allowed ('widht' was unexpected)"),
        ("$.input.preprocessing.std[1]", "std values must not be 0"),
        ("$.labels[1]", "duplicate label name 'a' (already used by $.labels[0])"),
        ("$.output.score_threshold", "2 is greater than the maximum of 1"),
        ("$.version", "a version must look like MAJOR.MINOR.PATCH, e.g. '1.2.0'"),
    ]
    assert info.value.source == "CVAT_Models/m/model.json"
    assert str(info.value).startswith("CVAT_Models/m/model.json: $.framework: framework 'tensorrt'")


def test_paths_sort_numerically():
    labels = [f"l{i}" for i in range(12)] + ["l2", "l10"]
    assert [p for p, _ in problems_of(doc(labels=labels))] == ["$.labels[12]", "$.labels[13]"]


def test_invalid_json_reports_line_and_column():
    text = '{\n  "name": "m",\n  "version" "1.0.0"\n}'
    with pytest.raises(ModelConfigError) as info:
        load_manifest(text, source="x/model.json")
    assert info.value.problems == [("$", "invalid JSON at line 3, column 13: Expecting ':' delimiter")]
    assert str(info.value) == "x/model.json: $: invalid JSON at line 3, column 13: Expecting ':' delimiter"


def test_json_constants_and_bad_bytes_refused():
    with pytest.raises(ModelConfigError) as info:
        load_manifest('{"name": NaN}')
    assert info.value.problems == [("$", "invalid JSON: NaN is not allowed in JSON")]
    with pytest.raises(ModelConfigError) as info:
        load_manifest(b'{"name": "\xff"}')
    assert info.value.problems == [("$", "not UTF-8 text (bad byte at offset 10)")]


def test_duplicate_json_keys_refused():
    text = json.dumps(doc())[:-1] + ', "labels": ["a"], "labels": ["b"]}'
    with pytest.raises(ModelConfigError) as info:
        load_manifest(text)
    assert info.value.problems == [("$", "duplicate key 'labels' in a JSON object (only the last one would count)")]


def test_document_must_be_an_object():
    assert problems_of([]) == [("$", "[] is not of type 'object'")]


def test_attribute_without_input_type():
    assert problems_of(doc(labels=[{"id": 0, "name": "car",
                                    "attributes": [{"name": "color", "values": ["red"]}]}])) == [
        ("$.labels[0].attributes[0]", "'input_type' is a required property")]


def test_attribute_typo_and_bad_input_type():
    assert problems_of(doc(labels=[{"id": 0, "name": "car", "attributes": [
        {"name": "color", "input_type": "dropdown", "values": ["red"], "default": "red"}]}])) == [
        ("$.labels[0].attributes[0]", "Additional properties are not allowed ('default' was unexpected)"),
        ("$.labels[0].attributes[0].input_type",
         "'dropdown' is not one of ['number', 'checkbox', 'radio', 'select', 'text']"),
    ]


def test_bad_label_items():
    assert problems_of(doc(labels=[5, "", {"name": "car"}, {"id": 3, "name": "x", "type": "box"}])) == [
        ("$.labels[0]", "a label must be a name (string) or a label object"),
        ("$.labels[1]", "a label name must not be empty"),
        ("$.labels[2]", "'id' is a required property"),
        ("$.labels[3].type",
         "'box' is not one of ['any', 'rectangle', 'polygon', 'polyline', 'points', 'ellipse', 'cuboid', "
         "'mask', 'skeleton', 'tag']"),
    ]


def test_skeleton_needs_sublabels_and_svg_and_only_skeletons_have_them():
    assert problems_of(doc(labels=[{"id": 0, "name": "p", "type": "skeleton"},
                                   {"id": 1, "name": "q", "sublabels": [{"name": "x"}]}])) == [
        ("$.labels[0]", "'sublabels' is a required property"),
        ("$.labels[0]", "'svg' is a required property"),
        ("$.labels[1].sublabels", "only skeleton labels have sublabels"),
    ]


def test_openvino_model_on_onnxruntime_refused():
    assert problems_of(doc(framework="openvino", file_name="model.xml", runtime={"name": "onnxruntime"})) == [
        ("$.runtime.name", "runtime 'onnxruntime' cannot run framework 'openvino' (use 'openvino')")]


def test_reduced_precision_needs_openvino():
    assert problems_of(doc(runtime={"precision": "f16"})) == [
        ("$.runtime.precision",
         "precision 'f16' needs runtime 'openvino' (onnxruntime runs the weights as stored: use 'f32')")]


def test_runtime_typos_refused():
    assert problems_of(doc(runtime={"name": "ort", "devices": "CPU"})) == [
        ("$.runtime", "Additional properties are not allowed ('devices' was unexpected)"),
        ("$.runtime.name", "'ort' is not one of ['onnxruntime', 'openvino']"),
    ]


@pytest.mark.parametrize("framework", ["pytorch", "tensorflow", "keras", "tensorrt", "other"])
def test_frameworks_without_runtime_refused(framework):
    assert problems_of(doc(framework=framework)) == [
        ("$.framework", f"framework {framework!r} is not supported by this runner yet (supported: onnx, openvino)")]


def test_resize_without_size():
    assert problems_of(doc(input={"shape": [1, 3, None, None]})) == [
        ("$.input.preprocessing.resize", "resize mode 'letterbox' needs a target size, but width and height are "
                                         "missing: set resize.width and resize.height or give a static 4-D "
                                         "input.shape")]
    assert problems_of(doc(input={"shape": [1, 3, 640, None],
                                  "preprocessing": {"resize": {"mode": "stretch"}}})) == [
        ("$.input.preprocessing.resize", "resize mode 'stretch' needs a target size, but width is missing: set "
                                         "resize.width or give a static 4-D input.shape")]
    assert problems_of(doc(input=None)) == [
        ("$.input.preprocessing.resize", "resize mode 'letterbox' needs a target size, but width and height are "
                                         "missing: set resize.width and resize.height or give a static 4-D "
                                         "input.shape")]


def test_resize_size_must_match_static_shape():
    assert problems_of(doc(input={"shape": [1, 3, 640, 640],
                                  "preprocessing": {"resize": {"width": 640, "height": 320}}})) == [
        ("$.input.preprocessing.resize.height", "resize.height 320 does not match the height 640 of the static "
                                                "input.shape")]


def test_keep_aspect_ratio_contradicting_mode():
    assert problems_of(with_pre(resize={"mode": "stretch", "keep_aspect_ratio": True})) == [
        ("$.input.preprocessing.resize.keep_aspect_ratio", "keep_aspect_ratio true contradicts mode 'stretch'")]


def test_preprocessing_value_errors():
    assert problems_of(with_pre(mean=[1, 2], std=[], scale=0, nromalize=True,
                                resize={"pad_value": 300, "multiple_of": 0})) == [
        ("$.input.preprocessing", "Additional properties are not allowed ('nromalize' was unexpected)"),
        ("$.input.preprocessing.mean", "must hold 1 or 3 numbers"),
        ("$.input.preprocessing.resize.multiple_of", "0 is less than the minimum of 1"),
        ("$.input.preprocessing.resize.pad_value", "300 is greater than the maximum of 255"),
        ("$.input.preprocessing.scale", "0 is less than or equal to the minimum of 0"),
        ("$.input.preprocessing.std", "must hold 1 or 3 numbers"),
    ]


@pytest.mark.parametrize("path", ["../other/model.bin", "a/../../b", "/etc/passwd", "C:/x.bin", "\\\\srv\\x",
                                  "..", "a/.."])
def test_paths_leaving_the_model_folder_refused(path):
    message = "must be a path inside the model folder (relative, no '..')"
    assert problems_of(doc(extra_files=[path])) == [("$.extra_files[0]", message)]
    assert problems_of(doc(file_name=path)) == [("$.file_name", message)]


@pytest.mark.parametrize("path", ["model.bin", "saved_model/variables", "a..b/c.bin", "..hidden"])
def test_relative_paths_accepted(path):
    assert parse_manifest(doc(extra_files=[path])).extra_files == (path,)


def test_parse_does_not_touch_input():
    data = doc(labels=["a"], input={"shape": [1, 3, 8, 8], "preprocessing": {"normalize": True}})
    before = copy.deepcopy(data)
    parse_manifest(data)
    assert data == before
