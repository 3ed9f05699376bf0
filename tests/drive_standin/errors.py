"""Google-format JSON error bodies (shared/reference/gdrive.md §1.7, §7.7)."""

from __future__ import annotations

from dataclasses import dataclass, field

USAGE_LIMIT_REASONS = {"userRateLimitExceeded", "rateLimitExceeded", "dailyLimitExceeded",
                       "dailyLimitExceededUnreg", "quotaExceeded"}

# Default reason and message per status, used when a fault names only a status.
DEFAULTS: dict[int, tuple[str, str]] = {
    400: ("badRequest", "Bad Request"),
    401: ("authError", "Invalid Credentials"),
    403: ("forbidden", "Forbidden"),
    404: ("notFound", "Not Found"),
    416: ("requestedRangeNotSatisfiable", "Request range not satisfiable"),
    429: ("rateLimitExceeded", "Rate Limit Exceeded"),
    500: ("backendError", "Backend Error"),
    502: ("backendError", "Bad Gateway"),
    503: ("backendError", "The service is currently unavailable."),
    504: ("backendError", "Deadline exceeded"),
}

# Canonical messages for the reasons the registry code cares about.
MESSAGES: dict[str, str] = {
    "userRateLimitExceeded": "User rate limit exceeded.",
    "rateLimitExceeded": "Rate Limit Exceeded",
    "downloadQuotaExceeded": "The download quota for this file has been exceeded.",
    "fileNotDownloadable": "Only files with binary content can be downloaded. Use Export with Docs Editors files.",
    "cannotDownloadAbusiveFile": "This file has been identified as malware or spam and cannot be downloaded.",
    "invalidAbuseAcknowledgment": "This file has not been flagged for abuse.",
    "exportSizeLimitExceeded": "This file is too large to be exported.",
    "insufficientPermissions": "Request had insufficient authentication scopes.",
    "insufficientFilePermissions": "The user does not have sufficient permissions for this file.",
    "dailyLimitExceededUnreg": "Daily Limit for Unauthenticated Use Exceeded. Continued use requires signup.",
    "authError": "Invalid Credentials",
    "backendError": "Backend Error",
    "invalid": "Invalid Value",
    "fileNotExportable": "Export only supports Docs Editors files.",
}

# Reasons whose default `location` is well known.
LOCATIONS: dict[str, tuple[str, str]] = {
    "fileNotDownloadable": ("alt", "parameter"),
    "authError": ("Authorization", "header"),
}

STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


@dataclass
class DriveError(Exception):
    """An error response; raise it from a handler to answer with Google's JSON error body."""

    code: int
    reason: str | None = None
    message: str | None = None
    location: str | None = None
    location_type: str | None = None
    domain: str | None = None
    details: list | None = None
    status: str | None = None
    headers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        default_reason, default_message = DEFAULTS.get(self.code, ("unknown", "Error"))
        self.reason = self.reason or default_reason
        self.message = self.message or MESSAGES.get(self.reason, default_message)
        if self.location is None and self.reason in LOCATIONS:
            self.location, self.location_type = LOCATIONS[self.reason]
        if self.location is not None and self.location_type is None:
            self.location_type = "parameter"
        if self.domain is None:
            self.domain = "usageLimits" if self.reason in USAGE_LIMIT_REASONS else "global"
        super().__init__(f"{self.code} {self.reason}: {self.message}")

    def body(self) -> dict:
        entry = {"message": self.message, "domain": self.domain, "reason": self.reason}
        if self.location is not None:
            entry["location"] = self.location
            entry["locationType"] = self.location_type
        err: dict = {"code": self.code, "message": self.message, "errors": [entry]}
        status = self.status or (STATUS_NAMES.get(self.code) if self.code in (401, 429, 503) or self.details else None)
        if status:
            err["status"] = status
        if self.details:
            err["details"] = self.details
        return {"error": err}


def not_found(file_id: str) -> DriveError:
    return DriveError(404, "notFound", f"File not found: {file_id}.", location="fileId")


def invalid_param(name: str, message: str = "Invalid Value", reason: str = "invalid") -> DriveError:
    return DriveError(400, reason, message, location=name)
