"""semantic_segmentation: class maps from tiny constant ONNX models -> exact CVAT masks."""

from __future__ import annotations

import jsonschema
import numpy as np
import pytest

from common.decoders import DecodeContext, get
from common.errors import ModelConfigError
from common.manifest import parse_manifest
from common.pipeline import DetectorPipeline
from common.runtimes import load_runtime
from tests.cvat_answer import check_answer
from tests.synthetic_outputs import constant_outputs


def pipeline_for(tmp_path, outputs, decoder, labels, hw=(8, 8), mode="stretch", model_type="segmentation",
                 threshold=0.5):
    manifest = parse_manifest({
        "name": "seg", "version": "1.0.0", "framework": "onnx", "type": model_type, "file_name": "model.onnx",
        "labels": labels, "input": {"shape": [1, 3, *hw], "preprocessing": {"resize": {"mode": mode}}},
        "output": {"decoder": decoder, "score_threshold": threshold}})
    path = tmp_path / "model.onnx"
    constant_outputs(outputs, hw, path=path)
    return DetectorPipeline(manifest, load_runtime("onnxruntime", path))


def crop_of(item):
    x1, y1, x2, y2 = item["mask"][-4:]
    return np.array(item["mask"][:-4]).reshape(y2 - y1 + 1, x2 - x1 + 1) // 255, [x1, y1, x2, y2]


# Classes per pixel of a 4x4 map: 0 background, an L of class 1, a 2-pixel bar and a lone pixel of class 2.
CLASSES = np.array([[0, 1, 0, 0],
                    [0, 1, 1, 0],
                    [0, 0, 0, 0],
                    [2, 2, 0, 2]])


def scores_for(classes, n=3):
    return (np.arange(n)[:, None, None] == classes[None]).astype(np.float32)[None] * 0.8 + 0.1


def test_argmax_map_gives_one_exact_mask_per_region_on_an_upscaled_image(tmp_path):
    labels = [{"id": 1, "name": "road", "type": "mask"}, {"id": 2, "name": "car", "type": "mask"}]
    pipe = pipeline_for(tmp_path, {"logits": scores_for(CLASSES)}, {"name": "semantic_segmentation"}, labels)
    answer = check_answer(pipe(np.zeros((8, 8, 3), np.uint8)), pipe.manifest.labels)  # 2x the 4x4 map
    assert [(a["label"], a["confidence"]) for a in answer] == [("road", "0.9000"), ("car", "0.9000"),
                                                               ("car", "0.9000")]
    road, bar, dot = answer
    crop, box = crop_of(road)
    assert box == [2, 0, 5, 3]
    np.testing.assert_array_equal(crop, np.kron([[1, 0], [1, 1]], np.ones((2, 2), int)))
    # the outline through the centres of its border pixels
    assert road["points"] == [2.0, 0.0, 2.0, 3.0, 5.0, 3.0, 5.0, 2.0, 4.0, 2.0, 3.0, 1.0, 3.0, 0.0]
    assert crop_of(bar)[1] == [0, 6, 3, 7] and crop_of(bar)[0].all()
    assert crop_of(dot)[1] == [6, 6, 7, 7] and crop_of(dot)[0].all()
    assert bar["points"] == [0.0, 6.0, 0.0, 7.0, 3.0, 7.0, 3.0, 6.0]


def test_class_regions_mode_and_min_area(tmp_path):
    labels = [{"id": 1, "name": "road", "type": "mask"}, {"id": 2, "name": "car", "type": "mask"}]
    decoder = {"name": "semantic_segmentation", "regions": "class", "ignore_classes": [1]}
    answer = pipeline_for(tmp_path, {"m": scores_for(CLASSES)}, decoder, labels)(np.zeros((4, 4, 3), np.uint8))
    [car] = answer
    crop, box = crop_of(car)
    assert box == [0, 3, 3, 3] and crop.tolist() == [[1, 1, 0, 1]]
    decoder = {"name": "semantic_segmentation", "min_area": 2}
    answer = pipeline_for(tmp_path, {"m": scores_for(CLASSES)}, decoder, labels)(np.zeros((4, 4, 3), np.uint8))
    assert [(a["label"], a["mask"][-4:]) for a in answer] == [("road", [1, 0, 2, 1]), ("car", [0, 3, 1, 3])]


def test_probability_map_with_one_class_like_selfie_segmentation(tmp_path):
    # [1, h, w, 1] person probability, as MediaPipe's selfie model gives; one row shown, rows alike.
    row = [0.0, 0.6, 1.0, 1.0, 0.2, 0.0, 0.0, 0.0]
    prob = np.tile(np.array(row, np.float32), (4, 1))[None, :, :, None]
    decoder = {"name": "semantic_segmentation", "mode": "probability", "threshold": 0.5}
    pipe = pipeline_for(tmp_path, {"activation_10": prob}, decoder, ["person"], hw=(4, 8))
    same = check_answer(pipe(np.zeros((4, 8, 3), np.uint8)), pipe.manifest.labels)
    assert [crop_of(a) for a in same][0][1] == [1, 0, 3, 3]  # map pixels over 0.5, nothing more
    [double] = check_answer(pipe(np.zeros((8, 16, 3), np.uint8)), pipe.manifest.labels)
    # At 2x the probabilities are interpolated: image pixel 2 sits between 0.0 and 0.6 (0.45, out),
    # pixel 3 between 0.6 and 1.0 (0.7, in), pixel 7 between 1.0 and 0.2 (0.8, in), pixel 8 (0.4, out).
    crop, box = crop_of(double)
    assert box == [3, 0, 7, 7] and crop.all()
    assert double["confidence"] == "0.8667"  # mean of 0.6, 1.0, 1.0


def test_class_map_mode_and_layouts():
    info = get("semantic_segmentation")
    ctx = DecodeContext((4, 4), 0.5, 3)
    for params, value in [({"mode": "class_map"}, CLASSES[None].astype(np.int64)),
                          ({"mode": "class_map"}, CLASSES[None, :, :, None].astype(np.float32)),
                          ({}, scores_for(CLASSES)),
                          ({"layout": "NHWC"}, np.moveaxis(scores_for(CLASSES), 1, -1)),
                          ({}, np.moveaxis(scores_for(CLASSES), 1, -1)),  # auto: the axis of 3 labels
                          ({"activation": "softmax"}, scores_for(CLASSES) * 10)]:
        jsonschema.Draft7Validator(info.params_schema).validate(params)
        dets = info.decode({"out": value}, ctx, params)
        assert dets.class_ids.tolist() == [0, 1, 2, 2], params  # background is a class like any other here
        np.testing.assert_array_equal(dets.boxes[1], [1, 0, 3, 2])
    with pytest.raises(ModelConfigError, match="class axis"):
        info.decode({"out": np.zeros((1, 4, 4, 4), np.float32)}, DecodeContext((4, 4), 0.5), {})


def test_a_segmentation_model_needs_a_mask_decoder(tmp_path):
    with pytest.raises(ModelConfigError, match="decoder 'yolo' gives boxes, type 'segmentation' needs masks: "
                                               "use one of mask_rcnn, semantic_segmentation, yolo_seg"):
        pipeline_for(tmp_path, {"m": scores_for(CLASSES)}, {"name": "yolo"}, ["a"])


def test_empty_map_answers_nothing(tmp_path):
    labels = [{"id": 1, "name": "road", "type": "mask"}]
    pipe = pipeline_for(tmp_path, {"m": scores_for(np.zeros((4, 4), int), 2)}, {"name": "semantic_segmentation"},
                        labels)
    assert pipe(np.zeros((8, 8, 3), np.uint8)) == []
