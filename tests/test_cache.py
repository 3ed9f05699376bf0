"""Tests of common.cache: real files, real flock, real processes (spawn)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import random
import signal
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.cache import ModelCache, Snapshot, parse_size
from common.errors import CacheError, IntegrityError, RegistryError
from common.manifest import DecoderSpec, InputSpec, ModelManifest, OutputSpec, RuntimeSpec
from common.registry import ModelRecord, RemoteFile

KiB = 1024
SZ = 256 * KiB  # the unit blob size of most tests


# ------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class DirFetch:
    """A registry stand-in: serves ``file.locator`` from folder ``src``.

    Picklable, so spawned processes can use it. Each call appends one line to
    ``count`` (if given) before sleeping ``delay`` seconds and streaming.
    """

    src: str
    count: str | None = None
    delay: float = 0.0

    def __call__(self, file: RemoteFile, sink) -> None:
        if self.count:
            with open(self.count, "a") as out:
                out.write(f"{os.getpid()} {file.path}\n")
        if self.delay:
            time.sleep(self.delay)
        with open(os.path.join(self.src, file.locator), "rb") as f:
            while chunk := f.read(64 * KiB):
                sink.write(chunk)


@dataclass(frozen=True)
class HangFetch:
    """Writes the first half of the file, drops a marker file, then hangs."""

    src: str
    marker: str

    def __call__(self, file: RemoteFile, sink) -> None:
        data = Path(self.src, file.locator).read_bytes()
        sink.write(data[: len(data) // 2])
        Path(self.marker).touch()
        time.sleep(60)


def fetch_count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


class Source:
    """Generated model files in a folder, with their RemoteFile descriptions."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, bytes] = {}

    def add(self, path: str, size: int, *, seed: int | None = None, md5=True, sha256=True) -> RemoteFile:
        data = random.Random(seed if seed is not None else path).randbytes(size)
        locator = f"{len(self.data)}-{path.replace('/', '_')}"
        (self.folder / locator).write_bytes(data)
        self.data[locator] = data
        return RemoteFile(
            path=path,
            size=size,
            locator=locator,
            md5=hashlib.md5(data).hexdigest() if md5 else None,
            sha256=hashlib.sha256(data).hexdigest() if sha256 else None,
        )

    def bytes_of(self, file: RemoteFile) -> bytes:
        return self.data[file.locator]


def make_record(folder: str, version: str, files: list[RemoteFile]) -> ModelRecord:
    raw = {"name": folder, "version": version, "file_name": files[0].path,
           "labels": [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]}  # fmt: skip
    manifest = ModelManifest(
        name=folder,
        version=version,
        framework="openvino",
        type="detector",
        file_name=files[0].path,
        display_name=folder,
        description="test model",
        input=InputSpec(),
        output=OutputSpec(decoder=DecoderSpec(name="yolo")),
        runtime=RuntimeSpec(name="openvino"),
        raw=raw,
    )
    return ModelRecord(folder=folder, manifest=manifest, files=tuple(files))


def tmp_entries(cache: ModelCache) -> list[str]:
    return sorted(os.listdir(cache.tmp))


# ------------------------------------------------- child processes (spawn)


def child_get(root, limit, file, fetch, barrier) -> None:
    cache = ModelCache(root, limit)
    if barrier is not None:
        barrier.wait(timeout=30)
    path = cache.get(file, fetch)
    if hashlib.sha256(path.read_bytes()).hexdigest() != file.sha256:
        sys.exit(3)


def child_hold(root, limit, record, fetch, ready, release) -> None:
    cache = ModelCache(root, limit)
    with cache.checkout(record, fetch):
        ready.set()
        release.wait(timeout=60)


@pytest.fixture
def ctx():
    """The spawn context; kills any child a failing test left running."""
    context = multiprocessing.get_context("spawn")
    yield context
    for child in multiprocessing.active_children():
        child.kill()
        child.join(5)


@pytest.fixture
def src(tmp_path) -> Source:
    return Source(tmp_path / "registry")


# ----------------------------------------------------------------- parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1073741824", 1073741824),
        ("0", 0),
        ("10GiB", 10 * 2**30),
        ("10 gib", 10 * 2**30),
        ("500MB", 500 * 10**6),
        ("500M", 500 * 10**6),
        ("2Gi", 2 * 2**30),
        ("1.5GiB", 3 * 2**29),
        ("64KiB", 65536),
        ("100 B", 100),
        ("1TB", 10**12),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "ten", "10 parsecs", "1e9", "1,000"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


# ------------------------------------------------------------------ get


def test_get_downloads_verifies_and_reuses(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 4 * SZ)
    file = src.add("model.onnx", SZ)
    md5_only = src.add("other.onnx", 3 * KiB, sha256=False)
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))

    path = cache.get(file, fetch)
    assert path == cache.blobs / f"sha256-{file.sha256}"
    assert path.read_bytes() == src.bytes_of(file)
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert cache.get(file, fetch) == path
    assert fetch_count(count) == 1

    assert cache.get(md5_only, fetch).name == f"md5-{md5_only.md5}"
    assert fetch_count(count) == 2
    assert sorted(cache.keys()) == sorted([file.content_key, md5_only.content_key])
    assert cache.total_bytes() == SZ + 3 * KiB
    assert tmp_entries(cache) == []
    # a second cache object on the same folder sees the same blobs
    assert ModelCache(tmp_path / "cache", 4 * SZ).keys() == cache.keys()


def test_lru_eviction_order(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 3 * SZ + SZ // 2)
    a, b, c, d = (src.add(f"{n}.bin", SZ) for n in "abcd")
    fetch = DirFetch(str(src.folder))
    for f in (a, b, c):
        cache.get(f, fetch)
    cache.get(a, fetch)  # a read: b is now the least recently used
    cache.get(d, fetch)  # 4 blobs do not fit: exactly one goes, and it is b
    assert cache.keys() == [c.content_key, a.content_key, d.content_key]
    assert not (cache.blobs / b.content_key).exists()
    assert cache.total_bytes() == 3 * SZ

    assert cache.evict(need_bytes=2 * SZ) == [c.content_key, a.content_key]
    assert cache.keys() == [d.content_key]
    assert cache.evict() == []  # already within the limit


def test_file_larger_than_cache_is_refused(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 2 * SZ, limit_setting="MODEL_CACHE_SIZE")
    big = src.add("huge.onnx", 2 * SZ + 1)
    count = tmp_path / "count"
    with pytest.raises(CacheError) as info:
        cache.get(big, DirFetch(str(src.folder), str(count)))
    message = str(info.value)
    assert "huge.onnx" in message and str(2 * SZ + 1) in message and str(2 * SZ) in message
    assert "MODEL_CACHE_SIZE" in message
    assert fetch_count(count) == 0
    assert cache.keys() == [] and tmp_entries(cache) == []


def _bad(file: RemoteFile, **changes) -> RemoteFile:
    return RemoteFile(**{**file.__dict__, **changes})


@pytest.mark.parametrize(
    ("case", "pattern"),
    [
        ("md5", r"md5 mismatch: expected 0{32}, got [0-9a-f]{32}"),
        ("sha256", r"sha256 mismatch: expected f{64}, got [0-9a-f]{64}"),
        ("md5-beside-good-sha256", r"md5 mismatch: expected 0{32}, got"),
        ("size-short", r"size mismatch: expected 65537 bytes, got 65536"),
        ("size-long", r"size mismatch: expected 65535 bytes, got more"),
    ],
)
def test_corrupted_download_is_refused(tmp_path, src, case, pattern):
    cache = ModelCache(tmp_path / "cache", 4 * SZ)
    good = src.add("model.onnx", 64 * KiB)
    bad = {
        "md5": _bad(good, md5="0" * 32, sha256=None),
        "sha256": _bad(good, sha256="f" * 64),
        "md5-beside-good-sha256": _bad(good, md5="0" * 32),
        "size-short": _bad(good, size=64 * KiB + 1),
        "size-long": _bad(good, size=64 * KiB - 1),
    }[case]
    fetch = DirFetch(str(src.folder))
    with pytest.raises(IntegrityError, match=pattern):
        cache.get(bad, fetch)
    assert cache.keys() == [] and cache.total_bytes() == 0
    assert tmp_entries(cache) == []
    # the correct description of the same bytes is admitted afterwards
    assert cache.get(good, fetch).read_bytes() == src.bytes_of(good)


def test_overflow_is_an_integrity_error_even_if_fetch_wraps_it(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 4 * SZ)
    good = src.add("model.onnx", 64 * KiB)
    inner = DirFetch(str(src.folder))

    def wrapping_fetch(file, sink):
        try:
            inner(file, sink)
        except Exception as exc:
            raise RegistryError(f"download failed: {exc}") from exc

    with pytest.raises(IntegrityError, match="expected 1000 bytes, got more"):
        cache.get(_bad(good, size=1000), wrapping_fetch)
    assert cache.keys() == [] and tmp_entries(cache) == []


def test_fetch_that_raises_leaves_nothing(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 4 * SZ)
    file = src.add("model.onnx", SZ)

    def broken_fetch(f, sink):
        sink.write(src.bytes_of(f)[: SZ // 2])
        raise RegistryError("connection reset")

    with pytest.raises(RegistryError, match="connection reset"):
        cache.get(file, broken_fetch)
    assert cache.keys() == [] and tmp_entries(cache) == []
    assert cache.get(file, DirFetch(str(src.folder))).read_bytes() == src.bytes_of(file)


def test_bad_record_paths_are_refused(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 4 * SZ)
    fetch = DirFetch(str(src.folder))
    f = src.add("model.onnx", KiB)
    for bad in ("../escape.bin", "/abs.bin", "a//b.bin", "./x.bin"):
        with pytest.raises(CacheError, match="bad relative file path"):
            cache.checkout(make_record("m", "1.0.0", [f, _bad(f, path=bad)]), fetch)
    with pytest.raises(CacheError, match="both a file and a folder"):
        cache.checkout(make_record("m", "1.0.0", [_bad(f, path="a"), _bad(f, path="a/b")]), fetch)
    with pytest.raises(CacheError, match="cannot name a snapshot folder"):
        cache.checkout(make_record("../m", "1.0.0", [f]), fetch)
    assert cache.keys() == []


# ------------------------------------------------------------ processes


@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_gets_fetch_once(tmp_path, src, ctx, processes):
    root = str(tmp_path / "cache")
    file = src.add("model.onnx", 2 * SZ)
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count), delay=0.5)
    barrier = ctx.Barrier(processes)
    children = [
        ctx.Process(target=child_get, args=(root, 8 * SZ, file, fetch, barrier))
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0] * processes
    assert fetch_count(count) == 1
    cache = ModelCache(root, 8 * SZ)
    assert cache.keys() == [file.content_key] and tmp_entries(cache) == []


def test_snapshot_held_by_live_process_survives_eviction(tmp_path, src, ctx, caplog):
    root = tmp_path / "cache"
    limit = 4 * SZ
    xml, weights = src.add("model.xml", SZ // 4), src.add("model.bin", SZ)
    record = make_record("detector", "1.0.0", [xml, weights])
    fetch = DirFetch(str(src.folder))
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=child_hold, args=(str(root), limit, record, fetch, ready, release))
    holder.start()
    assert ready.wait(30), "the holder did not check out the model"

    cache = ModelCache(root, limit)
    pinned = {xml.content_key, weights.content_key}
    assert set(cache.keys()) == pinned
    u1, u2 = src.add("u1.bin", SZ), src.add("u2.bin", SZ)
    cache.get(u1, fetch)
    cache.get(u2, fetch)
    big = src.add("big.bin", 3 * SZ)
    with caplog.at_level(logging.WARNING, logger="common.cache"):
        cache.get(big, fetch)  # 1.25 + 3 units > 4: only pinned blobs stand in the way
    assert set(cache.keys()) == pinned | {big.content_key}
    assert any("in use" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)

    assert cache.evict() == [big.content_key]  # over the limit: the unpinned one goes
    assert set(cache.keys()) == pinned
    snapshot_dirs = list((root / "snapshots" / "detector").iterdir())
    assert len(snapshot_dirs) == 1
    assert (snapshot_dirs[0] / "model.bin").read_bytes() == src.bytes_of(weights)

    release.set()
    holder.join(30)
    assert holder.exitcode == 0
    assert sorted(cache.evict(need_bytes=limit)) == sorted(pinned)
    assert cache.keys() == []
    assert not snapshot_dirs[0].exists()  # its links broke, eviction removed it


def test_killed_downloader(tmp_path, src, ctx):
    root = tmp_path / "cache"
    limit = 8 * SZ
    file = src.add("model.onnx", 4 * SZ)
    marker = tmp_path / "started"
    hanger = ctx.Process(
        target=child_get, args=(str(root), limit, file, HangFetch(str(src.folder), str(marker)), None)
    )
    hanger.start()
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and hanger.is_alive(), "the downloader never started"
        time.sleep(0.02)
    cache = ModelCache(root, limit)  # opening while the writer lives keeps its temp file
    parts = [n for n in tmp_entries(cache) if n.endswith(".part")]
    assert len(parts) == 1

    count = tmp_path / "count"
    opened = ctx.Barrier(2)  # the waiter has opened the cache while the writer still lives
    waiter = ctx.Process(
        target=child_get, args=(str(root), limit, file, DirFetch(str(src.folder), str(count)), opened)
    )
    waiter.start()
    opened.wait(timeout=60)
    time.sleep(0.5)
    assert waiter.is_alive() and fetch_count(count) == 0  # blocked behind the hung download

    os.kill(hanger.pid, signal.SIGKILL)
    hanger.join(10)
    waiter.join(30)
    assert waiter.exitcode == 0  # the kernel dropped the dead writer's lock
    assert fetch_count(count) == 1
    assert tmp_entries(cache) == parts  # the dead writer's half file is still there

    reopened = ModelCache(root, limit)
    assert tmp_entries(reopened) == []
    assert reopened.get(file, DirFetch(str(src.folder), str(count))).read_bytes() == src.bytes_of(file)
    assert fetch_count(count) == 1
    assert reopened.keys() == [file.content_key]


def test_open_removes_only_dead_snapshot_builds(tmp_path):
    cache = ModelCache(tmp_path / "cache", SZ)
    for stem in ("snapshot.dead", "snapshot.live"):
        (cache.tmp / f"{stem}.lock").touch()
        (cache.tmp / f"{stem}.d" / "sub").mkdir(parents=True)
    (cache.tmp / "snapshot.orphan.d").mkdir()
    live = os.open(cache.tmp / "snapshot.live.lock", os.O_RDONLY)
    try:
        fcntl.flock(live, fcntl.LOCK_EX)
        ModelCache(cache.root, SZ)
        assert tmp_entries(cache) == ["snapshot.live.d", "snapshot.live.lock"]
    finally:
        os.close(live)
    ModelCache(cache.root, SZ)
    assert tmp_entries(cache) == []


# ------------------------------------------------------------ snapshots


def test_snapshot_layout(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 16 * SZ)
    files = [
        src.add("saved_model/saved_model.pb", 20 * KiB),
        src.add("saved_model/variables/variables.index", 3 * KiB),
        src.add("saved_model/variables/variables.data-00000-of-00001", SZ),
        src.add("model.xml", 5 * KiB),
        src.add("same-bytes.bin", 5 * KiB, seed="model.xml"),  # two paths, one blob
    ]
    record = make_record("my-model", "2.1.0", files)
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))

    with cache.checkout(record, fetch) as snap:
        assert isinstance(snap, Snapshot)
        assert snap.path.parent == cache.snapshots / "my-model"
        version, digest = snap.path.name.rsplit("-", 1)
        assert version == "2.1.0" and len(digest) == 12 and int(digest, 16) >= 0
        for f in files:
            link = snap.file(f.path)
            assert link == snap.path / f.path and link.is_symlink()
            target = os.readlink(link)
            assert not os.path.isabs(target)
            assert (link.parent / target).resolve() == (cache.blobs / f.content_key).resolve()
            assert link.read_bytes() == src.bytes_of(f)
        assert snap.file("saved_model").is_dir()
        assert json.loads(snap.file("model.json").read_text()) == dict(record.manifest.raw)
        with pytest.raises(KeyError):
            snap.file("missing.bin")
        assert fetch_count(count) == 4  # five paths, four distinct contents
        assert cache.evict(need_bytes=16 * SZ) == []  # all pinned by this process
        with cache.checkout(record, fetch) as again:
            assert again.path == snap.path  # the intact folder is reused
        assert fetch_count(count) == 4
    assert snap.released

    other = make_record("my-model", "2.1.0", files[:2])
    with cache.checkout(other, fetch) as snap2:
        assert snap2.path != snap.path  # other files, other digest
    assert sorted(os.listdir(cache.snapshots / "my-model")) == sorted([snap.path.name, snap2.path.name])
    assert tmp_entries(cache) == []


def test_snapshot_with_evicted_blob_is_rebuilt(tmp_path, src):
    cache = ModelCache(tmp_path / "cache", 8 * SZ)
    xml, weights = src.add("model.xml", 4 * KiB), src.add("model.bin", SZ)
    record = make_record("det", "1.0.0", [xml, weights])
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))
    with cache.checkout(record, fetch) as snap:
        path = snap.path
    # a crash between a blob's eviction and its snapshot's removal leaves a broken link
    os.unlink(cache.blobs / weights.content_key)
    assert not (path / "model.bin").exists()
    with cache.checkout(record, fetch) as snap:
        assert snap.path == path
        assert snap.file("model.bin").read_bytes() == src.bytes_of(weights)
    assert fetch_count(count) == 3
    # an eviction interrupted mid-removal leaves a partial folder: it is laid out again
    os.unlink(path / "model.xml")
    os.unlink(path / "model.json")
    with cache.checkout(record, fetch) as snap:
        assert snap.path == path
        assert snap.file("model.xml").read_bytes() == src.bytes_of(xml)
        assert json.loads(snap.file("model.json").read_text()) == dict(record.manifest.raw)
    assert fetch_count(count) == 3


def test_blob_evicted_between_open_and_lock(tmp_path, src):
    """A reader that opened a blob the evictor then unlinked must notice and refetch."""
    cache = ModelCache(tmp_path / "cache", 8 * SZ)
    weights = src.add("model.bin", SZ)
    record = make_record("det", "1.0.0", [weights])
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))
    blob = cache.get(weights, fetch)

    evictor = os.open(blob, os.O_RDONLY)  # play an evictor holding the blob's lock
    fcntl.flock(evictor, fcntl.LOCK_EX)
    result: dict = {}

    def reader():
        try:
            result["snap"] = cache.checkout(record, fetch)
        except BaseException as exc:  # reported by the assertions below
            result["error"] = exc

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # opened the blob, waiting for LOCK_SH
    os.unlink(blob)
    os.close(evictor)
    thread.join(10)
    assert "error" not in result, result.get("error")
    with result["snap"] as snap:
        assert fetch_count(count) == 2  # fetched again after the eviction
        assert snap.file("model.bin").read_bytes() == src.bytes_of(weights)
        assert cache.evict(need_bytes=8 * SZ) == []  # the pin is on the live blob
    assert cache.evict(need_bytes=8 * SZ) == [weights.content_key]


# ------------------------------------------------------------ verification


def corrupt_in_place(blob: Path, *, truncate: bool = False) -> None:
    """Edit an admitted (0444) blob the way a person or a bad disk would: same inode."""
    size = blob.stat().st_size
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:
        if truncate:
            f.truncate(size - 1)
        else:
            f.seek(size // 2)
            byte = f.read(1)
            f.seek(size // 2)
            f.write(bytes([byte[0] ^ 0xFF]))
    os.chmod(blob, 0o444)
    assert blob.stat().st_size == size - truncate


class HashCounter:
    """Wraps ``common.cache._hash_blob``, counting its calls."""

    def __init__(self, monkeypatch):
        import common.cache as module

        self.calls = 0
        real = module._hash_blob

        def counting(fd, algorithm):
            self.calls += 1
            return real(fd, algorithm)

        monkeypatch.setattr(module, "_hash_blob", counting)


@pytest.mark.parametrize(
    ("edit", "sha256", "via"),
    [("flip", True, "checkout"), ("flip", False, "get"), ("truncate", True, "checkout")],
)
def test_blob_corrupted_in_place_is_refetched(tmp_path, src, caplog, edit, sha256, via):
    root = tmp_path / "cache"
    xml = src.add("model.xml", 4 * KiB)
    weights = src.add("model.bin", SZ, sha256=sha256)
    record = make_record("det", "1.0.0", [xml, weights])
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))
    with ModelCache(root, 8 * SZ).checkout(record, fetch):
        pass
    assert fetch_count(count) == 2
    blob = root / "blobs" / weights.content_key
    corrupt_in_place(blob, truncate=edit == "truncate")

    cache = ModelCache(root, 8 * SZ)  # a new worker: nothing verified yet
    with caplog.at_level(logging.WARNING, logger="common.cache"):
        if via == "get":
            assert cache.get(weights, fetch).read_bytes() == src.bytes_of(weights)
        else:
            with cache.checkout(record, fetch) as snap:
                assert snap.file("model.bin").read_bytes() == src.bytes_of(weights)
                assert snap.file("model.xml").read_bytes() == src.bytes_of(xml)
    assert fetch_count(count) == 3  # the corrupt blob only, fetched again once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(blob) in m and "fetching it again" in m for m in warnings), warnings
    assert any(weights.content_key in m and "model.bin" in m for m in warnings), warnings
    assert blob.read_bytes() == src.bytes_of(weights)
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert tmp_entries(cache) == []
    with ModelCache(root, 8 * SZ).checkout(record, fetch):  # healed: served as is
        pass
    assert fetch_count(count) == 3


def test_blob_is_hashed_once_per_cache_object(tmp_path, src, monkeypatch):
    root = tmp_path / "cache"
    files = [src.add("model.xml", 4 * KiB), src.add("model.bin", SZ, sha256=False)]
    record = make_record("det", "1.0.0", files)
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))
    hashes = HashCounter(monkeypatch)

    cache = ModelCache(root, 8 * SZ)
    for _ in range(2):
        with cache.checkout(record, fetch):
            pass
    assert cache.get(files[1], fetch).exists()
    assert fetch_count(count) == 2
    assert hashes.calls == 0  # downloaded here: hashed while written, not read back

    worker = ModelCache(root, 8 * SZ)  # another worker finds them cached
    for _ in range(3):
        with worker.checkout(record, fetch):
            pass
        assert worker.get(files[0], fetch).exists()
    assert hashes.calls == 2  # each blob once
    assert fetch_count(count) == 2


def test_corrupt_blob_pinned_by_live_process_is_not_removed(tmp_path, src, ctx):
    root = tmp_path / "cache"
    weights = src.add("model.bin", SZ)
    record = make_record("det", "1.0.0", [weights])
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=child_hold, args=(str(root), 8 * SZ, record, fetch, ready, release))
    holder.start()
    assert ready.wait(30), "the holder did not check out the model"
    blob = root / "blobs" / weights.content_key
    corrupt_in_place(blob)
    corrupt = blob.read_bytes()
    inode = blob.stat().st_ino

    cache = ModelCache(root, 8 * SZ)
    with pytest.raises(IntegrityError) as info:
        cache.checkout(record, fetch)
    message = str(info.value)
    assert weights.content_key in message and "model.bin" in message
    assert "does not match" in message and "using it" in message
    assert blob.stat().st_ino == inode and blob.read_bytes() == corrupt  # left alone
    assert fetch_count(count) == 1
    assert tmp_entries(cache) == []

    release.set()
    holder.join(30)
    assert holder.exitcode == 0
    with cache.checkout(record, fetch) as snap:  # the user is gone: now it heals
        assert snap.file("model.bin").read_bytes() == src.bytes_of(weights)
    assert fetch_count(count) == 2


def test_concurrent_workers_heal_a_corrupt_blob_once(tmp_path, src, ctx):
    root = tmp_path / "cache"
    file = src.add("model.onnx", 2 * SZ)
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count), delay=0.1)
    ModelCache(root, 8 * SZ).get(file, fetch)
    corrupt_in_place(root / "blobs" / file.content_key)
    barrier = ctx.Barrier(2)
    children = [
        ctx.Process(target=child_get, args=(str(root), 8 * SZ, file, fetch, barrier))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(30)
    assert [child.exitcode for child in children] == [0, 0]  # both read the right bytes
    assert fetch_count(count) == 2  # the first download and one repair


def test_oversized_manifest_is_refused(tmp_path, src):
    from common.cache import MAX_MANIFEST_BYTES

    cache = ModelCache(tmp_path / "cache", 8 * SZ)
    count = tmp_path / "count"
    fetch = DirFetch(str(src.folder), str(count))
    record = make_record("det", "1.0.0", [src.add("model.onnx", KiB)])
    record.manifest.raw["notes"] = "x" * MAX_MANIFEST_BYTES
    with pytest.raises(CacheError, match=r"model\.json is 1\.0 MiB, over the 1\.0 MiB"):
        cache.checkout(record, fetch)
    assert fetch_count(count) == 0 and cache.keys() == []
    assert list(cache.snapshots.iterdir()) == []
