"""Model folder → Nuclio function name and model label value.

A function name must be a lowercase DNS-1123 label (``[a-z0-9-]``, at most 63
characters, alphanumeric at both ends: kube DNS and Docker image names,
nuclio.md §1.1), must match CVAT's URL pattern ``[a-zA-Z0-9_.-]+``
(cvat-contract.md §1.5) and must not be one of Nuclio's reserved names.

Names depend on the folder name alone (never on which other folders exist), so
they are stable across runs:

* a folder that already is such a name (and fits) keeps it:
  ``yolov8n`` → ``gdrive-yolov8n``;
* any other folder (upper case, spaces, dots, accents, other scripts, too long)
  is lowered, accents are dropped, every run of other characters becomes ``-``,
  the result is cut to fit, and ``-`` plus the first 10 hex digits of the
  SHA-256 of the exact folder name is appended:
  ``YOLOv8 Nano`` → ``gdrive-yolov8-nano-<hash>``.

Two different folders never get the same name: a lossless name never ends in
``-<10 hex digits>`` or ``-v<n>-<n>-<n>`` (a folder that does is treated as
lossy), so it cannot meet a hashed name or a versioned one, and hashed names
differ by the hash of the original folder name.

``version`` (a function per previous version) appends ``-v1-2-0``.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_NAME = 63
HASH_DIGITS = 10
MAX_PREFIX = 24  # leaves room for "model-<hash>-v<version>" in 63
DEFAULT_PREFIX = "gdrive-"
RESERVED_NAMES = frozenset({"dashboard", "controller", "dlx", "scaler"})  # Nuclio refuses these (412)

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
CVAT_ID = re.compile(r"^[a-zA-Z0-9_.-]+$")  # FunctionViewSet.lookup_value_regex
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")  # k8s label value
PREFIX = re.compile(r"^([a-z0-9][a-z0-9-]*)?$")
SEMVER = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)$")

# Endings only a lossy (hashed) or versioned name may have.
_HASHED_END = re.compile(rf"-[0-9a-f]{{{HASH_DIGITS}}}$")
_VERSIONED_END = re.compile(r"-v\d+-\d+-\d+$")


def folder_hash(folder: str) -> str:
    """The first HASH_DIGITS hex digits of the SHA-256 of the folder name (UTF-8, surrogates escaped)."""
    data = folder.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:HASH_DIGITS]


def _ascii_fold(text: str) -> str:
    """Accents dropped (``é`` → ``e``); other non-ASCII characters stay (and are replaced later)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def version_suffix(version: str) -> str:
    """``1.2.0`` (or ``v1.2.0``) → ``-v1-2-0``; ValueError for anything but MAJOR.MINOR.PATCH."""
    match = SEMVER.match(version.strip()) if isinstance(version, str) else None
    if not match:
        raise ValueError(f"version {version!r} is not MAJOR.MINOR.PATCH")
    suffix = "-v" + "-".join(str(int(part)) for part in match.groups())
    if len(suffix) > 20:
        raise ValueError(f"version {version!r} is too long for a function name")
    return suffix


def function_name(folder: str, *, prefix: str = DEFAULT_PREFIX, version: str | None = None) -> str:
    """The Nuclio function name that serves registry folder ``folder`` (see the module doc)."""
    if not isinstance(folder, str) or not folder:
        raise ValueError("a model folder name must be a non-empty string")
    if not PREFIX.match(prefix) or len(prefix) > MAX_PREFIX:
        raise ValueError(f"function name prefix {prefix!r} must be at most {MAX_PREFIX} characters of [a-z0-9-], "
                         "starting with a letter or digit (or empty)")
    suffix = version_suffix(version) if version is not None else ""
    room = MAX_NAME - len(prefix) - len(suffix)
    whole = prefix + folder
    lossless = (DNS_LABEL.match(folder) is not None and len(folder) <= room
                and not _HASHED_END.search(whole) and not _VERSIONED_END.search(whole)
                and whole not in RESERVED_NAMES and DNS_LABEL.match(whole) is not None)
    if lossless:
        return whole + suffix
    digest = folder_hash(folder)
    base = re.sub(r"[^a-z0-9]+", "-", _ascii_fold(folder).lower()).strip("-")
    base = base[:max(0, room - len(digest) - 1)].rstrip("-")
    # Always "<something>-<hash>": a bare hash could equal a lossless folder name.
    return f"{prefix}{base or 'model'}-{digest}{suffix}"


def model_label_value(folder: str) -> str:
    """The MODEL_LABEL value for ``folder``: a valid k8s label value (≤ 63, alphanumeric
    ends, ``-_.`` inside), the folder itself when it already is one, otherwise a
    cleaned form plus ``-`` and the folder's hash (collision-free as names are)."""
    if not isinstance(folder, str) or not folder:
        raise ValueError("a model folder name must be a non-empty string")
    if len(folder) <= MAX_NAME and LABEL_VALUE.match(folder) and not _HASHED_END.search(folder):
        return folder
    digest = folder_hash(folder)
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", _ascii_fold(folder))
    base = re.sub(r"^[^A-Za-z0-9]+", "", base)
    base = base[:MAX_NAME - len(digest) - 1]
    base = re.sub(r"[^A-Za-z0-9]+$", "", base)
    return f"{base or 'model'}-{digest}"
