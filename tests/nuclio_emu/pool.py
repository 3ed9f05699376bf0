"""A Nuclio processor stand-in: real worker processes behind a local HTTP trigger.

``FunctionServer`` is layer 3 of nuclio.md §7, written from §3.1-3.9: every
trigger owns ``numWorkers`` worker processes (tests/nuclio_emu/wrapper.py), all
started in parallel, each importing the handler and running ``init_context``
itself. A ``ThreadingHTTPServer`` on 127.0.0.1 plays the http trigger:

* ``GET /__internal/health`` -> 200, always;
* 503 ``{"error": "Server not ready"}`` until every worker of every trigger is initialised;
* 413 for a body over ``maxRequestBodySize`` (the connection is closed);
* 503 (empty) when no worker frees up within ``workerAvailabilityTimeoutMilliseconds``,
  and after termination began;
* 408 ``{"error": "handler timed out"}`` past ``eventTimeout``: the worker is SIGKILLed and a
  new process takes its slot once its ``init_context`` ran (no termination callback);
* the handler's answer otherwise, by the wrapper/trigger rules of tools/nuclio_harness.py.

A cron trigger runs its ticks on one thread into its own workers, never overlapping;
missed ticks collapse into one immediate run. ``tick()`` fires one synchronously.

If a worker exits on its own, the real processor panics and the container restarts; here
the server turns *failed*: ``failure`` says why, in-flight requests get 500, new ones 503,
and ``stop()`` raises :class:`ProcessorFailed`. So does a handler returning ``[]`` (a
processor panic on real Nuclio), recorded in ``faults``.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

from tools.nuclio_harness import EmptyBatchError, HttpResult, event_message, http_result, pack_event

from .config import FunctionConfig, TriggerConfig

REPO = Path(__file__).resolve().parents[2]
WRAPPER = Path(__file__).with_name("wrapper.py")
RULES = REPO / "tools" / "nuclio_harness.py"
TERMINATION_TIMEOUT_S = 10.0  # workerTerminationTimeout
HEALTH_PATH = "/__internal/health"

log = logging.getLogger(__name__)

_TIMEOUT = object()
_GONE = object()


class ProcessorFailed(RuntimeError):
    """The emulated processor stopped (a worker died, init failed) or hit a panic case."""


@dataclass(frozen=True)
class LogLine:
    worker: str            # "<trigger>/<worker id>"
    level: str             # debug, info, warning, error
    message: str
    with_: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkerInfo:
    trigger: str
    worker_id: str
    pid: int
    generation: int        # 0 for the first process in this slot, +1 per restart
    returncode: int | None  # None while running


def canonical_header(name: str) -> str:
    """fasthttp's canonical form: ``x-nuclio-target`` -> ``X-Nuclio-Target``."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class _WorkerProcess:
    def __init__(self, server: FunctionServer, trigger: TriggerConfig, worker_id: str, generation: int):
        self.server, self.trigger, self.worker_id, self.generation = server, trigger, worker_id, generation
        self.label = f"{trigger.name}/{worker_id}"
        self.ready = threading.Event()
        self.results: queue.Queue = queue.Queue()
        self.expected_exit = False
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = parent
        cmd = [sys.executable, "-u", str(WRAPPER), "--handler", server.config.handler, "--fd", str(child.fileno()),
               "--platform-kind", "local", "--namespace", server.config.namespace, "--worker-id", worker_id,
               "--trigger-kind", trigger.kind, "--trigger-name", trigger.name, "--rules", str(RULES)]
        self.proc = subprocess.Popen(cmd, env=server.worker_env, cwd=server.function_dir,
                                     pass_fds=(child.fileno(),))
        child.close()
        self.reader = threading.Thread(target=self._read, name=f"emu-{self.label}", daemon=True)
        self.reader.start()

    def info(self) -> WorkerInfo:
        return WorkerInfo(self.trigger.name, self.worker_id, self.proc.pid, self.generation, self.proc.poll())

    def _read(self) -> None:
        try:
            with self.sock.makefile("rb") as lines:
                for line in lines:
                    kind, payload = line[:1], line[1:].rstrip(b"\n").decode()
                    if kind == b"s":
                        self.ready.set()
                    elif kind == b"l":
                        self.server._worker_log(self.label, payload)
                    elif kind == b"r":
                        self.results.put(payload)
        except ConnectionResetError:
            # The worker exited with an event frame unread (sent as it terminated): on a Unix
            # socket that is ECONNRESET, not EOF. The end is the same, and whoever waits for the
            # event's result must still get _GONE below, or a stop hangs on it.
            pass
        code = self.proc.wait()
        if not self.expected_exit:
            self.server._fail(f"worker {self.label} (pid {self.proc.pid}) exited unexpectedly with code {code}"
                              + ("" if self.ready.is_set() else " before init_context completed"))
        self.results.put(_GONE)
        self.ready.set()  # wake whoever waits for the start; they check alive()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, frame: bytes) -> bool:
        try:
            self.sock.sendall(struct.pack(">I", len(frame)) + frame)
            return True
        except OSError:
            return False

    def result(self, timeout: float | None) -> Any:
        try:
            return self.results.get(timeout=timeout)
        except queue.Empty:
            return _TIMEOUT

    def kill(self) -> None:
        self.expected_exit = True
        if self.alive():
            self.proc.kill()

    def terminate(self) -> None:
        self.expected_exit = True
        if self.alive():
            self.proc.send_signal(signal.SIGUSR1)

    def close(self) -> None:
        self.sock.close()


class _TriggerPool:
    """One trigger's fixed set of worker slots and the queue of the free ones."""

    def __init__(self, server: FunctionServer, trigger: TriggerConfig):
        self.server, self.trigger = server, trigger
        self.free: queue.Queue[_WorkerProcess] = queue.Queue()
        self.slots = [_WorkerProcess(server, trigger, str(i), 0) for i in range(trigger.num_workers)]
        self.tick_lock = threading.Lock()  # cron: one tick at a time

    def acquire(self, timeout: float) -> _WorkerProcess | None:
        try:
            return self.free.get(timeout=timeout) if timeout > 0 else self.free.get_nowait()
        except queue.Empty:
            return None

    def restart(self, old: _WorkerProcess) -> None:
        """eventTimeout: SIGKILL, then a fresh process in the same slot (init_context runs again)."""
        old.kill()
        old.proc.wait()
        old.close()
        with self.server._lock:
            if self.server._terminating:
                return
            new = _WorkerProcess(self.server, self.trigger, old.worker_id, old.generation + 1)
            self.slots[int(old.worker_id)] = new
        threading.Thread(target=self._admit, args=(new,), daemon=True, name=f"emu-restart-{new.label}").start()

    def _admit(self, worker: _WorkerProcess) -> None:
        if worker.ready.wait(self.server.config.readiness_timeout_s) and worker.alive():
            self.free.put(worker)
        elif worker.alive():
            self.server._fail(f"worker {worker.label} was not ready in time after its restart")


class FunctionServer:
    """Serve one function directory as Nuclio's processor would, on 127.0.0.1.

    ``FunctionServer(function_dir)`` reads ``function_dir/function.yaml``; ``config`` replaces
    it, and ``env``/``num_workers``/``availability_timeout_ms``/``max_request_body_size``/
    ``event_timeout`` override it (the last four on the http trigger / spec). ``python_path``
    adds folders after the function directory on the workers' ``PYTHONPATH``. With
    ``run_cron=False`` cron triggers fire only through :meth:`tick`.
    """

    def __init__(self, function_dir: str | Path, config: FunctionConfig | None = None, *,
                 env: Mapping[str, str] | None = None, num_workers: int | None = None,
                 availability_timeout_ms: int | None = None, max_request_body_size: int | None = None,
                 event_timeout: float | None = None, python_path: Iterable[str | Path] = (),
                 run_cron: bool = True):
        self.function_dir = Path(function_dir).resolve()
        config = config or FunctionConfig.from_yaml(self.function_dir / "function.yaml")
        if env:
            config = config.with_env(**env)
        http = config.http_trigger
        changes: dict[str, Any] = {}
        if num_workers is not None:
            changes["num_workers"] = num_workers
        if availability_timeout_ms is not None:
            changes["availability_timeout_s"] = availability_timeout_ms / 1000
        if max_request_body_size is not None:
            changes["max_request_body_size"] = max_request_body_size
        if changes and http is not None:
            config = config.with_trigger(http.name, **changes)
        if event_timeout is not None:
            config = dataclasses.replace(config, event_timeout_s=event_timeout or None)  # 0: none
        self.config = config
        self.run_cron = run_cron
        base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.worker_env = {**base, **config.env,
                           "PYTHONPATH": os.pathsep.join([str(self.function_dir), *map(str, python_path)])}
        self.logs: list[LogLine] = []
        self.faults: list[str] = []
        self.failure: str | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._terminating = False
        self._stopped = threading.Event()
        self._pools: dict[str, _TriggerPool] = {}
        self._cron_threads: list[threading.Thread] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self))
        self._httpd.daemon_threads = True
        self._http_thread: threading.Thread | None = None
        self._log = logging.getLogger(f"{__name__}.{config.name}")

    # -- lifecycle -------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Self:
        """Listen at once (503 "Server not ready" meanwhile) and start every worker in parallel."""
        self._http_thread = threading.Thread(target=self._httpd.serve_forever, daemon=True, name="emu-http")
        self._http_thread.start()
        with self._lock:
            for trigger in self.config.triggers:
                self._pools[trigger.name] = _TriggerPool(self, trigger)
        threading.Thread(target=self._await_workers, daemon=True, name="emu-start").start()
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop(check=False)  # no worker outlives a failed start
                raise
        return self

    def _await_workers(self) -> None:
        deadline = time.monotonic() + self.config.readiness_timeout_s
        for pool in self._pools.values():
            for worker in pool.slots:
                if not worker.ready.wait(max(0.0, deadline - time.monotonic())):
                    self._fail(f"Function wasn't ready in time: worker {worker.label} still in init_context "
                               f"after {self.config.readiness_timeout_s:g} s")
                    return
                if not worker.alive():
                    return  # its reader thread recorded the failure
        for pool in self._pools.values():
            for worker in pool.slots:
                pool.free.put(worker)
        self._ready.set()
        if self.run_cron:
            for trigger in self.config.cron_triggers:
                if trigger.interval_s:
                    thread = threading.Thread(target=self._cron_loop, args=(trigger,), daemon=True,
                                              name=f"emu-cron-{trigger.name}")
                    thread.start()
                    self._cron_threads.append(thread)
                else:
                    self._log.warning("cron trigger %s: schedule %r is not emulated; fire it with tick()",
                                      trigger.name, trigger.schedule)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every worker ran init_context; raise ProcessorFailed if the start failed."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.config.readiness_timeout_s + 5)
        while not self._ready.wait(0.05):
            if self.failure:
                raise ProcessorFailed(self._failure_text())
            if time.monotonic() > deadline:
                raise ProcessorFailed(f"{self.config.name}: not ready")

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self.failure

    def stop(self, check: bool = True) -> None:
        """SIGTERM to the processor: workers get SIGUSR1, finish their event, run the termination
        callback and exit; stragglers are killed after workerTerminationTimeout. ``check``: raise
        ProcessorFailed if the processor failed or hit a panic case while it ran."""
        if self._stopped.is_set():
            return
        with self._lock:
            self._terminating = True
            workers = [w for pool in self._pools.values() for w in pool.slots]
        self._stopped.set()
        for worker in workers:
            worker.terminate()
        deadline = time.monotonic() + TERMINATION_TIMEOUT_S
        for worker in workers:
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._log.warning("worker %s ignored termination; killing it", worker.label)
                worker.kill()
                worker.proc.wait()
            worker.reader.join()
            worker.close()
        for thread in self._cron_threads:
            thread.join()
        if self._http_thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
        if check and (self.failure or self.faults):
            raise ProcessorFailed(self._failure_text())

    def __enter__(self) -> Self:
        if self._http_thread is None:
            self.start()
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.stop(check=exc_type is None)

    # -- introspection ---------------------------------------------------------

    def workers(self, trigger: str | None = None) -> list[WorkerInfo]:
        """The processes now in each slot (trigger order, then worker id)."""
        with self._lock:
            return [w.info() for name, pool in self._pools.items() if trigger in (None, name) for w in pool.slots]

    def log_messages(self, level: str | None = None) -> list[str]:
        return [line.message for line in list(self.logs) if level in (None, line.level)]

    def _failure_text(self) -> str:
        errors = [f"  {line.worker}: {line.message} {dict(line.with_)}" for line in self.logs
                  if line.level == "error"][-5:]
        return "\n".join([f"{self.config.name}: {self.failure or ''}", *self.faults, *errors]).strip()

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._terminating or self.failure:
                return
            self.failure = reason
        self._log.error("processor failed: %s", reason)

    def _worker_log(self, worker: str, payload: str) -> None:
        try:
            record = json.loads(payload)
        except ValueError:
            record = {"level": "info", "message": payload}
        line = LogLine(worker, str(record.get("level", "info")), str(record.get("message", "")),
                       record.get("with") or {})
        self.logs.append(line)
        self._log.log(getattr(logging, line.level.upper(), logging.INFO), "%s: %s %s", worker, line.message, dict(line.with_) or "")

    # -- events ----------------------------------------------------------------

    def _invoke(self, trigger: str, message: dict[str, Any]) -> HttpResult | None:
        """Run one event on a free worker of ``trigger``; None when none freed up in time."""
        pool = self._pools[trigger]
        worker = pool.acquire(pool.trigger.availability_timeout_s)
        if worker is None:
            return None
        if not worker.send(pack_event(message)):
            return _json(500, {"error": f"worker {worker.label} is gone"})
        payload = worker.result(self.config.event_timeout_s)
        if payload is _TIMEOUT:
            self._log.warning("Restarting worker %s due to timeout", worker.label)
            pool.restart(worker)
            return _json(408, {"error": "handler timed out"})
        if payload is _GONE:
            return _json(500, {"error": self.failure or f"worker {worker.label} terminated"})
        try:
            result = http_result(payload)
        except EmptyBatchError as exc:
            self.faults.append(f"{worker.label}: {exc}")  # the real processor does not release the worker
            return HttpResult(500, "text/plain", str(exc).encode())
        pool.free.put(worker)
        return result

    def tick(self, trigger: str | None = None) -> HttpResult | None:
        """Fire one tick of a cron trigger (the only one if ``trigger`` is None) and wait for it;
        it waits for a tick in progress, as runs never overlap. None if no worker freed up."""
        cron = self.config.cron_triggers if trigger is None else (self.config.trigger(trigger),)
        if len(cron) != 1 or cron[0].kind != "cron":
            raise ValueError(f"name the cron trigger to tick (have {[t.name for t in self.config.cron_triggers]})")
        if not self.ready:
            raise ProcessorFailed(self._failure_text() or f"{self.config.name}: not ready")
        return self._tick(cron[0])

    def _tick(self, trigger: TriggerConfig) -> HttpResult | None:
        with self._pools[trigger.name].tick_lock:
            message = event_message(trigger.event_body, content_type="", trigger_kind="cron",
                                    trigger_name=trigger.name, headers=trigger.event_headers,
                                    method=trigger.event_method, path=trigger.event_path or "/", timestamp=0)
            result = self._invoke(trigger.name, message)
        if result is None:
            self._log.debug("cron %s: no free worker, tick dropped", trigger.name)
        return result

    def _cron_loop(self, trigger: TriggerConfig) -> None:
        interval = trigger.interval_s or 0.0
        due = time.monotonic() + interval
        while not self._stopped.wait(max(0.0, due - time.monotonic())):
            if self.failure:
                return
            self._tick(trigger)
            due += interval
            if due <= time.monotonic():
                self._log.debug("cron %s: missed runs, running once now", trigger.name)
                due = time.monotonic()

    # -- client ----------------------------------------------------------------

    def request(self, method: str = "POST", path: str = "/", body: bytes | str | None = None, *,
                json_body: Any = None, headers: Mapping[str, str] | None = None,
                timeout: float | None = None) -> HttpResult:
        """One HTTP request to the trigger (a fresh connection), as any client would send it."""
        headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return HttpResult(response.status, response.getheader("Content-Type", ""), data,
                              {k: v for k, v in response.getheaders()})
        finally:
            conn.close()

    def post_json(self, payload: Any, path: str = "/", **kw: Any) -> HttpResult:
        return self.request("POST", path, json_body=payload, **kw)


def _json(status: int, payload: Any) -> HttpResult:
    return HttpResult(status, "application/json", json.dumps(payload).encode())


def _handler_class(server: FunctionServer) -> type[BaseHTTPRequestHandler]:
    class TriggerHandler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http: " + fmt, *args)

        def _answer(self, result: HttpResult, close: bool = False) -> None:
            self.send_response(result.status)
            self.send_header("Content-Type", result.content_type)
            for name, value in result.headers.items():
                if name.lower() not in ("content-type", "content-length", "connection"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(result.body)))
            if close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(result.body)

        def _handle(self) -> None:
            url = urlsplit(self.path)
            if url.path == HEALTH_PATH and self.command == "GET":
                return self._answer(HttpResult(200, "text/plain", b""))
            length = int(self.headers.get("Content-Length") or 0)
            http = server.config.http_trigger
            if server.failure:
                return self._answer(_json(503, {"error": f"processor exited: {server.failure}"}), close=True)
            if not server._ready.is_set():
                return self._answer(_json(503, {"error": "Server not ready"}))
            if server._terminating:
                return self._answer(HttpResult(503, "text/plain", b""))
            if length > http.max_request_body_size:
                # fasthttp refuses it before the handler; read it off so the client sees the answer.
                left = length
                while left > 0:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        break
                    left -= len(chunk)
                return self._answer(HttpResult(413, "text/plain", b"body size exceeds the given limit"),
                                    close=True)
            body = self.rfile.read(length) if length else b""
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                headers[canonical_header(name)] = value  # the last duplicate wins
            content_type = headers.get("Content-Type", "")
            message = event_message(body, content_type=content_type, trigger_kind="http", trigger_name=http.name,
                                    headers=headers, fields=dict(parse_qsl(url.query)), method=self.command,
                                    path=url.path or "/")
            result = server._invoke(http.name, message)
            self._answer(result if result is not None else HttpResult(503, "text/plain", b""))

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle

    return TriggerHandler
