"""deploy/deploy.sh and deploy/remove.sh against a stand-in nuctl (and kubectl) on PATH.

The stand-in (tests/nuctl_standin) records every call, refuses what the real
nuctl would refuse, and carries deploys out on the dashboard stand-in
(tests/nuclio_dashboard), so each test reads the scripts' result there: the
projects, registry-sync's config (environment, volumes, the key's mount, the
network, the cron trigger), and what CVAT would list.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common import __version__
from tests.nuclio_dashboard import CVAT_HEADERS, DashboardStandIn, call, cvat_list
from tests.nuctl_standin import calls, install
from tests.nuctl_standin.rules import config_problems

REPO = Path(__file__).resolve().parent.parent
SECRET = "-----BEGIN PRIVATE KEY-----\\nMIIEvQ-very-secret-4f1c\\n-----END PRIVATE KEY-----\\n"
SECRET_MARK = "very-secret-4f1c"
KEY_IN_FUNCTION = "/run/secrets/cvat-gdrive/service-account.json"


@pytest.fixture
def site(tmp_path):
    """A deploy site: stand-ins on PATH, a key file, a settings file, a dashboard stand-in."""
    key = tmp_path / "keys" / "service-account.json"
    key.parent.mkdir()
    key.write_text(json.dumps({"type": "service_account", "client_email": "sync@example.iam.gserviceaccount.com",
                               "private_key": SECRET}))
    key.chmod(0o600)
    settings = tmp_path / "settings.env"
    settings.write_text((REPO / "deploy" / "settings.env.example").read_text()
                        .replace("DRIVE_KEY_FILE=/etc/cvat-gdrive-pack/service-account.json", f"DRIVE_KEY_FILE={key}")
                        .replace("MODEL_CACHE_HOST_DIR=/var/cache/cvat-models",
                                 f"MODEL_CACHE_HOST_DIR={tmp_path / 'cache'}"))
    log = tmp_path / "calls.jsonl"
    bin_dir = install(tmp_path / "bin")
    with DashboardStandIn() as dashboard:
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NUCTL_STANDIN_LOG": str(log),
               "NUCTL_STANDIN_DASHBOARD": dashboard.url, "BUILD_DIR": str(tmp_path / "build"),
               "PYTHON": sys.executable}
        yield Site(tmp_path, key, settings, log, dashboard, env)


class Site:
    def __init__(self, root, key, settings, log, dashboard, env):
        self.root, self.key, self.settings, self.log, self.dashboard, self.env = root, key, settings, log, dashboard, env
        self.build = root / "build"

    def run(self, script: str, *args: str, extra: str = "") -> subprocess.CompletedProcess:
        if extra:
            self.settings.write_text(self.settings.read_text() + extra)
        done = subprocess.run([str(REPO / "deploy" / script), "--settings", str(self.settings), *args],
                              env=self.env, capture_output=True, text=True, cwd=self.root)
        # The key's content never reaches a command line, the output or a generated file.
        seen = done.stdout + done.stderr + (self.log.read_text() if self.log.exists() else "")
        for generated in self.build.rglob("*.yaml") if self.build.exists() else ():
            seen += generated.read_text()
        assert SECRET_MARK not in seen
        return done

    def nuctl(self):
        return [c for c in calls(self.log) if c.tool == "nuctl"]

    def sync_config(self, namespace: str = "nuclio") -> dict:
        status, config = call(self.dashboard.url, "GET", "/api/functions/registry-sync",
                              headers={"x-nuclio-function-namespace": namespace})
        assert status == 200
        return config


def _words(c) -> tuple[str, ...]:
    return c.argv[:3] if c.argv[0] in ("create", "get", "delete") else c.argv[:2]


def _env(config) -> dict[str, str]:
    return {e["name"]: e["value"] for e in config["spec"]["env"]}


def test_local_deploy_makes_projects_builds_each_family_once_and_deploys_registry_sync(site):
    done = site.run("deploy.sh")
    assert done.returncode == 0, done.stderr
    b = site.build
    where = ("--platform", "local")
    expected = [
        ("get", "project", "cvat", *where),
        ("create", "project", "cvat", *where),
        ("get", "project", "cvat-gdrive-pack", *where),
        ("create", "project", "cvat-gdrive-pack", *where),
        *[("build", f"gdrive-runner-{f}", "--path", f"{b}/gdrive-runner-{f}", "--file",
           f"{b}/gdrive-runner-{f}/function.yaml", "--image", f"cvat.gdrive-runner.{f}:{__version__}", *where)
          for f in ("onnx", "pytorch", "tensorflow")],
        ("deploy", "registry-sync", "--project-name", "cvat-gdrive-pack", "--path", f"{b}/registry-sync",
         "--file", f"{b}/deploy/registry-sync.yaml", "--platform-config", '{"attributes": {"network": "cvat_cvat"}}',
         *where),
        ("invoke", "registry-sync", *where, "-m", "POST", "-c", "application/json", "-b", '{"reason": "deploy"}',
         "-t", "900s"),
        ("get", "function", *where),
    ]
    recorded = site.nuctl()
    assert [c.argv for c in recorded] == expected
    # Only the two `get project` probes fail (the projects did not exist yet).
    assert [c.ok for c in recorded] == [False, True, False, True] + [True] * 6
    assert [c.tool for c in calls(site.log)] == ["nuctl"] * 10   # no docker, no kubectl on Docker

    assert sorted(site.dashboard.projects) == ["cvat", "cvat-gdrive-pack", "default"]
    config = site.sync_config()
    meta, spec = config["metadata"], config["spec"]
    assert meta["labels"]["nuclio.io/project-name"] == "cvat-gdrive-pack"
    assert meta["annotations"]["cvat-gdrive-pack/pack-version"] == __version__
    assert spec["build"]["image"] == f"cvat.registry-sync:{__version__}"
    assert _env(config) == {
        "MODEL_REGISTRY": "gdrive:CVAT_Models", "NUCLIO_DASHBOARD_URL": "http://nuclio:8070",
        "NUCLIO_NAMESPACE": "nuclio", "NUCLIO_PROJECT": "cvat", "MODEL_CACHE_DIR": "/var/cache/cvat-models",
        "MODEL_CACHE_HOST_DIR": str(site.root / "cache"), "MODEL_CACHE_SIZE": "20GiB",
        "SYNC_FAMILIES": "onnx,pytorch,tensorflow", "SYNC_SMOKE_TESTS": "true", "SYNC_DELETE_STALE": "true",
        "RUNNER_WORKERS": "2", "NUCLIO_NETWORK": "cvat_cvat",
        **{f"RUNNER_IMAGE_{f.upper()}": f"cvat.gdrive-runner.{f}:{__version__}"
           for f in ("onnx", "pytorch", "tensorflow")},
        **{f"RUNNER_IMAGE_{f.upper()}_GPU": f"cvat.gdrive-runner.{f}-gpu:{__version__}"
           for f in ("onnx", "pytorch", "tensorflow")},
        "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": KEY_IN_FUNCTION, "PUBLISH_CREDENTIALS_HOST_PATH": str(site.key),
    }
    assert spec["volumes"] == [
        {"volume": {"name": "model-cache", "hostPath": {"path": str(site.root / "cache")}},
         "volumeMount": {"name": "model-cache", "mountPath": "/var/cache/cvat-models"}},
        {"volume": {"name": "drive-credentials", "hostPath": {"path": str(site.key)}},
         "volumeMount": {"name": "drive-credentials", "mountPath": KEY_IN_FUNCTION, "readOnly": True}},
    ]
    assert spec["platform"]["attributes"]["network"] == "cvat_cvat"
    assert spec["triggers"]["sync"]["attributes"]["interval"] == "15m"
    assert config_problems(yaml.safe_load((b / "deploy" / "registry-sync.yaml").read_text())) == []
    # CVAT lists project `cvat` only, where registry-sync is not.
    status, listing = call(site.dashboard.url, "GET", "/api/functions", headers=CVAT_HEADERS)
    assert status == 200 and cvat_list(listing) == []
    # Every runner variant was staged with its family's requirements (make stage).
    assert sorted(p.name for p in b.iterdir()) == ["deploy", "gdrive-runner-onnx", "gdrive-runner-onnx-gpu",
                                                   "gdrive-runner-pytorch", "gdrive-runner-pytorch-gpu",
                                                   "gdrive-runner-tensorflow", "gdrive-runner-tensorflow-gpu",
                                                   "registry-sync"]


def test_gpu_deploy_builds_the_gpu_variants_of_the_chosen_families_only(site):
    done = site.run("deploy.sh", "--gpu", extra="SYNC_FAMILIES=onnx,tensorflow\nSYNC_INTERVAL=1h\n")
    assert done.returncode == 0, done.stderr
    builds = [(c.argv[1], c.flag("--image")) for c in site.nuctl() if c.argv[0] == "build"]
    assert builds == [("gdrive-runner-onnx", f"cvat.gdrive-runner.onnx:{__version__}"),
                      ("gdrive-runner-tensorflow", f"cvat.gdrive-runner.tensorflow:{__version__}"),
                      ("gdrive-runner-onnx-gpu", f"cvat.gdrive-runner.onnx-gpu:{__version__}"),
                      ("gdrive-runner-tensorflow-gpu", f"cvat.gdrive-runner.tensorflow-gpu:{__version__}")]
    config = site.sync_config()
    assert _env(config)["SYNC_FAMILIES"] == "onnx,tensorflow"
    assert config["spec"]["triggers"]["sync"]["attributes"] == {"interval": "1h", "event": {"body": '{"reason": "cron"}'}}


def test_second_deploy_keeps_the_projects_and_updates_registry_sync_in_place(site):
    assert site.run("deploy.sh").returncode == 0
    first = len(site.nuctl())
    done = site.run("deploy.sh", extra='SYNC_SCHEDULE="0 */2 * * *"\nSYNC_INTERVAL=\n')
    assert done.returncode == 0, done.stderr
    again = site.nuctl()[first:]
    assert [_words(c) for c in again if c.argv[0] in ("get", "create") and c.argv[1] == "project"] == \
        [("get", "project", "cvat"), ("get", "project", "cvat-gdrive-pack")]   # both found: none created
    assert site.dashboard.deploy_count("registry-sync") == 2                     # a PUT, not a second function
    assert site.sync_config()["spec"]["triggers"]["sync"]["attributes"]["schedule"] == "0 */2 * * *"


def test_kube_deploy_uses_a_secret_a_node_daemonset_the_registry_and_the_in_cluster_dashboard(site):
    done = site.run("deploy.sh", "--platform", "kube",
                    extra="NUCLIO_NAMESPACE=cvat\nIMAGE_REGISTRY=registry.example.org:5000/cvat\n")
    assert done.returncode == 0, done.stderr
    recorded = calls(site.log)
    b, where = site.build, ("--platform", "kube", "--namespace", "cvat")
    assert [c.argv for c in recorded if c.tool == "kubectl"] == [
        ("-n", "cvat", "delete", "secret", "cvat-gdrive-drive-key", "--ignore-not-found"),
        ("-n", "cvat", "create", "secret", "generic", "cvat-gdrive-drive-key",
         f"--from-file=service-account.json={site.key}"),
        ("-n", "cvat", "apply", "-f", f"{b}/deploy/node-prep.yaml"),
        ("-n", "cvat", "rollout", "status", "daemonset/cvat-gdrive-node-prep", "--timeout=300s"),
    ]
    builds = [c for c in recorded if c.argv[0] == "build"]
    assert [c.argv[-8:] for c in builds][0] == ("--image", f"cvat.gdrive-runner.onnx:{__version__}", "--registry",
                                                "registry.example.org:5000/cvat", *where)
    deploy = next(c for c in recorded if c.argv[0] == "deploy")
    assert deploy.flag("--registry") == deploy.flag("--run-registry") == "registry.example.org:5000/cvat"
    assert deploy.flag("--platform-config") is None and deploy.argv[-4:] == where
    # kubectl runs before registry-sync starts (it needs the Secret), builds before both.
    order = [c.tool + ":" + c.argv[0] for c in recorded if c.argv[0] in ("build", "deploy") or c.tool == "kubectl"]
    assert order.index("kubectl:-n") > order.index("nuctl:build") and order[-1] == "nuctl:deploy"

    config = site.sync_config("cvat")
    env = _env(config)
    assert config["metadata"]["namespace"] == "cvat"
    assert env["NUCLIO_DASHBOARD_URL"] == "http://cvat-nuclio-dashboard.cvat.svc.cluster.local:8070"
    assert env["RUNNER_IMAGE_PYTORCH"] == f"registry.example.org:5000/cvat/cvat.gdrive-runner.pytorch:{__version__}"
    assert env["PUBLISH_CREDENTIALS_HOST_PATH"] == "/var/lib/cvat-gdrive-pack/service-account.json"
    assert "NUCLIO_NETWORK" not in env
    assert config["spec"]["volumes"][1] == {
        "volume": {"name": "drive-credentials", "secret": {
            "secretName": "cvat-gdrive-drive-key", "defaultMode": 0o400,
            "items": [{"key": "service-account.json", "path": "service-account.json"}]}},
        "volumeMount": {"name": "drive-credentials", "mountPath": "/run/secrets/cvat-gdrive", "readOnly": True}}

    daemonset = yaml.safe_load((b / "deploy" / "node-prep.yaml").read_text())
    pod = daemonset["spec"]["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]} == {
        "model-cache": {"name": "model-cache", "hostPath": {"path": str(site.root / "cache"),
                                                              "type": "DirectoryOrCreate"}},
        "key-dir": {"name": "key-dir", "hostPath": {"path": "/var/lib/cvat-gdrive-pack", "type": "DirectoryOrCreate"}},
        "drive-credentials": {"name": "drive-credentials",
                              "secret": {"secretName": "cvat-gdrive-drive-key", "defaultMode": 0o400}},
    }
    assert "chmod 0400" in pod["containers"][0]["command"][2] and pod["tolerations"] == [{"operator": "Exists"}]


def test_dry_run_prints_every_command_and_changes_nothing(site):
    done = site.run("deploy.sh", "--dry-run", "--gpu")
    assert done.returncode == 0, done.stderr
    # Nothing runs; only the generated config is written, where the printed command names it.
    assert calls(site.log) == []
    assert sorted(str(p.relative_to(site.build)) for p in site.build.rglob("*")) == ["deploy",
                                                                                   "deploy/registry-sync.yaml"]
    assert config_problems(yaml.safe_load((site.build / "deploy" / "registry-sync.yaml").read_text())) == []
    assert sorted(site.dashboard.projects) == ["default"]
    lines = [line for line in done.stderr.splitlines() if line.startswith("+ ")]
    assert [line.split()[1:3] for line in lines] == (
        [[sys.executable, "-m"]] * 2 + [["nuctl", "create"]] * 2 + [["nuctl", "build"]] * 6
        + [["nuctl", "deploy"], ["nuctl", "invoke"], ["nuctl", "get"]])
    assert ("+ nuctl deploy registry-sync --project-name cvat-gdrive-pack --path "
            f"{site.build}/registry-sync --file {site.build}/deploy/registry-sync.yaml ") in done.stderr
    assert "--platform-config '{\"attributes\": {\"network\": \"cvat_cvat\"}}' --platform local" in done.stderr
    assert f"      mountPath: {KEY_IN_FUNCTION}" in done.stderr     # the config is shown, paths only
    assert "warning" not in done.stderr and "== dry run: nothing was run." in done.stderr


def test_dry_run_with_the_example_settings_warns_about_the_missing_key_and_goes_on(site):
    # The example's key path, as a new admin has it before the key is in place.
    site.settings.write_text(site.settings.read_text().replace(f"DRIVE_KEY_FILE={site.key}",
                                                               "DRIVE_KEY_FILE=/nonexistent/service-account.json"))
    done = site.run("deploy.sh", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert ("warning: DRIVE_KEY_FILE /nonexistent/service-account.json does not exist "
            "(a real deploy stops here)") in done.stderr
    assert calls(site.log) == [] and sum(line.startswith("+ nuctl build") for line in done.stderr.splitlines()) == 3
    assert (site.build / "deploy" / "registry-sync.yaml").is_file()
    # The real deploy still stops before any call.
    done = site.run("deploy.sh")
    assert done.returncode == 1
    assert "error: DRIVE_KEY_FILE /nonexistent/service-account.json does not exist" in done.stderr
    assert calls(site.log) == []


def test_missing_settings_are_named_and_nothing_runs(site):
    text = site.settings.read_text().replace("MODEL_REGISTRY=gdrive:CVAT_Models", "MODEL_REGISTRY=")
    site.settings.write_text(text)
    done = site.run("deploy.sh", "--platform", "kube")
    assert done.returncode == 1
    assert ("settings: missing setting MODEL_REGISTRY (gdrive:<folder name>, gdrive-id:<folder id> or "
            "local:<path>); missing setting NUCLIO_NAMESPACE (on Kubernetes: the namespace of CVAT's Helm release); "
            "missing setting IMAGE_REGISTRY") in done.stderr
    assert f"error: fix the settings above in {site.settings}" in done.stderr
    assert calls(site.log) == []
    site.settings.unlink()
    done = site.run("deploy.sh")
    assert done.returncode == 1 and "cp deploy/settings.env.example deploy/settings.env" in done.stderr


@pytest.mark.parametrize("extra, message", [
    ("MODEL_REGISTRY=gdrive:CVAT_Models\nDRIVE_KEY_FILE=\n", "missing setting DRIVE_KEY_FILE"),
    ('SYNC_INTERVAL="15 minutes"\n', "SYNC_INTERVAL must be a Go duration such as 15m or 1h, got '15 minutes'"),
    ("PACK_PROJECT=cvat\n", "PACK_PROJECT must be a lowercase DNS label other than 'cvat'"),
    ("SYNC_FAMILIES=onnx,caffe\n", "SYNC_FAMILIES: unknown or no families ['caffe']"),
    ("MODEL_CACHE_SIZE=lots\n", "MODEL_CACHE_SIZE: "),
    ("MODEL_REGISTRY=local:/opt/registry\n", "missing setting REGISTRY_HOST_DIR"),
    ("REGISTRY_HOST_DIR=/srv/models\n", "REGISTRY_HOST_DIR is for a local: registry only"),
    ("MODEL_CACHE_HOST_DIR=//\n", "MODEL_CACHE_HOST_DIR must be a folder of its own, not '/'"),
    ("MODEL_CACHE_HOST_DIR=/srv/..\n", "MODEL_CACHE_HOST_DIR must be a folder of its own, not '/'"),
    ("MODEL_CACHE_HOST_DIR=/./\n", "MODEL_CACHE_HOST_DIR must be a folder of its own, not '/'"),
    ("MODEL_CACHE_HOST_DIR=cache\n", "MODEL_CACHE_HOST_DIR must be an absolute path, got 'cache'"),
])
def test_bad_settings_stop_the_deploy_before_any_call(site, extra, message):
    done = site.run("deploy.sh", extra=extra)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert calls(site.log) == []


def test_a_key_others_can_read_is_refused(site):
    site.key.chmod(0o644)
    done = site.run("deploy.sh")
    assert done.returncode == 1
    assert f"DRIVE_KEY_FILE {site.key} is readable by others (mode 644): chmod 600 {site.key}\n" in done.stderr
    assert calls(site.log) == []


@pytest.mark.parametrize("mode, refused", [(0o600, False), (0o400, False), (0o4600, False), (0o620, False),
                                           (0o640, True), (0o604, True), (0o444, True)])
def test_a_key_is_refused_only_when_others_can_read_it(site, mode, refused):
    site.key.chmod(mode)
    done = site.run("deploy.sh", "--dry-run")
    assert done.returncode == 0, done.stderr   # a dry run warns and goes on
    assert ("is readable by others" in done.stderr) is refused, done.stderr


def test_a_key_behind_a_symlink_is_judged_by_the_file_and_a_folder_is_refused(site):
    link = site.root / "key-link.json"
    link.symlink_to(site.key)   # a link's own mode is 777; the key's is 600
    done = site.run("deploy.sh", extra=f"DRIVE_KEY_FILE={link}\n")
    assert done.returncode == 0, done.stderr
    folder = site.key.parent
    done = site.run("deploy.sh", extra=f"DRIVE_KEY_FILE={folder}\n")
    assert done.returncode == 1
    assert f"DRIVE_KEY_FILE {folder} is a folder; give the service account's JSON key file" in done.stderr


def test_local_registry_is_mounted_read_only_into_registry_sync(site, tmp_path):
    done = site.run("deploy.sh", extra=f"MODEL_REGISTRY=local:/opt/registry\nDRIVE_KEY_FILE=\n"
                                       f"REGISTRY_HOST_DIR={tmp_path / 'models'}\n")
    assert done.returncode == 0, done.stderr
    config = site.sync_config()
    assert config["spec"]["volumes"][1:] == [
        {"volume": {"name": "model-registry", "hostPath": {"path": str(tmp_path / "models")}},
         "volumeMount": {"name": "model-registry", "mountPath": "/opt/registry", "readOnly": True}}]
    env = _env(config)
    assert env["PUBLISH_REGISTRY_HOST_DIR"] == str(tmp_path / "models")
    assert "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY" not in env and "PUBLISH_CREDENTIALS_HOST_PATH" not in env


def _publish(dashboard, name: str, managed: bool, project: str = "cvat", labels: dict | None = None) -> None:
    if labels is None:
        labels = {"cvat-gdrive-pack/managed": "true", "cvat-gdrive-pack/model": name} if managed else {}
    body = {"metadata": {"name": name, "labels": labels, "annotations": {"name": name, "type": "detector",
                                                                          "spec": "[]"}},
            "spec": {"description": "x", "runtime": "python:3.11", "handler": "main:handler",
                     "triggers": {"http": {"kind": "http", "numWorkers": 1}}}}
    status, _ = call(dashboard.url, "POST", "/api/functions", body, {"x-nuclio-project-name": project})
    assert status == 202


def test_remove_deletes_registry_sync_and_what_it_published_only(site):
    assert site.run("deploy.sh").returncode == 0
    _publish(site.dashboard, "gdrive-yolov8n", managed=True)
    _publish(site.dashboard, "gdrive-blazeface", managed=True)
    _publish(site.dashboard, "onnx-wongkinyiu-yolov7", managed=False)   # CVAT's own model: stays
    # A hand-made copy of the managed label alone, and a published-looking function in another
    # project: neither is the pack's (as registry-sync's own reconcile decides), both stay.
    _publish(site.dashboard, "hand-made", managed=False, labels={"cvat-gdrive-pack/managed": "true"})
    site.dashboard.add_project("other")
    _publish(site.dashboard, "copy-in-other", managed=True, project="other")
    before = len(calls(site.log))
    done = site.run("remove.sh")
    assert done.returncode == 0, done.stderr
    where = ("--platform", "local")
    assert [c.argv for c in calls(site.log)[before:]] == [
        ("get", "function", *where, "-o", "json"),
        ("delete", "function", "registry-sync", *where),
        ("get", "function", *where, "-o", "json"),
        ("delete", "function", "gdrive-blazeface", *where),
        ("delete", "function", "gdrive-yolov8n", *where),
        ("get", "project", "cvat-gdrive-pack", *where),
        ("delete", "project", "cvat-gdrive-pack", *where),
    ]
    assert sorted(site.dashboard.functions_json(None)) == ["copy-in-other", "hand-made", "onnx-wongkinyiu-yolov7"]
    assert sorted(site.dashboard.projects) == ["cvat", "default", "other"]
    assert "== removed 2 published function(s), registry-sync and project cvat-gdrive-pack.\n" in done.stderr
    assert f"sudo rm -rf {site.root / 'cache'}\n" in done.stderr
    # A second removal finds nothing and still succeeds.
    again = site.run("remove.sh")
    assert again.returncode == 0, again.stderr
    assert ("== removed 0 published function(s), registry-sync (not deployed: nothing to remove) and project "
            "cvat-gdrive-pack (not found: nothing to remove).") in again.stderr


def test_remove_dry_run_lists_what_it_would_remove_and_deletes_nothing(site):
    assert site.run("deploy.sh").returncode == 0
    _publish(site.dashboard, "gdrive-yolov8n", managed=True)
    _publish(site.dashboard, "gdrive-blazeface", managed=True)
    _publish(site.dashboard, "onnx-wongkinyiu-yolov7", managed=False)
    before = len(calls(site.log))
    done = site.run("remove.sh", "--dry-run")
    assert done.returncode == 0, done.stderr
    where = ("--platform", "local")
    # Only nuctl's read-only queries run.
    assert [c.argv for c in calls(site.log)[before:]] == [
        ("get", "function", *where, "-o", "json"), ("get", "project", "cvat-gdrive-pack", *where)]
    assert [line for line in done.stderr.splitlines() if line.startswith("+ ")] == [
        "+ nuctl delete function registry-sync --platform local",
        "+ nuctl delete function gdrive-blazeface --platform local",
        "+ nuctl delete function gdrive-yolov8n --platform local",
        "+ nuctl delete project cvat-gdrive-pack --platform local"]
    assert ("== dry run: would remove 2 published function(s) (gdrive-blazeface gdrive-yolov8n), "
            "registry-sync and project cvat-gdrive-pack.") in done.stderr
    assert "removed" not in done.stderr.replace("would remove", "")
    assert sorted(site.dashboard.functions_json(None)) == ["gdrive-blazeface", "gdrive-yolov8n",
                                                           "onnx-wongkinyiu-yolov7", "registry-sync"]


def test_remove_dry_run_without_nuctl_says_it_cannot_know(site):
    path = os.environ["PATH"]
    assert shutil.which("nuctl", path=path) is None   # this machine's PATH, without the stand-ins
    site.env["PATH"] = path
    done = site.run("remove.sh", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "note: nuctl is not on PATH, so this dry run cannot ask what is deployed" in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("+ ")] == [
        "+ nuctl delete function registry-sync --platform local   (when deployed)",
        "+ nuctl get function --platform local -o json   (then delete each with label cvat-gdrive-pack/managed=true)",
        "+ nuctl delete project cvat-gdrive-pack --platform local   (when it exists)"]
    assert ("== dry run: would remove registry-sync and every function labelled cvat-gdrive-pack/managed=true;\n"
            "   which ones cannot be known without asking nuctl") in done.stderr
    assert calls(site.log) == []


def test_remove_stops_before_deleting_anything_when_nuctl_cannot_list(site):
    assert site.run("deploy.sh").returncode == 0
    _publish(site.dashboard, "gdrive-yolov8n", managed=True)
    site.env["NUCTL_STANDIN_DASHBOARD"] = "http://127.0.0.1:9"   # nothing listens: the dashboard is down
    done = site.run("remove.sh")
    assert done.returncode == 1
    assert "nuctl get function --platform local -o json failed:" in done.stderr
    assert "error: cannot tell what is deployed, so nothing was removed" in done.stderr
    assert "removed" not in done.stderr.replace("nothing was removed", "")
    assert sorted(site.dashboard.functions_json(None)) == ["gdrive-yolov8n", "registry-sync"]
    # A dry run says it cannot know, and still succeeds.
    dry = site.run("remove.sh", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "note: nuctl's listing cannot be read, so this dry run cannot say which functions are deployed" in dry.stderr
    assert "+ nuctl delete function registry-sync --platform local   (when deployed)" in dry.stderr


def test_remove_quotes_the_cache_path_in_its_hint(site):
    odd = site.root / "model cache's"
    done = site.run("remove.sh", "--dry-run", extra=f"MODEL_CACHE_HOST_DIR=\"{odd}\"\n")
    assert done.returncode == 0, done.stderr
    hint = next(line for line in done.stderr.splitlines() if "sudo rm -rf" in line)
    assert shlex.split(hint) == ["sudo", "rm", "-rf", str(odd)]


def _shim_nuctl(site, tmp_path, listing: str, delete_status: int = 0) -> Path:
    """A nuctl first on PATH that lists ``listing``, knows no project and logs each delete
    (which exits ``delete_status``)."""
    shim, deletes = tmp_path / "shim", tmp_path / "deletes.log"
    shim.mkdir()
    (shim / "nuctl").write_text(
        "#!/bin/sh\n"
        f'case "$1 $2" in\n'
        f'  "get function") cat {shlex.quote(str(tmp_path / "listing"))} ;;\n'
        f'  "get project") echo "project not found" >&2; exit 1 ;;\n'
        f'  delete*) echo "$*" >> {shlex.quote(str(deletes))}; exit {delete_status} ;;\n'
        "esac\n")
    (shim / "nuctl").chmod(0o755)
    (tmp_path / "listing").write_text(listing)
    site.env["PATH"] = f"{shim}:{site.env['PATH']}"
    return deletes


def test_remove_refuses_a_listing_it_does_not_understand(site, tmp_path):
    deletes = _shim_nuctl(site, tmp_path, "functions: none of them\n")
    done = site.run("remove.sh")
    assert done.returncode == 1
    assert "nuctl get function -o json answered what is not JSON: 'functions: none of them'" in done.stderr
    assert "error: cannot tell what is deployed, so nothing was removed" in done.stderr
    assert not deletes.exists()


def test_remove_reads_nuctls_other_listing_forms(site, tmp_path):
    # Some nuctl versions print one object after another, and "No functions found" for none.
    fn = lambda name: {"metadata": {"name": name, "labels": {  # noqa: E731
        "cvat-gdrive-pack/managed": "true", "cvat-gdrive-pack/model": name}}}
    deletes = _shim_nuctl(site, tmp_path, "".join(json.dumps(fn(n), indent=2) + "\n"
                                                   for n in ("registry-sync", "gdrive-a", "gdrive-b")))
    done = site.run("remove.sh")
    assert done.returncode == 0, done.stderr
    assert deletes.read_text().splitlines() == [
        "delete function registry-sync --platform local", "delete function gdrive-a --platform local",
        "delete function gdrive-b --platform local"]
    (tmp_path / "listing").write_text("No functions found\n")
    again = site.run("remove.sh")
    assert again.returncode == 0, again.stderr
    assert "== removed 0 published function(s), registry-sync (not deployed: nothing to remove)" in again.stderr
    assert len(deletes.read_text().splitlines()) == 3


def test_a_failed_delete_stops_the_removal_saying_what_failed(site, tmp_path):
    fn = {"metadata": {"name": "registry-sync", "labels": {}}}
    deletes = _shim_nuctl(site, tmp_path, json.dumps([fn]), delete_status=3)
    done = site.run("remove.sh")
    assert done.returncode == 1
    assert ("error: nuctl delete function registry-sync --platform local failed (exit status 3); what was "
            "removed stays removed; run deploy/remove.sh again for the rest") in done.stderr
    assert deletes.read_text().splitlines() == ["delete function registry-sync --platform local"]


def test_a_project_nuctl_cannot_ask_about_stops_the_removal(site, tmp_path):
    # Listing works, then the dashboard drops out: `get project` fails with another error than not-found.
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "nuctl").write_text('#!/bin/sh\ncase "$1 $2" in\n  "get function") echo "[]" ;;\n'
                                '  "get project") echo "connection refused" >&2; exit 1 ;;\nesac\n')
    (shim / "nuctl").chmod(0o755)
    site.env["PATH"] = f"{shim}:{site.env['PATH']}"
    done = site.run("remove.sh")
    assert done.returncode == 1
    assert "nuctl get project cvat-gdrive-pack --platform local failed: connection refused" in done.stderr
    assert "error: cannot tell whether project cvat-gdrive-pack exists" in done.stderr
    assert "== removed" not in done.stderr


def test_a_registry_sync_of_another_project_is_left_alone(site, tmp_path):
    theirs = {"metadata": {"name": "registry-sync", "labels": {"nuclio.io/project-name": "someone-else"}}}
    deletes = _shim_nuctl(site, tmp_path, json.dumps([theirs]))
    done = site.run("remove.sh")
    assert done.returncode == 0, done.stderr
    assert not deletes.exists()


def test_remove_on_kubernetes_needs_kubectl_before_it_starts(site, tmp_path):
    # The system's tools without kubectl (this machine may have one), and the nuctl stand-in.
    bare = tmp_path / "bare"
    bare.mkdir()
    for folder in ("/bin", "/usr/bin"):
        for tool in Path(folder).iterdir():
            if tool.name != "kubectl" and not (bare / tool.name).exists():
                (bare / tool.name).symlink_to(tool)
    (bare / "nuctl").symlink_to(Path(site.env["PATH"].split(":")[0]) / "nuctl")
    site.env["PATH"] = str(bare)
    done = site.run("remove.sh", "--platform", "kube", extra="NUCLIO_NAMESPACE=cvat\n")
    assert done.returncode == 1
    assert "error: kubectl is not on PATH: needed on Kubernetes" in done.stderr
    assert calls(site.log) == []


def test_a_settings_file_in_a_missing_folder_is_named(site, tmp_path):
    done = subprocess.run([str(REPO / "deploy" / "deploy.sh"), "--settings", str(tmp_path / "nope" / "s.env")],
                          env=site.env, capture_output=True, text=True, cwd=site.root)
    assert done.returncode == 1
    assert f"error: no settings file {tmp_path / 'nope' / 's.env'} (no folder {tmp_path / 'nope'})" in done.stderr


def test_remove_with_one_published_function_reads_nuctls_single_object(site):
    site.dashboard.add_project("cvat")
    _publish(site.dashboard, "gdrive-only", managed=True)
    done = site.run("remove.sh")
    assert done.returncode == 0, done.stderr
    assert ("delete", "function", "gdrive-only", "--platform", "local") in [c.argv for c in calls(site.log)]
    assert site.dashboard.functions_json(None) == {}


def test_shell_scripts_pass_shellcheck():
    scripts = sorted(str(p.relative_to(REPO)) for p in (REPO / "deploy").glob("*.sh"))
    assert scripts == ["deploy/deploy.sh", "deploy/lib.sh", "deploy/remove.sh"]
    done = subprocess.run([str(Path(sys.executable).parent / "shellcheck"), "-x", *scripts], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_make_targets_call_the_scripts():
    done = subprocess.run(["make", "-n", "deploy", "deploy-gpu", "undeploy",
                           "DEPLOY_FLAGS=--platform kube"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("deploy/")]
    assert lines == ["deploy/deploy.sh --platform kube", "deploy/deploy.sh --gpu --platform kube",
                     "deploy/remove.sh --platform kube"]


def test_kube_replica_settings_reach_registry_sync_and_docker_ignores_them():
    from deploy.pack_config import load, sync_env

    base = {"MODEL_REGISTRY": "local:/opt/registry", "REGISTRY_HOST_DIR": "/srv/models",
            "IMAGE_REGISTRY": "registry.example:5000", "NUCLIO_NAMESPACE": "cvat",
            "PUBLISH_MIN_REPLICAS": "0", "PUBLISH_MAX_REPLICAS": "2"}
    kube = dict(sync_env(load(base, "kube")))
    assert (kube["PUBLISH_MIN_REPLICAS"], kube["PUBLISH_MAX_REPLICAS"]) == ("0", "2")
    docker = dict(sync_env(load(base, "local")))
    assert "PUBLISH_MIN_REPLICAS" not in docker and "PUBLISH_MAX_REPLICAS" not in docker
