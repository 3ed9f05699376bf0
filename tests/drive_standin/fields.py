"""`fields` partial responses (shared/reference/gdrive.md §1.4, §7.5).

A mask like ``nextPageToken,files(id,name,capabilities/canDownload),*`` is parsed into a tree
(``{name: subtree-or-None}``; ``None`` selects the whole value), validated against the Drive v3
discovery schemas shipped in the client wheel, and applied to a response dict.
"""

from __future__ import annotations

import functools
import json
import logging
import re

log = logging.getLogger(__name__)

Tree = dict[str, "Tree | None"]


class FieldsError(ValueError):
    def __init__(self, selection: str):
        super().__init__(f"Invalid field selection {selection}")
        self.selection = selection


_NAME = re.compile(r"\s*(\*|[A-Za-z_$@][A-Za-z0-9_$@.\-]*)\s*")


def parse(mask: str) -> Tree:
    tree, pos = _parse_list(mask, 0)
    if pos != len(mask):
        raise FieldsError(mask[pos:] or mask)
    return tree


def _parse_list(text: str, pos: int) -> tuple[Tree, int]:
    tree: Tree = {}
    while True:
        path: list[str] = []
        while True:
            m = _NAME.match(text, pos)
            if not m:
                raise FieldsError(text[pos:] or text)
            path.append(m.group(1))
            pos = m.end()
            if pos < len(text) and text[pos] == "/":
                pos += 1
                continue
            break
        sub: Tree | None = None
        if pos < len(text) and text[pos] == "(":
            sub, pos = _parse_list(text, pos + 1)
            if pos >= len(text) or text[pos] != ")":
                raise FieldsError(text)
            pos += 1
            while pos < len(text) and text[pos].isspace():
                pos += 1
        _merge_path(tree, path, sub)
        if pos < len(text) and text[pos] == ",":
            pos += 1
            continue
        return tree, pos


def _merge_path(tree: Tree, path: list[str], leaf: Tree | None) -> None:
    node = tree
    for name in path[:-1]:
        if name in node and node[name] is None:
            return  # the whole value is already selected
        node = node.setdefault(name, {})
    name = path[-1]
    if name not in node:
        node[name] = leaf
    elif node[name] is None or leaf is None:
        node[name] = None
    else:
        _merge(node[name], leaf)


def _merge(into: Tree, other: Tree) -> None:
    for key, sub in other.items():
        if key not in into:
            into[key] = sub
        elif into[key] is None or sub is None:
            into[key] = None
        else:
            _merge(into[key], sub)


# ---- schema validation -----------------------------------------------------------------------

_FALLBACK_FILE = {
    "kind", "id", "name", "mimeType", "parents", "size", "md5Checksum", "sha1Checksum", "sha256Checksum",
    "modifiedTime", "createdTime", "version", "headRevisionId", "trashed", "explicitlyTrashed",
    "shortcutDetails", "capabilities", "driveId", "resourceKey", "quotaBytesUsed", "owners", "ownedByMe",
    "originalFilename", "fullFileExtension", "fileExtension", "webContentLink", "webViewLink", "exportLinks",
    "spaces", "starred", "shared", "teamDriveId", "trashedTime", "description", "appProperties", "properties",
}


@functools.lru_cache(maxsize=1)
def _schemas() -> dict:
    try:
        from googleapiclient import discovery_cache
        return json.loads(discovery_cache.get_static_doc("drive", "v3"))["schemas"]
    except Exception:  # pragma: no cover - the client is a test dependency
        log.warning("drive.v3 discovery doc unavailable; using a fallback field list")
        file_schema = {"type": "object", "properties": {k: {} for k in _FALLBACK_FILE}}
        return {"File": file_schema, "FileList": {"type": "object", "properties": {
            "kind": {}, "nextPageToken": {}, "incompleteSearch": {},
            "files": {"type": "array", "items": {"$ref": "File"}}}}}


def _resolve(schema: dict) -> dict:
    while True:
        if "$ref" in schema:
            schema = _schemas()[schema["$ref"]]
        elif schema.get("type") == "array" and "items" in schema:
            schema = schema["items"]
        else:
            return schema


def validate(tree: Tree, schema_name: str) -> None:
    _validate(tree, _schemas()[schema_name], "")


def _validate(tree: Tree, schema: dict, prefix: str) -> None:
    schema = _resolve(schema)
    props = schema.get("properties")
    for name, sub in tree.items():
        full = f"{prefix}{name}"
        if name == "*":
            continue
        if props is not None and name in props:
            child = props[name]
        elif props is None and "additionalProperties" in schema:
            child = schema["additionalProperties"]
        elif props is None and not schema:
            child = {}
        else:
            raise FieldsError(full)
        if sub is not None:
            _validate(sub, child, full + "/")


def apply(value, tree: Tree | None):
    """Project ``value`` onto ``tree`` (None = everything)."""
    if tree is None:
        return value
    if isinstance(value, list):
        return [apply(v, tree) for v in value]
    if not isinstance(value, dict):
        return value
    if "*" in tree:
        out = dict(value)
        for key, sub in tree.items():
            if key != "*" and key in value and sub is not None:
                out[key] = apply(value[key], sub)
        return out
    out = {}
    for key, sub in tree.items():
        if key in value:
            out[key] = apply(value[key], sub)
    return out
