"""What a runner worker does at start: settings -> registry -> cache -> runtime -> pipeline.

Settings come from the environment (registry-sync writes them into each
published function's spec):

=========================  ==================================================  ======================
variable                   meaning                                             default
=========================  ==================================================  ======================
``MODEL_REGISTRY``         ``local:<folder>``, a folder path,                   ``local:/opt/registry``
                           ``gdrive:<root folder name>`` (empty: CVAT_Models)
                           or ``gdrive-id:<Drive folder id>``
``MODEL_NAME``             the model's folder name (or model.json ``name``)     required
``MODEL_VERSION``          pin a version (``1.2.0``); empty = current           current
``MODEL_CACHE_DIR``        the shared disk cache (one per host)                 ``/var/cache/cvat-models``
``MODEL_CACHE_SIZE``       cache byte limit (``20GiB``, ``500MB``, bytes)       ``20GiB``
``RUNNER_THREADS``         threads per worker (see common.runtimes.cpus)        usable CPUs / workers
``DRIVE_ROOT_URL``         Drive API root (a stand-in); empty = Google's        Google
``DRIVE_RETRIES``          attempts per Drive call before it counts as failed   ``6``
``MODEL_REFRESH_SECONDS``  seconds between background checks for a new        ``300``
                           version of the model (``0``: never; see
                           common/refresh.py)
=========================  ==================================================  ======================

Drive credentials: see :mod:`common.registry.drive_auth`
(``GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY``, ``GOOGLE_DRIVE_API_KEY`` or
``GOOGLE_DRIVE_USE_ADC=1``).

Offline start: when the registry cannot be read (Drive unreachable, 5xx,
quota, refused credentials; not "no such model"), the newest cached snapshot
of the model (or the pinned version) is served instead, with a warning; with
nothing cached the registry's error stops the start.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from common import __version__
from common.cache import ModelCache, Snapshot, parse_size
from common.errors import ModelConfigError, ModelNotFound, RegistryError, SettingsError
from common.imaging import max_image_pixels
from common.offline import cached_record
from common.registry import ModelRecord, Registry, RemoteFile
from common.registry.opening import open_registry
from common.runtimes import Runtime
from common.runtimes.start import open_model_runtime
from common.serving import Pipeline, build_pipeline

log = logging.getLogger(__name__)

# Every type with a CVAT function kind (common.publish.kinds.CVAT_KINDS; "other" has none):
# detector, segmentation, classification and keypoint reach CVAT as detectors.
SERVED_TYPES = ("detector", "segmentation", "classification", "keypoint", "interactor", "tracker", "reid")
DEFAULT_REFRESH_SECONDS = 300.0


@dataclass(frozen=True)
class RunnerSettings:
    registry: str
    model: str
    version: str | None
    cache_dir: Path
    cache_size: int
    # The environment the settings came from (registry credentials are read from it).
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    # Seconds between background checks for a new version (0: never).
    refresh_seconds: float = DEFAULT_REFRESH_SECONDS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RunnerSettings":
        env = os.environ if env is None else env
        model = env.get("MODEL_NAME", "").strip()
        if not model:
            raise SettingsError("MODEL_NAME is not set: the runner needs the registry model to serve")
        try:
            size = parse_size(env.get("MODEL_CACHE_SIZE", "20GiB"))
        except ValueError as exc:
            raise SettingsError(f"MODEL_CACHE_SIZE: {exc}") from None
        if size < 1:
            raise SettingsError(f"MODEL_CACHE_SIZE must be at least 1 byte, got {env['MODEL_CACHE_SIZE']!r}")
        try:  # checked here so that a bad value stops the start, not every request
            max_image_pixels()
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        return cls(registry=env.get("MODEL_REGISTRY", "local:/opt/registry"), model=model,
                   version=env.get("MODEL_VERSION", "").strip() or None,
                   cache_dir=Path(env.get("MODEL_CACHE_DIR", "/var/cache/cvat-models")), cache_size=size,
                   env=dict(env), refresh_seconds=parse_refresh_seconds(env))


def parse_refresh_seconds(env: Mapping[str, str]) -> float:
    """``MODEL_REFRESH_SECONDS``: a finite number of seconds >= 0 (0 disables); default 300."""
    text = env.get("MODEL_REFRESH_SECONDS", "").strip()
    if not text:
        return DEFAULT_REFRESH_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise SettingsError(f"MODEL_REFRESH_SECONDS must be a number of seconds, 0 or more (0: never check), "
                               f"got {env.get('MODEL_REFRESH_SECONDS')!r}")
    return value


@dataclass
class LoadedModel:
    record: ModelRecord
    snapshot: Snapshot
    runtime: Runtime
    pipeline: Pipeline  # common.serving: the model's CVAT kind decides the class
    timings: dict[str, float]  # seconds spent at start: files (cache checkout), load, warm_up


def load_model(settings: RunnerSettings, registry: Registry | None = None) -> LoadedModel:
    """Resolve, fetch (through the cache), load and wrap the model; pins its files."""
    registry = registry or open_registry(settings.registry, settings.env or None, settings.cache_dir)
    fetch = registry.fetch
    try:
        record = registry.resolve(settings.model, settings.version)
    except ModelNotFound:
        raise  # the registry answered: there is no such model (version); serving a stale copy would hide that
    except RegistryError as exc:
        cached = cached_record(settings.cache_dir, settings.model, settings.version)
        if cached is None:
            raise
        log.warning("the registry (%s) failed: %s; serving the cached copy of %s %s from %s",
                    settings.registry, exc, cached.folder, cached.version, settings.cache_dir)
        record, fetch = cached, _offline_fetch(exc)
    return load_record(settings, record, fetch)


def load_record(settings: RunnerSettings, record: ModelRecord, fetch) -> LoadedModel:
    """Load one resolved record: cache checkout (pins its files), runtime, pipeline, warm-up.

    The path of :func:`load_model` after the registry answered (or the cache
    stood in for it); the background refresh (common/refresh.py) loads a new
    version through it too. Nothing is pinned when it raises."""
    manifest = record.manifest
    if manifest.type not in SERVED_TYPES:
        raise ModelConfigError([("$.type", f"type {manifest.type!r} is not served by this runner yet "
                                           f"(served: {', '.join(SERVED_TYPES)})")], source=f"{record.folder}/model.json")
    cache = ModelCache(settings.cache_dir, settings.cache_size, limit_setting="MODEL_CACHE_SIZE")
    clock = time.perf_counter()
    snapshot = cache.checkout(record, fetch)
    timings = {"files": time.perf_counter() - clock}
    try:
        clock = time.perf_counter()
        # files checked (common/runtimes/filecheck.py), device planned (devices.py), then the engine
        runtime = open_model_runtime(manifest, {p: snapshot.file(p) for p in (manifest.file_name,
                                                                              *manifest.extra_files)},
                                     env=settings.env or None)
        pipeline = build_pipeline(manifest, runtime)
        timings["load"] = time.perf_counter() - clock
        clock = time.perf_counter()
        pipeline.warm_up()
        timings["warm_up"] = time.perf_counter() - clock
    except BaseException:
        snapshot.release()  # a refresh that fails must not leave the new files pinned
        raise
    log.info("pack %s: serving %s %s (%s on %s via %s); files ready in %.2fs, loaded in %.2fs, warm-up %.2fs",
             __version__, manifest.name, manifest.version, manifest.framework, runtime.device,
             manifest.runtime.name, timings["files"], timings["load"], timings["warm_up"])
    return LoadedModel(record, snapshot, runtime, pipeline, timings)


def _offline_fetch(cause: RegistryError):
    """The fetch of an offline start: a blob the cache lost meanwhile cannot be fetched."""
    def fetch(file: RemoteFile, sink) -> None:
        raise RegistryError(f"{file.path} is no longer cached and the registry is unavailable ({cause})")
    return fetch


def start_refresher(settings: RunnerSettings, model: LoadedModel | None = None, registry: Registry | None = None,
                    **options):
    """A started :class:`common.refresh.ModelRefresher` serving ``model`` (default:
    :func:`load_model`, on the same registry the checks use, opened once); it
    checks the registry every ``settings.refresh_seconds`` (no thread when 0).
    ``options`` go to ModelRefresher (``on_swap``, ``clock``)."""
    from common.refresh import ModelRefresher

    registry = registry or open_registry(settings.registry, settings.env or None, settings.cache_dir)
    if model is None:
        model = load_model(settings, registry)
    refresher = ModelRefresher(settings, model, registry=registry, **options)
    refresher.start()
    return refresher
