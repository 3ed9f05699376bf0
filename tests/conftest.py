"""Shared fixtures: the demo registry built from real models, and runner workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.demo import RUNNER_DIR, build_registry
from tools.nuclio_harness import Worker

# `drive` (a Drive v3 stand-in on loopback) and `drive_service` (the real client pointed at it).
pytest_plugins = ("tests.drive_standin.fixtures",)


@pytest.fixture(scope="session")
def demo_registry(tmp_path_factory) -> Path:
    """The embedded demo registry (real models from pinned PyPI packages)."""
    return build_registry(tmp_path_factory.mktemp("demo") / "registry")


@pytest.fixture(scope="session")
def demo_worker(demo_registry, tmp_path_factory):
    """``demo_worker(model_folder)``: a runner worker serving that demo model (one per model per session)."""
    cache = tmp_path_factory.mktemp("cache")
    workers: dict[str, Worker] = {}

    def get(name: str) -> Worker:
        if name not in workers:
            workers[name] = Worker(RUNNER_DIR, env={"MODEL_REGISTRY": f"local:{demo_registry}", "MODEL_NAME": name,
                                                    "MODEL_CACHE_DIR": str(cache), "MODEL_CACHE_SIZE": "1GiB"})
        return workers[name]

    return get


def write_model(root: Path, folder: str, manifest: dict, files: dict[str, bytes]) -> Path:
    """Lay out one registry model folder: model.json plus its files."""
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.json").write_text(json.dumps(manifest))
    for rel, data in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_bytes(data)
    return target


def model_json(name: str, version: str = "1.0.0", **extra) -> dict:
    """A small valid detector model.json; ``extra`` overrides or adds keys."""
    data = {"name": name, "version": version, "framework": "onnx", "type": "detector",
            "file_name": "model.onnx", "labels": ["a", "b"], "input": {"shape": [1, 3, 32, 32]}}
    data.update(extra)
    return data


def registry_tree(root: Path) -> Path:
    """The registry every backend is tested on: versions (with and without their
    own model.json), an OpenVINO pair, and one folder per kind of bad entry."""
    write_model(root, "alpha", model_json("alpha", "2.1.0"), {"model.onnx": b"current weights"})
    write_model(root / "alpha" / "previous_versions", "v1.0.0", model_json("alpha", "1.0.0"),
                {"model.onnx": b"old weights"})
    (root / "alpha" / "previous_versions" / "v2.0.0").mkdir()  # inherits the current model.json
    (root / "alpha" / "previous_versions" / "v2.0.0" / "model.onnx").write_bytes(b"v2.0 weights")
    write_model(root, "beta-ir", model_json("beta", framework="openvino", file_name="net.xml"),
                {"net.xml": b"<net/>", "net.bin": b"\x00" * 10})
    write_model(root, "no-json", {}, {}).joinpath("model.json").unlink()
    write_model(root, "no-weights", model_json("no-weights"), {})
    write_model(root, "bad-json", {}, {}).joinpath("model.json").write_text('{"name": "x",}')
    write_model(root, "bad-field", model_json("bad-field", input={"layout": "NCWH"}), {"model.onnx": b"x"})
    (root / ".hidden").mkdir()
    return root
