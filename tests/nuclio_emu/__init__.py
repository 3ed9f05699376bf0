"""Nuclio emulation for tests (shared/reference/nuclio.md §7, layers 1-3).

Layers 1-2 (events, in-process invoke) live in tools/nuclio_harness.py and are
re-exported here; layer 3 is :class:`FunctionServer`, real worker processes
behind a local HTTP trigger, with cron triggers. Typical use::

    from tests.nuclio_emu import FunctionServer
    with FunctionServer("functions/registry-sync", env={"X": "1"}, python_path=[REPO]) as fn:
        assert fn.post_json({"a": 1}).status == 200
        fn.tick()                      # one cron run, synchronously
"""

from tools.nuclio_harness import (
    CRON_JOB_TRIGGER_HEADER,
    TARGET_HEADER,
    EmptyBatchError,
    HttpResult,
    Worker,
    cron_event,
    http_event,
    http_result,
    wrapper_output,
)

from .config import ConfigError, FunctionConfig, TriggerConfig, parse_duration
from .pool import FunctionServer, LogLine, ProcessorFailed, WorkerInfo, canonical_header

__all__ = [
    "CRON_JOB_TRIGGER_HEADER",
    "TARGET_HEADER",
    "ConfigError",
    "EmptyBatchError",
    "FunctionConfig",
    "FunctionServer",
    "HttpResult",
    "LogLine",
    "ProcessorFailed",
    "TriggerConfig",
    "Worker",
    "WorkerInfo",
    "canonical_header",
    "cron_event",
    "http_event",
    "http_result",
    "parse_duration",
    "wrapper_output",
]
