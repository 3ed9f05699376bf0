"""One emulated Nuclio worker: a Python process that serves one trigger's events.

Run as a script by :mod:`tests.nuclio_emu.pool` (never imported): like Nuclio's
wrapper (nuclio.md §3.1-3.2, §3.8-3.9) it imports the handler module with the
function directory on ``PYTHONPATH``, builds a real ``nuclio_sdk.Context``, runs
``init_context`` once, then serves events one at a time over a socket it
inherits. Frames in: 4-byte big-endian length + msgpack event map. Lines out:
``s`` (initialised), ``l{json}`` (a log record), ``m{json}`` (duration),
``r{json}`` (the result). SIGUSR1 = terminate: the current event finishes, the
termination callback registered on ``context.platform`` runs, the process exits 0.

The return-value rules come from tools/nuclio_harness.py, loaded by path so
that nothing but the function directory is on ``sys.path``.
"""

import argparse
import asyncio
import importlib
import importlib.util
import inspect
import json
import logging
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback

# The script's own folder is not part of the function's import path.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import nuclio_sdk  # noqa: E402
from nuclio_sdk.logger import JSONFormatter  # noqa: E402


class _Channel:
    """The socket to the emulated processor; any thread may log at any time."""

    def __init__(self, fd: int):
        self.sock = socket.socket(fileno=fd)
        self.lock = threading.RLock()  # re-entrant: the SIGUSR1 handler may log from the main thread

    def send(self, kind: str, payload: str = "") -> None:
        data = (kind + payload.replace("\n", " ") + "\n").encode()
        with self.lock:
            self.sock.sendall(data)

    def recv_frame(self) -> bytes | None:
        head = self._recv_exact(4)
        return None if head is None else self._recv_exact(struct.unpack(">I", head)[0])

    def _recv_exact(self, n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class _SocketLogHandler(logging.Handler):
    def __init__(self, channel: _Channel):
        super().__init__()
        self.channel = channel
        self.setFormatter(JSONFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.channel.send("l", self.format(record))
        except OSError:
            pass  # the processor is gone; nobody reads logs any more


def _load_rules(path: str):
    spec = importlib.util.spec_from_file_location("_nuclio_emu_rules", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--handler", "--fd", "--platform-kind", "--namespace", "--worker-id", "--trigger-kind",
                 "--trigger-name", "--rules"):
        parser.add_argument(name, required=True)
    args = parser.parse_args()
    rules = _load_rules(args.rules)
    channel = _Channel(int(args.fd))

    logger = nuclio_sdk.Logger(level=logging.DEBUG, name=f"nuclio.{args.trigger_name}.{args.worker_id}")
    logger._logger.addHandler(_SocketLogHandler(channel))
    logger._logger.propagate = False

    state = {"busy": True, "terminating": False}
    loop = asyncio.new_event_loop()

    def terminate() -> None:
        try:
            pending = context.platform._on_signal("termination")  # the SDK's own dispatch
            if inspect.isawaitable(pending):
                loop.run_until_complete(pending)
        except BaseException as exc:  # noqa: BLE001 - report, then exit like the wrapper
            logger.error_with("termination callback failed", exc=repr(exc), traceback=traceback.format_exc())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # background threads of the function must not keep a terminated worker alive

    def on_sigusr1(signum, frame) -> None:
        state["terminating"] = True
        if not state["busy"]:
            terminate()

    signal.signal(signal.SIGUSR1, on_sigusr1)

    module_name, _, func_name = args.handler.partition(":")
    try:
        module = importlib.import_module(module_name)
        handler = getattr(module, func_name)
    except BaseException as exc:  # noqa: BLE001
        logger.error_with("Failed to load handler", handler=args.handler, exc=repr(exc),
                          traceback=traceback.format_exc())
        sys.exit(1)

    context = nuclio_sdk.Context(logger, nuclio_sdk.Platform(args.platform_kind, args.namespace), args.worker_id,
                                 nuclio_sdk.TriggerInfo(args.trigger_kind, args.trigger_name))
    init = getattr(module, "init_context", None)
    if init is not None:
        try:
            started = init(context)
            if inspect.isawaitable(started):
                loop.run_until_complete(started)
        except BaseException as exc:  # noqa: BLE001 - an init failure ends the worker (and the processor)
            logger.error_with("Exception raised while running init_context", exc=repr(exc),
                              traceback=traceback.format_exc())
            sys.exit(1)

    channel.send("s")
    state["busy"] = False
    if state["terminating"]:
        terminate()
    while True:
        frame = channel.recv_frame()
        if frame is None:
            return  # the processor closed the socket
        state["busy"] = True
        if state["terminating"]:
            terminate()  # events after termination are discarded without a response (1.14)
        started_at = time.monotonic()
        result = rules.run_handler(handler, context, rules.unpack_event(frame), loop)
        channel.send("m", json.dumps({"duration": time.monotonic() - started_at}))
        channel.send("r", rules.wire_line(result))
        state["busy"] = False
        if state["terminating"]:
            terminate()


if __name__ == "__main__":
    main()
