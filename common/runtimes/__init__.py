"""Runtimes: run a network behind one tiny interface.

A runtime is chosen by name (``RuntimeSpec.name``, defaulting from model.json's
``framework``). Each engine lives in its own module and is imported only when
asked for, so a runner image that lacks an engine still imports this package
and says which engine is missing.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from common.errors import RuntimeLoadError


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output. Dimensions are ints, or None when dynamic."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class Runtime(ABC):
    """A loaded network. ``run`` takes and returns numpy arrays by tensor name."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    device: str  # what actually runs it, for the start log ("CPU", ...)

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs keyed by name, in the model's output order."""


# runtime name -> "module:Class"; the module is imported on first use.
_ENGINES = {
    "onnxruntime": "common.runtimes.onnxruntime_engine:OnnxRuntimeEngine",
    "openvino": "common.runtimes.openvino_engine:OpenVinoEngine",
}

# model.json framework -> default runtime name
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}


def load_runtime(name: str, model_path: Path, *, extra_paths: Mapping[str, Path] | None = None,
                 precision: str = "f32", device: str = "CPU", threads: int | None = None) -> Runtime:
    """Load ``model_path`` with the engine ``name``.

    ``extra_paths`` maps model.json's extra file names to local paths (e.g.
    the OpenVINO ``.bin``). ``threads`` None means "what this process may
    really use" (see :mod:`common.runtimes.cpus`).
    """
    try:
        target = _ENGINES[name]
    except KeyError:
        raise RuntimeLoadError(f"unknown runtime {name!r}; this runner has: {', '.join(sorted(_ENGINES))}") from None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeLoadError(f"runtime {name!r} is not installed in this runner image ({exc})") from exc
    cls = getattr(module, cls_name)
    return cls(Path(model_path), extra_paths=dict(extra_paths or {}), precision=precision,
               device=device, threads=threads)
