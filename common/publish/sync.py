"""One registry-sync run, end to end, and the report it answers with.

A run: list the registry -> per model: CVAT kind, render, gate (CVAT would
accept it, files present, optional smoke inference on ``samples/``) ->
reconcile the rendered set with the Nuclio dashboard -> report::

    {"synced": [...folders...], "errors": [{"folder", "error"}],
     "total_folders": N, "synced_count": n, "error_count": e,
     "created": [...], "updated": [...], "deleted": [...], "unchanged": [...],
     "kept": [...], "stale": [...], "left_alone": [...], "rolled_back": [...],
     "skipped": [{"folder", "reason"}],
     "dry_run": false, "listing_failed": false}

Safety rules (issue 6): a registry that cannot be listed writes and deletes
nothing; a model that fails the gate is reported and not published, and a
function already published for it stays as it is (``kept``); functions this
pack does not manage are never written (``left_alone``). Runs in one
container are serialised by a file lock (the cron trigger and the HTTP
trigger are separate worker processes); runs in different replicas stay
consistent because every write is re-decided right before it is made
(common/publish/reconcile.py).

Settings (environment of the registry-sync function; the rendering ones are in
:class:`common.publish.render.PublishSettings`):

==========================  ==================================================  =========================
variable                    meaning                                             default
==========================  ==================================================  =========================
``NUCLIO_DASHBOARD_URL``    the dashboard's base URL                             ``http://nuclio:8070``
``SYNC_DELETE_STALE``       delete managed functions whose model left            ``true``
                            the registry
``SYNC_SMOKE_TESTS``        run samples/ through the model before publishing    ``true``
``SYNC_DEPLOY_TIMEOUT``     seconds to wait for one deploy to become ready      ``300``
``SYNC_PREVIOUS_VERSIONS``  also publish one function per previous version      ``false``
``SYNC_FAMILIES``           runtime families to publish (comma list; empty:     all
                            all): onnx (ONNX Runtime, OpenVINO), pytorch,
                            tensorflow
``SYNC_LOCK_TIMEOUT``       seconds a run waits for a run already in progress   ``600``
                            in this container
``SYNC_WORK_DIR``           where the run keeps its lock, Drive listing memo    ``MODEL_CACHE_DIR``
                            and smoke-test copies of model files (the           (``/var/cache/cvat-models``)
                            published functions' cache is MODEL_CACHE_DIR)
==========================  ==================================================  =========================
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping
from urllib.parse import urlsplit

from common.errors import PackError, SettingsError
from common.publish.config import FunctionConfig
from common.registry import ModelRecord, Registry
from common.runtimes.families import FAMILIES

log = logging.getLogger(__name__)

DEFAULT_DASHBOARD_URL = "http://nuclio:8070"
LOCK_NAME = "registry-sync.lock"  # in SYNC_WORK_DIR; flock'd, so a killed holder never blocks the next run


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{key} must be true or false, got {env.get(key)!r}")


def _seconds(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise SettingsError(f"{key} must be a number of seconds (0 or more), got {raw!r}")
    return value


@dataclass(frozen=True)
class SyncSettings:
    dashboard_url: str
    publish: Any  # common.publish.render.PublishSettings
    cache_dir: Path
    delete_stale: bool = True
    smoke_tests: bool = True
    deploy_timeout: float = 300.0
    previous_versions: bool = False
    families: frozenset[str] | None = None  # None: every family
    lock_timeout: float = 600.0
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SyncSettings":
        from common.publish.render import PublishSettings

        env = dict(os.environ if env is None else env)
        url = env.get("NUCLIO_DASHBOARD_URL", "").strip() or DEFAULT_DASHBOARD_URL
        if not _dashboard_url_ok(url):
            raise SettingsError(f"NUCLIO_DASHBOARD_URL must be an http(s) URL with a host (and a port from "
                                f"1 to 65535 if given), e.g. {DEFAULT_DASHBOARD_URL}; got {url!r}")
        families = None
        raw = env.get("SYNC_FAMILIES", "").strip()
        if raw:
            families = frozenset(f.strip().lower() for f in raw.split(",") if f.strip())
            unknown = sorted(families - set(FAMILIES))
            if unknown:
                raise SettingsError(f"SYNC_FAMILIES: unknown runtime families {', '.join(unknown)}; "
                                    f"known: {', '.join(FAMILIES)}")
        return cls(
            dashboard_url=url.rstrip("/"),
            publish=PublishSettings.from_env(env),
            cache_dir=Path(env.get("SYNC_WORK_DIR", "").strip() or env.get("MODEL_CACHE_DIR", "").strip()
                           or "/var/cache/cvat-models"),
            delete_stale=_flag(env, "SYNC_DELETE_STALE", True),
            smoke_tests=_flag(env, "SYNC_SMOKE_TESTS", True),
            deploy_timeout=_seconds(env, "SYNC_DEPLOY_TIMEOUT", 300.0),
            previous_versions=_flag(env, "SYNC_PREVIOUS_VERSIONS", False),
            families=families,
            lock_timeout=_seconds(env, "SYNC_LOCK_TIMEOUT", 600.0),
            env=env,
        )

    @property
    def work_dir_setting(self) -> str:
        """The variable that named ``cache_dir`` (for error messages)."""
        return "SYNC_WORK_DIR" if self.env.get("SYNC_WORK_DIR", "").strip() else "MODEL_CACHE_DIR"

    def check_work_dir(self) -> None:
        """Create the work dir and its lock file now (init_context), so an unusable
        SYNC_WORK_DIR stops the start with its name instead of failing every run."""
        _lock_file(self.cache_dir, self.work_dir_setting).close()


def _dashboard_url_ok(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in url)


def _lock_file(cache_dir: Path, setting: str = "SYNC_WORK_DIR") -> IO[str]:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        return open(cache_dir / LOCK_NAME, "a+")
    except OSError as exc:
        raise SettingsError(f"{setting} {str(cache_dir)!r} cannot hold registry-sync's lock file "
                            f"({exc.strerror or exc}); point it at a writable folder") from None


@dataclass
class SyncReport:
    """What a run did; ``as_dict`` is the JSON the function answers and logs."""

    synced: list[str] = field(default_factory=list)        # folders whose function is current
    errors: list[dict[str, str]] = field(default_factory=list)
    total_folders: int = 0
    created: list[str] = field(default_factory=list)       # function names
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)          # ours, registry entry failed: left as it was
    stale: list[str] = field(default_factory=list)         # ours, model gone, SYNC_DELETE_STALE off
    left_alone: list[str] = field(default_factory=list)    # not ours: never touched
    rolled_back: list[str] = field(default_factory=list)   # failed updates, previous config restored
    skipped: list[dict[str, str]] = field(default_factory=list)  # deliberately not published here
    dry_run: bool = False
    listing_failed: bool = False
    seconds: float = 0.0
    plan: Any = None  # the reconcile plan (dry runs print it)
    current: dict[str, Any] = field(default_factory=dict)  # the dashboard listing the plan was made from

    def error(self, folder: str, message: str) -> None:
        self.errors.append({"folder": folder, "error": message})

    def as_dict(self) -> dict[str, Any]:
        return {
            "synced": sorted(self.synced),
            "errors": self.errors,
            "total_folders": self.total_folders,
            "synced_count": len(self.synced),
            "error_count": len(self.errors),
            "created": sorted(self.created),
            "updated": sorted(self.updated),
            "deleted": sorted(self.deleted),
            "unchanged": sorted(self.unchanged),
            "kept": sorted(self.kept),
            "stale": sorted(self.stale),
            "left_alone": sorted(self.left_alone),
            "rolled_back": sorted(self.rolled_back),
            "skipped": self.skipped,
            "dry_run": self.dry_run,
            "listing_failed": self.listing_failed,
            "seconds": round(self.seconds, 3),
        }


@contextmanager
def run_lock(cache_dir: Path, timeout: float) -> Iterator[None]:
    """Serialise runs within one container/host (cron and HTTP workers are separate
    processes). Raises SyncBusy when another run holds the lock past ``timeout``."""
    with _lock_file(cache_dir) as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SyncBusy(f"another registry-sync run is still in progress (waited {timeout:.0f} s)")
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class SyncBusy(PackError):
    http_status = 409


class ListingFailed(PackError):
    """The registry could not be listed: nothing was written or deleted."""

    http_status = 502


def family_of(record: ModelRecord) -> str:
    from common.publish.render import runtime_family

    return runtime_family(record.manifest)


def _desired_for(record: ModelRecord, registry: Registry, settings: SyncSettings, cache: Any,
                 name: str, *, pin_version: bool) -> FunctionConfig:
    """Render and gate one model version; raises PackError with the reason it must not be published."""
    from common.publish import gate
    from common.publish.kinds import cvat_kind
    from common.publish.render import render

    cvat_kind(record.manifest.type)  # 'other' and unknown types are refused with a reason
    config = render(record, settings.publish, name=name, pin_version=pin_version)
    gate.check_function(config)
    gate.check_files(record)
    if settings.smoke_tests:
        samples = registry.samples(record)
        if samples:
            result = gate.smoke_test(record, registry, cache, samples=samples)
            log.info("smoke test %s: %s", record.folder, result)
    return config


@dataclass
class Desired:
    """What a run wants published."""

    configs: list[FunctionConfig] = field(default_factory=list)
    keep: set[str] = field(default_factory=set)           # names to leave as they are (entry failed)
    current: dict[str, str] = field(default_factory=dict)  # name -> folder, current versions only


def collect(registry: Registry, settings: SyncSettings, report: SyncReport, cache: Any) -> Desired:
    """List the registry and render every publishable model. Raises ListingFailed."""
    from common.publish.naming import function_name

    prefix = settings.publish.prefix
    try:
        listing = registry.list_models()
    except PackError as exc:
        raise ListingFailed(f"registry listing failed, nothing changed: {exc}") from exc
    report.total_folders = listing.total_folders
    out = Desired()
    keep = out.keep
    for entry in listing.errors:
        report.error(entry.folder, entry.error)
        keep.add(function_name(entry.folder, prefix=prefix))
    for record in listing.models:
        name = function_name(record.folder, prefix=prefix)
        family = family_of(record)
        if settings.families is not None and family not in settings.families:
            report.skipped.append({"folder": record.folder,
                                   "reason": f"runtime family {family} is not published by this sync "
                                             f"(SYNC_FAMILIES={','.join(sorted(settings.families))})"})
            keep.add(name)
            continue
        try:
            out.configs.append(_desired_for(record, registry, settings, cache, name, pin_version=False))
            out.current[name] = record.folder
        except PackError as exc:
            report.error(record.folder, str(exc))
            keep.add(name)
            continue
        if settings.previous_versions:
            out.configs.extend(_previous(record, registry, settings, cache, report, keep))
    return out


def _previous(record: ModelRecord, registry: Registry, settings: SyncSettings, cache: Any,
              report: SyncReport, keep: set[str]) -> list[FunctionConfig]:
    from common.publish.naming import function_name

    out = []
    try:
        versions = registry.versions(record.folder)
    except PackError as exc:
        report.error(record.folder, f"previous versions not listed: {exc}")
        return out
    for version in versions:
        if version == record.version:
            continue
        name = function_name(record.folder, prefix=settings.publish.prefix, version=version)
        try:
            old = registry.resolve(record.folder, version)
            out.append(_desired_for(old, registry, settings, cache, name, pin_version=True))
        except PackError as exc:
            report.error(f"{record.folder}/previous_versions/v{version}", str(exc))
            keep.add(name)
    return out


def _served_folder(function: Any) -> str:
    from common.publish import MODEL_FOLDER_ANNOTATION

    meta = function.get("metadata") if isinstance(function, Mapping) else None
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    folder = annotations.get(MODEL_FOLDER_ANNOTATION) if isinstance(annotations, Mapping) else None
    return folder if isinstance(folder, str) else ""


def run_sync(settings: SyncSettings, *, registry: Registry | None = None, client: Any = None,
             dry_run: bool = False) -> SyncReport:
    """One run. Never raises for a bad model; raises ListingFailed (nothing written),
    SyncBusy, or the dashboard client's error when the dashboard cannot be listed."""
    from common.cache import ModelCache
    from common.publish.dashboard import DashboardClient
    from common.publish.reconcile import apply, plan
    from common.registry.opening import open_registry

    started = time.monotonic()
    report = SyncReport(dry_run=dry_run)
    with run_lock(settings.cache_dir, settings.lock_timeout):
        if registry is None:
            registry = open_registry(settings.publish.registry, settings.env,
                                     cache_dir=settings.cache_dir / "registry-listing")
        cache = ModelCache(settings.cache_dir, settings.publish.cache_size)
        try:
            desired = collect(registry, settings, report, cache)
        except ListingFailed as exc:
            report.listing_failed = True
            report.error("*", str(exc))
            report.seconds = time.monotonic() - started
            log.error("registry-sync: %s", exc)
            return report
        if client is None:
            client = DashboardClient(settings.dashboard_url, namespace=settings.publish.namespace,
                                     project=settings.publish.project)
        current = report.current = client.list_functions()
        the_plan = plan(desired.configs, current, keep=desired.keep, delete_stale=settings.delete_stale)
        report.plan = the_plan
        by_name = {c.name: c for c in desired.configs}
        if dry_run:
            report.created = [c.name for c in the_plan.create]
            report.updated = [c.name for c in the_plan.update]
            report.deleted = list(the_plan.delete)
            report.unchanged = list(the_plan.unchanged)
            report.kept = list(the_plan.kept)
            report.stale = list(the_plan.stale)
            report.left_alone = list(the_plan.foreign)
            failed: dict[str, str] = dict(the_plan.conflicts)
        else:
            result = apply(the_plan, client, wait_timeout=settings.deploy_timeout)
            report.created = list(result.created)
            report.updated = list(result.updated)
            report.deleted = list(result.deleted)
            report.unchanged = list(result.unchanged)
            report.kept = list(result.kept)
            report.stale = list(result.stale)
            report.left_alone = list(result.foreign)
            report.rolled_back = list(result.rolled_back)
            failed = dict(result.failed)
        for name, reason in failed.items():
            config = by_name.get(name)
            if config is not None:
                report.error(config.folder, f"function {name} not published: {reason}")
            else:  # a stale function whose delete failed: name the folder it served
                report.error(_served_folder(current.get(name)) or name, f"function {name} not deleted: {reason}")
        published = set(report.created) | set(report.updated) | set(report.unchanged)
        report.synced = sorted({folder for name, folder in desired.current.items()
                                if name in published and name not in failed})
    report.seconds = time.monotonic() - started
    return report
