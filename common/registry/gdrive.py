"""A registry in a Google Drive folder (``CVAT_Models`` by default), read through Drive v3.

Same layout and same answers as :class:`~common.registry.local.LocalRegistry`
(see :mod:`common.registry`); files are described by Drive's own ``size``,
``md5Checksum`` and ``sha256Checksum`` (when Drive has one), and their locator
is the Drive file id, followed by ``#acknowledgeAbuse`` for a model whose
model.json opts in with ``"drive": {"acknowledge_abuse": true}``.

Requests. Every call sends ``supportsAllDrives``; every list also sends
``includeItemsFromAllDrives``, ``trashed = false``, ``pageSize=1000`` and a
narrow ``fields`` mask that keeps ``nextPageToken``, and every page token is
followed (Drive may answer short or empty pages before the end). A listing of
N model folders costs, when nothing changed since the previous listing of this
object (or of the manifest file in ``cache_dir``)::

    1 page of model folders under the root (per 1000 folders)
    1 query per PARENTS_PER_QUERY model folders: ('a' in parents or 'b' in parents ...)
      and trashed = false, which brings model.json's metadata and the weights
      files in one pass

so 2 requests for up to 40 models, against 2N+1 for the naive walk (one
model.json query and one weights query per folder). On top of that come: one
``alt=media`` per model.json whose md5Checksum changed (bodies are remembered
per version folder id as md5 -> manifest), one ``files.get`` per shortcut to a
file (its target's size and checksums), one more batched query per level of
subfolders that ``extra_files`` (or a nested ``file_name``) reach into, and the
root lookup the first time (``name = 'CVAT_Models'``, names re-checked exactly
because Drive compares them ignoring case).

Long queries: the client turns a GET whose URL is over 2048 characters into a
POST with ``X-HTTP-Method-Override: GET`` and the query as a form body; 40
parent ids (33 characters each) get there, and Drive accepts that form.
Drive has been seen answering an or-of-parents query with nothing at all
(rclone's ``fast_list_bug_fix``, issuetracker 149522397): a batch of several
folders that comes back empty is asked again one folder at a time.

Shared drives: when the root lies in a shared drive (its ``driveId``), the
folders in that drive are listed with ``corpora=drive&driveId=<id>`` (Drive's
rule; one query never mixes drives); a folder reached through a shortcut, whose
drive is not known, with ``corpora=allDrives``. Under a root in My Drive every
listing keeps the default ``corpora=user``.

Downloads are ranged requests of ``chunk_size`` (8 MiB; never the client's 100
MiB default) on the service's own URL, sent through http.client rather than
httplib2 (which reads a whole body before returning), authorised as the service
is (its credentials' Authorization header, refreshed as needed, or the API key
already in the URL), with its timeout. Each body is written to the sink as it
arrives, ``read_size`` (1 MiB) at most at a time, so memory stays bounded and a
body cut short (truncated, reset, timed out) keeps what arrived: the next
request starts at exactly the first missing byte, after an exponential backoff
with jitter (429, 5xx and 403 rate-limit reasons are retried the same way);
``retries`` failures in a row give up. A 401 refreshes the credentials once and
asks again. downloadQuotaExceeded, cannotDownloadAbusiveFile,
fileNotDownloadable and notFound are never retried, with one exception: a
file of a model that opts in (``#acknowledgeAbuse`` locator) answered with
cannotDownloadAbusiveFile is asked again once with ``acknowledgeAbuse=true``,
and that download keeps sending it (never before: Drive refuses the parameter,
invalidAbuseAcknowledgment, on a file it has not flagged). Zero-byte files are read
without a Range header (Drive answers every range on them with 416). An HTML
page where bytes were expected (sign-in, quota or virus-scan interstitials) is
refused. Proxies from the environment (which httplib2 would honour) are not
used for downloads.

Not thread-safe: httplib2 and http.client are not; use one registry (and one service) per
thread. Nothing here ever prints; everything is logged.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import random
import re
import socket
import ssl
import urllib.request
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urljoin, urlsplit

import httplib2
from googleapiclient import discovery_cache
from googleapiclient.discovery import build_from_document
from googleapiclient.errors import HttpError

from common.atomic import atomic_write
from common.errors import ModelConfigError, ModelNotFound, RegistryError
from common.manifest import ModelManifest, load_manifest, parse_manifest
from common.registry import EntryError, Listing, ModelRecord, Registry, RemoteFile
from common.registry import MAX_SAMPLES, SAMPLES_FOLDER, is_sample_image

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_ROOT_NAME",
    "PARENTS_PER_QUERY",
    "ROOT_URL_SETTING",
    "DriveRegistry",
    "build_service",
]

log = logging.getLogger(__name__)

DEFAULT_ROOT_NAME = "CVAT_Models"
ROOT_URL_SETTING = "DRIVE_ROOT_URL"  # production: where build_service's root_url comes from
DEFAULT_TIMEOUT = 60.0  # seconds, per socket operation of httplib2

FOLDER = "application/vnd.google-apps.folder"
SHORTCUT = "application/vnd.google-apps.shortcut"
GOOGLE_NATIVE = "application/vnd.google-apps."

MODEL_JSON = "model.json"  # same layout as common.registry.local
PREVIOUS = "previous_versions"
_VERSION_DIR = re.compile(r"^v?(\d+\.\d+\.\d+)$")

PAGE_SIZE = 1000
PARENTS_PER_QUERY = 40  # parent folders or-ed into one files.list query
CHUNK_SIZE = 8 << 20  # bytes per ranged media request
READ_SIZE = 1 << 20  # bytes per read of a media body (what is buffered at once)
MAX_ERROR_BODY = 1 << 20  # bytes of an error answer's body that are read
MAX_REDIRECTS = 5
MAX_MANIFEST_BYTES = 1 << 20
MAX_SHORTCUT_HOPS = 8  # shortcut -> shortcut -> ... (Drive forbids it, but never trust it)
MAX_DEPTH = 32  # folder levels below a version folder that extra_files may reach
MAX_PAGES = 10_000  # of one query; a guard against a token that never ends
MANIFEST_CACHE_FILE = "gdrive-manifests.json"
ACKNOWLEDGE_ABUSE = "#acknowledgeAbuse"  # locator suffix: model.json's drive.acknowledge_abuse

_RATE_REASONS = frozenset({"userRateLimitExceeded", "rateLimitExceeded"})
_REASON_TEXT = {
    "downloadQuotaExceeded": "the download quota for this file has been exceeded "
                             "(Drive lifts it after about 24 hours; not retried)",
    "cannotDownloadAbusiveFile": "Drive flagged the file as malware or spam and will not serve it",
    "fileNotDownloadable": "it is not binary content (a Google Docs, Sheets or Slides file?)",
    "notFound": "it does not exist or is not shared with these credentials",
    "insufficientFilePermissions": "these credentials may not read it",
    "insufficientPermissions": "these credentials may not read it (missing drive.readonly scope?)",
    "authError": "the credentials were refused",
}
_FILE_FIELDS = "id,name,mimeType,size,md5Checksum,sha256Checksum,parents,shortcutDetails,driveId"
_TARGET_FIELDS = "id,name,mimeType,size,md5Checksum,sha256Checksum,trashed,shortcutDetails,driveId"
_FOLDER_FIELDS = "id,name,mimeType,shortcutDetails,driveId"
_UNKNOWN_DRIVE = "?"  # a folder reached through a shortcut: its drive is not known
_TRANSIENT = (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException,
              httplib2.ServerNotFoundError, httplib2.HttpLib2Error)


# --------------------------------------------------------------------- service

def build_service(root_url: str | None, credentials: Any, *, timeout: float = DEFAULT_TIMEOUT,
                  api_key: str | None = None) -> Any:
    """A Drive v3 service from the discovery document bundled with the client
    (no discovery request), its ``rootUrl`` replaced by ``root_url`` when given
    (a stand-in in tests; the ``DRIVE_ROOT_URL`` setting in production), over an
    ``httplib2.Http`` with an explicit ``timeout`` authorised by ``credentials``.

    ``credentials`` is required unless ``api_key`` is given: the client must
    never fall back to application default credentials (which probe a metadata
    server). With ``api_key`` and no credentials, every request carries
    ``key=`` over a plain ``httplib2.Http`` (items shared with anyone only)."""
    if credentials is None and not api_key:
        raise ValueError("build_service needs credentials (google.auth credentials object) or an api_key")

    doc = json.loads(discovery_cache.get_static_doc("drive", "v3"))
    if root_url:
        if not re.match(r"^https?://[^/]+", root_url):
            raise ValueError(f"{ROOT_URL_SETTING} must be an http(s) URL, got {root_url!r}")
        base = root_url.rstrip("/") + "/"
        doc["rootUrl"] = base
        doc["baseUrl"] = base + doc["servicePath"]
        doc["mtlsRootUrl"] = base
    plain = httplib2.Http(timeout=timeout)
    # Drive answers an unfinished resumable upload with 308 Resume Incomplete, which
    # httplib2 would follow as a redirect (googleapiclient's own build_http drops it too).
    plain.redirect_codes = set(plain.redirect_codes) - {308}
    if credentials is None:
        return build_from_document(doc, http=plain, developerKey=api_key)
    import google_auth_httplib2  # imported here: only the Drive backend needs it

    http_ = google_auth_httplib2.AuthorizedHttp(credentials, http=plain)
    return build_from_document(doc, http=http_, developerKey=api_key or None)


# --------------------------------------------------------------------- helpers

def _q(text: str) -> str:
    """``text`` as a single-quoted q literal: backslashes first, then quotes."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class _Item:
    """One Drive item as listed (a shortcut keeps its own id until resolved)."""

    id: str
    name: str
    mime: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    parents: tuple[str, ...] = ()
    target: str | None = None  # shortcutDetails.targetId
    target_mime: str | None = None
    trashed: bool = False
    via: str | None = None  # id of the shortcut this item was reached through
    drive_id: str | None = None  # the shared drive the item lies in (None: My Drive)

    @classmethod
    def of(cls, data: dict[str, Any]) -> _Item:
        details = data.get("shortcutDetails") or {}
        size = data.get("size")
        return cls(
            id=str(data["id"]), name=str(data.get("name", "")), mime=str(data.get("mimeType", "")),
            size=int(size) if size not in (None, "") else None,
            md5=(data.get("md5Checksum") or "").lower() or None,
            sha256=(data.get("sha256Checksum") or "").lower() or None,
            parents=tuple(data.get("parents") or ()),
            target=details.get("targetId"), target_mime=details.get("targetMimeType"),
            trashed=bool(data.get("trashed", False)),
            drive_id=data.get("driveId") or None,
        )

    @property
    def is_shortcut(self) -> bool:
        return self.mime == SHORTCUT

    @property
    def is_folder(self) -> bool:
        return self.mime == FOLDER or (self.is_shortcut and self.target_mime == FOLDER)

    @property
    def folder_id(self) -> str:
        """The id to list children of (a folder shortcut's target)."""
        return self.target if self.is_shortcut and self.target else self.id


class _Need(Exception):
    """Raised by a record builder: these folders' children / shortcut targets first."""

    def __init__(self, folders: Iterable[str] = (), targets: Iterable[str] = ()):
        super().__init__("more Drive metadata needed")
        self.folders = set(folders)
        self.targets = set(targets)


@dataclass
class _Needs:
    folders: set[str] = field(default_factory=set)
    targets: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.folders or self.targets)

    def merge(self, need: _Need) -> None:
        self.folders |= need.folders
        self.targets |= need.targets


@dataclass
class _Session:
    """What one list/resolve call learned from Drive; nothing outlives the call."""

    children: dict[str, list[_Item]] = field(default_factory=dict)
    targets: dict[str, _Item | RegistryError] = field(default_factory=dict)
    drives: dict[str, str | None] = field(default_factory=dict)  # folder id -> its shared drive (or None)

    def note(self, items: Iterable[_Item]) -> None:
        """Remember which drive listed folders lie in (a shortcut's target: unknown)."""
        for it in items:
            if not it.is_folder:
                continue
            if it.is_shortcut:
                self.drives.setdefault(it.folder_id, _UNKNOWN_DRIVE)
            else:
                self.drives[it.id] = it.drive_id

    def items(self, folder_id: str) -> list[_Item]:
        try:
            return self.children[folder_id]
        except KeyError:
            raise _Need(folders=[folder_id]) from None


@dataclass
class _ManifestEntry:
    """model.json of one version folder, remembered by the md5 of its bytes."""

    md5: str
    source: str
    owner: str = ""  # the model folder's id (the version folder may be under previous_versions/)
    text: str | None = None  # the document, when it parsed
    problems: list[tuple[str, str]] | None = None  # ModelConfigError problems otherwise
    name: str | None = None  # the document's "name" (resolve by model name), even when invalid
    parsed: ModelManifest | None = None

    def manifest(self) -> ModelManifest:
        if self.problems is not None:
            raise ModelConfigError(list(self.problems), source=self.source)
        if self.parsed is None:
            self.parsed = load_manifest(self.text or "", source=self.source)
        return self.parsed

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"md5": self.md5, "source": self.source, "owner": self.owner, "name": self.name}
        if self.problems is not None:
            data["problems"] = [list(p) for p in self.problems]
        else:
            data["text"] = self.text
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _ManifestEntry:
        problems = data.get("problems")
        return cls(md5=str(data["md5"]), source=str(data["source"]), owner=str(data.get("owner", "")),
                   text=data.get("text"),
                   problems=[(str(a), str(b)) for a, b in problems] if problems is not None else None,
                   name=data.get("name"))


def _drive_reason(status: int, content: bytes | str | None) -> tuple[str, str]:
    """(reason, message) of a Google error body; ("", "") when there is none."""
    try:
        error = json.loads(content or b"{}").get("error", {})
    except (ValueError, AttributeError):
        return "", ""
    if not isinstance(error, dict):
        return "", str(error)
    message = str(error.get("message", ""))
    errors = error.get("errors")
    if isinstance(errors, list) and errors and isinstance(errors[0], dict) and errors[0].get("reason"):
        return str(errors[0]["reason"]), str(errors[0].get("message") or message)
    return str(error.get("status", "")), message


def _retryable(status: int, reason: str) -> bool:
    return status in (408, 429) or status >= 500 or (status == 403 and reason in _RATE_REASONS)


def _path_key(rel: str) -> tuple[str, ...]:
    return tuple(rel.split("/"))  # PurePath ordering, as the local backend sorts walked files


# --------------------------------------------------------------------- registry

class DriveRegistry(Registry):
    """The registry in a Drive folder.

    ``service``: a Drive v3 service (:func:`build_service`). The root folder is
    ``root_id`` when given, else the one folder (or shortcut to one) called
    ``root_name`` that the credentials can see. ``cache_dir``: where the parsed
    model.json bodies are remembered between processes (optional; always in
    memory). ``sleep``/``rand`` are the backoff's clock and dice (tests).
    """

    def __init__(
        self,
        service: Any,
        root_name: str = DEFAULT_ROOT_NAME,
        *,
        root_id: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        chunk_size: int = CHUNK_SIZE,
        read_size: int = READ_SIZE,
        parents_per_query: int = PARENTS_PER_QUERY,
        retries: int = 6,
        backoff: float = 1.0,
        backoff_cap: float = 32.0,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ):
        if chunk_size <= 0 or read_size <= 0 or parents_per_query <= 0 or retries < 1:
            raise ValueError("chunk_size, read_size, parents_per_query and retries must be positive")
        self._service = service
        self._files = service.files()  # built once: the client rebuilds the resource on every call
        self.root_name = root_name
        self._root_id = root_id
        self._root_label = f"Drive folder {root_id}" if root_id else f"Drive folder {root_name!r}"
        self._root_checked = False
        self.chunk_size = int(chunk_size)
        self.read_size = int(read_size)
        self._root_drive: str | None = None  # the shared drive the root lies in (None: My Drive)
        # Folders seen empty by a one-folder query: an empty or-of-parents answer that
        # covers only such folders is believed, so empty folders cost one request once.
        self._empty_folders: set[str] = set()
        self.parents_per_query = int(parents_per_query)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.backoff_cap = float(backoff_cap)
        self._sleep = sleep
        self._rand = rand
        self._cache_file = Path(cache_dir) / MANIFEST_CACHE_FILE if cache_dir is not None else None
        self._manifests: dict[str, _ManifestEntry] = {}
        self._manifests_loaded = False
        self._manifests_dirty = False

    def __repr__(self) -> str:
        return f"DriveRegistry({self._root_label})"

    # ================================================================ API

    def list_models(self) -> Listing:
        root = self._root()
        folders = self._model_folders(root)
        listing = Listing(total_folders=len(folders))
        by_name: dict[str, list[_Item]] = {}
        for item in folders:
            by_name.setdefault(item.name, []).append(item)
        session = _Session()
        session.note(folders)
        jobs: dict[str, Callable[[], ModelRecord]] = {}
        for name, items in by_name.items():
            if len(items) > 1:
                continue
            item = items[0]
            jobs[name] = (lambda it=item: self._record(session, it, it.folder_id, it.name, current=True))
        results = self._settle(session, jobs)
        for name in sorted(by_name):
            if len(by_name[name]) > 1:
                message = (f"{len(by_name[name])} folders are named {name!r} (Drive allows that, the registry "
                           f"does not): rename or remove all but one")
                log.warning("registry entry %s skipped: %s", name, message)
                listing.errors.append(EntryError(name, message))
                continue
            result = results[name]
            if isinstance(result, ModelRecord):
                listing.models.append(result)
            else:
                log.warning("registry entry %s skipped: %s", name, result)
                listing.errors.append(EntryError(name, str(result)))
        self._forget_except({it.folder_id for it in folders})
        self._save_manifests()
        return listing

    def resolve(self, name: str, version: str | None = None) -> ModelRecord:
        session = _Session()
        folder = self._find(session, name)
        if version is None:
            record = self._settle_one(session, lambda: self._record(session, folder, folder.folder_id, folder.name,
                                                                    current=True))
            self._save_manifests()
            return record
        current = self._settle_one(session, lambda: self._version_manifest(
            session, folder.folder_id, folder.folder_id, folder.name))
        wanted = version.lstrip("v")
        if wanted == current.version:
            record = self._settle_one(session, lambda: self._record(session, folder, folder.folder_id, folder.name,
                                                                    current=True))
            self._save_manifests()
            return record
        for vdir in self._previous_dirs(session, folder):
            if _VERSION_DIR.match(vdir.name).group(1) == wanted:
                record = self._settle_one(session, lambda v=vdir: self._record(
                    session, folder, v.folder_id, v.name, current=False, fallback=current))
                self._save_manifests()
                return record
        raise ModelNotFound(f"model {name!r} has no version {wanted}; versions: {', '.join(self.versions(name))}")

    def versions(self, name: str) -> list[str]:
        session = _Session()
        folder = self._find(session, name)
        current = self._settle_one(session, lambda: self._version_manifest(
            session, folder.folder_id, folder.folder_id, folder.name))
        older = {_VERSION_DIR.match(v.name).group(1) for v in self._previous_dirs(session, folder)}
        self._save_manifests()
        ordered = sorted(older, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
        return [current.version] + [v for v in ordered if v != current.version]

    def fetch(self, file: RemoteFile, sink: BinaryIO) -> None:
        file_id, mark, option = file.locator.partition("#")
        if mark and mark + option != ACKNOWLEDGE_ABUSE:
            raise RegistryError(f"{file.path}: {file.locator!r} is not a Drive file locator")
        self._download(file_id, file.size, file.path, sink, acknowledge_abuse=bool(mark))

    def samples(self, record: ModelRecord) -> list[RemoteFile]:
        """The model folder's ``samples/`` pictures: the folder found by name (one
        query, plus the root lookup once per registry object), its children and those
        of samples/ (one query each), and one files.get per shortcut among the pictures."""
        session = _Session()
        folder = self._find(session, record.folder)

        def find() -> list[RemoteFile]:
            subs = [it for it in session.items(folder.folder_id) if it.name == SAMPLES_FOLDER and it.is_folder]
            if not subs:
                return []
            if len(subs) > 1:
                raise RegistryError(f"{len(subs)} folders are named {SAMPLES_FOLDER!r}; keep one")
            pictures = sorted((it for it in session.items(subs[0].folder_id)
                               if not it.is_folder and is_sample_image(it.name)), key=lambda it: (it.name, it.id))
            out: list[RemoteFile] = []
            needs = _Needs()
            for it in pictures[:MAX_SAMPLES]:
                rel = f"{SAMPLES_FOLDER}/{it.name}"
                try:
                    out.append(self._remote(self._resolve_item(session, it, rel), rel))
                except _Need as need:
                    needs.merge(need)
                except RegistryError as exc:  # a Google Docs file, a dangling shortcut: not a sample
                    log.warning("%s: sample %s left out: %s", record.folder, it.name, exc)
            if needs:
                raise _Need(needs.folders, needs.targets)
            return out

        return self._settle_one(session, find)

    # ================================================================ Drive calls

    def _execute(self, request: Any, what: str) -> dict[str, Any]:
        """One metadata call, retried (backoff) on 429, 5xx, 403 rate limits and transport errors."""
        failures = 0
        while True:
            try:
                return request.execute(num_retries=0)
            except HttpError as exc:
                status = exc.resp.status if exc.resp is not None else 0
                reason, message = _drive_reason(status, exc.content)
                if _retryable(status, reason) and failures + 1 < self.retries:
                    failures += 1
                    self._backoff(failures, what, f"{status} {reason}".strip(), exc.resp)
                    continue
                raise self._error(status, reason, message, what) from None
            except _TRANSIENT as exc:
                if failures + 1 < self.retries:
                    failures += 1
                    _reset_connections(request.http)
                    self._backoff(failures, what, f"{type(exc).__name__}: {exc}", None)
                    continue
                raise RegistryError(f"{what}: Drive unreachable after {failures + 1} attempts "
                                    f"({type(exc).__name__}: {exc})") from None
            except Exception as exc:
                if self._retry_auth(exc, failures, what):
                    failures += 1
                    continue
                raise

    def _retry_auth(self, exc: Exception, failures: int, what: str) -> bool:
        """An exception from the credentials layer: True (after backing off) to
        try again, when the token endpoint was unreachable and attempts remain,
        as transient as Drive itself; RegistryError when that is final or the
        credentials were refused; False when it is no auth problem at all."""
        if _is_auth_transport_error(exc):
            if failures + 1 < self.retries:
                self._backoff(failures + 1, what, f"{type(exc).__name__}: {exc}", None)
                return True
            raise RegistryError(f"{what}: the credentials' token endpoint is unreachable after "
                                f"{failures + 1} attempts ({type(exc).__name__}: {exc})") from None
        if _is_auth_error(exc):
            raise RegistryError(f"{what}: Drive credentials were refused or could not be refreshed "
                                f"({type(exc).__name__}: {exc})") from None
        return False

    def _backoff(self, failures: int, what: str, why: str, resp: Any) -> None:
        delay = min(self.backoff_cap, self.backoff * (2 ** (failures - 1)))
        delay = delay / 2 + self._rand() * delay / 2  # jitter, keeping half the step
        retry_after = resp.get("retry-after") if resp is not None else None
        if retry_after and str(retry_after).strip().isdigit():
            delay = max(delay, min(self.backoff_cap, float(retry_after)))
        log.info("%s: %s; retry %d of %d in %.2f s", what, why, failures, self.retries - 1, delay)
        self._sleep(delay)

    def _error(self, status: int, reason: str, message: str, what: str, hint: str = "") -> RegistryError:
        explained = _REASON_TEXT.get(reason, message or "no explanation given")
        text = f"{what}: Drive answered {status} {reason or 'error'}: {explained}{hint}"
        error = ModelNotFound(text) if status == 404 or reason == "notFound" else RegistryError(text)
        error.drive_status, error.drive_reason = status, reason  # type: ignore[attr-defined]
        return error

    def _list(self, q: str, item_fields: str, what: str, **extra: Any) -> list[dict[str, Any]]:
        """Every item a query matches, following every nextPageToken."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        seen: set[str] = set()
        restarted = False
        pages = 0
        while True:
            params = dict(q=q, pageSize=PAGE_SIZE, fields=f"nextPageToken,incompleteSearch,files({item_fields})",
                          supportsAllDrives=True, includeItemsFromAllDrives=True, **extra)
            if token:
                params["pageToken"] = token
            try:
                page = self._execute(self._files.list(**params), what)
            except RegistryError as exc:
                if token and getattr(exc, "drive_status", None) == 400:
                    if restarted:
                        raise RegistryError(f"{what}: Drive refused a page token twice in one listing "
                                            f"({exc}); try again later") from None
                    # "If a token is rejected, the client should restart from page one."
                    log.warning("%s: Drive refused a page token; listing again from the first page", what)
                    restarted, token, out, seen = True, None, [], set()
                    continue
                raise
            pages += 1
            if page.get("incompleteSearch"):
                # A partial answer would read as "No model.json found" or a vanished model.
                raise RegistryError(f"{what}: Drive answered that its search was incomplete; "
                                    "try again later")
            out.extend(f for f in page.get("files") or () if isinstance(f, dict) and f.get("id"))
            token = page.get("nextPageToken")
            if not token:
                return out
            if token in seen or pages >= MAX_PAGES:
                raise RegistryError(f"{what}: Drive keeps answering with page tokens ({pages} pages)")
            seen.add(token)

    def _get(self, file_id: str, fields: str, what: str) -> _Item:
        request = self._files.get(fileId=file_id, fields=fields, supportsAllDrives=True)
        return _Item.of(self._execute(request, what))

    # ================================================================ root and folders

    def _root(self) -> str:
        if self._root_id is not None:
            if not self._root_checked:
                item = self._follow(self._get(self._root_id, _TARGET_FIELDS, f"registry {self._root_label}"))
                if item.trashed:
                    raise RegistryError(f"registry {self._root_label} is in the trash")
                if item.mime != FOLDER:
                    raise RegistryError(f"registry {self._root_label} is not a folder ({item.mime})")
                self._root_id, self._root_checked, self._root_drive = item.id, True, item.drive_id
                self._load_manifests()
            return self._root_id
        what = f"finding the registry folder {self.root_name!r}"
        found = self._list(f"name = {_q(self.root_name)} and (mimeType = '{FOLDER}' or mimeType = '{SHORTCUT}') "
                           f"and trashed = false", _FOLDER_FIELDS, what, corpora="allDrives")
        chosen: dict[str, _Item] = {}
        for data in found:
            item = _Item.of(data)
            if item.name != self.root_name or not item.is_folder:  # name = ignores case
                continue
            if item.folder_id not in chosen or chosen[item.folder_id].is_shortcut:
                chosen[item.folder_id] = item
        ids = list(chosen)
        if not ids:
            raise RegistryError(f"no folder named {self.root_name!r} is visible to these Drive credentials "
                                f"(share it with them, or give the folder id)")
        if len(ids) > 1:
            raise RegistryError(f"{len(ids)} folders named {self.root_name!r} are visible to these Drive credentials "
                                f"(ids {', '.join(ids)}): give the registry folder by id")
        item = chosen[ids[0]]
        if item.is_shortcut:  # a shortcut lies in its own drive: ask where the folder itself is
            item = self._get(item.folder_id, "id,mimeType,driveId", f"registry {self._root_label}")
        self._root_id, self._root_checked, self._root_drive = ids[0], True, item.drive_id
        self._root_label = f"Drive folder {self.root_name!r}"
        log.info("registry %s is Drive folder %s%s", self.root_name, self._root_id,
                 f" in shared drive {self._root_drive}" if self._root_drive else "")
        self._load_manifests()
        return self._root_id

    def _model_folders(self, root: str, name: str | None = None) -> list[_Item]:
        """The model folders (and shortcuts to folders) in the root, hidden ones left out."""
        q = f"{_q(root)} in parents and trashed = false and (mimeType = '{FOLDER}' or mimeType = '{SHORTCUT}')"
        if name is not None:
            q += f" and name = {_q(name)}"
        listed = [_Item.of(d) for d in self._list(q, _FOLDER_FIELDS, f"listing {self._root_label}",
                                                   **self._corpus(self._root_drive))]
        folders = sorted((it for it in listed if it.is_folder and not it.name.startswith(".")
                          and (name is None or it.name == name)), key=lambda it: (it.name, it.id))
        if not folders and name is None:
            # Children of a trashed folder are trashed: an empty answer may mean the root went away.
            item = self._get(root, "id,mimeType,trashed", f"registry {self._root_label}")
            if item.trashed:
                raise RegistryError(f"registry {self._root_label} is in the trash")
        return folders

    def _find(self, session: _Session, name: str) -> _Item:
        root = self._root()
        direct = self._model_folders(root, name)
        if len(direct) > 1:
            raise RegistryError(f"{len(direct)} folders are named {name!r} in {self._root_label}: "
                                f"rename or remove all but one")
        session.note(direct)
        if direct:
            folder = direct[0]
            self._load(session, _Needs(folders={folder.folder_id}))
            if any(it.name == MODEL_JSON and not it.is_folder for it in session.children[folder.folder_id]):
                return folder
        # By model.json "name": every folder's model.json (cached by md5).
        folders = [f for f in self._model_folders(root)]
        session.note(folders)
        counts: dict[str, int] = {}
        for f in folders:
            counts[f.name] = counts.get(f.name, 0) + 1
        jobs = {f.name: (lambda f=f: self._document_name(session, f)) for f in folders if counts[f.name] == 1}
        names = self._settle(session, jobs)
        for f in folders:
            if counts[f.name] == 1 and names.get(f.name) == name:
                return f
        raise ModelNotFound(f"no model {name!r} in {self._root_label}")

    def _document_name(self, session: _Session, folder: _Item) -> str | None:
        item = self._model_json(session, folder.folder_id, session.items(folder.folder_id))
        if item is None:
            return None
        entry = self._manifest_entry(folder.folder_id, folder.folder_id, folder.name, item)
        return entry.name

    def _previous_dirs(self, session: _Session, folder: _Item) -> list[_Item]:
        def find() -> list[_Item]:
            prev = [it for it in session.items(folder.folder_id) if it.name == PREVIOUS and it.is_folder]
            missing = [p.folder_id for p in prev if p.folder_id not in session.children]
            if missing:
                raise _Need(folders=missing)
            dirs = [it for p in prev for it in session.children[p.folder_id]
                    if it.is_folder and _VERSION_DIR.match(it.name)]
            return sorted(dirs, key=lambda it: (it.name, it.id))

        return self._settle_one(session, find)

    # ================================================================ settling

    def _settle(self, session: _Session, jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """Run every job; each may ask for more metadata (_Need), which is fetched for
        all of them at once, batched, before the next round. A job's result is its
        value, or the RegistryError/ModelConfigError it raised."""
        results: dict[str, Any] = {}
        pending = dict(jobs)
        for _ in range(MAX_DEPTH + MAX_SHORTCUT_HOPS + 4):
            needs = _Needs()
            for key, job in list(pending.items()):
                try:
                    results[key] = job()
                except _Need as need:
                    needs.merge(need)
                    continue
                except (ModelConfigError, RegistryError) as exc:
                    results[key] = exc
                except Exception as exc:  # one broken folder must never hide the others
                    log.exception("registry entry %s unreadable", key)
                    results[key] = RegistryError(f"unreadable: {type(exc).__name__}: {exc}")
                del pending[key]
            if not pending:
                return results
            self._load(session, needs)
        for key in pending:
            results[key] = RegistryError(f"folders nested more than {MAX_DEPTH} levels deep")
        return results

    def _settle_one(self, session: _Session, job: Callable[[], Any]) -> Any:
        result = self._settle(session, {"": job})[""]
        if isinstance(result, Exception):
            raise result
        return result

    def _load(self, session: _Session, needs: _Needs) -> None:
        groups: dict[str | None, list[str]] = {}  # one query never mixes drives (corpora, driveId)
        for f in sorted(needs.folders):
            if f not in session.children:
                drive = self._root_drive if f == self._root_id else session.drives.get(f, _UNKNOWN_DRIVE)
                groups.setdefault(drive, []).append(f)
        for drive, folders in groups.items():
            for start in range(0, len(folders), self.parents_per_query):
                batch = folders[start:start + self.parents_per_query]
                children = self._children(batch, drive)
                session.children.update(children)
                for items in children.values():
                    session.note(items)
        for target in sorted(needs.targets):
            if target not in session.targets:
                session.targets[target] = found = self._target(target)
                if isinstance(found, _Item):
                    session.note([found])

    def _corpus(self, drive: str | None) -> dict[str, str]:
        """files.list parameters for folders in ``drive``: a shared drive is listed with
        corpora=drive and its driveId (Drive's rule); My Drive with the default corpora=user;
        a folder of unknown drive (a shortcut's target) under a shared-drive root with allDrives."""
        if drive == _UNKNOWN_DRIVE:
            return {"corpora": "allDrives"} if self._root_drive else {}
        if drive:
            return {"corpora": "drive", "driveId": drive}
        return {}

    def _children(self, batch: list[str], drive: str | None = None) -> dict[str, list[_Item]]:
        what = f"listing {len(batch)} folder{'s' if len(batch) > 1 else ''} of {self._root_label}"
        terms = " or ".join(f"{_q(f)} in parents" for f in batch)
        q = f"({terms}) and trashed = false" if len(batch) > 1 else f"{terms} and trashed = false"
        items = [_Item.of(d) for d in self._list(q, _FILE_FIELDS, what, **self._corpus(drive))]
        grouped: dict[str, list[_Item]] = {f: [] for f in batch}
        if len(batch) == 1:
            grouped[batch[0]] = items
            if items:
                self._empty_folders.discard(batch[0])
            else:
                self._empty_folders.add(batch[0])
            return grouped
        if not items and self._empty_folders.issuperset(batch):
            return grouped
        if not items or any(not it.parents for it in items):
            # Drive sometimes answers an or-of-parents query with nothing (issuetracker
            # 149522397), and items without parents cannot be sorted out: ask one by one.
            log.info("%s: %s; asking folder by folder", what,
                     "empty answer" if not items else "items without parents")
            for f in batch:
                if not items and f in self._empty_folders:
                    continue  # empty last time, and an empty answer again: believe it
                grouped.update(self._children([f], drive))
            return grouped
        for it in items:
            for parent in it.parents:
                if parent in grouped:
                    grouped[parent].append(it)
        self._empty_folders.difference_update(f for f, children in grouped.items() if children)
        return grouped

    def _target(self, target_id: str) -> _Item | RegistryError:
        try:
            item = self._get(target_id, _TARGET_FIELDS, f"shortcut target {target_id}")
        except RegistryError as exc:
            if isinstance(exc, ModelNotFound):
                return RegistryError(f"a shortcut points to {target_id}, which does not exist or is not "
                                     f"shared with these credentials")
            return exc
        if item.trashed:
            return RegistryError(f"a shortcut points to {item.name!r} ({target_id}), which is in the trash")
        return item

    def _follow(self, item: _Item) -> _Item:
        """A shortcut followed to its target now (root only; records batch theirs)."""
        seen = {item.id}
        hops = 0
        while item.is_shortcut:
            hops += 1
            if not item.target or item.target in seen or hops > MAX_SHORTCUT_HOPS:
                raise RegistryError(f"shortcut {item.name!r} loops or chains too deep")
            seen.add(item.target)
            item = self._get(item.target, _TARGET_FIELDS, f"shortcut target {item.target}")
        return item

    # ================================================================ records

    def _resolve_item(self, session: _Session, item: _Item, rel: str) -> _Item:
        """A listed item with shortcuts followed (name kept). Folder shortcuts are
        taken at their word (targetMimeType); file shortcuts need their target."""
        if not item.is_shortcut or item.is_folder:
            return item
        seen = {item.id}
        current = item
        for _ in range(MAX_SHORTCUT_HOPS):
            if not current.target:
                raise RegistryError(f"Model file {rel} is a shortcut without a target")
            if current.target in seen:
                raise RegistryError(f"Model file {rel} is a shortcut that loops back on itself")
            seen.add(current.target)
            target = session.targets.get(current.target)
            if target is None:
                raise _Need(targets=[current.target])
            if isinstance(target, RegistryError):
                raise RegistryError(f"Model file {rel}: {target}")
            if not target.is_shortcut:
                return _Item(id=target.id, name=item.name, mime=target.mime, size=target.size, md5=target.md5,
                             sha256=target.sha256, via=item.id)
            current = target
        raise RegistryError(f"Model file {rel} is a chain of more than {MAX_SHORTCUT_HOPS} shortcuts")

    def _model_json(self, session: _Session, vdir_id: str, items: list[_Item]) -> _Item | None:
        found = [it for it in items if it.name == MODEL_JSON and not it.is_folder]
        if len(found) > 1:
            raise RegistryError(f"{len(found)} files are named model.json; keep one")
        if not found:
            return None
        item = self._resolve_item(session, found[0], MODEL_JSON)
        if item.mime.startswith(GOOGLE_NATIVE):
            raise RegistryError(f"model.json is a Google Docs file ({item.mime}), not a plain file: "
                                f"upload it as a file")
        return item

    def _version_manifest(self, session: _Session, owner: str, vdir_id: str, vdir_name: str,
                          fallback: ModelManifest | None = None) -> ModelManifest:
        items = session.items(vdir_id)
        item = self._model_json(session, vdir_id, items)
        if item is None:
            if fallback is None:
                raise RegistryError("No model.json found")
            # An older version without its own model.json inherits the current one.
            data = dict(fallback.raw)
            data["version"] = _VERSION_DIR.match(vdir_name).group(1)
            return parse_manifest(data, source=f"{vdir_name}/{MODEL_JSON}")
        return self._manifest_entry(owner, vdir_id, vdir_name, item).manifest()

    def _manifest_entry(self, owner: str, vdir_id: str, vdir_name: str, item: _Item) -> _ManifestEntry:
        source = f"{vdir_name}/{MODEL_JSON}"
        entry = self._manifests.get(vdir_id)
        if entry is not None and entry.md5 == item.md5 and entry.source == source:
            return entry
        if item.size is not None and item.size > MAX_MANIFEST_BYTES:
            raise RegistryError(f"model.json is {item.size} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
        buf = io.BytesIO()
        self._download(item.id, item.size if item.size is not None else -1, source, buf)
        data = buf.getvalue()
        if len(data) > MAX_MANIFEST_BYTES:
            raise RegistryError(f"model.json is {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} allowed")
        entry = _ManifestEntry(md5=hashlib.md5(data, usedforsecurity=False).hexdigest(), source=source, owner=owner)
        try:
            doc = json.loads(data.decode("utf-8-sig"))
            if isinstance(doc, dict) and isinstance(doc.get("name"), str):
                entry.name = doc["name"]
        except (ValueError, RecursionError):  # not JSON: load_manifest below says what is wrong
            pass
        try:
            entry.parsed = load_manifest(data, source=source)
            entry.text = data.decode("utf-8-sig")
        except ModelConfigError as exc:
            entry.problems = list(exc.problems)
        if item.md5 and entry.md5 != item.md5:
            log.info("%s changed on Drive while listing (md5 %s, now %s)", source, item.md5, entry.md5)
        self._manifests[vdir_id] = entry
        self._manifests_dirty = True
        return entry

    def _record(self, session: _Session, folder: _Item, vdir_id: str, vdir_name: str, *, current: bool,
                fallback: ModelManifest | None = None) -> ModelRecord:
        if vdir_id == self._root_id:
            raise RegistryError("is a shortcut to the registry folder itself")
        items = session.items(vdir_id)
        if not items and folder.is_shortcut and vdir_id == folder.folder_id:
            # An empty shortcut target may be a dangling shortcut: say so rather than "no model.json".
            target = session.targets.get(vdir_id)
            if target is None:
                raise _Need(targets=[vdir_id])
            if isinstance(target, RegistryError):
                raise target
        manifest = self._version_manifest(session, folder.folder_id, vdir_id, vdir_name, fallback)
        files: list[RemoteFile] = []
        needs = _Needs()
        wanted = [(manifest.file_name, False)] + [(extra, True) for extra in manifest.extra_files]
        for rel, may_be_folder in wanted:
            try:
                files.extend(self._describe(session, vdir_id, rel, may_be_folder))
            except _Need as need:
                needs.merge(need)
            except RegistryError:
                if needs:  # an earlier file is still unknown: report errors in order, later
                    continue
                raise
        if needs:
            raise _Need(needs.folders, needs.targets)
        if manifest.drive.acknowledge_abuse:  # the opt-in travels with each file, in its locator
            files = [replace(f, locator=f.locator + ACKNOWLEDGE_ABUSE) for f in files]
        return ModelRecord(folder=folder.name, manifest=manifest, files=tuple(files), current=current)

    def _describe(self, session: _Session, vdir_id: str, rel: str, may_be_folder: bool) -> list[RemoteFile]:
        parts = rel.split("/")
        folder_id = vdir_id
        ancestors = {vdir_id}
        if self._root_id:
            ancestors.add(self._root_id)
        for i, part in enumerate(parts):
            matches = [it for it in session.items(folder_id) if it.name == part]
            last = i == len(parts) - 1
            if not last:
                matches = [it for it in matches if it.is_folder]
            if not matches:
                raise RegistryError(f"Model file {rel} not found")
            if len(matches) > 1:
                raise RegistryError(f"Model file {rel} is ambiguous: {len(matches)} items named {part!r} "
                                    f"in one Drive folder")
            item = matches[0]
            if not last:
                if item.folder_id in ancestors:
                    raise RegistryError(f"Model file {rel} goes through a shortcut that loops back")
                ancestors.add(item.folder_id)
                folder_id = item.folder_id
                continue
            if item.is_folder:
                if not may_be_folder:
                    raise RegistryError(f"Model file {rel} is a folder, not a file")
                if item.folder_id in ancestors:
                    raise RegistryError(f"Model file {rel} is a shortcut that loops back to a folder above it")
                return self._walk(session, item.folder_id, rel, ancestors | {item.folder_id})
            return [self._remote(self._resolve_item(session, item, rel), rel)]
        raise RegistryError(f"Model file {rel} not found")  # empty path; the manifest refuses those

    def _walk(self, session: _Session, top: str, top_rel: str, ancestors: set[str]) -> list[RemoteFile]:
        """Every file under a folder, paths relative to the version folder, sorted as
        the local backend sorts them; all unknown subfolders asked for at once."""
        found: dict[str, list[_Item]] = {}
        needs = _Needs()
        stack = [(top, top_rel, frozenset(ancestors), 0)]
        while stack:
            folder_id, prefix, above, depth = stack.pop()
            if depth > MAX_DEPTH:
                raise RegistryError(f"Model file {top_rel} holds folders more than {MAX_DEPTH} levels deep")
            try:
                items = session.items(folder_id)
            except _Need as need:
                needs.merge(need)
                continue
            for it in items:
                rel = f"{prefix}/{it.name}"
                if it.is_folder:
                    if it.folder_id in above:
                        raise RegistryError(f"Model file {rel} is a shortcut that loops back to a folder above it")
                    stack.append((it.folder_id, rel, above | {it.folder_id}, depth + 1))
                else:
                    found.setdefault(rel, []).append(it)
        files: list[RemoteFile] = []
        for rel in sorted(found, key=_path_key):
            if len(found[rel]) > 1:
                raise RegistryError(f"Model file {rel} is ambiguous: {len(found[rel])} files of that name")
            try:
                files.append(self._remote(self._resolve_item(session, found[rel][0], rel), rel))
            except _Need as need:
                needs.merge(need)
        if needs:
            raise _Need(needs.folders, needs.targets)
        return files

    @staticmethod
    def _remote(item: _Item, rel: str) -> RemoteFile:
        if item.is_folder:
            raise RegistryError(f"Model file {rel} is a folder, not a file")
        if item.mime.startswith(GOOGLE_NATIVE):
            raise RegistryError(f"Model file {rel} is a Google Docs file ({item.mime}), which Drive cannot "
                                f"download as bytes: upload the file itself")
        if item.size is None:
            raise RegistryError(f"Model file {rel}: Drive gives no size for it")
        if not item.md5 and not item.sha256:
            raise RegistryError(f"Model file {rel}: Drive gives no checksum for it")
        return RemoteFile(path=rel, size=item.size, locator=item.id, md5=item.md5, sha256=item.sha256)

    # ================================================================ downloads

    def _download(self, file_id: str, size: int, label: str, sink: BinaryIO, *,
                  acknowledge_abuse: bool | None = None) -> None:
        """Write the bytes of Drive file ``file_id`` into ``sink``, ranged, streamed and resumed.
        ``size`` < 0: unknown (read it from the first answer). ``acknowledge_abuse``: the
        model opted in to downloading a file Drive flagged (True), did not (False), or the
        file is no model file (None: model.json, which no option covers)."""
        what = f"downloading {label} (Drive file {file_id})"
        files = self._files
        request = files.get_media(fileId=file_id, supportsAllDrives=True)
        base = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "accept-encoding")}
        ack_uri = (files.get_media(fileId=file_id, supportsAllDrives=True, acknowledgeAbuse=True).uri
                   if acknowledge_abuse else None)
        media = _MediaHttp(request.http)
        try:
            self._stream(media, request.uri, base, size, what, sink, ack_uri=ack_uri,
                         abuse_hint=acknowledge_abuse is False)
        finally:
            media.close()

    def _stream(self, media: _MediaHttp, uri: str, base: dict[str, str], size: int, what: str,
                sink: BinaryIO, *, ack_uri: str | None = None, abuse_hint: bool = False) -> None:
        """``ack_uri``: the same request with acknowledgeAbuse=true, used from the first
        cannotDownloadAbusiveFile on (the model opted in); ``abuse_hint``: that refusal
        tells how to opt in."""
        pos, failures, total, refreshed = 0, 0, size, False
        acking, ack_tried = False, False
        while True:
            headers = dict(base, **{"accept-encoding": "identity"})
            ranged = total != 0  # every range on a zero-byte file is a 416: ask for it plainly
            if ranged:
                end = pos + self.chunk_size - 1
                if total > 0:
                    end = min(end, total - 1)
                headers["range"] = f"bytes={pos}-{end}"
            try:
                resp = media.get(ack_uri if acking else uri, headers)
                status = resp.status
                rhead = {k.lower(): v for k, v in resp.getheaders()}
                if status == 206:
                    start, last, got_total = _content_range_full(rhead.get("content-range", ""))
                    if start is None or last is None or got_total is None:
                        raise RegistryError(f"{what}: Drive sent part of the file without a usable Content-Range "
                                            f"({rhead.get('content-range')!r})")
                    if total >= 0 and got_total != total:
                        raise RegistryError(f"{what}: the file changed on Drive (now {got_total} bytes, "
                                            f"listed as {total}); list the registry again")
                    total = got_total
                    want = min(last, total - 1) - start + 1
                    if start != pos or want <= 0:
                        media.close()  # the body is not read: the connection cannot be reused
                        failures += 1
                        if failures >= self.retries:
                            raise RegistryError(f"{what}: Drive keeps sending the wrong bytes at byte {pos} "
                                                f"(from {start}, {max(want, 0)} bytes)")
                        self._backoff(failures, what, f"answer from byte {start} ({max(want, 0)} bytes), "
                                                      f"not {pos}", rhead)
                        continue
                    for n in self._pump(resp, want, 0, pos == 0, rhead, what, sink):
                        pos += n
                    if not resp.isclosed():  # more body than the range said: never reuse that connection
                        media.close()
                    failures, refreshed = 0, False
                    if pos >= total:
                        return
                    continue
                if status == 200:  # the whole file: no Range asked, or Drive ignored it
                    if ranged:
                        log.info("%s: Drive ignored the Range header and sent the whole file", what)
                    length = rhead.get("content-length", "")
                    body = int(length) if length.strip().isdigit() else None
                    if body is not None and total >= 0 and body != total:
                        head = resp.read(512)
                        media.close()
                        _refuse_html(rhead, head, what)  # say it is a page when it is one
                        raise RegistryError(f"{what}: Drive sent {body} bytes where the file is listed with "
                                            f"{total} (a changed file, or a page instead of it); "
                                            "list the registry again")
                    if body is not None:
                        total = body  # a retry after a broken body asks for the rest by range
                    want = None if body is None else max(body - pos, 0)
                    # A whole answer is checked for an HTML page whatever part of it is kept.
                    for n in self._pump(resp, want, pos, True, rhead, what, sink):
                        pos += n
                    return
                content = resp.read(MAX_ERROR_BODY)
                if not resp.isclosed():
                    media.close()
            except _TRANSIENT as exc:  # truncated body, reset, timeout: ask again from the first missing byte
                media.close()
                failures += 1
                if failures >= self.retries:
                    raise RegistryError(f"{what}: failed {failures} times in a row at byte {pos} "
                                        f"({type(exc).__name__}: {exc})") from None
                self._backoff(failures, what, f"{type(exc).__name__} at byte {pos}", None)
                continue
            except RegistryError:
                raise
            except Exception as exc:
                media.close()
                if self._retry_auth(exc, failures, what):
                    failures += 1
                    continue
                raise
            if status == 416:
                _, got_total = _content_range(rhead.get("content-range", ""))
                if got_total == 0 or (got_total is None and total == 0):
                    return  # a zero-byte file
                now = f"the file is {got_total} bytes now" if got_total is not None else "no size given"
                raise RegistryError(f"{what}: Drive refused the range at byte {pos} ({now}, listed as {size} "
                                    "bytes); list the registry again")
            if status == 401 and media.can_refresh and not refreshed:
                log.info("%s: Drive answered 401; refreshing the credentials once", what)
                try:
                    media.refresh()
                except Exception as exc:
                    if self._retry_auth(exc, failures, what):
                        failures += 1
                        continue
                    raise
                refreshed = True
                continue
            reason, message = _drive_reason(status, content)
            if _retryable(status, reason) and failures + 1 < self.retries:
                failures += 1
                self._backoff(failures, what, f"{status} {reason}".strip(), rhead)
                continue
            if status == 403 and reason == "cannotDownloadAbusiveFile" and ack_uri and not ack_tried:
                log.warning("%s: Drive flagged the file as malware or spam; asking again with acknowledgeAbuse=true "
                            "(model.json opts in with drive.acknowledge_abuse)", what)
                acking = ack_tried = True
                continue
            if status == 403 and reason == "invalidAbuseAcknowledgment" and acking:
                log.info("%s: Drive no longer flags the file; asking without acknowledgeAbuse", what)
                acking = False  # ack_tried stays set: never switched back again
                continue
            hint = ""
            if reason == "cannotDownloadAbusiveFile" and acking:
                hint = (f"; refused even with acknowledgeAbuse=true (model.json's drive.acknowledge_abuse): "
                        f"Drive accepts that only from the file's owner or an organizer of its shared drive "
                        f"({message or 'no explanation given'})")
            elif reason == "cannotDownloadAbusiveFile" and abuse_hint:
                hint = ('; if you trust the file, add "drive": {"acknowledge_abuse": true} to the model\'s '
                        'model.json (docs/model-json.md)')
            raise self._error(status, reason, message, what, hint)

    def _pump(self, resp: http.client.HTTPResponse, want: int | None, skip: int, check_html: bool,
              headers: dict[str, str], what: str, sink: BinaryIO) -> Iterable[int]:
        """Copy a media body into ``sink`` as it arrives, ``read_size`` bytes at most at a
        time: the first ``skip`` bytes dropped, then ``want`` bytes (None: to the end of
        the body). Yields each write's size, so the caller's position is exact when the
        body breaks off (``_Truncated``, or the transport's own error)."""
        got = 0
        while skip > 0:
            dropped = resp.read(min(self.read_size, skip))
            if not dropped:
                raise _Truncated(f"body ended {skip} bytes before the first byte wanted")
            if check_html:  # the body's own first bytes, even when they are not kept
                _refuse_html(headers, dropped, what)
                check_html = False
            skip -= len(dropped)
        while want is None or got < want:
            piece = resp.read(self.read_size if want is None else min(self.read_size, want - got))
            if not piece:
                if want is None:
                    return
                raise _Truncated(f"body ended after {got} of {want} bytes")
            if check_html and got == 0:
                _refuse_html(headers, piece, what)
            sink.write(piece)
            got += len(piece)
            yield len(piece)

    # ================================================================ manifest memory

    def _load_manifests(self) -> None:
        if self._manifests_loaded or self._cache_file is None:
            self._manifests_loaded = True
            return
        self._manifests_loaded = True
        try:
            data = json.loads(self._cache_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self._cache_file, exc)
            return
        if not isinstance(data, dict) or data.get("root") != self._root_id or data.get("format") != 1:
            return
        for vdir_id, entry in (data.get("entries") or {}).items():
            try:
                self._manifests.setdefault(vdir_id, _ManifestEntry.from_json(entry))
            except (KeyError, TypeError, ValueError):
                continue

    def _forget_except(self, folder_ids: set[str]) -> None:
        """Drop what is remembered of model folders no longer in the root."""
        for key in [k for k, e in self._manifests.items() if e.owner not in folder_ids]:
            del self._manifests[key]
            self._manifests_dirty = True

    def _save_manifests(self) -> None:
        if self._cache_file is None or not self._manifests_dirty:
            return
        data = {"format": 1, "root": self._root_id,
                "entries": {k: e.to_json() for k, e in sorted(self._manifests.items())}}
        try:
            self._cache_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self._cache_file, "w", encoding="utf-8") as out:
                json.dump(data, out)
            self._manifests_dirty = False
        except OSError as exc:
            log.warning("cannot remember model.json bodies in %s: %s", self._cache_file, exc)


# --------------------------------------------------------------------- download helpers

def _content_range_full(value: str) -> tuple[int | None, int | None, int | None]:
    """``bytes a-b/N`` -> (a, b, N); ``bytes */N`` -> (None, None, N)."""
    m = re.match(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", value or "")
    if not m:
        return None, None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    last = int(m.group(2)) if m.group(2) is not None else None
    total = int(m.group(3)) if m.group(3) != "*" else None
    return start, last, total


def _content_range(value: str) -> tuple[int | None, int | None]:
    """``bytes a-b/N`` -> (a, N); ``bytes */N`` -> (None, N)."""
    start, _, total = _content_range_full(value)
    return start, total


class _Truncated(http.client.HTTPException):
    """A media body that ended before its announced length."""


class _MediaHttp:
    """Streamed GETs for ``alt=media``: http.client (whose responses can be read piece by
    piece, where httplib2 reads a whole body first), one kept-alive connection per host,
    authorised as the service's own http is (its credentials' Authorization header,
    refreshed as needed; an API key is already in the URL as ``key=``), with its timeout
    and CA bundle. Redirects are followed (Authorization kept only on the same host)."""

    def __init__(self, http_: Any):
        creds = getattr(http_, "credentials", None)  # httplib2.Http has one too (basic auth): not that
        self.credentials = creds if hasattr(creds, "before_request") and hasattr(creds, "refresh") else None
        inner = getattr(http_, "http", http_)
        self._inner = inner if isinstance(inner, httplib2.Http) else httplib2.Http()
        timeout = getattr(inner, "timeout", None)
        self.timeout = float(timeout) if timeout is not None else DEFAULT_TIMEOUT
        self._ca_certs = getattr(inner, "ca_certs", None) or httplib2.CA_CERTS
        self._verify = not getattr(inner, "disable_ssl_certificate_validation", False)
        self._conns: dict[tuple[str, str], http.client.HTTPConnection] = {}

    @property
    def can_refresh(self) -> bool:
        return self.credentials is not None

    def _auth_request(self) -> Any:
        import google_auth_httplib2

        return google_auth_httplib2.Request(self._inner)

    def refresh(self) -> None:
        self.credentials.refresh(self._auth_request())

    def get(self, url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
        """GET ``url``; the answer with its headers read and its body not."""
        headers = dict(headers)
        if self.credentials is not None:
            self.credentials.before_request(self._auth_request(), "GET", url, headers)
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise RegistryError(f"cannot download from {url!r}: not an http(s) URL")
            conn = self._connection(parts.scheme, parts.netloc)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", target, headers=headers)
            resp = conn.getresponse()
            location = resp.getheader("location")
            if resp.status not in (301, 302, 303, 307, 308) or not location:
                return resp
            resp.read(MAX_ERROR_BODY)
            if not resp.isclosed():
                self.close()
            url = urljoin(url, location)
            if urlsplit(url).netloc != parts.netloc:
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        # Not a network glitch: asking again would only loop again.
        raise RegistryError(f"downloading from Drive: more than {MAX_REDIRECTS} redirects")

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        key = (scheme, netloc)
        conn = self._conns.get(key)
        if conn is None:
            # The environment's proxy (HTTPS_PROXY, NO_PROXY...), as httplib2 honours it for
            # the JSON calls: the connection goes to the proxy and tunnels with CONNECT.
            proxy = urllib.request.getproxies().get(scheme)
            host = urlsplit(f"//{netloc}").hostname or netloc
            via = urlsplit(proxy).netloc if proxy and not urllib.request.proxy_bypass(host) else None
            if scheme == "https":
                context = ssl.create_default_context(cafile=self._ca_certs)
                if not self._verify:
                    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
                conn = http.client.HTTPSConnection(via or netloc, timeout=self.timeout, context=context)
            else:
                conn = http.client.HTTPConnection(via or netloc, timeout=self.timeout)
            if via:
                conn.set_tunnel(netloc)
            self._conns[key] = conn
        return conn

    def close(self) -> None:
        """Drop every connection (after a broken or unread answer: never reuse it)."""
        for conn in self._conns.values():
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - closing a broken socket may fail; it is dropped anyway
                log.debug("closing a media connection: %s", exc)
        self._conns.clear()


def _refuse_html(resp: Any, content: bytes, what: str) -> None:
    ctype = str(resp.get("content-type", "")).lower()
    head = content[:512].lstrip().lower()
    if ctype.startswith("text/html") or head.startswith((b"<!doctype html", b"<html")):
        raise RegistryError(f"{what}: Drive sent an HTML page instead of the file's bytes (a sign-in, "
                            f"quota or virus-scan page?); refusing it")


def _reset_connections(http_: Any) -> None:
    """Close httplib2's pooled connections after a transport error (a half-read
    response or a timed-out socket must not be reused)."""
    inner = getattr(http_, "http", http_)
    connections = getattr(inner, "connections", None)
    if isinstance(connections, dict):
        for conn in list(connections.values()):
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken socket may fail; it is dropped anyway
                pass
        connections.clear()


def _is_auth_error(exc: Exception) -> bool:
    try:
        from google.auth import exceptions as auth_exceptions
    except ImportError:  # pragma: no cover - google-auth is a dependency
        return False
    return isinstance(exc, (auth_exceptions.RefreshError, auth_exceptions.InvalidOperation))


def _is_auth_transport_error(exc: Exception) -> bool:
    """google-auth could not reach the token endpoint (refreshing credentials)."""
    try:
        from google.auth import exceptions as auth_exceptions
    except ImportError:  # pragma: no cover - google-auth is a dependency
        return False
    return isinstance(exc, auth_exceptions.TransportError)
