"""Which runtime input a model.json means, and the picture size it takes (common.model_input)."""

from __future__ import annotations

import numpy as np
import pytest

from common.errors import RuntimeLoadError
from common.manifest import InputSpec, Resize
from common.model_input import fixed_hw, pick_input, required_hw, tensor_hw
from common.runtimes import TensorInfo

F32 = np.dtype(np.float32)
IMAGES = TensorInfo("images", (1, 3, 320, 256), F32)
MASK = TensorInfo("mask", (1, 1, None, None), F32)


def test_pick_input_by_name_else_the_first():
    assert pick_input(InputSpec(), [IMAGES, MASK]) is IMAGES
    assert pick_input(InputSpec(name="mask"), [IMAGES, MASK]) is MASK
    with pytest.raises(RuntimeLoadError) as info:
        pick_input(InputSpec(name="image"), [IMAGES, MASK])
    assert str(info.value) == "model.json input.name 'image' is not an input of the model (inputs: images, mask)"


def test_input_size_from_resize_then_static_dims_in_the_layout():
    assert fixed_hw(InputSpec(resize=Resize(width=640, height=480)), IMAGES) == (480, 640)
    assert fixed_hw(InputSpec(), IMAGES) == (320, 256)
    assert fixed_hw(InputSpec(layout="NHWC"), TensorInfo("x", (1, 300, 200, 3), F32)) == (300, 200)
    assert fixed_hw(InputSpec(), MASK) is None
    assert fixed_hw(InputSpec(resize=Resize(width=640)), TensorInfo("x", (1, 3), F32)) is None
    assert required_hw(InputSpec(), IMAGES) == (320, 256)
    with pytest.raises(RuntimeLoadError) as info:
        required_hw(InputSpec(), MASK)
    assert str(info.value) == ("cannot tell the input size of mask (1, 1, None, None): set "
                               "input.preprocessing.resize.width and .height in model.json")


def test_tensor_hw_reads_the_layout():
    assert tensor_hw(np.zeros((1, 3, 48, 64), np.float32), "NCHW") == (48, 64)
    assert tensor_hw(np.zeros((1, 48, 64, 3), np.float32), "NHWC") == (48, 64)
