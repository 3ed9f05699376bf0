"""model.json type → CVAT kind, label spec and kind annotations (common/publish/kinds.py)."""

from __future__ import annotations

import dataclasses

import pytest

from common.errors import ModelConfigError
from common.manifest import parse_manifest
from common.publish.kinds import (
    NotPublishable,
    cvat_kind,
    interactor_annotations,
    kind_annotations,
    label_spec,
    tracker_annotations,
)
from tests.conftest import model_json

SKELETON = {"id": 0, "name": "person", "type": "skeleton", "svg": '<line x1="1" y1="1" x2="2" y2="2"/>',
            "sublabels": [{"name": "nose"}, {"id": 5, "name": "eye",
                                              "attributes": [{"name": "visible", "input_type": "checkbox",
                                                              "values": [True, False]}]}]}


def manifest(**extra):
    return parse_manifest(model_json("m", **extra))


@pytest.mark.parametrize("model_type, kind", [
    ("detector", "detector"), ("segmentation", "detector"), ("classification", "detector"),
    ("keypoint", "detector"), ("interactor", "interactor"), ("tracker", "tracker"), ("reid", "reid"),
])
def test_every_publishable_type_has_a_kind(model_type, kind):
    assert cvat_kind(model_type) == kind


@pytest.mark.parametrize("model_type", ["other", "classifier", "unknown", ""])
def test_other_types_are_refused_with_a_reason(model_type):
    with pytest.raises(NotPublishable) as err:
        cvat_kind(model_type)
    assert isinstance(err.value, ModelConfigError)
    assert err.value.reason.startswith(f"type {model_type!r} has no CVAT function kind: CVAT lists only "
                                       f"detector, interactor, tracker and reid functions")
    assert str(err.value).startswith("model.json: $.type: ")


def test_detector_labels_default_to_rectangles_and_keep_their_own_type():
    m = manifest(labels=["car", {"id": 7, "name": "road", "type": "polygon",
                                 "attributes": [{"name": "lanes", "input_type": "number", "values": [1, 8, 1],
                                                 "default_value": 2},
                                                {"name": "wet", "input_type": "checkbox", "values": [False]}]}])
    assert label_spec(m) == [
        {"id": 0, "name": "car", "type": "rectangle", "attributes": []},
        {"id": 7, "name": "road", "type": "polygon", "attributes": [
            {"name": "lanes", "input_type": "number", "values": ["1", "8", "1"], "default_value": "2"},
            {"name": "wet", "input_type": "checkbox", "values": ["false"]}]},
    ]


def test_a_polygon_decoder_makes_polygon_labels():
    m = manifest(labels=["text"], output={"decoder": {"name": "db_text"}})
    assert label_spec(m) == [{"id": 0, "name": "text", "type": "polygon", "attributes": []}]


@pytest.mark.parametrize("model_type, label_type", [
    ("segmentation", "mask"), ("classification", "tag"), ("interactor", "any"), ("tracker", "any"),
    ("reid", "any"),
])
def test_label_type_by_model_type(model_type, label_type):
    m = manifest(type=model_type, labels=["a", {"id": 4, "name": "b", "type": "rectangle"}])
    assert label_spec(m) == [{"id": 0, "name": "a", "type": label_type, "attributes": []},
                             {"id": 4, "name": "b", "type": "rectangle", "attributes": []}]


def test_interactors_trackers_and_reid_usually_have_an_empty_spec():
    for model_type in ("interactor", "tracker", "reid"):
        assert label_spec(manifest(type=model_type, labels=[])) == []


def test_keypoint_labels_are_skeletons_with_sublabels_and_svg():
    m = manifest(type="keypoint", labels=[SKELETON])
    assert label_spec(m) == [{
        "id": 0, "name": "person", "type": "skeleton", "attributes": [],
        "sublabels": [{"id": 0, "name": "nose", "type": "points", "attributes": []},
                      {"id": 5, "name": "eye", "type": "points", "attributes": [
                          {"name": "visible", "input_type": "checkbox", "values": ["true", "false"]}]}],
        "svg": '<line x1="1" y1="1" x2="2" y2="2"/>',
    }]


def test_a_keypoint_label_without_skeleton_is_refused():
    with pytest.raises(NotPublishable) as err:
        label_spec(manifest(type="keypoint", labels=["person"]))
    assert err.value.problems == [("$.labels[0]", "label 'person' is a skeleton in CVAT, which needs its points "
                                                  "(sublabels) and an svg drawing: declare the label with type "
                                                  "\"skeleton\", sublabels and svg")]


def test_other_type_has_no_label_spec():
    with pytest.raises(NotPublishable, match="type 'other' has no CVAT function kind"):
        label_spec(manifest(type="other"))


def test_interactor_annotations_defaults_and_values():
    assert interactor_annotations(manifest(type="interactor", labels=[])) == {
        "min_pos_points": "1", "min_neg_points": "-1"}
    m = manifest(type="interactor", labels=[], interactor={
        "min_pos_points": 0, "min_neg_points": 0, "startswith_box": False, "startswith_box_optional": True,
        "help_message": " Click the object ", "animated_gif": "https://example.org/sam.gif"})
    assert interactor_annotations(m) == {
        "min_pos_points": "0", "min_neg_points": "0", "startswith_box_optional": "true",
        "help_message": "Click the object", "animated_gif": "https://example.org/sam.gif"}
    assert "startswith_box" not in interactor_annotations(m)  # false: the key is left out, never "false"
    box = manifest(type="interactor", labels=[], interactor={"startswith_box": True})
    assert kind_annotations(box) == {"min_pos_points": "1", "min_neg_points": "-1", "startswith_box": "true"}


@pytest.mark.parametrize("section, path", [
    ({"min_pos_points": "2"}, "$.interactor.min_pos_points"),
    ({"min_pos_points": True}, "$.interactor.min_pos_points"),
    ({"min_neg_points": -2}, "$.interactor.min_neg_points"),
    ({"startswith_box": "false"}, "$.interactor.startswith_box"),
    ({"help_message": 3}, "$.interactor.help_message"),
    ({"startswith_boxx": True}, "$.interactor"),
])
def test_bad_interactor_settings_are_refused_at_the_edge(section, path):
    # model.json is validated once, when it is read: a bad value never reaches the publisher.
    with pytest.raises(ModelConfigError) as err:
        manifest(type="interactor", labels=[], interactor=section)
    assert [p for p, _ in err.value.problems] == [path]


def test_interactor_checks_still_hold_for_documents_built_without_the_schema():
    m = manifest(type="interactor", labels=[])
    bad = dataclasses.replace(m, raw={**m.raw, "interactor": {"startswith_box": "false"}})
    with pytest.raises(NotPublishable) as err:
        interactor_annotations(bad)
    assert err.value.problems == [("$.interactor.startswith_box", "must be true or false, got 'false'")]


def test_tracker_annotations():
    assert tracker_annotations(manifest(type="tracker", labels=[])) == {"supported_shape_types": "rectangle"}
    listed = manifest(type="tracker", labels=[], tracker={"supported_shape_types": ["polygon", "rectangle"]})
    assert kind_annotations(listed) == {"supported_shape_types": "polygon,rectangle"}
    assert kind_annotations(manifest()) == {}


@pytest.mark.parametrize("value, path", [
    ([], "$.tracker.supported_shape_types"), (" , ", "$.tracker.supported_shape_types"),
    (["circle"], "$.tracker.supported_shape_types[0]"), ([1], "$.tracker.supported_shape_types[0]"),
    (["rectangle", "rectangle"], "$.tracker.supported_shape_types"),
])
def test_bad_tracker_shapes_are_refused_at_the_edge(value, path):
    with pytest.raises(ModelConfigError) as err:
        manifest(type="tracker", labels=[], tracker={"supported_shape_types": value})
    assert {p for p, _ in err.value.problems} == {path}
