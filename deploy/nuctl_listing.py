"""What ``nuctl get function -o json`` lists, for deploy/remove.sh.

    nuctl get function --platform local -o json | python -m deploy.nuctl_listing managed

prints one function name per line, each once: ``managed`` the functions the pack published
(its managed and model labels, in CVAT's project; registry-sync is left to ``sync``),
``sync`` registry-sync when it is in the pack's project (``--project``). nuctl's answer
takes several forms across versions: a JSON array, one object when exactly one function
exists, or one object after another; with no function at all some versions print ``No
functions found``, and nuctl may log a line or two on stdout before the JSON. Anything else
(an entry that is not a function object, a name that is not a Nuclio name) exits 2 with the
reason on stderr, so that the script stops before it deletes anything on a listing it does
not understand.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Any

from common.publish import CVAT_PROJECT
from common.publish.reconcile import in_project, is_managed
from deploy.pack_config import NAME_RE

log = logging.getLogger(__name__)

NO_FUNCTIONS = re.compile(r"^\s*no functions found\.?\s*$", re.IGNORECASE | re.MULTILINE)
SYNC_NAME = "registry-sync"


class ListingError(ValueError):
    """nuctl's output is not a function listing."""


def _json_start(text: str) -> int | None:
    """Where the JSON starts: the first line opening with ``[`` or ``{`` (lines before it are
    nuctl's log), or None when no line does."""
    at = 0
    for line in text.splitlines(keepends=True):
        if line.lstrip().startswith(("[", "{")):
            return at
        at += len(line)
    return None


def parse(text: str) -> list[dict[str, Any]]:
    """The function objects of nuctl's output, in order (see the module docstring)."""
    start = _json_start(text)
    if start is None:
        if not text.strip() or NO_FUNCTIONS.search(text):
            return []
        raise ListingError(f"nuctl get function -o json answered what is not JSON: {text.strip()[:200]!r}")
    if text[:start].strip():
        log.warning("skipped what nuctl printed before its listing: %r", text[:start].strip()[:200])
    text = text[start:].rstrip()
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            raise ListingError(f"nuctl get function -o json answered what is not JSON: {text[at:at + 200]!r}") \
                from None
        except RecursionError:
            raise ListingError("nuctl get function -o json answered JSON nested too deeply to be a listing") from None
        values.extend(value if isinstance(value, list) else [value])
        at = end
        while at < len(text) and text[at].isspace():
            at += 1
    for value in values:
        meta = value.get("metadata") if isinstance(value, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not NAME_RE.fullmatch(name) or len(name) > 63:
            raise ListingError(f"nuctl's listing holds what is not a Nuclio function: {json.dumps(value)[:200]}")
    return values


def names(functions: list[dict[str, Any]], which: str, project: str = "") -> list[str]:
    """``managed``: the pack's published functions; ``sync``: registry-sync in ``project``
    (a function of that name elsewhere is someone else's). Each name once."""
    found = []
    for fn in functions:
        name = fn["metadata"]["name"]
        if which == "sync":
            wanted = name == SYNC_NAME and in_project(fn, project)
        else:
            wanted = name != SYNC_NAME and is_managed(fn) and in_project(fn, CVAT_PROJECT)
        if wanted and name not in found:
            found.append(name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("managed", "sync"))
    parser.add_argument("--project", help="for sync: the pack's Nuclio project")
    args = parser.parse_args(argv)
    if args.which == "sync" and not args.project:
        parser.error("sync needs --project, the pack's Nuclio project")
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    # Bytes, decoded leniently: a stray byte in someone's annotation is no reason to stop.
    text = sys.stdin.buffer.read().decode("utf-8", errors="replace")
    try:
        found = names(parse(text), args.which, args.project)
    except ListingError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write("".join(f"{name}\n" for name in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
