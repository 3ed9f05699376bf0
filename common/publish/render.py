"""Render one registry model version as the Nuclio function config registry-sync publishes.

:func:`render` turns a :class:`~common.registry.ModelRecord` and the
:class:`PublishSettings` into a :class:`~common.publish.config.FunctionConfig`:
the ``{metadata, spec}`` body the dashboard takes, which runs the prebuilt
runner image of the model's runtime family (``spec.image``, no build) with the
model named in its environment. Rendering is pure: the same record and settings
always give the same body and hash. docs/publishing.md lists what each function
gets.

Settings (:meth:`PublishSettings.from_env`), read from registry-sync's environment:

================================  ======================================================  ===========================
variable                          meaning                                                 default
================================  ======================================================  ===========================
``MODEL_REGISTRY``                registry spec, as the runner reads it                   ``local:/opt/registry``
``PUBLISH_REGISTRY_HOST_DIR``     host folder of a ``local:`` registry, mounted           (no mount)
                                  read-only at the registry's path in every function
``NUCLIO_NAMESPACE``              functions' namespace                                    ``nuclio``
``NUCLIO_PROJECT``                project (CVAT lists project ``cvat`` only)              ``cvat``
``RUNNER_IMAGE_ONNX``             runner image, onnx family (ONNX Runtime and OpenVINO)   ``cvat.gdrive-runner.onnx:V``
``RUNNER_IMAGE_PYTORCH``          runner image, PyTorch family                            ``cvat.gdrive-runner.``
                                                                                          ``pytorch:V``
``RUNNER_IMAGE_TENSORFLOW``       runner image, TensorFlow family (tensorflow, keras,     ``cvat.gdrive-runner.``
                                  tflite)                                                 ``tensorflow:V``
``RUNNER_IMAGE_<FAMILY>_GPU``     the same, for models that need a GPU                    ``cvat.gdrive-runner.``
                                                                                          ``<family>-gpu:V``
``MODEL_CACHE_DIR``               the shared cache, as mounted in every function          ``/var/cache/cvat-models``
``MODEL_CACHE_HOST_DIR``          the shared cache's host folder (hostPath)               ``MODEL_CACHE_DIR``
``MODEL_CACHE_SIZE``              cache byte limit (``20GiB``, ``500MB``, bytes);         ``20GiB``
                                  functions get it as a byte count
``PUBLISH_PASS_ENV``              comma list of variables copied (name and value) from    see below
                                  this environment into every function, when set here
``PUBLISH_CREDENTIALS_HOST_PATH`` host path of the Drive service-account key file,        (no mount)
                                  mounted read-only at the path that
                                  ``GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY`` names
``PUBLISH_NAME_PREFIX``           function name prefix (common/publish/naming.py)         ``gdrive-``
``RUNNER_WORKERS``                http numWorkers of a CPU function (GPU functions: 1)    ``2``
``NUCLIO_NETWORK``                docker network of the functions (CVAT's: cvat_cvat)     (none)
``MODEL_REFRESH_SECONDS``         the runner's check interval for a changed model         ``300``
``PUBLISH_MAX_EVENT_TIMEOUT``     cap on a function's eventTimeout in seconds (the        ``55``
                                  dashboard cuts invocations at 60 s)
``PUBLISH_MIN_REPLICAS``          Kubernetes: ``minReplicas`` of every function; ``0``    (not set: one replica)
                                  lets Nuclio scale an idle model to zero (the
                                  dashboard's scale-to-zero settings decide when)
``PUBLISH_MAX_REPLICAS``          Kubernetes: ``maxReplicas`` (needs MIN; default: MIN,   (not set)
                                  or 1 when MIN is 0)
================================  ======================================================  ===========================

``V`` is the pack version (``common.__version__``): the tag ``make deploy`` builds.

``PUBLISH_PASS_ENV`` defaults to ``GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY,GOOGLE_DRIVE_USE_ADC,
DRIVE_ROOT_URL,DRIVE_RETRIES``: names and paths, never secrets.
``GOOGLE_DRIVE_API_KEY`` is refused there, because a function config is readable
by anyone who can reach the dashboard; give the functions a service-account key
file instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from common import __version__
from common.cache import parse_size
from common.errors import SettingsError
from common.manifest import ModelManifest
from common.publish import (
    CONFIG_HASH_ANNOTATION,
    CVAT_PROJECT,
    MANAGED_LABEL,
    MODEL_FOLDER_ANNOTATION,
    MODEL_LABEL,
    MODEL_VERSION_ANNOTATION,
    PACK_VERSION_ANNOTATION,
    PROJECT_LABEL,
)
from common.publish.config import FunctionConfig, config_hash
from common.publish.kinds import NotPublishable, cvat_kind, kind_annotations, label_spec
from common.publish.naming import DEFAULT_PREFIX, function_name, model_label_value
from common.registry import ModelRecord
from common.runtimes.families import FAMILIES, family_of, image_name

log = logging.getLogger(__name__)

RUNTIME = "python:3.11"
HANDLER = "main:handler"
HTTP_TRIGGER = "http"
MAX_REQUEST_BODY = 64 << 20  # base64 PNGs of large frames; Nuclio's default 4 MiB is too small
WORKER_WAIT_MS = 10_000  # how long a request waits for a busy worker (CVAT's examples: 10 s)
RESTART_POLICY = {"name": "always", "maximumRetryCount": 3}

# Readiness: the first start downloads the model into the cache before the worker
# answers, so the timeout grows with the model: base + total size / bandwidth.
READINESS_BASE_SECONDS = 120  # Nuclio's own default
ASSUMED_BYTES_PER_SECOND = 10 << 20  # 10 MiB/s, a modest Drive download
# eventTimeout: 30 s unless model.json's requirements.expected_latency_ms asks for
# more (LATENCY_HEADROOM times it), capped by PublishSettings.max_event_timeout.
DEFAULT_EVENT_TIMEOUT = 30
LATENCY_HEADROOM = 3
DEFAULT_MAX_EVENT_TIMEOUT = 55

CACHE_VOLUME = "model-cache"
REGISTRY_VOLUME = "model-registry"
CREDENTIALS_VOLUME = "drive-credentials"
SA_KEY_SETTING = "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY"
DEFAULT_PASS_ENV = (SA_KEY_SETTING, "GOOGLE_DRIVE_USE_ADC", "DRIVE_ROOT_URL", "DRIVE_RETRIES")
SECRET_ENV = frozenset({"GOOGLE_DRIVE_API_KEY"})  # values that are secrets themselves
# Variables every function gets from the settings; PUBLISH_PASS_ENV may not override them.
OWN_ENV = frozenset({"MODEL_REGISTRY", "MODEL_NAME", "MODEL_VERSION", "MODEL_CACHE_DIR", "MODEL_CACHE_SIZE",
                     "MODEL_REFRESH_SECONDS", "RUNNER_WORKERS"})

# Runner images per family (common/runtimes/families.py: ONNX Runtime and OpenVINO
# share the onnx image), tagged with the pack version as `make deploy` builds them;
# RUNNER_IMAGE_<FAMILY>[_GPU] overrides each.
DEFAULT_IMAGES: Mapping[str, str] = MappingProxyType({f: f"{image_name(f)}:{__version__}" for f in FAMILIES})
DEFAULT_GPU_IMAGES: Mapping[str, str] = MappingProxyType(
    {f: f"{image_name(f, gpu=True)}:{__version__}" for f in FAMILIES})
# When model.json names no engine the framework picks the family.
FRAMEWORK_FAMILIES: Mapping[str, str] = MappingProxyType({
    "onnx": "onnx", "openvino": "onnx", "pytorch": "pytorch", "tensorflow": "tensorflow", "keras": "tensorflow",
})


@dataclass(frozen=True)
class PublishSettings:
    """How registry models become functions (see the module doc for the variables)."""

    registry: str = "local:/opt/registry"
    registry_host_dir: str | None = None
    namespace: str = "nuclio"
    project: str = CVAT_PROJECT
    images: Mapping[str, str] = field(default_factory=lambda: DEFAULT_IMAGES)
    gpu_images: Mapping[str, str] = field(default_factory=lambda: DEFAULT_GPU_IMAGES)
    cache_dir: str = "/var/cache/cvat-models"
    cache_host_dir: str = "/var/cache/cvat-models"
    cache_size: int = 20 << 30  # bytes (MODEL_CACHE_SIZE is written as a byte count)
    pass_env: tuple[tuple[str, str], ...] = ()  # (name, value), sorted by name
    credentials_host_path: str | None = None
    prefix: str = DEFAULT_PREFIX
    workers: int = 2
    network: str | None = None
    refresh_seconds: str = "300"
    max_event_timeout: int = DEFAULT_MAX_EVENT_TIMEOUT
    replicas: tuple[int, int] | None = None  # (minReplicas, maxReplicas); None: the platform's default

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "PublishSettings":
        """Settings from ``env`` (default os.environ); SettingsError names a bad variable."""
        env = os.environ if env is None else env

        def get(name: str, default: str = "") -> str:
            return env.get(name, "").strip() or default

        registry = get("MODEL_REGISTRY", cls.registry)
        cache_dir = _absolute("MODEL_CACHE_DIR", get("MODEL_CACHE_DIR", cls.cache_dir))
        namespace = _dns_label("NUCLIO_NAMESPACE", get("NUCLIO_NAMESPACE", cls.namespace))
        project = _dns_label("NUCLIO_PROJECT", get("NUCLIO_PROJECT", cls.project))
        network = get("NUCLIO_NETWORK") or None
        if network is not None and not _DOCKER_NETWORK.match(network):
            raise SettingsError(f"NUCLIO_NETWORK must be a Docker network name ([A-Za-z0-9][A-Za-z0-9_.-]*), "
                                f"got {network!r}")
        try:
            cache_size = parse_size(get("MODEL_CACHE_SIZE", "20GiB"))
            if cache_size < 1:
                raise ValueError("must be at least 1 byte")
        except ValueError as exc:
            raise SettingsError(f"MODEL_CACHE_SIZE: {exc}") from None
        images = {f: _image(f"RUNNER_IMAGE_{f.upper()}", get(f"RUNNER_IMAGE_{f.upper()}", DEFAULT_IMAGES[f]))
                  for f in FAMILIES}
        gpu_images = {f: _image(f"RUNNER_IMAGE_{f.upper()}_GPU",
                                get(f"RUNNER_IMAGE_{f.upper()}_GPU", DEFAULT_GPU_IMAGES[f])) for f in FAMILIES}

        names = [n.strip() for n in get("PUBLISH_PASS_ENV", ",".join(DEFAULT_PASS_ENV)).split(",") if n.strip()]
        for name in names:
            if not _ENV_NAME.match(name):
                raise SettingsError(f"PUBLISH_PASS_ENV: {name!r} is not an environment variable name "
                                    f"([A-Za-z_][A-Za-z0-9_]*)")
            if name in SECRET_ENV:
                raise SettingsError(f"PUBLISH_PASS_ENV: {name} holds a secret and would be readable in every "
                                    f"function's config; mount a service-account key file instead "
                                    f"(PUBLISH_CREDENTIALS_HOST_PATH, {SA_KEY_SETTING})")
            if name in OWN_ENV:
                raise SettingsError(f"PUBLISH_PASS_ENV: {name} is set by registry-sync itself")
        pass_env = tuple(sorted((n, env[n].strip()) for n in set(names) if env.get(n, "").strip()))
        # Never echo this value in an error: it may be the key itself, pasted in place of its path.
        if _looks_like_key(env.get(SA_KEY_SETTING, "")):
            raise SettingsError(f"{SA_KEY_SETTING} must be the path of the service-account key file, but it holds "
                                f"what looks like the key itself (refused: it would be copied into every "
                                f"function's config and into error messages); mount the file and give its path")
        key_path = dict(pass_env).get(SA_KEY_SETTING)
        if key_path and not key_path.startswith("/"):
            raise SettingsError(f"{SA_KEY_SETTING} must be an absolute path when it is passed to the functions "
                                f"(PUBLISH_PASS_ENV), got {key_path!r}")
        credentials = get("PUBLISH_CREDENTIALS_HOST_PATH") or None
        if credentials:
            _absolute("PUBLISH_CREDENTIALS_HOST_PATH", credentials)
        registry_host_dir = get("PUBLISH_REGISTRY_HOST_DIR") or None
        if registry_host_dir:
            _absolute("PUBLISH_REGISTRY_HOST_DIR", registry_host_dir)
            local = _local_registry_path(registry)
            if local is not None and not local.startswith("/"):
                raise SettingsError(f"PUBLISH_REGISTRY_HOST_DIR is mounted at MODEL_REGISTRY's folder, which must "
                                    f"then be an absolute path; got {registry!r}")
        if credentials and not dict(pass_env).get(SA_KEY_SETTING):
            raise SettingsError(f"PUBLISH_CREDENTIALS_HOST_PATH is set, but {SA_KEY_SETTING} (the path it is "
                                f"mounted at) is not passed: set it and keep it in PUBLISH_PASS_ENV")

        if dict(pass_env).get(SA_KEY_SETTING) and not credentials:
            log.warning("functions will read the Drive key at %s (%s) but PUBLISH_CREDENTIALS_HOST_PATH is not "
                        "set: the file must reach them another way (image, platform volumes)",
                        dict(pass_env)[SA_KEY_SETTING], SA_KEY_SETTING)
        prefix = env.get("PUBLISH_NAME_PREFIX", DEFAULT_PREFIX).strip()
        try:
            function_name("x", prefix=prefix)
        except ValueError as exc:
            raise SettingsError(f"PUBLISH_NAME_PREFIX: {exc}") from None
        workers = _whole("RUNNER_WORKERS", get("RUNNER_WORKERS", str(cls.workers)), 1, 100)
        max_timeout = _whole("PUBLISH_MAX_EVENT_TIMEOUT",
                             get("PUBLISH_MAX_EVENT_TIMEOUT", str(DEFAULT_MAX_EVENT_TIMEOUT)), 1, 86_400)
        replicas = None
        if get("PUBLISH_MIN_REPLICAS") or get("PUBLISH_MAX_REPLICAS"):
            if not get("PUBLISH_MIN_REPLICAS"):
                raise SettingsError("PUBLISH_MAX_REPLICAS needs PUBLISH_MIN_REPLICAS (0 for scale to zero)")
            low = _whole("PUBLISH_MIN_REPLICAS", get("PUBLISH_MIN_REPLICAS"), 0, 1000)
            high = _whole("PUBLISH_MAX_REPLICAS", get("PUBLISH_MAX_REPLICAS", str(max(low, 1))), max(low, 1), 1000)
            replicas = (low, high)
        refresh = get("MODEL_REFRESH_SECONDS", cls.refresh_seconds)
        try:
            if not math.isfinite(float(refresh)) or float(refresh) < 0:
                raise ValueError
        except ValueError:
            raise SettingsError(f"MODEL_REFRESH_SECONDS must be a number of seconds, 0 or more, "
                                f"got {refresh!r}") from None
        return cls(registry=registry, registry_host_dir=registry_host_dir,
                   namespace=namespace, project=project,
                   images=MappingProxyType(images), gpu_images=MappingProxyType(gpu_images),
                   cache_dir=cache_dir,
                   cache_host_dir=_absolute("MODEL_CACHE_HOST_DIR", get("MODEL_CACHE_HOST_DIR", cache_dir)),
                   cache_size=cache_size, pass_env=pass_env, credentials_host_path=credentials,
                   prefix=prefix, workers=workers, network=network,
                   refresh_seconds=refresh, max_event_timeout=max_timeout, replicas=replicas)


_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DOCKER_NETWORK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A Docker image reference: [host[:port]/]path[:tag][@digest], path components lowercase
# (the dashboard refuses a function whose image does not parse, nuclio.md §1.4).
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
                    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$")


def _dns_label(name: str, value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise SettingsError(f"{name} must be a lowercase DNS-1123 label (at most 63 of [a-z0-9-], letter or digit at "
                            f"both ends), got {value!r}")
    return value


def _absolute(name: str, value: str) -> str:
    if not value.startswith("/"):
        raise SettingsError(f"{name} must be an absolute path (it is mounted into every function), got {value!r}")
    return value


def _image(name: str, value: str) -> str:
    if not _IMAGE.match(value):
        raise SettingsError(f"{name} is not a Docker image reference ([registry/]name[:tag], lowercase name), "
                            f"got {value!r}")
    return value


def _looks_like_key(value: str) -> bool:
    return any(mark in value for mark in ("{", "\n", "PRIVATE KEY", "private_key"))


def _whole(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
        if not low <= value <= high:
            raise ValueError
    except ValueError:
        raise SettingsError(f"{name} must be a whole number from {low} to {high}, got {text!r}") from None
    return value


# ---- what a model needs -------------------------------------------------------


def runtime_family(manifest: ModelManifest) -> str:
    """The runner image family: the engine (runtime.name) decides, else the framework."""
    family = family_of(manifest.runtime.name) or FRAMEWORK_FAMILIES.get(manifest.framework)
    if family is None:
        raise NotPublishable("$.framework", f"no runner image runs framework {manifest.framework!r} "
                                            f"(runtime {manifest.runtime.name!r})")
    return family


def needs_gpu(manifest: ModelManifest) -> bool:
    """runtime.device GPU/CUDA, or requirements.gpu_required true (read defensively)."""
    device = (manifest.runtime.device or "").upper()
    if device.startswith(("GPU", "CUDA")):
        return True
    requirements = manifest.raw.get("requirements")
    return isinstance(requirements, Mapping) and requirements.get("gpu_required") is True


def readiness_seconds(total_bytes: int) -> int:
    """Seconds a first start may take: READINESS_BASE_SECONDS + download at the assumed bandwidth."""
    return READINESS_BASE_SECONDS + math.ceil(max(0, total_bytes) / ASSUMED_BYTES_PER_SECOND)


def event_timeout_seconds(manifest: ModelManifest, cap: int) -> int:
    """30 s, or LATENCY_HEADROOM × model.json ``requirements.expected_latency_ms`` when
    that is longer; never above ``cap``. A malformed value is logged and ignored."""
    requirements = manifest.raw.get("requirements")
    latency = requirements.get("expected_latency_ms") if isinstance(requirements, Mapping) else None
    seconds = DEFAULT_EVENT_TIMEOUT
    if latency is not None:
        if isinstance(latency, (int, float)) and not isinstance(latency, bool) and math.isfinite(latency) \
                and latency > 0:
            seconds = max(seconds, math.ceil(LATENCY_HEADROOM * latency / 1000))
        else:
            log.warning("%s: requirements.expected_latency_ms %r is not a positive number; using %d s",
                        manifest.name, latency, seconds)
    return min(seconds, cap)


def annotation_version(manifest: ModelManifest, kind: str) -> str:
    """CVAT's integer ``version``: the model's major version. Interactors get at least 2,
    because CVAT reads it as the interactor API version and flags anything below 2
    as outdated (the runner answers in the v2 form)."""
    major = int(manifest.version.split(".")[0])
    return str(max(major, 2) if kind == "interactor" else major)


def description(manifest: ModelManifest) -> str:
    """model.json's description, or a generated one (CVAT needs it non-empty)."""
    text = manifest.description.strip()
    if text:
        return text
    return (f"{manifest.display_name}: {manifest.type} model ({manifest.framework}), version "
            f"{manifest.version}, from the model registry")


# ---- rendering ----------------------------------------------------------------


def render(record: ModelRecord, settings: PublishSettings, *, name: str | None = None,
           pin_version: bool = True) -> FunctionConfig:
    """The function config serving ``record`` (see the module doc and docs/publishing.md).

    ``name`` overrides the function name (default :func:`function_name` of the
    folder, with the version appended for a previous version). ``pin_version``
    writes ``MODEL_VERSION``; without it the runner follows the current version.
    Raises NotPublishable for a model CVAT could not use."""
    manifest = record.manifest
    kind = cvat_kind(manifest.type)
    spec = label_spec(manifest)
    family = runtime_family(manifest)
    gpu = needs_gpu(manifest)
    if name is None:
        name = function_name(record.folder, prefix=settings.prefix,
                             version=None if record.current else record.version)
    # A blank display name would show as an empty entry in CVAT's model list.
    shown = manifest.display_name if manifest.display_name.strip() else manifest.name
    display = shown if record.current else f"{shown} ({manifest.version})"

    annotations = {
        "name": display,
        "type": kind,
        "spec": json.dumps(spec, separators=(",", ":")),
        "version": annotation_version(manifest, kind),
        "framework": manifest.framework,
        **kind_annotations(manifest),
        MODEL_FOLDER_ANNOTATION: record.folder,
        MODEL_VERSION_ANNOTATION: manifest.version,
        PACK_VERSION_ANNOTATION: __version__,
    }
    workers = 1 if gpu else settings.workers
    env = [("MODEL_REGISTRY", settings.registry), ("MODEL_NAME", record.folder)]
    if pin_version:
        env.append(("MODEL_VERSION", manifest.version))
    env += [("MODEL_CACHE_DIR", settings.cache_dir), ("MODEL_CACHE_SIZE", str(settings.cache_size)),
            ("MODEL_REFRESH_SECONDS", settings.refresh_seconds), ("RUNNER_WORKERS", str(workers))]
    env += sorted(settings.pass_env)

    volumes = [_volume(CACHE_VOLUME, settings.cache_host_dir, settings.cache_dir)]
    local_path = _local_registry_path(settings.registry)
    if settings.registry_host_dir and local_path:
        volumes.append(_volume(REGISTRY_VOLUME, settings.registry_host_dir, local_path, read_only=True))
    if settings.credentials_host_path:
        volumes.append(_volume(CREDENTIALS_VOLUME, settings.credentials_host_path,
                               dict(settings.pass_env)[SA_KEY_SETTING], read_only=True))

    platform: dict[str, Any] = {"restartPolicy": dict(RESTART_POLICY)}
    if settings.network:
        platform["network"] = settings.network
    body_spec: dict[str, Any] = {
        "description": description(manifest),
        "runtime": RUNTIME,
        "handler": HANDLER,
        "image": (settings.gpu_images if gpu else settings.images)[family],
        "env": [{"name": k, "value": v} for k, v in env],
        "volumes": volumes,
        "triggers": {HTTP_TRIGGER: {"kind": "http", "name": HTTP_TRIGGER, "numWorkers": workers,
                                    "workerAvailabilityTimeoutMilliseconds": WORKER_WAIT_MS,
                                    "attributes": {"maxRequestBodySize": MAX_REQUEST_BODY}}},
        "eventTimeout": f"{event_timeout_seconds(manifest, settings.max_event_timeout)}s",
        "readinessTimeoutSeconds": readiness_seconds(sum(f.size for f in record.files)),
        "platform": {"attributes": platform},
    }
    if gpu:
        body_spec["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    if settings.replicas is not None:
        body_spec["minReplicas"], body_spec["maxReplicas"] = settings.replicas
    body = {
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": {MANAGED_LABEL: "true", MODEL_LABEL: model_label_value(record.folder),
                       PROJECT_LABEL: settings.project},
            "annotations": annotations,
        },
        "spec": body_spec,
    }
    digest = config_hash(body)
    body["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = digest
    return FunctionConfig(name=name, folder=record.folder, version=manifest.version, body=body, hash=digest)


def _local_registry_path(spec: str) -> str | None:
    """The folder of a ``local:<folder>`` (or bare path) registry spec; None for Drive."""
    kind, sep, rest = spec.partition(":")
    if sep and kind == "local":
        return rest.strip() or None
    return None if sep else spec


def _volume(name: str, host_path: str, mount_path: str, *, read_only: bool = False) -> dict[str, Any]:
    mount: dict[str, Any] = {"name": name, "mountPath": mount_path}
    if read_only:
        mount["readOnly"] = True
    return {"volume": {"name": name, "hostPath": {"path": host_path}}, "volumeMount": mount}
