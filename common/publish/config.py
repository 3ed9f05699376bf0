"""``FunctionConfig``: one rendered Nuclio function, as registry-sync publishes it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping


def config_hash(body: Mapping[str, Any]) -> str:
    """A stable hash of a rendered ``{metadata, spec}`` body.

    Canonical JSON (sorted keys, no spaces) of the body *without* the hash
    annotation itself, so rendering the same model twice gives the same hash
    and an unchanged model costs no dashboard write.
    """
    from common.publish import CONFIG_HASH_ANNOTATION

    stripped = json.loads(json.dumps(body))
    stripped.get("metadata", {}).get("annotations", {}).pop(CONFIG_HASH_ANNOTATION, None)
    canonical = json.dumps(stripped, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class FunctionConfig:
    """A model version rendered as the body the dashboard takes (``{metadata, spec}``).

    ``body`` already carries the managed labels and the config-hash annotation
    (see :mod:`common.publish`); ``hash`` repeats the latter.
    """

    name: str                      # metadata.name
    folder: str                    # the registry folder it serves
    version: str                   # the model version it serves
    body: Mapping[str, Any] = field(repr=False)
    hash: str = ""
