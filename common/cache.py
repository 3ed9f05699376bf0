"""A byte-bounded, content-addressed, least-recently-used disk cache of model files.

One cache directory is shared by many processes: every Nuclio worker is its
own Python process, and several functions (containers) on a host may
bind-mount the same directory. All coordination is done with ``flock(2)`` on
files inside the directory (the containers share one kernel), never with PIDs,
which mean nothing across containers.

On-disk layout::

    <root>/
      blobs/
        sha256-<hex>                 an admitted file, named by RemoteFile.content_key
        md5-<hex>                    (read-only, 0444); its mtime is its last use
      tmp/
        <key>.<random>.part          a download in progress; its writer holds LOCK_EX on it
        snapshot.<random>.lock       owner lock of a snapshot being built (writer holds LOCK_EX)
        snapshot.<random>.d/         that snapshot, renamed into snapshots/ once complete
      locks/
        cache.lock                   global lock: admission (evict + rename) and eviction
        <key>.lock                   one download of <key> at a time
        snapshot-<hash>.lock         one builder or remover of a snapshot folder at a time
      snapshots/
        <record.folder>/
          <version>-<digest>/        digest: 12 hex of sha256 over the (path, content key) pairs
            model.json               the manifest's raw JSON (record.manifest.raw)
            <relative path>          relative symlink -> ../../../blobs/<key> (more ../ when nested)

Locking protocol:

* get: if ``blobs/<key>`` exists and is verified (below), touch its mtime and
  return it. Otherwise take ``locks/<key>.lock`` LOCK_EX (other askers block
  here), look again, and else stream the bytes into a ``tmp/*.part`` file,
  held LOCK_EX, hashing and counting them; verify size and checksums, fsync,
  chmod 0444, then under ``locks/cache.lock`` evict to make room and
  ``os.replace`` it into ``blobs/``.
* verify: before a blob is served, it is hashed (1 MiB reads) with the
  algorithm its content key names and compared with the key; a wrong size
  fails at once. A process verifies each blob once: the result is memoised
  per :class:`ModelCache` (one per worker process) by content key and
  ``(st_dev, st_ino, st_size)`` (not mtime or ctime: every use touches the
  mtime, which moves the ctime too), and a blob this process downloaded
  counts as verified already. A
  blob that fails is logged and, under ``<key>.lock`` then ``cache.lock``,
  unlinked while its remover holds LOCK_EX|LOCK_NB on it, then fetched again
  like a missing one. If a live process pins it (LOCK_SH), it is left alone
  and IntegrityError is raised: its user reads it through its path.
* pin: a user of a blob keeps an fd on it with LOCK_SH, taken after ``open``
  and confirmed by ``fstat(fd).st_ino == stat(path).st_ino`` (the path may have
  been evicted between the open and the lock; then the blob is fetched again).
* evict: under ``locks/cache.lock``, blobs oldest mtime first; each is unlinked
  only while the evictor holds LOCK_EX|LOCK_NB on it, so pinned blobs are
  skipped. Snapshot folders left with broken links are then removed, each
  under its snapshot lock taken LOCK_NB (busy ones are left alone).
* open: any ``tmp/`` item whose owner lock can be taken LOCK_EX|LOCK_NB was left
  by a dead process (the kernel dropped its lock) and is deleted.
* Lock order is ``<key>.lock`` then ``cache.lock``; a snapshot lock is held
  alone. The evictor takes snapshot and blob locks only with LOCK_NB, so no
  wait cycle can form. Files in ``locks/`` are never deleted: unlinking a lock
  file that someone is blocked on would let two processes hold "the" lock.

Why verify what was verified when admitted: the blobs outlive the processes
that wrote them, in a directory other containers and people on the host can
write to, on disks that can corrupt. A blob edited in place keeps its size, so
without a hash a flipped float would silently change the model's answers (and
garbage would fail every worker start) for as long as the blob stays cached.
The cost is one read of each blob per process start: hashing runs at about
0.5-1 GB/s, so a 1 GB model adds about a second to each worker's start. A blob
edited while a process runs is caught by the next process, not by that one.

The byte bound counts admitted blobs only; a download in flight is not
counted until admission (room for it is made before it starts, and again,
authoritatively, when it is admitted).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
import shutil
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from common.errors import CacheError, IntegrityError
from common.registry import ModelRecord, RemoteFile

__all__ = ["ModelCache", "Snapshot", "Fetch", "parse_size", "MANIFEST_NAME"]

log = logging.getLogger(__name__)

Fetch = Callable[[RemoteFile, BinaryIO], None]
"""``fetch(file, sink)``: write the file's bytes into ``sink`` (``Registry.fetch``)."""

MANIFEST_NAME = "model.json"

_KEY_RE = re.compile(r"^(?:sha256-[0-9a-f]{64}|md5-[0-9a-f]{32})$")
_PIN_ATTEMPTS = 5
_HASH_CHUNK = 1 << 20  # bytes per read when verifying a cached blob
MAX_MANIFEST_BYTES = 1 << 20  # model.json written into a snapshot: not counted in the bound
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


# --------------------------------------------------------------------- sizes

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
}  # fmt: skip
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from a human size: ``"10GiB"``, ``"500MB"``, ``"1.5 GiB"``, ``"1073741824"``.

    Units are case-insensitive: B; KB/MB/GB/TB (and K/M/G/T) are powers of
    1000, KiB/MiB/GiB/TiB (and Ki/Mi/Gi/Ti) powers of 1024. Fractions are
    rounded down to whole bytes. Raises ValueError naming the accepted forms.
    """
    match = _SIZE_RE.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid size {text!r}: expected a non-negative number of bytes with an "
            f"optional unit, e.g. '10GiB', '500MB' or '1073741824'"
        )
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(
            f"invalid size {text!r}: unknown unit {unit!r}; use B, KB, MB, GB, TB "
            f"(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"
        )
    try:
        return int(Decimal(number) * factor)
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"invalid size {text!r}") from exc


def _fmt(n: int) -> str:
    """``1536 -> '1.5 KiB'``; for log lines and error messages."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------- locks


def _open_lock(path: Path) -> int:
    # Read-only is enough for flock, and lets any user who can read the file lock it.
    return os.open(path, os.O_RDONLY | os.O_CREAT | _O_CLOEXEC, 0o666)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold LOCK_EX on lock file ``path`` (created if missing), blocking until granted."""
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _try_lock(path: Path, *, create: bool) -> int | None:
    """An fd holding LOCK_EX on ``path``, or None if it is missing or locked elsewhere."""
    try:
        fd = _open_lock(path) if create else os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_ino, on_disk.st_dev) == (held.st_ino, held.st_dev)


def _create_locked(path: Path, flags: int) -> int | None:
    """Create ``path`` exclusively and LOCK_EX it; None if a cleaner removed it meanwhile.

    A cleaner may open a brand-new file and lock it in the instant between our
    ``open`` and ``flock``, and then unlink it; the inode check catches that.
    """
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if _same_file(fd, path):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _touch(target: Path | int) -> bool:
    """Mark a blob used now (mtime is the LRU clock); False if it is gone."""
    now = time.time_ns()  # explicit, fine-grained: the kernel's own clock ticks coarser
    try:
        os.utime(target, ns=(now, now))
    except FileNotFoundError:
        return False
    except PermissionError:  # not the owner (another uid): plain utime needs only write access
        try:
            os.utime(target)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.debug("cannot touch %s: %s", target, exc)
    return True


def _hash_blob(fd: int, algorithm: str) -> str:
    """Hex ``algorithm`` (``sha256`` or ``md5``) digest of the whole file open as ``fd``."""
    hasher = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    offset = 0
    while chunk := os.pread(fd, _HASH_CHUNK, offset):
        hasher.update(chunk)
        offset += len(chunk)
    return hasher.hexdigest()


def _close_all(fds: list[int]) -> None:
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


# ---------------------------------------------------------------- downloads


class _HashingSink(io.RawIOBase):
    """The write-only file object handed to ``fetch``.

    Writes go straight to the temp file's fd while being counted and hashed.
    More bytes than the registry announced are refused at once (``overflow``
    is set, so an error the fetcher wraps is still reported as an integrity
    failure).
    """

    def __init__(self, fd: int, file: RemoteFile, hashers: Iterable[Any]):
        super().__init__()
        self._fd = fd
        self._file = file
        self._hashers = list(hashers)
        self.count = 0
        self.overflow = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.count

    def write(self, data: Any) -> int:
        if self.closed:
            raise ValueError("write to a closed sink")
        view = memoryview(data).cast("B")
        n = len(view)
        if self.count + n > self._file.size:
            self.overflow = True
            raise IntegrityError(self.overflow_message())
        for hasher in self._hashers:
            hasher.update(view)
        done = 0
        while done < n:
            done += os.write(self._fd, view[done:])
        self.count += n
        return n

    def overflow_message(self) -> str:
        return (
            f"{self._file.path}: size mismatch: expected {self._file.size} bytes, "
            f"got more than that"
        )


# ----------------------------------------------------------------- snapshots


class Snapshot:
    """One model version laid out as a folder, its blobs pinned until :meth:`release`.

    ``path`` holds every file of the record at its relative path (relative
    symlinks into ``blobs/``) plus ``model.json``. While the snapshot is held,
    no process evicts its blobs. Use it as a context manager, or call
    :meth:`release` (idempotent; also done when the object is collected).
    """

    def __init__(self, path: Path, pins: Iterable[int], files: Iterable[str]):
        self.path = path
        self.files: tuple[str, ...] = tuple(files)
        self._pins = list(pins)
        self._names = set(self.files) | {MANIFEST_NAME}
        for name in self.files:
            parts = PurePosixPath(name).parts
            self._names.update("/".join(parts[:i]) for i in range(1, len(parts)))
        self._finalizer = weakref.finalize(self, _close_all, self._pins)

    def file(self, relative_path: str) -> Path:
        """Path of one file (or folder, e.g. ``saved_model``) of the snapshot.

        Raises KeyError if the record has no such file or folder.
        """
        name = str(PurePosixPath(relative_path))
        if name not in self._names:
            raise KeyError(f"{relative_path!r} is not part of snapshot {self.path}")
        return self.path / name

    @property
    def released(self) -> bool:
        return not self._finalizer.alive

    def release(self) -> None:
        """Unpin the blobs (they become evictable again); the folder stays."""
        self._finalizer()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else f"{len(self._pins)} blobs pinned"
        return f"Snapshot({str(self.path)!r}, {state})"


_Plan = list[tuple[PurePosixPath, RemoteFile, str]]  # (relative path, file, content key)
_Identity = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_ctime_ns) of a blob


def _identity(st: os.stat_result) -> _Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


def _check_component(value: str, what: str) -> None:
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        raise CacheError(f"{what} {value!r} cannot name a snapshot folder")


def _manifest_text(raw: Mapping[str, Any]) -> str:
    def plain(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return dict(obj)
        if isinstance(obj, (set, frozenset)):
            return sorted(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")

    return json.dumps(raw, indent=2, ensure_ascii=False, default=plain) + "\n"


def _broken_links(folder: Path) -> list[str]:
    broken = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p) and not os.path.exists(p):
                broken.append(os.path.relpath(p, folder))
    return broken


# --------------------------------------------------------------------- cache


class ModelCache:
    """The disk cache at ``root``, holding at most ``size_limit`` bytes of blobs.

    Opening creates the layout and deletes leftovers of killed processes.
    ``limit_setting`` names the setting that controls ``size_limit``; it is
    quoted in the error that refuses a file larger than the whole cache.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size_limit: int,
        *,
        limit_setting: str = "the cache size limit",
    ):
        if int(size_limit) <= 0:
            raise ValueError(f"cache size limit must be positive, got {size_limit}")
        self.root = Path(os.path.abspath(root))
        self.size_limit = int(size_limit)
        self.limit_setting = limit_setting
        self.blobs = self.root / "blobs"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.snapshots = self.root / "snapshots"
        for folder in (self.blobs, self.tmp, self.locks, self.snapshots):
            folder.mkdir(parents=True, exist_ok=True)
        self._global_lock = self.locks / "cache.lock"
        # content key -> (st_dev, st_ino, st_size) of the blob this object verified
        self._verified: dict[str, tuple[int, int, int]] = {}
        self._clean_tmp()
        self._remove_broken_snapshots()

    def __repr__(self) -> str:
        return f"ModelCache({str(self.root)!r}, size_limit={self.size_limit})"

    # ------------------------------------------------------------ queries

    def keys(self) -> list[str]:
        """Admitted content keys, least recently used first."""
        return [key for _, key, _ in sorted(self._scan())]

    def total_bytes(self) -> int:
        """Bytes held by admitted blobs."""
        return sum(size for _, _, size in self._scan())

    def _scan(self) -> list[tuple[int, str, int]]:
        """``(mtime_ns, key, size)`` of every admitted blob."""
        found = []
        with os.scandir(self.blobs) as entries:
            for entry in entries:
                if not _KEY_RE.match(entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                found.append((st.st_mtime_ns, entry.name, st.st_size))
        return found

    # ------------------------------------------------------------ get

    def get(self, file: RemoteFile, fetch: Fetch) -> Path:
        """Path of the admitted, verified blob holding ``file``; downloads it if needed.

        Marks the blob used now. The path is not pinned: another process's
        eviction may remove it later; hold a :meth:`checkout` to keep it.
        A cached blob is hashed against its content key the first time this
        object serves it; a corrupt one is removed and fetched again.
        Raises CacheError (file larger than the cache), IntegrityError (bytes
        do not match the registry's size or checksums, or a corrupt cached
        blob is in use by another process) or what ``fetch`` raises; in every
        failure nothing enters the cache.
        """
        key = self._key(file)
        path = self.blobs / key
        ok, bad = self._examine(path, key, file)
        if ok and _touch(path):
            return path
        self._check_fits(file)
        with _locked(self.locks / f"{key}.lock"):
            for _ in range(_PIN_ATTEMPTS):
                ok, bad = self._examine(path, key, file, known_bad=bad)
                if ok and _touch(path):  # another process fetched it while we waited
                    return path
                if bad is None:
                    break
                self._discard(path, key, file, bad)
            else:
                raise IntegrityError(
                    f"{file.path}: cached blob {path} kept failing verification "
                    f"({_PIN_ATTEMPTS} times) while being replaced"
                )
            self._download(file, key, fetch)
        return path

    def _key(self, file: RemoteFile) -> str:
        try:
            key = file.content_key
        except ValueError as exc:
            raise CacheError(str(exc)) from exc
        if not _KEY_RE.match(key):
            raise CacheError(f"{file.path}: malformed checksum in content key {key!r}")
        return key

    def _remember(self, key: str, st: os.stat_result) -> None:
        """Record that the file ``st`` describes holds ``key``'s bytes."""
        self._verified[key] = (st.st_dev, st.st_ino, st.st_size)

    def _is_verified(self, key: str, st: os.stat_result) -> bool:
        return self._verified.get(key) == (st.st_dev, st.st_ino, st.st_size)

    def _examine(
        self,
        path: Path,
        key: str,
        file: RemoteFile,
        *,
        known_bad: _Identity | None = None,
    ) -> tuple[bool, _Identity | None]:
        """Whether blob ``path`` holds ``key``'s bytes: ``(True, None)`` if so,
        ``(False, None)`` if it is missing, ``(False, identity)`` if it is corrupt.

        Hashes the blob unless this object verified that very file before
        (``known_bad``: an identity already found corrupt, not hashed again;
        it includes the ctime, so a new file that reuses the inode number
        never passes for the corrupt one).
        """
        try:
            fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            return False, None
        try:
            st = os.fstat(fd)
            identity = _identity(st)
            if self._is_verified(key, st):
                return True, None
            if identity == known_bad:
                return False, identity
            if st.st_size != file.size:
                log.warning(
                    "cached blob %s has %d bytes but the registry says %s has %d; "
                    "removing it and fetching it again",
                    path, st.st_size, file.path, file.size,
                )  # fmt: skip
                return False, identity
            algorithm, expected = key.split("-", 1)
            started = time.monotonic()
            got = _hash_blob(fd, algorithm)
        finally:
            os.close(fd)
        if got != expected:
            log.warning(
                "cached blob %s of %s is corrupt: its %s is %s, not the %s its content key %s "
                "names (edited in place or damaged on disk); removing it and fetching it again",
                path, file.path, algorithm, got, expected, key,
            )  # fmt: skip
            return False, identity
        self._remember(key, st)
        log.debug("verified %s (%s) in %.2f s", key, _fmt(st.st_size), time.monotonic() - started)
        return True, None

    def _discard(self, path: Path, key: str, file: RemoteFile, bad: _Identity) -> None:
        """Unlink the corrupt blob ``path`` (identity ``bad``); caller holds the key lock.

        Raises IntegrityError if a live process pins it. Does nothing if the
        path no longer names that file (the caller examines it again).
        """
        with _locked(self._global_lock):
            try:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                return
            try:
                if _identity(os.fstat(fd)) != bad:
                    return
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    message = (
                        f"{file.path}: cached blob {path} does not match its content key "
                        f"{key} (edited in place or damaged on disk), and a running process "
                        f"is using it, so it cannot be replaced now; stop the functions using "
                        f"this model (or delete the file) and start them again"
                    )
                    log.error("%s", message)
                    raise IntegrityError(message) from None
                if not _same_file(fd, path):
                    return
                os.unlink(path)
                self._verified.pop(key, None)
                log.warning("removed corrupt blob %s (%s)", key, file.path)
            finally:
                os.close(fd)

    def _check_fits(self, file: RemoteFile) -> None:
        if file.size > self.size_limit:
            message = (
                f"{file.path} is {_fmt(file.size)} ({file.size} bytes), larger than the "
                f"whole model cache ({_fmt(self.size_limit)}, {self.size_limit} bytes); "
                f"raise {self.limit_setting} to at least {file.size} bytes"
            )
            log.warning("refused: %s", message)
            raise CacheError(message)

    def _download(self, file: RemoteFile, key: str, fetch: Fetch) -> None:
        """Fetch, verify and admit ``file`` as ``key``; caller holds the key lock."""
        hashers: dict[str, Any] = {}
        if file.sha256:
            hashers["sha256"] = hashlib.sha256()
        if file.md5:
            hashers["md5"] = hashlib.md5(usedforsecurity=False)
        self.evict(file.size)  # make room first so the download fits on disk
        fd, part = self._create_part(key)
        admitted = False
        try:
            log.info("downloading %s (%s) into the cache as %s", file.path, _fmt(file.size), key)
            started = time.monotonic()
            sink = _HashingSink(fd, file, hashers.values())
            try:
                fetch(file, sink)
            except BaseException as exc:
                if sink.overflow and not isinstance(exc, IntegrityError):
                    raise IntegrityError(sink.overflow_message()) from exc
                raise
            self._verify(file, sink.count, hashers)
            os.fsync(fd)
            os.fchmod(fd, 0o444)
            _touch(fd)
            with _locked(self._global_lock):
                _, total = self._evict_locked(file.size)
                os.replace(part, self.blobs / key)
                admitted = True
                _fsync_dir(self.blobs)
            self._remember(key, os.fstat(fd))  # hashed while written: not read back
            total += file.size
            log.info(
                "cached %s as %s (%s in %.1f s); cache holds %s of %s",
                file.path, key, _fmt(file.size), time.monotonic() - started,
                _fmt(total), _fmt(self.size_limit),
            )  # fmt: skip
            if total > self.size_limit:
                log.warning(
                    "admitted %s although the cache now holds %s, over its limit of %s: "
                    "only blobs in use by live processes were left to evict; raise %s",
                    key, _fmt(total), _fmt(self.size_limit), self.limit_setting,
                )  # fmt: skip
        except IntegrityError as exc:
            log.warning("refused %s: %s", key, exc)
            raise
        finally:
            os.close(fd)  # drops our LOCK_EX (on the blob, once admitted)
            if not admitted:
                try:
                    os.unlink(part)
                except FileNotFoundError:
                    pass

    def _create_part(self, stem: str) -> tuple[int, Path]:
        """A new ``tmp/<stem>.<random>.part`` open for writing, held LOCK_EX."""
        while True:
            part = self.tmp / f"{stem}.{secrets.token_hex(8)}.part"
            fd = _create_locked(part, os.O_WRONLY)
            if fd is not None:
                return fd, part

    @staticmethod
    def _verify(file: RemoteFile, count: int, hashers: Mapping[str, Any]) -> None:
        if count != file.size:
            raise IntegrityError(
                f"{file.path}: size mismatch: expected {file.size} bytes, got {count}"
            )
        for algorithm, hasher in hashers.items():
            expected = str(getattr(file, algorithm)).lower()
            got = hasher.hexdigest()
            if got != expected:
                raise IntegrityError(
                    f"{file.path}: {algorithm} mismatch: expected {expected}, got {got}"
                )

    # ------------------------------------------------------------ eviction

    def evict(self, need_bytes: int = 0) -> list[str]:
        """Evict least recently used, unpinned blobs until total + ``need_bytes`` fits.

        Returns the evicted keys, oldest first. Pinned blobs are skipped, so
        the bound may still be exceeded afterwards (logged).
        """
        with _locked(self._global_lock):
            evicted, total = self._evict_locked(need_bytes)
        if total + need_bytes > self.size_limit:
            log.info(
                "cache holds %s; %s more would exceed its limit of %s, and the rest is in use",
                _fmt(total), _fmt(need_bytes), _fmt(self.size_limit),
            )  # fmt: skip
        return evicted

    def _evict_locked(self, need_bytes: int) -> tuple[list[str], int]:
        """Evict under the global lock; returns (evicted keys, bytes left)."""
        entries = sorted(self._scan())
        total = sum(size for _, _, size in entries)
        evicted: list[str] = []
        now = time.time_ns()
        for mtime, key, size in entries:
            if total + need_bytes <= self.size_limit:
                break
            if self._remove_blob(key):
                total -= size
                evicted.append(key)
                log.info(
                    "evicted %s (%s, last used %.0f s ago)",
                    key, _fmt(size), max(0, now - mtime) / 1e9,
                )  # fmt: skip
            else:
                log.debug("not evicting %s: in use", key)
        if evicted:
            self._remove_broken_snapshots()
        return evicted, total

    def _remove_blob(self, key: str) -> bool:
        """Unlink a blob unless a live process pins it (LOCK_SH)."""
        path = self.blobs / key
        fd = _try_lock(path, create=False)
        if fd is None:
            return False
        try:
            if not _same_file(fd, path):
                return False
            os.unlink(path)
            return True
        finally:
            os.close(fd)

    # ------------------------------------------------------------ leftovers

    def _clean_tmp(self) -> None:
        """Delete what dead processes left in tmp/ (their owner locks are free)."""
        with os.scandir(self.tmp) as entries:
            names = [entry.name for entry in entries]
        for name in names:
            path = self.tmp / name
            if name.endswith(".part"):
                fd = _try_lock(path, create=False)
                if fd is None:
                    continue
                try:
                    os.unlink(path)
                    log.info("removed leftover download %s", name)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(fd)
            elif name.endswith(".lock"):
                fd = _try_lock(path, create=False)
                if fd is None:
                    continue
                try:
                    build = self.tmp / (name[: -len(".lock")] + ".d")
                    if build.exists():
                        shutil.rmtree(build, ignore_errors=True)
                        log.info("removed leftover snapshot build %s", build.name)
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                finally:
                    os.close(fd)
            elif name.endswith(".d"):
                # A builder creates its .lock before its .d and removes it after.
                if not (self.tmp / (name[: -len(".d")] + ".lock")).exists():
                    shutil.rmtree(path, ignore_errors=True)
                    log.info("removed leftover snapshot build %s", name)

    @contextmanager
    def _build_dir(self) -> Iterator[Path]:
        """A fresh ``tmp/snapshot.<random>.d`` owned through its ``.lock``; removed on exit."""
        while True:
            stem = f"snapshot.{secrets.token_hex(8)}"
            lock = self.tmp / f"{stem}.lock"
            fd = _create_locked(lock, os.O_RDONLY)
            if fd is not None:
                break
        build = self.tmp / f"{stem}.d"
        try:
            build.mkdir()
            yield build
        finally:
            shutil.rmtree(build, ignore_errors=True)  # gone already once renamed into place
            try:
                os.unlink(lock)
            finally:
                os.close(fd)

    # ------------------------------------------------------------ snapshots

    def checkout(self, record: ModelRecord, fetch: Fetch) -> Snapshot:
        """Every file of ``record`` cached, pinned and laid out in one snapshot folder.

        The folder is ``snapshots/<folder>/<version>-<digest>/``: a relative
        symlink per file at its relative path, and ``model.json`` holding
        ``record.manifest.raw``. An existing intact folder is reused; one with
        broken links (evicted blobs) is rebuilt. The returned :class:`Snapshot`
        pins every blob until released. A ``record.manifest.raw`` whose JSON
        exceeds MAX_MANIFEST_BYTES (1 MiB) is refused with CacheError: the
        snapshot folder is not counted in the cache's byte bound.
        """
        plan = self._plan(record)
        with_manifest = all(str(rel) != MANIFEST_NAME for rel, _, _ in plan)
        manifest = _manifest_text(record.manifest.raw) if with_manifest else None
        if manifest is not None and (size := len(manifest.encode())) > MAX_MANIFEST_BYTES:
            raise CacheError(
                f"{record.folder}: {MANIFEST_NAME} is {_fmt(size)}, over the "
                f"{_fmt(MAX_MANIFEST_BYTES)} a snapshot may hold"
            )
        digest = hashlib.sha256()
        for rel, _, key in sorted(plan, key=lambda item: str(item[0])):
            digest.update(f"{rel}\0{key}\n".encode())
        final = self.snapshots / record.folder / f"{record.version}-{digest.hexdigest()[:12]}"

        pins: dict[str, int] = {}
        try:
            for _, file, key in plan:
                if key not in pins:
                    pins[key] = self._get_pinned(file, key, fetch)
            self._layout(plan, final, manifest)
        except BaseException:
            _close_all(list(pins.values()))
            raise
        log.debug("checked out %s", final)
        return Snapshot(final, pins.values(), (str(rel) for rel, _, _ in plan))

    def _plan(self, record: ModelRecord) -> _Plan:
        _check_component(record.folder, "model folder")
        _check_component(record.version, "version")
        if not record.files:
            raise CacheError(f"{record.folder}: the record lists no files")
        plan: _Plan = []
        names: set[str] = set()
        parents: set[str] = set()
        for file in record.files:
            parts = file.path.split("/")
            if file.path.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise CacheError(f"{record.folder}: bad relative file path {file.path!r}")
            if file.path in names:
                raise CacheError(f"{record.folder}: {file.path!r} is listed twice")
            names.add(file.path)
            parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
            plan.append((PurePosixPath(file.path), file, self._key(file)))
        if clash := names & parents:
            raise CacheError(f"{record.folder}: {sorted(clash)[0]!r} is both a file and a folder")
        return plan

    def _get_pinned(self, file: RemoteFile, key: str, fetch: Fetch) -> int:
        """Cache ``file`` and return an fd holding LOCK_SH on its blob."""
        for _ in range(_PIN_ATTEMPTS):
            path = self.get(file, fetch)
            try:
                fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
            except FileNotFoundError:
                fd = None
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    # The evictor may have unlinked the path between our open and
                    # lock; then we hold a dead inode and must fetch it again.
                    if _same_file(fd, path):
                        if self._is_verified(key, os.fstat(fd)):
                            return fd
                        # Evicted and fetched again by another process since
                        # we verified it: the next get verifies the new file.
                        os.close(fd)
                        log.info("%s (%s) was replaced while being opened", file.path, key)
                        continue
                except BaseException:
                    os.close(fd)
                    raise
                os.close(fd)
            log.info("%s (%s) was evicted while being opened; fetching it again", file.path, key)
        raise CacheError(
            f"{file.path}: {key} was evicted {_PIN_ATTEMPTS} times while being opened; "
            f"the cache ({_fmt(self.size_limit)}) is too small for the models in use, "
            f"raise {self.limit_setting}"
        )

    def _snapshot_lock(self, folder: Path) -> Path:
        name = folder.relative_to(self.snapshots).as_posix()
        return self.locks / f"snapshot-{hashlib.sha256(name.encode()).hexdigest()[:24]}.lock"

    def _link_target(self, final: Path, rel: PurePosixPath, key: str) -> str:
        return os.path.relpath(self.blobs / key, (final / rel).parent)

    def _intact(self, final: Path, plan: _Plan, with_manifest: bool) -> bool:
        for rel, _, key in plan:
            link = final / rel
            try:
                if os.readlink(link) != self._link_target(final, rel, key):
                    return False
            except OSError:
                return False
            if not link.exists():
                return False
        return not with_manifest or (final / MANIFEST_NAME).is_file()

    def _layout(self, plan: _Plan, final: Path, manifest: str | None) -> None:
        """Make ``final`` an intact snapshot of ``plan`` (blobs already pinned),
        with ``model.json`` holding ``manifest`` unless it is None."""
        with_manifest = manifest is not None
        with _locked(self._snapshot_lock(final)):
            if final.is_dir():
                if self._intact(final, plan, with_manifest):
                    if manifest is not None:
                        self._refresh_manifest(final / MANIFEST_NAME, manifest)
                    return
                log.info("snapshot %s has broken links (evicted blobs); rebuilding it", final)
                shutil.rmtree(final)
            with self._build_dir() as build:
                try:
                    for rel, _, key in plan:
                        link = build / rel
                        link.parent.mkdir(parents=True, exist_ok=True)
                        os.symlink(self._link_target(final, rel, key), link)
                    if manifest is not None:
                        with open(build / MANIFEST_NAME, "w", encoding="utf-8") as out:
                            out.write(manifest)
                            out.flush()
                            os.fsync(out.fileno())
                    self._rename_into_place(build, final)
                except OSError as exc:
                    raise CacheError(f"cannot lay out snapshot {final}: {exc}") from exc
                if not self._intact(final, plan, with_manifest):
                    raise CacheError(f"snapshot {final} is not intact after it was laid out")
        log.info("laid out snapshot %s (%d files)", final, len(plan))

    def _rename_into_place(self, build: Path, final: Path) -> None:
        for _ in range(10):
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(build, final)
            except FileNotFoundError:
                continue  # a cleaner removed the empty parent folder meanwhile
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    log.info("snapshot %s was laid out by another process; using it", final)
                    return
                raise
            _fsync_dir(final.parent)
            return
        raise CacheError(f"cannot create snapshot folder {final.parent}")

    def _refresh_manifest(self, target: Path, text: str) -> None:
        try:
            if target.read_text(encoding="utf-8") == text:
                return
        except OSError:
            pass
        fd, part = self._create_part(MANIFEST_NAME)
        try:
            data = text.encode("utf-8")
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
            os.fsync(fd)
            os.replace(part, target)
            log.info("updated %s", target)
        finally:
            os.close(fd)
            try:
                os.unlink(part)
            except FileNotFoundError:
                pass

    def _remove_broken_snapshots(self) -> None:
        """Delete snapshot folders whose blobs were evicted (busy ones are skipped)."""
        with os.scandir(self.snapshots) as models:
            model_dirs = [Path(m.path) for m in models if m.is_dir(follow_symlinks=False)]
        for model_dir in model_dirs:
            try:
                with os.scandir(model_dir) as snaps:
                    snap_dirs = [Path(s.path) for s in snaps if s.is_dir(follow_symlinks=False)]
            except FileNotFoundError:
                continue
            for snap in snap_dirs:
                fd = _try_lock(self._snapshot_lock(snap), create=True)
                if fd is None:
                    continue
                try:
                    if snap.is_dir() and (broken := _broken_links(snap)):
                        shutil.rmtree(snap, ignore_errors=True)
                        log.info("removed snapshot %s: %s no longer cached", snap, broken[0])
                finally:
                    os.close(fd)
            try:
                model_dir.rmdir()  # only succeeds once empty
            except OSError:
                pass
