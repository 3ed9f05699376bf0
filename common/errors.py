"""The pack's error hierarchy.

Every error the pack raises on purpose derives from :class:`PackError` and
carries the HTTP status a handler should answer with, so handlers map errors
to responses in one place (``error.http_status``) and stay thin.
"""

from __future__ import annotations


class PackError(Exception):
    """Base class; ``http_status`` is what a handler answers when it escapes."""

    http_status = 500


class BadRequest(PackError):
    """The request is malformed (missing image, bad threshold, ...)."""

    http_status = 400


class InvalidImage(BadRequest):
    """The request's image cannot be decoded."""


class ModelConfigError(PackError):
    """model.json is invalid. ``problems`` holds one ``(path, message)`` per fault."""

    def __init__(self, problems: list[tuple[str, str]] | str, *, source: str = "model.json"):
        if isinstance(problems, str):
            problems = [("$", problems)]
        self.problems = list(problems)
        self.source = source
        lines = "; ".join(f"{path}: {msg}" for path, msg in self.problems)
        super().__init__(f"{source}: {lines}")


class SettingsError(ModelConfigError):
    """A bad setting in the function's environment (MODEL_REGISTRY, MODEL_CACHE_SIZE,
    Drive credentials, ...): stops the start, named by its variable."""

    def __init__(self, message: str):
        super().__init__([("$", message)], source="environment")
        self.args = (f"environment: {message}",)


class RegistryError(PackError):
    """The registry cannot be read (unreachable, permission, malformed layout)."""

    http_status = 502


class ModelNotFound(RegistryError):
    """No model (or no such version of it) in the registry."""

    http_status = 404


class CacheError(PackError):
    """The disk cache cannot admit or serve a file."""


class IntegrityError(CacheError):
    """Downloaded bytes do not match the registry's size or checksum."""

    http_status = 502


class RuntimeLoadError(PackError):
    """A runtime cannot load or run the model."""
