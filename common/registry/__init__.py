"""Registries: where model folders live.

Layout, the same for every backend (Google Drive, a local folder)::

    <root>/                               e.g. CVAT_Models/
      <model>/                            one folder per model, unique name
        model.json                        required: metadata (docs/model-json.md)
        <file_name>                       required: the weights model.json names
        <extra files>                     optional: e.g. the OpenVINO .bin
        samples/  README.md  logs/        optional, ignored by the runner
        previous_versions/
          v1.0.0/                         an older version: its own model.json,
            model.json                    or the current one with ``version``
            <file_name>                   replaced, and its own weights

A backend lists models, resolves one by name (and optional version pin), and
streams a file's bytes; the disk cache (:mod:`common.cache`) does the rest.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import BinaryIO

from common.manifest import ModelManifest


@dataclass(frozen=True)
class RemoteFile:
    """One file of a model version as the registry describes it.

    ``path`` is relative to the version folder, POSIX style (``model.onnx``,
    ``saved_model/variables/variables.index``). ``locator`` is the backend's
    handle (a local path, a Drive file id). At least one checksum is known;
    the cache names and verifies the bytes by it.
    """

    path: str
    size: int
    locator: str
    md5: str | None = None
    sha256: str | None = None

    @property
    def content_key(self) -> str:
        """Content address used by the cache: ``sha256-<hex>`` or ``md5-<hex>``."""
        if self.sha256:
            return f"sha256-{self.sha256.lower()}"
        if self.md5:
            return f"md5-{self.md5.lower()}"
        raise ValueError(f"{self.path}: the registry gave no checksum")


@dataclass(frozen=True)
class ModelRecord:
    """A resolved model version: its manifest and every file the runner needs."""

    folder: str  # the model's folder name in the registry
    manifest: ModelManifest
    files: tuple[RemoteFile, ...]
    current: bool = True  # False for a previous_versions/ entry

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def primary(self) -> RemoteFile:
        """The weights file model.json's ``file_name`` names."""
        for f in self.files:
            if f.path == self.manifest.file_name:
                return f
        raise LookupError(self.manifest.file_name)


@dataclass(frozen=True)
class EntryError:
    """A registry folder that could not be used, and why (reported, skipped)."""

    folder: str
    error: str


@dataclass
class Listing:
    models: list[ModelRecord] = field(default_factory=list)
    errors: list[EntryError] = field(default_factory=list)
    total_folders: int = 0


class Registry(ABC):
    """What every registry backend offers."""

    @abstractmethod
    def list_models(self) -> Listing:
        """Every model folder's current version; bad folders land in ``errors``."""

    @abstractmethod
    def resolve(self, name: str, version: str | None = None) -> ModelRecord:
        """The model called ``name`` (folder name or model.json ``name``), at
        ``version`` if given (current or under previous_versions/).
        Raises ModelNotFound."""

    @abstractmethod
    def versions(self, name: str) -> list[str]:
        """Every version of a model, current first."""

    @abstractmethod
    def fetch(self, file: RemoteFile, sink: BinaryIO) -> None:
        """Write the file's bytes to ``sink``. Raises RegistryError."""

    def samples(self, record: ModelRecord) -> list[RemoteFile]:
        """Sample pictures of the model: the image files (SAMPLE_EXTENSIONS) directly in
        its folder's ``samples/``, sorted by name, at most MAX_SAMPLES; paths are
        ``samples/<name>``. Fetch them with :meth:`fetch`. Default: none."""
        return []


SAMPLES_FOLDER = "samples"
SAMPLE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MAX_SAMPLES = 8


def is_sample_image(name: str) -> bool:
    """Whether a file called ``name`` counts as a sample picture (by extension, any case)."""
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in SAMPLE_EXTENSIONS
