"""Which device a runtime runs the model on, and what happens when a GPU is missing.

Each runtime finds GPUs its own way (ONNX Runtime: the CUDA/TensorRT execution
providers and an NVIDIA device node; torch: ``torch.cuda``; OpenVINO: its
``GPU`` plugin), so :func:`plan_device` asks the runtime that will run the
model. model.json's ``runtime.device`` picks the device when given; when it is
absent the runner uses the GPU if the runtime sees one (a GPU image), else the
CPU.

A model that needs a GPU (``requirements.gpu_required``, or an explicit GPU
``runtime.device``) on a runner without one is never run slowly by surprise:
``RUNNER_GPU_FALLBACK`` decides. ``fail`` (the default) stops the start with
:class:`GpuUnavailable`; ``cpu`` runs it on the CPU with a warning. The device
in use is logged at start either way.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from typing import Callable, Mapping

from common.errors import RuntimeLoadError, SettingsError
from common.runtimes.families import family_of, image_name

log = logging.getLogger(__name__)

FALLBACK_ENV = "RUNNER_GPU_FALLBACK"
FALLBACK_POLICIES = ("fail", "cpu")

# model.json runtime.device spellings that mean "a GPU"
_GPU_WORDS = ("GPU", "CUDA", "TENSORRT")


class GpuUnavailable(RuntimeLoadError):
    """The model needs a GPU, none is visible, and the policy says fail."""


@dataclass(frozen=True)
class Gpu:
    """What a runtime sees: ``device`` is the engine's own device string
    (``CUDA``, ``TensorRT``, ``cuda``, ``GPU``), ``detail`` says which one."""

    device: str
    detail: str


@dataclass(frozen=True)
class DevicePlan:
    """The device an engine gets (its ``device`` argument) and why."""

    runtime: str
    device: str
    gpu: bool
    reason: str


def fallback_policy(env: Mapping[str, str] | None = None) -> str:
    """``RUNNER_GPU_FALLBACK``: fail (default) or cpu; anything else is a SettingsError."""
    env = os.environ if env is None else env
    value = env.get(FALLBACK_ENV, "").strip().lower() or "fail"
    if value not in FALLBACK_POLICIES:
        raise SettingsError(f"{FALLBACK_ENV} must be one of {', '.join(FALLBACK_POLICIES)}, "
                            f"got {env.get(FALLBACK_ENV)!r}")
    return value


def nvidia_devices() -> list[str]:
    """NVIDIA device nodes this container can open (the NVIDIA container runtime adds them)."""
    return sorted(p for p in glob.glob("/dev/nvidia[0-9]*") if os.access(p, os.R_OK | os.W_OK))


def _onnxruntime_gpu() -> Gpu | None:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    nodes = nvidia_devices()
    if not nodes:
        return None
    if "TensorrtExecutionProvider" in providers:
        return Gpu("TensorRT", f"TensorRT and CUDA execution providers, {nodes[0]}")
    if "CUDAExecutionProvider" in providers:
        return Gpu("CUDA", f"CUDA execution provider, {nodes[0]}")
    return None


def _torch_gpu() -> Gpu | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return Gpu("cuda", f"cuda:0 {torch.cuda.get_device_name(0)}")


def _openvino_gpu() -> Gpu | None:
    from common.runtimes.openvino_engine import _get_core

    core = _get_core()
    gpus = [d for d in core.available_devices if d.startswith("GPU")]
    if not gpus:
        return None
    return Gpu("GPU", f"{gpus[0]} {core.get_property(gpus[0], 'FULL_DEVICE_NAME')}")


# runtime name -> probe; a runtime without one is taken to see no GPU
GPU_PROBES: dict[str, Callable[[], Gpu | None]] = {
    "onnxruntime": _onnxruntime_gpu,
    "torch": _torch_gpu,
    "openvino": _openvino_gpu,
}


def find_gpu(runtime: str) -> Gpu | None:
    """The GPU ``runtime`` would use, or None (also when the runtime is not installed)."""
    probe = GPU_PROBES.get(runtime)
    if probe is None:
        return None
    try:
        return probe()
    except ImportError:
        return None


def is_gpu_device(device: str) -> bool:
    return device.strip().upper().split(":")[0].split(".")[0] in _GPU_WORDS


def plan_device(runtime: str, *, model: str, requested: str | None, gpu_required: bool,
                env: Mapping[str, str] | None = None,
                probe: Callable[[str], Gpu | None] = find_gpu) -> DevicePlan:
    """The device ``runtime`` runs ``model`` on.

    ``requested`` is model.json's ``runtime.device`` as written (None when
    absent). Raises :class:`GpuUnavailable` when a GPU is needed, none is
    visible and ``RUNNER_GPU_FALLBACK`` is fail; logs the choice.
    """
    policy = fallback_policy(env)
    wants_gpu = gpu_required or (requested is not None and is_gpu_device(requested))
    if requested is not None and not wants_gpu:
        plan = DevicePlan(runtime, requested, False, f"model.json runtime.device {requested!r}")
    else:
        gpu = probe(runtime)
        if gpu is not None:
            device = requested if requested is not None and runtime == "openvino" else gpu.device
            plan = DevicePlan(runtime, device, True, gpu.detail)
        elif not wants_gpu:
            plan = DevicePlan(runtime, "CPU", False, f"no GPU visible to {runtime}")
        else:
            why = ("model.json requirements.gpu_required" if gpu_required
                   else f"model.json runtime.device {requested!r}")
            family = family_of(runtime)
            where = f"the GPU runner image ({image_name(family, gpu=True)})" if family else "a GPU runner image"
            if policy == "fail":
                raise GpuUnavailable(
                    f"model {model!r} needs a GPU ({why}), but {runtime} sees none in this runner: deploy it "
                    f"with {where} on a GPU node, or set {FALLBACK_ENV}=cpu to run it on the CPU (slowly)")
            log.warning("model %r needs a GPU (%s), but %s sees none in this runner: running it on the CPU "
                        "because %s=cpu; expect it to be much slower", model, why, runtime, FALLBACK_ENV)
            plan = DevicePlan(runtime, "CPU", False, f"GPU fallback to CPU ({FALLBACK_ENV}=cpu)")
    log.info("device: %s runs %s on %s (%s)", runtime, model, plan.device, plan.reason)
    return plan
