"""The real google-api-python-client against the local Drive v3 stand-in (tests/drive_standin)."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import re
import time
from datetime import UTC, datetime

import google.auth.exceptions
import google_auth_httplib2
import httplib2
import pytest
from google.oauth2.credentials import Credentials
from googleapiclient.errors import HttpError
from googleapiclient.http import MediaIoBaseDownload, MediaIoBaseUpload

from tests.drive_standin import DOC_MIME, FOLDER_MIME, escape
from tests.drive_standin.fixtures import build_service


ID_RE = re.compile(r"^1[A-Za-z0-9_-]{32}$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FULL_LIST = "nextPageToken,files(id,name,mimeType,size,md5Checksum,modifiedTime,parents,shortcutDetails,trashed)"


def error_of(exc: HttpError) -> dict:
    return json.loads(exc.content)["error"]


def reason_of(exc: HttpError) -> str:
    return error_of(exc)["errors"][0]["reason"]


def list_all(service, **kwargs) -> tuple[list[dict], list[dict]]:
    """Follow nextPageToken to the end; returns (files, pages)."""
    files, pages, token = [], [], None
    while True:
        page = service.files().list(pageToken=token, **kwargs).execute()
        pages.append(page)
        files.extend(page.get("files", []))
        token = page.get("nextPageToken")
        if not token:
            return files, pages


def download(request, chunksize: int) -> bytes:
    buf = io.BytesIO()
    downloader = MediaIoBaseDownload(buf, request, chunksize=chunksize)
    done = False
    while not done:
        _, done = downloader.next_chunk()
    return buf.getvalue()


def resumable_media(data: bytes, chunksize: int = 256 * 1024, mime: str = "application/octet-stream"):
    return MediaIoBaseUpload(io.BytesIO(data), mime, chunksize=chunksize, resumable=True)


def upload_all(request) -> dict:
    """Drive a resumable request to the end with next_chunk()."""
    response = None
    while response is None:
        _, response = request.next_chunk()
    return response


def raw_get(drive, path: str, headers: dict | None = None):
    """A plain httplib2 GET (no client library), for wire-level assertions."""
    return httplib2.Http(timeout=5).request(drive.root_url + path.lstrip("/"), "GET",
                                            headers={"authorization": "Bearer test-token", **(headers or {})})


# --------------------------------------------------------------------------- listing


def test_pagination_page_size_default_and_bad_values(drive, drive_service):
    folder = drive.add_folder("CVAT_Models")
    ids = [drive.add_file(f"w{i:03d}.bin", folder, b"x") for i in range(250)]
    q = f"'{folder}' in parents"
    first = drive_service.files().list(q=q).execute()
    assert len(first["files"]) == 100 and first["nextPageToken"]  # default pageSize 100
    assert set(first["files"][0]) == {"kind", "id", "name", "mimeType"}  # default per-file subset
    assert first["kind"] == "drive#fileList" and first["incompleteSearch"] is False
    files, pages = list_all(drive_service, q=q, pageSize=70, fields="nextPageToken,files(id)")
    assert [f["id"] for f in files] == ids and [len(p["files"]) for p in pages] == [70, 70, 70, 40]
    big = drive_service.files().list(q=q, pageSize=5000, fields="nextPageToken,files(id)").execute()
    assert len(big["files"]) == 250 and "nextPageToken" not in big  # coerced to 1000
    with pytest.raises(HttpError) as exc:
        drive_service.files().list(q=q, pageSize=0).execute()
    assert exc.value.status_code == 400 and error_of(exc.value)["errors"][0]["location"] == "pageSize"


def test_short_and_empty_pages_still_carry_tokens(drive, drive_service):
    folder = drive.add_folder("reg")
    ids = [drive.add_file(f"f{i}", folder, b"") for i in range(7)]
    drive.set_page_pattern([0, 2, 1])
    files, pages = list_all(drive_service, q=f"'{folder}' in parents", pageSize=1000,
                            fields="nextPageToken,files(id)")
    assert [f["id"] for f in files] == ids
    sizes = [len(p.get("files", [])) for p in pages]
    assert sizes[:6] == [0, 2, 1, 0, 2, 1] and sum(sizes) == 7
    assert all("nextPageToken" in p for p in pages[:-1]) and "nextPageToken" not in pages[-1]


def test_page_token_bad_expired_and_omitted_by_mask(drive, drive_service):
    folder = drive.add_folder("reg")
    for i in range(3):
        drive.add_file(f"f{i}", folder, b"1")
    q = f"'{folder}' in parents"
    page = drive_service.files().list(q=q, pageSize=1, fields="nextPageToken,files(id)").execute()
    with pytest.raises(HttpError) as exc:
        drive_service.files().list(q=q, pageSize=1, pageToken="garbage").execute()
    assert exc.value.status_code == 400 and error_of(exc.value)["errors"][0]["location"] == "pageToken"
    drive.expire_page_tokens()
    with pytest.raises(HttpError):
        drive_service.files().list(q=q, pageSize=1, pageToken=page["nextPageToken"]).execute()
    # The classic bug: a mask without nextPageToken silently ends pagination.
    masked = drive_service.files().list(q=q, pageSize=1, fields="files(id,name)").execute()
    assert list(masked) == ["files"] and len(masked["files"]) == 1


def test_q_escapes_and_case_insensitive_name(drive, drive_service):
    folder = drive.add_folder("reg")
    tricky = drive.add_file("quinn's paper\\essay", folder, b"a")
    upper = drive.add_file("Model.JSON", folder, b"b")
    hello = drive.add_file("HelloWorld", folder, b"c")
    yolo = drive.add_file("yolo-v8 weights.onnx", folder, b"d")

    def names(q):
        return {f["id"] for f in drive_service.files().list(q=q, fields="files(id)").execute()["files"]}

    assert names(f"name = '{escape(chr(39).join(['quinn', 's paper']) + chr(92) + 'essay')}'") == {tricky}
    assert names("name contains 'quinn\\'s paper\\\\essay'") == {tricky}
    assert names(f"'{folder}' in parents and name='model.json'") == {upper}
    assert names("name != 'model.json' and name contains 'HELLO'") == {hello}
    assert names("name contains 'World'") == set()  # token-prefix, not substring
    assert names("name contains 'v8' and name contains 'WEIGHTS'") == {yolo}


def test_q_boolean_logic_trashed_mime_and_times(drive, drive_service):
    root = drive.add_folder("CVAT_Models")
    m1 = drive.add_folder("m1", root)
    m2 = drive.add_folder("m2", root)
    j1 = drive.add_file("model.json", m1, b"{}", "application/json", modified_time="2024-01-01T00:00:00Z")
    j2 = drive.add_file("model.json", m2, b"{}", "application/json", modified_time="2025-06-01T12:00:00.500Z")
    w2 = drive.add_file("w.onnx", m2, b"\0" * 10, modified_time="2025-07-01T00:00:00Z")
    drive.trash(m2)  # children become trashed too

    def ids(q):
        return {f["id"] for f in drive_service.files().list(q=q, fields="files(id)").execute()["files"]}

    assert ids(f"'{root}' in parents and mimeType = '{FOLDER_MIME}' and trashed = false") == {m1}
    assert ids(f"'{root}' in parents") == {m1, m2}  # trashed items included unless filtered
    assert ids("trashed=true and mimeType != 'application/json'") == {m2, w2}
    assert ids(f"('{m1}' in parents or '{m2}' in parents) and not name = 'w.onnx'") == {j1, j2}
    assert ids("modifiedTime > '2024-06-01T00:00:00' and modifiedTime <= '2025-06-01T12:00:00.500Z'") == {j2}
    assert ids("name = 'model.json' and (modifiedTime < '2024-01-02' or trashed = true)") == {j1, j2}
    assert drive.item(j2).modified == datetime(2025, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)


@pytest.mark.parametrize("q", ["name = 'quinn's'", "name = 'a' and", "(name = 'a'", "trashed = 'false'",
                               "name < 'a'", "bogus = 'x'", "modifiedTime > 'yesterday'", "'x' in"])
def test_q_syntax_errors_are_400_invalid(drive_service, q):
    with pytest.raises(HttpError) as exc:
        drive_service.files().list(q=q).execute()
    err = error_of(exc.value)["errors"][0]
    assert exc.value.status_code == 400 and (err["reason"], err["location"], err["locationType"]) == (
        "invalid", "q", "parameter")


def test_order_by(drive, drive_service):
    folder = drive.add_folder("reg")
    for name in ["12", "2", "1"]:
        drive.add_file(name, folder, b"")
    sub = drive.add_folder("z-folder", folder)
    q = f"'{folder}' in parents"

    def order(by):
        return [f["name"] for f in drive_service.files().list(q=q, orderBy=by, fields="files(name)").execute()["files"]]

    assert order("name") == ["1", "12", "2", "z-folder"]
    assert order("folder,name_natural") == ["z-folder", "1", "2", "12"]
    assert order("createdTime desc") == ["z-folder", "1", "2", "12"]
    assert drive.item(sub).is_folder
    with pytest.raises(HttpError):
        order("size")


def test_long_query_uses_post_override(drive, drive_service):
    folders = [drive.add_folder(f"m{i}") for i in range(60)]
    target = drive.add_file("model.json", folders[-1], b"{}")
    q = " or ".join(f"'{f}' in parents" for f in folders)
    assert len(q) > 2048
    files = drive_service.files().list(q=q, fields="files(id)").execute()["files"]
    assert [f["id"] for f in files] == [target]
    rec = drive.requests[-1]
    assert (rec.raw_method, rec.method, rec.query["q"]) == ("POST", "GET", q)
    assert rec.headers["x-http-method-override"] == "GET"


# --------------------------------------------------------------------------- resources and fields


def test_file_resource_fidelity_and_fields_masks(drive, drive_service):
    folder = drive.add_folder("reg")
    data = b"weights" * 100
    fid = drive.add_file("model.onnx", folder, data)
    full = drive_service.files().get(fileId=fid, fields="*").execute()
    assert ID_RE.match(fid) and full["size"] == str(len(data)) and full["version"].isdigit()
    assert full["md5Checksum"] == hashlib.md5(data).hexdigest()
    assert full["sha1Checksum"] == hashlib.sha1(data).hexdigest()
    assert full["sha256Checksum"] == hashlib.sha256(data).hexdigest()
    assert TIME_RE.match(full["modifiedTime"]) and TIME_RE.match(full["createdTime"])
    assert full["parents"] == [folder] and full["trashed"] is False and full["capabilities"]["canDownload"]
    assert "etag" not in full
    assert drive_service.files().get(fileId=fid).execute() == {
        "kind": "drive#file", "id": fid, "name": "model.onnx", "mimeType": "application/octet-stream"}
    part = drive_service.files().get(fileId=fid, fields="id,capabilities/canDownload,owners(me)").execute()
    assert part == {"id": fid, "capabilities": {"canDownload": True}, "owners": [{"me": True}]}

    rev, version = full["headRevisionId"], int(full["version"])
    drive.update_file(fid, b"new weights")
    after = drive_service.files().get(fileId=fid, fields="md5Checksum,headRevisionId,version,size").execute()
    assert after["headRevisionId"] != rev and int(after["version"]) > version and after["size"] == "11"
    # the old revision stays downloadable by id
    assert drive_service.revisions().get_media(fileId=fid, revisionId=rev).execute() == data

    meta = drive_service.files().get(fileId=folder, fields="size,md5Checksum,mimeType,capabilities").execute()
    assert meta["mimeType"] == FOLDER_MIME and "size" not in meta and meta["capabilities"]["canListChildren"]
    doc = drive.add_google_doc("notes", folder)
    doc_meta = drive_service.files().get(fileId=doc, fields="*").execute()
    assert doc_meta["mimeType"] == DOC_MIME and not {"md5Checksum", "size", "headRevisionId"} & set(doc_meta)

    for mask, call in [("etag", lambda m: drive_service.files().get(fileId=fid, fields=m)),
                       ("files(id,etag)", lambda m: drive_service.files().list(fields=m)),
                       ("capabilities/canFly", lambda m: drive_service.files().get(fileId=fid, fields=m))]:
        with pytest.raises(HttpError) as exc:
            call(mask).execute()
        err = error_of(exc.value)["errors"][0]
        assert exc.value.status_code == 400 and (err["reason"], err["location"]) == ("invalidParameter", "fields")
        assert err["message"].startswith("Invalid field selection")


def test_shared_drive_rules(drive, drive_service):
    sd = drive.add_shared_drive("Team Models")
    folder = drive.add_folder("CVAT_Models", drive_id=sd)
    fid = drive.add_file("model.json", folder, b"{}")
    with pytest.raises(HttpError) as exc:
        drive_service.files().get(fileId=fid).execute()
    assert exc.value.status_code == 404 and reason_of(exc.value) == "notFound"
    assert error_of(exc.value)["message"] == f"File not found: {fid}."
    got = drive_service.files().get(fileId=fid, supportsAllDrives=True, fields="id,driveId").execute()
    assert got == {"id": fid, "driveId": sd}

    q = f"'{folder}' in parents"
    assert drive_service.files().list(q=q).execute()["files"] == []  # silently empty without the flags
    listed = drive_service.files().list(q=q, supportsAllDrives=True, includeItemsFromAllDrives=True,
                                        corpora="drive", driveId=sd, fields="files(id,driveId)").execute()
    assert listed["files"] == [{"id": fid, "driveId": sd}]
    for kwargs in [dict(corpora="drive", supportsAllDrives=True, includeItemsFromAllDrives=True),
                   dict(driveId=sd, supportsAllDrives=True, includeItemsFromAllDrives=True),
                   dict(corpora="drive", driveId=sd, supportsAllDrives=True),
                   dict(corpora="allDrives")]:
        with pytest.raises(HttpError) as exc:
            drive_service.files().list(q=q, **kwargs).execute()
        assert exc.value.status_code == 403, kwargs
    assert "includeItemsFromAllDrives" in error_of(exc.value)["message"]


def test_shortcut_listed_and_target_resolved(drive, drive_service):
    root = drive.add_folder("CVAT_Models")
    elsewhere = drive.add_folder("archive")
    target = drive.add_folder("yolo", elsewhere)
    shortcut = drive.add_shortcut("yolo", root, target)
    files = drive_service.files().list(q=f"'{root}' in parents and trashed = false", fields=FULL_LIST).execute()
    (entry,) = files["files"]
    assert entry["id"] == shortcut and entry["mimeType"] == "application/vnd.google-apps.shortcut"
    assert entry["shortcutDetails"] == {"targetId": target, "targetMimeType": FOLDER_MIME} and "size" not in entry
    resolved = drive_service.files().get(fileId=entry["shortcutDetails"]["targetId"], supportsAllDrives=True,
                                         fields="id,mimeType").execute()
    assert resolved == {"id": target, "mimeType": FOLDER_MIME}
    drive.delete(target)
    with pytest.raises(HttpError) as exc:  # dangling shortcut
        drive_service.files().get(fileId=target).execute()
    assert exc.value.status_code == 404


# --------------------------------------------------------------------------- media


def test_media_full_and_chunked_ranges(drive, drive_service):
    data = bytes(range(256)) * 10  # 2560 bytes
    fid = drive.add_file("w.bin", None, data)
    assert drive_service.files().get_media(fileId=fid).execute() == data
    assert drive.requests[-1].range is None and drive.requests[-1].status == 200
    drive.requests.clear()
    assert download(drive_service.files().get_media(fileId=fid), chunksize=1000) == data
    assert drive.requests.ranges(file_id=fid, alt="media") == ["bytes=0-999", "bytes=1000-1999",
                                                                "bytes=2000-2999"]
    assert [r.status for r in drive.requests] == [206, 206, 206]
    assert all(r.authorization == "Bearer test-token" for r in drive.requests)
    assert drive.count(path_prefix=f"/drive/v3/files/{fid}", alt="media") == 3


def test_media_range_forms_on_the_wire(drive):
    data = b"0123456789"
    fid = drive.add_file("ten.bin", None, data, "text/plain")
    path = f"drive/v3/files/{fid}?alt=media"
    for rng, content_range, body in [("bytes=2-4", "bytes 2-4/10", b"234"), ("bytes=7-", "bytes 7-9/10", b"789"),
                                     ("bytes=-3", "bytes 7-9/10", b"789"), ("bytes=5-99", "bytes 5-9/10", b"56789")]:
        resp, content = raw_get(drive, path, {"range": rng, "accept-encoding": "gzip, deflate"})
        assert (resp.status, resp["content-range"], content) == (206, content_range, body), rng
        assert resp["content-length"] == str(len(body)) and "content-encoding" not in resp
    resp, _ = raw_get(drive, path, {"range": "bytes=10-"})
    assert (resp.status, resp["content-range"]) == (416, "bytes */10")
    resp, content = raw_get(drive, path)
    assert (resp.status, content, resp["content-type"]) == (200, data, "text/plain")


def test_zero_byte_file(drive, drive_service):
    fid = drive.add_file("empty.bin", None, b"")
    assert drive_service.files().get(fileId=fid, fields="size,md5Checksum").execute() == {
        "size": "0", "md5Checksum": hashlib.md5(b"").hexdigest()}
    assert download(drive_service.files().get_media(fileId=fid), chunksize=1024) == b""
    assert [(r.range, r.status) for r in drive.requests.filter(alt="media")] == [("bytes=0-1023", 416)]
    for rng in ("bytes=0-0", "bytes=0-", "bytes=-5"):
        resp, _ = raw_get(drive, f"drive/v3/files/{fid}?alt=media", {"range": rng})
        assert (resp.status, resp["content-range"]) == (416, "bytes */0")
    assert drive_service.files().get_media(fileId=fid).execute() == b""


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("status,reason,domain", [
    (403, "userRateLimitExceeded", "usageLimits"), (403, "rateLimitExceeded", "usageLimits"),
    (429, "rateLimitExceeded", "usageLimits"), (500, "backendError", "global"), (503, "backendError", "global"),
    (401, "authError", "global")])
def test_scripted_error_reasons(drive, drive_service, status, reason, domain):
    fid = drive.add_file("w.bin", None, b"abc")
    drive.fail_next(status, reason, file_id=fid)
    if status == 401:  # AuthorizedHttp tries to refresh a token it cannot refresh
        with pytest.raises(google.auth.exceptions.RefreshError):
            drive_service.files().get(fileId=fid).execute()
        return
    with pytest.raises(HttpError) as exc:
        drive_service.files().get(fileId=fid).execute()
    err = error_of(exc.value)
    assert exc.value.status_code == status == err["code"]
    assert (err["errors"][0]["reason"], err["errors"][0]["domain"]) == (reason, domain)
    assert drive_service.files().get(fileId=fid).execute()["id"] == fid  # only the next call failed


def test_download_errors(drive, drive_service):
    doc = drive.add_google_doc("notes", None, exports={"text/plain": b"hello"})
    with pytest.raises(HttpError) as exc:
        drive_service.files().get_media(fileId=doc).execute()
    err = error_of(exc.value)["errors"][0]
    assert (exc.value.status_code, err["reason"], err["location"]) == (403, "fileNotDownloadable", "alt")
    assert drive_service.files().export_media(fileId=doc, mimeType="text/plain").execute() == b"hello"

    bad = drive.add_file("malware.bin", None, b"evil")
    drive.flag_abusive(bad)
    with pytest.raises(HttpError) as exc:
        drive_service.files().get_media(fileId=bad).execute()
    assert reason_of(exc.value) == "cannotDownloadAbusiveFile"
    assert drive_service.files().get_media(fileId=bad, acknowledgeAbuse=True).execute() == b"evil"
    good = drive.add_file("ok.bin", None, b"ok")
    with pytest.raises(HttpError) as exc:
        drive_service.files().get_media(fileId=good, acknowledgeAbuse=True).execute()
    assert reason_of(exc.value) == "invalidAbuseAcknowledgment"

    drive.requests.clear()
    drive.set_download_quota(good, downloads=1)
    assert drive_service.files().get_media(fileId=good).execute() == b"ok"
    with pytest.raises(HttpError) as exc:
        drive_service.files().get_media(fileId=good).execute(num_retries=3)  # 403 quota: never retried
    assert (exc.value.status_code, reason_of(exc.value)) == (403, "downloadQuotaExceeded")
    assert drive.count(file_id=good, alt="media") == 2

    drive.export_size_limit = 3
    with pytest.raises(HttpError) as exc:
        drive_service.files().export_media(fileId=doc, mimeType="text/plain").execute()
    assert reason_of(exc.value) == "exportSizeLimitExceeded"


def test_auth_modes(drive):
    shared = drive.add_file("public.bin", None, b"pub")
    drive.share_with_anyone(shared)
    private = drive.add_file("private.bin", None, b"priv")
    resp, content = httplib2.Http(timeout=5).request(drive.root_url + f"drive/v3/files/{shared}", "GET")
    assert resp.status == 403 and json.loads(content)["error"]["errors"][0]["reason"] == "dailyLimitExceededUnreg"

    keyed = build_service(drive.root_url, developer_key="KEY")
    assert {f["id"] for f in keyed.files().list().execute()["files"]} == {shared}
    assert keyed.files().get_media(fileId=shared).execute() == b"pub"
    with pytest.raises(HttpError) as exc:
        keyed.files().get(fileId=private).execute()
    assert exc.value.status_code == 404
    assert drive.requests[-1].query["key"] == "KEY" and drive.requests[-1].authorization is None

    keyed_file = drive.add_file("linked.bin", None, b"rk")
    resource_key = drive.share_with_anyone(keyed_file, resource_key=True)
    with pytest.raises(HttpError) as exc:  # link-shared item without its resource key
        keyed.files().get(fileId=keyed_file).execute()
    assert exc.value.status_code == 404
    req = keyed.files().get(fileId=keyed_file, fields="id,resourceKey")
    req.headers["X-Goog-Drive-Resource-Keys"] = f"{keyed_file}/{resource_key}"
    assert req.execute() == {"id": keyed_file, "resourceKey": resource_key}
    assert drive.requests[-1].headers["x-goog-drive-resource-keys"] == f"{keyed_file}/{resource_key}"

    drive.accept_tokens("good")
    drive.accept_tokens("meta", scopes=["https://www.googleapis.com/auth/drive.metadata.readonly"])
    assert build_service(drive.root_url, token="good").files().get(fileId=private).execute()["id"] == private
    with pytest.raises(google.auth.exceptions.RefreshError):
        build_service(drive.root_url, token="stolen").files().get(fileId=private).execute()
    assert drive.requests[-1].status == 401
    resp, _ = httplib2.Http(timeout=5).request(drive.root_url + f"drive/v3/files/{private}", "GET")
    assert resp.status == 401 and "www-authenticate" in resp
    meta = build_service(drive.root_url, token="meta")
    assert meta.files().get(fileId=private).execute()["id"] == private
    with pytest.raises(HttpError) as exc:
        meta.files().get_media(fileId=private).execute()
    assert reason_of(exc.value) == "insufficientPermissions"


# --------------------------------------------------------------------------- faults and log


def test_truncated_body_raises_then_resumes(drive, drive_service):
    data = bytes(range(200)) * 20  # 4000 bytes
    fid = drive.add_file("w.bin", None, data)
    drive.truncate_next(300, file_id=fid, alt="media")
    buf = io.BytesIO()
    downloader = MediaIoBaseDownload(buf, drive_service.files().get_media(fileId=fid), chunksize=1500)
    with pytest.raises(http.client.IncompleteRead):
        downloader.next_chunk(num_retries=3)  # IncompleteRead is not retried by the client
    done = False
    while not done:  # the same downloader resumes from the last good byte
        _, done = downloader.next_chunk()
    assert buf.getvalue() == data
    assert drive.requests.ranges(file_id=fid) == ["bytes=0-1499", "bytes=0-1499", "bytes=1500-2999",
                                                  "bytes=3000-4499"]
    assert drive.requests[0].fault == "truncate" and drive.requests[0].bytes_sent == 300


def test_429_then_success_and_request_counts(drive, drive_service):
    fid = drive.add_file("w.bin", None, b"abc")
    drive.fail_next(429, times=2, path_prefix="/drive/v3/files/")
    req = drive_service.files().get(fileId=fid, fields="id")
    req._rand = lambda: 0.0  # no real backoff sleeps in the test
    assert req.execute(num_retries=3) == {"id": fid}
    assert [r.status for r in drive.requests] == [429, 429, 200]
    assert drive.count(file_id=fid, status=429) == 2
    drive.requests.clear()
    assert drive.count() == 0


def test_connection_reset_and_delay(drive, drive_service):
    fid = drive.add_file("w.bin", None, b"abc")
    drive.reset_next(times=1, file_id=fid)
    with pytest.raises(ConnectionResetError):  # httplib2 0.32 does not retry a reset itself
        drive_service.files().get(fileId=fid).execute()
    drive.reset_next(times=1, file_id=fid)
    req = drive_service.files().get(fileId=fid, fields="id")
    req._rand = lambda: 0.0
    assert req.execute(num_retries=1) == {"id": fid}  # the client's retry loop does catch it
    assert [r.fault for r in drive.requests] == ["reset", "reset", None]

    slow = build_service(drive.root_url, http=google_auth_httplib2.AuthorizedHttp(
        Credentials(token="test-token"), http=httplib2.Http(timeout=0.3)))
    drive.delay_next(1.0, file_id=fid)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        slow.files().get(fileId=fid).execute()
    assert time.monotonic() - start < 0.9
    assert slow.files().get(fileId=fid, fields="id").execute() == {"id": fid}


def test_keep_alive_and_json_shape(drive):
    fid = drive.add_file("w.bin", None, b"abc")
    h = httplib2.Http(timeout=5)
    headers = {"authorization": "Bearer test-token"}
    r1, c1 = h.request(drive.root_url + f"drive/v3/files/{fid}?alt=json", "GET", headers=headers)
    r2, _ = h.request(drive.root_url + f"drive/v3/files/{fid}?alt=media", "GET", headers=headers)
    assert r1.status == r2.status == 200 and r1["content-type"] == "application/json; charset=UTF-8"
    assert len(h.connections) == 1  # one keep-alive connection served both
    assert json.loads(c1)["id"] == fid
    resp, _ = h.request(drive.root_url + "drive/v3/nope", "GET", headers=headers)
    assert resp.status == 404
    resp, _ = h.request(drive.root_url + f"drive/v3/files/{fid}", "PUT", headers=headers)
    assert resp.status == 501  # not a Drive method on this path
    resp, content = h.request(drive.root_url + f"drive/v3/files/{fid}", "DELETE", headers=headers)
    assert (resp.status, content) == (204, b"")


# --------------------------------------------------------------------------- metadata writes


def test_create_update_delete_through_the_client(drive, drive_service):
    files = drive_service.files()
    folder = files.create(body={"name": "CVAT_Models", "mimeType": FOLDER_MIME}, fields="id,mimeType,parents").execute()
    assert ID_RE.match(folder["id"]) and folder["mimeType"] == FOLDER_MIME and folder["parents"] == [drive.root_id]
    other = files.create(body={"name": "archive", "mimeType": FOLDER_MIME, "parents": ["root"]}).execute()
    assert set(other) == {"kind", "id", "name", "mimeType"}  # the default subset
    made = files.create(body={"name": "model.json", "parents": [folder["id"]], "description": "d",
                              "appProperties": {"registry": "v1"}}, fields="*").execute()
    assert (made["mimeType"], made["size"], made["md5Checksum"]) == (
        "application/octet-stream", "0", hashlib.md5(b"").hexdigest())
    assert made["appProperties"] == {"registry": "v1"} and made["description"] == "d"
    fid, version = made["id"], int(made["version"])

    renamed = files.update(fileId=fid, body={"name": "model-v2.json", "appProperties": {"registry": None, "k": "v"}},
                           fields="name,version,appProperties,modifiedTime").execute()
    assert renamed["name"] == "model-v2.json" and renamed["appProperties"] == {"k": "v"}
    assert int(renamed["version"]) > version and renamed["modifiedTime"] > made["modifiedTime"]
    moved = files.update(fileId=fid, addParents=other["id"], removeParents=folder["id"], fields="parents").execute()
    assert moved == {"parents": [other["id"]]}
    q = f"'{other['id']}' in parents and trashed = false"
    assert [f["id"] for f in files.list(q=q).execute()["files"]] == [fid]
    trashed = files.update(fileId=fid, body={"trashed": True}, fields="trashed,explicitlyTrashed,trashedTime").execute()
    assert trashed["trashed"] is True and trashed["explicitlyTrashed"] and TIME_RE.match(trashed["trashedTime"])
    assert files.list(q=q).execute()["files"] == []
    assert files.update(fileId=fid, body={"trashed": False}, fields="trashed").execute() == {"trashed": False}
    assert drive.item(fid).parent == other["id"]

    for call, status, reason in [
        (lambda: files.update(fileId=fid, addParents=folder["id"]), 403, "cannotAddParent"),
        (lambda: files.update(fileId=fid, body={"parents": [folder["id"]]}), 403, "fieldNotWritable"),
        (lambda: files.update(fileId=fid, body={"size": "3"}), 403, "fieldNotWritable"),
        (lambda: files.update(fileId=fid, body={"etag": "x"}), 400, "badRequest"),
        (lambda: files.create(body={"name": "x", "parents": ["1nope"]}), 404, "notFound"),
        (lambda: files.update(fileId="1nope", body={"name": "x"}), 404, "notFound"),
        (lambda: files.update(fileId=other["id"], addParents=other["id"], removeParents=drive.root_id), 400,
         "badRequest"),
        (lambda: files.create(body={"name": "x"}, fields="etag"), 400, "invalidParameter"),
    ]:
        with pytest.raises(HttpError) as exc:
            call().execute()
        assert (exc.value.status_code, reason_of(exc.value)) == (status, reason)

    assert files.delete(fileId=other["id"]).execute() == ""
    assert drive.requests[-1].status == 204
    for gone in (other["id"], fid):  # the folder went with its content
        with pytest.raises(HttpError) as exc:
            files.get(fileId=gone).execute()
        assert exc.value.status_code == 404
    with pytest.raises(HttpError) as exc:
        files.delete(fileId=fid).execute()
    assert (exc.value.status_code, reason_of(exc.value)) == (404, "notFound")


def test_writes_follow_shared_drive_rules_and_scopes(drive, drive_service):
    sd = drive.add_shared_drive("Team Models")
    with pytest.raises(HttpError) as exc:
        drive_service.files().create(body={"name": "m", "parents": [sd]}).execute()
    assert exc.value.status_code == 404
    made = drive_service.files().create(body={"name": "m", "parents": [sd], "mimeType": FOLDER_MIME},
                                        supportsAllDrives=True, fields="id,driveId").execute()
    assert made["driveId"] == sd
    with pytest.raises(HttpError) as exc:
        drive_service.files().update(fileId=made["id"], body={"name": "n"}).execute()
    assert exc.value.status_code == 404
    drive_service.files().delete(fileId=made["id"], supportsAllDrives=True).execute()

    fid = drive.add_file("w.bin", None, b"abc")
    drive.accept_tokens("rw")
    drive.accept_tokens("ro", scopes=["https://www.googleapis.com/auth/drive.readonly"])
    readonly = build_service(drive.root_url, token="ro")
    assert readonly.files().get(fileId=fid, fields="id").execute() == {"id": fid}
    assert readonly.files().get_media(fileId=fid).execute() == b"abc"
    for call in (lambda s: s.files().create(body={"name": "x"}),
                 lambda s: s.files().update(fileId=fid, body={"name": "x"}),
                 lambda s: s.files().delete(fileId=fid)):
        with pytest.raises(HttpError) as exc:
            call(readonly).execute()
        err = error_of(exc.value)
        assert (exc.value.status_code, err["errors"][0]["reason"]) == (403, "insufficientPermissions")
        assert err["details"][0]["reason"] == "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
    assert drive.item(fid).name == "w.bin"
    rw = build_service(drive.root_url, token="rw")
    assert rw.files().update(fileId=fid, body={"name": "x"}, fields="name").execute() == {"name": "x"}
    with pytest.raises(HttpError) as exc:  # an API key cannot write
        build_service(drive.root_url, developer_key="KEY").files().delete(fileId=fid).execute()
    assert (exc.value.status_code, reason_of(exc.value)) == (401, "required")


# --------------------------------------------------------------------------- uploads

MIB = 1 << 20
CHUNK = 256 * 1024


def payload(n: int) -> bytes:
    """``n`` bytes that include CR, LF and ``--`` (multipart framing must not touch them)."""
    return ((hashlib.sha256(b"seed").digest() + b"\r\n--\r") * (n // 37 + 1))[:n]


def test_resumable_upload_in_chunks(drive, drive_service):
    folder = drive_service.files().create(body={"name": "CVAT_Models", "mimeType": FOLDER_MIME}).execute()["id"]
    data = payload(MIB)
    drive.requests.clear()
    request = drive_service.files().create(body={"name": "model.onnx", "parents": [folder]},
                                           media_body=resumable_media(data), fields="id,md5Checksum,sha256Checksum,"
                                           "size,parents,mimeType,headRevisionId")
    made = upload_all(request)
    assert made["md5Checksum"] == hashlib.md5(data).hexdigest() and made["size"] == str(MIB)
    assert made["sha256Checksum"] == hashlib.sha256(data).hexdigest() and made["parents"] == [folder]
    assert made["mimeType"] == "application/octet-stream" and made["headRevisionId"]
    start, *puts = drive.requests
    assert (start.method, start.path, start.query["uploadType"], start.status) == (
        "POST", "/upload/drive/v3/files", "resumable", 200)
    assert start.headers["x-upload-content-length"] == str(MIB)
    assert [(r.method, r.content_range, r.status) for r in puts] == [
        ("PUT", f"bytes {i * CHUNK}-{(i + 1) * CHUNK - 1}/{MIB}", 308 if i < 3 else 200) for i in range(4)]
    assert len({r.upload_id for r in puts}) == 1 and puts[0].upload_id
    assert drive_service.files().get_media(fileId=made["id"]).execute() == data

    # new content through PATCH /upload/drive/v3/files/{id}: a new version and revision
    new = payload(300_000)
    updated = upload_all(drive_service.files().update(
        fileId=made["id"], body={"name": "model-v2.onnx"}, media_body=resumable_media(new),
        fields="name,md5Checksum,size,headRevisionId"))
    assert updated["md5Checksum"] == hashlib.md5(new).hexdigest() and updated["name"] == "model-v2.onnx"
    assert updated["headRevisionId"] != made["headRevisionId"] and updated["size"] == "300000"
    assert drive.requests.filter(path_prefix="/upload/")[-3].method == "PATCH"
    assert drive.requests.filter(path_prefix="/upload/")[-1].file_id == made["id"]
    old = drive_service.revisions().get_media(fileId=made["id"], revisionId=made["headRevisionId"]).execute()
    assert old == data


def test_resumable_upload_survives_503_truncation_and_loses_its_session(drive, drive_service):
    data = payload(MIB)
    request = drive_service.files().create(body={"name": "w.bin"}, media_body=resumable_media(data),
                                           fields="id,md5Checksum")
    request._sleep = lambda seconds: None
    request.next_chunk()  # chunk 0 stored
    drive.fail_next(503, method="PUT", path_prefix="/upload/")
    with pytest.raises(HttpError) as exc:  # the manual loop: the error surfaces ...
        request.next_chunk()
    assert exc.value.status_code == 503
    request.next_chunk()  # ... then a `bytes */N` status query and the chunk again
    drive.truncate_next(100_000, method="PUT", path_prefix="/upload/")
    with pytest.raises(ConnectionResetError):  # 100 000 bytes of chunk 2 arrive, then the connection dies
        request.next_chunk()
    made = upload_all(request)
    assert made["md5Checksum"] == hashlib.md5(data).hexdigest()
    puts = [(r.content_range, r.status, r.fault) for r in drive.requests.filter(method="PUT")]
    assert puts == [
        (f"bytes 0-{CHUNK - 1}/{MIB}", 308, None),
        (f"bytes {CHUNK}-{2 * CHUNK - 1}/{MIB}", 503, "status"),
        (f"bytes */{MIB}", 308, None),
        (f"bytes {CHUNK}-{2 * CHUNK - 1}/{MIB}", 308, None),
        (f"bytes {2 * CHUNK}-{3 * CHUNK - 1}/{MIB}", None, "truncate"),
        (f"bytes */{MIB}", 308, None),
        (f"bytes {2 * CHUNK + 100_000}-{3 * CHUNK + 100_000 - 1}/{MIB}", 308, None),  # resumes mid-chunk
        (f"bytes {3 * CHUNK + 100_000}-{MIB - 1}/{MIB}", 200, None),
    ]

    # next_chunk(num_retries=...) re-sends an exhausted stream slice (an empty body under the
    # chunk's Content-Length); the stand-in answers 308 with what it holds once the body stalls.
    drive.upload_body_timeout = 0.2
    drive.requests.clear()
    request = drive_service.files().create(body={"name": "w2.bin"}, media_body=resumable_media(data),
                                           fields="md5Checksum")
    request._sleep = lambda seconds: None
    request.next_chunk()
    drive.fail_next(503, method="PUT", path_prefix="/upload/")
    request.next_chunk(num_retries=2)
    assert upload_all(request) == {"md5Checksum": hashlib.md5(data).hexdigest()}
    retried = drive.requests.filter(method="PUT")[2]
    assert (retried.status, retried.bytes_received, retried.body_complete) == (308, 0, False)

    request = drive_service.files().create(body={"name": "lost.bin"}, media_body=resumable_media(data))
    request.next_chunk()
    drive.expire_upload_sessions()
    with pytest.raises(HttpError) as exc:
        request.next_chunk()
    assert exc.value.status_code == 404
    assert drive_service.files().list(q="name = 'lost.bin'").execute()["files"] == []


def test_simple_and_multipart_uploads(drive, drive_service):
    folder = drive.add_folder("reg")
    data = b"a\r\nb\nc\rd--x\r\n\r\n" + payload(5000)
    md5 = hashlib.md5(data).hexdigest()
    simple = drive_service.files().create(media_body=MediaIoBaseUpload(io.BytesIO(data), "text/plain"),
                                          fields="name,mimeType,md5Checksum,parents").execute()
    assert simple == {"name": "Untitled", "mimeType": "text/plain", "md5Checksum": md5, "parents": [drive.root_id]}
    assert drive.requests[-1].query["uploadType"] == "media"
    multi = drive_service.files().create(
        body={"name": "model.json", "parents": [folder], "mimeType": "application/json",
              "appProperties": {"sha": "x"}},
        media_body=MediaIoBaseUpload(io.BytesIO(data), "application/octet-stream"),
        fields="id,name,mimeType,md5Checksum,size,appProperties,version").execute()
    assert (multi["name"], multi["mimeType"], multi["md5Checksum"], multi["size"]) == (
        "model.json", "application/json", md5, str(len(data)))
    assert multi["appProperties"] == {"sha": "x"}
    assert drive.requests[-1].query["uploadType"] == "multipart"
    assert drive.requests[-1].headers["content-type"].startswith("multipart/related")

    updated = drive_service.files().update(fileId=multi["id"], media_body=MediaIoBaseUpload(
        io.BytesIO(b"{}"), "application/json"), fields="md5Checksum,version,size").execute()
    assert updated["md5Checksum"] == hashlib.md5(b"{}").hexdigest() and int(updated["version"]) > int(multi["version"])
    assert (drive.requests[-1].method, drive.requests[-1].query["uploadType"]) == ("PATCH", "media")
    assert drive_service.files().get_media(fileId=multi["id"]).execute() == b"{}"

    with pytest.raises(HttpError) as exc:  # uploads need a visible parent, like metadata creates
        drive_service.files().create(body={"name": "x", "parents": ["1nope"]},
                                     media_body=MediaIoBaseUpload(io.BytesIO(b"1"), "text/plain")).execute()
    assert exc.value.status_code == 404
    drive.fail_next(500, path_prefix="/upload/")
    request = drive_service.files().create(media_body=MediaIoBaseUpload(io.BytesIO(b"1"), "text/plain"),
                                           fields="size")
    request._sleep = lambda seconds: None
    assert request.execute(num_retries=1) == {"size": "1"}


# --------------------------------------------------------------------------- changes feed

CHANGE_MASK = "nextPageToken,newStartPageToken,changes(fileId,removed,time,file(name,parents,trashed,md5Checksum))"


def all_changes(service, token: str, **kwargs) -> tuple[list[dict], list[dict], str]:
    """Follow nextPageToken until newStartPageToken; returns (changes, pages, new start token)."""
    changes, pages = [], []
    while True:
        page = service.changes().list(pageToken=token, **kwargs).execute()
        pages.append(page)
        changes.extend(page.get("changes", []))
        if "newStartPageToken" in page:
            assert "nextPageToken" not in page
            return changes, pages, page["newStartPageToken"]
        token = page["nextPageToken"]


def test_changes_feed_reports_every_mutation_in_order(drive, drive_service):
    drive.add_file("before.bin", None, b"old")
    start = drive_service.changes().getStartPageToken().execute()
    assert start == {"kind": "drive#startPageToken", "startPageToken": start["startPageToken"]}
    assert start["startPageToken"].isdigit()

    files = drive_service.files()
    folder = drive.add_folder("CVAT_Models")  # seeding API
    other = files.create(body={"name": "archive", "mimeType": FOLDER_MIME}).execute()["id"]  # write endpoint
    fid = files.create(body={"name": "m.json", "parents": [folder]},
                       media_body=MediaIoBaseUpload(io.BytesIO(b"{}"), "application/json")).execute()["id"]
    files.update(fileId=fid, body={"name": "model.json"}).execute()
    files.update(fileId=fid, addParents=other, removeParents=folder).execute()
    files.update(fileId=fid, media_body=MediaIoBaseUpload(io.BytesIO(b"{1}"), "application/json")).execute()
    files.update(fileId=fid, body={"trashed": True}).execute()
    drive.untrash(fid)
    files.delete(fileId=other).execute()  # removes `other` and `fid`
    drive.trash(folder)

    changes, pages, new_start = all_changes(drive_service, start["startPageToken"], pageSize=3, fields=CHANGE_MASK)
    assert len(pages) == 4 and [len(p["changes"]) for p in pages] == [3, 3, 3, 2]
    seen = [(c["fileId"], c["removed"], c.get("file", {}).get("name"), c.get("file", {}).get("parents"),
             c.get("file", {}).get("trashed")) for c in changes]
    assert seen == [
        (folder, False, "CVAT_Models", [drive.root_id], False),
        (other, False, "archive", [drive.root_id], False),
        (fid, False, "m.json", [folder], False),
        (fid, False, "model.json", [folder], False),
        (fid, False, "model.json", [other], False),
        (fid, False, "model.json", [other], False),
        (fid, False, "model.json", [other], True),  # trash is not removal
        (fid, False, "model.json", [other], False),
        (fid, True, None, None, None),  # children first, then the folder
        (other, True, None, None, None),
        (folder, False, "CVAT_Models", [drive.root_id], True),
    ]
    assert changes[5]["file"]["md5Checksum"] == hashlib.md5(b"{1}").hexdigest()
    assert "file" not in changes[8] and all(TIME_RE.match(c["time"]) for c in changes)
    assert [c["time"] for c in changes] == sorted(c["time"] for c in changes)

    caught_up = drive_service.changes().list(pageToken=new_start).execute()
    assert caught_up == {"kind": "drive#changeList", "newStartPageToken": new_start, "changes": []}
    assert drive_service.changes().getStartPageToken().execute()["startPageToken"] == new_start
    default = drive_service.changes().list(pageToken=start["startPageToken"], pageSize=1).execute()
    assert set(default) == {"kind", "nextPageToken", "changes"}
    assert set(default["changes"][0]) == {"kind", "changeType", "time", "removed", "fileId", "file"}
    assert set(default["changes"][0]["file"]) == {"kind", "id", "name", "mimeType"}
    kept = drive_service.changes().list(pageToken=start["startPageToken"], includeRemoved=False, pageSize=5000,
                                        fields="newStartPageToken,changes(removed)").execute()
    assert len(kept["changes"]) == 9 and not any(c["removed"] for c in kept["changes"])
    assert kept["newStartPageToken"] == new_start


def test_changes_flags_tokens_and_errors(drive, drive_service):
    token = drive_service.changes().getStartPageToken().execute()["startPageToken"]
    sd = drive.add_shared_drive("Team")
    team_file = drive.add_file("t.bin", drive.add_folder("f", drive_id=sd), b"t")
    mine = drive.add_file("m.bin", None, b"m")

    def ids(**kwargs):
        return [c["fileId"] for c in all_changes(drive_service, token, fields="nextPageToken,newStartPageToken,"
                                                 "changes(fileId)", **kwargs)[0]]

    assert ids() == [mine]
    assert ids(supportsAllDrives=True) == [mine]
    assert ids(supportsAllDrives=True, includeItemsFromAllDrives=True)[1:] == [team_file, mine]
    assert ids(supportsAllDrives=True, includeItemsFromAllDrives=True, driveId=sd)[1:] == [team_file]
    assert ids(supportsAllDrives=True, includeItemsFromAllDrives=True, restrictToMyDrive=True) == [mine]
    page = drive_service.changes().list(pageToken=token, pageSize=1, fields="nextPageToken,changes(fileId)").execute()
    assert page == {"changes": [{"fileId": mine}]}  # filtered-out entries are skipped, not counted

    for bad in ("garbage", "0", "999999"):
        with pytest.raises(HttpError) as exc:
            drive_service.changes().list(pageToken=bad).execute()
        err = error_of(exc.value)["errors"][0]
        assert (exc.value.status_code, err["location"]) == (400, "pageToken")
    for kwargs, status in [({"pageSize": 0}, 400), ({"fields": "changes(etag)"}, 400),
                           ({"driveId": "0Anope"}, 404)]:
        with pytest.raises(HttpError) as exc:
            drive_service.changes().list(pageToken=token, **kwargs).execute()
        assert exc.value.status_code == status, kwargs
    resp, content = raw_get(drive, "drive/v3/changes")
    assert resp.status == 400 and json.loads(content)["error"]["errors"][0]["reason"] == "required"
    assert drive.start_page_token() == str(len(drive.changes) + 1)
