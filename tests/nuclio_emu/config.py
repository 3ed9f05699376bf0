"""The parts of a ``function.yaml`` the worker-pool emulator obeys (nuclio.md §1.2, §1.3).

Parsed as Nuclio parses it: ``metadata`` (not ``meta``), ``spec.env`` as a list of
``{name, value}``, triggers as a map whose key is the trigger name. Unknown keys
are ignored, as Nuclio ignores them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_MAX_REQUEST_BODY_SIZE = 4 * 1024 * 1024
DEFAULT_AVAILABILITY_TIMEOUT_S = 10.0
DEFAULT_READINESS_TIMEOUT_S = 120.0
DEFAULT_HTTP_TRIGGER = "default-http"

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class ConfigError(ValueError):
    """A function.yaml the emulator (or Nuclio) cannot run."""


def parse_duration(text: str) -> float:
    """A Go duration (``"30s"``, ``"1m30s"``, ``"250ms"``) in seconds."""
    text = text.strip()
    if text in ("0", ""):
        return 0.0
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        raise ConfigError(f"not a Go duration: {text!r}")
    return total


@dataclass(frozen=True)
class TriggerConfig:
    name: str
    kind: str                                   # "http" or "cron"
    num_workers: int = 1
    availability_timeout_s: float = DEFAULT_AVAILABILITY_TIMEOUT_S   # 0: do not wait
    max_request_body_size: int = DEFAULT_MAX_REQUEST_BODY_SIZE       # http only
    interval_s: float | None = None             # cron: attributes.interval or schedule "@every <d>"
    schedule: str | None = None                 # cron: attributes.schedule as written
    event_body: bytes = b""                     # cron: attributes.event
    event_headers: Mapping[str, str] = field(default_factory=dict)
    event_method: str = ""
    event_path: str = ""

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> TriggerConfig:
        kind = data.get("kind", "")
        if kind not in ("http", "cron"):
            raise ConfigError(f"trigger {name!r}: kind {kind!r} is not emulated (http, cron)")
        if data.get("name", name) != name:
            raise ConfigError(f"trigger {name!r}: name {data['name']!r} differs from its key")
        # maxWorkers is the deprecated spelling, used only when numWorkers is unset or 0.
        workers = int(data.get("numWorkers") or data.get("maxWorkers") or 1)
        timeout_ms = data.get("workerAvailabilityTimeoutMilliseconds")
        timeout_s = DEFAULT_AVAILABILITY_TIMEOUT_S if timeout_ms is None or timeout_ms < 0 else timeout_ms / 1000
        attrs = data.get("attributes") or {}
        values: dict[str, Any] = {"name": name, "kind": kind, "num_workers": workers,
                                  "availability_timeout_s": timeout_s}
        if kind == "http":
            values["max_request_body_size"] = int(attrs.get("maxRequestBodySize") or DEFAULT_MAX_REQUEST_BODY_SIZE)
        else:
            schedule, interval = attrs.get("schedule"), attrs.get("interval")
            if bool(schedule) == bool(interval):
                raise ConfigError(f"cron trigger {name!r}: set exactly one of attributes.schedule and .interval")
            if interval:
                values["interval_s"] = parse_duration(str(interval))
            else:
                values["schedule"] = str(schedule)
                if str(schedule).startswith("@every "):
                    values["interval_s"] = parse_duration(str(schedule)[len("@every "):])
            event = attrs.get("event") or {}
            body = event.get("body", "")
            values.update(event_body=body.encode() if isinstance(body, str) else bytes(body),
                          event_headers={str(k): str(v) for k, v in (event.get("headers") or {}).items()},
                          event_method=str(event.get("method") or ""), event_path=str(event.get("path") or ""))
        return cls(**values)


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    handler: str = "main:handler"
    namespace: str = "nuclio"
    env: Mapping[str, str] = field(default_factory=dict)
    event_timeout_s: float | None = None        # None: no per-event timeout
    readiness_timeout_s: float = DEFAULT_READINESS_TIMEOUT_S
    triggers: tuple[TriggerConfig, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FunctionConfig:
        if "metadata" not in data:
            raise ConfigError("function.yaml has no 'metadata' (note: 'meta' is ignored by Nuclio)")
        meta, spec = data["metadata"] or {}, data.get("spec") or {}
        env = spec.get("env") or []
        if not isinstance(env, list):
            raise ConfigError("spec.env must be a list of {name, value}")
        triggers = [TriggerConfig.from_dict(name, t or {}) for name, t in (spec.get("triggers") or {}).items()]
        if sum(t.kind == "http" for t in triggers) > 1:
            raise ConfigError("at most one http trigger")
        if not any(t.kind == "http" for t in triggers) and not spec.get("disableDefaultHTTPTrigger"):
            triggers.append(TriggerConfig(DEFAULT_HTTP_TRIGGER, "http"))
        event_timeout = spec.get("eventTimeout")
        return cls(name=meta["name"], handler=spec.get("handler", "main:handler"),
                   namespace=meta.get("namespace") or "nuclio",
                   env={str(e["name"]): str(e.get("value", "")) for e in env},
                   event_timeout_s=parse_duration(str(event_timeout)) or None if event_timeout else None,
                   readiness_timeout_s=float(spec.get("readinessTimeoutSeconds") or DEFAULT_READINESS_TIMEOUT_S),
                   triggers=tuple(triggers))

    @classmethod
    def from_yaml(cls, path: str | Path) -> FunctionConfig:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))

    @property
    def http_trigger(self) -> TriggerConfig | None:
        return next((t for t in self.triggers if t.kind == "http"), None)

    @property
    def cron_triggers(self) -> tuple[TriggerConfig, ...]:
        return tuple(t for t in self.triggers if t.kind == "cron")

    def trigger(self, name: str) -> TriggerConfig:
        for t in self.triggers:
            if t.name == name:
                return t
        raise KeyError(f"no trigger {name!r} (have {[t.name for t in self.triggers]})")

    def with_env(self, **env: str) -> FunctionConfig:
        return dataclasses.replace(self, env={**self.env, **env})

    def with_trigger(self, name: str, **changes: Any) -> FunctionConfig:
        """A copy with one trigger's fields replaced (``num_workers=2``, ``interval_s=0.1``...)."""
        self.trigger(name)
        return dataclasses.replace(self, triggers=tuple(
            dataclasses.replace(t, **changes) if t.name == name else t for t in self.triggers))
