"""Run a Nuclio Python handler in-process the way Nuclio's processor would.

Written from the documented behaviour (shared/reference/nuclio.md §3): the
event is built as the processor's msgpack map and decoded by nuclio-sdk's own
deserializer (so a JSON body is a dict only for an exact
``application/json``; a cron event's body is always bytes), the context is a
real ``nuclio_sdk.Context``, and the handler's return value is encoded by
nuclio-sdk's ``Response`` rules and then read back as the HTTP trigger would: a
bare list is a *batch* of which only the first element reaches the client, an
empty list is a processor error, an exception becomes a 500 text/plain
traceback, and only string header values survive.

The two halves of that round trip are separate functions because the
multi-process emulator (tests/nuclio_emu) runs them on either side of a
socket: :func:`wrapper_output` is what the Python wrapper writes,
:func:`http_result` is what the Go trigger makes of it. This module imports
only the standard library, msgpack and nuclio-sdk, so a worker process can
load it by path.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import inspect
import json
import logging
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import msgpack
import nuclio_sdk
from nuclio_sdk.event import EventDeserializerKinds
from nuclio_sdk.json_encoder import Encoder
from nuclio_sdk.logger import HumanReadableFormatter

# Kube cron mode: a CronJob curls the function's HTTP port with these headers.
CRON_JOB_TRIGGER_HEADER = "X-Nuclio-Invoke-Trigger"
TARGET_HEADER = "X-Nuclio-Target"


class EmptyBatchError(AssertionError):
    """The handler returned ``[]``: Nuclio's processor panics on that (500, worker not released)."""


def event_message(body: bytes, *, content_type: str, trigger_kind: str, trigger_name: str,
                  headers: Mapping[str, str] | None = None, fields: Mapping[str, str] | None = None,
                  method: str = "POST", path: str = "/", timestamp: int | None = None) -> dict[str, Any]:
    """The map the processor's msgpack encoder sends a worker (nuclio.md §3.4)."""
    return {
        "body": bytes(body), "content_type": content_type, "content-type": content_type,
        "trigger": {"kind": trigger_kind, "name": trigger_name}, "fields": dict(fields or {}),
        "headers": dict(headers or {}), "id": str(uuid.uuid4()), "method": method, "path": path,
        "size": len(body), "timestamp": int(time.time()) if timestamp is None else timestamp, "url": "",
        "shard_id": 0, "num_shards": 0, "type": "", "type_version": "", "version": "", "offset": 0, "topic": "",
    }


def pack_event(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def unpack_event(data: bytes) -> nuclio_sdk.Event:
    """What the wrapper does with one frame: msgpack, then the SDK's own deserializer."""
    return nuclio_sdk.Event.deserialize(msgpack.unpackb(data, raw=False), kind=EventDeserializerKinds.msgpack)


def http_event(json_body: Any = None, *, raw: bytes | str | None = None, content_type: str = "application/json",
               headers: dict[str, str] | None = None, method: str = "POST", path: str = "/",
               query: dict[str, str] | None = None, trigger_name: str = "myHttpTrigger") -> nuclio_sdk.Event:
    """An HTTP event as a worker receives it.

    A Kube-mode cron run is an HTTP event too: pass
    ``headers={CRON_JOB_TRIGGER_HEADER: "cron", TARGET_HEADER: <function>}``.
    """
    if raw is None:
        raw = b"" if json_body is None else json.dumps(json_body).encode()
    elif isinstance(raw, str):
        raw = raw.encode()
    headers = {"Content-Type": content_type, **(headers or {})}
    message = event_message(raw, content_type=content_type, trigger_kind="http", trigger_name=trigger_name,
                            headers=headers, fields=query, method=method, path=path)
    return unpack_event(pack_event(message))


def cron_event(body: bytes | str = b"", *, headers: dict[str, str] | None = None, trigger_name: str = "cron",
               method: str = "", path: str = "") -> nuclio_sdk.Event:
    """A cron tick as a worker receives it: content type "", so the body stays bytes even
    when it holds JSON; timestamp 0 (1970-01-01); headers/method/path from ``attributes.event``."""
    raw = body.encode() if isinstance(body, str) else bytes(body)
    message = event_message(raw, content_type="", trigger_kind="cron", trigger_name=trigger_name,
                            headers=headers, method=method, path=path or "/", timestamp=0)
    return unpack_event(pack_event(message))


# -- wrapper side ----------------------------------------------------------------

def exception_output(exc: BaseException) -> dict[str, Any]:
    """The wrapper's answer to any exception from the handler (nuclio.md §3.6)."""
    text = f"Exception caught in handler - \"{exc}\": {''.join(traceback.format_exception(exc))}"
    return {"body": text, "body_encoding": "text", "content_type": "text/plain", "headers": {}, "status_code": 500}


def wrapper_output(output: Any) -> dict[str, Any] | list[dict[str, Any]]:
    """Encode a handler's return value as the wrapper does: a list is a batch (one
    response per element), anything else goes through ``Response.from_entrypoint_output``.
    Raises what the encoding raises (a Response dict body with numpy values)."""
    encode = Encoder().encode
    if isinstance(output, list):
        return [nuclio_sdk.Response.from_entrypoint_output(encode, item) for item in output]
    return nuclio_sdk.Response.from_entrypoint_output(encode, output)


def run_handler(handler: Callable, context: nuclio_sdk.Context, event: nuclio_sdk.Event,
                loop: asyncio.AbstractEventLoop | None = None) -> dict[str, Any] | list[dict[str, Any]]:
    """Call the handler (awaited if async) and encode its output; failures become the 500 traceback."""
    try:
        output = handler(context, event)
        if inspect.isawaitable(output):
            output = _await(output, loop)
        return wrapper_output(output)
    except BaseException as exc:  # the wrapper catches everything, encoding errors included
        context.logger.error_with("Exception caught in handler", exc=str(exc), traceback=traceback.format_exc())
        return exception_output(exc)


def wire_line(result: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The JSON the wrapper writes after ``r`` (the SDK encoder: non-JSON values become repr strings)."""
    return Encoder().encode(result)


def _await(awaitable: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
    if loop is None:
        return asyncio.run(_as_coroutine(awaitable))
    return loop.run_until_complete(awaitable)


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable


# -- trigger side ----------------------------------------------------------------

@dataclass
class HttpResult:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def http_result(wire: str | dict[str, Any] | list[dict[str, Any]]) -> HttpResult:
    """What the HTTP client gets from the wrapper's ``r`` payload: element 0 of a batch,
    base64 bodies decoded, only string header values kept (the Go side drops the rest).
    Raises :class:`EmptyBatchError` for ``[]``."""
    if not isinstance(wire, str):
        wire = wire_line(wire)
    result = json.loads(wire)
    if isinstance(result, list):
        if not result:
            raise EmptyBatchError("handler returned an empty list: Nuclio's processor panics on that")
        result = result[0]
    body = result.get("body", "")
    data = base64.b64decode(body) if result.get("body_encoding") == "base64" else str(body).encode()
    headers = {k: v for k, v in (result.get("headers") or {}).items() if isinstance(v, str)}
    return HttpResult(int(result.get("status_code") or 200), result.get("content_type") or "text/plain", data,
                      headers)


# -- in-process worker -----------------------------------------------------------

def _logger(level: str) -> nuclio_sdk.Logger:
    logger = nuclio_sdk.Logger(level=getattr(logging, level.upper()), name=f"worker-{uuid.uuid4().hex[:6]}")
    logger.set_handler("default", sys.stderr, HumanReadableFormatter())
    logging.getLogger(logger._logger.name).propagate = False  # the processor collects function logs, not the root logger
    return logger


class Worker:
    """One worker process' view: the handler module, its context, init done once."""

    def __init__(self, function_dir: str | Path, handler: str = "main:handler", *, env: dict[str, str] | None = None,
                 log_level: str = "warning", worker_id: str = "0", trigger_kind: str = "http",
                 trigger_name: str = "myHttpTrigger"):
        module_name, _, func_name = handler.partition(":")
        path = Path(function_dir) / f"{module_name.replace('.', '/')}.py"
        # The function's environment (spec.env) is what its import and init_context read;
        # it is set for those two steps only, as other workers share this process.
        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            # A unique module name per worker: each Nuclio worker is its own process.
            spec = importlib.util.spec_from_file_location(f"_nuclio_fn_{uuid.uuid4().hex}", path)
            self.module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.module)
            self.handler: Callable = getattr(self.module, func_name)
            self.context = nuclio_sdk.Context(_logger(log_level), nuclio_sdk.Platform("local", "nuclio"), worker_id,
                                              nuclio_sdk.TriggerInfo(trigger_kind, trigger_name))
            init = getattr(self.module, "init_context", None)
            if init is not None and inspect.isawaitable(started := init(self.context)):
                _await(started, None)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def call(self, event: nuclio_sdk.Event) -> Any:
        """The handler's raw return value."""
        output = self.handler(self.context, event)
        return _await(output, None) if inspect.isawaitable(output) else output

    def invoke(self, event: nuclio_sdk.Event) -> HttpResult:
        """What the HTTP client gets back (raises EmptyBatchError on ``[]``)."""
        return http_result(run_handler(self.handler, self.context, event))

    def terminate(self) -> None:
        """Run the termination callback registered through ``context.platform``, as SIGUSR1 would."""
        pending = self.context.platform._on_signal("termination")
        if inspect.isawaitable(pending):
            _await(pending, None)
