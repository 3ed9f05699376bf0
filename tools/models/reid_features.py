"""Build the re-identification feature extractor: MobileNetV2's pooled 1280-d features as ONNX.

The network is :mod:`tools.models.mobilenet_v2` with the pinned ImageNet
weights (:func:`tools.models.build.load_mobilenet_v2`), cut before the
classifier: ``features`` -> global average pool -> flatten. The ONNX file has
input ``input`` [batch, 3, 224, 224] (float32, RGB, ImageNet mean/std) and
output ``features`` [batch, 1280]; the batch dimension is dynamic, so the reid
runner embeds every crop of a request in a few calls.

Built once into ``<assets>/built/mobilenet_v2_reid-<key>/`` (outside the
repository, like tools/models/build.py) and reused; ``key`` changes with the
weights, torch and :data:`BUILDER_VERSION`. Usage:
``python -m tools.models.reid_features`` prints the folder; the demo model
``demo/models/mobilenet-reid`` takes its file from :func:`reid_model_folder`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tools.assets import ASSETS
from tools.models.build import INPUT_SHAPE, WEIGHTS, load_mobilenet_v2
from tools.models.cache import built_folder, cache_key

log = logging.getLogger(__name__)

BUILDER_VERSION = "1"  # bump when the file built here changes
FILE_NAME = "mobilenet_v2_features.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "features"
FEATURES = 1280


@dataclass(frozen=True)
class ReidFiles:
    folder: Path
    onnx: Path  # FILE_NAME: input [batch, 3, 224, 224] -> features [batch, 1280]


def _key() -> str:
    import torch

    return cache_key(ASSETS[WEIGHTS].sha256, f"torch {torch.__version__}", f"reid builder {BUILDER_VERSION}")


def feature_extractor():
    """The eval-mode torch module: image batch -> [batch, 1280] pooled features."""
    import torch
    from torch import nn

    backbone = load_mobilenet_v2()

    class Features(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = backbone.features

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # Mean over H and W (not adaptive pooling): exports as ReduceMean, any input size.
            return self.features(x).mean(dim=(2, 3))

    return Features().eval()


def build_reid_features() -> ReidFiles:
    """The built file, building it on first use (one builder at a time, across processes)."""
    folder = built_folder("mobilenet_v2_reid", _key(), _build, "the MobileNetV2 feature extractor")
    return ReidFiles(folder, folder / FILE_NAME)


def reid_model_folder() -> Path:
    """The folder in which the demo model ``mobilenet-reid``'s file lies at the path its model.json names."""
    return build_reid_features().folder


def _build(out: Path) -> None:
    import torch

    model = feature_extractor()
    example = torch.zeros(INPUT_SHAPE)
    torch.onnx.export(model, (example,), str(out / FILE_NAME), dynamo=False, opset_version=17,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("%s", build_reid_features().folder)


if __name__ == "__main__":
    main()
