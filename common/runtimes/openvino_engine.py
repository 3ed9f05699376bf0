"""OpenVINO engine: IR (``.xml`` + ``.bin``) or ``.onnx`` read directly.

The model is compiled with an explicit ``INFERENCE_PRECISION_HINT`` (f32
unless model.json asks otherwise): on CPUs with AMX, OpenVINO otherwise picks
bf16 by itself and results drift far from the reference (trap T6).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Mapping

import numpy as np
import openvino as ov

from common.errors import RuntimeLoadError
from common.runtimes import Runtime, TensorInfo, shape_conflict
from common.runtimes.cpus import threads_per_worker

log = logging.getLogger(__name__)

# spellings accepted for INFERENCE_PRECISION_HINT -> OpenVINO's own
_PRECISIONS = {"f32": "f32", "fp32": "f32", "float32": "f32",
               "f16": "f16", "fp16": "f16", "float16": "f16",
               "bf16": "bf16", "bfloat16": "bf16"}

_core: ov.Core | None = None
_core_lock = threading.Lock()


def _get_core() -> ov.Core:
    """One Core per process (creating one loads the device plugins)."""
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def _dims(port) -> tuple[int | None, ...]:
    shape = port.get_partial_shape()
    if shape.rank.is_dynamic:
        return ()
    return tuple(d.get_length() if d.is_static else None for d in shape)


def _name(port, fallback: str) -> str:
    try:
        return port.get_any_name()
    except RuntimeError:  # the tensor has no name
        return fallback


class OpenVinoEngine(Runtime):
    """A model compiled by OpenVINO for ``device`` (LATENCY hint, one infer request)."""

    def __init__(self, model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                 device: str = "CPU", threads: int | None = None, declared_inputs: tuple[TensorInfo, ...] = ()):
        self.model_path = Path(model_path)
        extra_paths = {k: Path(v) for k, v in (extra_paths or {}).items()}
        name = self.model_path.name
        try:
            self.precision = _PRECISIONS[precision.lower()]
        except KeyError:
            raise RuntimeLoadError(f"{name}: unknown precision {precision!r}; "
                                   f"use one of {sorted(set(_PRECISIONS.values()))}") from None
        if not self.model_path.is_file():
            raise RuntimeLoadError(f"{name}: model file not found at {self.model_path}")
        core = _get_core()
        suffix = self.model_path.suffix.lower()
        try:
            if suffix == ".xml":
                from common.runtimes.filecheck import inspect_openvino

                weights = self._weights_path(extra_paths)
                if not weights.is_file():
                    raise RuntimeLoadError(f"{name}: the IR weights file {weights.name} is missing "
                                           f"(expected at {weights})")
                inspect_openvino(self.model_path, weights=weights, weights_name=weights.name)  # IR version, .bin size
                model = core.read_model(str(self.model_path), str(weights))
            else:  # .onnx (and any other format OpenVINO's frontends read)
                model = core.read_model(str(self.model_path))
        except RuntimeLoadError:
            raise
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: openvino cannot read the model: {exc}") from exc

        self.threads = int(threads) if threads else threads_per_worker()
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY"}
        if device.upper().startswith("CPU"):
            config["INFERENCE_NUM_THREADS"] = self.threads
        try:
            self.compiled = core.compile_model(model, device, config)
            self._request = self.compiled.create_infer_request()
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: openvino cannot compile the model for {device!r}: {exc}") from exc

        self.inputs = [TensorInfo(_name(p, f"input{i}"), _dims(p), np.dtype(p.get_element_type().to_dtype()))
                       for i, p in enumerate(self.compiled.inputs)]
        self.outputs = [TensorInfo(_name(p, f"output{i}"), _dims(p), np.dtype(p.get_element_type().to_dtype()))
                        for i, p in enumerate(self.compiled.outputs)]
        self._input_index = {info.name: i for i, info in enumerate(self.inputs)}
        for declared in declared_inputs:
            actual = next((i for i in self.inputs if i.name == declared.name), None) if declared.name \
                else self.inputs[0]
            problem = shape_conflict(declared, actual) if actual is not None else None
            if problem:
                raise RuntimeLoadError(f"{name}: {problem}")
        self._lock = threading.Lock()  # one infer request: serialise callers
        self.device = device
        log.info("openvino %s compiled %s for %s (precision %s, %d thread(s))", ov.__version__, name, device,
                 self.precision, self.threads)

    def _weights_path(self, extra_paths: Mapping[str, Path]) -> Path:
        """The IR's .bin: from extra_paths (by exact or same-stem name), else next to the .xml."""
        expected = self.model_path.with_suffix(".bin")
        if expected.name in extra_paths:
            return extra_paths[expected.name]
        bins = [p for key, p in extra_paths.items() if key.lower().endswith(".bin")]
        if len(bins) == 1:
            return bins[0]
        return expected

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.model_path.name
        unknown = set(feeds) - set(self._input_index)
        missing = set(self._input_index) - set(feeds)
        if unknown or missing:
            raise RuntimeLoadError(f"{name}: feeds do not match the model inputs "
                                   f"(expected {sorted(self._input_index)}, got {sorted(feeds)})")
        indexed = {self._input_index[k]: np.ascontiguousarray(v) for k, v in feeds.items()}
        try:
            with self._lock:
                result = self._request.infer(indexed)  # copies the outputs (share_outputs=False)
                values = result.to_tuple()
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: openvino failed to run the model: {exc}") from exc
        return {info.name: np.asarray(v) for info, v in zip(self.outputs, values)}
