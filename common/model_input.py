"""The loaded model's input as model.json means it: which tensor, and at what picture size.

Every kind's pipeline (detector, interactor, tracker, reid) feeds one input
tensor of the runtime: :func:`pick_input` finds it (model.json ``input.name``,
else the first), :func:`fixed_hw` reads the height and width pictures are
fitted to (``resize.width``/``height``, else the static spatial dims of the
tensor in model.json's layout), :func:`tensor_hw` the size of a prepared
tensor. What a kind does when there is no fixed size is its own affair.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from common.errors import RuntimeLoadError
from common.manifest import InputSpec
from common.runtimes import TensorInfo


def pick_input(spec: InputSpec, inputs: Sequence[TensorInfo]) -> TensorInfo:
    """The runtime input named by model.json's ``input.name``; the first input when it names none."""
    if spec.name is None:
        return inputs[0]
    for info in inputs:
        if info.name == spec.name:
            return info
    names = ", ".join(i.name for i in inputs)
    raise RuntimeLoadError(f"model.json input.name {spec.name!r} is not an input of the model (inputs: {names})")


def fixed_hw(spec: InputSpec, info: TensorInfo) -> tuple[int, int] | None:
    """(height, width) from ``resize.width`` and ``.height``, else from the input's static
    spatial dimensions (NCHW or NHWC as model.json says); None when neither gives one."""
    if spec.resize.width and spec.resize.height:
        return spec.resize.height, spec.resize.width
    shape = info.shape
    if len(shape) == 4:
        h, w = (shape[2], shape[3]) if spec.layout == "NCHW" else (shape[1], shape[2])
        if h and w:
            return int(h), int(w)
    return None


def required_hw(spec: InputSpec, info: TensorInfo) -> tuple[int, int]:
    """:func:`fixed_hw`, or a RuntimeLoadError saying to set the size in model.json."""
    hw = fixed_hw(spec, info)
    if hw is None:
        raise RuntimeLoadError(f"cannot tell the input size of {info.name} {info.shape}: "
                               "set input.preprocessing.resize.width and .height in model.json")
    return hw


def tensor_hw(tensor: np.ndarray, layout: str) -> tuple[int, int]:
    """(height, width) of a prepared input tensor in ``layout`` (NCHW or NHWC)."""
    h, w = (tensor.shape[2], tensor.shape[3]) if layout == "NCHW" else (tensor.shape[1], tensor.shape[2])
    return int(h), int(w)
