"""What a runner worker does at start: settings -> registry -> cache -> runtime -> pipeline.

Settings come from the environment (registry-sync writes them into each
published function's spec):

=====================  ==================================================  ======================
variable               meaning                                             default
=====================  ==================================================  ======================
``MODEL_REGISTRY``     ``local:<folder>`` or a folder path                  ``local:/opt/registry``
``MODEL_NAME``         the model's folder name (or model.json ``name``)     required
``MODEL_VERSION``      pin a version (``1.2.0``); empty = current           current
``MODEL_CACHE_DIR``    the shared disk cache (one per host)                 ``/var/cache/cvat-models``
``MODEL_CACHE_SIZE``   cache byte limit (``20GiB``, ``500MB``, bytes)       ``20GiB``
``RUNNER_THREADS``     threads per worker (see common.runtimes.cpus)        usable CPUs / workers
=====================  ==================================================  ======================
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from common import __version__
from common.cache import ModelCache, Snapshot, parse_size
from common.errors import ModelConfigError, RegistryError
from common.imaging import max_image_pixels
from common.pipeline import DetectorPipeline
from common.registry import ModelRecord, Registry
from common.registry.local import LocalRegistry
from common.runtimes import Runtime, load_runtime

log = logging.getLogger(__name__)

SERVED_TYPES = ("detector",)


@dataclass(frozen=True)
class RunnerSettings:
    registry: str
    model: str
    version: str | None
    cache_dir: Path
    cache_size: int

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RunnerSettings":
        env = os.environ if env is None else env
        model = env.get("MODEL_NAME", "").strip()
        if not model:
            raise ModelConfigError("MODEL_NAME is not set: the runner needs the registry model to serve",
                                   source="environment")
        try:
            size = parse_size(env.get("MODEL_CACHE_SIZE", "20GiB"))
        except ValueError as exc:
            raise ModelConfigError(f"MODEL_CACHE_SIZE: {exc}", source="environment") from None
        if size < 1:
            raise ModelConfigError(f"MODEL_CACHE_SIZE must be at least 1 byte, got {env['MODEL_CACHE_SIZE']!r}",
                                   source="environment")
        try:  # checked here so that a bad value stops the start, not every request
            max_image_pixels()
        except ValueError as exc:
            raise ModelConfigError(str(exc), source="environment") from None
        return cls(registry=env.get("MODEL_REGISTRY", "local:/opt/registry"), model=model,
                   version=env.get("MODEL_VERSION", "").strip() or None,
                   cache_dir=Path(env.get("MODEL_CACHE_DIR", "/var/cache/cvat-models")), cache_size=size)


def open_registry(spec: str) -> Registry:
    """``local:<folder>`` (or a bare folder path) -> LocalRegistry."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "local":
        return LocalRegistry(rest)
    if sep and kind in ("gdrive", "gdrive-id"):
        raise RegistryError("the Google Drive backend is not part of this runner build yet")
    return LocalRegistry(spec)


@dataclass
class LoadedModel:
    record: ModelRecord
    snapshot: Snapshot
    runtime: Runtime
    pipeline: DetectorPipeline
    timings: dict[str, float]  # seconds spent at start: files (cache checkout), load, warm_up


def load_model(settings: RunnerSettings, registry: Registry | None = None) -> LoadedModel:
    """Resolve, fetch (through the cache), load and wrap the model; pins its files."""
    registry = registry or open_registry(settings.registry)
    record = registry.resolve(settings.model, settings.version)
    manifest = record.manifest
    if manifest.type not in SERVED_TYPES:
        raise ModelConfigError([("$.type", f"type {manifest.type!r} is not served by this runner yet "
                                           f"(served: {', '.join(SERVED_TYPES)})")], source=f"{record.folder}/model.json")
    cache = ModelCache(settings.cache_dir, settings.cache_size, limit_setting="MODEL_CACHE_SIZE")
    clock = time.perf_counter()
    snapshot = cache.checkout(record, registry.fetch)
    timings = {"files": time.perf_counter() - clock}
    clock = time.perf_counter()
    runtime = load_runtime(manifest.runtime.name, snapshot.file(manifest.file_name),
                           extra_paths={p: snapshot.file(p) for p in manifest.extra_files},
                           precision=manifest.runtime.precision, device=manifest.runtime.device)
    pipeline = DetectorPipeline(manifest, runtime)
    timings["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    pipeline.warm_up()
    timings["warm_up"] = time.perf_counter() - clock
    log.info("pack %s: serving %s %s (%s on %s via %s); files ready in %.2fs, loaded in %.2fs, warm-up %.2fs",
             __version__, manifest.name, manifest.version, manifest.framework, runtime.device,
             manifest.runtime.name, timings["files"], timings["load"], timings["warm_up"])
    return LoadedModel(record, snapshot, runtime, pipeline, timings)
