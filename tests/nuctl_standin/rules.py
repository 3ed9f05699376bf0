"""Nuclio's function-configuration rules, as a checker over a parsed ``function.yaml``.

Written from shared/reference/nuclio.md §1 (not from Nuclio's code). Nuclio
itself ignores unknown keys silently, so the mistakes that matter deploy
"fine" and then misbehave; this checker names them instead:
``meta`` instead of ``metadata``, ``env`` as a map, ``maxWorkers``, two HTTP
triggers, volume names that differ, names Docker or Kubernetes refuse, a cron
trigger whose ``interval`` is not a Go duration or whose ``schedule`` the
robfig/cron parser would refuse.

:func:`config_problems` returns every problem as a sentence naming its path;
an empty list means the config follows the rules. The stand-in ``nuctl``
refuses a deploy with problems, and tests run it over every config in the repo.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

TOP_LEVEL = frozenset({"apiVersion", "kind", "metadata", "spec"})
RESERVED_NAMES = frozenset({"dashboard", "controller", "dlx", "scaler"})
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # DNS-1123 label: Docker image names, kube
RUNTIMES = frozenset({"python:3.9", "python:3.10", "python:3.11"})
HANDLER_RE = re.compile(r"^([\w|-]+(\.[\w|-]+)*):(\w+)$")
DURATION_RE = re.compile(r"^((\d+(\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h))+$")
# A Docker image reference: [registry[:port]/]path[:tag][@digest], lowercase path.
IMAGE_RE = re.compile(r"^(?:[a-zA-Z0-9.-]+(?::\d+)?/)?[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                      r"(?::[\w][\w.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")
DOCKER_VOLUME_KINDS = frozenset({"hostPath"})  # the Docker platform mounts hostPath only
K8S_VOLUME_KINDS = frozenset({"hostPath", "secret", "configMap", "persistentVolumeClaim", "emptyDir", "projected"})

# robfig/cron (what Nuclio's cron trigger parses): 5 fields, or 6 with leading seconds.
_CRON_DESCRIPTORS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
# (low, high, names) per field: second, minute, hour, day of month, month, day of week
_SECOND, _MINUTE, _HOUR = (0, 59, {}), (0, 59, {}), (0, 23, {})
_DOM, _MONTH, _DOW = (1, 31, {}), (1, 12, _MONTHS), (0, 6, _DAYS)


def is_duration(text: Any) -> bool:
    """A Go duration such as ``15m``, ``1h30m``, ``250ms`` (no sign, no bare number but ``0``)."""
    return isinstance(text, str) and (text == "0" or bool(DURATION_RE.match(text)))


def _cron_value(text: str, low: int, high: int, names: Mapping[str, int]) -> int:
    key = text.lower()
    if key in names:
        return names[key]
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a number{' or a name' if names else ''}")
    value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}-{high}")
    return value


def _cron_field(text: str, low: int, high: int, names: Mapping[str, int]) -> None:
    for part in text.split(","):
        rng, _, step = part.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"bad step in {part!r}")
        if rng in ("*", "?"):
            continue
        first, dash, last = rng.partition("-")
        start = _cron_value(first, low, high, names)
        if dash and _cron_value(last, low, high, names) < start:
            raise ValueError(f"range {rng!r} ends before it starts")


def cron_schedule_problem(schedule: Any) -> str | None:
    """None when robfig/cron accepts ``schedule``, else why not."""
    if not isinstance(schedule, str) or not schedule.strip():
        return "must be a non-empty string"
    text = schedule.strip()
    if text.startswith("@"):
        if text in _CRON_DESCRIPTORS:
            return None
        if text.startswith("@every "):
            return None if is_duration(text[len("@every "):].strip()) else "@every needs a Go duration"
        return f"unknown descriptor {text.split()[0]!r}"
    fields = text.split()
    if len(fields) == 5:
        kinds = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)
    elif len(fields) == 6:
        kinds = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)
    else:
        return f"has {len(fields)} fields; expected 5 (minute hour day month weekday) or 6 (with seconds first)"
    for field_text, (low, high, names) in zip(fields, kinds):
        try:
            _cron_field(field_text, low, high, names)
        except ValueError as exc:
            return f"field {field_text!r}: {exc}"
    return None


def _strings_map(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def config_problems(config: Any, *, platform: str = "local") -> list[str]:
    """Every rule ``config`` (a parsed function.yaml or a dashboard body) breaks.

    ``platform``: ``local`` (Docker: hostPath volumes only) or ``kube``."""
    if not isinstance(config, Mapping):
        return ["the config must be a mapping with metadata and spec"]
    problems: list[str] = []
    if "meta" in config:
        problems.append("top level: 'meta' is ignored by Nuclio; the key is 'metadata'")
    extra = sorted(set(config) - TOP_LEVEL - {"meta"})
    if extra:
        problems.append(f"top level: unknown keys {extra} (Nuclio ignores them)")
    problems += _metadata_problems(config.get("metadata"))
    spec = config.get("spec")
    if not isinstance(spec, Mapping):
        return problems + ["spec: missing or not a mapping"]
    problems += _spec_problems(spec, platform)
    return problems


def _metadata_problems(meta: Any) -> list[str]:
    if not isinstance(meta, Mapping):
        return ["metadata: missing or not a mapping"]
    problems = []
    name = meta.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > 63:
        problems.append(f"metadata.name: {name!r} is not a lowercase DNS label ([a-z0-9-], at most 63)")
    elif name in RESERVED_NAMES:
        problems.append(f"metadata.name: {name!r} is reserved by Nuclio")
    for key in ("labels", "annotations"):
        if key in meta and not _strings_map(meta[key]):
            problems.append(f"metadata.{key}: must map strings to strings (quote numbers and booleans)")
    return problems


def _spec_problems(spec: Mapping, platform: str) -> list[str]:
    problems = []
    description = spec.get("description")
    if not isinstance(description, str) or not description.strip():
        problems.append("spec.description: must be a non-empty string (CVAT reads it)")
    if spec.get("runtime") not in RUNTIMES:
        problems.append(f"spec.runtime: {spec.get('runtime')!r} is not one of {sorted(RUNTIMES)}")
    handler = spec.get("handler")
    if not isinstance(handler, str) or not HANDLER_RE.match(handler):
        problems.append(f"spec.handler: {handler!r} is not module:function")
    for key in ("eventTimeout",):
        if key in spec and not is_duration(spec[key]):
            problems.append(f"spec.{key}: {spec[key]!r} is not a Go duration such as 30s")
    if "readinessTimeoutSeconds" in spec and (not isinstance(spec["readinessTimeoutSeconds"], int)
                                              or spec["readinessTimeoutSeconds"] < 0):
        problems.append("spec.readinessTimeoutSeconds: must be a whole number of seconds")
    problems += _env_problems(spec.get("env", []))
    for key, image in (("spec.image", spec.get("image")),
                       ("spec.build.image", (spec.get("build") or {}).get("image"))):
        if image is not None and (not isinstance(image, str) or not IMAGE_RE.match(image)):
            problems.append(f"{key}: {image!r} is not a valid image name (lowercase)")
    if spec.get("build") is not None and not isinstance(spec["build"], Mapping):
        problems.append("spec.build: must be a mapping")
    problems += _trigger_problems(spec.get("triggers"), spec)
    problems += _volume_problems(spec.get("volumes", []), platform)
    return problems


def _env_problems(env: Any) -> list[str]:
    if not isinstance(env, list):
        return ["spec.env: must be a list of {name, value} (a map is silently wrong)"]
    problems, seen = [], set()
    for i, item in enumerate(env):
        if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
            problems.append(f"spec.env[{i}]: needs a name")
            continue
        if "value" in item and not isinstance(item["value"], str):
            problems.append(f"spec.env[{i}] {item['name']}: value must be a string (quote it)")
        if "value" not in item and "valueFrom" not in item:
            problems.append(f"spec.env[{i}] {item['name']}: needs value (or valueFrom on kube)")
        if item["name"] in seen:
            problems.append(f"spec.env[{i}] {item['name']}: set twice")
        seen.add(item["name"])
    return problems


def _trigger_problems(triggers: Any, spec: Mapping) -> list[str]:
    if triggers is None:
        return ["spec.triggers: missing (Nuclio would add default-http with one worker)"]
    if not isinstance(triggers, Mapping):
        return ["spec.triggers: must be a map name -> trigger"]
    problems, http = [], []
    for key, trigger in triggers.items():
        where = f"spec.triggers.{key}"
        if not isinstance(trigger, Mapping):
            problems.append(f"{where}: must be a mapping")
            continue
        if trigger.get("name", key) != key:
            problems.append(f"{where}: name {trigger.get('name')!r} differs from its key")
        if "maxWorkers" in trigger:
            problems.append(f"{where}: maxWorkers is deprecated; set numWorkers")
        kind = trigger.get("kind")
        if kind == "http":
            http.append(key)
            workers = trigger.get("numWorkers")
            if not isinstance(workers, int) or not 1 <= workers <= 100000:
                problems.append(f"{where}: numWorkers must be set, 1 to 100000")
            elif workers != 1 and _gpu_limit(spec):
                problems.append(f"{where}: a GPU function runs 1 worker (each worker holds its own model copy)")
            size = (trigger.get("attributes") or {}).get("maxRequestBodySize")
            if size is not None and (not isinstance(size, int) or size <= 0):
                problems.append(f"{where}: maxRequestBodySize must be a positive byte count")
        elif kind == "cron":
            problems += _cron_problems(where, trigger.get("attributes") or {})
        elif not isinstance(kind, str) or not kind:
            problems.append(f"{where}: needs a kind")
    if len(http) != 1:
        problems.append(f"spec.triggers: exactly one http trigger needed, found {len(http)} ({http})")
    return problems


def _cron_problems(where: str, attributes: Mapping) -> list[str]:
    has_interval, has_schedule = "interval" in attributes, "schedule" in attributes
    if has_interval == has_schedule:
        return [f"{where}: a cron trigger needs exactly one of interval and schedule"]
    if has_interval:
        interval = attributes["interval"]
        if not is_duration(interval) or interval == "0":
            return [f"{where}: interval {interval!r} is not a Go duration such as 15m"]
        return []
    problem = cron_schedule_problem(attributes["schedule"])
    return [f"{where}: schedule {attributes['schedule']!r} {problem}"] if problem else []


def _gpu_limit(spec: Mapping) -> bool:
    limits = ((spec.get("resources") or {}).get("limits") or {})
    try:
        return float(limits.get("nvidia.com/gpu", 0)) > 0
    except (TypeError, ValueError):
        return False


def _volume_problems(volumes: Any, platform: str) -> list[str]:
    if not isinstance(volumes, list):
        return ["spec.volumes: must be a list of {volume, volumeMount}"]
    problems, names, mounts = [], set(), set()
    allowed = DOCKER_VOLUME_KINDS if platform == "local" else K8S_VOLUME_KINDS
    for i, entry in enumerate(volumes):
        where = f"spec.volumes[{i}]"
        volume = entry.get("volume") if isinstance(entry, Mapping) else None
        mount = entry.get("volumeMount") if isinstance(entry, Mapping) else None
        if not isinstance(volume, Mapping) or not isinstance(mount, Mapping):
            problems.append(f"{where}: needs volume and volumeMount")
            continue
        name = volume.get("name")
        if not name or name != mount.get("name"):
            problems.append(f"{where}: volume.name {name!r} and volumeMount.name {mount.get('name')!r} "
                            f"must be set and equal")
        elif name in names:
            problems.append(f"{where}: volume name {name!r} repeats")
        names.add(name)
        kinds = sorted(set(volume) - {"name"})
        if len(kinds) != 1 or kinds[0] not in allowed:
            problems.append(f"{where}: volume kind {kinds} is not mounted on the {platform} platform "
                            f"(allowed: {sorted(allowed)})")
        elif kinds[0] == "hostPath":
            path = (volume["hostPath"] or {}).get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                problems.append(f"{where}: hostPath.path {path!r} must be an absolute path")
        mount_path = mount.get("mountPath")
        if not isinstance(mount_path, str) or not mount_path.startswith("/"):
            problems.append(f"{where}: volumeMount.mountPath {mount_path!r} must be an absolute path")
        elif mount_path in mounts:
            problems.append(f"{where}: two volumes mounted at {mount_path}")
        mounts.add(mount_path)
    return problems
