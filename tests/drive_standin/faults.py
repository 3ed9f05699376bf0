"""Scripted faults and the request log (shared/reference/gdrive.md §7.8)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

FAULT_KINDS = ("status", "delay", "truncate", "reset")


@dataclass
class RecordedRequest:
    """One request as the stand-in saw it.

    ``method`` is the effective method (``GET`` for the long-URL ``POST`` with
    ``X-HTTP-Method-Override: GET``; ``raw_method`` keeps ``POST``). ``query`` merges the URL
    query and such a form body. Header names are lower-case.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_method: str
    file_id: str | None = None
    status: int | None = None
    fault: str | None = None
    bytes_sent: int = 0
    bytes_received: int = 0  # request body bytes read
    body_complete: bool = True  # False when the body fell short of Content-Length

    @property
    def content_range(self) -> str | None:
        return self.headers.get("content-range")

    @property
    def upload_id(self) -> str | None:
        return self.query.get("upload_id")

    @property
    def alt(self) -> str:
        return self.query.get("alt", "json")

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    def __iter__(self):  # (method, path, query, headers), for tuple-style unpacking
        return iter((self.method, self.path, self.query, self.headers))

    def matches(self, *, path_prefix: str | None = None, alt: str | None = None, method: str | None = None,
                file_id: str | None = None, status: int | None = None, has_range: bool | None = None) -> bool:
        return ((path_prefix is None or self.path.startswith(path_prefix))
                and (alt is None or self.alt == alt)
                and (method is None or self.method == method.upper())
                and (file_id is None or self.file_id == file_id)
                and (status is None or self.status == status)
                and (has_range is None or (self.range is not None) == has_range))


class RequestLog(list):
    """A list of :class:`RecordedRequest` with filters; ``clear()`` empties it."""

    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()

    def record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.append(req)

    def filter(self, **criteria) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self if r.matches(**criteria)]

    def count(self, **criteria) -> int:
        return len(self.filter(**criteria))

    def ranges(self, **criteria) -> list[str | None]:
        return [r.range for r in self.filter(**criteria)]


@dataclass
class Fault:
    """A scripted misbehaviour for the next ``times`` matching requests (``None`` = forever).

    kinds:
      * ``status``: answer ``status`` with a Google error body (``reason``/``message``), or a raw ``body``.
      * ``delay``: sleep ``delay`` seconds, then serve normally.
      * ``truncate``: serve normally but close the connection after ``truncate_after`` body bytes
        (``Content-Length`` still announces the full size, so the client sees ``IncompleteRead``).
      * ``reset``: abort the connection with a TCP RST before answering.
    Match criteria (all optional): ``file_id``, ``path_prefix``, ``alt``, ``method``.
    """

    kind: str
    times: int | None = 1
    status: int = 500
    reason: str | None = None
    message: str | None = None
    location: str | None = None
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    delay: float = 0.0
    truncate_after: int = 0
    file_id: str | None = None
    path_prefix: str | None = None
    alt: str | None = None
    method: str | None = None
    hits: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.hits >= self.times

    def matches(self, req: RecordedRequest) -> bool:
        return not self.exhausted and req.matches(path_prefix=self.path_prefix, alt=self.alt,
                                                  method=self.method, file_id=self.file_id)
