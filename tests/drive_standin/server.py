"""A local stand-in for the Drive v3 REST API, served over HTTP/1.1 on 127.0.0.1.

Driven by the real google-api-python-client (see fixtures.py). Behaviour follows
shared/reference/gdrive.md (§1 REST surface, §7 ranked behaviours). Loopback only.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import re
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from . import fields as fieldmask
from .changes import ChangesMixin
from .errors import DriveError, invalid_param, not_found
from .faults import Fault, RecordedRequest, RequestLog
from .query import EvalContext, QueryError, compile_query, tokenize
from .store import (
    DOC_MIME,
    FOLDER_MIME,
    GOOGLE_APPS_PREFIX,
    SHORTCUT_MIME,
    Hashes,
    Item,
    Revision,
    Store,
    rfc3339,
)
from .wire import Principal, Response, insufficient_scopes, page_size_param
from .wire import bool_param as _bool_param
from .writes import WritesMixin

log = logging.getLogger(__name__)

EXPORT_SIZE_LIMIT = 10 * 1024 * 1024
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100
JSON_TYPE = "application/json; charset=UTF-8"
_AUTH_PREFIX = "https://www.googleapis.com/auth/"
_SORT_KEYS = {"createdTime", "folder", "modifiedByMeTime", "modifiedTime", "name", "name_natural",
              "quotaBytesUsed", "recency", "sharedWithMeTime", "starred", "viewedByMeTime"}
_CORPORA = {"user", "domain", "drive", "allDrives"}


@dataclass
class _PageState:
    signature: tuple
    offset: int
    page_index: int


@dataclass
class _Quota:
    downloads: int | None
    bytes: int | None
    used_downloads: int = 0
    used_bytes: int = 0
    exhausted: bool = False


def _natural_key(name: str) -> list[tuple]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p.casefold()) for p in re.split(r"(\d+)", name) if p]


def _norm_scope(scope: str) -> str:
    return scope.removeprefix(_AUTH_PREFIX)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, addr, handler, standin: DriveStandIn):
        self.standin = standin
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(addr, handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ESF"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are dropped after this
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle plus delayed ACKs add
        # ~40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _dispatch(self) -> None:
        try:
            self.server.standin._handle(self)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as exc:
            log.debug("client went away: %s", exc)
            self.close_connection = True

    # ---- low-level writers used by DriveStandIn -------------------------------------------------
    def send_full(self, resp: Response, rec: RecordedRequest, truncate_after: int | None) -> None:
        rec.status = resp.status
        self.send_response(resp.status, resp.reason)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(resp.length))
        if self.close_connection:  # e.g. after a short request body: tell the client not to reuse it
            self.send_header("Connection", "close")
        self.end_headers()
        sent = 0
        if self.command != "HEAD":
            for chunk in resp.body:
                if truncate_after is not None and sent + len(chunk) > truncate_after:
                    part = chunk[:max(0, truncate_after - sent)]
                    if part:
                        self.wfile.write(part)
                        sent += len(part)
                    rec.bytes_sent = sent
                    self.abort(rst=False)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
        rec.bytes_sent = sent
        if resp.on_sent is not None:
            resp.on_sent(sent)

    def abort(self, rst: bool) -> None:
        """Drop the connection: FIN after a truncated body, or RST (SO_LINGER 0) for a reset."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            if rst:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class DriveStandIn(WritesMixin, ChangesMixin):
    """A faithful-enough Drive v3 server for tests. Use as a context manager or start()/stop().

    Seed through the Python methods below or through the write and upload endpoints
    (writes.py); every mutation is reported by the changes feed (changes.py). All ids are
    realistic random ids (pass ``seed`` for reproducible ones).
    """

    def __init__(self, *, seed: int | None = None, gzip_json: bool = True, port: int = 0,
                 export_size_limit: int = EXPORT_SIZE_LIMIT):
        self.store = Store(seed=seed)
        self.requests = RequestLog()
        self.gzip_json = gzip_json
        self.export_size_limit = export_size_limit
        self.page_caps: list[int] | None = None
        self.incomplete_search = False
        self._tokens: dict[str, frozenset[str] | None] | None = None
        self._api_keys: set[str] | None = None
        self.issued_tokens: list[dict] = []  # POST /token: {"access_token", "claims"} per grant
        self._faults: list[Fault] = []
        self._faults_lock = threading.Lock()
        self._page_tokens: dict[str, _PageState] = {}
        self._quotas: dict[str, _Quota] = {}
        self._uploads: dict = {}  # upload_id -> writes.UploadSession
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ================================================================ lifecycle
    def start(self) -> DriveStandIn:
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), _Handler, self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="drive-standin", daemon=True)
        self._thread.start()
        log.debug("drive stand-in listening on %s", self.root_url)
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        with server.sockets_lock:
            for sock in list(server.open_sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> DriveStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("stand-in is not running")
        return self._server.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def root_id(self) -> str:
        """The id behind the `root` alias (My Drive)."""
        return self.store.root_id

    # ================================================================ seeding
    def _new_item(self, name: str, mime_type: str, parent_id: str | None, drive_id: str | None, *,
                  created_time=None, modified_time=None, starred: bool = False, shared_with_me: bool = False,
                  anyone_with_link: bool = False, resource_key: bool = False, description: str | None = None,
                  app_properties: dict | None = None, properties: dict | None = None,
                  can_download: bool = True) -> Item:
        st = self.store
        with st.lock:
            if parent_id is None:
                parent_id = drive_id if drive_id is not None else st.root_id
            parent = st.get(parent_id)
            if parent is None or not parent.is_folder:
                raise ValueError(f"parent {parent_id!r} is not a folder in the stand-in")
            if drive_id is not None and parent.drive_id != drive_id:
                raise ValueError(f"parent {parent_id!r} is not in shared drive {drive_id!r}")
            created = st.tick(created_time)
            modified = st.tick(modified_time) if modified_time is not None else created
            item = Item(id=st.new_file_id(), name=name, mime_type=mime_type, parent=parent.id,
                        drive_id=parent.drive_id, created=created, modified=modified, seq=st.next_seq(),
                        starred=starred, shared_with_me=shared_with_me, anyone_with_link=anyone_with_link,
                        description=description, app_properties=dict(app_properties or {}),
                        properties=dict(properties or {}), can_download=can_download)
            if resource_key:
                item.resource_key = st.new_resource_key()
                item.resource_key_required = True
            st.items[item.id] = item
            return item

    def add_folder(self, name: str, parent_id: str | None = None, drive_id: str | None = None, **meta) -> str:
        """A folder under ``parent_id`` (None/"root" = My Drive; None + drive_id = that drive's root)."""
        with self.store.lock:
            item = self._new_item(name, FOLDER_MIME, parent_id, drive_id, **meta)
            self._record_change(item)
            return item.id

    def add_file(self, name: str, parent_id: str | None, data: bytes, mime_type: str = "application/octet-stream",
                 **meta) -> str:
        """A binary file kept in memory; md5/sha1/sha256, size and headRevisionId are computed."""
        with self.store.lock:
            item = self._new_item(name, mime_type, parent_id, None, **meta)
            self._set_content(item, bytes(data), None)
            self._record_change(item)
        return item.id

    def add_file_from_path(self, name: str, parent_id: str | None, path: str | Path,
                           mime_type: str = "application/octet-stream", **meta) -> str:
        """A binary file streamed from disk when downloaded (for large fixtures)."""
        with self.store.lock:
            item = self._new_item(name, mime_type, parent_id, None, **meta)
            self._set_content(item, None, Path(path))
            self._record_change(item)
        return item.id

    def add_google_doc(self, name: str, parent_id: str | None, mime_type: str = DOC_MIME,
                       exports: dict[str, bytes] | None = None, **meta) -> str:
        """A Google-native doc: no size or hashes, 403 fileNotDownloadable on alt=media,
        exportable to the MIME types in ``exports``."""
        if not mime_type.startswith(GOOGLE_APPS_PREFIX) or mime_type in (FOLDER_MIME, SHORTCUT_MIME):
            raise ValueError(f"{mime_type} is not a Google-native document type")
        with self.store.lock:
            item = self._new_item(name, mime_type, parent_id, None, **meta)
            item.export_data = dict(exports or {})
            self._record_change(item)
        return item.id

    def add_shortcut(self, name: str, parent_id: str | None, target_id: str, **meta) -> str:
        """A shortcut; ``targetMimeType`` is captured now, as Drive does."""
        with self.store.lock:
            target = self.store.require(target_id)
            item = self._new_item(name, SHORTCUT_MIME, parent_id, None, **meta)
            item.shortcut_target = target.id
            item.shortcut_target_mime = target.mime_type
            item.shortcut_target_resource_key = target.resource_key
            self._record_change(item)
            return item.id

    def add_shared_drive(self, name: str) -> str:
        """A shared drive; returns its id (also the id of its root folder)."""
        st = self.store
        with st.lock:
            drive_id = st.new_root_id()
            now = st.tick()
            st.drives[drive_id] = name
            st.items[drive_id] = Item(id=drive_id, name=name, mime_type=FOLDER_MIME, parent=None,
                                      drive_id=drive_id, created=now, modified=now, seq=st.next_seq(),
                                      is_root=True)
            return drive_id

    def _set_content(self, item: Item, data: bytes | None, path: Path | None, modified_time=None) -> None:
        hashes = Hashes.of_bytes(data) if data is not None else Hashes.of_path(path)
        item.data, item.path, item.hashes = data, path, hashes
        item.head_revision_id = self.store.new_revision_id()
        if item.revisions:  # an update, not the first content
            self.store.touch(item, modified_time, content_changed=True)
        item.revisions.append(Revision(item.head_revision_id, data, path, hashes, item.modified))

    def update_file(self, file_id: str, data: bytes | None = None, *, path: str | Path | None = None,
                    modified_time=None) -> None:
        """New content: new hashes, size, headRevisionId, version+1 and modifiedTime."""
        if (data is None) == (path is None):
            raise ValueError("pass exactly one of data= or path=")
        with self.store.lock:
            item = self.store.require(file_id)
            if item.is_google_native:
                raise ValueError("cannot set binary content on a folder/shortcut/Google doc")
            self._set_content(item, None if data is None else bytes(data), None if path is None else Path(path),
                              modified_time)
            self._record_change(item)

    def set_metadata(self, file_id: str, *, name: str | None = None, modified_time=None,
                     starred: bool | None = None, description: str | None = None,
                     shared_with_me: bool | None = None, app_properties: dict | None = None,
                     properties: dict | None = None) -> None:
        """A metadata change: bumps ``version``; ``modifiedTime`` only when given."""
        with self.store.lock:
            item = self.store.require(file_id)
            for attr, value in (("name", name), ("starred", starred), ("description", description),
                                ("shared_with_me", shared_with_me), ("app_properties", app_properties),
                                ("properties", properties)):
                if value is not None:
                    setattr(item, attr, value)
            self.store.touch(item, modified_time)
            self._record_change(item)

    def move(self, file_id: str, new_parent_id: str) -> None:
        with self.store.lock:
            item, parent = self.store.require(file_id), self.store.require(new_parent_id)
            if not parent.is_folder:
                raise ValueError("new parent is not a folder")
            item.parent, item.drive_id = parent.id, parent.drive_id
            self.store.touch(item)
            self._record_change(item)

    def trash(self, file_id: str) -> None:
        """Trash an item (its descendants then report ``trashed: true`` too)."""
        with self.store.lock:
            item = self.store.require(file_id)
            item.explicitly_trashed = True
            item.trashed_time = self.store.tick()
            self.store.touch(item)
            self._record_change(item)

    def untrash(self, file_id: str) -> None:
        with self.store.lock:
            item = self.store.require(file_id)
            item.explicitly_trashed, item.trashed_time = False, None
            self.store.touch(item)
            self._record_change(item)

    def delete(self, file_id: str) -> None:
        """Permanently remove an item and its descendants (shortcuts to it become dangling)."""
        self._delete_tree(file_id)

    def share_with_anyone(self, file_id: str, *, resource_key: bool = False) -> str | None:
        """Mark an item "anyone with the link" (served in API-key mode). Optionally give it a
        resource key that requests must then send in X-Goog-Drive-Resource-Keys."""
        with self.store.lock:
            item = self.store.require(file_id)
            item.anyone_with_link = True
            if resource_key:
                item.resource_key = item.resource_key or self.store.new_resource_key()
                item.resource_key_required = True
            self.store.touch(item)
            self._record_change(item)
            return item.resource_key

    def flag_abusive(self, file_id: str, *, owner_can_acknowledge: bool = True) -> None:
        """Flag as malware: alt=media → 403 cannotDownloadAbusiveFile unless acknowledgeAbuse=true
        (which is refused too when ``owner_can_acknowledge`` is False: caller isn't the owner)."""
        with self.store.lock:
            item = self.store.require(file_id)
            item.abusive, item.abuse_ack_allowed = True, owner_can_acknowledge

    def set_download_quota(self, file_id: str, *, downloads: int | None = None, bytes: int | None = None) -> None:
        """After ``downloads`` downloads (requests starting at byte 0) or ``bytes`` served, every
        alt=media request for the file answers 403 downloadQuotaExceeded until reset."""
        self._quotas[self.store.require(file_id).id] = _Quota(downloads, bytes)

    def reset_download_quota(self, file_id: str | None = None) -> None:
        if file_id is None:
            self._quotas.clear()
        else:
            self._quotas.pop(file_id, None)

    def item(self, file_id: str) -> Item:
        return self.store.require(file_id)

    def file_resource(self, file_id: str) -> dict:
        """The full File resource, as ``fields=*`` would return it."""
        with self.store.lock:
            return self._render(self.store.require(file_id), Principal("token"))

    # ================================================================ behaviour switches
    def set_page_pattern(self, caps: list[int] | None) -> None:
        """Cap successive pages of every listing at ``caps[i % len(caps)]`` items (0 = an empty
        page), regardless of pageSize; tokens are still returned while items remain."""
        if caps is not None and (not caps or any(c < 0 for c in caps)):
            raise ValueError("caps must be a non-empty list of non-negative ints")
        self.page_caps = list(caps) if caps is not None else None

    def expire_page_tokens(self) -> None:
        """Invalidate every issued nextPageToken (the next use answers 400)."""
        self._page_tokens.clear()

    def accept_tokens(self, *tokens: str, scopes: Iterable[str] | None = None) -> None:
        """Enable bearer checking: only these tokens pass (others 401 authError, none 401 required).
        ``scopes`` (short or full URLs) restrict what the tokens may do."""
        if self._tokens is None:
            self._tokens = {}
        scope_set = frozenset(_norm_scope(s) for s in scopes) if scopes is not None else None
        for token in tokens:
            self._tokens[token] = scope_set

    def accept_api_keys(self, *keys: str) -> None:
        """Only these ``key=`` values are valid (default: any key is)."""
        self._api_keys = set(self._api_keys or set()) | set(keys)

    # ================================================================ faults
    def inject(self, kind: str, *, times: int | None = 1, **kwargs) -> Fault:
        fault = Fault(kind=kind, times=times, **kwargs)
        with self._faults_lock:
            self._faults.append(fault)
        return fault

    def fail_next(self, status: int, reason: str | None = None, *, times: int | None = 1,
                  message: str | None = None, **match) -> Fault:
        """The next ``times`` matching calls answer ``status`` with a Google error body."""
        return self.inject("status", times=times, status=status, reason=reason, message=message, **match)

    def delay_next(self, seconds: float, *, times: int | None = 1, **match) -> Fault:
        return self.inject("delay", times=times, delay=seconds, **match)

    def truncate_next(self, after_bytes: int, *, times: int | None = 1, **match) -> Fault:
        return self.inject("truncate", times=times, truncate_after=after_bytes, **match)

    def reset_next(self, *, times: int | None = 1, **match) -> Fault:
        return self.inject("reset", times=times, **match)

    def clear_faults(self) -> None:
        with self._faults_lock:
            self._faults.clear()

    def _take_fault(self, rec: RecordedRequest) -> Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.matches(rec):
                    fault.hits += 1
                    return fault
        return None

    def count(self, **criteria) -> int:
        """Requests matching ``path_prefix``, ``alt``, ``method``, ``file_id``, ``status``, ``has_range``."""
        return self.requests.count(**criteria)

    # ================================================================ request handling
    def _handle(self, h: _Handler) -> None:
        split = urlsplit(h.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in h.headers.items()}
        length = int(headers.get("content-length") or 0)
        is_upload = path.startswith("/upload/")
        body, complete = self._read_body(h, length, self.upload_body_timeout if is_upload else None)
        method = h.command
        override = headers.get("x-http-method-override")
        if method == "POST" and override:
            method = override.upper()
            if "application/x-www-form-urlencoded" in headers.get("content-type", "") and body:
                query.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        m = re.match(r"^(?:/upload)?/drive/v3/files/([^/]+)", path)
        file_id = unquote(m.group(1)) if m else None
        if file_id is None and is_upload and query.get("upload_id"):
            sess = self._uploads.get(query["upload_id"])
            file_id = sess.file_id if sess is not None else None
        rec = RecordedRequest(method=method, path=path, query=query, headers=headers, raw_method=h.command,
                              file_id=file_id, bytes_received=len(body), body_complete=complete)
        self.requests.record(rec)
        if not complete:
            h.close_connection = True  # the stream is out of step with the framing now

        truncate_after = None
        fault = self._take_fault(rec)
        if fault is not None:
            rec.fault = fault.kind
            log.debug("fault %s on %s %s", fault.kind, method, h.path)
            if fault.kind == "reset":
                h.abort(rst=True)
                return
            if fault.kind == "delay":
                if self._stopping.wait(fault.delay):
                    h.abort(rst=False)
                    return
            elif fault.kind == "truncate" and is_upload and method in ("PUT", "POST", "PATCH"):
                # The request body is cut instead: the server keeps the first bytes of a chunk
                # (a resumable session persists them) and the connection dies without an answer.
                body = body[:fault.truncate_after]
                rec.bytes_received = len(body)
                if query.get("upload_id"):
                    try:
                        self._upload_chunk(query["upload_id"], headers, body)
                    except DriveError as err:
                        log.debug("truncated chunk refused: %s", err)
                h.abort(rst=True)
                return
            elif fault.kind == "truncate":
                truncate_after = fault.truncate_after
            elif fault.kind == "status":
                if fault.body is not None:
                    resp = Response(fault.status, {"Content-Type": JSON_TYPE, **fault.headers}, [fault.body],
                                    len(fault.body))
                else:
                    err = DriveError(fault.status, fault.reason, fault.message, location=fault.location,
                                     headers=dict(fault.headers))
                    resp = self._error_response(err, headers)
                h.send_full(resp, rec, None)
                return
        try:
            if path == "/token":
                resp = self._token(method, body, headers)
            else:
                resp = self._route(method, path, query, headers, body)
        except DriveError as err:
            resp = self._error_response(err, headers)
        except Exception:  # a stand-in bug: make it loud but well-formed
            log.exception("stand-in failure on %s %s", method, h.path)
            resp = self._error_response(DriveError(500, "backendError"), headers)
        h.send_full(resp, rec, truncate_after)

    @staticmethod
    def _read_body(h: _Handler, length: int, timeout: float | None) -> tuple[bytes, bool]:
        """Read up to ``length`` body bytes. With ``timeout``, a sender that stalls that long
        ends the body early (the Python client re-sends an exhausted stream slice as an empty
        body when it retries a chunk itself); returns (bytes, complete)."""
        if length <= 0:
            return b"", True
        if timeout is None:
            data = h.rfile.read(length)
            return data, len(data) == length
        parts, got = [], 0
        h.connection.settimeout(timeout)
        try:
            while got < length:
                piece = h.rfile.read1(min(1 << 20, length - got))
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
        except (TimeoutError, OSError) as exc:
            log.debug("request body stalled after %d of %d bytes: %s", got, length, exc)
        finally:
            try:
                h.connection.settimeout(h.timeout)
            except OSError:
                pass
        return b"".join(parts), got == length

    def _json_response(self, status: int, payload: dict, req_headers: dict, query: dict | None = None,
                       extra: dict | None = None) -> Response:
        pretty = (query or {}).get("prettyPrint", "true").lower() != "false"
        raw = json.dumps(payload, indent=1 if pretty else None, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": JSON_TYPE, "Vary": "Origin, X-Origin", **(extra or {})}
        if self.gzip_json and "gzip" in req_headers.get("accept-encoding", ""):
            raw = gzip.compress(raw)
            headers["Content-Encoding"] = "gzip"
        return Response(status, headers, [raw], len(raw))

    def _error_response(self, err: DriveError, req_headers: dict) -> Response:
        extra = dict(err.headers)
        if err.code == 401:
            extra.setdefault("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')
        return self._json_response(err.code, err.body(), req_headers, extra=extra)

    def _route(self, method: str, path: str, query: dict, headers: dict, body: bytes = b"") -> Response:
        if path.startswith("/upload/"):
            return self._upload_route(method, path, query, headers, body)
        m = re.match(r"^/drive/v3/files/([^/]+)(/export|/revisions/([^/]+))?$", path)
        known = path in ("/drive/v3/files", "/drive/v3/changes", "/drive/v3/changes/startPageToken") or m
        if not known:
            raise DriveError(404, "notFound", "Not Found")
        writes = {("POST", "/drive/v3/files"), ("PATCH", "file"), ("DELETE", "file")}
        kind = "file" if m and m.group(2) is None else path
        if method not in ("GET", "HEAD") and (method, kind) not in writes:
            raise DriveError(501, "notImplemented", f"The Drive stand-in has no {method} {path}.")
        principal = self._authorize(query, headers)
        if path == "/drive/v3/files":
            if method == "POST":
                return self._files_create(body, query, headers, principal)
            return self._files_list(query, headers, principal)
        if path == "/drive/v3/changes":
            return self._changes_list(query, headers, principal)
        if path == "/drive/v3/changes/startPageToken":
            return self._changes_start_token(query, headers, principal)
        file_id = unquote(m.group(1))
        if m.group(2) == "/export":
            return self._files_export(file_id, query, headers, principal)
        if m.group(3) is not None:
            return self._revision_get(file_id, unquote(m.group(3)), query, headers, principal)
        if method == "PATCH":
            return self._files_update(file_id, body, query, headers, principal)
        if method == "DELETE":
            return self._files_delete(file_id, query, headers, principal)
        return self._files_get(file_id, query, headers, principal)

    # ---- auth -------------------------------------------------------------------------------
    _JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

    def _token(self, method: str, body: bytes, headers: dict) -> Response:
        """OAuth token endpoint for service-account keys whose ``token_uri`` points here:
        the JWT-bearer grant; the JWT is parsed (not signature-checked). The issued token is
        accepted when bearer checking is on, with the scopes the JWT asked for."""
        def oauth_error(error: str, description: str) -> Response:
            return self._json_response(400, {"error": error, "error_description": description}, headers)

        if method != "POST":
            return self._json_response(405, {"error": "invalid_request", "error_description": "POST only"}, headers)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if form.get("grant_type") != self._JWT_BEARER:
            return oauth_error("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
        parts = form.get("assertion", "").split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not three parts")
            header, claims = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2])
        except ValueError:
            return oauth_error("invalid_grant", "Invalid JWT: cannot be decoded")
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            return oauth_error("invalid_grant", "Invalid JWT Signature.")
        if not claims.get("iss") or not claims.get("scope"):
            return oauth_error("invalid_scope" if claims.get("iss") else "invalid_grant",
                               "Invalid OAuth scope or ID token audience provided." if claims.get("iss")
                               else "Invalid JWT: no issuer")
        if not isinstance(claims.get("exp"), (int, float)) or claims["exp"] < time.time():
            return oauth_error("invalid_grant", "Invalid JWT: Token must be a short-lived token")
        token = "ya29.standin-" + secrets.token_urlsafe(16)
        if self._tokens is not None:
            self._tokens[token] = frozenset(_norm_scope(s) for s in str(claims["scope"]).split())
        self.issued_tokens.append({"access_token": token, "claims": claims})
        return self._json_response(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600}, headers)

    def _authorize(self, query: dict, headers: dict) -> Principal:
        auth = headers.get("authorization")
        token = None
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise DriveError(401, "authError", "Invalid Credentials", location="Authorization",
                                 location_type="header")
        elif query.get("access_token"):
            token = query["access_token"]
        if token is not None:
            if self._tokens is not None and token not in self._tokens:
                raise DriveError(401, "authError", "Invalid Credentials", location="Authorization",
                                 location_type="header")
            return Principal("token", self._tokens.get(token) if self._tokens is not None else None)
        key = query.get("key")
        if key is not None:
            if self._api_keys is not None and key not in self._api_keys:
                raise DriveError(400, "badRequest", "API key not valid. Please pass a valid API key.",
                                 status="INVALID_ARGUMENT")
            return Principal("key")
        if self._tokens is not None:
            raise DriveError(401, "required", "Login Required.", location="Authorization", location_type="header")
        raise DriveError(403, "dailyLimitExceededUnreg")

    # ---- visibility and rendering -------------------------------------------------------------
    def _visible(self, item: Item, principal: Principal, supports_all_drives: bool, headers: dict) -> bool:
        if item.drive_id is not None and not supports_all_drives:
            return False
        if principal.kind == "key" and not item.anyone_with_link:
            return False
        if item.resource_key_required:
            keys = {part.strip() for part in headers.get("x-goog-drive-resource-keys", "").split(",")}
            if f"{item.id}/{item.resource_key}" not in keys:
                return False
        return True

    def _lookup(self, file_id: str, query: dict, headers: dict, principal: Principal) -> Item:
        supports = _bool_param(query, "supportsAllDrives") or _bool_param(query, "supportsTeamDrives")
        with self.store.lock:
            item = self.store.get(file_id)
            if item is None or not self._visible(item, principal, supports, headers):
                raise not_found(file_id)
            return item

    def _render(self, item: Item, principal: Principal) -> dict:
        st = self.store
        d: dict = {"kind": "drive#file", "id": item.id, "name": item.name, "mimeType": item.mime_type}
        if item.resource_key:
            d["resourceKey"] = item.resource_key
        if item.parent:
            d["parents"] = [item.parent]
        trashed = st.is_trashed(item)
        d.update({"starred": item.starred, "trashed": trashed, "explicitlyTrashed": item.explicitly_trashed,
                  "spaces": ["drive"], "version": str(item.version), "createdTime": rfc3339(item.created),
                  "modifiedTime": rfc3339(item.modified), "viewedByMe": principal.kind == "token",
                  "modifiedByMe": item.drive_id is None and principal.kind == "token",
                  "shared": item.anyone_with_link, "hasThumbnail": False, "thumbnailVersion": "0",
                  "viewersCanCopyContent": True, "copyRequiresWriterPermission": False,
                  "writersCanShare": True, "isAppAuthorized": False})
        if item.explicitly_trashed and item.trashed_time is not None:
            d["trashedTime"] = rfc3339(item.trashed_time)
        if item.drive_id is not None:
            d["driveId"] = item.drive_id
            d["teamDriveId"] = item.drive_id
        else:
            d["ownedByMe"] = True
            d["owners"] = [{"kind": "drive#user", "displayName": st.owner_email.split("@")[0], "me": True,
                            "permissionId": st.permission_id, "emailAddress": st.owner_email}]
        if item.description is not None:
            d["description"] = item.description
        if item.app_properties:
            d["appProperties"] = dict(item.app_properties)
        if item.properties:
            d["properties"] = dict(item.properties)
        if item.hashes is not None:
            h = item.hashes
            ext = item.name.rsplit(".", 1)[1] if "." in item.name.strip(".") else None
            d.update({"size": str(h.size), "quotaBytesUsed": str(h.size), "md5Checksum": h.md5,
                      "sha1Checksum": h.sha1, "sha256Checksum": h.sha256, "headRevisionId": item.head_revision_id,
                      "originalFilename": item.name,
                      "webContentLink": f"https://drive.google.com/uc?id={item.id}&export=download"})
            if ext:
                d["fileExtension"] = ext
                d["fullFileExtension"] = item.name.split(".", 1)[1] if not item.name.startswith(".") else ext
        else:
            d["quotaBytesUsed"] = "0"
        kind = "folders" if item.is_folder else "file/d"
        d["webViewLink"] = f"https://drive.google.com/{kind}/{item.id}/view?usp=drivesdk"
        if item.is_shortcut:
            sd = {"targetId": item.shortcut_target, "targetMimeType": item.shortcut_target_mime}
            if item.shortcut_target_resource_key:
                sd["targetResourceKey"] = item.shortcut_target_resource_key
            d["shortcutDetails"] = sd
        if item.is_google_native and not item.is_folder and not item.is_shortcut:
            d["exportLinks"] = {mime: f"https://docs.google.com/feeds/download/export?id={item.id}&exportFormat="
                                f"{mime.rsplit('/', 1)[-1]}" for mime in item.export_data}
        editable = principal.kind == "token"
        d["capabilities"] = {
            "canDownload": item.can_download, "canListChildren": item.is_folder,
            "canReadRevisions": item.has_binary and editable, "canCopy": not item.is_folder,
            "canEdit": editable, "canComment": editable, "canShare": editable, "canRename": editable,
            "canTrash": editable, "canDelete": editable and item.drive_id is None, "canUntrash": editable,
            "canAddChildren": item.is_folder and editable, "canRemoveChildren": item.is_folder and editable,
            "canModifyContent": editable, "canReadDrive": item.drive_id is not None,
        }
        return d

    def _fields_tree(self, query: dict, schema: str):
        raw = query.get("fields")
        if raw is None or raw.strip() == "":
            return None
        try:
            tree = fieldmask.parse(raw)
            fieldmask.validate(tree, schema)
        except fieldmask.FieldsError as exc:
            raise DriveError(400, "invalidParameter", str(exc), location="fields") from exc
        return tree

    # ---- files.get --------------------------------------------------------------------------
    def _files_get(self, file_id: str, query: dict, headers: dict, principal: Principal) -> Response:
        alt = query.get("alt", "json")
        if alt not in ("json", "media"):
            raise invalid_param("alt", f"Invalid value '{alt}'. Valid values are: [json, media, proto]")
        tree = self._fields_tree(query, "File") if alt == "json" else None
        item = self._lookup(file_id, query, headers, principal)
        ack = _bool_param(query, "acknowledgeAbuse")
        if alt == "media":
            return self._media(item, query, headers, principal, ack)
        with self.store.lock:
            resource = self._render(item, principal)
        if tree is None:
            tree = {"kind": None, "id": None, "name": None, "mimeType": None, "resourceKey": None}
        return self._json_response(200, fieldmask.apply(resource, tree), headers, query)

    def _media(self, item: Item, query: dict, headers: dict, principal: Principal, ack: bool) -> Response:
        if not item.has_binary:
            raise DriveError(403, "fileNotDownloadable")
        if not principal.can_read_content():
            raise insufficient_scopes("DriveFiles.Get")
        if item.abusive:
            if not ack:
                raise DriveError(403, "cannotDownloadAbusiveFile")
            if not item.abuse_ack_allowed:
                raise DriveError(403, "cannotDownloadAbusiveFile", "Only the owner can download abusive files.",
                                 location="acknowledgeAbuse")
        elif ack:
            raise DriveError(403, "invalidAbuseAcknowledgment", location="acknowledgeAbuse")
        if not item.can_download:
            raise DriveError(403, "cannotDownloadFile", "The user does not have permission to download this file.")
        with self.store.lock:
            hashes, data, path = item.hashes, item.data, item.path
        snapshot = Item(id=item.id, name=item.name, mime_type=item.mime_type, parent=None, drive_id=None,
                        created=item.created, modified=item.modified, seq=0, data=data, path=path, hashes=hashes)
        return self._serve_bytes(snapshot, item.mime_type, headers, quota_id=item.id)

    def _serve_bytes(self, blob: Item, mime_type: str, headers: dict, quota_id: str | None,
                     ranged: bool = True) -> Response:
        total = blob.hashes.size
        rng = self._parse_range(headers.get("range"), total) if ranged else None
        if rng == "unsatisfiable":
            raise DriveError(416, "requestedRangeNotSatisfiable", "Request range not satisfiable",
                             headers={"Content-Range": f"bytes */{total}"})
        start, end = (0, total - 1) if rng is None else rng
        quota = self._quotas.get(quota_id) if quota_id else None
        if quota is not None:
            self._charge_quota(quota, new_download=start == 0)
        out_headers = {"Content-Type": mime_type, "Cache-Control": "private, max-age=0"}
        status = 200
        if rng is not None:
            status = 206
            out_headers["Content-Range"] = f"bytes {start}-{end}/{total}"

        def on_sent(n: int, q=quota) -> None:
            if q is not None:
                with self.store.lock:
                    q.used_bytes += n
        return Response(status, out_headers, blob.read_range(start, end), end - start + 1 if total else 0, on_sent)

    def _charge_quota(self, quota: _Quota, new_download: bool) -> None:
        with self.store.lock:
            if (quota.exhausted
                    or (quota.downloads is not None and new_download and quota.used_downloads >= quota.downloads)
                    or (quota.bytes is not None and quota.used_bytes >= quota.bytes)):
                quota.exhausted = True
                raise DriveError(403, "downloadQuotaExceeded")
            if new_download:
                quota.used_downloads += 1

    @staticmethod
    def _parse_range(header: str | None, total: int):
        """None (serve 200), (start, end) for 206, or "unsatisfiable" for 416.

        Every syntactically valid range on a zero-byte file is unsatisfiable. Malformed or
        multi-range headers are ignored (RFC 9110 allows serving the full body)."""
        if header is None:
            return None
        m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            log.debug("ignoring unsupported Range %r", header)
            return None
        first, last = m.group(1), m.group(2)
        if first == "":  # suffix: last n bytes
            n = int(last)
            if n == 0 or total == 0:
                return "unsatisfiable"
            return max(0, total - n), total - 1
        start = int(first)
        end = int(last) if last else total - 1
        if last and end < start:
            return None
        if start >= total:
            return "unsatisfiable"
        return start, min(end, total - 1)

    # ---- export and revisions ----------------------------------------------------------------
    def _files_export(self, file_id: str, query: dict, headers: dict, principal: Principal) -> Response:
        item = self._lookup(file_id, query, headers, principal)
        mime = query.get("mimeType")
        if not mime:
            raise DriveError(400, "required", "Required parameter: mimeType", location="mimeType")
        if not item.is_google_native or item.is_folder or item.is_shortcut:
            raise DriveError(403, "fileNotExportable")
        if mime not in item.export_data:
            raise DriveError(400, "badRequest", "The requested conversion is not supported.", location="convertTo")
        data = item.export_data[mime]
        if len(data) > self.export_size_limit:
            raise DriveError(403, "exportSizeLimitExceeded")
        blob = Item(id=item.id, name=item.name, mime_type=mime, parent=None, drive_id=None, created=item.created,
                    modified=item.modified, seq=0, data=data, hashes=Hashes.of_bytes(data))
        return self._serve_bytes(blob, mime, headers, quota_id=None, ranged=False)

    def _revision_get(self, file_id: str, revision_id: str, query: dict, headers: dict,
                      principal: Principal) -> Response:
        item = self._lookup(file_id, query, headers, principal)
        rev = next((r for r in item.revisions if r.id == revision_id or (
            revision_id == "head" and r.id == item.head_revision_id)), None)
        if rev is None:
            raise DriveError(404, "notFound", f"Revision not found: {revision_id}.", location="revisionId")
        if query.get("alt", "json") == "media":
            blob = Item(id=item.id, name=item.name, mime_type=item.mime_type, parent=None, drive_id=None,
                        created=item.created, modified=rev.modified, seq=0, data=rev.data, path=rev.path,
                        hashes=rev.hashes)
            return self._serve_bytes(blob, item.mime_type, headers, quota_id=None)
        tree = self._fields_tree(query, "Revision")
        resource = {"kind": "drive#revision", "id": rev.id, "mimeType": item.mime_type,
                    "modifiedTime": rfc3339(rev.modified), "keepForever": False, "md5Checksum": rev.hashes.md5,
                    "size": str(rev.hashes.size), "originalFilename": item.name}
        if tree is None:
            tree = {"kind": None, "id": None, "mimeType": None, "modifiedTime": None}
        return self._json_response(200, fieldmask.apply(resource, tree), headers, query)

    # ---- files.list -------------------------------------------------------------------------
    def _files_list(self, query: dict, headers: dict, principal: Principal) -> Response:
        tree = self._fields_tree(query, "FileList")
        page_size = page_size_param(query, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        supports = _bool_param(query, "supportsAllDrives") or _bool_param(query, "supportsTeamDrives")
        include = _bool_param(query, "includeItemsFromAllDrives") or _bool_param(query, "includeTeamDriveItems")
        drive_id = query.get("driveId") or query.get("teamDriveId") or None
        corpora_raw = query.get("corpora") or ("drive" if query.get("corpus") == "drive" else "user")
        corpora = {c.strip() for c in corpora_raw.split(",")}
        if not corpora <= _CORPORA:
            raise invalid_param("corpora", f"Invalid value '{corpora_raw}'.")
        if (drive_id is not None) != ("drive" in corpora):
            raise DriveError(403, "teamDriveIdRequiresTeamDriveCorpora",
                             "The driveId parameter must be specified if and only if corpora is set to drive.")
        if (drive_id is not None or corpora & {"drive", "allDrives"}) and not include:
            raise DriveError(403, "invalid", "The includeItemsFromAllDrives parameter must be set to true when "
                             "driveId is specified or corpora contains drive or allDrives.",
                             location="includeItemsFromAllDrives")
        if drive_id is not None and drive_id not in self.store.drives:
            raise DriveError(404, "notFound", f"Shared drive not found: {drive_id}", location="driveId")
        spaces = {s.strip() for s in query.get("spaces", "drive").split(",")}
        if not spaces <= {"drive", "appDataFolder", "photos"}:
            raise invalid_param("spaces", f"Invalid value '{query.get('spaces')}'.")
        q = query.get("q")
        predicate = None
        if q is not None and q.strip():
            try:
                predicate = compile_query(q)
            except QueryError as exc:
                log.debug("invalid q %r: %s", q, exc)
                raise DriveError(400, "invalid", "Invalid Value", location="q") from exc
        order_by = query.get("orderBy")
        sort_keys = self._parse_order_by(order_by) if order_by else []
        if sort_keys and q and any(t.kind == "word" and t.value == "fullText" for t in tokenize(q)):
            raise DriveError(400, "badRequest", "Sorting is not supported for queries with fullText terms. "
                             "Results are always in descending relevance order.", location="orderBy")
        signature = (q, order_by, tuple(sorted(corpora)), drive_id, include, supports, tuple(sorted(spaces)))
        token = query.get("pageToken")
        if token:
            state = self._page_tokens.get(token)
            if state is None or state.signature != signature:
                raise invalid_param("pageToken")
        else:
            state = _PageState(signature, 0, 0)

        with self.store.lock:
            ctx = EvalContext(self.store.root_id, self.store.is_trashed)
            if "drive" not in spaces:
                candidates: list[Item] = []
            else:
                candidates = [it for it in self.store.items.values() if not it.is_root]
            if drive_id is not None:
                candidates = [it for it in candidates if it.drive_id == drive_id]
            elif not (include and supports):
                candidates = [it for it in candidates if it.drive_id is None]
            if principal.kind == "key":
                candidates = [it for it in candidates if it.anyone_with_link]
            if predicate is not None:
                candidates = [it for it in candidates if predicate(it, ctx)]
            candidates.sort(key=lambda it: it.seq)
            for key, desc in reversed(sort_keys):
                candidates.sort(key=key, reverse=desc)
            cap = page_size
            if self.page_caps:
                cap = min(cap, self.page_caps[state.page_index % len(self.page_caps)])
            page = candidates[state.offset:state.offset + cap]
            files = [self._render(it, principal) for it in page]
            next_offset = state.offset + len(page)
        payload: dict = {"kind": "drive#fileList"}
        if next_offset < len(candidates):
            new_token = "~!!~" + secrets.token_urlsafe(60)
            self._page_tokens[new_token] = _PageState(signature, next_offset, state.page_index + 1)
            payload["nextPageToken"] = new_token
        payload["incompleteSearch"] = self.incomplete_search
        payload["files"] = files
        if tree is None:
            tree = {"kind": None, "nextPageToken": None, "incompleteSearch": None,
                    "files": {"kind": None, "id": None, "name": None, "mimeType": None, "resourceKey": None}}
        return self._json_response(200, fieldmask.apply(payload, tree), headers, query)

    def _parse_order_by(self, order_by: str) -> list:
        keys = []
        for part in order_by.split(","):
            words = part.split()
            if not words or len(words) > 2 or words[0] not in _SORT_KEYS or (
                    len(words) == 2 and words[1].lower() not in ("desc", "asc")):
                raise invalid_param("orderBy", f"Invalid Value: {order_by}")
            name, desc = words[0], len(words) == 2 and words[1].lower() == "desc"
            keys.append((self._sort_key(name), desc))
        return keys

    @staticmethod
    def _sort_key(name: str):
        if name == "name":
            return lambda it: it.name.casefold()
        if name == "name_natural":
            return lambda it: _natural_key(it.name)
        if name == "folder":
            return lambda it: 0 if it.is_folder else 1
        if name in ("createdTime", "sharedWithMeTime"):
            return lambda it: it.created
        if name == "quotaBytesUsed":
            return lambda it: it.size or 0
        if name == "starred":
            return lambda it: it.starred
        return lambda it: it.modified  # modifiedTime, recency, modifiedByMeTime, viewedByMeTime
