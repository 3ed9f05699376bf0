"""TensorFlow Lite engine (``.tflite`` flatbuffers).

Runs on LiteRT (``ai_edge_litert``) when installed, else on ``tf.lite``
(deprecated in TF 2.21, trap T7). One interpreter per engine with
``num_threads`` = ``threads``; an interpreter is not thread-safe, so calls
are serialised. Inputs with a dynamic dimension are resized to each feed.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from common.errors import RuntimeLoadError
from common.runtimes import Runtime, TensorInfo
from common.runtimes.cpus import threads_per_worker

log = logging.getLogger(__name__)


def interpreter_class() -> tuple[type, str]:
    """(Interpreter class, what provides it): LiteRT first, tf.lite as the fallback."""
    try:
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert

        return Interpreter, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '')}".strip()
    except ImportError:
        pass
    from common.runtimes.tensorflow_engine import import_tensorflow

    tf = import_tensorflow()
    return tf.lite.Interpreter, f"tf.lite {tf.__version__}"


def _dims(detail: Mapping[str, Any]) -> tuple[int | None, ...]:
    shape = detail.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = detail["shape"]
    return tuple(int(d) if d >= 0 else None for d in shape)


class TFLiteEngine(Runtime):
    """A .tflite model in a LiteRT / tf.lite interpreter on the CPU."""

    def __init__(self, model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                 device: str = "CPU", threads: int | None = None, declared_inputs: Sequence[TensorInfo] = (),
                 manifest: Any | None = None):
        self.model_path = Path(model_path)
        name = self.model_path.name
        if precision.lower() not in ("f32", "fp32", "float32"):
            log.warning("%s: TFLite runs the model's own precision; ignoring precision %r", name, precision)
        if not device.upper().startswith("CPU"):
            log.warning("%s: the TFLite engine is CPU-only; ignoring device %r", name, device)
        if not self.model_path.is_file():
            raise RuntimeLoadError(f"{name}: model file not found at {self.model_path}")
        size = self.model_path.stat().st_size
        with open(self.model_path, "rb") as f:
            head = f.read(8)
        if head[4:8] != b"TFL3":
            raise RuntimeLoadError(f"{name}: not a TensorFlow Lite model (no 'TFL3' flatbuffer identifier in "
                                   f"its first bytes)")
        self.threads = int(threads) if threads else threads_per_worker()
        cls, self.provider = interpreter_class()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf.lite's deprecation notice
                self.interpreter = cls(model_path=str(self.model_path), num_threads=self.threads)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # ValueError / RuntimeError from the C++ side
            raise RuntimeLoadError(f"{name}: the TFLite model is damaged or truncated ({size} bytes), "
                                   f"{self.provider} cannot load it: {str(exc).strip().splitlines()[0]}") from exc
        self._in = self.interpreter.get_input_details()
        self._out = self.interpreter.get_output_details()
        self.inputs = [TensorInfo(d["name"], _dims(d), np.dtype(d["dtype"])) for d in self._in]
        self.outputs = [TensorInfo(d["name"], _dims(d), np.dtype(d["dtype"])) for d in self._out]
        from common.runtimes.tensorflow_engine import check_declared

        check_declared(name, declared_inputs, self.inputs)
        self._lock = threading.Lock()
        self.device = "CPU"
        log.info("%s loaded %s with %d thread(s)", self.provider, name, self.threads)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.model_path.name
        expected = {i.name for i in self.inputs}
        if set(feeds) != expected:
            raise RuntimeLoadError(f"{name}: feeds do not match the model inputs "
                                   f"(expected {sorted(expected)}, got {sorted(feeds)})")
        with self._lock:
            try:
                resized = False
                for detail, info in zip(self._in, self.inputs):
                    value = np.asarray(feeds[info.name], dtype=info.dtype)
                    if tuple(value.shape) != tuple(detail["shape"]):
                        if len(value.shape) != len(info.shape) or any(
                                w is not None and w != h for w, h in zip(info.shape, value.shape)):
                            shape = "[" + ", ".join("null" if d is None else str(d) for d in info.shape) + "]"
                            raise RuntimeLoadError(f"{name}: input {info.name!r} takes shape {shape}, "
                                                   f"got {list(value.shape)}")
                        self.interpreter.resize_tensor_input(detail["index"], list(value.shape))
                        resized = True
                if resized:
                    self.interpreter.allocate_tensors()
                    self._in = self.interpreter.get_input_details()
                    self._out = self.interpreter.get_output_details()
                for detail, info in zip(self._in, self.inputs):
                    self.interpreter.set_tensor(detail["index"],
                                                np.ascontiguousarray(feeds[info.name], dtype=info.dtype))
                self.interpreter.invoke()
                return {info.name: self.interpreter.get_tensor(d["index"]).copy()
                        for info, d in zip(self.outputs, self._out)}
            except RuntimeLoadError:
                raise
            except Exception as exc:
                raise RuntimeLoadError(f"{name}: {self.provider} failed to run the model: {exc}") from exc
