"""``DashboardClient``: the Nuclio dashboard REST calls registry-sync makes (nuclio.md §2).

Standard library only (``urllib.request``). Every call carries the project and
namespace headers, so the dashboard files what we create under project ``cvat``
(the label CVAT's listing filters on) and lists only that project back.

Transient failures (connection refused/reset, timeouts, 500/502/503/504) are
retried with exponential backoff and jitter; other 4xx/5xx answers raise
:class:`DashboardError` at once. A POST on an existing name raises
:class:`FunctionExists`, which the reconciler turns into a re-read. Request
bodies are never logged or put into errors: they can carry env values.
"""

from __future__ import annotations

import copy
import http.client
import json
import logging
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from common.errors import PackError
from common.publish import CVAT_PROJECT, PROJECT_LABEL

log = logging.getLogger(__name__)

TERMINAL_STATES = frozenset({"ready", "error", "unhealthy", "scaledToZero", "imported"})
FAILED_STATES = frozenset({"error", "unhealthy"})
MISSING_STATE = "missing"        # wait_terminal: the function went away while we waited
RETRY_STATUSES = frozenset({500, 502, 503, 504})
MAX_ERROR_TEXT = 300             # the dashboard's error text can hold a Go stack; keep messages short
BACKOFF_CAP = 30.0
PROJECT_DESCRIPTION = "CVAT functions published from the model registry by registry-sync"

# Dashboards sit on the cluster/Docker network: talk to them directly, never via an
# environment proxy that cannot reach them.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TRANSIENT = (ConnectionError, TimeoutError, http.client.RemoteDisconnected, http.client.IncompleteRead)


class DashboardError(PackError):
    """The dashboard refused a call or could not be reached.

    ``status``: the HTTP status (0 when no answer came); ``error``: the
    dashboard's ``{"error"}`` text (or the transport error), clipped.
    """

    http_status = 502

    def __init__(self, what: str, status: int, error: str):
        self.status = status
        self.error = _clip(error)
        self.what = what
        answer = f"{status} {self.error}" if status else self.error
        super().__init__(f"dashboard {what}: {answer}")


class FunctionExists(DashboardError):
    """``POST /api/functions`` answered 409: a function of that name exists already."""

    http_status = 409


def _clip(text: str, limit: int = MAX_ERROR_TEXT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def function_body(function: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The ``{metadata, spec}`` part of a function object (a GET answer or a rendered
    body), deep-copied, with ``metadata.namespace`` defaulted to ``namespace``."""
    body = {"metadata": copy.deepcopy(dict(function.get("metadata") or {})),
            "spec": copy.deepcopy(dict(function.get("spec") or {}))}
    body["metadata"].setdefault("namespace", namespace)
    return body


class DashboardClient:
    """One dashboard, one project, one namespace.

    ``retries``: how many times a transient failure is retried (so at most
    ``retries + 1`` attempts); the n-th retry waits ``backoff * 2**(n-1)`` seconds,
    jittered into its upper half and capped at 30 s. ``sleep``, ``clock`` and
    ``rand`` are the waits', the deadlines' and the jitter's sources (tests).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "nuclio",
        project: str = CVAT_PROJECT,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"dashboard URL must start with http:// or https://: {url!r}")
        if retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.project = project
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self._sleep = sleep
        self._clock = clock
        self._rand = rand

    def __repr__(self) -> str:
        return f"DashboardClient({self.url!r}, project={self.project!r}, namespace={self.namespace!r})"

    # ------------------------------------------------------------------ functions
    def list_functions(self) -> dict[str, dict]:
        """``GET /api/functions``: the project's functions, name → ``{metadata, spec, status}``."""
        status, data = self._call("GET", "/api/functions", what="list functions")
        if not isinstance(data, dict):
            raise DashboardError("list functions", status,
                                 f"expected a JSON object name -> function, got {type(data).__name__}")
        for name, function in data.items():
            if not isinstance(function, dict):
                raise DashboardError("list functions", status, f"function {name!r} is "
                                     f"{type(function).__name__}, not an object")
        # The project header filters the listing; a dashboard that ignores it must still
        # not hand us another project's functions to update or delete.
        others = sorted(n for n, f in data.items() if _project_of(f) not in (None, self.project))
        if others:
            log.warning("dashboard listed %d functions of other projects (ignored): %s", len(others),
                        ", ".join(others[:10]))
        return {n: f for n, f in data.items() if n not in others}

    def get(self, name: str) -> dict | None:
        """``GET /api/functions/<name>``; None when the dashboard answers 404."""
        what = f"get function {name}"
        status, data = self._call("GET", f"/api/functions/{quote(name, safe='')}", what=what, absent=(404,))
        if status == 404:
            return None
        if not isinstance(data, dict):
            raise DashboardError(what, status, f"expected a JSON object, got {type(data).__name__}")
        return data

    def create(self, body: Mapping[str, Any]) -> None:
        """``POST /api/functions`` (the dashboard answers 202 and deploys in the background).

        Raises :class:`FunctionExists` on 409.
        """
        payload = function_body(body, self.namespace)
        name = payload["metadata"].get("name", "?")
        what = f"create function {name}"
        status, _ = self._call("POST", "/api/functions", payload, what=what, absent=(409,))
        if status == 409:
            raise FunctionExists(what, 409, f"a function named {name!r} exists already")

    def update(self, name: str, body: Mapping[str, Any]) -> None:
        """``PUT /api/functions/<name>`` with the complete ``{metadata, spec}`` (no merge; redeploys)."""
        payload = function_body(body, self.namespace)
        self._call("PUT", f"/api/functions/{quote(name, safe='')}", payload, what=f"update function {name}")

    def delete(self, name: str) -> bool:
        """``DELETE /api/functions`` with the body form; False when it was already gone (404)."""
        payload = {"metadata": {"name": name, "namespace": self.namespace}}
        status, _ = self._call("DELETE", "/api/functions", payload, what=f"delete function {name}", absent=(404,))
        return status != 404

    def wait_terminal(self, name: str, timeout: float, poll: float = 1.0) -> tuple[str, str]:
        """Poll ``GET /api/functions/<name>`` until its state is terminal.

        Returns ``(state, message)``: ``status.message`` for ``error``/``unhealthy``;
        ``(MISSING_STATE, ...)`` if the function disappeared; on timeout the last state
        seen (``building`` ...) and a message saying so: the timeout is reported, not raised.
        """
        deadline = self._clock() + max(0.0, timeout)
        while True:
            function = self.get(name)
            if function is None:
                return MISSING_STATE, "the function no longer exists"
            status = function.get("status") if isinstance(function.get("status"), dict) else {}
            state = str(status.get("state") or "")
            if state in TERMINAL_STATES:
                message = _clip(status.get("message") or "") if state in FAILED_STATES else ""
                return state, message
            remaining = deadline - self._clock()
            if remaining <= 0:
                return state or "unknown", f"not ready after {timeout:g} s (state {state or 'unknown'!r})"
            self._sleep(min(poll, remaining))

    # ------------------------------------------------------------------ projects
    def ensure_project(self, description: str = PROJECT_DESCRIPTION) -> bool:
        """Create the project unless it exists (a function POST into a missing one is 412).

        True when this call created it; a 409 from a concurrent creator counts as success.
        """
        path = f"/api/projects/{quote(self.project, safe='')}"
        status, _ = self._call("GET", path, what=f"get project {self.project}", absent=(404,))
        if status != 404:
            return False
        body = {"metadata": {"name": self.project, "namespace": self.namespace},
                "spec": {"description": description}}
        status, _ = self._call("POST", "/api/projects", body, what=f"create project {self.project}", absent=(409,))
        if status == 409:
            return False
        log.info("created Nuclio project %s in namespace %s", self.project, self.namespace)
        return True

    # ------------------------------------------------------------------ transport
    def _call(self, method: str, path: str, body: Any = None, *, what: str,
              absent: tuple[int, ...] = ()) -> tuple[int, Any]:
        """One call, retried on transient failures. Returns ``(status, parsed JSON or None)``
        for 2xx answers and for the statuses in ``absent``; raises DashboardError otherwise."""
        data = None if body is None else json.dumps(body).encode()
        failures = 0
        while True:
            request = urllib.request.Request(self.url + path, data=data, method=method)
            request.add_header("x-nuclio-project-name", self.project)
            request.add_header("x-nuclio-function-namespace", self.namespace)
            request.add_header("Accept", "application/json")
            if data is not None:
                request.add_header("Content-Type", "application/json")
            try:
                with _OPENER.open(request, timeout=self.timeout) as response:
                    status, raw = response.status, response.read()
            except urllib.error.HTTPError as exc:
                status, raw = exc.code, _read(exc)
            except (urllib.error.URLError, *_TRANSIENT) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if isinstance(reason, _TRANSIENT) and failures < self.retries:
                    failures += 1
                    self._backoff(failures, method, path, f"{type(reason).__name__}: {reason}")
                    continue
                attempts = f" after {failures + 1} attempts" if failures else ""
                raise DashboardError(what, 0, f"unreachable at {self.url}{attempts} "
                                              f"({type(reason).__name__}: {reason})") from None
            log.debug("dashboard %s %s -> %d", method, path, status)
            if status in RETRY_STATUSES and failures < self.retries:
                failures += 1
                self._backoff(failures, method, path, f"HTTP {status}")
                continue
            if 200 <= status < 300 or status in absent:
                return status, _parse(raw, what, status) if 200 <= status < 300 else None
            raise DashboardError(what, status, _error_text(raw))

    def _backoff(self, failures: int, method: str, path: str, why: str) -> None:
        delay = min(BACKOFF_CAP, self.backoff * (2 ** (failures - 1)))
        delay = delay / 2 + self._rand() * delay / 2      # jitter, keeping half the step
        log.info("dashboard %s %s: %s; retry %d of %d in %.2f s", method, path, why, failures, self.retries, delay)
        self._sleep(delay)


def _project_of(function: Mapping[str, Any]) -> Any:
    meta = function.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels.get(PROJECT_LABEL) if isinstance(labels, Mapping) else None


def _read(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def _parse(raw: bytes, what: str, status: int) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise DashboardError(what, status, f"answer is not JSON: {raw[:80]!r}") from None


def _error_text(raw: bytes) -> str:
    """The ``{"error"}`` text of a dashboard error answer, else the raw text (clipped)."""
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("error"):
        return _clip(str(data["error"]))
    return _clip(raw.decode("utf-8", "replace")) or "no error text"
