"""fit / to_tensor / prepare / Transform, checked exactly and through synthetic ONNX models."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import ModelConfigError
from common.manifest import InputSpec, Resize
from common.preprocess import Transform, fit, prepare, to_tensor
from common.runtimes.onnxruntime_engine import OnnxRuntimeEngine
from tests import synthetic_models as sm

PAD = 114.0
SCALE = 1 / 255


def _content(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random RGB whose channel 0 stays in 150..255, never the pad value, even after resizing."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[:, :, 0] = rng.integers(150, 256, size=(h, w), dtype=np.uint8)
    return img


def _engine(tmp_path: Path, name: str, data: bytes) -> OnnxRuntimeEngine:
    path = tmp_path / name
    path.write_bytes(data)
    return OnnxRuntimeEngine(path, {}, "f32", "CPU", 1)


def _yolo_box(output: np.ndarray) -> np.ndarray:
    cx, cy, bw, bh, score = output[0, :, 0].astype(np.float64)
    assert score == 1.0
    return np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])


# (image h, w) -> (target h, w): expected content box in the input and the Transform
LETTERBOX_CASES = [
    # 3775 wide x 1571 high into 640x640: r = 640/3775, new 640x266, pad_y (640-266)//2 = 187
    ((1571, 3775), (640, 640), [0, 187, 640, 453]),
    # 1571 wide x 3775 high into 640x640: new 266x640, pad_x 187
    ((3775, 1571), (640, 640), [187, 0, 453, 640]),
    # 3775 x 1571 into 640 wide x 480 high: r = 640/3775, new 640x266, pad_y (480-266)//2 = 107
    ((1571, 3775), (480, 640), [0, 107, 640, 373]),
    # 1571 x 3775 into 640 wide x 480 high: r = 480/3775, new round(199.75)=200 x 480, pad_x 220
    ((3775, 1571), (480, 640), [220, 0, 420, 480]),
    # upscaling a small odd image: 37 wide x 23 high into 640x640: r = 640/37, new 640 x round(397.8)=398, pad 121
    ((23, 37), (640, 640), [0, 121, 640, 519]),
]


@pytest.mark.parametrize("image_hw,target_hw,content", LETTERBOX_CASES)
def test_letterbox_round_trip_through_onnx(tmp_path, image_hw, target_hw, content):
    h, w = image_hw
    th, tw = target_hw
    image = _content(h, w)
    spec = InputSpec(resize=Resize(mode="letterbox", pad_value=PAD), scale=SCALE)
    tensor, t = prepare(image, spec, target_hw)
    assert tensor.shape == (1, 3, th, tw) and tensor.dtype == np.float32 and tensor.flags.c_contiguous

    new_w, new_h = content[2] - content[0], content[3] - content[1]
    assert t == Transform(new_w / w, new_h / h, float(content[0]), float(content[1]))

    pad_norm = np.float32(PAD * SCALE)
    engine = _engine(tmp_path, "det.onnx", sm.content_box_detector(th, tw, float(pad_norm)))
    box_in = _yolo_box(engine.run({"images": tensor})["output0"])
    np.testing.assert_array_equal(box_in, content)  # the detector saw exactly the content rectangle

    np.testing.assert_allclose(t.boxes_to_image(box_in[None]), [[0, 0, w, h]], atol=1e-3)
    corners_in = np.array([[content[0], content[1]], [content[2], content[3]], [content[2], content[1]]])
    np.testing.assert_allclose(t.points_to_image(corners_in), [[0, 0], [w, h], [w, 0]], atol=1e-3)
    # the pure Transform is an exact inverse of its forward map
    pts = np.array([[0.0, 0.0], [w, h], [w * 0.37, h * 0.81], [1.5, h - 2.25]])
    np.testing.assert_allclose(t.points_to_image(t.points_to_input(pts)), pts, atol=1e-9)
    # the pad band around the content is exactly the pad value
    if content[1] > 0:
        assert np.all(tensor[0, :, : content[1], :] == pad_norm)
        assert np.all(tensor[0, :, content[3]:, :] == pad_norm)
    if content[0] > 0:
        assert np.all(tensor[0, :, :, : content[0]] == pad_norm)
        assert np.all(tensor[0, :, :, content[2]:] == pad_norm)


def test_letterbox_pad_value_and_uint8_fit():
    image = np.full((10, 20, 3), 7, np.uint8)
    out, t = fit(image, Resize(mode="letterbox", pad_value=0.6), (20, 20))
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert t == Transform(1.0, 1.0, 0.0, 5.0)
    assert out[0, 0].tolist() == [1, 1, 1]  # 0.6 rounds to 1
    assert out[5, 0].tolist() == [7, 7, 7]
    assert out[14, 19].tolist() == [7, 7, 7] and out[15, 19].tolist() == [1, 1, 1]


def test_boxes_and_points_shapes():
    t = Transform(0.5, 0.25, 10.0, 20.0)
    boxes = np.array([[10, 20, 60, 45], [12, 22, 14, 24]], np.float32)
    np.testing.assert_allclose(t.boxes_to_image(boxes), [[0, 0, 100, 100], [4, 8, 8, 16]])
    pts = np.array([[[10, 20], [15, 25]]])  # (1, 2, 2)
    np.testing.assert_allclose(t.points_to_image(pts), [[[0, 0], [10, 20]]])
    with pytest.raises(ValueError):
        t.boxes_to_image(np.zeros((2, 5)))


def test_stretch(tmp_path):
    image = _content(50, 100)
    spec = InputSpec(resize=Resize(mode="stretch"), scale=SCALE)
    tensor, t = prepare(image, spec, (60, 40))
    assert tensor.shape == (1, 3, 60, 40)
    assert t == Transform(0.4, 1.2, 0.0, 0.0)
    np.testing.assert_allclose(t.points_to_image([[40, 60], [20, 30]]), [[100, 50], [50, 25]])
    engine = _engine(tmp_path, "det.onnx", sm.content_box_detector(60, 40, float(np.float32(PAD * SCALE))))
    box_in = _yolo_box(engine.run({"images": tensor})["output0"])
    np.testing.assert_array_equal(box_in, [0, 0, 40, 60])
    np.testing.assert_allclose(t.boxes_to_image(box_in[None]), [[0, 0, 100, 50]])


def test_stretch_same_size_is_untouched():
    image = _content(30, 40)
    out, t = fit(image, Resize(mode="stretch"), (30, 40))
    assert out is image and t == Transform(1.0, 1.0, 0.0, 0.0)


def test_none_pads_to_multiple_of(tmp_path):
    image = _content(50, 70)
    spec = InputSpec(resize=Resize(mode="none", multiple_of=32, pad_value=PAD), scale=SCALE)
    fitted, t = fit(image, spec.resize, None)
    assert fitted.shape == (64, 96, 3)
    assert t == Transform(1.0, 1.0, 0.0, 0.0)
    np.testing.assert_array_equal(fitted[:50, :70], image)
    assert np.all(fitted[50:] == 114) and np.all(fitted[:, 70:] == 114)
    tensor, _ = prepare(image, spec, None)
    engine = _engine(tmp_path, "det.onnx", sm.content_box_detector(64, 96, float(np.float32(PAD * SCALE))))
    np.testing.assert_array_equal(_yolo_box(engine.run({"images": tensor})["output0"]), [0, 0, 70, 50])
    # already a multiple: returned as is
    same, _ = fit(_content(64, 96), Resize(mode="none", multiple_of=32), None)
    assert same.shape == (64, 96, 3)


def test_input_image_not_modified():
    image = _content(41, 67)
    before = image.copy()
    prepare(image, InputSpec(resize=Resize(width=64, height=64), scale=SCALE, color_order="BGR"))
    prepare(image, InputSpec(resize=Resize(mode="none", multiple_of=16), layout="NHWC", dtype="uint8"))
    np.testing.assert_array_equal(image, before)


def _flat(r: int, g: int, b: int, h: int = 6, w: int = 5) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = (r, g, b)
    return img


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("order,expected", [("RGB", (10.0, 30.0)), ("BGR", (30.0, 10.0))])
def test_color_order_through_probe(tmp_path, layout, order, expected):
    engine = _engine(tmp_path, "probe.onnx", sm.channel_probe(6, 5, layout=layout))
    spec = InputSpec(resize=Resize(mode="none"), color_order=order, layout=layout)
    tensor, _ = prepare(_flat(10, 20, 30), spec)
    out = engine.run({"images": tensor})
    assert (out["mean0"][0], out["mean2"][0]) == expected


def test_nhwc_layout_exact():
    image = _content(4, 6)
    tensor = to_tensor(image, InputSpec(layout="NHWC", scale=SCALE))
    assert tensor.shape == (1, 4, 6, 3) and tensor.flags.c_contiguous
    assert tensor[0, 2, 5].tolist() == pytest.approx((image[2, 5] / 255).tolist(), abs=1e-7)
    bgr = to_tensor(image, InputSpec(layout="NHWC", color_order="BGR"))
    np.testing.assert_array_equal(bgr[0], image[:, :, ::-1].astype(np.float32))
    nchw = to_tensor(image, InputSpec(layout="NCHW", color_order="BGR"))
    np.testing.assert_array_equal(nchw[0, 0], image[:, :, 2])
    np.testing.assert_array_equal(nchw[0, 2], image[:, :, 0])


IMAGENET = dict(scale=SCALE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_normalisation_values_exact(layout):
    image = np.array([[[255, 128, 0], [0, 255, 128]]], np.uint8)  # 1 x 2
    tensor = to_tensor(image, InputSpec(layout=layout, **IMAGENET))
    chw = tensor[0] if layout == "NCHW" else tensor[0].transpose(2, 0, 1)
    # (p / 255 - mean) / std, by hand
    expected = np.array([
        [[2.2489082969432315, -2.1179039301310043]],  # R: 255, 0
        [[0.20518207282913165, 2.4285714285714284]],  # G: 128, 255
        [[-1.8044444444444445, 0.42649237472766865]],  # B: 0, 128
    ])
    np.testing.assert_allclose(chw, expected, rtol=1e-6)
    assert tensor.dtype == np.float32


def test_normalisation_follows_tensor_channel_order():
    """mean/std belong to the tensor's channels, i.e. after the BGR swap (as in Caffe-style models)."""
    image = np.array([[[10, 20, 30]]], np.uint8)
    spec = InputSpec(color_order="BGR", mean=(103.0, 116.0, 123.0), std=(1.0, 2.0, 4.0))
    tensor = to_tensor(image, spec)
    np.testing.assert_array_equal(tensor[0, :, 0, 0], [(30 - 103) / 1, (20 - 116) / 2, (10 - 123) / 4])


def test_single_value_mean_std_broadcast_and_bad_lengths():
    image = np.array([[[0, 100, 200]]], np.uint8)
    tensor = to_tensor(image, InputSpec(scale=0.5, mean=(10.0,), std=(2.0,)))
    np.testing.assert_array_equal(tensor[0, :, 0, 0], [-5.0, 20.0, 45.0])
    with pytest.raises(ModelConfigError, match="mean"):
        to_tensor(image, InputSpec(mean=(1.0, 2.0)))


def test_uint8_dtype_is_plain_pixels():
    image = _content(40, 30)
    spec = InputSpec(dtype="uint8", resize=Resize(width=32, height=32, pad_value=PAD))
    tensor, t = prepare(image, spec)
    assert tensor.dtype == np.uint8 and tensor.shape == (1, 3, 32, 32)
    fitted, t2 = fit(image, spec.resize, None)
    assert t == t2 == Transform(24 / 30, 32 / 40, 4.0, 0.0)
    np.testing.assert_array_equal(tensor[0], fitted.transpose(2, 0, 1))
    assert np.all(tensor[0, :, :, :4] == 114) and np.all(tensor[0, :, :, 28:] == 114)


def test_integer_dtype_with_normalisation_rounds_and_clips():
    image = np.array([[[0, 100, 255]]], np.uint8)
    tensor = to_tensor(image, InputSpec(dtype="int8", mean=(128.0, 128.0, 128.0)))
    assert tensor.dtype == np.int8
    assert tensor[0, :, 0, 0].tolist() == [-128, -28, 127]


def test_float16_dtype():
    image = np.array([[[0, 51, 255]]], np.uint8)
    tensor = to_tensor(image, InputSpec(dtype="float16", scale=SCALE))
    assert tensor.dtype == np.float16
    np.testing.assert_allclose(tensor[0, :, 0, 0].astype(np.float64), [0.0, 0.2, 1.0], atol=1e-3)


def test_float_image_input():
    image = np.array([[[0.5, 1.0, 2.0]]], np.float32)
    tensor = to_tensor(image, InputSpec(scale=2.0, mean=(1.0, 1.0, 1.0)))
    np.testing.assert_array_equal(tensor[0, :, 0, 0], [0.0, 1.0, 3.0])


def test_target_size_precedence():
    image = _content(20, 20)
    # target_hw wins over resize.height/width
    tensor, _ = prepare(image, InputSpec(resize=Resize(width=8, height=8)), (16, 12))
    assert tensor.shape == (1, 3, 16, 12)
    tensor, _ = prepare(image, InputSpec(resize=Resize(width=8, height=10)))
    assert tensor.shape == (1, 3, 10, 8)
    # then the static spatial dims of InputSpec.shape
    tensor, _ = prepare(image, InputSpec(shape=(1, 3, 24, 16)))
    assert tensor.shape == (1, 3, 24, 16)
    tensor, _ = prepare(image, InputSpec(shape=(1, 24, 16, 3), layout="NHWC"))
    assert tensor.shape == (1, 24, 16, 3)
    with pytest.raises(ModelConfigError, match="needs the input height and width"):
        prepare(image, InputSpec(shape=(None, 3, None, None)))


def test_prepare_speed_1080p_to_640_letterbox():
    image = _content(1080, 1920)
    spec = InputSpec(resize=Resize(width=640, height=640), scale=SCALE)
    prepare(image, spec)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        prepare(image, spec)
        times.append(time.perf_counter() - start)
    # a few ms on one core; generous bound for busy CI machines
    assert sorted(times)[len(times) // 2] < 0.03


@pytest.mark.parametrize("layout,shape", [("NCHW", (1, 1, 2, 3)), ("NHWC", (1, 2, 3, 1))])
def test_single_channel_input_gets_luma(layout, shape):
    image = np.zeros((2, 3, 3), np.uint8)
    image[0, 0] = (255, 0, 0)
    image[0, 1] = (0, 255, 0)
    image[0, 2] = (0, 0, 255)
    image[1] = (200, 200, 200)
    spec = InputSpec(shape=shape, layout=layout, color_order="BGR", mean=(100.0, 0.0, 0.0), std=(2.0, 1.0, 1.0))
    tensor = to_tensor(image, spec)
    assert tensor.shape == shape
    grey = tensor[0, 0] if layout == "NCHW" else tensor[0, :, :, 0]
    # BT.601 luma of red, green, blue (76, 150, 29) and grey 200; then (v - 100) / 2
    np.testing.assert_array_equal(grey, [[-12.0, 25.0, -35.5], [50.0, 50.0, 50.0]])
    raw = to_tensor(image, InputSpec(shape=shape, layout=layout, dtype="uint8"))
    assert raw.dtype == np.uint8 and raw.reshape(-1).tolist() == [76, 150, 29, 200, 200, 200]
