"""Engines (onnxruntime, OpenVINO) on synthetic models, and the CPU budget helpers."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
from onnx import TensorProto, helper

from common.errors import RuntimeLoadError
from common.runtimes import TensorInfo, load_runtime
from common.runtimes import cpus
from common.runtimes.cpus import threads_per_worker, usable_cpus
from common.runtimes.onnxruntime_engine import OnnxRuntimeEngine, ort_dtype
from common.runtimes.openvino_engine import OpenVinoEngine
from tests import synthetic_models as sm


@pytest.fixture(autouse=True)
def _no_thread_env(monkeypatch):
    monkeypatch.delenv("RUNNER_THREADS", raising=False)
    monkeypatch.delenv("RUNNER_WORKERS", raising=False)


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _box_input(h=24, w=32, pad=0.25, batch=1, rect=(3, 5, 20, 17)):
    """Pad-filled tensor with channel 0 != pad inside rect = (x1, y1, x2, y2), exclusive ends."""
    x = np.full((batch, 3, h, w), pad, np.float32)
    x1, y1, x2, y2 = rect
    x[0, 0, y1:y2, x1:x2] = 0.9
    return x


# ---------------------------------------------------------------- onnxruntime


def test_ort_symbolic_batch_tensor_info(tmp_path):
    path = _write(tmp_path, "det.onnx", sm.content_box_detector(24, 32, 0.25, batch="batch"))
    engine = OnnxRuntimeEngine(path, {}, "f32", "CPU", 1)
    assert engine.inputs == [TensorInfo("images", (None, 3, 24, 32), np.dtype(np.float32))]
    assert engine.outputs == [TensorInfo("output0", (1, 5, 1), np.dtype(np.float32))]
    assert engine.device == "CPU"
    out = engine.run({"images": _box_input(batch=2)})
    # box (3, 5)-(20, 17): cx 11.5, cy 11, w 17, h 12, score 1
    np.testing.assert_array_equal(out["output0"][0, :, 0], [11.5, 11.0, 17.0, 12.0, 1.0])


def test_ort_fixed_batch_and_minus_one_dims(tmp_path):
    path = _write(tmp_path, "fixed.onnx", sm.affine_model((1, 3, 8, 8)))
    assert OnnxRuntimeEngine(path, {}, "f32", "CPU", 1).inputs[0].shape == (1, 3, 8, 8)
    # a dim stored as -1 (dim_value) is dynamic too
    model = onnx.load_from_string(sm.affine_model((1, 3, 8, 8)))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "n"
    path2 = _write(tmp_path, "minus.onnx", model.SerializeToString())
    engine = OnnxRuntimeEngine(path2, {}, "f32", "CPU", 1)
    assert engine.inputs[0].shape == (None, 3, 8, 8)
    assert engine.outputs[0].shape == (None, 3, 8, 8)


def test_ort_dtypes_mapped(tmp_path):
    nodes = [helper.make_node("Cast", ["u8"], ["i64"], to=TensorProto.INT64),
             helper.make_node("Cast", ["u8"], ["f16"], to=TensorProto.FLOAT16)]
    graph = helper.make_graph(nodes, "casts", [helper.make_tensor_value_info("u8", TensorProto.UINT8, [2])],
                              [helper.make_tensor_value_info("i64", TensorProto.INT64, [2]),
                               helper.make_tensor_value_info("f16", TensorProto.FLOAT16, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    engine = OnnxRuntimeEngine(_write(tmp_path, "casts.onnx", model.SerializeToString()), {}, "f32", "CPU", 1)
    assert [i.dtype for i in engine.inputs] == [np.dtype(np.uint8)]
    assert [o.dtype for o in engine.outputs] == [np.dtype(np.int64), np.dtype(np.float16)]
    out = engine.run({"u8": np.array([7, 250], np.uint8)})
    assert list(out) == ["i64", "f16"]
    assert out["i64"].dtype == np.int64 and out["i64"].tolist() == [7, 250]
    assert ort_dtype("tensor(float)") == np.float32
    with pytest.raises(RuntimeLoadError):
        ort_dtype("seq(tensor(float))")


def test_ort_outputs_in_model_order(tmp_path):
    path = _write(tmp_path, "probe.onnx", sm.channel_probe(4, 5))
    engine = OnnxRuntimeEngine(path, {}, "f32", "CPU", 1)
    x = np.zeros((1, 3, 4, 5), np.float32)
    x[0, 0] = 2.0
    x[0, 2, :, :2] = 5.0  # mean of channel 2 = 5 * 8 / 20 = 2
    out = engine.run({"images": x})
    assert list(out) == ["mean0", "mean2"]
    assert out["mean0"].tolist() == [2.0]
    assert out["mean2"].tolist() == [2.0]
    x[0, 0] = 3.0
    assert engine.run({"images": x})["mean0"].tolist() == [3.0]


def test_ort_threads_honoured(tmp_path, monkeypatch):
    path = _write(tmp_path, "a.onnx", sm.affine_model())
    engine = OnnxRuntimeEngine(path, {}, "f32", "CPU", 3)
    options = engine.session.get_session_options()
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    monkeypatch.setenv("RUNNER_THREADS", "2")
    engine = OnnxRuntimeEngine(path, {}, "f32", "CPU", None)
    assert engine.session.get_session_options().intra_op_num_threads == 2


def test_ort_load_errors(tmp_path):
    with pytest.raises(RuntimeLoadError, match="nothere.onnx.*not found"):
        OnnxRuntimeEngine(tmp_path / "nothere.onnx", {}, "f32", "CPU", 1)
    junk = _write(tmp_path, "junk.onnx", b"this is not a protobuf \x00\xff" * 10)
    with pytest.raises(RuntimeLoadError, match="junk.onnx: onnxruntime cannot load"):
        OnnxRuntimeEngine(junk, {}, "f32", "CPU", 1)


def test_ort_bad_feeds(tmp_path):
    engine = OnnxRuntimeEngine(_write(tmp_path, "a.onnx", sm.affine_model()), {}, "f32", "CPU", 1)
    with pytest.raises(RuntimeLoadError, match="a.onnx.*expected \\['images'\\].*got \\['x'\\]"):
        engine.run({"x": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(RuntimeLoadError, match="a.onnx: onnxruntime failed to run"):
        engine.run({"images": np.zeros((1, 3, 4, 4), np.float32)})


# ---------------------------------------------------------------- OpenVINO


def test_openvino_reads_onnx_directly(tmp_path):
    path = _write(tmp_path, "det.onnx", sm.content_box_detector(24, 32, 0.25, batch="batch"))
    engine = OpenVinoEngine(path, {}, "f32", "CPU", 1)
    assert engine.inputs == [TensorInfo("images", (None, 3, 24, 32), np.dtype(np.float32))]
    assert engine.outputs == [TensorInfo("output0", (1, 5, 1), np.dtype(np.float32))]
    assert engine.device == "CPU"
    out = engine.run({"images": _box_input(batch=2)})
    np.testing.assert_array_equal(out["output0"][0, :, 0], [11.5, 11.0, 17.0, 12.0, 1.0])


def test_openvino_ir_and_parity_with_ort(tmp_path):
    onnx_path = _write(tmp_path, "aff.onnx", sm.affine_model(("batch", 3, 16, 16), mul=1.7, add=-0.3))
    xml, bin_ = sm.save_openvino_ir(onnx_path, tmp_path / "aff.xml")
    assert bin_.is_file()
    ov_engine = OpenVinoEngine(xml, {}, "f32", "CPU", 1)
    ort_engine = OnnxRuntimeEngine(onnx_path, {}, "f32", "CPU", 1)
    assert ov_engine.inputs[0].shape == (None, 3, 16, 16)
    x = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    a = ort_engine.run({"images": x})["output0"]
    b = ov_engine.run({"images": x})["output0"]
    assert a.shape == b.shape == (2, 3, 16, 16)
    np.testing.assert_allclose(a, x * np.float32(1.7) - np.float32(0.3), atol=1e-6)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # the outputs are copies: a second run does not overwrite the first result
    c = ov_engine.run({"images": x + 1})["output0"]
    np.testing.assert_allclose(b, a, atol=1e-5)
    np.testing.assert_allclose(c - b, 1.7, atol=1e-5)


def test_openvino_probe_parity_and_output_order(tmp_path):
    onnx_path = _write(tmp_path, "probe.onnx", sm.channel_probe(6, 7))
    x = np.random.default_rng(1).uniform(0, 1, size=(1, 3, 6, 7)).astype(np.float32)
    a = OnnxRuntimeEngine(onnx_path, {}, "f32", "CPU", 1).run({"images": x})
    b = OpenVinoEngine(onnx_path, {}, "f32", "CPU", 1).run({"images": x})
    assert list(a) == list(b) == ["mean0", "mean2"]
    for name, channel in (("mean0", 0), ("mean2", 2)):
        np.testing.assert_allclose(a[name], b[name], atol=1e-5)
        np.testing.assert_allclose(a[name], [x[0, channel].mean()], atol=1e-6)


def test_openvino_bin_from_extra_paths(tmp_path):
    onnx_path = _write(tmp_path, "m.onnx", sm.affine_model((1, 3, 8, 8), mul=3.0, add=0.5))
    xml, bin_ = sm.save_openvino_ir(onnx_path, tmp_path / "m.xml")
    elsewhere = tmp_path / "cache" / "blob-123"
    elsewhere.parent.mkdir()
    bin_.rename(elsewhere)
    engine = OpenVinoEngine(xml, {"m.bin": elsewhere}, "f32", "CPU", 1)
    out = engine.run({"images": np.ones((1, 3, 8, 8), np.float32)})["output0"]
    np.testing.assert_allclose(out, 3.5)


def test_openvino_missing_bin_named(tmp_path):
    onnx_path = _write(tmp_path, "m.onnx", sm.affine_model())
    xml, bin_ = sm.save_openvino_ir(onnx_path, tmp_path / "m.xml")
    bin_.unlink()
    with pytest.raises(RuntimeLoadError, match="m.bin is missing") as info:
        OpenVinoEngine(xml, {}, "f32", "CPU", 1)
    assert str(bin_) in str(info.value)
    with pytest.raises(RuntimeLoadError, match="other.bin is missing"):
        OpenVinoEngine(xml, {"other.bin": tmp_path / "other.bin"}, "f32", "CPU", 1)


def test_openvino_load_errors(tmp_path):
    with pytest.raises(RuntimeLoadError, match="gone.xml.*not found"):
        OpenVinoEngine(tmp_path / "gone.xml", {}, "f32", "CPU", 1)
    junk = _write(tmp_path, "junk.onnx", b"\x08\x01garbage" * 20)
    with pytest.raises(RuntimeLoadError, match="junk.onnx: openvino cannot read"):
        OpenVinoEngine(junk, {}, "f32", "CPU", 1)
    with pytest.raises(RuntimeLoadError, match="unknown precision 'int3'"):
        OpenVinoEngine(_write(tmp_path, "a.onnx", sm.affine_model()), {}, "int3", "CPU", 1)
    engine = OpenVinoEngine(tmp_path / "a.onnx", {}, "f32", "CPU", 1)
    with pytest.raises(RuntimeLoadError, match="expected \\['images'\\]"):
        engine.run({"nope": np.zeros((1, 3, 8, 8), np.float32)})


def test_openvino_precision_f32_and_threads(tmp_path):
    path = _write(tmp_path, "a.onnx", sm.affine_model())
    engine = OpenVinoEngine(path, {}, "f32", "CPU", 1)
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert engine.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    engine2 = OpenVinoEngine(path, {}, "FP32", "CPU", 2)
    assert engine2.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert engine2.compiled.get_property("INFERENCE_NUM_THREADS") == 2


@pytest.mark.skipif("BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"),
                    reason="this CPU has no bf16 support")
def test_openvino_precision_passed_through_when_asked(tmp_path):
    path = _write(tmp_path, "a.onnx", sm.affine_model())
    engine = OpenVinoEngine(path, {}, "bf16", "CPU", 1)
    assert engine.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16


def test_load_runtime_by_name(tmp_path):
    path = _write(tmp_path, "a.onnx", sm.affine_model())
    assert isinstance(load_runtime("onnxruntime", path, threads=1), OnnxRuntimeEngine)
    assert isinstance(load_runtime("openvino", path, threads=1), OpenVinoEngine)


# ---------------------------------------------------------------- CPUs


@pytest.fixture
def affinity(monkeypatch):
    def set_cpus(n: int):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)))
    set_cpus(8)
    return set_cpus


def _cg(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text + "\n")
    return tmp_path


def test_cgroup_v2_quota(tmp_path, affinity):
    assert usable_cpus(_cg(tmp_path, {"cpu.max": "150000 100000"})) == 2


def test_cgroup_v2_quota_fraction_rounds_up_to_one(tmp_path, affinity):
    assert usable_cpus(_cg(tmp_path, {"cpu.max": "20000 100000"})) == 1


def test_cgroup_v2_unlimited_uses_affinity(tmp_path, affinity):
    assert usable_cpus(_cg(tmp_path, {"cpu.max": "max 100000"})) == 8
    affinity(5)
    assert usable_cpus(tmp_path) == 5


def test_cgroup_v1_quota(tmp_path, affinity):
    root = _cg(tmp_path, {"cpu.cfs_quota_us": "250000", "cpu.cfs_period_us": "100000"})
    assert usable_cpus(root) == 3


def test_cgroup_v1_controller_folder_and_unlimited(tmp_path, affinity):
    root = _cg(tmp_path / "a", {"cpu,cpuacct/cpu.cfs_quota_us": "400000", "cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert usable_cpus(root) == 4
    root = _cg(tmp_path / "b", {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    assert usable_cpus(root) == 8


def test_affinity_smaller_than_quota(tmp_path, affinity):
    affinity(2)
    assert usable_cpus(_cg(tmp_path, {"cpu.max": "600000 100000"})) == 2


def test_no_cgroup_files(tmp_path, affinity):
    affinity(6)
    assert usable_cpus(tmp_path / "missing") == 6


def test_threads_per_worker(tmp_path, affinity, monkeypatch):
    root = _cg(tmp_path, {"cpu.max": "600000 100000"})  # 6 CPUs
    assert threads_per_worker(cgroup_root=root) == 6
    assert threads_per_worker(4, cgroup_root=root) == 1
    assert threads_per_worker(2, cgroup_root=root) == 3
    assert threads_per_worker(16, cgroup_root=root) == 1
    monkeypatch.setenv("RUNNER_WORKERS", "3")
    assert threads_per_worker(cgroup_root=root) == 2
    monkeypatch.setenv("RUNNER_THREADS", "5")
    assert threads_per_worker(cgroup_root=root) == 5
    assert threads_per_worker(2, cgroup_root=root) == 5


@pytest.mark.parametrize("name,value", [("RUNNER_THREADS", "0"), ("RUNNER_THREADS", "two"),
                                        ("RUNNER_THREADS", "-3"), ("RUNNER_WORKERS", "1.5")])
def test_threads_env_invalid(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, got '{value}'"):
        threads_per_worker()


def test_real_usable_cpus_is_sane():
    n = usable_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))
    assert cpus.CGROUP_ROOT == Path("/sys/fs/cgroup")
