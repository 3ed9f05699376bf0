"""registry-sync end to end: a real registry (the demo models, local backend), the
dashboard stand-in, the sync run, its report, and what CVAT then lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from common.publish import CONFIG_HASH_ANNOTATION, MANAGED_LABEL
from common.publish.sync import SyncSettings, run_sync
from common.registry.cli import main as cli_main
from tests.conftest import model_json, write_model
from tests.nuclio_dashboard import DashboardStandIn, cvat_list
from tools.nuclio_harness import Worker, cron_event, http_event

REPO = Path(__file__).resolve().parents[1]
SYNC_DIR = REPO / "functions" / "registry-sync"
DEMO = sorted(p.parent.name for p in (REPO / "demo" / "models").glob("*/model.json"))
NAMES = [f"gdrive-{folder}" for folder in DEMO]


@pytest.fixture()
def registry(demo_registry, tmp_path) -> Path:
    """A copy of the demo registry this test may change."""
    return Path(shutil.copytree(demo_registry, tmp_path / "registry"))


@pytest.fixture()
def dash():
    with DashboardStandIn() as standin:
        yield standin


def _env(registry: Path, dash: DashboardStandIn, cache: Path, **extra: str) -> dict[str, str]:
    env = {"MODEL_REGISTRY": f"local:{registry}", "NUCLIO_DASHBOARD_URL": dash.url,
           "SYNC_WORK_DIR": str(cache), "MODEL_CACHE_SIZE": "2GiB", "SYNC_SMOKE_TESTS": "false",
           "SYNC_DEPLOY_TIMEOUT": "30"}
    env.update(extra)
    return env


def _sync(registry, dash, tmp_path, dry_run=False, **extra):
    return run_sync(SyncSettings.from_env(_env(registry, dash, tmp_path / "cache", **extra)), dry_run=dry_run)


def test_first_run_publishes_every_model_and_cvat_lists_them(registry, dash, tmp_path):
    report = _sync(registry, dash, tmp_path).as_dict()

    assert report["errors"] == []
    assert report["synced"] == DEMO
    assert len(DEMO) >= 4
    assert (report["total_folders"], report["synced_count"], report["error_count"]) == (len(DEMO), len(DEMO), 0)
    assert report["created"] == NAMES and report["updated"] == report["deleted"] == []
    assert "cvat" in dash.projects  # created, since the stand-in starts with "default" only
    assert dash.write_counts == {"POST": len(DEMO)}  # one POST per model (the project is counted apart)
    listed = {f["id"]: f for f in cvat_list(dash.functions_json("cvat"))}
    assert sorted(listed) == NAMES
    layout = listed["gdrive-cdla-layout-detector"]
    assert layout["kind"] == "detector"
    assert [label["name"] for label in layout["labels_v2"]] == [
        "text", "title", "figure", "figure_caption", "table", "table_caption", "header", "footer",
        "reference", "equation"]
    assert {label["type"] for label in layout["labels_v2"]} == {"rectangle"}
    assert [label["type"] for label in listed["gdrive-ppocr-text-detector"]["labels_v2"]] == ["polygon"]
    fn = dash.function("gdrive-blazeface-face-detector")
    env = {e["name"]: e["value"] for e in fn["spec"]["env"]}
    assert env["MODEL_NAME"] == "blazeface-face-detector"
    assert env["MODEL_REGISTRY"] == f"local:{registry}"
    assert env["MODEL_CACHE_DIR"] == "/var/cache/cvat-models"  # the runners' cache, not the sync's work dir
    assert fn["metadata"]["labels"][MANAGED_LABEL] == "true"
    assert fn["status"]["state"] == "ready"


def test_second_run_writes_nothing(registry, dash, tmp_path):
    _sync(registry, dash, tmp_path)
    dash.clear_log()
    report = _sync(registry, dash, tmp_path).as_dict()
    assert dash.writes == []
    assert report["unchanged"] == NAMES and report["created"] == report["updated"] == []
    assert report["synced"] == DEMO


def test_a_changed_model_is_updated_with_one_put(registry, dash, tmp_path):
    _sync(registry, dash, tmp_path)
    before = dash.function("gdrive-ppocr-text-detector")["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    path = registry / "ppocr-text-detector" / "model.json"
    data = json.loads(path.read_text())
    data["description"] = "Finds lines of printed text (new wording)"
    path.write_text(json.dumps(data))
    dash.clear_log()

    report = _sync(registry, dash, tmp_path).as_dict()

    assert report["updated"] == ["gdrive-ppocr-text-detector"]
    assert [(w.method, w.path) for w in dash.writes] == [("PUT", "/api/functions/gdrive-ppocr-text-detector")]
    fn = dash.function("gdrive-ppocr-text-detector")
    assert fn["spec"]["description"].startswith("Finds lines of printed text (new wording)")
    assert fn["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] != before


def test_a_removed_model_is_deleted_unless_told_not_to(registry, dash, tmp_path):
    _sync(registry, dash, tmp_path)
    shutil.rmtree(registry / "blazeface-face-detector")
    dash.clear_log()

    kept = _sync(registry, dash, tmp_path, SYNC_DELETE_STALE="false").as_dict()
    assert dash.writes == [] and kept["deleted"] == []
    assert kept["stale"] == ["gdrive-blazeface-face-detector"]
    assert dash.function("gdrive-blazeface-face-detector") is not None

    report = _sync(registry, dash, tmp_path).as_dict()
    assert report["deleted"] == ["gdrive-blazeface-face-detector"]
    [delete] = dash.writes
    assert (delete.method, delete.path) == ("DELETE", "/api/functions")
    assert delete.json()["metadata"]["name"] == "gdrive-blazeface-face-detector"
    assert dash.function("gdrive-blazeface-face-detector") is None
    assert report["total_folders"] == len(DEMO) - 1


def test_a_broken_model_is_reported_and_its_published_function_stays(registry, dash, tmp_path):
    _sync(registry, dash, tmp_path)
    (registry / "cdla-layout-detector" / "model.json").write_text('{"name": "cdla-layout-detector",}')
    dash.clear_log()

    report = _sync(registry, dash, tmp_path).as_dict()

    assert [e["folder"] for e in report["errors"]] == ["cdla-layout-detector"]
    assert "JSON" in report["errors"][0]["error"] or "json" in report["errors"][0]["error"]
    assert report["kept"] == ["gdrive-cdla-layout-detector"]
    assert report["synced"] == [f for f in DEMO if f != "cdla-layout-detector"]
    assert (report["synced_count"], report["error_count"], report["total_folders"]) == (len(DEMO) - 1, 1, len(DEMO))
    assert dash.writes == []
    assert dash.function("gdrive-cdla-layout-detector")["status"]["state"] == "ready"


def test_a_model_cvat_would_choke_on_is_not_published(registry, dash, tmp_path):
    write_model(registry, "classifier-x", model_json("classifier-x", type="other"), {"model.onnx": b"\x08\x01"})
    report = _sync(registry, dash, tmp_path).as_dict()
    assert [e["folder"] for e in report["errors"]] == ["classifier-x"]
    assert "other" in report["errors"][0]["error"]
    assert dash.function("gdrive-classifier-x") is None
    assert sorted(f["id"] for f in cvat_list(dash.functions_json("cvat"))) == NAMES


def test_functions_it_does_not_manage_are_left_alone(registry, dash, tmp_path):
    dash.add_project("cvat")
    foreign = {"metadata": {"name": "gdrive-ppocr-text-detector", "labels": {"nuclio.io/project-name": "cvat"},
                            "annotations": {"name": "hand made", "type": "detector", "spec": "[]"}},
               "spec": {"description": "deployed by hand", "image": "x"}}
    from tests.nuclio_dashboard import call
    status, _ = call(dash.url, "POST", "/api/functions", foreign, {"x-nuclio-project-name": "cvat"})
    assert status == 202
    dash.clear_log()

    report = _sync(registry, dash, tmp_path).as_dict()

    assert "gdrive-ppocr-text-detector" in report["left_alone"]
    assert all(w.json() is None or w.json().get("metadata", {}).get("name") != "gdrive-ppocr-text-detector"
               for w in dash.writes)
    assert dash.function("gdrive-ppocr-text-detector")["spec"]["description"] == "deployed by hand"


def test_a_registry_that_cannot_be_listed_changes_nothing(registry, dash, tmp_path):
    _sync(registry, dash, tmp_path)
    moved = registry.with_name("elsewhere")
    registry.rename(moved)
    dash.clear_log()

    report = _sync(registry, dash, tmp_path).as_dict()

    assert report["listing_failed"] is True
    assert report["deleted"] == [] and dash.writes == []
    assert report["errors"][0]["folder"] == "*"
    assert len(dash.functions_json("cvat")) == len(DEMO)


def test_dry_run_writes_nothing_and_shows_the_diff(registry, dash, tmp_path):
    report = _sync(registry, dash, tmp_path, dry_run=True)
    answer = report.as_dict()
    assert answer["created"] == NAMES and answer["dry_run"] is True
    assert [w for w in dash.writes if w.path.startswith("/api/functions")] == []

    from common.publish.export import diff_text
    text = diff_text(report.plan, report.current)
    assert "+++ registry/gdrive-ppocr-text-detector (new)" in text
    assert "+  name: gdrive-ppocr-text-detector" in text


# ---- the function itself, called as Nuclio calls it --------------------------------------------

def test_handler_runs_on_cron_and_on_http(registry, dash, tmp_path):
    worker = Worker(SYNC_DIR, env=_env(registry, dash, tmp_path / "cache"))

    tick = worker.invoke(cron_event(b'{"reason": "cron"}'))
    assert tick.status == 200 and tick.content_type == "application/json"
    assert tick.json()["created"] == NAMES

    again = worker.invoke(http_event({"dry_run": True}))
    assert again.status == 200
    assert again.json()["unchanged"] == NAMES and again.json()["diff"] == ""

    kube_cron = worker.invoke(http_event(None, headers={"X-Nuclio-Invoke-Trigger": "cron"}))
    assert kube_cron.status == 200 and kube_cron.json()["synced_count"] == len(DEMO)

    bad = worker.invoke(http_event(None, raw=b"[1, 2]"))
    assert bad.status == 400 and "JSON object" in bad.json()["error"]


def test_handler_answers_502_when_the_registry_is_gone(registry, dash, tmp_path):
    worker = Worker(SYNC_DIR, env=_env(registry, dash, tmp_path / "cache"))
    shutil.rmtree(registry)
    result = worker.invoke(cron_event(b""))
    assert result.status == 502
    assert result.json()["listing_failed"] is True


# ---- command line -----------------------------------------------------------------------------

def test_cli_export_writes_one_function_yaml_per_model(registry, tmp_path, capsys):
    out = tmp_path / "export"
    env = {"SYNC_WORK_DIR": str(tmp_path / "cache")}
    assert cli_main(["--registry", f"local:{registry}", "export", str(out), "--no-smoke"], env=env) == 0
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("function.yaml"))
    assert files == sorted(f"{name}/function.yaml" for name in NAMES)
    body = yaml.safe_load((out / "gdrive-ppocr-text-detector" / "function.yaml").read_text())
    assert "metadata" in body and "meta" not in body
    assert isinstance(body["spec"]["env"], list)
    assert "build" not in body["spec"] and body["spec"]["image"]
    spec = json.loads(body["metadata"]["annotations"]["spec"])
    assert [label["name"] for label in spec] == ["text"]
    index = json.loads((out / "index.json").read_text())
    assert index["gdrive-ppocr-text-detector"]["folder"] == "ppocr-text-detector"

    # A model that left the registry loses its file on the next export; hand-made files stay.
    (out / "hand-made").mkdir()
    (out / "hand-made" / "function.yaml").write_text("metadata: {name: hand-made}\n")
    shutil.rmtree(registry / "blazeface-face-detector")
    assert cli_main(["--registry", f"local:{registry}", "export", str(out), "--no-smoke"], env=env) == 0
    assert not (out / "gdrive-blazeface-face-detector").exists()
    assert (out / "hand-made" / "function.yaml").exists()


def test_cli_sync_and_dry_run(registry, dash, tmp_path, capsys):
    env = _env(registry, dash, tmp_path / "cache")
    assert cli_main(["sync", "--dry-run"], env=env) == 0
    out = capsys.readouterr().out
    assert "would be created: " + ", ".join(NAMES) in out
    assert dash.functions_json("cvat") == {}

    assert cli_main(["sync", "--json"], env=env) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["created"] == NAMES

    (registry / "ppocr-text-detector" / "model.json").write_text("{")
    assert cli_main(["sync"], env=env) == 1
    captured = capsys.readouterr()
    assert f"{len(DEMO) - 1} of {len(DEMO)} model folders synced, 1 errors" in captured.out
    assert "cvat-registry: ppocr-text-detector:" in captured.err


# ---- a Drive registry (the real client against the Drive stand-in) -----------------------------

def test_drive_registry_publishes_and_an_outage_deletes_nothing(drive, dash, tmp_path):
    from tests import synthetic_models as sm
    from tests.test_runner_drive import seed
    from tests.test_runner_synthetic import PAD

    seed(drive, sm.content_box_detector(64, 64, PAD / 255.0), shared=True)
    drive.accept_api_keys("AIza-test-key")
    env = {"MODEL_REGISTRY": "gdrive:CVAT_Models", "NUCLIO_DASHBOARD_URL": dash.url,
           "SYNC_WORK_DIR": str(tmp_path / "cache"), "SYNC_SMOKE_TESTS": "false", "SYNC_DEPLOY_TIMEOUT": "30",
           "DRIVE_ROOT_URL": drive.root_url, "DRIVE_RETRIES": "2", "GOOGLE_DRIVE_API_KEY": "AIza-test-key"}

    report = run_sync(SyncSettings.from_env(env)).as_dict()
    assert report["created"] == ["gdrive-boxes"] and report["errors"] == []
    fn = dash.function("gdrive-boxes")
    published_env = {e["name"]: e["value"] for e in fn["spec"]["env"]}
    assert published_env["MODEL_REGISTRY"] == "gdrive:CVAT_Models"
    assert "AIza-test-key" not in json.dumps(fn)  # secrets never land in a published config

    drive.fail_next(503, "backendError", times=None)
    dash.clear_log()
    outage = run_sync(SyncSettings.from_env(env)).as_dict()
    assert outage["listing_failed"] is True and outage["deleted"] == []
    assert dash.writes == [] and dash.function("gdrive-boxes")["status"]["state"] == "ready"


# ---- as a deployed function: its own worker processes, cron and HTTP triggers --------------------

def test_function_server_cron_tick_and_http_run_agree(registry, dash, tmp_path):
    from tests.nuclio_emu import FunctionServer

    env = _env(registry, dash, tmp_path / "cache")
    with FunctionServer(SYNC_DIR, env=env, python_path=[str(REPO)], run_cron=False) as fn:
        tick = fn.tick()
        assert tick.status == 200, tick.body
        assert tick.json()["created"] == NAMES
        dash.clear_log()
        manual = fn.post_json({})
        assert manual.status == 200 and manual.json()["unchanged"] == NAMES
        assert dash.writes == []
        bad = fn.post_json({"dry_run": "yes"})
        assert bad.status == 400 and bad.json() == {"error": "dry_run must be true or false"}
        ran = [line for line in fn.logs if line.message == "registry-sync run"]
        assert [line.with_["trigger"] for line in ran] == ["cron", "http"]
        assert ran[0].with_["synced_count"] == len(DEMO)


def test_two_replicas_syncing_at_once_publish_each_model_once(registry, tmp_path):
    import threading

    with DashboardStandIn(ready_after=0.3) as slow:
        reports: dict[str, dict] = {}

        def replica(tag: str) -> None:  # own cache dir: another host, no shared lock
            settings = SyncSettings.from_env(_env(registry, slow, tmp_path / tag))
            reports[tag] = run_sync(settings).as_dict()

        threads = [threading.Thread(target=replica, args=(tag,)) for tag in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        posts = [w.json()["metadata"]["name"] for w in slow.writes if w.method == "POST" and w.status == 202]
        assert sorted(posts) == NAMES  # each model created exactly once, whoever won
        assert [w for w in slow.writes if w.method in ("PUT", "DELETE")] == []
        for tag in ("a", "b"):
            assert reports[tag]["errors"] == [] and reports[tag]["synced"] == DEMO
        assert sorted(reports["a"]["created"] + reports["b"]["created"]) == NAMES
        slow.clear_log()
        settings = SyncSettings.from_env(_env(registry, slow, tmp_path / "a"))
        assert run_sync(settings).as_dict()["unchanged"] == NAMES
        assert slow.writes == []


# ---- the gate inside a run: samples/ smoke inference, previous versions ----------------------------

def test_samples_are_run_before_publishing_and_a_wrong_label_count_blocks_the_model(registry, dash, tmp_path):
    from tools.assets import asset_path

    for folder, picture in (("cdla-layout-detector", "page.png"), ("blazeface-face-detector", "astronaut.png")):
        (registry / folder / "samples").mkdir()
        shutil.copy(asset_path(picture), registry / folder / "samples" / picture)
    # A second copy of the layout model whose model.json forgot a class: the network has 10.
    shutil.copytree(registry / "cdla-layout-detector", registry / "layout-nine-labels")
    path = registry / "layout-nine-labels" / "model.json"
    data = json.loads(path.read_text())
    data["name"], data["labels"] = "layout-nine-labels", data["labels"][:9]
    path.write_text(json.dumps(data))

    report = _sync(registry, dash, tmp_path, SYNC_SMOKE_TESTS="true").as_dict()

    [error] = report["errors"]
    assert error["folder"] == "layout-nine-labels"
    assert "10" in error["error"] and "9" in error["error"], error["error"]
    assert dash.function("gdrive-layout-nine-labels") is None
    assert report["synced"] == DEMO  # the two models with samples passed their smoke test


def test_previous_versions_get_their_own_pinned_functions_when_asked(tmp_path, dash):
    from tests.conftest import registry_tree

    root = registry_tree(tmp_path / "registry")
    report = run_sync(SyncSettings.from_env(
        _env(root, dash, tmp_path / "cache", SYNC_PREVIOUS_VERSIONS="true"))).as_dict()

    assert report["created"] == ["gdrive-alpha", "gdrive-alpha-v1-0-0", "gdrive-alpha-v2-0-0", "gdrive-beta-ir"]
    assert report["synced"] == ["alpha", "beta-ir"]
    assert sorted(e["folder"] for e in report["errors"]) == ["bad-field", "bad-json", "no-json", "no-weights"]
    pins = {}
    for name in report["created"]:
        env = {e["name"]: e["value"] for e in dash.function(name)["spec"]["env"]}
        pins[name] = (env["MODEL_NAME"], env.get("MODEL_VERSION", ""))
    assert pins == {"gdrive-alpha": ("alpha", ""), "gdrive-alpha-v1-0-0": ("alpha", "1.0.0"),
                    "gdrive-alpha-v2-0-0": ("alpha", "2.0.0"), "gdrive-beta-ir": ("beta-ir", "")}
    listed = {f["id"]: f for f in cvat_list(dash.functions_json("cvat"))}
    assert listed["gdrive-alpha-v1-0-0"]["version"] == 1 and listed["gdrive-alpha"]["version"] == 2

    # Turned off again: the pinned functions are ours and their versions are no longer wanted.
    dash.clear_log()
    again = run_sync(SyncSettings.from_env(_env(root, dash, tmp_path / "cache"))).as_dict()
    assert again["deleted"] == ["gdrive-alpha-v1-0-0", "gdrive-alpha-v2-0-0"]
