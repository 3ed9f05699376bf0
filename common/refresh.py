"""Background refresh: a runner worker picks up a new version of its model.

A :class:`ModelRefresher` owns the worker's current :class:`LoadedModel`.
Every ``MODEL_REFRESH_SECONDS`` (default 300; 0: never) a daemon thread asks
the registry for the model again (same name, same ``MODEL_VERSION`` pin: with
a pin only a change of the pinned version's files or model.json moves it).
When the resolved record differs from the served one (a file's content key
or path, or model.json), the new version is loaded completely, off the
request path, through the same path a start takes
(:func:`common.runner.load_record`: cache checkout, runtime, pipeline,
warm-up); only then is the reference swapped, and afterwards the old
snapshot's pins are released.

Requests never wait for a check or a load: :attr:`ModelRefresher.current` is
a plain attribute read (swapping a reference is atomic), and a handler takes
it once per request and keeps that LoadedModel for the whole request. A
request that took the old model before the swap finishes on it: its runtime
stays alive as long as the request holds a reference. Releasing the old
snapshot's pins only lets the cache evict the old blobs from disk; the
runtime already read its weights into memory at load, so an eviction cannot
break a request still running on the old pipeline (runtimes that map the
file keep the unlinked inode alive). The old runtime is freed once the last
such request drops it.

Failures keep the current model serving. A failed check (registry
unreachable, 5xx, quota, refused credentials; the model gone; an invalid
model.json) or a failed load of the new version is logged when it starts and
at most once per interval while it lasts, per failure kind (not per request,
not per retry); when the registry answers again (or the load succeeds) one
recovery message is logged.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

from common.errors import ModelConfigError, ModelNotFound, RegistryError
from common.registry import ModelRecord, Registry, RemoteFile

log = logging.getLogger(__name__)

__all__ = ["ModelRefresher", "same_model"]

# Failure kinds: each is logged at most once per interval while it lasts.
REGISTRY = "registry"  # the registry cannot be read (its answer is unknown)
NOT_FOUND = "not-found"  # the registry answered: no such model (version)
INVALID = "invalid"  # the registry's model.json (or layout) is not usable
LOAD = "load"  # the new version was resolved but could not be loaded
_CHECK_KINDS = (REGISTRY, NOT_FOUND, INVALID)


def _same_file(a: RemoteFile, b: RemoteFile) -> bool:
    if a.path != b.path:
        return False
    if a.sha256 and b.sha256:
        return a.sha256.lower() == b.sha256.lower()
    if a.md5 and b.md5:
        return a.md5.lower() == b.md5.lower()
    return a.content_key == b.content_key


def same_model(a: ModelRecord, b: ModelRecord) -> bool:
    """Whether two records serve the same thing: same files (by checksum) and same model.json.

    Checksums are compared per algorithm both sides know, so a record read
    back from the cache (sha256 and md5) equals the registry's (maybe md5 only).
    """
    if a.folder != b.folder or len(a.files) != len(b.files):
        return False
    pairs = zip(sorted(a.files, key=lambda f: f.path), sorted(b.files, key=lambda f: f.path))
    if not all(_same_file(x, y) for x, y in pairs):
        return False
    return dict(a.manifest.raw) == dict(b.manifest.raw)


def _describe(record: ModelRecord) -> str:
    return f"{record.folder} {record.version}"


class ModelRefresher:
    """The current model of a worker, replaced in the background when the registry has a new one.

    ``settings`` is the worker's RunnerSettings (model, pin, cache, interval);
    ``model`` the LoadedModel it started with. ``registry`` defaults to
    ``open_registry(settings.registry, ...)``, opened once. ``on_swap(new, old)``
    is called after each swap (before the old pins are released); ``clock``
    (monotonic seconds) paces the failure log.
    """

    def __init__(self, settings, model, *, registry: Registry | None = None,
                 on_swap: Callable[[object, object], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        from common.registry.opening import open_registry

        self.settings = settings
        self.interval = float(settings.refresh_seconds)
        self._current = model
        self._registry = registry or open_registry(settings.registry, settings.env or None, settings.cache_dir)
        self._on_swap = on_swap
        self._clock = clock
        self._check_lock = threading.Lock()  # one check at a time (thread and check_now); never taken by requests
        self._failing: dict[str, float] = {}  # kind -> when it was last logged
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self):
        """The LoadedModel to serve; take it once per request and keep it for the request."""
        return self._current

    @property
    def registry(self) -> Registry:
        """The registry the checks read (the one the worker started from)."""
        return self._registry

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- thread ----------------------------------------------------------------
    def start(self) -> None:
        """Start the background checks (a daemon thread); nothing when the interval is 0."""
        if self.interval <= 0:
            log.info("model refresh is off (MODEL_REFRESH_SECONDS=0): serving %s until restarted",
                     _describe(self._current.record))
            return
        if self.running:
            return
        self._stop.clear()
        # The thread holds the refresher only weakly: a refresher nobody uses any
        # more (a test's worker) is collected, and its thread ends with it.
        thread = threading.Thread(target=_run, args=(weakref.ref(self), self._stop, self.interval),
                                  name=f"model-refresh-{self.settings.model}", daemon=True)
        weakref.finalize(self, self._stop.set)
        self._thread = thread
        thread.start()
        log.info("checking the registry for new versions of %s every %gs",
                 _describe(self._current.record), self.interval)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the background checks (a check in progress finishes first). Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- one check ---------------------------------------------------------------
    def check_now(self) -> bool:
        """Resolve the model again and swap in a changed version; True when swapped.

        Never raises for registry, model.json or load failures: the current
        model keeps serving and the failure is logged (see the module doc)."""
        with self._check_lock:
            return self._check()

    def _check(self) -> bool:
        settings = self.settings
        try:
            record = self._registry.resolve(settings.model, settings.version)
        except ModelNotFound as exc:
            self._failed(NOT_FOUND, "the registry (%s) has no %s%s any more (%s); still serving %s",
                         settings.registry, settings.model, f" {settings.version}" if settings.version else "",
                         exc, _describe(self._current.record))
            return False
        except RegistryError as exc:
            self._failed(REGISTRY, "the registry (%s) cannot be read: %s; still serving the cached %s",
                         settings.registry, exc, _describe(self._current.record))
            return False
        except ModelConfigError as exc:
            self._failed(INVALID, "the registry's %s is not usable: %s; still serving %s",
                         settings.model, exc, _describe(self._current.record))
            return False
        except Exception as exc:  # a bug must not end the checks or reach a request
            log.debug("refresh check failed", exc_info=True)
            self._failed(REGISTRY, "checking the registry (%s) failed: %s: %s; still serving %s",
                         settings.registry, type(exc).__name__, exc, _describe(self._current.record))
            return False
        self._recovered(*_CHECK_KINDS)
        current = self._current
        if same_model(record, current.record):
            self._recovered(LOAD)
            return False
        log.info("the registry has %s (serving %s): loading it", _describe(record), _describe(current.record))
        try:
            new = self._load(record)
        except Exception as exc:
            log.debug("loading %s failed", _describe(record), exc_info=True)
            self._failed(LOAD, "cannot load %s from the registry (%s): %s: %s; still serving %s",
                         _describe(record), settings.registry, type(exc).__name__, exc, _describe(current.record))
            return False
        self._recovered(LOAD)
        self._swap(new)
        return True

    def _load(self, record: ModelRecord):
        from common.runner import load_record

        return load_record(self.settings, record, self._registry.fetch)

    def _swap(self, new) -> None:
        old, self._current = self._current, new  # requests from now on get the new model
        if self._on_swap is not None:
            try:
                self._on_swap(new, old)
            except Exception:
                log.exception("on_swap callback failed")
        # Requests already holding `old` finish on it: its weights are in memory;
        # the pins only kept its blobs from being evicted from disk.
        old.snapshot.release()
        log.info("now serving %s (was %s)", _describe(new.record), _describe(old.record))

    # -- the failure log ------------------------------------------------------------
    def _failed(self, kind: str, message: str, *args: object) -> None:
        now = self._clock()
        last = self._failing.get(kind)
        if last is not None and (self.interval <= 0 or now - last < self.interval):
            log.debug(message, *args)
            return
        self._failing[kind] = now
        if kind == REGISTRY:
            log.warning(message, *args)
        else:
            log.error(message, *args)

    def _recovered(self, *kinds: str) -> None:
        for kind in kinds:
            if self._failing.pop(kind, None) is None:
                continue
            if kind == LOAD:
                log.info("refresh: loading from the registry (%s) works again", self.settings.registry)
            else:
                log.info("refresh: the registry (%s) answers again for %s", self.settings.registry,
                         self.settings.model)


def _run(ref: weakref.ref[ModelRefresher], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        refresher = ref()
        if refresher is None:
            return
        try:
            refresher.check_now()
        except Exception:  # check_now handles its failures; this is a last guard for the thread
            log.exception("model refresh check failed")
        del refresher  # hold it only during a check
