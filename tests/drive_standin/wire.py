"""Small shared types for the stand-in's handlers: the caller, a response, query parsing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import DriveError, invalid_param

_METADATA_ONLY_SCOPES = {"drive.metadata.readonly", "drive.metadata", "drive.photos.readonly"}
# Scopes that may change content (create files with bytes, upload, delete) and, with
# drive.metadata, those that may change metadata only (shared/reference/gdrive.md §3.2).
_CONTENT_WRITE_SCOPES = {"drive", "drive.file", "drive.appdata"}
_METADATA_WRITE_SCOPES = _CONTENT_WRITE_SCOPES | {"drive.metadata"}


@dataclass
class Principal:
    kind: str  # "token" or "key"
    scopes: frozenset[str] | None = None

    def can_read_content(self) -> bool:
        if self.scopes is None:
            return True
        return any(s not in _METADATA_ONLY_SCOPES for s in self.scopes)

    def can_write(self, content: bool) -> bool:
        if self.scopes is None:
            return True
        return bool(self.scopes & (_CONTENT_WRITE_SCOPES if content else _METADATA_WRITE_SCOPES))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Iterable[bytes]
    length: int
    on_sent: object = None  # callable(bytes_sent) after the body went out
    reason: str | None = None  # status-line phrase; None = the stdlib's default


def bool_param(query: dict[str, str], name: str, default: bool = False) -> bool:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    low = raw.lower()
    if low in ("true", "1"):
        return True
    if low in ("false", "0"):
        return False
    raise invalid_param(name, f"Invalid value '{raw}'. Valid values are: [true, false]")


def page_size_param(query: dict[str, str], default: int, maximum: int) -> int:
    """``pageSize``: 1..maximum; larger values are coerced to ``maximum``, smaller ones are 400."""
    raw = query.get("pageSize")
    if raw is None or raw == "":
        return default
    try:
        size = int(raw)
    except ValueError:
        size = 0
    if size < 1:
        raise invalid_param("pageSize", f"Invalid value '{raw}'. Values must be within the range: [1, {maximum}]")
    return min(size, maximum)


def insufficient_scopes(method: str) -> DriveError:
    return DriveError(403, "insufficientPermissions", status="PERMISSION_DENIED", details=[{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
        "domain": "googleapis.com",
        "metadata": {"service": "drive.googleapis.com", "method": f"google.apps.drive.v3.{method}"}}])


def login_required() -> DriveError:
    return DriveError(401, "required", "Login Required.", location="Authorization", location_type="header")
