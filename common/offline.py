"""Starting without the registry: a ModelRecord rebuilt from the disk cache's snapshots.

Reads the layout documented in :mod:`common.cache` (read-only; nothing here
writes)::

    <cache>/snapshots/<folder>/<version>-<digest>/model.json   the manifest as served
    <cache>/snapshots/<folder>/<version>-<digest>/<path>       symlink -> .../blobs/<content key>

Each link's target names the blob by its content key (``sha256-<hex>`` or
``md5-<hex>``), so the rebuilt record carries the same checksums the registry
gave, and the cache verifies the blob against them again before serving it.
A snapshot with a link whose blob was evicted is not usable and is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path, PurePosixPath

from common.cache import MANIFEST_NAME
from common.errors import ModelConfigError
from common.manifest import parse_manifest
from common.registry import ModelRecord, RemoteFile

__all__ = ["cached_record"]

log = logging.getLogger(__name__)

_KEY_RE = re.compile(r"^(?:sha256-([0-9a-f]{64})|md5-([0-9a-f]{32}))$")
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
_MAX_MANIFEST_BYTES = 1 << 20


def _version_key(version: str) -> tuple[int, ...]:
    match = _VERSION_RE.match(version)
    return tuple(int(p) for p in match.groups()) if match else (-1,)


def _files(snapshot: Path) -> list[RemoteFile] | None:
    """Every linked file of a snapshot, or None when one is broken or unreadable."""
    files: list[RemoteFile] = []
    for dirpath, dirnames, filenames in os.walk(snapshot):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue  # model.json (a plain file) and nothing else
            match = _KEY_RE.match(os.path.basename(os.readlink(path)))
            if match is None:
                log.debug("offline: %s does not point at a cache blob", path)
                return None
            try:
                size = path.stat().st_size  # follows the link: the blob
            except OSError:
                log.debug("offline: %s is broken (evicted blob)", path)
                return None
            rel = PurePosixPath(*path.relative_to(snapshot).parts).as_posix()
            files.append(RemoteFile(path=rel, size=size, locator=str(path.resolve()),
                                    sha256=match.group(1), md5=match.group(2)))
    return files


def _read_snapshot(folder: str, snapshot: Path) -> ModelRecord | None:
    manifest_path = snapshot / MANIFEST_NAME
    try:
        if manifest_path.stat().st_size > _MAX_MANIFEST_BYTES:
            return None
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest = parse_manifest(raw, source=f"{folder}/{MANIFEST_NAME} (cached)")
    except (OSError, ValueError, ModelConfigError) as exc:
        log.debug("offline: snapshot %s has no usable %s: %s", snapshot, MANIFEST_NAME, exc)
        return None
    files = _files(snapshot)
    if not files or manifest.file_name not in {f.path for f in files}:
        return None
    return ModelRecord(folder=folder, manifest=manifest, files=tuple(sorted(files, key=lambda f: f.path)))


def cached_record(cache_dir: str | os.PathLike[str], model: str, version: str | None = None) -> ModelRecord | None:
    """The newest usable cached snapshot of ``model`` as a ModelRecord, or None.

    ``model`` is the folder name (or, when no such folder is cached, model.json's
    ``name``); ``version`` pins a version, else the highest cached one wins (the
    most recently written snapshot among equals)."""
    root = Path(cache_dir) / "snapshots"
    wanted = version.strip().lstrip("v") if version else None
    folders = [root / model] if (root / model).is_dir() else []
    if not folders:
        try:
            folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return None
    candidates: list[tuple[tuple[int, ...], float, ModelRecord]] = []
    for folder in folders:
        try:
            snapshots = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()]
        except OSError:
            continue
        for snapshot in snapshots:
            record = _read_snapshot(folder.name, snapshot)
            if record is None:
                continue
            if folder.name != model and record.manifest.name != model:
                continue
            if wanted is not None and record.version != wanted:
                continue
            try:
                written = (snapshot / MANIFEST_NAME).stat().st_mtime
            except OSError:
                written = 0.0
            candidates.append((_version_key(record.version), written, record))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]
