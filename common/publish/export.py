"""Rendered configs for people who deploy with ``nuctl`` or GitOps, and the dry-run diff.

``export_configs`` writes one ``<function name>/function.yaml`` per model into
a folder; each deploys with::

    nuctl deploy --project-name cvat --file <out>/<name>/function.yaml --platform local

(``spec.image`` names the runner image, so nuctl builds nothing). The folder
gets an ``index.json`` naming each function's registry folder and version;
files of functions no longer rendered are removed only when they carry our
managed label, so hand-written files in the same folder survive.

``diff_text`` prints what a sync would change against a dashboard listing, as
unified diffs of the YAML, without writing anything.
"""

from __future__ import annotations

import difflib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from common.atomic import atomic_write
from common.publish import CONFIG_HASH_ANNOTATION, MANAGED_LABEL
from common.publish.config import FunctionConfig

log = logging.getLogger(__name__)

HEADER = ("# Rendered by registry-sync from the model registry; deploy with\n"
          "#   nuctl deploy --project-name cvat --file {path} --platform local\n")


def to_yaml(body: Mapping[str, Any]) -> str:
    # Annotation values (e.g. the CVAT spec JSON) stay strings: safe_dump quotes them.
    return yaml.safe_dump(json.loads(json.dumps(body)), sort_keys=False, allow_unicode=True, width=100)


def export_configs(configs: Iterable[FunctionConfig], out_dir: str | Path) -> list[Path]:
    """Write ``<out_dir>/<name>/function.yaml`` for each config; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index: dict[str, dict[str, str]] = {}
    for config in sorted(configs, key=lambda c: c.name):
        path = out / config.name / "function.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = HEADER.format(path=path) + to_yaml(config.body)
        with atomic_write(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        written.append(path)
        index[config.name] = {"folder": config.folder, "version": config.version, "hash": config.hash}
    for stale in sorted(p for p in out.iterdir() if p.is_dir() and p.name not in index):
        if _is_ours(stale / "function.yaml"):
            shutil.rmtree(stale)
            log.info("export: removed %s (its model left the registry)", stale.name)
    with atomic_write(out / "index.json", "w", encoding="utf-8") as handle:
        handle.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written


def _is_ours(path: Path) -> bool:
    try:
        body = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False
    labels = (body or {}).get("metadata", {}).get("labels", {}) if isinstance(body, dict) else {}
    return isinstance(labels, dict) and labels.get(MANAGED_LABEL) == "true"


def comparable(function: Mapping[str, Any]) -> dict[str, Any]:
    """A dashboard function object reduced to what a sync renders (no status, no
    dashboard-filled defaults we never set), so diffs show real changes only."""
    body = {"metadata": dict(function.get("metadata", {})), "spec": dict(function.get("spec", {}))}
    for key in ("namespace", "resourceVersion", "uid", "creationTimestamp"):
        body["metadata"].pop(key, None)
    return body


def diff_text(plan: Any, current: Mapping[str, Mapping[str, Any]]) -> str:
    """Unified YAML diffs for a reconcile plan (create / update / delete)."""
    chunks: list[str] = []
    for config in plan.create:
        chunks.append(_diff("", to_yaml(config.body), config.name, "(new)"))
    for config in plan.update:
        old = current.get(config.name, {})
        was = old.get("metadata", {}).get("annotations", {}).get(CONFIG_HASH_ANNOTATION, "?")
        chunks.append(_diff(to_yaml(comparable(old)), to_yaml(comparable(config.body)), config.name,
                            f"(hash {was} -> {config.hash})"))
    for name in plan.delete:
        chunks.append(_diff(to_yaml(comparable(current.get(name, {}))), "", name, "(deleted)"))
    return "".join(chunks)


def _diff(old: str, new: str, name: str, note: str) -> str:
    lines = difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=f"dashboard/{name}", tofile=f"registry/{name} {note}")
    return "".join(lines)
