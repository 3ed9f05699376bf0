"""Tiny ONNX models built with ``onnx.helper``, for exact-value tests.

Every builder returns the serialized model (bytes) and, when ``path`` is
given, also writes it there. Models use opset 17 and IR version 10, which
onnxruntime 1.32 and OpenVINO 2026.4 both read.

- :func:`content_box_detector`: a YOLOv8-style detector whose single box is
  the rectangle of input pixels differing from the pad value, i.e. exactly
  the letterboxed content.
- :func:`channel_probe`: the means of input channels 0 and 2 (RGB vs BGR).
- :func:`fixed_rows_detector` / :func:`nms_rows_detector`: constant outputs
  (NMS-in-graph style rows) that only depend on the input's shape.
- :func:`affine_model`: ``y = x * mul + add``, for engine parity and IR
  conversion (:func:`save_openvino_ir`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 10


def _finish(graph: onnx.GraphProto, path: str | Path | None) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="cvat-gdrive-runner-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def _const(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name=name)


def _image_input(h: int, w: int, batch: int | str, layout: str, dtype=TensorProto.FLOAT,
                 name: str = "images") -> onnx.ValueInfoProto:
    if layout == "NCHW":
        dims = [batch, 3, h, w]
    elif layout == "NHWC":
        dims = [batch, h, w, 3]
    else:
        raise ValueError(f"layout must be NCHW or NHWC, not {layout!r}")
    return helper.make_tensor_value_info(name, dtype, dims)


def _channel_plane(layout: str, channel: int, out: str, nodes: list, inits: list, src: str = "images") -> None:
    """Append nodes computing ``out`` = plane [H, W] of ``channel`` in batch item 0."""
    axis = 1 if layout == "NCHW" else 3
    idx = f"{out}_c_idx"
    inits.append(_const(idx, channel, np.int64))
    inits.append(_const(f"{out}_b_idx", 0, np.int64))
    nodes.append(helper.make_node("Gather", [src, idx], [f"{out}_bhw"], axis=axis))
    nodes.append(helper.make_node("Gather", [f"{out}_bhw", f"{out}_b_idx"], [out], axis=0))


def content_box_detector(h: int, w: int, pad_value_normalized: float, batch: int | str = 1,
                         layout: str = "NCHW", path: str | Path | None = None) -> bytes:
    """Input ``images`` float32 ([batch,3,h,w] or [batch,h,w,3]); output ``output0`` [1, 5, 1].

    The single YOLOv8-style prediction is (cx, cy, bw, bh, score=1.0) of the
    bounding box of the pixels of batch item 0 whose channel 0 differs from
    ``pad_value_normalized``, in input pixels with exclusive right/bottom
    edges (x2 = last differing column + 1). When every pixel equals the pad
    value the box is degenerate (x1 = y1 = 1e9, x2 = y2 = -1).
    """
    nodes: list = []
    inits: list = [
        _const("pad", pad_value_normalized),
        _const("ramp_x", np.arange(w)),
        _const("ramp_x1", np.arange(w) + 1),
        _const("ramp_y", np.arange(h)),
        _const("ramp_y1", np.arange(h) + 1),
        _const("big", 1e9),
        _const("minus1", -1.0),
        _const("half", 0.5),
        _const("one", [1.0]),
        _const("zero", 0.0),
        _const("out_shape", [1, 5, 1], np.int64),
    ]
    _channel_plane(layout, 0, "plane", nodes, inits)
    nodes += [
        helper.make_node("Equal", ["plane", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["differs"]),
        helper.make_node("Cast", ["differs"], ["differs_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMax", ["differs_f"], ["col_any"], axes=[0], keepdims=0),  # [w]
        helper.make_node("ReduceMax", ["differs_f"], ["row_any"], axes=[1], keepdims=0),  # [h]
        helper.make_node("Greater", ["col_any", "zero"], ["col_hit"]),
        helper.make_node("Greater", ["row_any", "zero"], ["row_hit"]),
        helper.make_node("Where", ["col_hit", "ramp_x", "big"], ["x1_cand"]),
        helper.make_node("Where", ["col_hit", "ramp_x1", "minus1"], ["x2_cand"]),
        helper.make_node("Where", ["row_hit", "ramp_y", "big"], ["y1_cand"]),
        helper.make_node("Where", ["row_hit", "ramp_y1", "minus1"], ["y2_cand"]),
        helper.make_node("ReduceMin", ["x1_cand"], ["x1"], axes=[0], keepdims=1),  # [1]
        helper.make_node("ReduceMax", ["x2_cand"], ["x2"], axes=[0], keepdims=1),
        helper.make_node("ReduceMin", ["y1_cand"], ["y1"], axes=[0], keepdims=1),
        helper.make_node("ReduceMax", ["y2_cand"], ["y2"], axes=[0], keepdims=1),
        helper.make_node("Add", ["x1", "x2"], ["sx"]),
        helper.make_node("Mul", ["sx", "half"], ["cx"]),
        helper.make_node("Add", ["y1", "y2"], ["sy"]),
        helper.make_node("Mul", ["sy", "half"], ["cy"]),
        helper.make_node("Sub", ["x2", "x1"], ["bw"]),
        helper.make_node("Sub", ["y2", "y1"], ["bh"]),
        helper.make_node("Concat", ["cx", "cy", "bw", "bh", "one"], ["row"], axis=0),  # [5]
        helper.make_node("Reshape", ["row", "out_shape"], ["output0"]),
    ]
    graph = helper.make_graph(nodes, "content_box_detector", [_image_input(h, w, batch, layout)],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 5, 1])], inits)
    return _finish(graph, path)


def channel_probe(h: int, w: int, layout: str = "NCHW", batch: int | str = 1,
                  path: str | Path | None = None) -> bytes:
    """Outputs ``mean0`` and ``mean2`` ([1] float32): the means of channels 0 and 2 of batch item 0."""
    nodes: list = []
    inits: list = []
    _channel_plane(layout, 0, "plane0", nodes, inits)
    _channel_plane(layout, 2, "plane2", nodes, inits)
    nodes += [
        helper.make_node("ReduceMean", ["plane0"], ["m0"], keepdims=0),
        helper.make_node("ReduceMean", ["plane2"], ["m2"], keepdims=0),
    ]
    inits.append(_const("shape1", [1], np.int64))
    nodes += [
        helper.make_node("Reshape", ["m0", "shape1"], ["mean0"]),
        helper.make_node("Reshape", ["m2", "shape1"], ["mean2"]),
    ]
    graph = helper.make_graph(nodes, "channel_probe", [_image_input(h, w, batch, layout)],
                              [helper.make_tensor_value_info("mean0", TensorProto.FLOAT, [1]),
                               helper.make_tensor_value_info("mean2", TensorProto.FLOAT, [1])], inits)
    return _finish(graph, path)


def fixed_rows_detector(rows: np.ndarray, input_hw: tuple[int, int], batch: int | str = 1,
                        output_name: str = "output0", layout: str = "NCHW",
                        path: str | Path | None = None) -> bytes:
    """Input ``images`` float32; output ``output_name`` = ``rows`` (float32, any shape), always.

    The output depends on the input only through its shape (a zero computed
    from the batch size is added), so engines keep the input and never see
    NaNs from the pixel values. Typical ``rows``: [1, K, 6] (x1 y1 x2 y2
    score class, zero-padded) for NMS-in-graph decoders.
    """
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 0:
        raise ValueError("rows must have at least one dimension")
    h, w = input_hw
    inits = [_const("rows", rows), _const("zero", 0.0), _const("b_idx", [0], np.int64)]
    nodes = [
        helper.make_node("Shape", ["images"], ["in_shape"]),
        helper.make_node("Gather", ["in_shape", "b_idx"], ["n"], axis=0),
        helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["n_f", "zero"], ["z"]),
        helper.make_node("Add", ["rows", "z"], [output_name]),
    ]
    out_dims = list(rows.shape)
    graph = helper.make_graph(nodes, "fixed_rows_detector", [_image_input(h, w, batch, layout)],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, out_dims)], inits)
    return _finish(graph, path)


def nms_rows_detector(rows: np.ndarray, input_hw: tuple[int, int], batch: int | str = 1,
                      output_name: str = "output", path: str | Path | None = None) -> bytes:
    """Like :func:`fixed_rows_detector`, with yolov7's NMS-export output ``[K, 7]``:
    (batch_id, x1, y1, x2, y2, class, score) per row."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != 7:
        raise ValueError(f"rows must be [K, 7], got {list(rows.shape)}")
    return fixed_rows_detector(rows, input_hw, batch=batch, output_name=output_name, path=path)


def affine_model(shape: tuple[int | str, ...] = (1, 3, 8, 8), mul: float = 2.0, add: float = 1.0,
                 input_name: str = "images", output_name: str = "output0",
                 path: str | Path | None = None) -> bytes:
    """``output = input * mul + add`` (float32); dims may be symbolic (strings)."""
    inits = [_const("mul", mul), _const("add", add)]
    nodes = [helper.make_node("Mul", [input_name, "mul"], ["scaled"]),
             helper.make_node("Add", ["scaled", "add"], [output_name])]
    graph = helper.make_graph(nodes, "affine",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(shape))], inits)
    return _finish(graph, path)


def save_openvino_ir(onnx_path: str | Path, xml_path: str | Path) -> tuple[Path, Path]:
    """Convert an ONNX file to OpenVINO IR (full-precision weights); returns (xml, bin)."""
    import openvino as ov

    xml_path = Path(xml_path)
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path, xml_path.with_suffix(".bin")
