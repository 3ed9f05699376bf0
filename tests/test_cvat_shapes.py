"""The CVAT shape builders (common/cvat.py): exact wire values."""

import json

import numpy as np
import pytest

from common import cvat
from common.manifest import Attribute, Label
from tests.cvat_answer import check_answer, cvat_stored_mask

# cvat-contract.md §2.4 / §4.3: a 3-wide, 4-high crop at the origin.
CROP = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]], bool)
LABELS = (Label(0, "car", "mask"), Label(1, "person"), Label(2, "kind", "tag",
          attributes=(Attribute("sure", "checkbox", ("false", "true")), Attribute("n", "number", ("0", "9", "1")))),
          Label(3, "body", "skeleton", sublabels=(Label(0, "head", "points"), Label(1, "foot", "points")), svg="<g/>"))


def test_the_contract_mask_example_is_reproduced_exactly():
    item = cvat.mask("car", CROP, (0, 0, 2, 3), 0.99)
    assert item["mask"] == [255, 255, 0, 0, 255, 255, 0, 0, 255, 255, 0, 0, 0, 0, 2, 3]  # CVAT's canned answer
    assert cvat_stored_mask(item) == [0, 2, 2, 2, 2, 2, 2, 0, 0, 2, 3]  # what CVAT stores from it
    assert cvat.mask_rle_points(CROP) == [0, 2, 2, 2, 2, 2, 2, 0, 0, 2, 3]
    assert item["type"] == "mask" and item["confidence"] == "0.9900"
    check_answer([item], LABELS)
    json.dumps(item)


def test_rle_starts_with_a_background_run_and_round_trips():
    assert cvat.rle_encode(np.array([[0, 0, 1], [1, 1, 0]])) == [2, 3, 1]
    assert cvat.rle_encode(np.ones((2, 2))) == [0, 4]
    assert cvat.rle_encode(np.zeros((1, 3))) == [3]
    rng = np.random.default_rng(7)
    bitmap = rng.random((13, 17)) > 0.6
    np.testing.assert_array_equal(cvat.rle_decode(cvat.rle_encode(bitmap), (13, 17)), bitmap)
    back, box = cvat.parse_mask_rle_points(cvat.mask_rle_points(bitmap, (5, 6)))
    np.testing.assert_array_equal(back, bitmap)
    assert box == (5, 6, 21, 18)
    with pytest.raises(ValueError, match="sum to 5"):
        cvat.rle_decode([2, 3], (2, 3))
    assert all(type(v) is int for v in cvat.rle_encode(bitmap))


def test_mask_crop_must_fill_its_inclusive_box():
    with pytest.raises(ValueError, match="does not fill the inclusive box"):
        cvat.mask("car", CROP, (0, 0, 3, 3), 0.5)


def test_mask_polygon_follows_the_largest_part_and_thin_parts_get_a_rectangle():
    bitmap = np.zeros((6, 8), bool)
    bitmap[1:4, 1:4] = True  # a 3x3 block
    bitmap[5, 6] = True  # a lone pixel, smaller
    np.testing.assert_array_equal(cvat.mask_polygon(bitmap, (10, 20)), [[11, 21], [11, 23], [13, 23], [13, 21]])
    line = np.zeros((3, 5), bool)
    line[1, :] = True
    np.testing.assert_array_equal(cvat.mask_polygon(line), [[0, 1], [5, 1], [5, 2], [0, 2]])
    with pytest.raises(ValueError, match="no pixel"):
        cvat.mask_polygon(np.zeros((2, 2)))


@pytest.mark.parametrize("xy, expected", [
    ([[0, 0], [4, 0], [4, 0], [4, 3], [0, 0]], [[4, 0], [4, 3], [0, 0]]),  # repeats and closing point dropped
    ([[0, 0], [1, 1], [2, 2]], None),  # collinear: no area
    ([[0, 0], [1, 1], [0, 0], [1, 1]], None),  # two distinct vertices
    ([[0, 0], [0.001, 0], [3, 3], [0, 3]], [[0, 0], [3, 3], [0, 3]]),  # equal once rounded to 2 decimals
])
def test_clean_polygon(xy, expected):
    out = cvat.clean_polygon(np.array(xy, float))
    assert (out is None) if expected is None else out.tolist() == expected


def test_tag_rectangle_rotation_points_and_attribute_strings():
    tag = cvat.tag("kind", 0.123456, {"sure": True, "n": 3.0})
    assert tag == {"label": "kind", "type": "tag", "confidence": "0.1235",
                   "attributes": [{"name": "sure", "value": "true"}, {"name": "n", "value": "3"}]}
    rect = cvat.rectangle("person", np.array([1, 2, 3, 4], np.float32), 0.5, rotation=-30)
    assert rect["rotation"] == 330.0 and rect["points"] == [1.0, 2.0, 3.0, 4.0]
    assert "rotation" not in cvat.rectangle("person", [1, 2, 3, 4], 0.5, rotation=360)
    pts = cvat.points("person", np.array([[1.5, 2], [3, 4]]), 0.5)
    assert pts["points"] == [1.5, 2.0, 3.0, 4.0]
    check_answer([tag, rect, pts], LABELS)


def test_skeleton_elements_once_each_and_not_all_outside():
    head, foot = cvat.skeleton_point("head", (1, 2)), cvat.skeleton_point("foot", (3, 4), outside=True)
    item = cvat.skeleton("body", [head, foot], 0.8)
    assert item["elements"] == [{"label": "head", "type": "points", "points": [1.0, 2.0], "outside": False},
                                {"label": "foot", "type": "points", "points": [3.0, 4.0], "outside": True}]
    check_answer([item], LABELS)
    with pytest.raises(ValueError, match="every sublabel once"):
        cvat.skeleton("body", [head, head], 0.8)
    with pytest.raises(ValueError, match="every point is outside"):
        cvat.skeleton("body", [foot], 0.8)


def test_the_checker_catches_what_cvat_would_refuse():
    item = cvat.mask("car", CROP, (0, 0, 2, 3), 0.9)
    bad = [dict(item, label="truck"), dict(item, mask=item["mask"][:-5] + item["mask"][-4:]),
           dict(item, points=[1, 2, 3, 4, 5, 6]), cvat.skeleton("body", [cvat.skeleton_point("head", (1, 2))], 0.5),
           dict(cvat.rectangle("car", [0, 0, 2, 2], 0.5))]  # a rectangle for a mask label is dropped by CVAT
    for answer in bad:
        with pytest.raises(AssertionError):
            check_answer([answer], LABELS)
