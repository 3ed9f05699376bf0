"""What deploy.sh and remove.sh deploy, computed from deploy/settings.env.

The shell scripts read the settings file into their environment and ask this
module for everything that is more than a command line: whether the settings
are complete (:func:`load`), which runner images to build (``images``), the
registry-sync function config with its environment, volumes and cron trigger
(``sync-config``), and on Kubernetes the node-preparation DaemonSet
(``node-prep``). It never reads the Drive key file: only its path travels.

Usage (from the repository root)::

    python -m deploy.pack_config check      --platform local|kube [--gpu] [--for deploy|remove]
    python -m deploy.pack_config images     --platform P [--gpu]        # lines: <variant> <image to build>
    python -m deploy.pack_config sync-config --platform P [--gpu] --out FILE
    python -m deploy.pack_config node-prep  --platform kube --out FILE
    python -m deploy.pack_config get        --platform P NAME           # one resolved setting

Settings: deploy/settings.env.example documents every one.
"""

from __future__ import annotations

import argparse
import copy
import logging
import posixpath
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from common import __version__
from common.errors import SettingsError
from common.publish import CVAT_PROJECT, PACK_VERSION_ANNOTATION
from common.runtimes.families import FAMILIES, image_name

REPO = Path(__file__).resolve().parent.parent
SYNC_SOURCE = REPO / "functions" / "registry-sync" / "function.yaml"
SYNC_NAME = "registry-sync"
CACHE_MOUNT = "/var/cache/cvat-models"       # MODEL_CACHE_DIR inside every function
KEY_DIR = "/run/secrets/cvat-gdrive"          # the Drive key's folder inside every function
KEY_FILE = "service-account.json"
KEY_PATH = f"{KEY_DIR}/{KEY_FILE}"            # GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY
NODE_PREP = "cvat-gdrive-node-prep"
PLATFORMS = ("local", "kube")
# Go duration, as Nuclio's cron trigger parses `interval`
DURATION_RE = re.compile(r"^((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$")
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

log = logging.getLogger("deploy")


@dataclass(frozen=True)
class DeploySettings:
    """deploy/settings.env, resolved for one platform (defaults filled in, checked)."""

    platform: str
    gpu: bool
    registry: str
    drive_key_file: str | None          # host path (local) or the file kubectl makes the Secret from (kube)
    registry_host_dir: str | None       # host folder of a local: registry
    namespace: str
    dashboard_url: str
    network: str | None
    pack_project: str
    cache_host_dir: str
    cache_size: str
    interval: str | None
    schedule: str | None
    families: tuple[str, ...]
    smoke_tests: str
    delete_stale: str
    workers: str
    image_registry: str | None          # kube: where nuctl pushes
    run_registry: str | None            # kube: where nodes pull from
    secret_name: str
    node_prep_image: str
    node_key_dir: str
    min_replicas: str = ""  # PUBLISH_MIN_REPLICAS (kube): "0" = scale idle models to zero
    max_replicas: str = ""

    @property
    def drive(self) -> bool:
        return self.registry.startswith(("gdrive:", "gdrive-id:"))

    def runner_image(self, family: str, gpu: bool, *, pull: bool) -> str:
        """The runner image, tagged with the pack version. ``pull``: as functions pull it
        (kube: from the run registry); else as nuctl builds it (it adds --registry itself)."""
        name = f"{image_name(family, gpu=gpu)}:{__version__}"
        registry = self.run_registry if pull and self.platform == "kube" else None
        return f"{registry.rstrip('/')}/{name}" if registry else name

    @property
    def credentials_host_path(self) -> str | None:
        """Where the runners' hostPath volume finds the key: the file itself on Docker,
        the copy the node-prep DaemonSet keeps on each Kubernetes node."""
        if not self.drive:
            return None
        return self.drive_key_file if self.platform == "local" else f"{self.node_key_dir}/{KEY_FILE}"


def _get(env: Mapping[str, str], name: str, default: str = "") -> str:
    return env.get(name, "").strip() or default


def load(env: Mapping[str, str], platform: str | None = None, *, gpu: bool = False,
         purpose: str = "deploy") -> DeploySettings:
    """The settings for ``platform`` (default NUCLIO_PLATFORM, else local); SettingsError
    names every missing or bad setting at once. ``purpose`` ``remove`` needs fewer."""
    platform = platform or _get(env, "NUCLIO_PLATFORM", "local")
    if platform not in PLATFORMS:
        raise SettingsError(f"platform must be local or kube, got {platform!r}")
    kube = platform == "kube"
    missing: list[str] = []
    bad: list[str] = []
    registry = _get(env, "MODEL_REGISTRY")
    if not registry and purpose == "deploy":
        missing.append("MODEL_REGISTRY (gdrive:<folder name>, gdrive-id:<folder id> or local:<path>)")
    drive = registry.startswith(("gdrive:", "gdrive-id:"))
    key = _get(env, "DRIVE_KEY_FILE") or None
    if purpose == "deploy" and drive and not key:
        missing.append("DRIVE_KEY_FILE (the service-account key file the Drive folder is shared with)")
    if key and not key.startswith("/"):
        bad.append(f"DRIVE_KEY_FILE must be an absolute path, got {key!r}")
    registry_host = _get(env, "REGISTRY_HOST_DIR") or None
    if registry.startswith("local:"):
        if purpose == "deploy" and not registry_host:
            missing.append("REGISTRY_HOST_DIR (the host folder mounted at the local: registry's path)")
        if not registry.partition(":")[2].startswith("/"):
            bad.append(f"MODEL_REGISTRY local: needs an absolute path inside the functions, got {registry!r}")
    elif registry_host:
        bad.append("REGISTRY_HOST_DIR is for a local: registry only; leave it empty with a Drive registry")
    if registry_host and not registry_host.startswith("/"):
        bad.append(f"REGISTRY_HOST_DIR must be an absolute path, got {registry_host!r}")
    namespace = _get(env, "NUCLIO_NAMESPACE", "" if kube else "nuclio")
    if not namespace:
        missing.append("NUCLIO_NAMESPACE (on Kubernetes: the namespace of CVAT's Helm release)")
    elif not NAME_RE.fullmatch(namespace):
        bad.append(f"NUCLIO_NAMESPACE must be a lowercase DNS label, got {namespace!r}")
    release = _get(env, "CVAT_RELEASE", "cvat")
    default_dashboard = (f"http://{release}-nuclio-dashboard.{namespace}.svc.cluster.local:8070" if kube
                         else "http://nuclio:8070")
    dashboard = _get(env, "NUCLIO_DASHBOARD_URL", default_dashboard)
    if not dashboard.startswith(("http://", "https://")):
        bad.append(f"NUCLIO_DASHBOARD_URL must be an http(s) URL, got {dashboard!r}")
    project = _get(env, "PACK_PROJECT", "cvat-gdrive-pack")
    if project == CVAT_PROJECT or not NAME_RE.fullmatch(project):
        bad.append(f"PACK_PROJECT must be a lowercase DNS label other than {CVAT_PROJECT!r} (CVAT lists every "
                   f"function of that project and would log registry-sync as having no type), got {project!r}")
    cache_host = _get(env, "MODEL_CACHE_HOST_DIR", CACHE_MOUNT)
    if not cache_host.startswith("/"):
        bad.append(f"MODEL_CACHE_HOST_DIR must be an absolute path, got {cache_host!r}")
    elif posixpath.normpath(cache_host) in ("/", "//"):
        # The cache makes its folders (blobs/, snapshots/, tmp/, ...) at its root, and the removal
        # advice is `rm -rf` of that root: never the host's own /.
        bad.append("MODEL_CACHE_HOST_DIR must be a folder of its own, not '/' (e.g. /var/cache/cvat-models)")
    interval, schedule = _get(env, "SYNC_INTERVAL") or None, _get(env, "SYNC_SCHEDULE") or None
    if interval and schedule:
        bad.append("set SYNC_INTERVAL or SYNC_SCHEDULE, not both")
    if not schedule:
        interval = interval or "15m"
        if not DURATION_RE.match(interval):
            bad.append(f"SYNC_INTERVAL must be a Go duration such as 15m or 1h, got {interval!r}")
    raw_families = _get(env, "SYNC_FAMILIES", ",".join(FAMILIES))
    families = tuple(f for f in FAMILIES if f in {x.strip().lower() for x in raw_families.split(",")})
    unknown = sorted({x.strip().lower() for x in raw_families.split(",") if x.strip()} - set(FAMILIES))
    if unknown or not families:
        bad.append(f"SYNC_FAMILIES: unknown or no families {unknown or raw_families!r}; known: {', '.join(FAMILIES)}")
    image_registry = _get(env, "IMAGE_REGISTRY") or None
    if kube and not image_registry and purpose == "deploy":
        missing.append("IMAGE_REGISTRY (a registry every node can pull from; nuctl pushes the images there)")
    if missing or bad:
        lines = ([f"missing setting {m}" for m in missing] + bad)
        raise SettingsError("; ".join(lines))
    return DeploySettings(
        platform=platform, gpu=gpu, registry=registry, drive_key_file=key, registry_host_dir=registry_host,
        namespace=namespace, dashboard_url=dashboard.rstrip("/"),
        network=None if kube else _get(env, "NUCLIO_NETWORK", "cvat_cvat"),
        pack_project=project, cache_host_dir=cache_host, cache_size=_get(env, "MODEL_CACHE_SIZE", "20GiB"),
        interval=interval, schedule=schedule, families=families,
        smoke_tests=_get(env, "SYNC_SMOKE_TESTS", "true"), delete_stale=_get(env, "SYNC_DELETE_STALE", "true"),
        workers=_get(env, "RUNNER_WORKERS", "2"), image_registry=image_registry,
        run_registry=_get(env, "RUN_REGISTRY") or image_registry,
        secret_name=_get(env, "KUBE_SECRET_NAME", "cvat-gdrive-drive-key"),
        node_prep_image=_get(env, "NODE_PREP_IMAGE", "busybox:1.36"),
        node_key_dir=_get(env, "NODE_KEY_DIR", "/var/lib/cvat-gdrive-pack"),
        min_replicas=_get(env, "PUBLISH_MIN_REPLICAS") if kube else "",
        max_replicas=_get(env, "PUBLISH_MAX_REPLICAS") if kube else "")


def images(settings: DeploySettings) -> list[tuple[str, str]]:
    """(staged variant, image to build) for every family published, each once; GPU variants too with --gpu."""
    out = [(family, settings.runner_image(family, False, pull=False)) for family in settings.families]
    if settings.gpu:
        out += [(f"{family}-gpu", settings.runner_image(family, True, pull=False)) for family in settings.families]
    return out


def sync_env(settings: DeploySettings) -> list[tuple[str, str]]:
    """registry-sync's environment: what it publishes with (common/publish/render.py, sync.py)."""
    env = [("MODEL_REGISTRY", settings.registry), ("NUCLIO_DASHBOARD_URL", settings.dashboard_url),
           ("NUCLIO_NAMESPACE", settings.namespace), ("NUCLIO_PROJECT", CVAT_PROJECT),
           ("MODEL_CACHE_DIR", CACHE_MOUNT), ("MODEL_CACHE_HOST_DIR", settings.cache_host_dir),
           ("MODEL_CACHE_SIZE", settings.cache_size), ("SYNC_FAMILIES", ",".join(settings.families)),
           ("SYNC_SMOKE_TESTS", settings.smoke_tests), ("SYNC_DELETE_STALE", settings.delete_stale),
           ("RUNNER_WORKERS", settings.workers)]
    if settings.network:
        env.append(("NUCLIO_NETWORK", settings.network))
    for family in FAMILIES:  # every family named, so a GPU model never falls back to an unbuilt default
        env.append((f"RUNNER_IMAGE_{family.upper()}", settings.runner_image(family, False, pull=True)))
        env.append((f"RUNNER_IMAGE_{family.upper()}_GPU", settings.runner_image(family, True, pull=True)))
    if settings.drive:
        env += [("GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY", KEY_PATH),
                ("PUBLISH_CREDENTIALS_HOST_PATH", settings.credentials_host_path)]
    if settings.registry_host_dir:
        env.append(("PUBLISH_REGISTRY_HOST_DIR", settings.registry_host_dir))
    if settings.min_replicas:  # Kubernetes only: Docker always runs one container per function
        env.append(("PUBLISH_MIN_REPLICAS", settings.min_replicas))
        if settings.max_replicas:
            env.append(("PUBLISH_MAX_REPLICAS", settings.max_replicas))
    return env


def _host_volume(name: str, host: str, mount: str, read_only: bool = False) -> dict[str, Any]:
    volume_mount: dict[str, Any] = {"name": name, "mountPath": mount}
    if read_only:
        volume_mount["readOnly"] = True
    return {"volume": {"name": name, "hostPath": {"path": host}}, "volumeMount": volume_mount}


def sync_config(settings: DeploySettings, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The registry-sync function config deploy.sh hands to ``nuctl deploy --file``."""
    config = copy.deepcopy(dict(source) if source is not None else yaml.safe_load(SYNC_SOURCE.read_text()))
    meta, spec = config["metadata"], config["spec"]
    meta["name"] = SYNC_NAME
    meta["namespace"] = settings.namespace
    meta.setdefault("annotations", {})[PACK_VERSION_ANNOTATION] = __version__
    env = sync_env(settings)
    _validate_env(env)
    spec["env"] = [{"name": k, "value": v} for k, v in env]
    spec.setdefault("build", {})["image"] = f"cvat.registry-sync:{__version__}"
    cron = next(name for name, t in spec["triggers"].items() if t.get("kind") == "cron")
    attributes = spec["triggers"][cron].setdefault("attributes", {})
    attributes.pop("interval", None)
    attributes.pop("schedule", None)
    if settings.schedule:
        attributes["schedule"] = settings.schedule
    else:
        attributes["interval"] = settings.interval
    volumes = [_host_volume("model-cache", settings.cache_host_dir, CACHE_MOUNT)]
    if settings.drive:
        if settings.platform == "kube":
            # The Secret, mounted for this function only, readable by its owner only (0400).
            volumes.append({"volume": {"name": "drive-credentials",
                                       "secret": {"secretName": settings.secret_name, "defaultMode": 0o400,
                                                  "items": [{"key": KEY_FILE, "path": KEY_FILE}]}},
                            "volumeMount": {"name": "drive-credentials", "mountPath": KEY_DIR, "readOnly": True}})
        else:
            volumes.append(_host_volume("drive-credentials", settings.drive_key_file, KEY_PATH, read_only=True))
    if settings.registry_host_dir:
        volumes.append(_host_volume("model-registry", settings.registry_host_dir,
                                    settings.registry.partition(":")[2], read_only=True))
    spec["volumes"] = volumes
    return config


def _validate_env(env: list[tuple[str, str]]) -> None:
    """Run the pack's own settings parsers over registry-sync's environment, so a bad
    value stops the deploy here instead of every sync run."""
    from common.publish.render import PublishSettings
    from common.publish.sync import SyncSettings

    values = dict(env)
    PublishSettings.from_env(values)
    SyncSettings.from_env(values)


def node_prep(settings: DeploySettings) -> dict[str, Any]:
    """Kubernetes only: a DaemonSet that makes, on every node, the cache folder the runners
    share (hostPath) and a root-only copy (0400) of the Drive key from the Secret, kept
    current when the Secret is rotated."""
    key_dir = "/host/key"
    copy_key = (f"umask 077; while true; do "
                f"if ! cmp -s /secret/{KEY_FILE} {key_dir}/{KEY_FILE}; then "
                f"cp /secret/{KEY_FILE} {key_dir}/.{KEY_FILE}.new && chmod 0400 {key_dir}/.{KEY_FILE}.new && "
                f"mv {key_dir}/.{KEY_FILE}.new {key_dir}/{KEY_FILE}; fi; sleep 60; done")
    command = copy_key if settings.drive else "while true; do sleep 3600; done"
    mounts = [{"name": "model-cache", "mountPath": "/host/cache"}]
    volumes: list[dict[str, Any]] = [{"name": "model-cache",
                                      "hostPath": {"path": settings.cache_host_dir, "type": "DirectoryOrCreate"}}]
    if settings.drive:
        mounts += [{"name": "key-dir", "mountPath": key_dir},
                   {"name": "drive-credentials", "mountPath": "/secret", "readOnly": True}]
        volumes += [{"name": "key-dir", "hostPath": {"path": settings.node_key_dir, "type": "DirectoryOrCreate"}},
                    {"name": "drive-credentials", "secret": {"secretName": settings.secret_name,
                                                             "defaultMode": 0o400}}]
    labels = {"app.kubernetes.io/name": NODE_PREP, "app.kubernetes.io/part-of": "cvat-gdrive-pack"}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": NODE_PREP, "namespace": settings.namespace, "labels": labels},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": NODE_PREP}},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "tolerations": [{"operator": "Exists"}],  # GPU nodes are often tainted: they need it most
                     "containers": [{"name": "prepare", "image": settings.node_prep_image,
                                     "command": ["sh", "-c", f"chmod 0700 {key_dir} 2>/dev/null; {command}"],
                                     "securityContext": {"runAsUser": 0},
                                     "resources": {"requests": {"cpu": "5m", "memory": "8Mi"},
                                                   "limits": {"memory": "32Mi"}},
                                     "volumeMounts": mounts}],
                     "volumes": volumes}}},
    }


def _dump(data: Any, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    header = "# Generated by deploy/pack_config.py from deploy/settings.env; edit the settings, not this file.\n"
    out.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def main(argv: list[str] | None = None) -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("check", "images", "sync-config", "node-prep", "get"))
    parser.add_argument("name", nargs="?", help="for get: a DeploySettings field")
    parser.add_argument("--platform", choices=PLATFORMS)
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--for", dest="purpose", choices=("deploy", "remove"), default="deploy")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        settings = load(os.environ, args.platform, gpu=args.gpu, purpose=args.purpose)
        if args.what == "sync-config":
            _dump(sync_config(settings), args.out)
        elif args.what == "node-prep":
            _dump(node_prep(settings), args.out)
    except SettingsError as exc:
        # The caller names the settings file it read; the variables are named here.
        sys.stderr.write(f"settings: {str(exc).removeprefix('environment: ')}\n")
        return 1
    if args.what == "images":
        sys.stdout.write("".join(f"{variant} {image}\n" for variant, image in images(settings)))
    elif args.what == "get":
        value = getattr(settings, args.name)
        sys.stdout.write(("" if value is None else str(value)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
