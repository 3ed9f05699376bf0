"""``make bench``, Drive part: what the Google Drive registry costs, against the Drive v3
stand-in (tests/drive_standin) on loopback. All figures are measured in this run.

* Listing: Drive requests per ``list_models`` for 10, 100 and 1000 model folders (each
  a model.json and a tiny weights file): the first listing, a repeat with nothing
  changed, and a repeat after one model.json changed, against the naive walk (2N+1:
  the root's children, then one model.json query and one weights query per folder).
  The client and the stand-in share this process: only requests are counted.
* Download of a 1 GiB file (random bytes on disk, served by ``add_file_from_path``):
  the stand-in runs in a process of its own, and every client run in a fresh one, so
  that the client's time, CPU and memory are its own.

  - raw: one plain ``http.client`` GET of the whole file (same Authorization header),
    read into one reused 1 MiB buffer and dropped: what the stand-in can serve;
  - fetch: ``DriveRegistry.fetch`` (8 MiB ranged requests) into a sink that drops the
    bytes: the download loop alone;
  - cache: ``ModelCache.get(file, registry.fetch)`` into an empty cache directory:
    fetch plus hashing (sha256 and md5), the disk write and its fsync; the blob is
    then checked (size and md5, outside the timing);
  - local: the same ``ModelCache.get`` with a fetch that copies the file from disk
    (1 MiB reads, no Drive): the cache's own work, the baseline of the cache row.

  Throughput is the median over the runs (interleaved, so that the machine's ups and
  downs hit every kind alike), as a ratio of the raw transfer's median. Memory is the
  peak growth of the resident set over what it was just before the transfer (the
  kernel's high-water mark, reset first through /proc/self/clear_refs where Linux
  allows it), worst of the runs, checked against the target: at most 64 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("bench")

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
LISTING_SIZES = (10, 100, 1000)
FILE_SIZE = 1 << 30
BLOCK = 8 << 20  # bytes of os.urandom written at a time
READ_SIZE = 1 << 20  # the raw client's buffer: the registry's own read size
MEMORY_TARGET = 64 << 20
KINDS = ("raw", "fetch", "local", "cache")
MiB = 1 << 20


def loopback_only() -> None:
    """Never send loopback traffic through a proxy; never let google-auth probe a metadata server."""
    os.environ.setdefault("NO_GCE_CHECK", "true")
    for var in ("no_proxy", "NO_PROXY"):
        current = os.environ.get(var, "")
        if "127.0.0.1" not in current:
            os.environ[var] = ",".join(p for p in (current, "127.0.0.1", "localhost") if p)


def manifest(name: str, version: str = "1.0.0") -> bytes:
    """A small valid detector model.json."""
    return json.dumps({"name": name, "version": version, "framework": "onnx", "type": "detector",
                       "file_name": "model.onnx", "labels": ["a", "b"],
                       "input": {"shape": [1, 3, 32, 32]}}).encode()


def drive_registry(root_url: str, **kwargs: Any) -> Any:
    """The production service factory and registry, authorised with a bearer token."""
    from google.oauth2.credentials import Credentials

    from common.registry.gdrive import DriveRegistry, build_service

    return DriveRegistry(build_service(root_url, Credentials(token=TOKEN), timeout=60), **kwargs)


# ------------------------------------------------------------------ listing

def listing_requests(n: int) -> dict[str, int]:
    """Requests (and how many of them alt=media) of each listing of ``n`` model folders."""
    from tests.drive_standin import DriveStandIn

    with DriveStandIn() as drive:
        drive.accept_tokens(TOKEN)
        root = drive.add_folder("CVAT_Models")
        manifests = []
        for i in range(n):
            folder = drive.add_folder(f"m{i:04d}", root)
            manifests.append(drive.add_file("model.json", folder, manifest(f"m{i:04d}"), "application/json"))
            drive.add_file("model.onnx", folder, b"w%d" % i)
        registry = drive_registry(drive.root_url)

        def listing(what: str, version_of_last: str = "1.0.0") -> tuple[int, int]:
            drive.requests.clear()
            found = registry.list_models()
            versions = {m.folder: m.version for m in found.models}
            if len(found.models) != n or found.errors or versions[f"m{n - 1:04d}"] != version_of_last:
                raise RuntimeError(f"{what} listing of {n} models went wrong: {len(found.models)} models, "
                                   f"errors {found.errors[:3]}")
            return len(drive.requests), drive.count(alt="media")

        figures = {}
        figures["first"], figures["first_media"] = listing("first")
        figures["unchanged"], figures["unchanged_media"] = listing("unchanged")
        drive.update_file(manifests[-1], manifest(f"m{n - 1:04d}", "1.0.1"))
        figures["changed"], figures["changed_media"] = listing("one-changed", "1.0.1")
        return figures


# ------------------------------------------------------------------ memory (this process)

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def rss_now() -> int:
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else _maxrss()


def reset_peak() -> bool:
    """Reset the resident set's high-water mark (Linux >= 4.0); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    kib = _status_kib("VmHWM")
    return kib * 1024 if kib is not None else _maxrss()


class NullSink:
    """A write-only sink that drops what it is given, counting it."""

    def __init__(self) -> None:
        self.count = 0

    def write(self, data: Any) -> int:
        n = len(memoryview(data))
        self.count += n
        return n


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while piece := fh.read(BLOCK):
            digest.update(piece)
    return digest.hexdigest()


# ------------------------------------------------------------------ client (a fresh process per run)

def client(kind: str, served: dict[str, Any], cache_dir: Path, verify: bool) -> dict[str, Any]:
    """One transfer of the served file, measured in this (fresh) process; with ``verify``, the
    cached blob's md5 is computed again afterwards (the cache checked it while writing)."""
    from common.cache import ModelCache
    from common.registry import RemoteFile

    size, file_id = served["size"], served["file_id"]
    buffer = memoryview(bytearray(READ_SIZE))

    def raw() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=60)
        try:
            conn.request("GET", f"/drive/v3/files/{file_id}?alt=media&supportsAllDrives=true",
                         headers={"Authorization": f"Bearer {TOKEN}", "Accept-Encoding": "identity"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"raw GET answered {resp.status}: {resp.read(4096)!r}")
            got = 0
            while n := resp.readinto(buffer):
                got += n
            return got
        finally:
            conn.close()

    def copy(remote: RemoteFile, sink: BinaryIO) -> None:
        with open(served["path"], "rb") as source:
            while piece := source.read(READ_SIZE):
                sink.write(piece)

    def fetch() -> int:
        sink = NullSink()
        registry.fetch(file, sink)  # type: ignore[arg-type]
        return sink.count

    if kind != "raw":  # the file as the registry describes it (metadata, not timed)
        registry = drive_registry(served["root_url"])
        file = next(f for f in registry.resolve("big").files if f.path == "model.onnx")
        cache = ModelCache(cache_dir, size_limit=2 * size)
    transfer = {"raw": raw, "fetch": fetch,
                "cache": lambda: cache.get(file, registry.fetch).stat().st_size,
                "local": lambda: cache.get(file, copy).stat().st_size}[kind]

    before = rss_now()
    exact = reset_peak()
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    got = transfer()
    seconds = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    peak = peak_rss()
    if got != size:
        raise RuntimeError(f"{kind}: got {got} bytes, expected {size}")
    if kind in ("cache", "local"):
        blob = next(p for p in (cache_dir / "blobs").iterdir())
        if blob.stat().st_size != size or (verify and md5_of(blob) != served["md5"]):
            raise RuntimeError(f"cache: {blob} does not hold the served bytes")
    return {"seconds": seconds, "cpu": (used.ru_utime - cpu.ru_utime) + (used.ru_stime - cpu.ru_stime),
            "growth": max(0, peak - before), "exact_peak": exact}


# ------------------------------------------------------------------ stand-in (a process of its own)

def serve(path: Path) -> int:
    """Serve ``path`` as CVAT_Models/big/model.onnx; print where, then answer commands on
    stdin (``count``: media requests for the file since the last count) until stdin closes."""
    from tests.drive_standin import DriveStandIn

    with DriveStandIn() as drive:
        drive.accept_tokens(TOKEN)
        folder = drive.add_folder("big", drive.add_folder("CVAT_Models"))
        drive.add_file("model.json", folder, manifest("big"), "application/json")
        file_id = drive.add_file_from_path("model.onnx", folder, path)
        resource_ = drive.file_resource(file_id)
        sys.stdout.write(json.dumps({"root_url": drive.root_url, "port": drive.port, "file_id": file_id,
                                     "path": str(path),
                                     "size": int(resource_["size"]), "md5": resource_["md5Checksum"]}) + "\n")
        sys.stdout.flush()
        for line in sys.stdin:
            if line.strip() == "count":
                sys.stdout.write(json.dumps({"media": drive.count(alt="media", file_id=file_id)}) + "\n")
                sys.stdout.flush()
                drive.requests.clear()
    return 0


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        left = size
        while left > 0:
            left -= out.write(os.urandom(min(BLOCK, left)))


def download_figures(workdir: Path, repeat: int) -> dict[str, list[dict[str, Any]]]:
    source = workdir / "model.onnx"
    write_random_file(source, FILE_SIZE)
    server = subprocess.Popen([sys.executable, "-m", "tools.bench_drive", "--serve", str(source)], cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline()
        if not line:
            raise RuntimeError(f"the stand-in process exited ({server.wait()}) before serving")
        served = json.loads(line)
        runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for i in range(repeat):
            for kind in KINDS:  # interleaved
                cache_dir = workdir / f"cache-{i}"
                try:
                    done = subprocess.run([sys.executable, "-m", "tools.bench_drive", "--client", kind,
                                           "--served", json.dumps(served), "--cache-dir", str(cache_dir)]
                                          + (["--verify"] if i == 0 else []),
                                          check=False, cwd=REPO, capture_output=True, text=True)
                finally:
                    shutil.rmtree(cache_dir, ignore_errors=True)
                if done.returncode:
                    raise RuntimeError(f"{kind} client failed ({done.returncode}):\n{done.stderr[-4000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                server.stdin.write("count\n")
                server.stdin.flush()
                figures["requests"] = json.loads(server.stdout.readline())["media"]
                runs[kind].append(figures)
        return runs
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ------------------------------------------------------------------ report

def run(repeat: int = 3, tmp: Path | None = None) -> None:
    """Measure and log both tables (called by tools.bench after its own)."""
    loopback_only()
    logging.getLogger("common").setLevel(logging.WARNING)
    logging.getLogger("googleapiclient").setLevel(logging.WARNING)

    log.info("\nDrive registry against the Drive v3 stand-in (loopback): requests per list_models")
    header = f"{'models':>6} {'first listing':>14} {'unchanged':>10} {'one changed':>12} {'naive 2N+1':>11}"
    log.info("%s\n%s", header, "-" * len(header))
    for n in LISTING_SIZES:
        f = listing_requests(n)
        log.info("%6d %8d (%4d) %5d (%2d) %7d (%2d) %11d", n, f["first"], f["first_media"], f["unchanged"],
                 f["unchanged_media"], f["changed"], f["changed_media"], 2 * n + 1)
    log.info("(in brackets: of which alt=media, i.e. model.json bodies); the first listing also looks up "
             "the root folder")

    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-drive-", dir=tmp))
    try:
        free = shutil.disk_usage(workdir).free
        if free < 3 * FILE_SIZE:
            log.warning("\ndownload skipped: %s has %.1f GiB free, 3 GiB needed", workdir, free / FILE_SIZE)
            return
        runs = download_figures(workdir, repeat)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def rate(kind: str) -> float:
        return statistics.median(FILE_SIZE / MiB / r["seconds"] for r in runs[kind])

    raw = rate("raw")
    exact = all(r["exact_peak"] for rs in runs.values() for r in rs)
    log.info("\ndownload of a 1 GiB file (random bytes) from the stand-in, in its own process; each client run "
             "in a fresh process; median of %d interleaved runs", repeat)
    header = (f"{'client':<44} {'requests':>8} {'MiB/s':>7} {'ratio':>6} {'CPU s':>6} "
              f"{'peak growth MiB':>16} {'target':>7}")
    log.info("%s\n%s", header, "-" * len(header))
    labels = {"raw": "raw: one http.client GET, dropped",
              "fetch": "DriveRegistry.fetch, dropped",
              "cache": "ModelCache.get(file, fetch): hashed, fsynced",
              "local": "ModelCache.get, copied from disk (no Drive)"}
    for kind in KINDS:
        growth = max(r["growth"] for r in runs[kind])
        verdict = "ok" if growth <= MEMORY_TARGET else "OVER"
        log.info("%-44s %8d %7.0f %6.2f %6.1f %16.1f %7d  %s", labels[kind],
                 statistics.median(r["requests"] for r in runs[kind]), rate(kind), rate(kind) / raw,
                 statistics.median(r["cpu"] for r in runs[kind]), growth / MiB, MEMORY_TARGET // MiB,
                 verdict if kind in ("fetch", "cache") else "")
    log.info("ratio = MiB/s / raw MiB/s; CPU s = the client's user + system time; peak growth = the client's "
             "resident-set %s over its size just before the transfer, worst run; the cached blob's size was checked "
             "each run, its md5 in the first", "peak" if exact else "lifetime peak (could not reset it: an upper bound)")
    log.info("through the cache, Drive / local copy = %.2f: the rest of the cache row is the cache's own hashing "
             "and disk write", rate("cache") / rate("local"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each download kind")
    parser.add_argument("--tmp", type=Path, help="where the 1 GiB file and the cache go (default: the system's)")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--served", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--verify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    internal = bool(args.serve or args.client)
    logging.basicConfig(level=logging.WARNING if internal else logging.INFO, format="%(message)s",
                        stream=sys.stderr if internal else sys.stdout)
    logging.getLogger("common").setLevel(logging.WARNING)
    loopback_only()
    if args.serve:
        return serve(args.serve)
    if args.client:
        sys.stdout.write(json.dumps(client(args.client, json.loads(args.served), args.cache_dir, args.verify)) + "\n")
        return 0
    run(args.repeat, args.tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
