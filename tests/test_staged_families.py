"""Each staged runner build folder works on its own, with only its family's runtime.

``python -m tools.stage gdrive-runner --all`` makes one folder per image
(onnx, pytorch, tensorflow; CPU and GPU). For each, a clean interpreter
(``python -I``: no PYTHONPATH, no current directory) gets only that folder on
``sys.path`` (what Nuclio's PYTHONPATH=/opt/nuclio gives) plus site-packages,
and an import blocker refuses every other family's runtime and the
development-only packages, as they are absent from that image. The folder's
``main.py`` then starts on a registry model of its family (init_context through
real nuclio-sdk objects, tools/nuclio_harness.py) and answers one CVAT request
with the exact shape the model's fixed output means.

The GPU folders carry the same code with GPU wheels in their requirements; here
they run on this machine's CPU builds of the same runtimes.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common import __version__
from tests import synthetic_models as sm
from tests.conftest import write_model
from tools.stage import REPO, RUNNER_VARIANTS, stage_all_families

# x1 y1 x2 y2 score class, padded: one box above the default 0.5 threshold.
ROWS = np.array([[[8, 8, 24, 40, 0.9, 1], [30, 10, 60, 20, 0.4, 0], [0, 0, 0, 0, 0, 0]]], np.float32)
# A 128x64 picture letterboxed into the 64x64 input: scale 0.5, 16 px of padding above.
EXPECTED = [{"label": "other", "type": "rectangle", "points": [16.0, 0.0, 48.0, 48.0], "confidence": "0.9000"}]
RUNTIME_MODULES = {"onnx": {"onnxruntime", "openvino"}, "pytorch": {"torch"},
                   "tensorflow": {"tensorflow", "keras", "tf_keras", "ai_edge_litert", "tflite_runtime"}}
DEV_ONLY = {"onnx", "pytest", "tqdm"}  # requirements/dev.txt only: in no runner image


def blocked_for(family: str) -> set[str]:
    return set().union(*(mods for fam, mods in RUNTIME_MODULES.items() if fam != family)) | DEV_ONLY


def _manifest(name: str, framework: str, file_name: str) -> dict:
    return {"name": name, "version": "1.0.0", "framework": framework, "type": "detector", "file_name": file_name,
            "labels": ["thing", "other"],
            "input": {"name": "images", "shape": [1, 3, 64, 64],
                      "preprocessing": {"normalize": True, "resize": {"pad_value": 114}}},
            "output": {"decoder": {"name": "yolo", "nms_in_graph": True, "rows": "xyxy_score_class"},
                       "score_threshold": 0.5}}


def _torchscript(path: Path) -> None:
    import torch

    class FixedRows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("rows", torch.from_numpy(ROWS))

        def forward(self, images):
            return self.rows + images.sum() * 0.0

    torch.jit.save(torch.jit.trace(FixedRows().eval(), torch.zeros(1, 3, 64, 64)), str(path))


def _saved_model(folder: Path) -> None:
    from common.runtimes.tensorflow_engine import import_tensorflow

    tf = import_tensorflow()
    module = tf.Module()
    rows = tf.constant(ROWS)

    @tf.function(input_signature=[tf.TensorSpec([1, 3, 64, 64], tf.float32, name="images")])
    def serve(images):
        return {"output0": rows + tf.reduce_sum(images) * 0.0}

    module.serve = serve
    tf.saved_model.save(module, str(folder), signatures={"serving_default": serve})


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    """One fixed-output detector per family, each in its family's format."""
    root = tmp_path_factory.mktemp("families") / "registry"
    write_model(root, "rows-onnx", _manifest("rows-onnx", "onnx", "model.onnx"),
                {"model.onnx": sm.fixed_rows_detector(ROWS, (64, 64))})
    write_model(root, "rows-pytorch", _manifest("rows-pytorch", "pytorch", "model.pt"), {})
    _torchscript(root / "rows-pytorch" / "model.pt")
    write_model(root, "rows-tensorflow", {**_manifest("rows-tensorflow", "tensorflow", "saved_model/saved_model.pb"),
                                          "extra_files": ["saved_model/variables"]}, {})
    _saved_model(root / "rows-tensorflow" / "saved_model")
    return root


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("build")
    return {p.name.removeprefix("gdrive-runner-"): p for p in stage_all_families(root)}


CHILD = textwrap.dedent("""
    import importlib.abc, importlib.util, json, os, sys
    params = json.loads(sys.argv[1])
    folder = params["folder"]
    attempts = []

    class Blocker(importlib.abc.MetaPathFinder):
        # This family's image does not install these: an import must fail as it would there.
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in params["blocked"]:
                # Who asked: the first frame outside the import machinery.
                frame = sys._getframe(1)
                while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
                    frame = frame.f_back
                attempts.append([name, frame.f_code.co_filename if frame is not None else "?"])
                raise ModuleNotFoundError(f"No module named {name!r} (not in this image)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    # Nothing on the path but the build folder could provide the function's code.
    assert not any(os.path.exists(os.path.join(p, "common")) or os.path.exists(os.path.join(p, "main.py"))
                   for p in sys.path), sys.path
    sys.path.insert(0, folder)   # Nuclio: PYTHONPATH=/opt/nuclio
    spec = importlib.util.spec_from_file_location("nuclio_harness", params["harness"])
    harness = sys.modules["nuclio_harness"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    worker = harness.Worker(folder, env=params["env"], log_level="info")
    result = worker.invoke(harness.http_event({"image": params["image"]}))
    ours = [m.__file__ for n, m in sys.modules.items()
            if (n == "common" or n.startswith("common.")) and getattr(m, "__file__", None)]
    ours_asked = sorted({name for name, importer in attempts if importer.startswith(folder)})
    probes = sorted({name.partition(".")[0] for name, importer in attempts if not importer.startswith(folder)})
    print(json.dumps({"status": result.status, "body": result.json(), "ours_asked": ours_asked, "probes": probes,
                      "outside": [f for f in ours if not f.startswith(folder)], "common_modules": len(ours),
                      "loaded_blocked": sorted(n for n in sys.modules if n.partition(".")[0] in params["blocked"]),
                      "runtime": worker.context.user_data.model.record.manifest.runtime.name}))
""")


def _white_png(w: int, h: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (255, 255, 255)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_every_variant_is_staged():
    assert sorted(RUNNER_VARIANTS) == ["onnx", "onnx-gpu", "pytorch", "pytorch-gpu", "tensorflow", "tensorflow-gpu"]


@pytest.mark.parametrize("variant", sorted(RUNNER_VARIANTS))
def test_staged_folder_runs_its_family_in_a_clean_process(variant, staged, registry, tmp_path):
    family = variant.removesuffix("-gpu")
    folder = staged[variant]
    params = {"folder": str(folder), "blocked": sorted(blocked_for(family)),
              "harness": str(REPO / "tools" / "nuclio_harness.py"), "image": _white_png(128, 64),
              "env": {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": f"rows-{family}",
                      "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_CACHE_SIZE": "64MiB",
                      "MODEL_REFRESH_SECONDS": "0"}}
    done = subprocess.run([sys.executable, "-I", "-c", CHILD, json.dumps(params)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["status"] == 200 and report["body"] == EXPECTED
    assert report["runtime"] == {"onnx": "onnxruntime", "pytorch": "torch", "tensorflow": "tensorflow"}[family]
    assert report["outside"] == [] and report["common_modules"] > 10
    assert report["loaded_blocked"] == []
    [ready] = [line for line in done.stderr.splitlines() if "model ready" in line]
    assert f"'pack_version': '{__version__}'" in ready and f"'model': 'rows-{family}'" in ready, ready
    # The pack's code never reaches for another image's packages; third-party packages may probe
    # for optional ones (torch for tqdm) and carry on without them, as they do in the image.
    assert report["ours_asked"] == [], f"{variant}'s code imports another image's packages"
    assert set(report["probes"]) <= {"tqdm"}, report["probes"]


def test_the_blocker_bites_a_model_of_another_family_is_told_its_image(staged, registry, tmp_path):
    """The pytorch image (onnxruntime and OpenVINO blocked) given an ONNX model: it fails at start
    and names the image the model needs."""
    params = {"folder": str(staged["pytorch"]), "blocked": sorted(blocked_for("pytorch")),
              "harness": str(REPO / "tools" / "nuclio_harness.py"), "image": _white_png(8, 8),
              "env": {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": "rows-onnx",
                      "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_CACHE_SIZE": "64MiB",
                      "MODEL_REFRESH_SECONDS": "0"}}
    done = subprocess.run([sys.executable, "-I", "-c", CHILD, json.dumps(params)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert ("runtime 'onnxruntime' is not installed in this runner image (No module named 'onnxruntime' (not in "
            "this image)): this model needs the onnx runner image (cvat.gdrive-runner.onnx, or "
            "cvat.gdrive-runner.onnx-gpu on a GPU node)") in done.stderr
