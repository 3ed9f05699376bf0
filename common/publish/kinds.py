"""Registry model ``type`` → CVAT function kind, label spec and kind annotations.

CVAT v2.73 knows four function kinds (cvat-contract.md §1.3): ``detector``,
``interactor``, ``tracker`` and ``reid``; a function of any other ``type`` is
silently left out of CVAT's model list. This table is the one place that says
how a model.json ``type`` is published:

==============  ===========  ==============================================
model.json      CVAT kind    label type when model.json leaves it ``any``
==============  ===========  ==============================================
detector        detector     ``rectangle``; ``polygon`` for decoders that
                             return polygons (``db_text``), ``mask`` /
                             ``tag`` / ``skeleton`` for decoders whose
                             results are masks / tags / keypoints
segmentation    detector     ``mask``
classification  detector     ``tag`` (CVAT shows it as a "classifier")
keypoint        detector     ``skeleton`` (sublabels and svg required)
interactor      interactor   as declared (usually no labels: spec ``[]``)
tracker         tracker      as declared (usually no labels: spec ``[]``)
reid            reid         as declared (usually no labels: spec ``[]``)
other, unknown  refused      (:class:`NotPublishable`)
==============  ===========  ==============================================

A label's own declared type (anything but the default ``any``) always wins.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from common import decoders
from common.errors import ModelConfigError
from common.manifest import Attribute, Label, ModelManifest

# model.json type -> CVAT kind (LambdaFunction's FunctionKind).
CVAT_KINDS: Mapping[str, str] = MappingProxyType({
    "detector": "detector",
    "segmentation": "detector",
    "classification": "detector",
    "keypoint": "detector",
    "interactor": "interactor",
    "tracker": "tracker",
    "reid": "reid",
})

# model.json type -> label type used where a label says "any" (kinds without an
# entry keep "any").
DEFAULT_LABEL_TYPES: Mapping[str, str] = MappingProxyType({
    "detector": "rectangle",
    "segmentation": "mask",
    "classification": "tag",
    "keypoint": "skeleton",
})

# Detector decoders whose shapes are not rectangles (the runner returns their polygons).
DECODER_LABEL_TYPES: Mapping[str, str] = MappingProxyType({"db_text": "polygon"})
# Or by what a decoder says its results are (DecoderInfo.result).
RESULT_LABEL_TYPES: Mapping[str, str] = MappingProxyType({"masks": "mask", "tags": "tag", "keypoints": "skeleton"})

# The shape types CVAT accepts in a tracker's supported_shape_types.
TRACKER_SHAPE_TYPES = ("rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton")
DEFAULT_TRACKER_SHAPES = ("rectangle",)

# CVAT's interactor defaults (LambdaFunction.__init__) for keys model.json leaves out.
DEFAULT_MIN_POS_POINTS = 1
DEFAULT_MIN_NEG_POINTS = -1


class NotPublishable(ModelConfigError):
    """The model cannot be published to CVAT as it stands; ``reason`` says why."""

    def __init__(self, path: str, reason: str, *, source: str = "model.json"):
        super().__init__([(path, reason)], source=source)
        self.reason = reason


def cvat_kind(manifest_type: str) -> str:
    """The CVAT function kind of a model.json ``type``; NotPublishable for others."""
    try:
        return CVAT_KINDS[manifest_type]
    except (KeyError, TypeError):
        known = ", ".join(CVAT_KINDS)
        raise NotPublishable("$.type", f"type {manifest_type!r} has no CVAT function kind: CVAT lists only "
                                       f"detector, interactor, tracker and reid functions (publishable types: "
                                       f"{known})") from None


def label_spec(manifest: ModelManifest) -> list[dict[str, Any]]:
    """CVAT's ``spec`` annotation (as a list; the caller JSON-encodes it) for ``manifest``."""
    kind_default = DEFAULT_LABEL_TYPES.get(manifest.type)
    cvat_kind(manifest.type)  # refuses other/unknown types first
    if manifest.type == "detector" and manifest.output.decoder is not None:
        kind_default = _decoder_label_type(manifest.output.decoder.name) or kind_default
    out = []
    for pos, label in enumerate(manifest.labels):
        label_type = label.type if label.type != "any" else (kind_default or "any")
        out.append(_label(label, label_type, f"$.labels[{pos}]"))
    return out


def _decoder_label_type(name: str) -> str | None:
    if name in DECODER_LABEL_TYPES:
        return DECODER_LABEL_TYPES[name]
    try:
        result = getattr(decoders.get(name), "result", "boxes")
    except KeyError:
        return None
    return RESULT_LABEL_TYPES.get(result)


def _label(label: Label, label_type: str, path: str) -> dict[str, Any]:
    item: dict[str, Any] = {"id": label.id, "name": label.name, "type": label_type,
                            "attributes": [_attribute(a) for a in label.attributes]}
    if label_type == "skeleton":
        if not label.sublabels or not label.svg:
            raise NotPublishable(path, f"label {label.name!r} is a skeleton in CVAT, which needs its points "
                                       f"(sublabels) and an svg drawing: declare the label with type "
                                       f"\"skeleton\", sublabels and svg")
        item["sublabels"] = [{"id": sub.id, "name": sub.name, "type": sub.type,
                              "attributes": [_attribute(a) for a in sub.attributes]} for sub in label.sublabels]
        item["svg"] = label.svg
    return item


def _attribute(attr: Attribute) -> dict[str, Any]:
    item: dict[str, Any] = {"name": attr.name, "input_type": attr.input_type,
                            "values": [str(v) for v in attr.values]}
    if attr.default_value is not None:
        item["default_value"] = str(attr.default_value)
    return item


# ---- kind annotations --------------------------------------------------------
# model.json's schema has no "interactor"/"tracker" objects yet, so they are read
# from the raw document defensively: wrong types are refused with their path.


def _section(manifest: ModelManifest, key: str) -> Mapping[str, Any]:
    value = manifest.raw.get(key, {})
    if not isinstance(value, Mapping):
        raise NotPublishable(f"$.{key}", f"must be an object, got {type(value).__name__}")
    return value


def _int(section: Mapping[str, Any], key: str, where: str, default: int, minimum: int) -> int:
    value = section.get(key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise NotPublishable(f"$.{where}.{key}", f"must be a whole number of at least {minimum}, got {value!r}")
    return value


def _flag(section: Mapping[str, Any], key: str, where: str) -> bool:
    value = section.get(key, False)
    if not isinstance(value, bool):
        raise NotPublishable(f"$.{where}.{key}", f"must be true or false, got {value!r}")
    return value


def _text(section: Mapping[str, Any], key: str, where: str) -> str:
    value = section.get(key, "")
    if not isinstance(value, str):
        raise NotPublishable(f"$.{where}.{key}", f"must be a string, got {value!r}")
    return value.strip()


def interactor_annotations(manifest: ModelManifest) -> dict[str, str]:
    """The interactor annotations CVAT reads, from model.json's ``interactor`` object.

    ``min_pos_points``/``min_neg_points`` are always given (CVAT's defaults 1 and
    -1 when absent); ``startswith_box``/``startswith_box_optional`` only when
    true (CVAT reads any non-empty string as true); ``help_message`` and
    ``animated_gif`` only when non-empty."""
    section = _section(manifest, "interactor")
    out = {
        "min_pos_points": str(_int(section, "min_pos_points", "interactor", DEFAULT_MIN_POS_POINTS, 0)),
        "min_neg_points": str(_int(section, "min_neg_points", "interactor", DEFAULT_MIN_NEG_POINTS, -1)),
    }
    for key in ("startswith_box", "startswith_box_optional"):
        if _flag(section, key, "interactor"):
            out[key] = "true"
    for key in ("help_message", "animated_gif"):
        text = _text(section, key, "interactor")
        if text:
            out[key] = text
    return out


def tracker_annotations(manifest: ModelManifest) -> dict[str, str]:
    """``supported_shape_types`` (comma list) from model.json's ``tracker`` object;
    default ``rectangle``. A list or a comma string is accepted."""
    section = _section(manifest, "tracker")
    value = section.get("supported_shape_types", list(DEFAULT_TRACKER_SHAPES))
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise NotPublishable("$.tracker.supported_shape_types", f"must be a list of shape types, got {value!r}")
    shapes = list(dict.fromkeys(v.strip() for v in value if v.strip()))
    if not shapes:
        raise NotPublishable("$.tracker.supported_shape_types",
                             "must name at least one shape type (CVAT skips a tracker with an empty list)")
    unknown = [s for s in shapes if s not in TRACKER_SHAPE_TYPES]
    if unknown:
        raise NotPublishable("$.tracker.supported_shape_types",
                             f"unknown shape types {unknown}; CVAT knows {', '.join(TRACKER_SHAPE_TYPES)}")
    return {"supported_shape_types": ",".join(shapes)}


def kind_annotations(manifest: ModelManifest) -> dict[str, str]:
    """The annotations specific to the model's CVAT kind (empty for detectors and reid)."""
    kind = cvat_kind(manifest.type)
    if kind == "interactor":
        return interactor_annotations(manifest)
    if kind == "tracker":
        return tracker_annotations(manifest)
    return {}
