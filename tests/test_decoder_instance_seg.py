"""Instance masks (mask_rcnn, yolo_seg) from tiny constant ONNX models -> exact CVAT masks."""

from __future__ import annotations

import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.errors import ModelConfigError
from tests.cvat_answer import check_answer
from tests.test_decoder_segmentation import crop_of, pipeline_for

LABELS = [{"id": 1, "name": "cat", "type": "mask"}, {"id": 2, "name": "dog", "type": "mask"}]


def rcnn_outputs(masks):
    return {"boxes": np.array([[8, 8, 36, 22], [40, 40, 60, 60]], np.float32),
            "labels": np.array([1, 2], np.int64),
            "scores": np.array([0.9, 0.3], np.float32),
            "masks": masks}


def corner_mask():
    """28x28: the left half, below the first quarter."""
    m = np.zeros((28, 28), np.float32)
    m[7:, :14] = 1.0
    return m


def test_mask_rcnn_28x28_masks_are_resized_into_their_box(tmp_path):
    masks = np.stack([corner_mask(), np.ones((28, 28), np.float32)])[:, None]  # [N, 1, 28, 28]
    pipe = pipeline_for(tmp_path, rcnn_outputs(masks), {"name": "mask_rcnn"}, LABELS, hw=(64, 64))
    # 128x128 picture stretched to 64x64: the box [8, 8, 36, 22] is [16, 16, 72, 44] on it.
    [cat] = check_answer(pipe(np.zeros((128, 128, 3), np.uint8)), pipe.manifest.labels)
    crop, box = crop_of(cat)
    # mask column 13|14 falls on image x 44; row 6|7 on image y 23 (each mask row is half an image pixel)
    assert box == [16, 23, 43, 43] and crop.shape == (21, 28) and crop.all()
    assert cat["points"] == [16.0, 23.0, 16.0, 43.0, 43.0, 43.0, 43.0, 23.0]
    low = pipe(np.zeros((128, 128, 3), np.uint8), 0.2)
    assert [a["label"] for a in low] == ["cat", "dog"]
    assert crop_of(low[1])[1] == [80, 80, 119, 119]  # all ones: exactly the box's pixels


def test_mask_rcnn_per_class_masks_pick_the_class_channel(tmp_path):
    masks = np.zeros((2, 3, 28, 28), np.float32)
    masks[0, 1] = corner_mask()  # class 1's channel of row 0
    masks[0, 2] = 1.0  # the other classes' channels must not be used
    masks[0, 0] = 0.25
    pipe = pipeline_for(tmp_path, rcnn_outputs(masks), {"name": "mask_rcnn"}, LABELS, hw=(64, 64))
    [cat] = pipe(np.zeros((64, 64, 3), np.uint8))
    assert crop_of(cat)[1] == [8, 12, 21, 21]
    shifted = get("mask_rcnn").decode(rcnn_outputs(masks), DecodeContext((64, 64), 0.5), {"mask_class_offset": 1})
    np.testing.assert_array_equal(shifted.masks[0], 0.25)  # class 1 -> channel 0
    with pytest.raises(ModelConfigError, match="class 1 has no mask channel"):
        get("mask_rcnn").decode(rcnn_outputs(masks), DecodeContext((64, 64), 0.5), {"mask_class_offset": 2})


def test_mask_rcnn_score_column_and_whole_input_masks(tmp_path):
    outputs = rcnn_outputs(None)
    outputs["boxes"] = np.concatenate([outputs.pop("boxes"), outputs.pop("scores")[:, None]], 1)[None]  # [1, N, 5]
    full = np.zeros((2, 1, 64, 64), np.float32)
    full[0, 0, 10:20, 0:64] = 0.9  # torchvision pastes into the whole input; the box cuts it
    outputs["masks"] = full
    decoder = {"name": "mask_rcnn", "masks_cover": "input"}
    [cat] = pipeline_for(tmp_path, outputs, decoder, LABELS, hw=(64, 64))(np.zeros((64, 64, 3), np.uint8))
    assert crop_of(cat)[1] == [8, 10, 35, 19]


def yolo_seg_outputs():
    """Input 64x64; prototypes at 16x16 (4 input pixels each); M = 2, C = 2, N = 3 candidates."""
    protos = np.full((1, 2, 16, 16), -10.0, np.float32)
    protos[0, 0, 4:8, 2:6] = 10.0  # x 8..24, y 16..32 in input pixels
    protos[0, 1] = 10.0
    rows = np.array([
        [24, 24, 16, 16, 0.1, 0.9, 1.0, 0.0],  # box [16, 16, 32, 32], class 1, prototype 0
        [25, 24, 16, 16, 0.1, 0.8, 1.0, 0.0],  # overlaps row 0: NMS drops it
        [50, 50, 8, 8, 0.6, 0.0, 0.0, 1.0],  # box [46, 46, 54, 54], class 0, prototype 1 (everywhere)
    ], np.float32)
    return {"output0": rows.T[None], "output1": protos}


def test_yolo_seg_prototypes_and_coefficients(tmp_path):
    labels = [{"id": 0, "name": "cat", "type": "mask"}, {"id": 1, "name": "dog", "type": "mask"}]
    pipe = pipeline_for(tmp_path, yolo_seg_outputs(), {"name": "yolo_seg"}, labels, hw=(64, 64))
    dog, cat = check_answer(pipe(np.zeros((64, 64, 3), np.uint8)), pipe.manifest.labels)
    assert (dog["label"], dog["confidence"], cat["label"], cat["confidence"]) == ("dog", "0.9000", "cat", "0.6000")
    crop, box = crop_of(dog)
    # prototype column 5|6 lies on input x 24 (bilinear 0.625 vs 0.375 around it); the box cuts x < 16
    assert box == [16, 16, 23, 31] and crop.all()
    assert crop_of(cat)[1] == [46, 46, 53, 53]
    # a 2x picture: the same mask, twice the pixels
    dog2, _ = pipe(np.zeros((128, 128, 3), np.uint8))
    assert crop_of(dog2)[1] == [32, 32, 47, 63]


def test_yolo_seg_rows_must_hold_the_coefficients():
    with pytest.raises(ModelConfigError, match="cannot hold a box, classes and 2 mask coefficients"):
        get("yolo_seg").decode({"h": np.zeros((1, 6, 10), np.float32), "p": np.zeros((1, 2, 4, 4), np.float32)},
                               DecodeContext((16, 16), 0.5), {"output": "h", "protos": "p"})
