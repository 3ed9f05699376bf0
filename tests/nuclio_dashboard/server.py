"""``DashboardStandIn``: a Nuclio dashboard REST API on loopback (nuclio.md §2, §7 layer 4).

Only the calls CVAT and a registry-sync publisher make. Deploys are simulated: a POST/PUT answers
202 with the function in ``building``; it turns ``ready`` (or ``error`` when ``deploy_error`` is set)
``ready_after`` seconds later (0 = at once). Nothing is built or run.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import unquote, urlsplit

from .validate import (
    PROJECT_LABEL,
    DashboardError,
    check_name,
    enrich_function,
    validate_function,
)

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TERMINAL_STATES = frozenset({"ready", "error", "unhealthy", "scaledToZero", "imported"})


@dataclass
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]          # lower-cased names
    body: bytes
    status: int = 0                  # the status answered (0 until the answer is sent)

    def json(self):
        return json.loads(self.body) if self.body else None

    @property
    def is_write(self) -> bool:
        return self.method in WRITE_METHODS


@dataclass
class _Function:
    config: dict                     # {metadata, spec} as stored after enrichment
    http_port: int
    ready_at: float
    outcome: str = "ready"           # state once the simulated deploy ends
    message: str = ""
    deploys: int = 1

    def state(self, now: float) -> str:
        return self.outcome if now >= self.ready_at else "building"

    def as_json(self, now: float) -> dict:
        state = self.state(now)
        status = {"state": state, "httpPort": self.http_port,
                  "internalInvocationUrls": ["172.17.0.2:8080"],
                  "externalInvocationUrls": [f"0.0.0.0:{self.http_port}"],
                  "logs": [{"level": "info", "message": "Building", "time": int(now * 1000)}]}
        if state in ("error", "unhealthy"):
            status["message"] = self.message
        out = copy.deepcopy(self.config)
        out["status"] = status
        return out


@dataclass
class _Fault:
    status: int
    remaining: int
    method: str | None
    path: str | None
    message: str
    payload: object = None           # answer_next: sent as the JSON body instead of an error
    answer: bool = False


@dataclass
class DashboardStandIn:
    """Context manager; ``.url`` is ``http://127.0.0.1:<port>`` once started.

    ``ready_after``: seconds a deploy stays ``building``. ``invoker``: optional
    ``(name, method, path, headers, body) -> (status, headers, body)`` behind
    ``/api/function_invocations``.
    """

    ready_after: float = 0.0
    namespace: str = "nuclio"
    invoker: Callable | None = None
    requests: list[LoggedRequest] = field(default_factory=list)

    def __post_init__(self):
        self._lock = threading.RLock()
        self._functions: dict[str, _Function] = {}
        self._projects: dict[str, dict] = {}
        self._faults: list[_Fault] = []
        # name (None: any) -> [state, message, deploys left (None: every one)]
        self._deploy_errors: dict[str | None, list] = {}
        self._next_port = 32768
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self._add_project("default", "")

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> DashboardStandIn:
        if self._server is None:
            handler = type("Handler", (_Handler,), {"standin": self})
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            self._server.daemon_threads = True
            self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                            name="nuclio-dashboard-standin", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- test controls ---------------------------------------------------------------------
    def fail_next(self, status: int, times: int = 1, *, method: str | None = None, path: str | None = None,
                  message: str = "injected fault") -> None:
        """Answer the next ``times`` matching requests (method / path prefix, or any) with ``status``."""
        with self._lock:
            self._faults.append(_Fault(status, times, method and method.upper(), path, message))

    def answer_next(self, status: int, payload, times: int = 1, *, method: str | None = None,
                    path: str | None = None) -> None:
        """Answer the next ``times`` matching requests with ``status`` and ``payload`` as JSON, verbatim."""
        with self._lock:
            self._faults.append(_Fault(status, times, method and method.upper(), path, "", payload, True))

    def deploy_error(self, message: str | None = "deploy failed", *, name: str | None = None,
                     state: str = "error", times: int | None = None) -> None:
        """Later deploys (of ``name``, or of all functions) end in ``state`` with ``message``; None clears.

        ``times``: only that many deploys fail, later ones succeed again (None: all of them).
        """
        with self._lock:
            if message is None:
                self._deploy_errors.pop(name, None)
            else:
                self._deploy_errors[name] = [state, message, times]

    def add_project(self, name: str = "cvat", description: str = "") -> None:
        with self._lock:
            self._add_project(name, description)

    def function(self, name: str) -> dict | None:
        """The function object as ``GET /api/functions/<name>`` would return it, or None."""
        with self._lock:
            fn = self._functions.get(name)
            return fn.as_json(time.monotonic()) if fn else None

    def functions_json(self, project: str | None = "cvat") -> dict:
        """What ``GET /api/functions`` with ``x-nuclio-project-name: project`` answers."""
        with self._lock:
            return self._listing(project, None)

    def deploy_count(self, name: str) -> int:
        with self._lock:
            fn = self._functions.get(name)
            return fn.deploys if fn else 0

    @property
    def projects(self) -> list[str]:
        with self._lock:
            return sorted(self._projects)

    @property
    def writes(self) -> list[LoggedRequest]:
        """Logged POST/PUT/PATCH/DELETE requests, in order."""
        return [r for r in list(self.requests) if r.is_write]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Logged requests matching ``method`` and exact ``path`` (None = any)."""
        return sum(1 for r in list(self.requests)
                   if (method is None or r.method == method.upper()) and (path is None or r.path == path))

    @property
    def write_counts(self) -> dict[str, int]:
        """``{"POST": n, "PUT": n, "DELETE": n, ...}`` over function writes."""
        counts: dict[str, int] = {}
        for r in self.writes:
            if r.path.startswith("/api/functions"):
                counts[r.method] = counts.get(r.method, 0) + 1
        return counts

    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ---- internals -------------------------------------------------------------------------
    def _add_project(self, name: str, description: str) -> dict:
        project = {"metadata": {"name": name, "namespace": self.namespace}, "spec": {"description": description}}
        self._projects[name] = project
        return project

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if (fault.method in (None, method)) and (fault.path is None or path.startswith(fault.path)):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _listing(self, project: str | None, name: str | None) -> dict:
        now = time.monotonic()
        out = {}
        for fname, fn in sorted(self._functions.items()):
            labels = fn.config["metadata"].get("labels", {})
            if project and labels.get(PROJECT_LABEL) != project:
                continue
            if name and fname != name:
                continue
            out[fname] = fn.as_json(now)
        return out

    def _deploy(self, body: dict, headers: dict, existing: _Function | None) -> _Function:
        name = body["metadata"]["name"]
        key = name if name in self._deploy_errors else None
        state, message = "ready", ""
        if key in self._deploy_errors:
            state, message, left = self._deploy_errors[key]
            if left is not None:
                if left <= 1:
                    del self._deploy_errors[key]
                else:
                    self._deploy_errors[key][2] = left - 1
        ready_at = time.monotonic() + max(0.0, self.ready_after)
        if existing is None:
            self._next_port += 1
            fn = _Function(body, self._next_port, ready_at, state, message)
            self._functions[name] = fn
        else:
            fn = existing
            fn.config, fn.ready_at, fn.outcome, fn.message = body, ready_at, state, message
            fn.deploys += 1
        return fn

    def _wait_terminal(self, name: str) -> None:
        with self._lock:
            fn = self._functions.get(name)
            delay = (fn.ready_at - time.monotonic()) if fn else 0
        if delay > 0:
            time.sleep(delay)

    # request handlers: return (status, json-able or None)
    def handle(self, method: str, path: str, headers: dict, raw: bytes):
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:1] != ["api"] or len(parts) < 2:
            raise DashboardError(404, f"No such resource: {path}")
        resource, rest = parts[1], parts[2:]
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                raise DashboardError(400, "Failed to parse JSON body") from None
        if resource == "functions":
            return self._functions_api(method, rest, headers, body)
        if resource == "projects":
            return self._projects_api(method, rest, headers, body)
        if resource == "function_invocations":
            return self._invoke(method, rest, headers, raw)
        if resource == "versions" and method == "GET":
            return 200, {"dashboard": {"label": "1.14.1-standin"}}
        raise DashboardError(404, f"No such resource: {path}")

    def _functions_api(self, method, rest, headers, body):
        namespace = headers.get("x-nuclio-function-namespace") or self.namespace
        with self._lock:
            if method == "GET" and not rest:
                listing = self._listing(headers.get("x-nuclio-project-name"), headers.get("x-nuclio-function-name"))
                return 200, {k: v for k, v in listing.items() if v["metadata"].get("namespace") == namespace}
            if method == "GET" and len(rest) == 1:
                fn = self._functions.get(rest[0])
                if fn is None or fn.config["metadata"].get("namespace") != namespace:
                    raise DashboardError(404, "Function not found")
                return 200, fn.as_json(time.monotonic())
            if method == "POST" and not rest:
                body = enrich_function(body, headers.get("x-nuclio-project-name"), namespace)
                validate_function(body, self._projects)
                name = body["metadata"]["name"]
                if name in self._functions:
                    raise DashboardError(409, f"Function name already exists: {name}")
                self._deploy(body, headers, None)
            elif method == "PUT" and len(rest) == 1:
                fn = self._functions.get(rest[0])
                if fn is None:
                    raise DashboardError(404, "Function not found")
                body = enrich_function(body, headers.get("x-nuclio-project-name"), namespace)
                if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
                    body["metadata"].setdefault("name", rest[0])
                validate_function(body, self._projects)
                if body["metadata"]["name"] != rest[0]:
                    raise DashboardError(400, "Function name in body does not match the URL")
                self._deploy(body, headers, fn)
                name = rest[0]
            elif method == "DELETE" and not rest:
                meta = body.get("metadata") if isinstance(body, dict) else None
                name = meta.get("name") if isinstance(meta, dict) else None
                if not name:
                    raise DashboardError(400, "Function name must be provided in the body metadata")
                fn = self._functions.get(name)
                if fn is None:
                    raise DashboardError(404, "Function not found")
                ignore = headers.get("x-nuclio-delete-function-ignore-state-validation", "").lower() == "true"
                if fn.state(time.monotonic()) == "building" and not ignore:
                    raise DashboardError(412, f"Function is being provisioned and cannot be deleted: {name}")
                del self._functions[name]
                return 204, None
            else:
                raise DashboardError(405, f"Method {method} not allowed here")
        if headers.get("x-nuclio-wait-function-action", "").lower() == "true":
            self._wait_terminal(name)
        return 202, None

    def _projects_api(self, method, rest, headers, body):
        with self._lock:
            if method == "GET" and not rest:
                return 200, copy.deepcopy(self._projects)
            if method == "GET" and len(rest) == 1:
                if rest[0] not in self._projects:
                    raise DashboardError(404, "Project not found")
                return 200, copy.deepcopy(self._projects[rest[0]])
            meta = body.get("metadata") if isinstance(body, dict) else None
            if not isinstance(meta, dict):
                raise DashboardError(400, "Project config must have a 'metadata' object")
            if method == "POST" and not rest:
                name = check_name(meta.get("name"), "project")
                if name in self._projects:
                    raise DashboardError(409, f"Project already exists: {name}")
                spec = body.get("spec") if isinstance(body.get("spec"), dict) else {}
                return 201, copy.deepcopy(self._add_project(name, spec.get("description", "")))
            if method == "DELETE" and not rest:
                name = meta.get("name")
                if name not in self._projects:
                    raise DashboardError(404, "Project not found")
                strategy = headers.get("x-nuclio-delete-project-strategy", "restricted")
                owned = [n for n, fn in self._functions.items()
                         if fn.config["metadata"].get("labels", {}).get(PROJECT_LABEL) == name]
                if owned and strategy != "cascading":
                    raise DashboardError(412, f"Project has functions: {', '.join(owned)}")
                if strategy == "check":
                    return 204, None
                for n in owned:
                    del self._functions[n]
                del self._projects[name]
                return 204, None
        raise DashboardError(405, f"Method {method} not allowed here")

    def _invoke(self, method, rest, headers, raw):
        name = headers.get("x-nuclio-function-name")
        if not name:
            raise DashboardError(400, "Function name must be provided in the x-nuclio-function-name header")
        with self._lock:
            fn = self._functions.get(name)
            state = fn.state(time.monotonic()) if fn else None
        if fn is None:
            raise DashboardError(404, "Function not found")
        if state != "ready":
            raise DashboardError(412, f"Function is not ready (state {state})")
        if self.invoker is None:
            raise DashboardError(500, "Failed to invoke function: no invoker configured in the stand-in")
        path = "/" + headers.get("x-nuclio-path", "").lstrip("/")
        return ("raw",) + tuple(self.invoker(name, method, path, headers, raw))


class _Handler(BaseHTTPRequestHandler):
    standin: DashboardStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):   # keep test output quiet
        pass

    def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        headers = {k.lower(): v for k, v in self.headers.items()}
        standin = self.standin
        logged = LoggedRequest(self.command, path, headers, raw)
        with standin._lock:
            standin.requests.append(logged)
        fault = standin._take_fault(self.command, path)
        try:
            if fault is not None and fault.answer:
                result = fault.status, fault.payload
            elif fault is not None:
                raise DashboardError(fault.status, fault.message)
            else:
                result = standin.handle(self.command, path, headers, raw)
        except DashboardError as exc:
            result = exc.status, {"error": exc.message, "errorStackTrace": ""}
        logged.status = result[1] if result[0] == "raw" else result[0]
        if result[0] == "raw":
            _, status, out_headers, body = result
            extra = {k: v for k, v in (out_headers or {}).items() if not k.lower().startswith("x-nuclio")}
            self._reply(status, body if isinstance(body, bytes) else str(body).encode(), extra)
            return
        status, payload = result
        body = b"" if payload is None else json.dumps(payload).encode()
        self._reply(status, body, {"Content-Type": "application/json"} if body else {})

    def _reply(self, status: int, body: bytes, headers: dict):
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "connection"):
                self.send_header(key, str(value))
        if status not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status not in (204, 304) and self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
