"""Device choice per runtime and the GPU fallback policy (this machine has no GPU)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from common.errors import RuntimeLoadError, SettingsError
from common.manifest import parse_manifest
from common.runtimes import load_runtime
from common.runtimes.devices import Gpu, GpuUnavailable, fallback_policy, find_gpu, plan_device
from common.runtimes.onnxruntime_engine import providers_for
from common.runtimes.start import open_model_runtime
from common.runtimes.torch_engine import torch_device
from tests import synthetic_models as sm

NEEDS_GPU = ("model 'm' needs a GPU (model.json requirements.gpu_required), but onnxruntime sees none in this "
             "runner: deploy it with the GPU runner image (cvat.gdrive-runner.onnx-gpu) on a GPU node, or set "
             "RUNNER_GPU_FALLBACK=cpu to run it on the CPU (slowly)")


def test_this_machine_has_no_gpu_for_any_runtime():
    assert [find_gpu(r) for r in ("onnxruntime", "torch", "openvino", "no-such-runtime")] == [None] * 4


def test_fallback_policy_setting():
    assert fallback_policy({}) == "fail"
    assert fallback_policy({"RUNNER_GPU_FALLBACK": " CPU "}) == "cpu"
    with pytest.raises(SettingsError) as info:
        fallback_policy({"RUNNER_GPU_FALLBACK": "maybe"})
    assert str(info.value) == "environment: RUNNER_GPU_FALLBACK must be one of fail, cpu, got 'maybe'"


def test_gpu_required_without_gpu_fails_by_default(caplog):
    caplog.set_level(logging.INFO, logger="common.runtimes.devices")
    with pytest.raises(GpuUnavailable) as info:
        plan_device("onnxruntime", model="m", requested=None, gpu_required=True, env={})
    assert str(info.value) == NEEDS_GPU
    assert isinstance(info.value, RuntimeLoadError)
    with pytest.raises(GpuUnavailable, match="RUNNER_GPU_FALLBACK=cpu"):
        plan_device("onnxruntime", model="m", requested=None, gpu_required=True,
                    env={"RUNNER_GPU_FALLBACK": "fail"})
    assert caplog.messages == []


def test_gpu_required_without_gpu_falls_back_to_cpu_when_told(caplog):
    caplog.set_level(logging.INFO, logger="common.runtimes.devices")
    plan = plan_device("torch", model="m", requested=None, gpu_required=True, env={"RUNNER_GPU_FALLBACK": "cpu"})
    assert (plan.device, plan.gpu) == ("CPU", False)
    assert caplog.messages == [
        "model 'm' needs a GPU (model.json requirements.gpu_required), but torch sees none in this runner: running "
        "it on the CPU because RUNNER_GPU_FALLBACK=cpu; expect it to be much slower",
        "device: torch runs m on CPU (GPU fallback to CPU (RUNNER_GPU_FALLBACK=cpu))"]
    assert caplog.records[0].levelno == logging.WARNING


def test_explicit_gpu_device_counts_as_needing_one():
    with pytest.raises(GpuUnavailable) as info:
        plan_device("openvino", model="m", requested="GPU", gpu_required=False, env={})
    assert str(info.value).startswith("model 'm' needs a GPU (model.json runtime.device 'GPU'), but openvino sees "
                                      "none in this runner: deploy it with the GPU runner image "
                                      "(cvat.gdrive-runner.onnx-gpu)")


def test_cpu_when_no_gpu_is_needed_and_the_device_is_logged(caplog):
    caplog.set_level(logging.INFO, logger="common.runtimes.devices")
    assert plan_device("onnxruntime", model="m", requested=None, gpu_required=False, env={}).device == "CPU"
    assert plan_device("openvino", model="m", requested="CPU", gpu_required=False, env={}).device == "CPU"
    assert caplog.messages == ["device: onnxruntime runs m on CPU (no GPU visible to onnxruntime)",
                               "device: openvino runs m on CPU (model.json runtime.device 'CPU')"]


def test_a_gpu_runner_picks_the_runtimes_gpu_device():
    def probe(runtime):  # what each runtime reports on a GPU node
        return {"onnxruntime": Gpu("CUDA", "CUDA execution provider, /dev/nvidia0"),
                "torch": Gpu("cuda", "cuda:0 H200"), "openvino": Gpu("GPU", "GPU.0")}[runtime]

    picked = {r: plan_device(r, model="m", requested=None, gpu_required=True, env={}, probe=probe).device
              for r in ("onnxruntime", "torch", "openvino")}
    assert picked == {"onnxruntime": "CUDA", "torch": "cuda", "openvino": "GPU"}
    # an explicit CPU stays on the CPU even there
    assert plan_device("torch", model="m", requested="CPU", gpu_required=False, env={}, probe=probe).device == "CPU"


def test_engines_refuse_a_gpu_device_this_image_lacks(tmp_path):
    assert providers_for("CPU") == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeLoadError) as info:
        providers_for("CUDA")
    assert str(info.value).startswith("device 'CUDA' needs onnxruntime's CUDAExecutionProvider, which this "
                                      "image's onnxruntime 1.32.0 lacks (it has ")
    assert str(info.value).endswith("the ONNX GPU runner image (cvat.gdrive-runner.onnx-gpu) has it")
    with pytest.raises(RuntimeLoadError, match=r"^device 'cuda' needs CUDA, which this torch 2\.13\.0\+cpu does "
                                               r"not see \(the pytorch GPU runner image "
                                               r"cvat\.gdrive-runner\.pytorch-gpu has it\)$"):
        torch_device("cuda")
    path = tmp_path / "m.onnx"
    path.write_bytes(sm.affine_model((1, 3, 8, 8)))
    with pytest.raises(RuntimeLoadError, match="needs onnxruntime's TensorrtExecutionProvider"):
        load_runtime("onnxruntime", path, device="TensorRT", threads=1)


def _manifest(**extra):
    return parse_manifest({"name": "m", "version": "1.0.0", "framework": "onnx", "type": "detector",
                           "file_name": "m.onnx", "input": {"shape": [1, 3, 8, 8]}, **extra})


def test_runner_start_applies_the_policy(tmp_path, caplog):
    path = tmp_path / "m.onnx"
    path.write_bytes(sm.affine_model((1, 3, 8, 8)))
    needs = _manifest(requirements={"gpu_required": True})
    with pytest.raises(GpuUnavailable) as info:
        open_model_runtime(needs, {"m.onnx": path}, env={}, threads=1)
    assert str(info.value) == NEEDS_GPU
    caplog.set_level(logging.INFO)
    engine = open_model_runtime(needs, {"m.onnx": path}, env={"RUNNER_GPU_FALLBACK": "cpu"}, threads=1)
    assert engine.device == "CPU"
    assert "device: onnxruntime runs m on CPU (GPU fallback to CPU (RUNNER_GPU_FALLBACK=cpu))" in caplog.messages
    out = engine.run({"images": np.zeros((1, 3, 8, 8), np.float32)})  # x * 2 + 1
    np.testing.assert_array_equal(out["output0"], np.ones((1, 3, 8, 8), np.float32))
