"""Write operations on a registry: validate a model folder, push it, remove a model.

The same operations for both backends (:class:`LocalWriter` over a
:class:`~common.registry.local.LocalRegistry`, :class:`DriveWriter` over a
:class:`~common.registry.gdrive.DriveRegistry`); ``writer_for`` picks one.

Push, on either backend:

1. the source folder is validated (:func:`validate_folder`): model.json loads
   (:func:`~common.manifest.load_manifest`), ``file_name`` has an allowed
   extension, every file it and ``extra_files`` name is there, not empty and
   at most ``MAX_FILE_BYTES``;
2. the files are copied (uploaded) into a *staging* folder whose name starts
   with a dot, which every listing ignores: in the registry root for a new
   model, inside the model folder for a new version of an existing one. This is
   the slow part, and nothing a runner sees has changed yet;
3. for a new version, the current version's files (model.json, ``file_name``,
   ``extra_files``, and anything else the new version would overwrite) move
   into ``previous_versions/vX.Y.Z/``, then the staged files move into the
   model folder; for a new model the staging folder is renamed to the model's
   name. These are renames (metadata changes on Drive), quick.

Each step of 3 is journalled; on any failure the journal is undone in reverse
and the staging folder removed, so a failed push leaves the registry as it
was. A version that already exists (current or previous) is refused.

Remove never deletes: Drive moves the model folder to Drive's trash, a local
registry moves it into ``<root>/.trash/<name>-<UTC time>/``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.errors import ModelConfigError, ModelNotFound, PackError, RegistryError
from common.manifest import ModelManifest, load_manifest
from common.registry import ModelRecord, Registry

log = logging.getLogger(__name__)
progress_log = logging.getLogger("common.registry.progress")

MODEL_JSON = "model.json"
PREVIOUS = "previous_versions"
TRASH = ".trash"
MAX_FILE_BYTES = 5 * 1024 ** 3  # 5 GiB per file (the design's upload limit)
ALLOWED_EXTENSIONS = (".onnx", ".pt", ".pth", ".pb", ".h5", ".tflite", ".engine", ".xml", ".bin", ".ort")
OPTIONAL_ENTRIES = ("README.md", "samples", "logs")  # pushed along when the source folder has them
COPY_CHUNK = 8 << 20
UPLOAD_CHUNK = 8 << 20  # resumable upload chunk (a multiple of 256 KiB, as Drive requires)


class PushError(PackError):
    """A push (or remove) that cannot be done; the registry is left as it was."""

    http_status = 400


class FolderInvalid(PackError):
    """A model folder that cannot be pushed; ``problems`` name a path each."""

    http_status = 400

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# --------------------------------------------------------------------- validation

@dataclass(frozen=True)
class LocalFile:
    rel: str  # POSIX path inside the model folder
    path: Path
    size: int


@dataclass(frozen=True)
class ModelFolder:
    """A validated local model folder: its manifest and every file a push sends."""

    root: Path
    manifest: ModelManifest
    files: tuple[LocalFile, ...]  # model.json first

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def tops(self) -> set[str]:
        """Top-level names the push writes in the model folder."""
        return {f.rel.split("/")[0] for f in self.files}


def validate_folder(path: str | os.PathLike[str]) -> ModelFolder:
    """Check a local model folder; raises FolderInvalid with every problem, each naming its path."""
    root = Path(path)
    if not root.is_dir():
        raise FolderInvalid([f"{root}: not a folder"])
    mj = root / MODEL_JSON
    if not mj.is_file():
        raise FolderInvalid([f"{mj}: not found (every model folder needs a model.json)"])
    try:
        manifest = load_manifest(mj.read_bytes(), source=str(mj))
    except ModelConfigError as exc:
        raise FolderInvalid([f"{mj}: {p}: {m}" for p, m in exc.problems]) from None
    except OSError as exc:
        raise FolderInvalid([f"{mj}: cannot read ({exc.strerror or exc})"]) from None

    problems: list[str] = []
    # .pt2 (torch.export) and .keras are runner formats too (common/runtimes)
    if not manifest.file_name.lower().endswith(ALLOWED_EXTENSIONS + (".pt2", ".keras")):
        problems.append(f"{mj}: $.file_name: {manifest.file_name!r} has none of the allowed extensions "
                        f"{' '.join(ALLOWED_EXTENSIONS)}")
    files = [LocalFile(MODEL_JSON, mj, mj.stat().st_size)]
    wanted = [manifest.file_name, *manifest.extra_files]
    wanted += [name for name in OPTIONAL_ENTRIES if (root / name).exists() and name not in wanted]
    optional = set(OPTIONAL_ENTRIES)
    for rel in wanted:
        if rel.split("/")[0] in (PREVIOUS, MODEL_JSON) or rel.startswith("."):
            problems.append(f"{root / rel}: may not be pushed as a model file (reserved name)")
            continue
        p = root / rel
        if p.is_dir():
            found = sorted(Path(top) / n for top, _, names in os.walk(p) for n in names)
            if not found and rel not in optional:
                problems.append(f"{p}: folder is empty")
            for f in found:
                problems += _check_file(f, rel in optional)
                files.append(LocalFile(f.relative_to(root).as_posix(), f, _size(f)))
        elif p.is_file():
            problems += _check_file(p, rel in optional)
            files.append(LocalFile(rel, p, _size(p)))
        else:
            problems.append(f"{p}: not found (named by model.json)")
    if problems:
        raise FolderInvalid(problems)
    return ModelFolder(root=root, manifest=manifest, files=tuple(files))


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _check_file(p: Path, optional: bool) -> list[str]:
    if p.is_symlink() and not p.resolve().is_file():
        return [f"{p}: broken link"]
    try:
        size = p.stat().st_size
    except OSError as exc:
        return [f"{p}: cannot read ({exc.strerror or exc})"]
    if size == 0 and not optional:
        return [f"{p}: file is empty"]
    if size > MAX_FILE_BYTES:
        return [f"{p}: {size} bytes, over the {MAX_FILE_BYTES} byte limit"]
    return []


# --------------------------------------------------------------------- progress

class Progress:
    """Progress of one file: a tqdm bar on an interactive terminal; elsewhere (logs,
    pipes, tests) a line logged (``common.registry.progress``) at most every
    ``interval`` seconds and at the end: ``model.onnx:  45% (3.0 MiB of 6.6 MiB)``."""

    def __init__(self, label: str, total: int, interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.total, self.interval, self._clock = label, total, interval, clock
        self._last = clock()
        self.done = 0
        self._bar = None
        if sys.stderr.isatty() and progress_log.isEnabledFor(logging.INFO):
            try:
                from tqdm import tqdm
            except ImportError:  # the tool works without it: log lines instead
                pass
            else:
                self._bar = tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024,
                                 leave=True)

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self.done)
        self.done = done
        now = self._clock()
        if self._bar is None and now - self._last >= self.interval and done < self.total:
            self._last = now
            progress_log.info("%s", self.line())

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.update(self.total - self.done)
            self._bar.close()
            self.done = self.total
            return
        self.done = self.total
        progress_log.info("%s", self.line())

    def line(self) -> str:
        pct = 100 if self.total == 0 else int(self.done * 100 / self.total)
        return f"{self.label}: {pct:3d}% ({human_size(self.done)} of {human_size(self.total)})"


def human_size(n: float) -> str:
    """``318 B``, ``3.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def copy_with_progress(src: Path, dst: Path, progress: Progress) -> None:
    """Copy ``src`` to ``dst`` (created, never overwritten) in chunks, reporting progress."""
    done = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while chunk := fin.read(COPY_CHUNK):
            fout.write(chunk)
            done += len(chunk)
            progress.update(done)
    shutil.copystat(src, dst)
    progress.finish()


def file_md5(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


# --------------------------------------------------------------------- results

@dataclass
class PushResult:
    name: str
    version: str
    files: int
    bytes: int
    previous: str | None = None  # the version moved into previous_versions/, if any
    created: bool = True  # a new model folder


@dataclass
class _Journal:
    """Undo steps, run newest first on failure."""

    steps: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def add(self, what: str, undo: Callable[[], None]) -> None:
        self.steps.append((what, undo))

    def rollback(self) -> list[str]:
        failed = []
        for what, undo in reversed(self.steps):
            try:
                undo()
                log.info("rolled back: %s", what)
            except Exception as exc:  # noqa: BLE001 - keep undoing the rest, report what stayed
                log.error("cannot roll back %s: %s", what, exc)
                failed.append(f"{what} ({exc})")
        self.steps.clear()
        return failed


def _tops_to_move(current: ModelRecord, folder: ModelFolder) -> set[str]:
    tops = {MODEL_JSON} | {f.path.split("/")[0] for f in current.files} | folder.tops
    tops.discard(PREVIOUS)
    return tops


def _check_new_version(registry: Registry, folder: ModelFolder) -> tuple[ModelRecord | None, list[str]]:
    """The current record of the model this push adds a version to (None: a new model)."""
    name = folder.manifest.name
    try:
        current = registry.resolve(name)
    except ModelNotFound:
        return None, []
    if current.folder != name:
        raise PushError(f"model name {name!r} is already used by registry folder {current.folder!r}")
    versions = registry.versions(name)
    if folder.manifest.version in versions:
        raise PushError(f"{name} {folder.manifest.version} already exists in the registry "
                        f"(versions: {', '.join(versions)}); bump \"version\" in model.json")
    return current, versions


def _failed(exc: BaseException, journal: _Journal, cleanup: Callable[[], None]) -> PushError:
    left = journal.rollback()
    try:
        cleanup()
    except Exception as err:  # noqa: BLE001
        log.error("cannot remove the staging folder: %s", err)
        left.append(f"staging folder ({err})")
    reason = str(exc) or type(exc).__name__
    if left:
        return PushError(f"push failed ({reason}); rollback incomplete, fix by hand: {'; '.join(left)}")
    return PushError(f"push failed and was rolled back: {reason}")


# --------------------------------------------------------------------- local

class LocalWriter:
    """Writes to a local-folder registry. ``copy(src, dst, progress)`` copies one
    file (injectable: tests make it fail half way)."""

    def __init__(self, registry: Any, copy: Callable[[Path, Path, Progress], None] = copy_with_progress):
        self.registry = registry
        self.root = Path(registry.root)
        self._copy = copy

    def push(self, source: str | os.PathLike[str] | ModelFolder) -> PushResult:
        folder = source if isinstance(source, ModelFolder) else validate_folder(source)
        m = folder.manifest
        if not self.root.is_dir():
            raise PushError(f"registry folder {self.root} does not exist")
        target = self.root / m.name
        current, _ = _check_new_version(self.registry, folder)
        if current is None and (target.exists() or target.is_symlink()):
            raise PushError(f"{target} exists but holds no usable model.json; move it away first")
        vdir = target / PREVIOUS / f"v{current.version}" if current else None
        if vdir is not None and vdir.exists():
            raise PushError(f"{vdir} exists already")

        stage_parent = target if current else self.root
        staging = stage_parent / f".push-{m.name}-{m.version}-{secrets.token_hex(4)}"
        journal = _Journal()

        def cleanup() -> None:
            if staging.exists():
                shutil.rmtree(staging)  # only this push's own staging folder

        try:
            staging.mkdir()
            for f in folder.files:
                dst = staging / f.rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                self._copy(f.path, dst, Progress(f.rel, f.size))
            if current is None:
                os.rename(staging, target)  # fails if the folder appeared meanwhile
            else:
                self._swap(target, staging, vdir, _tops_to_move(current, folder), folder.tops, journal)
                staging.rmdir()
        except BaseException as exc:
            raise _failed(exc, journal, cleanup) from exc
        log.info("pushed %s %s to %s", m.name, m.version, target)
        return PushResult(m.name, m.version, len(folder.files), folder.total_bytes,
                          previous=current.version if current else None, created=current is None)

    @staticmethod
    def _swap(target: Path, staging: Path, vdir: Path, old_tops: set[str], new_tops: set[str],
              journal: _Journal) -> None:
        prev = vdir.parent
        if not prev.exists():
            prev.mkdir()
            journal.add(f"create {prev}", prev.rmdir)
        vdir.mkdir()
        journal.add(f"create {vdir}", vdir.rmdir)
        for top in sorted(old_tops):
            src = target / top
            if src.exists() or src.is_symlink():
                os.rename(src, vdir / top)
                journal.add(f"move {src} to {vdir / top}", lambda s=src, d=vdir / top: os.rename(d, s))
        for top in sorted(new_tops):
            dst = target / top
            os.rename(staging / top, dst)
            journal.add(f"move {staging / top} to {dst}", lambda s=staging / top, d=dst: os.rename(d, s))

    def remove(self, name: str) -> str:
        record = self.registry.resolve(name)
        folder = self.root / record.folder
        trash = self.root / TRASH
        trash.mkdir(exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        dest = trash / f"{record.folder}-{stamp}"
        n = 1
        while dest.exists():
            n += 1
            dest = trash / f"{record.folder}-{stamp}-{n}"
        os.rename(folder, dest)
        log.info("moved %s to %s", folder, dest)
        return str(dest.relative_to(self.root))


# --------------------------------------------------------------------- Drive

FOLDER_MIME = "application/vnd.google-apps.folder"


class DriveWriter:
    """Writes to a Drive registry through its service (which needs the ``drive``
    scope). Uploads are resumable, ``chunk_size`` bytes per request, each
    checked against Drive's md5Checksum once complete."""

    def __init__(self, registry: Any, chunk_size: int = UPLOAD_CHUNK, num_retries: int = 5):
        self.registry = registry
        self.service = registry._service
        self.chunk_size = chunk_size
        self.num_retries = num_retries

    # -- Drive calls --------------------------------------------------------
    def _exec(self, request: Any, what: str) -> dict[str, Any]:
        return self.registry._execute(request, what)

    def _create_folder(self, name: str, parent: str) -> str:
        body = {"name": name, "mimeType": FOLDER_MIME, "parents": [parent]}
        return self._exec(self.service.files().create(body=body, fields="id", supportsAllDrives=True),
                          f"creating folder {name!r}")["id"]

    def _children(self, folder_id: str) -> list[dict[str, Any]]:
        return self.registry._list(f"'{folder_id}' in parents and trashed = false", "id,name,mimeType",
                                   f"listing folder {folder_id}", **self.registry._corpus(self.registry._root_drive))

    def _move(self, file_id: str, new_parent: str, old_parent: str, what: str) -> None:
        self._exec(self.service.files().update(fileId=file_id, addParents=new_parent, removeParents=old_parent,
                                               fields="id", supportsAllDrives=True), what)

    def _rename(self, file_id: str, name: str) -> None:
        self._exec(self.service.files().update(fileId=file_id, body={"name": name}, fields="id",
                                               supportsAllDrives=True), f"renaming to {name!r}")

    def _delete(self, file_id: str) -> None:
        self._exec(self.service.files().delete(fileId=file_id, supportsAllDrives=True), f"deleting {file_id}")

    def _trash(self, file_id: str, what: str) -> None:
        self._exec(self.service.files().update(fileId=file_id, body={"trashed": True}, fields="id",
                                               supportsAllDrives=True), what)

    def upload(self, f: LocalFile, parent: str, name: str) -> dict[str, Any]:
        """A resumable upload of one file; returns Drive's id, size and md5Checksum (checked)."""
        from googleapiclient.errors import HttpError
        from googleapiclient.http import MediaFileUpload

        mime = "application/json" if name.endswith(".json") else "application/octet-stream"
        media = MediaFileUpload(str(f.path), mimetype=mime, chunksize=self.chunk_size, resumable=True)
        request = self.service.files().create(body={"name": name, "parents": [parent]}, media_body=media,
                                              fields="id,name,size,md5Checksum", supportsAllDrives=True)
        progress = Progress(f.rel, f.size)
        response = None
        failures = 0
        while response is None:
            try:
                status, response = request.next_chunk()
            except (HttpError, OSError) as exc:
                code = exc.resp.status if isinstance(exc, HttpError) and exc.resp is not None else 0
                transient = not isinstance(exc, HttpError) or code == 429 or code >= 500 or (
                    code == 403 and "ateLimitExceeded" in str(exc))
                failures += 1
                if not transient or failures > self.num_retries:
                    reason = getattr(exc, "reason", "") or exc
                    raise RegistryError(f"uploading {f.rel}: Drive answered {code or type(exc).__name__}: "
                                        f"{reason}") from None
                # Ask again rather than letting the client resend the chunk: the next call
                # first asks Drive how much arrived (bytes */N) and resumes from there.
                time.sleep(min(30.0, 0.5 * 2 ** (failures - 1)) * (0.5 + random.random() / 2))
                continue
            failures = 0
            if status is not None:
                progress.update(status.resumable_progress)
        progress.finish()
        want = file_md5(f.path)
        got = (response.get("md5Checksum") or "").lower()
        if got != want or int(response.get("size", -1)) != f.size:
            raise RegistryError(f"uploading {f.rel}: Drive stored {response.get('size')} bytes with md5 {got or '?'}, "
                                f"expected {f.size} bytes with md5 {want}")
        return response

    # -- operations ---------------------------------------------------------
    def push(self, source: str | os.PathLike[str] | ModelFolder) -> PushResult:
        folder = source if isinstance(source, ModelFolder) else validate_folder(source)
        m = folder.manifest
        reg = self.registry
        root = reg._root()
        same = reg._model_folders(root, m.name)
        if len(same) > 1:
            raise PushError(f"{len(same)} folders are named {m.name!r} in the registry: remove all but one")
        current, _ = _check_new_version(reg, folder)
        if current is None and same:
            raise PushError(f"registry folder {m.name!r} exists but holds no usable model.json; move it away first")
        model_id = same[0].folder_id if current else None
        if current is not None:
            children = self._children(model_id)
            prev = [c for c in children if c["name"] == PREVIOUS and c.get("mimeType") == FOLDER_MIME]
            for p in prev:
                if any(c["name"] == f"v{current.version}" for c in self._children(p["id"])):
                    raise PushError(f"{m.name}/{PREVIOUS}/v{current.version} exists already")

        journal = _Journal()
        staging: list[str] = []
        stage_name = f".push-{m.name}-{m.version}-{secrets.token_hex(4)}"

        def cleanup() -> None:
            for sid in staging:
                self._delete(sid)  # only this push's staging folder and what was uploaded into it

        try:
            stage_id = self._create_folder(stage_name, model_id or root)
            staging.append(stage_id)
            dirs: dict[str, str] = {"": stage_id}
            for f in folder.files:
                parent_rel, _, base = f.rel.rpartition("/")
                self.upload(f, self._ensure_dirs(dirs, parent_rel), base)
            if current is None:
                self._rename(stage_id, m.name)
                staging.clear()  # it is the model folder now
            else:
                self._swap(model_id, stage_id, children, current, folder, journal)
                self._delete(stage_id)  # empty now
                staging.clear()
        except BaseException as exc:
            raise _failed(exc, journal, cleanup) from exc
        log.info("pushed %s %s to %r", m.name, m.version, reg)
        return PushResult(m.name, m.version, len(folder.files), folder.total_bytes,
                          previous=current.version if current else None, created=current is None)

    def _ensure_dirs(self, dirs: dict[str, str], rel: str) -> str:
        if rel in dirs:
            return dirs[rel]
        parent_rel, _, base = rel.rpartition("/")
        dirs[rel] = self._create_folder(base, self._ensure_dirs(dirs, parent_rel))
        return dirs[rel]

    def _swap(self, model_id: str, stage_id: str, children: list[dict[str, Any]], current: ModelRecord,
              folder: ModelFolder, journal: _Journal) -> None:
        prev = next((c["id"] for c in children if c["name"] == PREVIOUS and c.get("mimeType") == FOLDER_MIME), None)
        if prev is None:
            prev = self._create_folder(PREVIOUS, model_id)
            journal.add(f"create {PREVIOUS}", lambda p=prev: self._delete(p))
        vdir = self._create_folder(f"v{current.version}", prev)
        journal.add(f"create {PREVIOUS}/v{current.version}", lambda: self._delete(vdir))
        tops = _tops_to_move(current, folder)
        for c in children:
            if c["name"] in tops:
                self._move(c["id"], vdir, model_id, f"moving {c['name']} to {PREVIOUS}/v{current.version}")
                journal.add(f"move {c['name']} to {PREVIOUS}/v{current.version}",
                            lambda i=c["id"]: self._move(i, model_id, vdir, "moving back"))
        for c in self._children(stage_id):
            self._move(c["id"], model_id, stage_id, f"moving {c['name']} into place")
            journal.add(f"move new {c['name']} into place",
                        lambda i=c["id"]: self._move(i, stage_id, model_id, "moving back"))

    def remove(self, name: str) -> str:
        record = self.registry.resolve(name)
        folders = self.registry._model_folders(self.registry._root(), record.folder)
        if len(folders) != 1:
            raise PushError(f"{len(folders)} folders are named {record.folder!r}: remove by hand")
        self._trash(folders[0].id, f"moving {record.folder} to the trash")
        return "Drive trash"


def writer_for(registry: Registry, **kwargs: Any) -> LocalWriter | DriveWriter:
    from common.registry.local import LocalRegistry

    if isinstance(registry, LocalRegistry):
        return LocalWriter(registry, **kwargs)
    from common.registry.gdrive import DriveRegistry

    if isinstance(registry, DriveRegistry):
        return DriveWriter(registry, **kwargs)
    raise PushError(f"{registry!r} cannot be written to")
