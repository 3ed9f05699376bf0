"""Credentials for the Drive registry, from the function's environment.

One of three settings, tried in this order (shared/reference/gdrive.md §3):

=====================================  ==================================================================
``GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY``   path to a service-account JSON key (a mounted secret file); the
                                       registry folder is shared with the account's e-mail
``GOOGLE_DRIVE_API_KEY``               an API key: only folders and files shared "anyone with the link"
``GOOGLE_DRIVE_USE_ADC=1``             application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``,
                                       GKE workload identity, a VM's service account)
=====================================  ==================================================================

The scope asked for is ``drive.readonly`` only: the runner lists and downloads,
nothing more. Secrets (the key's contents, the API key) are never logged.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from typing import Any

from common.errors import SettingsError

__all__ = ["ADC_SETTING", "API_KEY_SETTING", "DRIVE_READONLY", "SA_KEY_SETTING", "drive_credentials"]

log = logging.getLogger(__name__)

DRIVE_READONLY = "https://www.googleapis.com/auth/drive.readonly"
SCOPES = (DRIVE_READONLY,)
SA_KEY_SETTING = "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY"
API_KEY_SETTING = "GOOGLE_DRIVE_API_KEY"
ADC_SETTING = "GOOGLE_DRIVE_USE_ADC"

_OPTIONS = (f"set {SA_KEY_SETTING} to the path of a service-account JSON key (share the registry folder with "
            f"its e-mail), or {API_KEY_SETTING} to an API key (folders shared with anyone with the link only), "
            f"or {ADC_SETTING}=1 to use application default credentials")


def drive_credentials(env: Mapping[str, str] | None = None) -> tuple[Any | None, str | None]:
    """``(credentials, None)`` or ``(None, api_key)`` from ``env`` (default: os.environ).

    Raises ModelConfigError (source "environment") when none is configured or
    the configured one cannot be loaded."""
    env = os.environ if env is None else env
    key_path = env.get(SA_KEY_SETTING, "").strip()
    if key_path:
        return _service_account(key_path), None
    api_key = env.get(API_KEY_SETTING, "").strip()
    if api_key:
        log.info("Drive registry: using an API key (%s); only items shared with anyone are visible", API_KEY_SETTING)
        return None, api_key
    if env.get(ADC_SETTING, "").strip().lower() in ("1", "true", "yes", "on"):
        return _application_default(), None
    raise SettingsError(f"no Google Drive credentials configured: {_OPTIONS}")


def _service_account(path: str) -> Any:
    from google.oauth2 import service_account

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise SettingsError(f"{SA_KEY_SETTING}: cannot read the service-account key {path!r} "
                               f"({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise SettingsError(f"{SA_KEY_SETTING}: {path!r} is not a file")
    if mode & 0o077:
        log.warning("the service-account key %s is readable by group or others (mode %04o); restrict it to 0600 "
                    "(or 0400): it grants read access to the registry", path, stat.S_IMODE(mode))
    try:
        credentials = service_account.Credentials.from_service_account_file(path, scopes=list(SCOPES))
    except (OSError, ValueError, KeyError) as exc:
        # ValueError/KeyError: not JSON, missing fields or an unparsable private key. The
        # message names the problem, never the key material.
        raise SettingsError(f"{SA_KEY_SETTING}: {path!r} is not a usable service-account key "
                            f"({type(exc).__name__}: {_short(exc)})") from None
    log.info("Drive registry: using service account %s (scope drive.readonly)",
             getattr(credentials, "service_account_email", "?"))
    return credentials


def _application_default() -> Any:
    import google.auth
    from google.auth import exceptions

    try:
        credentials, _project = google.auth.default(scopes=list(SCOPES))
    except exceptions.DefaultCredentialsError as exc:
        raise SettingsError(f"{ADC_SETTING}=1 but no application default credentials were found "
                            f"({_short(exc)})") from None
    log.info("Drive registry: using application default credentials (%s, scope drive.readonly)",
             type(credentials).__name__)
    return credentials


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:200]
