"""Every Nuclio config in the repo follows Nuclio's configuration rules (tests/nuctl_standin/rules.py).

Checked: each functions/**/function*.yaml, every function registry-sync renders
for the demo registry (common/publish/render.py, CPU and GPU, Docker settings),
and the registry-sync configs deploy.sh generates (Docker and Kubernetes, Drive
and local registries). Then each rule on its own, so that none of them can pass
by accident.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from common.publish.kinds import NotPublishable
from common.publish.render import PublishSettings, render
from common.registry.local import LocalRegistry
from deploy import pack_config
from tests.nuctl_standin.rules import config_problems, cron_schedule_problem

REPO = Path(__file__).resolve().parent.parent
FUNCTION_FILES = sorted((REPO / "functions").glob("*/function*.yaml"))
DOCKER_ENV = {"MODEL_REGISTRY": "gdrive:CVAT_Models", "NUCLIO_NETWORK": "cvat_cvat",
              "MODEL_CACHE_HOST_DIR": "/srv/cvat-models",
              "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": "/run/secrets/cvat-gdrive/service-account.json",
              "PUBLISH_CREDENTIALS_HOST_PATH": "/etc/cvat-gdrive-pack/service-account.json"}
DEPLOY_ENV = {"MODEL_REGISTRY": "gdrive:CVAT_Models", "DRIVE_KEY_FILE": "/etc/cvat-gdrive-pack/service-account.json",
              "NUCLIO_NAMESPACE": "cvat", "IMAGE_REGISTRY": "registry.example.org/cvat"}


def test_every_function_yaml_of_the_repo_is_found():
    assert [str(p.relative_to(REPO)) for p in FUNCTION_FILES] == [
        "functions/gdrive-runner/function-gpu.yaml", "functions/gdrive-runner/function-pytorch-gpu.yaml",
        "functions/gdrive-runner/function-pytorch.yaml", "functions/gdrive-runner/function-tensorflow-gpu.yaml",
        "functions/gdrive-runner/function-tensorflow.yaml", "functions/gdrive-runner/function.yaml",
        "functions/registry-sync/function.yaml"]


@pytest.mark.parametrize("path", FUNCTION_FILES, ids=lambda p: str(p.relative_to(REPO / "functions")))
def test_function_yaml_follows_nuclios_rules(path):
    assert config_problems(yaml.safe_load(path.read_text())) == []


def test_every_rendered_demo_function_follows_nuclios_rules(demo_registry):
    listing = LocalRegistry(demo_registry).list_models()
    assert listing.errors == [] and len(listing.models) >= 11
    settings = PublishSettings.from_env(DOCKER_ENV)
    checked = []
    for record in listing.models:
        for gpu in (False, True):
            manifest = record.manifest
            if gpu:  # the same model published as one that needs a GPU: the GPU image, one worker
                raw = {**manifest.raw, "requirements": {"gpu_required": True}}
                record = dataclasses.replace(record, manifest=dataclasses.replace(manifest, raw=raw))
            try:
                body = render(record, settings).body
            except NotPublishable:
                continue
            assert config_problems(body) == [], (record.folder, gpu)
            checked.append((record.folder, gpu, body["spec"]["triggers"]["http"]["numWorkers"]))
    assert len(checked) == 2 * len(listing.models)   # every demo model publishes, CPU and GPU
    assert {workers for _, gpu, workers in checked if gpu} == {1}


@pytest.mark.parametrize("platform", ["local", "kube"])
@pytest.mark.parametrize("registry", ["gdrive:CVAT_Models", "local:/opt/registry"])
@pytest.mark.parametrize("extra", [{}, {"SYNC_SCHEDULE": "0 */2 * * *"}])
def test_deploy_generated_registry_sync_configs_follow_nuclios_rules(platform, registry, extra):
    env = {**DEPLOY_ENV, "MODEL_REGISTRY": registry, **extra}
    if registry.startswith("local:"):
        env["REGISTRY_HOST_DIR"] = "/srv/models"
    config = pack_config.sync_config(pack_config.load(env, platform))
    assert config_problems(config, platform=platform) == []
    kinds = [sorted(set(v["volume"]) - {"name"}) for v in config["spec"]["volumes"]]
    if registry.startswith("gdrive") and platform == "kube":
        assert kinds == [["hostPath"], ["secret"]]
        assert config_problems(config, platform="local") == [
            "spec.volumes[1]: volume kind ['secret'] is not mounted on the local platform (allowed: ['hostPath'])"]
    else:
        assert kinds == [["hostPath"], ["hostPath"]]


# ---- each rule, on its own ---------------------------------------------------------------------------------

def _runner() -> dict:
    return yaml.safe_load((REPO / "functions" / "gdrive-runner" / "function.yaml").read_text())


def _sync() -> dict:
    return yaml.safe_load((REPO / "functions" / "registry-sync" / "function.yaml").read_text())


def _broken(change) -> list[str]:
    config = copy.deepcopy(_runner())
    change(config)
    return config_problems(config)


def test_meta_instead_of_metadata():
    def change(c):
        c["meta"] = c.pop("metadata")
    assert _broken(change) == ["top level: 'meta' is ignored by Nuclio; the key is 'metadata'",
                               "metadata: missing or not a mapping"]


def test_env_as_a_map_and_unquoted_values():
    def as_map(c):
        c["spec"]["env"] = {e["name"]: e["value"] for e in c["spec"]["env"]}
    assert _broken(as_map) == ["spec.env: must be a list of {name, value} (a map is silently wrong)"]

    def unquoted(c):
        c["spec"]["env"][4]["value"] = 2
        c["spec"]["env"].append({"name": "MODEL_NAME", "value": "x"})
    assert _broken(unquoted) == ["spec.env[4] RUNNER_WORKERS: value must be a string (quote it)",
                                 "spec.env[5] MODEL_NAME: set twice"]


def test_max_workers_and_http_triggers():
    def max_workers(c):
        c["spec"]["triggers"]["myHttpTrigger"]["maxWorkers"] = c["spec"]["triggers"]["myHttpTrigger"].pop("numWorkers")
    assert _broken(max_workers) == ["spec.triggers.myHttpTrigger: maxWorkers is deprecated; set numWorkers",
                                    "spec.triggers.myHttpTrigger: numWorkers must be set, 1 to 100000"]

    def two_http(c):
        c["spec"]["triggers"]["other"] = copy.deepcopy(c["spec"]["triggers"]["myHttpTrigger"])
    assert _broken(two_http) == ["spec.triggers: exactly one http trigger needed, found 2 (['myHttpTrigger', "
                                 "'other'])"]

    def renamed(c):
        c["spec"]["triggers"]["myHttpTrigger"]["name"] = "http"
    assert _broken(renamed) == ["spec.triggers.myHttpTrigger: name 'http' differs from its key"]

    def gpu_two_workers(c):
        c["spec"]["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    assert _broken(gpu_two_workers) == ["spec.triggers.myHttpTrigger: a GPU function runs 1 worker (each worker "
                                        "holds its own model copy)"]


def test_volume_names_and_paths():
    def mismatch(c):
        c["spec"]["volumes"][0]["volumeMount"]["name"] = "cache"
    assert _broken(mismatch) == ["spec.volumes[0]: volume.name 'model-cache' and volumeMount.name 'cache' must be "
                                 "set and equal"]

    def twice(c):
        c["spec"]["volumes"].append(copy.deepcopy(c["spec"]["volumes"][0]))
    assert _broken(twice) == ["spec.volumes[1]: volume name 'model-cache' repeats",
                              "spec.volumes[1]: two volumes mounted at /var/cache/cvat-models"]

    def relative(c):
        c["spec"]["volumes"][0]["volume"]["hostPath"]["path"] = "cache"
    assert _broken(relative) == ["spec.volumes[0]: hostPath.path 'cache' must be an absolute path"]


@pytest.mark.parametrize("name, problem", [
    ("GDrive-Runner", "metadata.name: 'GDrive-Runner' is not a lowercase DNS label ([a-z0-9-], at most 63)"),
    ("my.model", "metadata.name: 'my.model' is not a lowercase DNS label ([a-z0-9-], at most 63)"),
    ("x" * 64, f"metadata.name: {'x' * 64!r} is not a lowercase DNS label ([a-z0-9-], at most 63)"),
    ("dashboard", "metadata.name: 'dashboard' is reserved by Nuclio"),
])
def test_names(name, problem):
    assert _broken(lambda c: c["metadata"].update(name=name)) == [problem]


def test_description_runtime_handler_image_and_timeouts():
    def change(c):
        c["spec"].update(description="", runtime="python:3.12", handler="main.handler", eventTimeout="60")
        c["spec"]["build"]["image"] = "CVAT.Runner"
    assert _broken(change) == ["spec.description: must be a non-empty string (CVAT reads it)",
                               "spec.runtime: 'python:3.12' is not one of ['python:3.10', 'python:3.11', "
                               "'python:3.9']",
                               "spec.handler: 'main.handler' is not module:function",
                               "spec.eventTimeout: '60' is not a Go duration such as 30s",
                               "spec.build.image: 'CVAT.Runner' is not a valid image name (lowercase)"]


def test_cron_trigger_interval_and_schedule():
    def cron(**attributes):
        config = _sync()
        config["spec"]["triggers"]["sync"]["attributes"] = attributes
        return config_problems(config)

    assert cron(interval="15m") == [] and cron(interval="1h30m") == [] and cron(schedule="*/5 * * * *") == []
    assert cron(interval="15 minutes") == ["spec.triggers.sync: interval '15 minutes' is not a Go duration such "
                                           "as 15m"]
    assert cron(interval="900") == ["spec.triggers.sync: interval '900' is not a Go duration such as 15m"]
    assert cron() == ["spec.triggers.sync: a cron trigger needs exactly one of interval and schedule"]
    assert cron(interval="15m", schedule="@hourly") == [
        "spec.triggers.sync: a cron trigger needs exactly one of interval and schedule"]
    assert cron(schedule="* * * *") == ["spec.triggers.sync: schedule '* * * *' has 4 fields; expected 5 (minute "
                                        "hour day month weekday) or 6 (with seconds first)"]


@pytest.mark.parametrize("schedule", ["*/5 * * * *", "0 30 * * * *", "0 0 * * mon-fri", "15 2 1 jan,jul *",
                                      "@every 10m", "@hourly", "@midnight", "0 9-17/2 * * 1-5", "? * * * *"])
def test_schedules_robfig_cron_accepts(schedule):
    assert cron_schedule_problem(schedule) is None


@pytest.mark.parametrize("schedule, problem", [
    ("61 * * * *", "field '61': 61 is outside 0-59"),
    ("*/0 * * * *", "field '*/0': bad step in '*/0'"),
    ("5-1 * * * *", "field '5-1': range '5-1' ends before it starts"),
    ("0 0 * * funday", "field 'funday': 'funday' is not a number or a name"),
    ("0 0 32 * *", "field '32': 32 is outside 1-31"),
    ("@every ten minutes", "@every needs a Go duration"),
    ("@fortnightly", "unknown descriptor '@fortnightly'"),
    ("", "must be a non-empty string"),
])
def test_schedules_robfig_cron_refuses(schedule, problem):
    assert cron_schedule_problem(schedule) == problem
