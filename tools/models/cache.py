"""Model files built once into the assets cache, outside the repository, and reused.

A builder names its folder ``<assets>/built/<name>-<key>``: :func:`cache_key`
hashes what the files depend on (the source file's sha256, converter versions,
the builder's version), so a change to any of them builds a new folder.
:func:`built_folder` builds it on first use, one builder at a time across
processes, and never leaves a half-built folder behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from tools.assets import assets_dir

log = logging.getLogger(__name__)


def cache_key(*parts: str) -> str:
    """16 hex digits of the sha256 of ``parts`` joined by ``|``."""
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def built_folder(name: str, key: str, build: Callable[[Path], None], what: str | None = None) -> Path:
    """``<assets>/built/<name>-<key>``, made by ``build(folder)`` on first use.

    ``build`` writes into a fresh folder that replaces the final one only when
    it has finished (a ``done`` file marks it), under a lock on the cache, so
    concurrent test workers build it once. ``what`` names it in the log."""
    root = assets_dir() / "built"
    folder = root / f"{name}-{key}"
    if (folder / "done").exists():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "done").exists():
            return folder
        work = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
        os.chmod(work, 0o755)
        try:
            build(work)
            (work / "done").write_text("ok\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(work, folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    log.info("built %s in %s", what or name, folder)
    return folder
