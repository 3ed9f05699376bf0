"""Tiny ONNX models with several constant outputs, for exact-value decoder tests.

:func:`constant_outputs` builds a model whose input is an image tensor and
whose outputs are the given arrays (float32 or int64), whatever the pixels:
each output is its constant plus a zero computed from the input's batch size,
so engines keep the input and the graph is a real one. The same opset and IR
version as tests/synthetic_models.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from onnx import TensorProto, helper

from tests.synthetic_models import _const, _finish, _image_input

_TYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}


def constant_outputs(outputs: Mapping[str, np.ndarray], input_hw: tuple[int, int], *, layout: str = "NCHW",
                     input_name: str = "images", path: str | Path | None = None) -> bytes:
    """Input ``input_name`` float32 [1, 3, h, w] (or NHWC); outputs = ``outputs``, in that order."""
    h, w = input_hw
    nodes = [
        helper.make_node("Shape", [input_name], ["in_shape"]),
        helper.make_node("Gather", ["in_shape", "b_idx"], ["n"], axis=0),
        helper.make_node("Mul", ["n", "zero_i"], ["z_i"]),  # int64 zero [1]
        helper.make_node("Cast", ["z_i"], ["z_f"], to=TensorProto.FLOAT),
    ]
    inits = [_const("b_idx", [0], np.int64), _const("zero_i", 0, np.int64)]
    infos = []
    for name, value in outputs.items():
        value = np.asarray(value)
        value = value.astype(np.int64 if value.dtype.kind in "iub" else np.float32)
        inits.append(_const(f"{name}_value", value, value.dtype))
        nodes.append(helper.make_node("Add", [f"{name}_value", "z_i" if value.dtype == np.int64 else "z_f"], [name]))
        infos.append(helper.make_tensor_value_info(name, _TYPES[value.dtype], list(value.shape)))
    graph = helper.make_graph(nodes, "constant_outputs", [_image_input(h, w, 1, layout, name=input_name)],
                              infos, inits)
    return _finish(graph, path)
