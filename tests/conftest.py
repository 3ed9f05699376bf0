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
