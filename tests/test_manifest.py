"""model.json: schema, defaults and error reporting (common/manifest.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging

from pathlib import Path

import pytest
from jsonschema import Draft7Validator

import common.manifest as manifest_module
from common import decoders
from common.errors import ModelConfigError
from common.manifest import (
    SCHEMA_PATH,
    TENSORRT_REFUSAL,
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
    m = parse_manifest(doc(extra_files=["weights.data", "tokenizer"]))
    assert m.extra_files == ("weights.data", "tokenizer")


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
        ("$.input.layout", '"NCWH" is not one of ["NCHW", "NHWC"]')]


def test_missing_version():
    assert problems_of(doc(version=None)) == [("$", '"version" is a required property')]


def test_bad_version_pattern():
    assert problems_of(doc(version="1.0")) == [
        ("$.version", "a version must look like MAJOR.MINOR.PATCH, e.g. '1.2.0'")]


def test_bad_model_name():
    assert problems_of(doc(name="my model")) == [
        ("$.name", "a model name may hold only letters, digits, '_' and '-'")]


def test_duplicate_label_names():
    assert problems_of(doc(labels=["cat", "car", "car"])) == [
        ("$.labels[2]", 'duplicate label name "car" (already used by $.labels[1])')]


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
        ("$.labels[0].attributes[1]", 'duplicate attribute name "a" (already used by $.labels[0].attributes[0])'),
        ("$.labels[0].sublabels[1]", 'duplicate sublabel name "x" (already used by $.labels[0].sublabels[0])'),
    ]


def test_unknown_decoder_lists_known_ones():
    known = decoders.names()
    assert "yolo" in known
    assert problems_of(doc(output={"decoder": {"name": "yolo9000"}})) == [
        ("$.output.decoder.name", f'unknown decoder "yolo9000"; known: {", ".join(known)}')]


def test_bad_yolo_decoder_param():
    assert problems_of(doc(output={"decoder": {"name": "yolo", "iou_threshold": 1.5}})) == [
        ("$.output.decoder.iou_threshold", "1.5 is greater than the maximum of 1")]


def test_decoder_params_checked_by_its_schema(throwaway_decoder):
    assert problems_of(doc(output={"decoder": {"name": throwaway_decoder, "iou_threshold": -1,
                                               "anchor": [[1, 2]]}})) == [
        ("$.output.decoder", '"anchors" is a required property'),
        ("$.output.decoder", 'Additional properties are not allowed ("anchor" was unexpected)'),
        ("$.output.decoder.iou_threshold", "-1 is less than the minimum of 0"),
    ]
    m = parse_manifest(doc(output={"decoder": {"name": throwaway_decoder, "anchors": [[10, 13]]}}))
    assert m.output.decoder.params == {"anchors": [[10, 13]]}


def test_decoder_without_name():
    assert problems_of(doc(output={"decoder": {"iou_threshold": 0.5}})) == [
        ("$.output.decoder", '"name" is a required property')]


def test_several_errors_reported_together_sorted_by_path():
    data = doc(version="one", framework="tensorrt", labels=["a", "a"],
               input={"shape": [1, 3, 8, 8], "layout": "NCWH",
                      "preprocessing": {"std": [1, 0, 1], "resize": {"widht": 8}}},
               output={"score_threshold": 2})
    with pytest.raises(ModelConfigError) as info:
        parse_manifest(data, source="CVAT_Models/m/model.json")
    assert info.value.problems == [
        ("$.framework", TENSORRT_REFUSAL),
        ("$.input.layout", '"NCWH" is not one of ["NCHW", "NHWC"]'),
        ("$.input.preprocessing.resize", 'Additional properties are not allowed ("widht" was unexpected)'),
        ("$.input.preprocessing.std[1]", "std values must not be 0 (nor closer to 0 than 1e-12)"),
        ("$.labels[1]", 'duplicate label name "a" (already used by $.labels[0])'),
        ("$.output.score_threshold", "2 is greater than the maximum of 1"),
        ("$.version", "a version must look like MAJOR.MINOR.PATCH, e.g. '1.2.0'"),
    ]
    assert info.value.source == "CVAT_Models/m/model.json"
    assert str(info.value).startswith('CVAT_Models/m/model.json: $.framework: framework "tensorrt"')


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
    assert info.value.problems == [("$", 'duplicate key "labels" in a JSON object (only the last one would count)')]


def test_document_must_be_an_object():
    assert problems_of([]) == [("$", '[] is not of type "object"')]


def test_attribute_without_input_type():
    assert problems_of(doc(labels=[{"id": 0, "name": "car",
                                    "attributes": [{"name": "color", "values": ["red"]}]}])) == [
        ("$.labels[0].attributes[0]", '"input_type" is a required property')]


def test_attribute_typo_and_bad_input_type():
    assert problems_of(doc(labels=[{"id": 0, "name": "car", "attributes": [
        {"name": "color", "input_type": "dropdown", "values": ["red"], "default": "red"}]}])) == [
        ("$.labels[0].attributes[0]", 'Additional properties are not allowed ("default" was unexpected)'),
        ("$.labels[0].attributes[0].input_type",
         '"dropdown" is not one of ["number", "checkbox", "radio", "select", "text"]'),
    ]


def test_bad_label_items():
    assert problems_of(doc(labels=[5, "", {"name": "car"}, {"id": 3, "name": "x", "type": "box"}])) == [
        ("$.labels[0]", "a label must be a name (string) or a label object"),
        ("$.labels[1]", "a label name must not be empty"),
        ("$.labels[2]", '"id" is a required property'),
        ("$.labels[3].type",
         '"box" is not one of ["any", "rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", '
         '"mask", "skeleton", "tag"]'),
    ]


def test_skeleton_needs_sublabels_and_svg_and_only_skeletons_have_them():
    assert problems_of(doc(labels=[{"id": 0, "name": "p", "type": "skeleton"},
                                   {"id": 1, "name": "q", "sublabels": [{"name": "x"}]}])) == [
        ("$.labels[0]", '"sublabels" is a required property'),
        ("$.labels[0]", '"svg" is a required property'),
        ("$.labels[1].sublabels", "only skeleton labels have sublabels"),
    ]


def test_openvino_model_on_onnxruntime_refused():
    assert problems_of(doc(framework="openvino", file_name="model.xml", runtime={"name": "onnxruntime"})) == [
        ("$.runtime.name", 'runtime "onnxruntime" cannot run framework "openvino" (use "openvino")')]


def test_reduced_precision_needs_openvino():
    assert problems_of(doc(runtime={"precision": "f16"})) == [
        ("$.runtime.precision",
         'precision "f16" needs runtime "openvino" (onnxruntime runs the weights as stored: use "f32")')]


def test_runtime_typos_refused():
    assert problems_of(doc(runtime={"name": "ort", "devices": "CPU"})) == [
        ("$.runtime", 'Additional properties are not allowed ("devices" was unexpected)'),
        ("$.runtime.name", '"ort" is not one of ["onnxruntime", "openvino", "torch", "tensorflow", "tflite"]'),
    ]


@pytest.mark.parametrize("framework", ["other"])
def test_frameworks_without_runtime_refused(framework):
    assert problems_of(doc(framework=framework)) == [
        ("$.framework", f'framework "{framework}" is not supported by this runner yet '
                        f'(supported: onnx, openvino, pytorch, tensorflow, keras)')]


def test_tensorrt_refused_with_the_onnx_route():
    assert problems_of(doc(framework="tensorrt", file_name="model.engine")) == [("$.framework", TENSORRT_REFUSAL)]
    assert "not supported here" in TENSORRT_REFUSAL and "TensorRT provider" in TENSORRT_REFUSAL


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
        ("$.input.preprocessing.resize.keep_aspect_ratio", 'keep_aspect_ratio true contradicts mode "stretch"')]


def test_preprocessing_value_errors():
    assert problems_of(with_pre(mean=[1, 2], std=[], scale=0, nromalize=True,
                                resize={"pad_value": 300, "multiple_of": 0})) == [
        ("$.input.preprocessing", 'Additional properties are not allowed ("nromalize" was unexpected)'),
        ("$.input.preprocessing.mean", "must hold 1 or 3 numbers"),
        ("$.input.preprocessing.resize.multiple_of", "0 is less than the minimum of 1"),
        ("$.input.preprocessing.resize.pad_value", "300 is greater than the maximum of 255"),
        ("$.input.preprocessing.scale", "0 is less than or equal to the minimum of 0"),
        ("$.input.preprocessing.std", "must hold 1 or 3 numbers"),
    ]


@pytest.mark.parametrize("path", ["../other/model.bin", "a/../../b", "/etc/passwd", "C:/x.bin", "\\\\srv\\x",
                                  "..", "a/..", "a\n/../../x"])
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



# ---- robustness: whatever the document, a manifest or a ModelConfigError ------


def load_problems(text):
    with pytest.raises(ModelConfigError) as info:
        load_manifest(text)
    return info.value.problems


@pytest.fixture
def nested_decoder():
    """A decoder whose parameters nest integers in objects and arrays."""
    name = "test_manifest_nested"

    @decoders.register(name, {
        "type": "object",
        "properties": {
            "nms": {"type": ["object", "null"], "properties": {"top_k": {"type": "integer"},
                                                             "iou": {"type": "number"}}},
            "grid": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            "pair": {"type": "array", "items": [{"type": "integer"}, {"type": "number"}],
                     "additionalItems": {"type": ["integer", "null"]}},
            "sizes": {"type": "object", "additionalProperties": {"type": "integer"}},
            "by_name": {"type": "object", "patternProperties": {"^n_": {"type": "integer"}}},
            "ratio": {"type": ["integer", "number"]},
            "anything": {},
        },
    })
    def _decode(outputs, ctx, params):  # pragma: no cover - never called
        return decoders.Detections.empty()

    yield name
    decoders._REGISTRY.pop(name, None)


def test_integer_decoder_params_become_int():
    # JSON Schema counts 10.0 as an integer; the decoders must get 10 (a slice fails on 10.0).
    ssd = parse_manifest(doc(output={"decoder": {"name": "ssd", "max_detections": 10.0, "boxes": 0.0,
                                                 "nms": {"iou_threshold": 1.0}}})).output.decoder.params
    assert ssd["max_detections"] == 10 and type(ssd["max_detections"]) is int
    assert type(ssd["boxes"]) is int
    assert type(ssd["nms"]["iou_threshold"]) is float  # a "number" stays as written
    yolo = parse_manifest(doc(output={"decoder": {"name": "yolo", "max_detections": 100.0, "output": 0.0,
                                                  "iou_threshold": 0.0}})).output.decoder.params
    assert (type(yolo["max_detections"]), type(yolo["output"]), type(yolo["iou_threshold"])) == (int, int, float)
    gfl = parse_manifest(doc(output={"decoder": {"name": "gfl", "strides": [8.0, 16.0, 32]}})).output.decoder.params
    assert gfl["strides"] == [8, 16, 32] and all(type(v) is int for v in gfl["strides"])
    anchors = parse_manifest(doc(output={"decoder": {"name": "ssd_anchors", "aspect_ratios": [1.0, 2.0],
                                                     "input_size_width": 128.0}})).output.decoder.params
    assert all(type(v) is float for v in anchors["aspect_ratios"])
    assert type(anchors["input_size_width"]) is int


def test_integer_params_follow_nested_schemas(nested_decoder):
    params = parse_manifest(doc(output={"decoder": {
        "name": nested_decoder, "nms": {"top_k": 5.0, "iou": 1.0}, "grid": [[1.0, 2.0], [3.0]],
        "pair": [4.0, 5.0, 6.0, None], "sizes": {"a": 7.0}, "by_name": {"n_x": 8.0, "other": 9.0},
        "ratio": 2.0, "anything": 3.0,
    }})).output.decoder.params
    assert params == {"nms": {"top_k": 5, "iou": 1.0}, "grid": [[1, 2], [3]], "pair": [4, 5.0, 6, None],
                      "sizes": {"a": 7}, "by_name": {"n_x": 8, "other": 9.0}, "ratio": 2.0, "anything": 3.0}
    assert [type(v) for v in (params["nms"]["top_k"], params["grid"][1][0], params["pair"][0], params["pair"][2],
                              params["sizes"]["a"], params["by_name"]["n_x"])] == [int] * 6
    assert [type(v) for v in (params["nms"]["iou"], params["pair"][1], params["by_name"]["other"],
                              params["ratio"], params["anything"])] == [float] * 5


def test_top_level_integers_are_int():
    m = parse_manifest(doc(
        input={"shape": [1.0, 3.0, None, None],
               "preprocessing": {"resize": {"width": 64.0, "height": 48.0, "multiple_of": 32.0}}},
        labels=["a", {"id": 5.0, "name": "p", "type": "skeleton", "svg": "", "sublabels": [{"name": "x", "id": 2.0}]}],
        label_id_offset=1.0))
    values = [*m.input.shape[:2], m.input.resize.width, m.input.resize.height, m.input.resize.multiple_of,
              m.label_id_offset, *(label.id for label in m.labels), m.labels[1].sublabels[0].id]
    assert values == [1, 3, 64, 48, 32, 1, 1, 5, 2]
    assert all(type(v) is int for v in values)
    static = parse_manifest(doc(input={"shape": [1, 3, 320.0, 240.0]})).input.resize
    assert (static.width, static.height) == (240, 320) and type(static.width) is type(static.height) is int


@pytest.mark.parametrize("depth", [500, 100_000])
def test_deeply_nested_json_text_refused(depth):
    text = json.dumps(doc())[:-1] + ', "x": ' + "[" * depth + "]" * depth + "}"
    problems = load_problems(text)
    assert [path for path, _ in problems] == ["$"]
    assert problems[0][1].startswith("nested too deeply (at most 100 levels of arrays and objects)")


def test_deeply_nested_data_refused_and_moderate_nesting_kept():
    deep = inner = []
    for _ in range(manifest_module.MAX_DEPTH + 50):
        inner.append([])
        inner = inner[0]
    assert problems_of(doc(metrics={"x": deep}))[0][0] == "$"
    assert "nested too deeply" in problems_of(doc(metrics={"x": deep}))[0][1]
    ok = inner = []
    for _ in range(manifest_module.MAX_DEPTH - 3):
        inner.append([])
        inner = inner[0]
    assert parse_manifest(doc(metrics={"x": ok})).raw["metrics"]["x"] == ok


def test_unexpected_failures_while_building_become_config_errors(monkeypatch):
    def overflow(data, source):
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(manifest_module, "_build", overflow)
    assert problems_of(doc()) == [("$", "cannot be read (OverflowError: int too large to convert to float)")]

    def recurse(data, source):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(manifest_module, "_build", recurse)
    assert problems_of(doc()) == [("$", "nested too deeply (at most 100 levels of arrays and objects)")]


def test_numbers_beyond_float_range_refused_with_path():
    text = json.dumps(with_pre(scale=1)).replace('"scale": 1', '"scale": ' + "9" * 400)
    assert load_problems(text) == [
        ("$.input.preprocessing.scale", "number too large (beyond ±1.8e308 it has no floating-point value)")]
    assert problems_of(with_pre(mean=[1, -10 ** 400, 1])) == [
        ("$.input.preprocessing.mean[1]", "number too large (beyond ±1.8e308 it has no floating-point value)")]
    assert load_problems(json.dumps(doc())[:-1] + ', "label_id_offset": ' + "9" * 5000 + "}") == [
        ("$", "invalid JSON: a number has more than 4300 digits")]


def test_non_finite_numbers_refused_anywhere():
    message = ("is not a finite number (a JSON number beyond ±1.8e308, such as 1e999, overflows to "
               "infinity)")
    text = json.dumps(with_pre(std=[1])).replace('"std": [1]', '"std": [1e999]')
    assert load_problems(text) == [("$.input.preprocessing.std[0]", f"Infinity {message}")]
    text = json.dumps(doc(metrics={"fps": 1}, output={"decoder": {"name": "ssd_anchors", "min_scale": 1}}))
    text = text.replace('"fps": 1', '"fps": -1e999').replace('"min_scale": 1', '"min_scale": 1e400')
    assert load_problems(text) == [("$.metrics.fps", f"-Infinity {message}"),
                                   ("$.output.decoder.min_scale", f"Infinity {message}")]
    assert problems_of(doc(team={"x": [float("nan")]})) == [("$.team.x[0]", f"NaN {message}")]


@pytest.mark.parametrize("std", [1e-13, -1e-13, 5e-324, 1e-300, -0.0])
def test_near_zero_std_refused(std):
    assert problems_of(with_pre(std=[1, std, 1])) == [
        ("$.input.preprocessing.std[1]", "std values must not be 0 (nor closer to 0 than 1e-12)")]


def test_small_but_sane_std_accepted():
    assert parse_manifest(with_pre(std=[1e-12, -1e-6, 255])).input.std == (1e-12, -1e-6, 255.0)


def test_text_that_cannot_be_utf8_refused_with_path():
    base = json.dumps(doc(display_name="D", labels=["L", "ok"], team_notes="N"))
    text = (base.replace('"D"', r'"bad \udc00"').replace('"L"', r'"\ud800"').replace('"N"', r'"x\udfff"')
            [:-1] + r', "k\ud800": 1}')
    with pytest.raises(ModelConfigError) as info:
        load_manifest(text)
    assert info.value.problems == [
        ("$", r'the key "k\ud800" cannot be written as UTF-8: lone surrogate \ud800 at character 1 '
              r"(a \u escape of half a surrogate pair)"),
        ("$.display_name", r"text cannot be written as UTF-8: lone surrogate \udc00 at character 4 "
                           r"(a \u escape of half a surrogate pair)"),
        ("$.labels[0]", r"text cannot be written as UTF-8: lone surrogate \ud800 at character 0 "
                        r"(a \u escape of half a surrogate pair)"),
        ("$.team_notes", r"text cannot be written as UTF-8: lone surrogate \udfff at character 1 "
                         r"(a \u escape of half a surrogate pair)"),
    ]
    str(info.value).encode("utf-8")  # the message itself can be logged and written
    assert parse_manifest(doc(labels=["é", "汽车", "🚗"])).labels[2].name == "🚗"  # real text is fine


def test_surrogate_in_a_key_quoted_in_a_path_stays_writable():
    problems = problems_of(doc(team={"\udc00": {"x": float("inf")}}))
    assert problems == [
        ("$.team", r'the key "\udc00" cannot be written as UTF-8: lone surrogate \udc00 at character 0 '
                   r"(a \u escape of half a surrogate pair)"),
        (r'$.team["\udc00"].x', "Infinity is not a finite number (a JSON number beyond ±1.8e308, "
                                "such as 1e999, overflows to infinity)"),
    ]
    "".join(p + m for p, m in problems).encode("utf-8")


PLAIN_PATH = "write the plain relative path: no './' or '.' part, no '//', no trailing '/' (e.g. \"sub/model.onnx\")"


@pytest.mark.parametrize("path", ["./model.onnx", "model.onnx/", "sub//model.onnx", ".", "./", "a/./b",
                                  "a\n//b"])
def test_paths_not_written_plainly_refused(path):
    assert problems_of(doc(file_name=path)) == [("$.file_name", PLAIN_PATH)]
    assert problems_of(doc(extra_files=["ok.bin", path])) == [("$.extra_files[1]", PLAIN_PATH)]


def test_empty_paths_refused():
    message = 'must not be empty: write the plain relative path (e.g. "model.onnx")'
    assert problems_of(doc(file_name="")) == [("$.file_name", message)]
    assert problems_of(doc(extra_files=[""])) == [("$.extra_files[0]", message)]


def test_extra_files_listed_twice_or_overlapping_refused():
    assert problems_of(doc(extra_files=["a.bin", "model.onnx"])) == [
        ("$.extra_files[1]", "is the file_name already: leave it out of extra_files")]
    assert problems_of(doc(extra_files=["a.bin", "b.bin", "a.bin", "a.bin"])) == [
        ("$.extra_files[2]", "listed twice (also $.extra_files[0])"),
        ("$.extra_files[3]", "listed twice (also $.extra_files[0])"),
    ]
    assert problems_of(doc(extra_files=["data/x.bin", "data"])) == [
        ("$.extra_files[0]", 'is inside "data" ($.extra_files[1]), which brings everything in that folder already')]
    assert problems_of(doc(file_name="ir/model.xml", framework="openvino", extra_files=["ir"])) == [
        ("$.extra_files[0]", 'is the folder of file_name "ir/model.xml": list the other files in it instead '
                             "(the folder would bring file_name twice)")]
    # names that merely share a prefix do not overlap
    assert parse_manifest(doc(extra_files=["data", "data2/x", "model.onnx.data"])).extra_files == (
        "data", "data2/x", "model.onnx.data")


def test_absurd_sizes_refused():
    assert problems_of(doc(input={"shape": [1, 3, 100000, 100000]})) == [
        ("$.input.shape[2]", "100000 is greater than the maximum of 16384"),
        ("$.input.shape[3]", "100000 is greater than the maximum of 16384"),
    ]
    assert problems_of(doc(input={"shape": [1, 3, None, None], "preprocessing": {
        "resize": {"width": 16385, "height": 10 ** 9}}})) == [
        ("$.input.preprocessing.resize.height", "1000000000 is greater than the maximum of 16384"),
        ("$.input.preprocessing.resize.width", "16385 is greater than the maximum of 16384"),
    ]
    assert problems_of(with_pre(resize={"mode": "none", "multiple_of": 1025})) == [
        ("$.input.preprocessing.resize.multiple_of", "1025 is greater than the maximum of 1024")]
    assert problems_of(doc(label_id_offset=1_000_001, labels=[
        {"id": 10_000_001, "name": "a"},
        {"id": 0, "name": "s", "type": "skeleton", "svg": "", "sublabels": [{"name": "p", "id": 10 ** 8}]}])) == [
        ("$.label_id_offset", "1000001 is greater than the maximum of 1000000"),
        ("$.labels[0].id", "10000001 is greater than the maximum of 10000000"),
        ("$.labels[1].sublabels[0].id", "100000000 is greater than the maximum of 10000000"),
    ]
    m = parse_manifest(doc(input={"shape": [1, 3, 16384, 16384], "preprocessing": {"resize": {"multiple_of": 1024}}},
                           label_id_offset=1_000_000, labels=["a", {"id": 10_000_000, "name": "b"}]))
    assert (m.input.resize.width, m.input.resize.multiple_of, m.labels[0].id, m.labels[1].id) == (
        16384, 1024, 1_000_000, 10_000_000)


def test_error_messages_quote_values_as_short_json():
    big = "y" * (5 * 2 ** 20)
    with pytest.raises(ModelConfigError) as info:
        load_manifest(json.dumps([{"x": big}]))
    assert info.value.problems == [("$", '[{"x": "' + "y" * 71 + '… is not of type "object"')]
    assert problems_of(doc(labels={"x": big})) == [("$.labels", '{"x": "' + "y" * 72 + '… is not of type "array"')]
    long_name = "n" * 100_000
    problems = problems_of(doc(labels=[long_name, long_name], output={"decoder": {"name": long_name}},
                               runtime={big: 1, "x": 2}))
    assert problems == [
        ("$.labels[1]", 'duplicate label name "' + "n" * 78 + '… (already used by $.labels[0])'),
        ("$.output.decoder.name", 'unknown decoder "' + "n" * 78 + '…; known: ' + ", ".join(decoders.names())),
        ("$.runtime", 'Additional properties are not allowed ("x", "' + "y" * 78 + '… were unexpected)'),
    ]
    assert max(len(str(ModelConfigError(problems))), 0) < 1000


def test_error_quotes_are_cut_at_80_characters():
    quote = manifest_module._quote
    assert quote("x" * 78) == '"' + "x" * 78 + '"'  # 80 characters: whole
    assert quote("x" * 79) == '"' + "x" * 78 + "…"
    assert quote([1, 2, {"a": None, "b": True}]) == '[1, 2, {"a": null, "b": true}]'
    assert quote(list(range(10 ** 6))).endswith("…") and len(quote(list(range(10 ** 6)))) == 80
    assert quote("a\udc00b") == r'"a\udc00b"'
    assert quote(10 ** 5000).startswith("<an integer of")


def test_many_problems_are_capped():
    problems = problems_of(doc(labels=["same"] * 20_000))
    limit = manifest_module.MAX_PROBLEMS
    assert len(problems) == limit + 1
    assert problems[-1] == ("$", f"... and {20_000 - 1 - limit} more problems not listed")
    assert len(str(ModelConfigError(problems))) < 200 * limit


def test_long_keys_in_paths_are_cut():
    problems = problems_of(doc(team={"k" * 10 ** 6: float("inf")}))
    assert problems[0][0] == '$.team["' + "k" * 78 + '…]'


def test_duplicate_keys_reported_with_the_other_problems_under_one_cap():
    text = json.dumps(doc(version="1.0"))[:-1] + ', "labels": ["a"], "labels": ["b"], "x": 1e999}'
    assert load_problems(text) == [
        ("$", 'duplicate key "labels" in a JSON object (only the last one would count)'),
        ("$.x", "Infinity is not a finite number (a JSON number beyond ±1.8e308, such as 1e999, overflows to "
                "infinity)"),
    ]
    keys = ", ".join(f'"k{i}": 1, "k{i}": 2' for i in range(150))
    problems = load_problems(json.dumps(doc(version="1.0"))[:-1] + ", " + keys + "}")
    assert len(problems) == manifest_module.MAX_PROBLEMS + 1
    assert problems[-1] == ("$", "... and 51 more problems not listed")
