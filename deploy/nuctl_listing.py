"""What ``nuctl get function -o json`` lists, for deploy/remove.sh.

    nuctl get function --platform local -o json | python -m deploy.nuctl_listing managed

prints one function name per line: ``all`` every function listed, ``managed`` those the
pack published (its managed and model labels, in CVAT's project; registry-sync is left to
the caller). nuctl's answer takes three forms across versions: a JSON array, one object
when exactly one function exists, or one object after another; with no function at all
some versions print ``No functions found``. Anything else (an entry that is not a function
object, a name that is not a Nuclio name) exits 2 with the reason on stderr, so that the
script stops before it deletes anything on a listing it does not understand.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from common.publish import CVAT_PROJECT
from common.publish.reconcile import in_project, is_managed
from deploy.pack_config import NAME_RE

NO_FUNCTIONS = "no functions found"
SYNC_NAME = "registry-sync"


class ListingError(ValueError):
    """nuctl's output is not a function listing."""


def parse(text: str) -> list[dict[str, Any]]:
    """The function objects of nuctl's output, in order (see the module docstring)."""
    text = text.strip()
    if not text or text.lower().rstrip(".") == NO_FUNCTIONS:
        return []
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text):
        try:
            value, end = decoder.raw_decode(text, at)
        except ValueError:
            raise ListingError(f"nuctl get function -o json answered what is not JSON: {text[at:at + 200]!r}") \
                from None
        values.extend(value if isinstance(value, list) else [value])
        at = end
        while at < len(text) and text[at].isspace():
            at += 1
    functions = []
    for value in values:
        meta = value.get("metadata") if isinstance(value, dict) else None
        name = meta.get("name") if isinstance(meta, dict) else None
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 63:
            raise ListingError(f"nuctl's listing holds what is not a Nuclio function: {json.dumps(value)[:200]}")
        functions.append(value)
    return functions


def names(functions: list[dict[str, Any]], which: str) -> list[str]:
    """``all``: every name; ``managed``: the pack's published functions, registry-sync aside."""
    return [fn["metadata"]["name"] for fn in functions
            if which == "all" or (is_managed(fn) and in_project(fn, CVAT_PROJECT)
                                  and fn["metadata"]["name"] != SYNC_NAME)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=("all", "managed"))
    args = parser.parse_args(argv)
    try:
        found = names(parse(sys.stdin.read()), args.which)
    except ListingError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write("".join(f"{name}\n" for name in found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
