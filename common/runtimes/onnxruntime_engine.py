"""ONNX Runtime engine: CPUExecutionProvider, or CUDA / TensorRT on a GPU image.

``device`` CPU uses the CPU provider only. CUDA (or GPU) asks for the CUDA
provider and TensorRT for TensorRT first, each with the CPU provider behind it
for the nodes the GPU provider does not take. ONNX Runtime would quietly run
everything on the CPU when a GPU provider fails to start; here that is an
error (never silently slow).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import onnxruntime as ort

from common.errors import RuntimeLoadError
from common.runtimes import Runtime, TensorInfo, shape_conflict
from common.runtimes.cpus import threads_per_worker

log = logging.getLogger(__name__)

# ORT's type strings -> numpy dtypes
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(uint32)": np.uint32,
    "tensor(int32)": np.int32,
    "tensor(uint64)": np.uint64,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}


def ort_dtype(type_str: str) -> np.dtype:
    """numpy dtype for an ORT type string such as ``'tensor(float)'``."""
    try:
        return np.dtype(_ORT_DTYPES[type_str])
    except KeyError:
        raise RuntimeLoadError(f"unsupported tensor type {type_str!r}") from None


def _dims(shape) -> tuple[int | None, ...]:
    """ORT reports dynamic dims as strings ('batch'), None or negative ints."""
    if shape is None:
        return ()
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def _tensor_info(arg) -> TensorInfo:
    return TensorInfo(name=arg.name, shape=_dims(arg.shape), dtype=ort_dtype(arg.type))


# device (upper case) -> execution providers, most preferred first
_PROVIDERS = {
    "CPU": ("CPUExecutionProvider",),
    "CUDA": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "GPU": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "TENSORRT": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_DEVICE_OF = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA",
              "TensorrtExecutionProvider": "TensorRT"}


def providers_for(device: str) -> list[str]:
    """The execution providers for ``device``; a RuntimeLoadError names what this
    image's onnxruntime lacks (the GPU ones come with onnxruntime-gpu)."""
    wanted = _PROVIDERS.get(device.strip().upper())
    if wanted is None:
        raise RuntimeLoadError(f"onnxruntime has no device {device!r} (use CPU, CUDA or TensorRT)")
    available = ort.get_available_providers()
    if wanted[0] not in available:
        raise RuntimeLoadError(
            f"device {device!r} needs onnxruntime's {wanted[0]}, which this image's onnxruntime "
            f"{ort.__version__} lacks (it has {', '.join(available)}); the ONNX GPU runner image "
            f"(cvat.gdrive-runner.onnx-gpu) has it")
    return [p for p in wanted if p in available]


class OnnxRuntimeEngine(Runtime):
    """An ONNX model in an :class:`onnxruntime.InferenceSession`."""

    def __init__(self, model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                 device: str = "CPU", threads: int | None = None, declared_inputs: tuple[TensorInfo, ...] = ()):
        self.model_path = Path(model_path)
        providers = providers_for(device)
        if precision.lower() not in ("f32", "fp32", "float32"):
            log.warning("onnxruntime runs the model's own precision; ignoring precision %r", precision)
        if not self.model_path.is_file():
            raise RuntimeLoadError(f"{self.model_path.name}: model file not found at {self.model_path}")
        self.threads = int(threads) if threads else threads_per_worker()
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads would otherwise spin after each run and steal the
        # cores that decode and preprocess the next request.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only; warnings about unused initializers are noise
        try:
            self.session = ort.InferenceSession(str(self.model_path), sess_options=options,
                                                providers=providers)
            self.inputs = [_tensor_info(a) for a in self.session.get_inputs()]
            self.outputs = [_tensor_info(a) for a in self.session.get_outputs()]
        except RuntimeLoadError as exc:
            raise RuntimeLoadError(f"{self.model_path.name}: {exc}") from exc
        except Exception as exc:  # ORT raises its own pybind exception types
            raise RuntimeLoadError(f"{self.model_path.name}: onnxruntime cannot load the model: {exc}") from exc
        self._output_names = [o.name for o in self.outputs]
        self._input_names = {i.name for i in self.inputs}
        used = self.session.get_providers()
        if used[0] != providers[0]:
            raise RuntimeLoadError(f"{self.model_path.name}: onnxruntime could not start {providers[0]} "
                                   f"(it fell back to {', '.join(used)}); see its log above")
        self.device = _DEVICE_OF.get(used[0], used[0])
        for declared in declared_inputs:
            actual = next((i for i in self.inputs if i.name == declared.name), None) if declared.name \
                else self.inputs[0]
            problem = shape_conflict(declared, actual) if actual is not None else None
            if problem:
                raise RuntimeLoadError(f"{self.model_path.name}: {problem}")
        log.info("onnxruntime %s loaded %s on %s (%s) with %d thread(s)", ort.__version__, self.model_path.name,
                 self.device, ", ".join(used), self.threads)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        unknown = set(feeds) - self._input_names
        missing = self._input_names - set(feeds)
        if unknown or missing:
            raise RuntimeLoadError(
                f"{self.model_path.name}: feeds do not match the model inputs "
                f"(expected {sorted(self._input_names)}, got {sorted(feeds)})")
        try:
            values = self.session.run(self._output_names, dict(feeds))
        except Exception as exc:
            raise RuntimeLoadError(f"{self.model_path.name}: onnxruntime failed to run the model: {exc}") from exc
        return dict(zip(self._output_names, values))
