"""Runtimes: run a network behind one tiny interface.

A runtime is chosen by name (``RuntimeSpec.name``, defaulting from model.json's
``framework``). Each engine lives in its own module and is imported only when
asked for, so a runner image that lacks an engine still imports this package
and says which engine is missing.
"""

from __future__ import annotations

import importlib
from inspect import signature
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

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
    "torch": "common.runtimes.torch_engine:TorchEngine",
    # SavedModel, frozen graph, Keras and .tflite, picked by the file (a factory, not a class)
    "tensorflow": "common.runtimes.tensorflow_engine:open_tensorflow",
    "tflite": "common.runtimes.tflite_engine:TFLiteEngine",
}

# model.json framework -> default runtime name
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
DEFAULT_RUNTIME["pytorch"] = "torch"
DEFAULT_RUNTIME["tensorflow"] = "tensorflow"
DEFAULT_RUNTIME["keras"] = "tensorflow"


def load_runtime(name: str, model_path: Path, *, extra_paths: Mapping[str, Path] | None = None,
                 precision: str = "f32", device: str = "CPU", threads: int | None = None,
                 declared_inputs: Sequence[TensorInfo] = (), manifest=None) -> Runtime:
    """Load ``model_path`` with the engine ``name``.

    ``extra_paths`` maps model.json's extra file names to local paths (e.g.
    the OpenVINO ``.bin``). ``threads`` None means "what this process may
    really use" (see :mod:`common.runtimes.cpus`). ``declared_inputs`` is
    what model.json says about the inputs (:func:`declared_inputs`): engines
    whose format carries no input description (TorchScript) take it from
    there, the others check it against the model's own. ``manifest`` (the
    ModelManifest) goes to engines that read more of model.json (TensorFlow:
    signature, output names, Keras safe mode). A file whose content is a
    format the engine cannot run is refused here, naming the format.
    """
    try:
        target = _ENGINES[name]
    except KeyError:
        raise RuntimeLoadError(f"unknown runtime {name!r}; this runner has: {', '.join(sorted(_ENGINES))}") from None
    from common.runtimes.model_files import check_runtime_can_run

    check_runtime_can_run(name, Path(model_path))
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        from common.runtimes.families import missing_runtime_message

        raise RuntimeLoadError(missing_runtime_message(name, exc)) from exc
    cls = getattr(module, cls_name)
    options = {}
    if declared_inputs and "declared_inputs" in signature(cls).parameters:
        options["declared_inputs"] = tuple(declared_inputs)
    if manifest is not None and "manifest" in signature(cls).parameters:
        options["manifest"] = manifest
    return cls(Path(model_path), extra_paths=dict(extra_paths or {}), precision=precision,
               device=device, threads=threads, **options)


def declared_inputs(manifest) -> tuple[TensorInfo, ...]:
    """model.json's input (a :class:`common.manifest.ModelManifest`) as TensorInfo, when it
    gives ``input.shape``; the name is "" when model.json names none (the first input)."""
    if manifest.input.shape is None:
        return ()
    return (TensorInfo(manifest.input.name or "", tuple(manifest.input.shape), np.dtype(manifest.input.dtype)),)


def shape_conflict(declared: TensorInfo, actual: TensorInfo) -> str | None:
    """Why model.json's input shape contradicts the model's own, or None when they agree
    (a dynamic dimension on either side agrees with anything)."""
    if not actual.shape:  # the model does not say (dynamic rank)
        return None
    if len(declared.shape) != len(actual.shape):
        return (f"model.json input.shape {list(declared.shape)} has {len(declared.shape)} dimensions, "
                f"the model's input {actual.name!r} has {len(actual.shape)}: {_shape_text(actual.shape)}")
    clashes = [i for i, (d, a) in enumerate(zip(declared.shape, actual.shape))
               if d is not None and a is not None and d != a]
    if clashes:
        return (f"model.json input.shape {_shape_text(declared.shape)} contradicts the model's input "
                f"{actual.name!r} {_shape_text(actual.shape)} (dimension {', '.join(map(str, clashes))}): "
                f"fix input.shape in model.json (null for a dynamic dimension)")
    return None


def _shape_text(shape: Sequence[int | None]) -> str:
    return "[" + ", ".join("null" if d is None else str(d) for d in shape) + "]"
