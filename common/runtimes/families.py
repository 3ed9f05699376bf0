"""Runner image families: which image carries which runtime.

The runner code is the same in every image; only what is installed differs
(requirements/runner-<family>[-gpu].txt, functions/gdrive-runner/function*.yaml).
An ONNX model so never carries TensorFlow, and a model whose runtime is not
installed in this image is told which image it needs.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

FAMILIES = ("onnx", "pytorch", "tensorflow")

# runtime name (model.json runtime.name) -> the family whose image installs it
RUNTIME_FAMILY: Mapping[str, str] = MappingProxyType({
    "onnxruntime": "onnx",
    "openvino": "onnx",  # the ONNX image carries OpenVINO too: it runs ONNX and IR models
    "torch": "pytorch",
    "tensorflow": "tensorflow",
    "tflite": "tensorflow",  # LiteRT ships in the TensorFlow image
})

IMAGE_PREFIX = "cvat.gdrive-runner"


def image_name(family: str, gpu: bool = False) -> str:
    """``cvat.gdrive-runner.<family>`` or ``...<family>-gpu``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown runner family {family!r} (known: {', '.join(FAMILIES)})")
    return f"{IMAGE_PREFIX}.{family}{'-gpu' if gpu else ''}"


def family_of(runtime: str) -> str | None:
    """The family whose image installs ``runtime``; None for an unknown runtime."""
    return RUNTIME_FAMILY.get(runtime)


def missing_runtime_message(runtime: str, cause: BaseException | str) -> str:
    """What a runner says when ``runtime`` cannot be imported in this image."""
    family = family_of(runtime)
    if family is None:
        return f"runtime {runtime!r} is not installed in this runner image ({cause})"
    return (f"runtime {runtime!r} is not installed in this runner image ({cause}): this model needs the "
            f"{family} runner image ({image_name(family)}, or {image_name(family, gpu=True)} on a GPU node)")
