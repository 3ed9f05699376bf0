"""PyTorch engine: TorchScript archives (.pt/.pth) and torch.export programs (.pt2).

The file is inspected first (:func:`common.runtimes.filecheck.inspect_torch`):
a plain state_dict or a pickled module is refused without unpickling it.
TorchScript is loaded with ``torch.jit.load`` (TorchScript's own format,
no Python pickle of arbitrary classes); a .pt2 with ``torch.export.load``
while every ``torch.load`` it makes is forced to ``weights_only=True``.

TorchScript carries no description of its input, so the input's shape and
dtype come from model.json (``declared_inputs``); a .pt2 describes its own.
Outputs are named ``output0``, ``output1``, ... in the order the module
returns them (a dict's keys when it returns a dict).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from common.errors import RuntimeLoadError
from common.runtimes import Runtime, TensorInfo, shape_conflict
from common.runtimes.cpus import threads_per_worker
from common.runtimes.filecheck import ModelFileError, inspect_torch, weights_only_torch_load

log = logging.getLogger(__name__)

_TORCH_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.float64: np.float64,
                 torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16, torch.int32: np.int32,
                 torch.int64: np.int64, torch.bool: np.bool_}


def torch_device(device: str) -> torch.device:
    """model.json / device-plan spellings -> a torch device (CPU, cuda, cuda:1, GPU)."""
    text = device.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    if text in ("gpu", "cuda") or text.startswith(("cuda:", "gpu.")):
        if not torch.cuda.is_available():
            raise RuntimeLoadError(f"device {device!r} needs CUDA, which this torch {torch.__version__} does not "
                                   f"see (the pytorch GPU runner image cvat.gdrive-runner.pytorch-gpu has it)")
        index = text.split(":")[1] if ":" in text else text.split(".")[1] if "." in text else "0"
        return torch.device(f"cuda:{index}")
    raise RuntimeLoadError(f"torch has no device {device!r} (use CPU or cuda)")


def _dims(value) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) else None for d in value.shape)


class TorchEngine(Runtime):
    """A TorchScript module or torch.export program, in inference mode on ``device``."""

    def __init__(self, model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                 device: str = "CPU", threads: int | None = None, declared_inputs: tuple[TensorInfo, ...] = ()):
        self.model_path = Path(model_path)
        name = self.model_path.name
        if precision.lower() not in ("f32", "fp32", "float32"):
            log.warning("torch runs the model's own precision; ignoring precision %r", precision)
        if not self.model_path.is_file():
            raise RuntimeLoadError(f"{name}: model file not found at {self.model_path}")
        self._device = torch_device(device)
        self.kind = inspect_torch(self.model_path).kind
        self.threads = int(threads) if threads else threads_per_worker()
        torch.set_num_threads(self.threads)
        try:
            if self.kind == "torchscript":
                self.module = torch.jit.load(str(self.model_path), map_location=self._device).eval()
                self.inputs = self._script_inputs(declared_inputs)
            else:
                with weights_only_torch_load():
                    program = torch.export.load(str(self.model_path))
                self.inputs = self._program_inputs(program, declared_inputs)
                self.outputs = self._program_outputs(program)
                self.module = program.module().to(self._device)
        except (RuntimeLoadError, ModelFileError):
            raise
        except Exception as exc:  # torch raises RuntimeError, pickle.UnpicklingError, ValueError ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeLoadError(f"{name}: torch cannot load the {self.kind} file: {first}") from exc
        self._input_names = [i.name for i in self.inputs]
        self._lock = threading.Lock()
        self.device = "cuda" if self._device.type == "cuda" else "CPU"
        if self.kind == "torchscript":
            self.outputs = self._probe_outputs()
        log.info("torch %s loaded %s (%s) on %s with %d thread(s)", torch.__version__, name, self.kind,
                 self._device, self.threads)

    # -- describing the model ------------------------------------------------
    def _script_inputs(self, declared: tuple[TensorInfo, ...]) -> list[TensorInfo]:
        name = self.model_path.name
        try:
            arguments = [a for a in self.module.forward.schema.arguments if a.name != "self"]
        except AttributeError:
            raise RuntimeLoadError(f"{name}: the TorchScript module has no forward method") from None
        required = [a for a in arguments if not a.has_default_value()]
        if len(required) != 1:
            raise RuntimeLoadError(f"{name}: forward takes {len(required)} required arguments "
                                   f"({', '.join(a.name for a in required)}); the runner feeds one image tensor")
        if not declared:
            raise RuntimeLoadError(f"{name}: a TorchScript module carries no input shape or dtype: give "
                                   f"input.shape (and input.dtype unless float32) in model.json, "
                                   f"e.g. [1, 3, 224, 224] (null for a dynamic dimension)")
        want = declared[0]
        return [TensorInfo(required[0].name, want.shape, want.dtype)]

    def _program_inputs(self, program, declared: tuple[TensorInfo, ...]) -> list[TensorInfo]:
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        infos = []
        for spec in program.graph_signature.input_specs:
            if spec.kind.name != "USER_INPUT":
                continue
            node = placeholders[spec.arg.name]
            val = node.meta.get("val")
            dtype = np.dtype(_TORCH_DTYPES.get(getattr(val, "dtype", None), np.float32))
            infos.append(TensorInfo(spec.arg.name, _dims(val) if val is not None else (), dtype))
        for want in declared:
            actual = next((i for i in infos if i.name == want.name), None) if want.name else \
                (infos[0] if infos else None)
            problem = shape_conflict(want, actual) if actual is not None else None
            if problem:
                raise RuntimeLoadError(f"{self.model_path.name}: {problem}")
        return infos

    def _program_outputs(self, program) -> list[TensorInfo]:
        out_node = next(n for n in program.graph.nodes if n.op == "output")
        values = out_node.args[0]
        infos = []
        for i, node in enumerate(values if isinstance(values, (list, tuple)) else [values]):
            val = getattr(node, "meta", {}).get("val")
            dtype = np.dtype(_TORCH_DTYPES.get(getattr(val, "dtype", None), np.float32))
            infos.append(TensorInfo(f"output{i}", _dims(val) if val is not None else (), dtype))
        return infos

    def _probe_outputs(self) -> list[TensorInfo]:
        """Output names, shapes and dtypes from one run on zeros when the input shape is static
        (a dynamic one leaves them to the first real run)."""
        shape = self.inputs[0].shape
        if not shape or any(d is None for d in shape):
            return []
        result = self.run({self.inputs[0].name: np.zeros(shape, self.inputs[0].dtype)})
        return [TensorInfo(k, tuple(v.shape), v.dtype) for k, v in result.items()]

    # -- running ---------------------------------------------------------------
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.model_path.name
        if set(feeds) != set(self._input_names):
            raise RuntimeLoadError(f"{name}: feeds do not match the model inputs "
                                   f"(expected {sorted(self._input_names)}, got {sorted(feeds)})")
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self._device) for n in self._input_names]
        try:
            with self._lock, torch.inference_mode():
                result = self.module(*args)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeLoadError(f"{name}: torch failed to run the model: {first}") from exc
        return self._named(result)

    def _named(self, result: Any) -> dict[str, np.ndarray]:
        if isinstance(result, torch.Tensor):
            items = [("output0", result)]
        elif isinstance(result, (list, tuple)):
            items = [(f"output{i}", v) for i, v in enumerate(result)]
        elif isinstance(result, dict):
            items = [(str(k), v) for k, v in result.items()]
        else:
            raise RuntimeLoadError(f"{self.model_path.name}: the model returned {type(result).__name__}; "
                                   f"the runner takes a tensor, a tuple/list of tensors or a dict of tensors")
        bad = [k for k, v in items if not isinstance(v, torch.Tensor)]
        if bad:
            raise RuntimeLoadError(f"{self.model_path.name}: output(s) {', '.join(bad)} are not tensors")
        return {k: v.detach().to("cpu").numpy() for k, v in items}
