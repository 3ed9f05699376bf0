"""Opening a registry from its spec: the one place ``MODEL_REGISTRY``'s forms are read.

``local:<folder>`` (or a bare folder path), ``gdrive:<root folder name>``
(empty: ``CVAT_Models``) and ``gdrive-id:<folder id>``; Drive credentials come
from the environment (:mod:`common.registry.drive_auth`), ``DRIVE_ROOT_URL``
points the client elsewhere (the stand-in in tests), ``DRIVE_RETRIES`` bounds
attempts per call.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from common.errors import SettingsError
from common.registry import Registry
from common.registry.local import LocalRegistry

DRIVE_WRITE_SCOPE = "https://www.googleapis.com/auth/drive"


def open_registry(spec: str, env: Mapping[str, str] | None = None,
                  cache_dir: str | os.PathLike[str] | None = None, *, write: bool = False) -> Registry:
    """``local:<folder>`` (or a bare folder path) -> LocalRegistry;
    ``gdrive:<root folder name>`` / ``gdrive-id:<folder id>`` -> DriveRegistry
    with credentials from ``env`` (default os.environ), model.json bodies
    remembered in ``cache_dir``. ``write`` asks Drive for the ``drive`` scope
    (push, remove); reading uses ``drive.readonly``."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "local":
        if not rest.strip():
            raise SettingsError("MODEL_REGISTRY local: needs the registry folder's path")
        return LocalRegistry(rest)
    if sep and kind in ("gdrive", "gdrive-id"):
        return _open_drive(kind, rest.strip(), os.environ if env is None else env, cache_dir, write)
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]+", kind):  # a scheme, not a folder path
        raise SettingsError(f"MODEL_REGISTRY: unknown registry kind {kind!r} in {spec!r}; "
                               "use local:<folder>, gdrive:<folder name> or gdrive-id:<folder id>")
    return LocalRegistry(spec)


def _open_drive(kind: str, where: str, env: Mapping[str, str], cache_dir: str | os.PathLike[str] | None,
                write: bool) -> Registry:
    from common.registry.drive_auth import drive_credentials
    from common.registry.gdrive import DEFAULT_ROOT_NAME, ROOT_URL_SETTING, DriveRegistry, build_service

    if kind == "gdrive-id" and not where:
        raise SettingsError("MODEL_REGISTRY gdrive-id: needs the registry folder's Drive id")
    try:
        retries = int(env.get("DRIVE_RETRIES", "").strip() or 6)
        if retries < 1:
            raise ValueError
    except ValueError:
        raise SettingsError(f"DRIVE_RETRIES must be a whole number of at least 1, got "
                               f"{env.get('DRIVE_RETRIES')!r}") from None
    credentials, api_key = drive_credentials(env)
    if write:
        if credentials is None:
            raise SettingsError("an API key can only read the registry; push and remove need a service account "
                                   "key (GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY) or GOOGLE_DRIVE_USE_ADC=1 with write "
                                   "access")
        if hasattr(credentials, "with_scopes"):
            credentials = credentials.with_scopes([DRIVE_WRITE_SCOPE])
    try:
        service = build_service(env.get(ROOT_URL_SETTING, "").strip() or None, credentials, api_key=api_key)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    if kind == "gdrive-id":
        return DriveRegistry(service, root_id=where, cache_dir=cache_dir, retries=retries)
    return DriveRegistry(service, where or DEFAULT_ROOT_NAME, cache_dir=cache_dir, retries=retries)
