"""Run a Nuclio Python handler in-process the way Nuclio's processor would.

Written from the documented behaviour (shared/reference/nuclio.md §3): the
event is built as the processor's msgpack map and decoded by nuclio-sdk's own
deserializer (so a JSON body is a dict only for an exact
``application/json``), the context is a real ``nuclio_sdk.Context``, and the
handler's return value is encoded by nuclio-sdk's ``Response`` rules and then
read back as the HTTP trigger would: a bare list is a *batch* of which only
the first element reaches the client, an empty list is a processor error, and
an exception becomes a 500 text/plain traceback.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import msgpack
import nuclio_sdk
from nuclio_sdk.event import EventDeserializerKinds
from nuclio_sdk.json_encoder import Encoder
from nuclio_sdk.logger import HumanReadableFormatter


def http_event(json_body: Any = None, *, raw: bytes | str | None = None, content_type: str = "application/json",
               headers: dict[str, str] | None = None, method: str = "POST", path: str = "/") -> nuclio_sdk.Event:
    """An HTTP event as a worker receives it."""
    if raw is None:
        raw = b"" if json_body is None else json.dumps(json_body).encode()
    elif isinstance(raw, str):
        raw = raw.encode()
    headers = {"Content-Type": content_type, **(headers or {})}
    message = {
        "body": raw, "content_type": content_type, "content-type": content_type,
        "trigger": {"kind": "http", "name": "myHttpTrigger"}, "fields": {}, "headers": headers,
        "id": str(uuid.uuid4()), "method": method, "path": path, "size": len(raw),
        "timestamp": int(time.time()), "url": "", "shard_id": 0, "num_shards": 0, "type": "",
        "type_version": "", "version": "", "offset": 0, "topic": "",
    }
    packed = msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False)
    return nuclio_sdk.Event.deserialize(packed, kind=EventDeserializerKinds.msgpack)


@dataclass
class HttpResult:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body)


def _logger(level: str) -> nuclio_sdk.Logger:
    logger = nuclio_sdk.Logger(level=getattr(logging, level.upper()), name=f"worker-{uuid.uuid4().hex[:6]}")
    logger.set_handler("default", sys.stderr, HumanReadableFormatter())
    logging.getLogger(logger._logger.name).propagate = False  # the processor collects function logs, not the root logger
    return logger


class Worker:
    """One worker process' view: the handler module, its context, init done once."""

    def __init__(self, function_dir: str | Path, handler: str = "main:handler", *, env: dict[str, str] | None = None,
                 log_level: str = "warning"):
        module_name, _, func_name = handler.partition(":")
        path = Path(function_dir) / f"{module_name}.py"
        # A unique module name per worker: each Nuclio worker is its own process.
        spec = importlib.util.spec_from_file_location(f"_nuclio_fn_{uuid.uuid4().hex}", path)
        self.module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.module)
        self.handler: Callable = getattr(self.module, func_name)
        self.context = nuclio_sdk.Context(_logger(log_level), nuclio_sdk.Platform("local", "nuclio"), "0",
                                          nuclio_sdk.TriggerInfo("http", "myHttpTrigger"))
        init = getattr(self.module, "init_context", None)
        if init is not None:
            # The function's environment (spec.env) is what init_context reads.
            saved = dict(os.environ)
            os.environ.update(env or {})
            try:
                init(self.context)
            finally:
                os.environ.clear()
                os.environ.update(saved)

    def call(self, event: nuclio_sdk.Event) -> Any:
        """The handler's raw return value."""
        return self.handler(self.context, event)

    def invoke(self, event: nuclio_sdk.Event) -> HttpResult:
        """What the HTTP client gets back."""
        try:
            output = self.call(event)
        except BaseException as exc:  # the wrapper catches everything
            body = f"Exception caught in handler - \"{exc}\": {traceback.format_exc()}"
            return HttpResult(500, "text/plain", body.encode())
        if isinstance(output, list):
            # Batch semantics: the non-batch HTTP trigger answers element 0 only;
            # an empty list makes the processor fail.
            if not output:
                raise AssertionError("handler returned an empty list: Nuclio's processor panics on that")
            output = output[0]
        encoded = nuclio_sdk.Response.from_entrypoint_output(Encoder().encode, output)
        body = encoded["body"]
        data = base64.b64decode(body) if encoded.get("body_encoding") == "base64" else str(body).encode()
        headers = {k: v for k, v in (encoded.get("headers") or {}).items() if isinstance(v, str)}
        return HttpResult(int(encoded["status_code"]), encoded["content_type"], data, headers)
