"""A detector answer checked the way CVAT reads it (cvat-contract.md §1.3, §2.4).

:func:`check_answer` fails (AssertionError) on anything CVAT's lambda_manager
would crash on, drop or misread: labels not in the function's spec or of an
incompatible type, unknown shape types, points that are not flat plain
floats, masks whose raw crop does not fill their inclusive box, skeletons
without each sublabel exactly once, attribute values that are not strings,
answers ``json.dumps`` (default encoder) refuses. :func:`cvat_stored_mask`
does what CVAT does with a detector mask: RLE of the crop + the box.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from common.cvat import rle_encode
from common.manifest import Label

SHAPE_TYPES = ("rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton", "tag")


def _compatible(label_type: str, shape_type: str) -> bool:
    """CVAT's default mapping by type (§2.4 step 1), with the shape's type standing for the model label's."""
    if label_type == shape_type or {label_type, shape_type} == {"mask", "polygon"}:
        return True
    return label_type == "any" and shape_type != "skeleton"


def _flat_floats(values: Any, what: str) -> list[float]:
    assert isinstance(values, list), f"{what}: points must be a list, got {type(values).__name__}"
    assert all(type(v) is float for v in values), f"{what}: points must be plain floats: {values[:8]}"
    return values


def _attributes(item: dict, label: Label, what: str) -> None:
    if "attributes" not in item:
        return
    names = {a.name for a in label.attributes}
    for attr in item["attributes"]:
        assert set(attr) == {"name", "value"}, f"{what}: attribute keys {sorted(attr)}"
        assert attr["name"] in names, f"{what}: attribute {attr['name']!r} not declared"
        assert isinstance(attr["value"], str), f"{what}: attribute value {attr['value']!r} is not a string"


def check_item(item: dict, labels: dict[str, Label]) -> None:
    what = f"{item.get('type')} {item.get('label')!r}"
    assert isinstance(item.get("label"), str) and item["label"] in labels, f"{what}: label not in the spec"
    label = labels[item["label"]]
    shape_type = str(item.get("type", "")).lower()
    assert shape_type in SHAPE_TYPES, f"{what}: unknown type"
    assert _compatible(label.type, shape_type), f"{what}: label type {label.type!r} would drop it"
    if "confidence" in item:
        assert isinstance(item["confidence"], str) and 0.0 <= float(item["confidence"]) <= 1.0
    _attributes(item, label, what)
    if shape_type == "tag":
        return
    if "rotation" in item:
        assert shape_type in ("rectangle", "ellipse") and type(item["rotation"]) is float
    if shape_type == "skeleton":
        subs = {s.name: s for s in label.sublabels}
        elements = item["elements"]
        names = [e["label"] for e in elements]
        assert sorted(names) == sorted(subs), f"{what}: elements {names} != sublabels {sorted(subs)}"
        for element in elements:
            assert element["type"] == "points" and len(_flat_floats(element["points"], what)) == 2
            assert type(element.get("outside", False)) is bool
            _attributes(element, subs[element["label"]], what)
        assert not all(e.get("outside") for e in elements), f"{what}: every point outside (CVAT drops it)"
        return
    points = _flat_floats(item["points"], what)
    assert len(points) % 2 == 0 and points, what
    if shape_type == "rectangle":
        assert len(points) == 4 and points[0] < points[2] and points[1] < points[3], what
    elif shape_type in ("polygon", "mask"):
        xy = list(zip(points[0::2], points[1::2]))
        assert len(set(xy)) >= 3, f"{what}: polygon with fewer than 3 distinct vertices"
        assert all(a != b for a, b in zip(xy, xy[1:] + xy[:1])), f"{what}: repeated neighbours"
    if shape_type == "mask":
        mask = item["mask"]
        assert all(type(v) is int for v in mask), f"{what}: mask values must be ints"
        x1, y1, x2, y2 = mask[-4:]
        assert x2 >= x1 >= 0 and y2 >= y1 >= 0, f"{what}: mask box {mask[-4:]}"
        assert len(mask) == (x2 - x1 + 1) * (y2 - y1 + 1) + 4, f"{what}: crop does not fill its box"
        assert set(mask[:-4]) <= {0, 255} and 255 in mask[:-4], f"{what}: crop values {sorted(set(mask[:-4]))}"


def check_answer(answer: Any, labels: Sequence[Label]) -> list[dict]:
    """The answer, after every CVAT check passed."""
    json.dumps(answer)  # the default encoder: plain Python values only
    assert isinstance(answer, list), f"a detector answers a JSON array, got {type(answer).__name__}"
    by_name = {label.name: label for label in labels}
    for item in answer:
        assert isinstance(item, dict)
        check_item(item, by_name)
    return answer


def cvat_stored_mask(item: dict) -> list[int]:
    """What CVAT stores for a detector mask: RLE of the raw crop, then the box."""
    return rle_encode([v != 0 for v in item["mask"][:-4]]) + item["mask"][-4:]
