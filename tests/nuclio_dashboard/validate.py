"""Function-config checks a Nuclio dashboard makes on deploy (nuclio.md §1.1, §1.3, §1.4).

Written from the reference text, not from Nuclio's code. ``validate_function`` raises
:class:`DashboardError` with the status the dashboard would answer.
"""

from __future__ import annotations

import re

PROJECT_LABEL = "nuclio.io/project-name"
RESERVED_NAMES = frozenset({"dashboard", "controller", "dlx", "scaler"})
# Stricter than k8s IsQualifiedName on purpose: lowercase DNS-1123 label (Docker image names, kube).
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 63
MAX_WORKERS = 100000


class DashboardError(Exception):
    """An error the dashboard answers as JSON ``{"error": ..., "errorStackTrace": ...}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_name(name, what: str = "function") -> str:
    if not isinstance(name, str) or not name:
        raise DashboardError(400, f"{what} name must be a non-empty string")
    if len(name) > MAX_NAME:
        raise DashboardError(400, f"{what} name must be no more than {MAX_NAME} characters")
    if not NAME_RE.match(name):
        raise DashboardError(400, f"{what} name must be a lowercase DNS-1123 label ([a-z0-9-]): {name!r}")
    return name


def validate_function(body, projects) -> None:
    """Raise DashboardError unless ``body`` ({metadata, spec}, already enriched) would deploy.

    ``projects`` is a container of existing project names.
    """
    if not isinstance(body, dict):
        raise DashboardError(400, "Request body must be a JSON object")
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        raise DashboardError(400, "Function config must have a 'metadata' object")
    name = check_name(meta.get("name"))
    if name in RESERVED_NAMES:
        raise DashboardError(412, f"Function name is reserved and cannot be used: {name}")
    for key in ("labels", "annotations"):
        value = meta.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise DashboardError(400, f"metadata.{key} must be a map of strings")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise DashboardError(400, "Function config must have a 'spec' object")
    description = spec.get("description")
    if not isinstance(description, str) or not description:
        # Nuclio itself accepts this, but drops the empty value from JSON and CVAT's listing then fails.
        raise DashboardError(400, "spec.description must be a non-empty string (CVAT reads it)")
    _check_triggers(spec.get("triggers") or {})
    _check_volumes(spec.get("volumes") or [])
    if "env" in spec and not isinstance(spec["env"], list):
        raise DashboardError(400, "spec.env must be a list of {name, value}")
    project = meta.get("labels", {}).get(PROJECT_LABEL, "default")
    if project not in projects:
        raise DashboardError(412, "Project does not exist")


def _check_triggers(triggers) -> None:
    if not isinstance(triggers, dict):
        raise DashboardError(400, "spec.triggers must be a map name -> trigger")
    http = 0
    for key, trigger in triggers.items():
        if not key:
            raise DashboardError(400, "Trigger key can not be empty")
        if not isinstance(trigger, dict):
            raise DashboardError(400, f"Trigger {key!r} must be an object")
        if trigger.get("name", key) != key:
            raise DashboardError(400, f"Trigger name must match its key: {trigger.get('name')!r} != {key!r}")
        workers = trigger.get("numWorkers", 0)
        if not isinstance(workers, int) or workers < 0 or workers > MAX_WORKERS:
            raise DashboardError(400, f"Trigger {key!r}: numWorkers must be an int in 0..{MAX_WORKERS}")
        if trigger.get("kind") == "http":
            http += 1
    if http > 1:
        raise DashboardError(400, "There's more than one http trigger (unsupported)")


def _check_volumes(volumes) -> None:
    if not isinstance(volumes, list):
        raise DashboardError(400, "spec.volumes must be a list")
    for index, entry in enumerate(volumes):
        volume = (entry or {}).get("volume") if isinstance(entry, dict) else None
        mount = (entry or {}).get("volumeMount") if isinstance(entry, dict) else None
        if not isinstance(volume, dict) or not isinstance(mount, dict):
            raise DashboardError(400, f"volumes[{index}] needs 'volume' and 'volumeMount'")
        if not volume.get("name") or not mount.get("name"):
            raise DashboardError(400, f"volumes[{index}]: volume.name and volumeMount.name must be set")
        if volume["name"] != mount["name"]:
            raise DashboardError(400, f"volumes[{index}]: volume name {volume['name']!r} does not match "
                                      f"volumeMount name {mount['name']!r}")


def enrich_function(body: dict, project_header: str | None, namespace: str) -> dict:
    """Defaults Nuclio fills in before validating (§1.4), on a copy-safe dict (mutated in place)."""
    meta = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(meta, dict):   # left for validate_function to reject
        return body
    meta.setdefault("namespace", namespace)
    labels = meta.setdefault("labels", {})
    if isinstance(labels, dict):
        if project_header:
            labels[PROJECT_LABEL] = project_header
        labels.setdefault(PROJECT_LABEL, "default")
    meta.setdefault("annotations", {})
    spec = body.get("spec")
    if isinstance(spec, dict):
        if spec.get("runtime") == "python":
            spec["runtime"] = "python:3.9"
        triggers = spec.get("triggers")
        if triggers is None:
            triggers = spec["triggers"] = {}
        if isinstance(triggers, dict):
            for key, trigger in triggers.items():
                if isinstance(trigger, dict):
                    if not trigger.get("name"):
                        trigger["name"] = key
                    if not trigger.get("numWorkers") and trigger.get("maxWorkers"):
                        trigger["numWorkers"] = trigger["maxWorkers"]
                    if trigger.get("kind") == "http" and not trigger.get("numWorkers"):
                        trigger["numWorkers"] = 1
            if not spec.get("disableDefaultHTTPTrigger") and not any(
                    isinstance(t, dict) and t.get("kind") == "http" for t in triggers.values()):
                triggers["default-http"] = {"kind": "http", "name": "default-http", "numWorkers": 1}
    return body
