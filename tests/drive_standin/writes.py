"""Write endpoints of the stand-in: files.create / files.update / files.delete and media uploads
(``uploadType=media|multipart|resumable`` under ``/upload/drive/v3/files``).

A mixin for :class:`~tests.drive_standin.server.DriveStandIn`; it uses the server's lookup,
rendering and change-recording helpers. Behaviour follows Drive v3's documented wire formats;
the places where Drive's exact answer is unknown are marked [A] and listed in README.md.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from urllib.parse import quote

from . import fields as fieldmask
from .errors import DriveError, invalid_param
from .store import FOLDER_MIME, SHORTCUT_MIME, Item, parse_rfc3339
from .wire import Principal, Response, insufficient_scopes, login_required

log = logging.getLogger(__name__)

DEFAULT_FILE_MASK = {"kind": None, "id": None, "name": None, "mimeType": None, "resourceKey": None}

# Body keys handled for real; keys Drive accepts but the stand-in ignores; per-method extras.
_SUPPORTED = {"name", "mimeType", "description", "starred", "appProperties", "properties", "modifiedTime"}
_IGNORED_WRITABLE = {"kind", "originalFilename", "folderColorRgb", "writersCanShare", "copyRequiresWriterPermission",
                     "viewersCanCopyContent", "contentHints", "contentRestrictions", "viewedByMeTime"}
_CREATE_ONLY = {"parents", "createdTime", "shortcutDetails"}
_UPDATE_ONLY = {"trashed"}

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:\*|(\d+)-(\d+))/(\*|\d+)\s*$")


@dataclass
class UploadSession:
    """A resumable upload session (``upload_id`` in the session URI)."""

    upload_id: str
    file_id: str | None  # None: files.create; otherwise files.update of this id
    metadata: dict
    query: dict
    headers: dict
    principal: Principal
    content_type: str | None
    declared_length: int | None
    total: int | None = None
    received: bytearray = field(default_factory=bytearray)
    result_id: str | None = None  # set once the upload completed


def _parse_json_body(raw: bytes) -> dict:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise DriveError(400, "parseError", "Parse Error") from exc
    if not isinstance(value, dict):
        raise DriveError(400, "badRequest", "Invalid JSON payload received. Expected an object.")
    return value


def _media_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def parse_multipart_related(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a ``multipart/related`` body into ``(headers, payload)`` parts.

    Accepts CRLF or bare-LF line breaks (the Python client's email generator writes LF)."""
    m = re.search(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', content_type or "")
    if _media_type(content_type) != "multipart/related" or not m:
        raise DriveError(400, "badContent", "Multipart upload requires Content-Type multipart/related with a "
                         "boundary.")
    delimiter = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    pieces = body.split(delimiter)
    parts: list[tuple[dict[str, str], bytes]] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):  # the close delimiter
            break
        piece = piece[2:] if piece.startswith(b"\r\n") else piece[1:] if piece.startswith(b"\n") else piece
        split = re.search(rb"\r?\n\r?\n", piece)
        if split is None:
            head, payload = piece, b""
        else:
            head, payload = piece[:split.start()], piece[split.end():]
        if payload.endswith(b"\r\n"):
            payload = payload[:-2]
        elif payload.endswith(b"\n"):
            payload = payload[:-1]
        headers = {k.lower(): v for k, v in BytesHeaderParser().parsebytes(head + b"\n\n").items()}
        parts.append((headers, payload))
    if not parts:
        raise DriveError(400, "badContent", "Multipart body has no parts.")
    return parts


class WritesMixin:
    """files.create/update/delete and uploads; mixed into DriveStandIn."""

    # seconds an upload request may stall before its body is taken as short (see README)
    upload_body_timeout: float = 2.0

    # ================================================================ Python API
    def expire_upload_sessions(self) -> None:
        """Forget every resumable session: the next chunk PUT or status query answers 404."""
        with self.store.lock:
            self._uploads.clear()

    @property
    def upload_sessions(self) -> dict[str, UploadSession]:
        return self._uploads

    # ================================================================ helpers
    def _require_write(self, principal: Principal, *, content: bool, method: str) -> None:
        if principal.kind != "token":
            raise login_required()
        if not principal.can_write(content):
            raise insufficient_scopes(method)

    @staticmethod
    def _check_body_keys(meta: dict, *, create: bool) -> None:
        props = fieldmask._schemas()["File"]["properties"]
        allowed = _SUPPORTED | _IGNORED_WRITABLE | (_CREATE_ONLY if create else _UPDATE_ONLY)
        for key, value in meta.items():
            if key not in props:
                raise DriveError(400, "badRequest", f'Invalid JSON payload received. Unknown name "{key}": '
                                 "Cannot find field.")
            if not create and key == "parents":
                raise DriveError(403, "fieldNotWritable", "The parents field is not directly writable in update "
                                 "requests. Use the addParents and removeParents parameters instead.")
            if key not in allowed:
                raise DriveError(403, "fieldNotWritable", "The resource body includes fields which are not "
                                 "directly writable.")
            ok = {
                "name": lambda v: isinstance(v, str),
                "mimeType": lambda v: isinstance(v, str) and "/" in v,
                "description": lambda v: v is None or isinstance(v, str),
                "starred": lambda v: isinstance(v, bool),
                "trashed": lambda v: isinstance(v, bool),
                "parents": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
                "appProperties": lambda v: isinstance(v, dict) and all(
                    isinstance(x, str) or x is None for x in v.values()),
                "properties": lambda v: isinstance(v, dict) and all(isinstance(x, str) or x is None for x in v.values()),
                "modifiedTime": lambda v: isinstance(v, str),
                "createdTime": lambda v: isinstance(v, str),
                "shortcutDetails": lambda v: isinstance(v, dict),
            }.get(key, lambda v: True)(value)
            if not ok:
                raise invalid_param(key, f"Invalid value for field {key}.")
        for key in ("modifiedTime", "createdTime"):
            if key in meta:
                try:
                    parse_rfc3339(meta[key])
                except ValueError as exc:
                    raise invalid_param(key, f"Invalid value for {key}: {meta[key]}") from exc

    def _write_target(self, file_id: str, query: dict, headers: dict, principal: Principal) -> Item:
        """A folder to put something into (404 unless visible under the request's flags)."""
        item = self._lookup(file_id, query, headers, principal)
        if not item.is_folder:
            raise invalid_param("parents", f"The parent {file_id} is not a folder.")  # [A]
        return item

    def _file_response(self, item_id: str, query: dict, headers: dict, principal: Principal,
                       status: int = 200) -> Response:
        tree = self._fields_tree(query, "File") or DEFAULT_FILE_MASK
        with self.store.lock:
            resource = self._render(self.store.require(item_id), principal)
        return self._json_response(status, fieldmask.apply(resource, tree), headers, query)

    def _prepare_create(self, meta: dict, query: dict, headers: dict, principal: Principal,
                        content_type: str | None, has_content: bool) -> tuple[Item, str, Item | None]:
        """Validate a files.create; returns (parent, mimeType, shortcut target)."""
        self._check_body_keys(meta, create=True)
        parents = meta.get("parents") or ["root"]
        if len(parents) > 1:
            raise DriveError(403, "cannotAddParent", "Increasing the number of parents is not allowed.")
        parent = self._write_target(parents[0], query, headers, principal)
        mime = meta.get("mimeType") or _media_type(content_type) or "application/octet-stream"
        target = None
        if mime == SHORTCUT_MIME:
            target_id = (meta.get("shortcutDetails") or {}).get("targetId")
            if not target_id or has_content:
                raise DriveError(400, "shortcutTargetInvalid" if not has_content else "badContent",
                                 "A shortcut needs shortcutDetails.targetId and no content.")
            target = self._lookup(target_id, query, headers, principal)
        elif has_content and (mime == FOLDER_MIME or mime.startswith("application/vnd.google-apps.")):
            # Drive would convert uploads to Google formats; the stand-in does not. [A]
            raise DriveError(400, "badContent", f"The stand-in cannot store uploaded content as {mime}.")
        return parent, mime, target

    def _create(self, meta: dict, query: dict, headers: dict, principal: Principal,
                content: bytes | None, content_type: str | None) -> str:
        with self.store.lock:
            parent, mime, target = self._prepare_create(meta, query, headers, principal, content_type,
                                                        content is not None)
            item = self._new_item(meta.get("name") or "Untitled", mime, parent.id, None,
                                  created_time=meta.get("createdTime"), modified_time=meta.get("modifiedTime"),
                                  starred=bool(meta.get("starred", False)), description=meta.get("description"),
                                  app_properties={k: v for k, v in (meta.get("appProperties") or {}).items()
                                                  if v is not None},
                                  properties={k: v for k, v in (meta.get("properties") or {}).items()
                                              if v is not None})
            if target is not None:
                item.shortcut_target, item.shortcut_target_mime = target.id, target.mime_type
                item.shortcut_target_resource_key = target.resource_key
            elif not item.is_google_native:
                # A blob created from metadata alone is an empty file. [A]
                self._set_content(item, content if content is not None else b"", None)
            self._record_change(item)
            return item.id

    def _prepare_update(self, item: Item, meta: dict, query: dict, headers: dict, principal: Principal,
                        has_content: bool) -> str | None:
        """Validate a files.update; returns the new parent id (None: no move)."""
        self._check_body_keys(meta, create=False)
        if item.is_root:
            raise DriveError(403, "insufficientFilePermissions")
        if has_content and item.is_google_native:
            raise DriveError(400, "badContent", "Only files with binary content can take new content.")  # [A]
        if "mimeType" in meta and meta["mimeType"] != item.mime_type and (item.is_google_native or
                                                                          meta["mimeType"].startswith(
                                                                              "application/vnd.google-apps.")):
            raise DriveError(403, "fieldNotWritable", "The mimeType of this item cannot be changed.")  # [A]
        add = [p for p in query.get("addParents", "").split(",") if p.strip()]
        remove = {self.store.resolve_alias(p.strip()) for p in query.get("removeParents", "").split(",") if p.strip()}
        if not add and not remove:
            return None
        new_parents = {item.parent} - remove
        for parent_id in add:
            new_parents.add(self._write_target(parent_id.strip(), query, headers, principal).id)
        if len(new_parents) > 1:
            raise DriveError(403, "cannotAddParent", "Increasing the number of parents is not allowed.")
        if not new_parents:
            raise DriveError(400, "badRequest", "An item must keep exactly one parent.")  # [A]
        (new_parent,) = new_parents
        if new_parent == item.parent:
            return None
        if new_parent in self.store.descendants(item.id):
            raise DriveError(400, "badRequest", "A folder cannot be moved into itself or its descendants.")  # [A]
        return new_parent

    def _update(self, file_id: str, meta: dict, query: dict, headers: dict, principal: Principal,
                content: bytes | None) -> str:
        st = self.store
        with st.lock:
            item = self._lookup(file_id, query, headers, principal)
            new_parent = self._prepare_update(item, meta, query, headers, principal, content is not None)
            changed = False
            edited = False  # changes that count as a modification (modifiedTime) [A]
            if "name" in meta and meta["name"] != item.name:
                item.name, edited = meta["name"], True
            if "description" in meta and meta["description"] != item.description:
                item.description, edited = meta["description"], True
            if "mimeType" in meta and meta["mimeType"] != item.mime_type:
                item.mime_type, edited = meta["mimeType"], True
            for key, attr in (("appProperties", "app_properties"), ("properties", "properties")):
                if key in meta:
                    merged = dict(getattr(item, attr))
                    for k, v in meta[key].items():
                        if v is None:
                            merged.pop(k, None)
                        else:
                            merged[k] = v
                    setattr(item, attr, merged)
                    edited = True
            if "starred" in meta and meta["starred"] != item.starred:
                item.starred, changed = meta["starred"], True
            if "trashed" in meta and meta["trashed"] != item.explicitly_trashed:
                item.explicitly_trashed = meta["trashed"]
                item.trashed_time = st.tick() if meta["trashed"] else None
                changed = True
            if new_parent is not None:
                parent = st.require(new_parent)
                item.parent, item.drive_id = parent.id, parent.drive_id
                changed = True
            if content is not None:
                self._set_content(item, content, None, meta.get("modifiedTime"))
            elif edited or changed or "modifiedTime" in meta:
                st.touch(item, meta.get("modifiedTime") or (st.tick() if edited else None))
            self._record_change(item)
            return item.id

    # ================================================================ metadata endpoints
    def _files_create(self, body: bytes, query: dict, headers: dict, principal: Principal) -> Response:
        self._require_write(principal, content=False, method="DriveFiles.Create")
        self._fields_tree(query, "File")  # a bad mask fails before anything is created
        file_id = self._create(_parse_json_body(body), query, headers, principal, None, None)
        return self._file_response(file_id, query, headers, principal)

    def _files_update(self, file_id: str, body: bytes, query: dict, headers: dict, principal: Principal) -> Response:
        self._require_write(principal, content=False, method="DriveFiles.Update")
        self._fields_tree(query, "File")
        file_id = self._update(file_id, _parse_json_body(body), query, headers, principal, None)
        return self._file_response(file_id, query, headers, principal)

    def _files_delete(self, file_id: str, query: dict, headers: dict, principal: Principal) -> Response:
        self._require_write(principal, content=True, method="DriveFiles.Delete")
        with self.store.lock:
            item = self._lookup(file_id, query, headers, principal)
            if item.is_root:
                raise DriveError(403, "insufficientFilePermissions")
            self._delete_tree(item.id)
        return Response(204, {}, [], 0)

    # ================================================================ uploads
    def _upload_route(self, method: str, path: str, query: dict, headers: dict, body: bytes) -> Response:
        m = re.fullmatch(r"/upload/drive/v3/files(?:/([^/]+))?", path)
        if not m:
            raise DriveError(404, "notFound", "Not Found")
        file_id = m.group(1)
        if query.get("upload_id") is not None:
            if method != "PUT" and method != "POST":
                raise DriveError(405, "badRequest", f"{method} is not allowed on an upload session.")
            return self._upload_chunk(query["upload_id"], headers, body)
        if (method, file_id is None) not in (("POST", True), ("PATCH", False)):
            raise DriveError(501, "notImplemented", f"The Drive stand-in has no {method} {path}.")
        principal = self._authorize(query, headers)
        method_id = "DriveFiles.Create" if file_id is None else "DriveFiles.Update"
        self._require_write(principal, content=True, method=method_id)
        self._fields_tree(query, "File")
        upload_type = query.get("uploadType", "")
        if upload_type == "media":
            meta, content, ctype = {}, body, headers.get("content-type")
        elif upload_type == "multipart":
            parts = parse_multipart_related(headers.get("content-type", ""), body)
            if len(parts) != 2:
                raise DriveError(400, "badContent", "A multipart upload has exactly two parts: metadata and media.")
            (meta_headers, meta_raw), (media_headers, content) = parts
            if _media_type(meta_headers.get("content-type")) != "application/json":
                raise DriveError(400, "badContent", "The first part of a multipart upload must be application/json.")
            meta, ctype = _parse_json_body(meta_raw), media_headers.get("content-type")
        elif upload_type == "resumable":
            return self._upload_start(file_id, _parse_json_body(body), query, headers, principal)
        else:
            raise invalid_param("uploadType", f"Invalid value '{upload_type}'. Valid values are: "
                                "[media, multipart, resumable]")
        if file_id is None:
            new_id = self._create(meta, query, headers, principal, content, ctype)
        else:
            new_id = self._update(file_id, meta, query, headers, principal, content)
        return self._file_response(new_id, query, headers, principal)

    def _upload_start(self, file_id: str | None, meta: dict, query: dict, headers: dict,
                      principal: Principal) -> Response:
        declared = headers.get("x-upload-content-length")
        if declared is not None and not declared.strip().isdigit():
            raise DriveError(400, "badRequest", "Invalid X-Upload-Content-Length.")
        ctype = headers.get("x-upload-content-type")
        with self.store.lock:  # fail early: the same checks run again when the upload completes
            if file_id is None:
                self._prepare_create(meta, query, headers, principal, ctype, True)
            else:
                item = self._lookup(file_id, query, headers, principal)
                self._prepare_update(item, meta, query, headers, principal, True)
                file_id = item.id
            upload_id = "ABdu" + secrets.token_urlsafe(48)
            self._uploads[upload_id] = UploadSession(
                upload_id, file_id, meta, dict(query), dict(headers), principal, ctype,
                int(declared) if declared is not None else None)
        location = (f"{self.root_url}upload/drive/v3/files{'/' + quote(file_id) if file_id else ''}"
                    f"?uploadType=resumable&upload_id={upload_id}")
        return Response(200, {"Location": location, "X-GUploader-UploadID": upload_id,
                              "Content-Type": "text/plain; charset=utf-8"}, [], 0)

    def _upload_chunk(self, upload_id: str, headers: dict, body: bytes) -> Response:
        st = self.store
        with st.lock:
            sess = self._uploads.get(upload_id)
            if sess is None:
                raise DriveError(404, "notFound", "Upload session not found or expired.")
            if sess.result_id is not None:  # already complete: report the result again
                return self._file_response(sess.result_id, sess.query, sess.headers, sess.principal)
            raw = headers.get("content-range")
            if raw is None:  # the whole content in one request
                first, last, total = 0, len(body) - 1, len(body)
            else:
                m = _CONTENT_RANGE.match(raw)
                if not m:
                    raise DriveError(400, "badRequest", f"Invalid Content-Range: {raw}")
                first = int(m.group(1)) if m.group(1) is not None else None
                last = int(m.group(2)) if m.group(2) is not None else None
                total = int(m.group(3)) if m.group(3) != "*" else None
                if first is not None and last < first:
                    raise DriveError(400, "badRequest", f"Invalid Content-Range: {raw}")
            if total is not None:
                expected = sess.declared_length if sess.declared_length is not None else sess.total
                if expected is not None and expected != total:
                    raise DriveError(400, "badRequest", f"The upload length {total} differs from the declared "
                                     f"{expected}.")
                sess.total = total
            if first is not None:
                have = len(sess.received)
                if first > have:
                    raise DriveError(400, "badRequest", f"Invalid request. The upload offset is {first} byte(s), "
                                     f"which exceeds the {have} byte(s) already uploaded.")
                if len(body) > last - first + 1:
                    raise DriveError(400, "badRequest", "The request body is longer than its Content-Range.")
                # Bytes the server already holds are skipped; a short body keeps what arrived. [A]
                sess.received += body[have - first:]
                if sess.total is not None and len(sess.received) > sess.total:
                    del sess.received[sess.total:]
                    raise DriveError(400, "badRequest", "More bytes than the declared upload length.")
            if sess.total is None or len(sess.received) < sess.total:
                out = {"Content-Type": "text/plain; charset=utf-8", "X-GUploader-UploadID": upload_id}
                if sess.received:
                    out["Range"] = f"bytes=0-{len(sess.received) - 1}"
                return Response(308, out, [], 0, reason="Resume Incomplete")
            content = bytes(sess.received)
            if sess.file_id is None:
                sess.result_id = self._create(sess.metadata, sess.query, sess.headers, sess.principal, content,
                                              sess.content_type)
            else:
                sess.result_id = self._update(sess.file_id, sess.metadata, sess.query, sess.headers,
                                              sess.principal, content)
            sess.received = bytearray()  # the bytes now live in the item
            return self._file_response(sess.result_id, sess.query, sess.headers, sess.principal)
