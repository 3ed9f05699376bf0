"""In-memory Drive state for the stand-in: items, shared drives, hashes, clock and ids.

Behaviour follows shared/reference/gdrive.md §1.5 (File resource fidelity) and §7.6.
"""

from __future__ import annotations

import hashlib
import os
import random
import string
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

FOLDER_MIME = "application/vnd.google-apps.folder"
SHORTCUT_MIME = "application/vnd.google-apps.shortcut"
DOC_MIME = "application/vnd.google-apps.document"
SHEET_MIME = "application/vnd.google-apps.spreadsheet"
GOOGLE_APPS_PREFIX = "application/vnd.google-apps."

_ID_ALPHABET = string.ascii_letters + string.digits + "-_"
_CHUNK = 1 << 20


def rfc3339(ts: datetime) -> str:
    """`2024-05-01T12:34:56.789Z`: millisecond precision, UTC, `Z` suffix."""
    ts = ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (or a date); a missing zone means UTC. Raises ValueError."""
    value = text.strip()
    if not value:
        raise ValueError("empty timestamp")
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _as_time(value: datetime | str | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_rfc3339(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass
class Hashes:
    size: int
    md5: str
    sha1: str
    sha256: str

    @classmethod
    def of_bytes(cls, data: bytes) -> Hashes:
        return cls(len(data), hashlib.md5(data).hexdigest(), hashlib.sha1(data).hexdigest(),
                   hashlib.sha256(data).hexdigest())

    @classmethod
    def of_path(cls, path: Path) -> Hashes:
        md5, sha1, sha256, size = hashlib.md5(), hashlib.sha1(), hashlib.sha256(), 0
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                size += len(chunk)
                md5.update(chunk)
                sha1.update(chunk)
                sha256.update(chunk)
        return cls(size, md5.hexdigest(), sha1.hexdigest(), sha256.hexdigest())


@dataclass
class Revision:
    id: str
    data: bytes | None
    path: Path | None
    hashes: Hashes
    modified: datetime


@dataclass
class Change:
    """One entry of the changes feed (shared/reference/gdrive.md §1.8): the item as it was
    right after the mutation (``file`` is the full rendered resource; None when removed)."""

    token: int
    file_id: str
    removed: bool
    time: datetime
    drive_id: str | None
    file: dict | None


@dataclass
class Item:
    """One Drive item (file, folder, shortcut, Google-native doc, or a root folder)."""

    id: str
    name: str
    mime_type: str
    parent: str | None
    drive_id: str | None
    created: datetime
    modified: datetime
    seq: int
    version: int = 1
    data: bytes | None = None
    path: Path | None = None
    hashes: Hashes | None = None
    head_revision_id: str | None = None
    revisions: list[Revision] = field(default_factory=list)
    explicitly_trashed: bool = False
    trashed_time: datetime | None = None
    shortcut_target: str | None = None
    shortcut_target_mime: str | None = None
    shortcut_target_resource_key: str | None = None
    anyone_with_link: bool = False
    resource_key: str | None = None
    resource_key_required: bool = False
    starred: bool = False
    shared_with_me: bool = False
    description: str | None = None
    app_properties: dict = field(default_factory=dict)
    properties: dict = field(default_factory=dict)
    export_data: dict[str, bytes] = field(default_factory=dict)
    abusive: bool = False
    abuse_ack_allowed: bool = True
    is_root: bool = False
    can_download: bool = True

    @property
    def is_folder(self) -> bool:
        return self.mime_type == FOLDER_MIME

    @property
    def is_shortcut(self) -> bool:
        return self.mime_type == SHORTCUT_MIME

    @property
    def is_google_native(self) -> bool:
        return self.mime_type.startswith(GOOGLE_APPS_PREFIX)

    @property
    def has_binary(self) -> bool:
        return self.hashes is not None

    @property
    def size(self) -> int | None:
        return self.hashes.size if self.hashes else None

    def read_range(self, start: int, end_inclusive: int, chunk: int = 64 * 1024):
        """Yield the bytes [start, end_inclusive] in chunks, from memory or from disk."""
        remaining = end_inclusive - start + 1
        if remaining <= 0:
            return
        if self.data is not None:
            view = memoryview(self.data)
            pos = start
            while remaining > 0:
                step = min(chunk, remaining)
                yield bytes(view[pos:pos + step])
                pos += step
                remaining -= step
            return
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(start)
            while remaining > 0:
                piece = fh.read(min(chunk, remaining))
                if not piece:
                    raise OSError(f"{self.path} shrank while serving it")
                remaining -= len(piece)
                yield piece


class Store:
    """All seeded state, guarded by one re-entrant lock."""

    def __init__(self, seed: int | None = None, owner_email: str = "tester@example.com"):
        self.lock = threading.RLock()
        self.rng = random.Random(seed if seed is not None else int.from_bytes(os.urandom(8), "big"))
        self.items: dict[str, Item] = {}
        self.drives: dict[str, str] = {}  # shared drive id -> name
        self.changes: list[Change] = []  # changes[i].token == i + 1
        self.owner_email = owner_email
        self.permission_id = "".join(self.rng.choice(string.digits) for _ in range(20))
        self._seq = 0
        self._last_time = datetime(1970, 1, 1, tzinfo=UTC)
        root_id = self.new_root_id()
        now = self.tick()
        self.root_id = root_id
        self.items[root_id] = Item(id=root_id, name="My Drive", mime_type=FOLDER_MIME, parent=None, drive_id=None,
                                   created=now, modified=now, seq=self.next_seq(), is_root=True)

    # ---- ids and clock ---------------------------------------------------------------------
    def _random(self, alphabet: str, n: int) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def new_file_id(self) -> str:
        """33 characters from [A-Za-z0-9_-] starting with `1`, like modern blob and folder ids."""
        while True:
            candidate = "1" + self._random(_ID_ALPHABET, 32)
            if candidate not in self.items:
                return candidate

    def new_root_id(self) -> str:
        """19 characters, `0A` + 11 + `Uk9PVA`, like My Drive and shared-drive root ids."""
        while True:
            candidate = "0A" + self._random(string.ascii_letters + string.digits + "-_", 11) + "Uk9PVA"
            if candidate not in self.items:
                return candidate

    def new_revision_id(self) -> str:
        return "0B" + self._random(string.ascii_letters + string.digits + "-_", 45)

    def new_resource_key(self) -> str:
        return "0-" + self._random(string.ascii_letters + string.digits + "_", 22)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def tick(self, at: datetime | str | None = None) -> datetime:
        """A strictly increasing millisecond clock (unless an explicit time is supplied)."""
        explicit = _as_time(at)
        if explicit is not None:
            return explicit
        now = datetime.now(UTC)
        now = now.replace(microsecond=(now.microsecond // 1000) * 1000)
        if now <= self._last_time:
            now = self._last_time + timedelta(milliseconds=1)
        self._last_time = now
        return now

    @property
    def next_change_token(self) -> int:
        return len(self.changes) + 1

    def descendants(self, item_id: str) -> list[str]:
        """``item_id`` and everything below it, parents before children."""
        order, seen = [item_id], {item_id}
        i = 0
        while i < len(order):
            for child in self.items.values():
                if child.parent == order[i] and child.id not in seen:
                    seen.add(child.id)
                    order.append(child.id)
            i += 1
        return order

    # ---- lookups ---------------------------------------------------------------------------
    def resolve_alias(self, file_id: str) -> str:
        return self.root_id if file_id == "root" else file_id

    def get(self, file_id: str) -> Item | None:
        return self.items.get(self.resolve_alias(file_id))

    def require(self, file_id: str) -> Item:
        item = self.get(file_id)
        if item is None:
            raise KeyError(f"no such item: {file_id}")
        return item

    def is_trashed(self, item: Item) -> bool:
        """`trashed` is true when the item or any ancestor folder was trashed."""
        seen = set()
        current: Item | None = item
        while current is not None and current.id not in seen:
            if current.explicitly_trashed:
                return True
            seen.add(current.id)
            current = self.items.get(current.parent) if current.parent else None
        return False

    def touch(self, item: Item, modified: datetime | str | None = None, content_changed: bool = False) -> None:
        item.version += 1
        if content_changed or modified is not None:
            item.modified = self.tick(modified)
