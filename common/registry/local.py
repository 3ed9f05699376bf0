"""A registry in a local folder, laid out exactly like the Drive one.

This is the embedded default (``make demo`` builds one under ``.demo/``) and
what tests use. Files are described by size and sha256, which is computed once
per (path, size, mtime) and remembered for the life of the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO

from common.errors import ModelConfigError, ModelNotFound, RegistryError
from common.manifest import ModelManifest, load_manifest, parse_manifest
from common.registry import EntryError, Listing, ModelRecord, Registry, RemoteFile
from common.registry import MAX_SAMPLES, SAMPLES_FOLDER, is_sample_image

log = logging.getLogger(__name__)

MODEL_JSON = "model.json"
MAX_MODEL_JSON_BYTES = 1 << 20  # the same bound the cache puts on a snapshot's model.json
PREVIOUS = "previous_versions"
_VERSION_DIR = re.compile(r"^v?(\d+\.\d+\.\d+)$")


class LocalRegistry(Registry):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._hashes: dict[tuple[str, int, int], str] = {}

    def __repr__(self) -> str:
        return f"LocalRegistry({str(self.root)!r})"

    # -- listing -----------------------------------------------------------
    def _folders(self) -> list[Path]:
        if not self.root.is_dir():
            raise RegistryError(f"registry folder {self.root} does not exist")
        return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def list_models(self) -> Listing:
        listing = Listing()
        for folder in self._folders():
            listing.total_folders += 1
            try:
                listing.models.append(self._record(folder, folder, current=True))
            except (ModelConfigError, RegistryError) as exc:
                log.warning("registry entry %s skipped: %s", folder.name, exc)
                listing.errors.append(EntryError(folder.name, str(exc)))
            except Exception as exc:  # one broken folder must never hide the others
                log.exception("registry entry %s skipped", folder.name)
                listing.errors.append(EntryError(folder.name, f"unreadable: {type(exc).__name__}: {exc}"))
        return listing

    def resolve(self, name: str, version: str | None = None) -> ModelRecord:
        folder = self._find(name)
        current = self._record(folder, folder, current=True)
        if version is None or version.lstrip("v") == current.version:
            return current
        wanted = version.lstrip("v")
        for vdir in self._previous_dirs(folder):
            if _VERSION_DIR.match(vdir.name).group(1) == wanted:
                return self._record(folder, vdir, current=False, fallback=current.manifest)
        raise ModelNotFound(f"model {name!r} has no version {wanted}; versions: {', '.join(self.versions(name))}")

    def versions(self, name: str) -> list[str]:
        folder = self._find(name)
        current = self._manifest(folder).version
        older = [_VERSION_DIR.match(v.name).group(1) for v in self._previous_dirs(folder)]
        older.sort(key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)
        return [current] + [v for v in older if v != current]

    def fetch(self, file: RemoteFile, sink: BinaryIO) -> None:
        try:
            with open(file.locator, "rb") as src:  # _describe checked it lies inside the registry
                shutil.copyfileobj(src, sink, 1 << 20)
        except OSError as exc:
            raise RegistryError(f"cannot read {file.locator}: {exc.strerror}") from exc

    def samples(self, record: ModelRecord) -> list[RemoteFile]:
        folder = self.root / record.folder / SAMPLES_FOLDER
        if not folder.is_dir():
            return []
        out: list[RemoteFile] = []
        pictures = sorted(p for p in folder.iterdir() if is_sample_image(p.name) and not p.is_dir())
        for path in pictures[:MAX_SAMPLES]:  # as the Drive backend: the first names, bad ones dropped
            try:
                out.append(self._describe(folder.parent, f"{SAMPLES_FOLDER}/{path.name}"))
            except (RegistryError, OSError) as exc:  # e.g. a link out of the registry: not a sample
                log.warning("%s: sample %s left out: %s", record.folder, path.name, exc)
        return out

    # -- helpers -----------------------------------------------------------
    def _find(self, name: str) -> Path:
        direct = self.root / name
        if direct.is_dir() and (direct / MODEL_JSON).is_file():
            return direct
        for folder in self._folders():
            try:
                if json.loads(self._read_model_json(folder / MODEL_JSON, folder.name)).get("name") == name:
                    return folder
            except Exception:  # unreadable or malformed: list_models reports those
                continue
        raise ModelNotFound(f"no model {name!r} in {self.root}")

    @staticmethod
    def _previous_dirs(folder: Path) -> list[Path]:
        prev = folder / PREVIOUS
        if not prev.is_dir():
            return []
        return sorted(p for p in prev.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name))

    def _manifest(self, vdir: Path, fallback: ModelManifest | None = None) -> ModelManifest:
        path = vdir / MODEL_JSON
        source = f"{vdir.name}/{MODEL_JSON}"
        if not path.is_file():
            if fallback is None:
                raise RegistryError("No model.json found")
            # An older version without its own model.json inherits the current one.
            data = dict(fallback.raw)
            data["version"] = _VERSION_DIR.match(vdir.name).group(1)
            return parse_manifest(data, source=source)
        return load_manifest(self._read_model_json(path, source), source=source)

    def _read_model_json(self, path: Path, source: str) -> bytes:
        self._check_inside(path, MODEL_JSON)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_MODEL_JSON_BYTES + 1)
        except OSError as exc:
            raise RegistryError(f"{source}: cannot read model.json ({exc.strerror or exc})") from None
        if len(data) > MAX_MODEL_JSON_BYTES:
            raise ModelConfigError(f"larger than {MAX_MODEL_JSON_BYTES} bytes; keep model.json to metadata",
                                   source=source)
        return data

    def _record(self, folder: Path, vdir: Path, *, current: bool,
                fallback: ModelManifest | None = None) -> ModelRecord:
        manifest = self._manifest(vdir, fallback)
        files = [self._describe(vdir, manifest.file_name)]
        for extra in manifest.extra_files:
            path = vdir / extra
            if path.is_dir():
                self._check_inside(path, extra)
                # os.walk does not follow links to folders; links to files are checked one by one.
                found = [Path(top) / name for top, _, names in os.walk(path) for name in names]
                files.extend(self._describe(vdir, p.relative_to(vdir).as_posix()) for p in sorted(found))
            else:
                files.append(self._describe(vdir, extra))
        return ModelRecord(folder=folder.name, manifest=manifest, files=tuple(files), current=current)

    def _check_inside(self, path: Path, rel: str) -> None:
        """Refuse a file or folder that resolves outside the registry (a link to
        /etc/... must not be hashed, copied into the shared cache and served),
        whether the link is the file, a folder above it or a version folder."""
        try:
            path.resolve(strict=True).relative_to(self.root.resolve(strict=True))
        except (ValueError, OSError):
            raise RegistryError(f"Model file {rel} points outside the model folder") from None

    def _describe(self, vdir: Path, rel: str) -> RemoteFile:
        path = vdir / rel
        if path.is_dir():
            raise RegistryError(f"Model file {rel} is a folder, not a file")
        if not path.is_file():
            raise RegistryError(f"Model file {rel} not found")
        self._check_inside(path, rel)
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        digest = self._hashes.get(key)
        if digest is None:
            with open(path, "rb") as f:
                digest = self._hashes[key] = hashlib.file_digest(f, "sha256").hexdigest()
        return RemoteFile(path=rel, size=st.st_size, locator=str(path), sha256=digest)

