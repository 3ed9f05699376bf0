"""The Google Drive registry, through the real google-api-python-client, against the
local Drive v3 stand-in (tests/drive_standin): same answers as the local backend,
a constant number of requests per listing, shortcuts, escaping, downloads that
resume, retry and refuse what they must."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials

from common.cache import ModelCache
from common.errors import ModelNotFound, RegistryError
from common.registry import RemoteFile
from common.registry.gdrive import DriveRegistry, build_service
from common.registry.local import LocalRegistry
from tests.conftest import model_json, registry_tree, write_model
from tests.drive_standin import DOC_MIME


log = logging.getLogger(__name__)

MEDIA = {"alt": "media"}


manifest = model_json


def mirror(drive, local: Path, parent: str) -> None:
    """Upload a local folder tree into the stand-in under ``parent``."""
    for path in sorted(local.iterdir()):
        if path.is_dir():
            mirror(drive, path, drive.add_folder(path.name, parent))
        else:
            mime = "application/json" if path.suffix == ".json" else "application/octet-stream"
            drive.add_file(path.name, parent, path.read_bytes(), mime)


def registry(drive, **kwargs) -> DriveRegistry:
    """A registry over the production service factory, with a no-op backoff clock."""
    sleeps = kwargs.pop("sleeps", None)
    service = build_service(drive.root_url, Credentials(token="test-token"), timeout=10)
    return DriveRegistry(service, sleep=(sleeps.append if sleeps is not None else (lambda s: None)), **kwargs)


def add_model(drive, parent, folder, data: dict, files: dict[str, bytes]) -> str:
    fid = drive.add_folder(folder, parent)
    drive.add_file("model.json", fid, json.dumps(data).encode(), "application/json")
    for name, body in files.items():
        drive.add_file(name, fid, body)
    return fid


def comparable(record):
    return (record.folder, record.manifest, record.current,
            tuple((f.path, f.size, f.sha256) for f in record.files))


@pytest.fixture
def tree(tmp_path) -> Path:
    """The local backend's test tree, plus a model whose extra_files is a nested folder."""
    root = registry_tree(tmp_path / "CVAT_Models")
    write_model(root, "saved", manifest("saved", extra_files=["variables", "labels.txt"]),
                {"model.onnx": b"graph", "variables/variables.index": b"idx",
                 "variables/shards/variables.data-00000-of-00001": b"data" * 100,
                 "labels.txt": b"a\nb\n", "samples/cat.jpg": b"jpeg"})
    write_model(root, "empty-extra", manifest("empty-extra", extra_files=["empty.bin"]),
                {"model.onnx": b"w", "empty.bin": b""})
    write_model(root, "folder-weights", manifest("folder-weights"), {"model.onnx/x": b"w"})
    return root


@pytest.fixture
def seeded(drive, tree):
    root_id = drive.add_folder("CVAT_Models")
    mirror(drive, tree, root_id)
    return root_id


# ---------------------------------------------------------------- same answers as local


def test_listing_equals_the_local_backend(drive, tree, seeded):
    local = LocalRegistry(tree).list_models()
    remote = registry(drive).list_models()
    assert [comparable(m) for m in remote.models] == [comparable(m) for m in local.models]
    assert remote.errors == local.errors
    assert remote.total_folders == local.total_folders == 9
    errors = {e.folder: e.error for e in remote.errors}
    assert errors["no-json"] == "No model.json found"
    assert errors["no-weights"] == "Model file model.onnx not found"
    assert errors["folder-weights"] == "Model file model.onnx is a folder, not a file"
    assert errors["bad-json"].startswith("bad-json/model.json: $: invalid JSON at line 1, column 14")
    assert "$.input.layout" in errors["bad-field"]
    saved = next(m for m in remote.models if m.folder == "saved")
    assert [f.path for f in saved.files] == ["model.onnx", "variables/shards/variables.data-00000-of-00001",
                                             "variables/variables.index", "labels.txt"]
    for f in saved.files:  # Drive's own checksums; the locator is the file id
        assert f.md5 and f.sha256 and drive.item(f.locator).name == f.path.rsplit("/", 1)[-1]


def test_resolve_and_versions_equal_the_local_backend(drive, tree, seeded):
    local, remote = LocalRegistry(tree), registry(drive)
    assert remote.versions("alpha") == local.versions("alpha") == ["2.1.0", "2.0.0", "1.0.0"]
    for name, version in [("alpha", None), ("alpha", "1.0.0"), ("alpha", "v2.0.0"), ("alpha", "2.1.0"),
                          ("beta", None), ("beta-ir", None)]:
        assert comparable(remote.resolve(name, version)) == comparable(local.resolve(name, version))
    old = remote.resolve("alpha", "1.0.0")
    assert (old.current, old.folder) == (False, "alpha")
    with pytest.raises(ModelNotFound, match=r"no version 9.9.9; versions: 2.1.0, 2.0.0, 1.0.0"):
        remote.resolve("alpha", "9.9.9")
    with pytest.raises(ModelNotFound, match="no model 'gamma'"):
        remote.resolve("gamma")
    with pytest.raises(RegistryError, match="Model file model.onnx not found"):
        remote.resolve("no-weights")


def test_every_call_carries_the_drive_flags(drive, seeded):
    drive.set_page_pattern([0, 1, 3])  # short and empty pages that still carry tokens
    reg = registry(drive)
    listing = reg.list_models()
    assert len(listing.models) == 4 and len(listing.errors) == 5
    reg.resolve("alpha", "1.0.0")
    lists = drive.requests.filter(path_prefix="/drive/v3/files", method="GET")
    assert lists
    for rec in lists:
        assert rec.query.get("supportsAllDrives") == "true", rec.query
        if rec.path == "/drive/v3/files":
            assert rec.query["includeItemsFromAllDrives"] == "true"
            assert rec.query["pageSize"] == "1000"
            assert "trashed = false" in rec.query["q"]
            assert rec.query["fields"].startswith("nextPageToken,")
        elif rec.alt == "json":
            assert "fields" in rec.query


# ---------------------------------------------------------------- request counts

NAIVE = {}
MEASURED = {}


@pytest.mark.parametrize("n", [1, 5, 40])
def test_a_listing_costs_a_constant_number_of_requests(drive, tmp_path, n):
    root = drive.add_folder("CVAT_Models")
    for i in range(n):
        add_model(drive, root, f"m{i:02d}", manifest(f"m{i:02d}"), {"model.onnx": b"w%d" % i})
    reg = registry(drive, cache_dir=tmp_path)
    first = reg.list_models()
    assert len(first.models) == n and not first.errors
    first_count = len(drive.requests)
    # root lookup + model folders + one batched children query, and each model.json once
    assert drive.count(**MEDIA) == n
    assert first_count == 3 + n

    drive.requests.clear()
    again = reg.list_models()
    assert [comparable(m) for m in again.models] == [comparable(m) for m in first.models]
    repeat = len(drive.requests)
    assert repeat == 2, [(r.method, r.query.get("q")) for r in drive.requests]
    assert drive.count(**MEDIA) == 0  # md5 unchanged: no model.json downloaded again
    naive = 2 * n + 1
    NAIVE[n], MEASURED[n] = naive, (first_count, repeat)
    log.info("N=%d: naive %d requests, this backend %d (first listing) and %d (repeat)",
             n, naive, first_count, repeat)
    assert repeat <= naive
    if n == 40:  # 40 ids in one q: the client switched to the long-URL POST form, and it worked
        assert [r.raw_method for r in drive.requests] == ["GET", "POST"]

    drive.requests.clear()
    fresh = registry(drive, cache_dir=tmp_path).list_models()  # another process: manifests from cache_dir
    assert [comparable(m) for m in fresh.models] == [comparable(m) for m in first.models]
    assert drive.count(**MEDIA) == 0 and len(drive.requests) == 3  # + the root lookup


def test_a_changed_model_json_is_picked_up(drive):
    root = drive.add_folder("CVAT_Models")
    a = add_model(drive, root, "a", manifest("a", "1.0.0"), {"model.onnx": b"w"})
    add_model(drive, root, "b", manifest("b"), {"model.onnx": b"w"})
    reg = registry(drive)
    assert [m.version for m in reg.list_models().models] == ["1.0.0", "1.0.0"]
    mj = next(i.id for i in drive.store.items.values() if i.parent == a and i.name == "model.json")
    drive.update_file(mj, json.dumps(manifest("a", "1.1.0")).encode())
    drive.requests.clear()
    assert [m.version for m in reg.list_models().models] == ["1.1.0", "1.0.0"]
    assert drive.count(**MEDIA) == 1 and drive.count(file_id=mj) == 1
    drive.update_file(mj, b'{"name": "a",')  # broken now: reported, and not downloaded again
    listing = reg.list_models()
    assert [e.folder for e in listing.errors] == ["a"] and "invalid JSON" in listing.errors[0].error
    drive.requests.clear()
    assert [e.folder for e in reg.list_models().errors] == ["a"]
    assert drive.count(**MEDIA) == 0


# ---------------------------------------------------------------- names, collisions, shortcuts


def test_names_are_escaped_in_queries(drive):
    name = "O'Brien\\models"
    root = drive.add_folder(name)
    add_model(drive, root, "it's", manifest("quoted"), {"model.onnx": b"w"})
    drive.add_folder("O'Brien", None)  # a near miss
    reg = registry(drive, root_name=name)
    assert [m.folder for m in reg.list_models().models] == ["it's"]
    assert reg.resolve("it's").manifest.name == "quoted"
    queries = [r.query["q"] for r in drive.requests if "q" in r.query]
    assert "name = 'O\\'Brien\\\\models'" in queries[0]
    assert any("name = 'it\\'s'" in q for q in queries)


def test_names_are_rechecked_exactly(drive):
    for other in ("cvat_models", "CVAT_MODELS"):  # Drive's name = matches these too
        drive.add_folder(other)
    root = drive.add_folder("CVAT_Models")
    add_model(drive, root, "alpha", manifest("alpha"), {"model.onnx": b"w"})
    add_model(drive, root, "ALPHA", manifest("shouting"), {"model.onnx": b"w"})
    reg = registry(drive)
    assert [m.folder for m in reg.list_models().models] == ["ALPHA", "alpha"]
    assert reg.resolve("alpha").manifest.name == "alpha"
    assert reg.resolve("ALPHA").manifest.name == "shouting"

    drive.add_folder("CVAT_Models", drive.add_folder("elsewhere"))
    with pytest.raises(RegistryError, match="2 folders named 'CVAT_Models'.*give the registry folder by id"):
        registry(drive).list_models()
    assert [m.folder for m in registry(drive, root_id=root).list_models().models] == ["ALPHA", "alpha"]


def test_duplicate_model_folders_are_reported(drive):
    root = drive.add_folder("CVAT_Models")
    add_model(drive, root, "twin", manifest("twin"), {"model.onnx": b"w"})
    add_model(drive, root, "twin", manifest("twin"), {"model.onnx": b"w"})
    two = add_model(drive, root, "two-jsons", manifest("two"), {"model.onnx": b"w"})
    drive.add_file("model.json", two, b"{}", "application/json")
    listing = registry(drive).list_models()
    assert not listing.models and listing.total_folders == 3
    errors = {e.folder: e.error for e in listing.errors}
    assert "2 folders are named 'twin'" in errors["twin"]
    assert errors["two-jsons"] == "2 files are named model.json; keep one"


def test_shortcuts_to_folders_and_files_are_followed(drive):
    root = drive.add_folder("CVAT_Models")
    elsewhere = drive.add_folder("team stuff")
    real = add_model(drive, elsewhere, "real", manifest("linked", extra_files=["extra"]), {"model.onnx": b"w"})
    extra = drive.add_folder("extra", real)
    shared_bin = drive.add_file("big.bin", elsewhere, b"shared weights")
    drive.add_shortcut("part.bin", extra, shared_bin)
    drive.add_shortcut("linked", root, real)
    drive.add_shortcut("loop", extra, extra)  # a folder shortcut back to itself
    gone = drive.add_folder("gone", elsewhere)
    drive.add_shortcut("dangling", root, gone)
    drive.delete(gone)
    drive.add_shortcut("self", root, root)
    weights_link = add_model(drive, root, "via-link", manifest("via-link"), {})
    drive.add_shortcut("model.onnx", weights_link, shared_bin)

    listing = registry(drive).list_models()
    errors = {e.folder: e.error for e in listing.errors}
    assert errors["linked"] == "Model file extra/loop is a shortcut that loops back to a folder above it"
    assert "does not exist" in errors["dangling"]
    assert errors["self"] == "is a shortcut to the registry folder itself"
    [ok] = listing.models
    assert ok.folder == "via-link"
    assert (ok.primary.locator, ok.primary.size) == (shared_bin, len(b"shared weights"))
    assert ok.primary.md5 == hashlib.md5(b"shared weights").hexdigest()

    drive.delete(next(i.id for i in drive.store.items.values() if i.name == "loop"))
    record = registry(drive).resolve("linked")  # by folder (shortcut) name
    assert record.folder == "linked" and [f.path for f in record.files] == ["model.onnx", "extra/part.bin"]
    assert record.files[1].locator == shared_bin


def test_google_native_files_are_refused(drive):
    root = drive.add_folder("CVAT_Models")
    folder = add_model(drive, root, "docs", manifest("docs"), {})
    drive.add_google_doc("model.onnx", folder, DOC_MIME)
    doc_json = drive.add_folder("doc-json", root)
    drive.add_google_doc("model.json", doc_json)
    errors = {e.folder: e.error for e in registry(drive).list_models().errors}
    assert errors["docs"].startswith("Model file model.onnx is a Google Docs file "
                                     "(application/vnd.google-apps.document)")
    assert errors["doc-json"].startswith("model.json is a Google Docs file")


def test_a_trashed_or_missing_root_is_an_error(drive):
    root = drive.add_folder("CVAT_Models")
    add_model(drive, root, "a", manifest("a"), {"model.onnx": b"w"})
    reg = registry(drive)
    assert len(reg.list_models().models) == 1
    drive.trash(root)
    with pytest.raises(RegistryError, match="is in the trash"):
        reg.list_models()
    with pytest.raises(RegistryError, match="no folder named 'CVAT_Models' is visible"):
        registry(drive).list_models()


def test_a_root_in_a_shared_drive(drive):
    shared = drive.add_shared_drive("ML")
    root = drive.add_folder("CVAT_Models", shared)
    add_model(drive, root, "a", manifest("a"), {"model.onnx": b"w"})
    reg = registry(drive)
    [record] = reg.list_models().models
    sink = io.BytesIO()
    reg.fetch(record.primary, sink)
    assert sink.getvalue() == b"w"


# ---------------------------------------------------------------- downloads


@pytest.fixture
def big(drive):
    root = drive.add_folder("CVAT_Models")
    data = bytes(range(256)) * 1200  # 307200 bytes: 5 chunks of 64 KiB
    add_model(drive, root, "big", manifest("big", extra_files=["empty.bin"]), {"model.onnx": data,
                                                                             "empty.bin": b""})
    return data


class Trigger(io.RawIOBase):
    """A sink that calls ``action`` once, after ``after`` writes (to fault a later chunk)."""

    def __init__(self, sink, after, action):
        self.sink, self.after, self.action, self.writes = sink, after, action, 0

    def writable(self):
        return True

    def write(self, data):
        n = self.sink.write(data)
        self.writes += 1
        if self.writes == self.after:
            self.action()
        return n


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_a_broken_chunk_resumes_from_the_last_good_byte(drive, big, tmp_path, fault):
    sleeps = []
    reg = registry(drive, chunk_size=64 << 10, sleeps=sleeps)
    record = reg.resolve("big")
    cache = ModelCache(tmp_path / "cache", 10 << 20)

    def inject():
        if fault == "truncate":
            drive.truncate_next(1000, **MEDIA)
        else:
            drive.reset_next(**MEDIA)

    drive.requests.clear()
    path = cache.get(record.primary, lambda f, sink: reg.fetch(f, Trigger(sink, 2, inject)))
    assert path.read_bytes() == big
    if fault == "truncate":  # 1000 bytes of the third chunk arrived: the next range starts after them
        rest = ["bytes=132072-197607", "bytes=197608-263143", "bytes=263144-307199"]
    else:  # reset before any byte of it: that chunk again
        rest = ["bytes=131072-196607", "bytes=196608-262143", "bytes=262144-307199"]
    assert drive.requests.ranges(**MEDIA) == ["bytes=0-65535", "bytes=65536-131071", "bytes=131072-196607"] + rest
    assert len(sleeps) == 1


def test_rate_limits_and_server_errors_are_retried_with_backoff(drive, big):
    sleeps = []
    reg = registry(drive, sleeps=sleeps, rand=lambda: 1.0)
    record = reg.resolve("big")
    drive.requests.clear()
    drive.fail_next(429, times=1, **MEDIA)
    drive.fail_next(403, "userRateLimitExceeded", times=1, **MEDIA)
    drive.fail_next(503, times=1, **MEDIA)
    sink = io.BytesIO()
    reg.fetch(record.primary, sink)
    assert sink.getvalue() == big
    assert drive.count(**MEDIA) == 4 and sleeps == [1.0, 2.0, 4.0]
    # metadata calls too
    drive.fail_next(429, times=1, path_prefix="/drive/v3/files")
    drive.fail_next(500, times=1, path_prefix="/drive/v3/files")
    assert len(reg.list_models().models) == 1
    # bounded: a 429 that never ends gives up after `retries` attempts
    drive.requests.clear()
    drive.fail_next(429, times=None, **MEDIA)
    with pytest.raises(RegistryError, match="429 rateLimitExceeded"):
        registry(drive, retries=3).fetch(record.primary, io.BytesIO())
    assert drive.count(**MEDIA) == 3


def test_429_then_success_through_the_cache(drive, big, tmp_path):
    reg = registry(drive)
    record = reg.resolve("big")
    drive.requests.clear()
    drive.fail_next(429, times=1, **MEDIA)
    path = ModelCache(tmp_path, 10 << 20).get(record.primary, reg.fetch)
    assert path.read_bytes() == big and drive.count(**MEDIA) == 2


@pytest.mark.parametrize("reason,setup,error", [
    ("downloadQuotaExceeded", lambda d, fid: d.set_download_quota(fid, downloads=0), RegistryError),
    ("cannotDownloadAbusiveFile", lambda d, fid: d.flag_abusive(fid), RegistryError),
    ("notFound", lambda d, fid: d.delete(fid), ModelNotFound),
])
def test_final_refusals_are_not_retried(drive, big, reason, setup, error):
    sleeps = []
    reg = registry(drive, sleeps=sleeps)
    record = reg.resolve("big")
    setup(drive, record.primary.locator)
    drive.requests.clear()
    with pytest.raises(error, match=rf"downloading model.onnx \(Drive file {record.primary.locator}\).*{reason}"):
        reg.fetch(record.primary, io.BytesIO())
    assert drive.count(**MEDIA) == 1 and sleeps == []


def test_a_google_doc_locator_is_not_downloadable(drive):
    doc = drive.add_google_doc("notes", None)
    with pytest.raises(RegistryError, match="fileNotDownloadable"):
        registry(drive).fetch(RemoteFile("notes", 10, doc, md5="0" * 32), io.BytesIO())


def test_a_zero_byte_file_is_read_without_a_range(drive, big, tmp_path):
    reg = registry(drive)
    record = reg.resolve("big")
    empty = next(f for f in record.files if f.path == "empty.bin")
    assert (empty.size, empty.md5) == (0, hashlib.md5(b"").hexdigest())
    drive.requests.clear()
    path = ModelCache(tmp_path, 1 << 20).get(empty, reg.fetch)
    assert path.read_bytes() == b""
    [rec] = drive.requests.filter(**MEDIA)
    assert rec.range is None and rec.status == 200


def test_html_instead_of_weights_is_refused(drive, big, tmp_path):
    reg = registry(drive)
    record = reg.resolve("big")
    page = b"<!DOCTYPE html><html><body>Google Drive can't scan this file for viruses.</body></html>"
    drive.inject("status", status=200, body=page, headers={"Content-Type": "text/html; charset=utf-8"}, **MEDIA)
    cache = ModelCache(tmp_path, 10 << 20)
    with pytest.raises(RegistryError, match="HTML page instead of the file's bytes"):
        cache.get(record.primary, reg.fetch)
    assert cache.keys() == []
    # bytes that are HTML, whatever the content type says
    root = next(i.id for i in drive.store.items.values() if i.name == "CVAT_Models")
    add_model(drive, root, "page", manifest("page"), {"model.onnx": b"\n  <html><head></head></html>"})
    with pytest.raises(RegistryError, match="HTML page"):
        reg.fetch(reg.resolve("page").primary, io.BytesIO())


def test_build_service_uses_the_static_document_and_a_timeout(drive):
    service = build_service(drive.root_url, Credentials(token="t"), timeout=7)
    assert service._baseUrl == drive.root_url + "drive/v3/"
    assert service._http.http.timeout == 7
    prod = build_service(None, Credentials(token="t"))  # no request made: static discovery
    assert prod._baseUrl == "https://www.googleapis.com/drive/v3/"
    assert prod._http.http.timeout == 60
    with pytest.raises(ValueError, match="credentials"):
        build_service(drive.root_url, None)
    assert len(drive.requests) == 0


def test_an_empty_or_of_parents_answer_is_asked_again_folder_by_folder(drive):
    """Drive sometimes answers ('a' in parents or 'b' in parents) with nothing (issuetracker
    149522397): the registry then asks each folder alone rather than report them all empty."""
    root = drive.add_folder("CVAT_Models")
    for name in ("a", "b", "c"):
        add_model(drive, root, name, manifest(name), {"model.onnx": b"w"})
    reg = registry(drive)
    http_ = reg._service._http
    plain = http_.request

    def request(uri, method="GET", body=None, headers=None, **kw):
        if "parents+or+" in uri:  # the batched children query: Drive "loses" it once
            drive.inject("status", status=200, body=b'{"files": []}', path_prefix="/drive/v3/files")
        return plain(uri, method=method, body=body, headers=headers, **kw)

    http_.request = request
    listing = reg.list_models()
    assert [m.folder for m in listing.models] == ["a", "b", "c"] and not listing.errors
    qs = [r.query.get("q", "") for r in drive.requests if r.path == "/drive/v3/files"]
    assert len(qs) == 6 and " or " in qs[2] and all(" or " not in q for q in qs[3:])


def test_retry_after_is_honoured(drive, big):
    sleeps = []
    reg = registry(drive, sleeps=sleeps, rand=lambda: 0.0)
    record = reg.resolve("big")
    drive.fail_next(429, times=1, headers={"Retry-After": "5"}, **MEDIA)
    reg.fetch(record.primary, io.BytesIO())
    assert sleeps == [5.0]


def test_an_expired_page_token_restarts_the_listing(drive):
    root = drive.add_folder("CVAT_Models")
    for i in range(4):
        add_model(drive, root, f"m{i}", manifest(f"m{i}"), {"model.onnx": b"w"})
    drive.set_page_pattern([1])
    reg = registry(drive)
    http_ = reg._service._http
    plain = http_.request
    expired = []

    def request(uri, method="GET", body=None, headers=None, **kw):
        if "pageToken=" in uri and not expired:
            expired.append(uri)
            drive.expire_page_tokens()
        return plain(uri, method=method, body=body, headers=headers, **kw)

    http_.request = request
    assert [m.folder for m in reg.list_models().models] == ["m0", "m1", "m2", "m3"]
    assert expired


def test_an_unreadable_entry_is_reported_and_the_rest_still_listed(drive):
    root = drive.add_folder("CVAT_Models")
    add_model(drive, root, "good", manifest("good"), {"model.onnx": b"w"})
    deep = drive.add_folder("deep", root)
    drive.add_file("model.json", deep, b"[" * 100000 + b"]" * 100000, "application/json")
    big_json = drive.add_folder("huge", root)
    drive.add_file("model.json", big_json, b" " * (2 << 20), "application/json")
    listing = registry(drive).list_models()
    assert [m.folder for m in listing.models] == ["good"]
    errors = {e.folder: e.error for e in listing.errors}
    assert set(errors) == {"deep", "huge"}
    assert "nested too deeply" in errors["deep"]
    assert errors["huge"] == "model.json is 2097152 bytes, more than the 1048576 allowed"


# ---------------------------------------------------------------- streamed downloads, exact-byte resume


class Recording(io.RawIOBase):
    """A sink that keeps the bytes and the size of every write (what was buffered at once)."""

    def __init__(self):
        self.buf, self.sizes = io.BytesIO(), []

    def writable(self):
        return True

    def write(self, data):
        self.sizes.append(len(data))
        return self.buf.write(data)


@pytest.fixture
def three_chunks(drive):
    """A model whose weights are three 128 KiB chunks (and a bit)."""
    root = drive.add_folder("CVAT_Models")
    data = hashlib.sha256(b"seed").digest() * 12300  # 393600 bytes
    add_model(drive, root, "big3", manifest("big3"), {"model.onnx": data})
    return data


class ResetAfter:
    """A media response whose connection is reset (ConnectionResetError from the socket)
    once ``after`` body bytes were read: the stand-in resets only before answering."""

    def __init__(self, resp, after):
        self.resp, self.left = resp, after

    def __getattr__(self, name):
        return getattr(self.resp, name)

    def read(self, amt=None):
        if self.left <= 0:
            raise ConnectionResetError(104, "Connection reset by peer")
        data = self.resp.read(min(amt, self.left) if amt is not None else self.left)
        self.left -= len(data)
        return data


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_a_broken_body_resumes_from_the_first_missing_byte(drive, three_chunks, tmp_path, monkeypatch, fault):
    from common.registry import gdrive

    chunk, read = 128 << 10, 16 << 10
    sleeps = []
    reg = registry(drive, chunk_size=chunk, read_size=read, sleeps=sleeps)
    record = reg.resolve("big3")
    drive.requests.clear()
    expected = ["bytes=0-131071", "bytes=100000-231071", "bytes=231072-362143", "bytes=362144-393599"]
    if fault == "truncate":  # the body ends (FIN) after 100000 bytes of the first chunk
        drive.truncate_next(after_bytes=100_000, **MEDIA)
    else:  # the connection resets after 100000 bytes, then the stand-in resets the resume request too
        plain, calls = gdrive._MediaHttp.get, []

        def get(self, url, headers):
            resp = plain(self, url, headers)
            calls.append(url)
            if len(calls) == 1:
                drive.reset_next(**MEDIA)
                return ResetAfter(resp, 100_000)
            return resp

        monkeypatch.setattr(gdrive._MediaHttp, "get", get)
        expected.insert(1, "bytes=100000-231071")
    recording = Recording()

    def fetch(f, sink):
        reg.fetch(f, recording)
        sink.write(recording.buf.getvalue())

    path = ModelCache(tmp_path / "cache", 10 << 20).get(record.primary, fetch)
    assert path.read_bytes() == three_chunks
    assert drive.requests.ranges(**MEDIA) == expected
    assert len(sleeps) == len(expected) - 3
    assert max(recording.sizes) <= read  # never more than one read held at once
    assert sum(recording.sizes) == len(three_chunks)  # and nothing written twice


class Refreshable(Credentials):
    """OAuth credentials whose refresh the test controls: each refresh hands out the next token."""

    def __init__(self, token, *fresh):
        super().__init__(token=token)
        self.fresh, self.refreshes = list(fresh), 0

    def refresh(self, request):
        self.refreshes += 1
        self.token = self.fresh.pop(0)


def test_a_401_on_media_refreshes_the_credentials_once(drive, three_chunks, tmp_path):
    drive.accept_tokens("good")
    creds = Refreshable("good", "good")
    sleeps = []
    reg = DriveRegistry(build_service(drive.root_url, creds, timeout=10), chunk_size=128 << 10,
                        sleep=sleeps.append)
    record = reg.resolve("big3")
    creds.token = "revoked"  # the server no longer takes it; the client still thinks it valid
    drive.requests.clear()
    path = ModelCache(tmp_path, 10 << 20).get(record.primary, reg.fetch)
    assert path.read_bytes() == three_chunks
    media = drive.requests.filter(**MEDIA)
    assert [(r.authorization, r.status, r.range) for r in media[:2]] == [
        ("Bearer revoked", 401, "bytes=0-131071"), ("Bearer good", 206, "bytes=0-131071")]
    assert all(r.authorization == "Bearer good" for r in media[1:]) and len(media) == 5
    assert creds.refreshes == 1 and sleeps == []

    # a refreshed token that is refused too: one refresh only, then Drive's answer
    creds.token, creds.fresh = "revoked", ["also-revoked", "never-asked"]
    drive.requests.clear()
    with pytest.raises(RegistryError, match=r"downloading model.onnx .*401 authError: the credentials were refused"):
        reg.fetch(record.primary, io.BytesIO())
    assert [r.authorization for r in drive.requests.filter(**MEDIA)] == ["Bearer revoked", "Bearer also-revoked"]
    assert creds.refreshes == 2 and sleeps == []


def test_an_api_key_download_streams_with_key_in_the_url(drive, three_chunks):
    item = next(i for i in drive.store.items.values() if i.name == "model.onnx")
    drive.share_with_anyone(item.id)
    drive.accept_api_keys("AIza-k")
    reg = DriveRegistry(build_service(drive.root_url, None, api_key="AIza-k", timeout=10), chunk_size=128 << 10)
    sink = io.BytesIO()
    reg.fetch(RemoteFile("model.onnx", len(three_chunks), item.id, md5="0" * 32), sink)
    assert sink.getvalue() == three_chunks
    media = drive.requests.filter(**MEDIA)
    assert len(media) == 4 and all(r.query.get("key") == "AIza-k" and r.authorization is None for r in media)


def test_a_download_goes_through_the_environments_proxy(drive, three_chunks, monkeypatch):
    import select
    import socket
    import socketserver
    import threading

    tunnels: list[str] = []

    class Connect(socketserver.StreamRequestHandler):
        """A minimal CONNECT proxy: tunnel the bytes both ways."""

        def handle(self):
            target = self.rfile.readline().split()[1].decode()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            tunnels.append(target)
            host, port = target.rsplit(":", 1)
            upstream = socket.create_connection((host, int(port)))
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            ends = [self.connection, upstream]
            while True:
                ready, _, _ = select.select(ends, [], [], 5)
                if not ready:
                    break
                for end in ready:
                    data = end.recv(65536)
                    if not data:
                        upstream.close()
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Connect)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        item = next(i for i in drive.store.items.values() if i.name == "model.onnx")
        reg = DriveRegistry(build_service(drive.root_url, Credentials(token="test-token"), timeout=10),
                            chunk_size=128 << 10)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.setenv(name, "")
        monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{server.server_address[1]}")
        sink = io.BytesIO()
        reg.fetch(RemoteFile("model.onnx", len(three_chunks), item.id, md5="0" * 32), sink)
        assert sink.getvalue() == three_chunks
        assert tunnels == [f"127.0.0.1:{drive.port}"]  # one kept-alive tunnel for all four ranges
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- shared drives


def test_a_root_in_a_shared_drive_is_listed_with_corpora_drive(drive, tmp_path):
    shared = drive.add_shared_drive("ML")
    root = drive.add_folder("CVAT_Models", None, drive_id=shared)
    add_model(drive, root, "a", manifest("a", extra_files=["extra"]), {"model.onnx": b"weights a"})
    extra = drive.add_folder("extra", next(i.id for i in drive.store.items.values()
                                           if i.name == "a" and i.parent == root))
    drive.add_file("labels.txt", extra, b"x\ny\n")
    add_model(drive, root, "b", manifest("b"), {"model.onnx": b"weights b"})
    mine = drive.add_folder("mine")  # a model in My Drive, reached through a shortcut in the shared root
    add_model(drive, mine, "c", manifest("c"), {"model.onnx": b"weights c"})
    drive.add_shortcut("c", root, next(i.id for i in drive.store.items.values() if i.name == "c" and i.parent == mine))

    for reg in (registry(drive), registry(drive, root_id=root)):  # by name, and by id
        drive.requests.clear()
        listing = reg.list_models()
        assert [m.folder for m in listing.models] == ["a", "b", "c"] and not listing.errors
        a = next(m for m in listing.models if m.folder == "a")
        assert [f.path for f in a.files] == ["model.onnx", "extra/labels.txt"]
        cache = ModelCache(tmp_path / reg._root_label.replace("'", ""), 1 << 20)
        assert cache.get(a.primary, reg.fetch).read_bytes() == b"weights a"
        assert cache.get(a.files[1], reg.fetch).read_bytes() == b"x\ny\n"
        assert reg.resolve("c").primary.size == len(b"weights c")
        lists = [r for r in drive.requests if r.path == "/drive/v3/files" and "in parents" in r.query.get("q", "")]
        assert lists
        for r in lists:
            assert r.query["includeItemsFromAllDrives"] == "true" and r.query["supportsAllDrives"] == "true"
        in_shared = [r for r in lists if r.query.get("corpora") == "drive"]
        assert all(r.query["driveId"] == shared for r in in_shared)
        # the root's listing, and its model folders' (a, b; and a's extra/), are in the shared drive
        assert any(f"'{root}' in parents" in r.query["q"] for r in in_shared)
        assert any("extra" not in r.query["q"] and " or " in r.query["q"] for r in in_shared)
        # the shortcut's target (drive unknown) is asked across all drives; nothing else is
        others = [r for r in lists if r.query.get("corpora") != "drive"]
        assert others and all(r.query.get("corpora") == "allDrives" and "driveId" not in r.query for r in others)


def test_a_root_in_my_drive_keeps_the_default_corpora(drive, seeded):
    registry(drive).list_models()
    lists = [r for r in drive.requests if r.path == "/drive/v3/files" and "in parents" in r.query.get("q", "")]
    assert lists and all("corpora" not in r.query and "driveId" not in r.query for r in lists)


def test_empty_folders_cost_one_request_once_not_on_every_listing(drive):
    root = drive.add_folder("CVAT_Models")
    for i in range(45):  # more than one batch of empty extra folders
        fid = add_model(drive, root, f"m{i:02d}", manifest(f"m{i:02d}", extra_files=["dir"]), {"model.onnx": b"w"})
        drive.add_folder("dir", fid)
    reg = registry(drive)
    first = reg.list_models()
    assert len(first.models) == 45 and not first.errors
    drive.requests.clear()
    again = reg.list_models()
    assert [m.folder for m in again.models] == [m.folder for m in first.models]
    # the folder page, two batched child queries for 45 models, two for their 45 empty dirs
    assert len(drive.requests) == 5


def test_an_incomplete_search_is_an_error_not_a_short_listing(drive):
    root = drive.add_folder("CVAT_Models")
    add_model(drive, root, "a", manifest("a"), {"model.onnx": b"w"})
    drive.incomplete_search = True
    with pytest.raises(RegistryError, match="search was incomplete"):
        registry(drive).list_models()
