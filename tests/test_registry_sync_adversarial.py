"""registry-sync against bad input: odd model.json content and folder names, a misbehaving
dashboard, functions it does not own, concurrent runs, odd HTTP requests, bad settings and
secrets. Each test is an attack; what it asserts is the promise of issue 6: a bad entry is
reported and skipped while the rest work, CVAT's list (tests/nuclio_dashboard/cvat.py) never
breaks, only what changed is written, nothing foreign is touched, nothing is deleted by
mistake, the function answers JSON and the next run recovers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from common.errors import SettingsError
from common.publish import CONFIG_HASH_ANNOTATION, MANAGED_LABEL, MODEL_FOLDER_ANNOTATION, MODEL_LABEL
from common.publish.dashboard import DashboardClient, DashboardError
from common.publish.naming import CVAT_ID, DNS_LABEL, folder_hash
from common.publish.sync import LOCK_NAME, SyncBusy, SyncSettings, run_sync
from common.registry.cli import main as cli_main
from tests.conftest import model_json, write_model
from tests.nuclio_dashboard import DashboardStandIn, call, cvat_list
from tools.nuclio_harness import Worker, cron_event, http_event

REPO = Path(__file__).resolve().parents[1]
SYNC_DIR = REPO / "functions" / "registry-sync"
WEIGHTS = {"model.onnx": b"\x08\x01"}  # never loaded: smoke tests are off unless a test says so


@pytest.fixture()
def dash():
    with DashboardStandIn() as standin:
        yield standin


def env_for(root: Path, dash: DashboardStandIn, work: Path, **extra: str) -> dict[str, str]:
    env = {"MODEL_REGISTRY": f"local:{root}", "NUCLIO_DASHBOARD_URL": dash.url, "SYNC_WORK_DIR": str(work),
           "MODEL_CACHE_SIZE": "1GiB", "SYNC_SMOKE_TESTS": "false", "SYNC_DEPLOY_TIMEOUT": "30"}
    env.update(extra)
    return env


def sync(root, dash, tmp_path, *, client=None, **extra) -> dict:
    settings = SyncSettings.from_env(env_for(root, dash, tmp_path / "work", **extra))
    return run_sync(settings, client=client).as_dict()


def quick_client(dash, **kw) -> DashboardClient:
    """The client a run makes, without real waits between retries."""
    return DashboardClient(dash.url, sleep=lambda _s: None, **kw)


def models(root: Path, *folders: str) -> Path:
    for folder in folders:
        write_model(root, folder, model_json("m"), WEIGHTS)
    return root


def listed_ids(dash) -> list[str]:
    # Through JSON text, as CVAT receives it; raises on the cases that blank CVAT's list.
    return sorted(f["id"] for f in cvat_list(json.dumps(dash.functions_json("cvat"))))


# ---- model.json content that passes validation but could still break CVAT ------------------------

SKELETON_SVG = ('<line x1="36" y1="20" x2="60" y2="45" data-type="edge" data-node-from="1" data-node-to="2"></line>'
                '<circle r="0.75" cx="36" cy="20" data-type="element node" data-element-id="1" data-node-id="1" '
                'data-label-name="head \\"top\\""></circle>')

LABEL_ATTACKS = {
    "quotes": ['say "hi"', "it's", "back\\slash", "new\nline", "tab\tstop", "</script>", "{\"json\": 1}"],
    "unicode": ["猫", "Éclair", "emoji 😀", "zero\u200bwidth", "rtl\u202eltr", "e\u0301"],
    "spaces": [" lead", "trail ", "  both  "],
    "case": ["Person", "person", "PERSON"],
    "spacing": ["car", "car ", " car"],
    "long-names": ["x" * 5000, "y" * 300],
    "many-labels": [f"class {i}" for i in range(5000)],
}


def test_label_content_that_validates_never_breaks_cvats_list(tmp_path, dash):
    root = tmp_path / "registry"
    for folder, labels in LABEL_ATTACKS.items():
        write_model(root, folder, model_json(folder, labels=labels), WEIGHTS)
    write_model(root, "attributes", model_json("attributes", labels=[{"id": 0, "name": "car", "attributes": [
        {"name": "colour, shade", "input_type": "select", "values": ["red,blue", "green\nyellow", "", 'q"uote']},
        {"name": "size", "input_type": "number", "values": [0, 10, 1], "default_value": 3},
        {"name": "Size", "input_type": "checkbox", "values": [False]}]}]), WEIGHTS)
    write_model(root, "skeleton", model_json("skeleton", type="keypoint", labels=[
        {"id": 0, "name": "body \"x\"", "type": "skeleton", "svg": SKELETON_SVG,
         "sublabels": [{"id": 0, "name": 'head "top"'}, {"id": 1, "name": "tail\\"}]}]), WEIGHTS)
    write_model(root, "display-blank", model_json("display-blank", display_name="   "), WEIGHTS)
    write_model(root, "display-empty", model_json("display-empty", display_name=""), WEIGHTS)
    write_model(root, "display-odd", model_json("display-odd", display_name="null\n\"yes\" — 1e3"), WEIGHTS)
    write_model(root, "no-description", model_json("no-description", description=" \n "), WEIGHTS)
    write_model(root, "blank-label", model_json("blank-label", labels=["ok", "   "]), WEIGHTS)

    report = sync(root, dash, tmp_path)

    [error] = report["errors"]
    assert error["folder"] == "blank-label"
    assert "spec[1]: label name '   ' is blank" in error["error"]
    good = sorted(f"gdrive-{f}" for f in [*LABEL_ATTACKS, "attributes", "skeleton", "display-blank",
                                         "display-empty", "display-odd", "no-description"])
    assert report["created"] == good
    assert listed_ids(dash) == good
    listing = {f["id"]: f for f in cvat_list(json.dumps(dash.functions_json("cvat")))}
    for folder, labels in LABEL_ATTACKS.items():  # exact strings: case and spaces make different labels
        assert [label["name"] for label in listing[f"gdrive-{folder}"]["labels_v2"]] == labels
    [car] = listing["gdrive-attributes"]["labels_v2"]
    assert [a["values"] for a in car["attributes"]] == [["red,blue", "green\nyellow", "", 'q"uote'],
                                                        ["0", "10", "1"], ["false"]]
    [body] = listing["gdrive-skeleton"]["labels_v2"]
    assert body["svg"] == SKELETON_SVG and [s["name"] for s in body["sublabels"]] == ['head "top"', "tail\\"]
    # A blank display name would be an empty entry on CVAT's Models page: the model's name stands in.
    assert listing["gdrive-display-blank"]["name"] == "display-blank"
    assert listing["gdrive-display-empty"]["name"] == "display-empty"
    assert listing["gdrive-display-odd"]["name"] == "null\n\"yes\" — 1e3"
    assert listing["gdrive-no-description"]["description"].startswith("no-description: detector model (onnx)")

    dash.clear_log()
    assert sync(root, dash, tmp_path)["unchanged"] == good
    assert dash.writes == []


def test_exported_yaml_reads_back_to_the_published_body(tmp_path, dash):
    root = tmp_path / "registry"
    for folder, labels in LABEL_ATTACKS.items():
        if folder != "many-labels":
            write_model(root, folder, model_json(folder, labels=labels, display_name="yes"), WEIGHTS)
    write_model(root, "nully", model_json("nully", display_name="~", description="null"), WEIGHTS)
    out = tmp_path / "export"
    env = {"SYNC_WORK_DIR": str(tmp_path / "work"), "MODEL_CACHE_SIZE": "1GiB"}  # as sync() renders
    assert cli_main(["--registry", f"local:{root}", "export", str(out), "--no-smoke"], env=env) == 0
    sync(root, dash, tmp_path)
    for path in sorted(out.glob("*/function.yaml")):
        published = dash.function(path.parent.name)
        assert yaml.safe_load(path.read_text()) == {"metadata": published["metadata"], "spec": published["spec"]}
    assert len(list(out.glob("*/function.yaml"))) == len(LABEL_ATTACKS)


# ---- folder names -------------------------------------------------------------------------------

ODD_FOLDERS = ["日本語", "Modèle", "My Model", "my-model", "my_model", "my.model", "a" * 200, "dashboard",
               "controller", "dlx", "-lead", "trail-", "UPPER", "tab\tname", "new\nline", "q'uote\"", "back\\slash",
               "dollar$HOME", "emoji😀", "yolov8n-v1-2-0", "0", "my-model-" + folder_hash("My Model")]


@pytest.mark.parametrize("prefix", ["gdrive-", ""])
def test_odd_folder_names_get_distinct_valid_names_that_serve_their_folder(tmp_path, dash, prefix):
    root = models(tmp_path / "registry", *ODD_FOLDERS)

    report = sync(root, dash, tmp_path, PUBLISH_NAME_PREFIX=prefix)

    assert report["errors"] == [] and report["synced"] == sorted(ODD_FOLDERS)
    names = report["created"]
    assert len(names) == len(set(names)) == len(ODD_FOLDERS)
    assert all(DNS_LABEL.match(n) and CVAT_ID.match(n) and len(n) <= 63 for n in names)
    assert not {"dashboard", "controller", "dlx", "scaler"} & set(names)
    assert listed_ids(dash) == sorted(names)
    served = {}
    for name in names:
        fn = dash.function(name)
        env = {e["name"]: e["value"] for e in fn["spec"]["env"]}
        assert env["MODEL_NAME"] == fn["metadata"]["annotations"][MODEL_FOLDER_ANNOTATION]
        served[env["MODEL_NAME"]] = name
    assert sorted(served) == sorted(ODD_FOLDERS)
    # Three spellings of one name, and a folder named like another's hashed name, stay apart.
    assert served["my-model"] == f"{prefix}my-model"
    assert len({served[f] for f in ("My Model", "my_model", "my.model", "my-model-" + folder_hash("My Model"))}) == 4


def test_a_folder_with_surrounding_spaces_is_refused_not_served_by_a_neighbour(tmp_path, dash):
    # The runner strips MODEL_NAME: " yolo " would serve (or miss) the folder "yolo".
    root = models(tmp_path / "registry", "yolo", " yolo ", "yolo\n")

    report = sync(root, dash, tmp_path)

    assert sorted(e["folder"] for e in report["errors"]) == [" yolo ", "yolo\n"]
    assert all("starts or ends with white space" in e["error"] for e in report["errors"])
    assert report["created"] == ["gdrive-yolo"] and listed_ids(dash) == ["gdrive-yolo"]


# ---- the dashboard misbehaving ---------------------------------------------------------------------

def test_a_listing_that_is_not_a_map_stops_the_run_with_a_json_answer_and_no_writes(tmp_path, dash):
    root = models(tmp_path / "registry", "a", "b")
    sync(root, dash, tmp_path)
    worker = Worker(SYNC_DIR, env=env_for(root, dash, tmp_path / "work"))
    for payload, fragment in (([1, 2], "expected a JSON object name -> function, got list"),
                              ({"gdrive-a": None}, "function 'gdrive-a' is NoneType, not an object"),
                              ("<html>", "expected a JSON object name -> function, got str")):
        dash.clear_log()
        dash.answer_next(200, payload, method="GET", path="/api/functions")
        answer = worker.invoke(cron_event(b""))
        assert (answer.status, answer.content_type) == (502, "application/json")
        assert fragment in answer.json()["error"]
        assert dash.writes == []
    assert listed_ids(dash) == ["gdrive-a", "gdrive-b"]


def test_a_listing_that_is_not_json_is_reported_as_json(tmp_path, dash):
    root = models(tmp_path / "registry", "a")
    real = dash.handle

    def html(method, path, headers, raw):
        if (method, path) == ("GET", "/api/functions"):
            return ("raw", 200, {"Content-Type": "text/html"}, b"<html>proxy error</html>")
        return real(method, path, headers, raw)

    dash.handle = html
    answer = Worker(SYNC_DIR, env=env_for(root, dash, tmp_path / "work")).invoke(http_event({}))
    assert (answer.status, answer.content_type) == (502, "application/json")
    assert answer.json() == {"error": "dashboard list functions: 200 answer is not JSON: b'<html>proxy error</html>'"}
    assert dash.writes == []


def test_malformed_function_objects_are_left_alone_and_never_crash_the_run(tmp_path, dash):
    root = models(tmp_path / "registry", "a")
    sync(root, dash, tmp_path)
    listing = dash.functions_json("cvat")
    listing.update({
        "x-no-metadata": {},
        "x-metadata-string": {"metadata": "str", "spec": [], "status": "ready"},
        "x-labels-list": {"metadata": {"labels": ["a"], "annotations": ["b"]}},
        "x-annotations-string": {"metadata": {"labels": {MANAGED_LABEL: "true"}, "annotations": "s"}},
    })
    dash.clear_log()
    dash.answer_next(200, listing, method="GET", path="/api/functions")

    report = sync(root, dash, tmp_path)

    assert report["errors"] == [] and report["unchanged"] == ["gdrive-a"]
    assert report["left_alone"] == ["x-annotations-string", "x-labels-list", "x-metadata-string", "x-no-metadata"]
    assert dash.writes == []


def test_every_write_failing_is_reported_per_model_and_the_next_run_recovers(tmp_path, dash):
    root = models(tmp_path / "registry", "keep", "change", "gone")
    sync(root, dash, tmp_path)
    write_model(root, "change", model_json("m", description="new text"), WEIGHTS)
    write_model(root, "new", model_json("m"), WEIGHTS)
    import shutil
    shutil.rmtree(root / "gone")
    for method in ("POST", "PUT", "DELETE"):
        dash.fail_next(500, times=1000, method=method, path="/api/functions", message="disk full")
    dash.clear_log()

    report = sync(root, dash, tmp_path, client=quick_client(dash, retries=1))

    assert {e["folder"]: e["error"] for e in report["errors"]} == {
        "change": "function gdrive-change not published: dashboard update function gdrive-change: 500 disk full",
        "new": "function gdrive-new not published: dashboard create function gdrive-new: 500 disk full",
        "gone": "function gdrive-gone not deleted: dashboard delete function gdrive-gone: 500 disk full"}
    assert report["synced"] == ["keep"] and report["deleted"] == [] and report["created"] == []
    assert [(w.method, w.status) for w in dash.writes] == [("PUT", 500)] * 2 + [("POST", 500)] * 2 + [
        ("DELETE", 500)] * 2
    assert sorted(dash.functions_json("cvat")) == ["gdrive-change", "gdrive-gone", "gdrive-keep"]

    dash._faults.clear()
    again = sync(root, dash, tmp_path)
    assert (again["created"], again["updated"], again["deleted"], again["errors"]) == (
        ["gdrive-new"], ["gdrive-change"], ["gdrive-gone"], [])
    assert listed_ids(dash) == ["gdrive-change", "gdrive-keep", "gdrive-new"]


def test_a_409_on_put_is_reported_and_the_next_run_updates(tmp_path, dash):
    root = models(tmp_path / "registry", "a")
    sync(root, dash, tmp_path)
    write_model(root, "a", model_json("m", description="v2"), WEIGHTS)
    dash.fail_next(409, method="PUT", message="Function is being provisioned")

    report = sync(root, dash, tmp_path)

    assert report["errors"] == [{"folder": "a", "error": "function gdrive-a not published: dashboard update "
                                                          "function gdrive-a: 409 Function is being provisioned"}]
    assert report["synced"] == []
    assert dash.function("gdrive-a")["spec"]["description"] != "v2"
    assert sync(root, dash, tmp_path)["updated"] == ["gdrive-a"]
    assert dash.function("gdrive-a")["spec"]["description"] == "v2"


def test_a_dashboard_slower_than_the_client_timeout(tmp_path, dash):
    root = models(tmp_path / "registry", "a", "b")
    sync(root, dash, tmp_path)
    dash.clear_log()
    real = dash.handle
    slow = {"list": True}

    def handle(method, path, headers, raw):
        if slow["list"] and (method, path) == ("GET", "/api/functions"):
            time.sleep(0.5)
        answer = real(method, path, headers, raw)
        if not slow["list"] and method == "PUT":
            time.sleep(0.5)  # the write happens; only its answer comes late
        return answer

    dash.handle = handle
    with pytest.raises(DashboardError, match=r"list functions: unreachable at .* after 2 attempts \(TimeoutError"):
        sync(root, dash, tmp_path, client=quick_client(dash, timeout=0.1, retries=1))
    assert dash.writes == []

    slow["list"] = False
    write_model(root, "a", model_json("m", description="v2"), WEIGHTS)
    report = sync(root, dash, tmp_path, client=quick_client(dash, timeout=0.1, retries=1))
    [error] = report["errors"]
    assert error["folder"] == "a" and "update function gdrive-a: unreachable" in error["error"]
    assert report["deleted"] == [] and report["unchanged"] == ["gdrive-b"]

    dash.handle = real
    again = sync(root, dash, tmp_path)  # the late PUT did land: nothing left to write
    assert (again["errors"], again["synced"], again["unchanged"]) == ([], ["a", "b"], ["gdrive-a", "gdrive-b"])


def _settle(dash, name):
    """Wait for the stand-in's simulated deploy of ``name`` to end (its own clock)."""
    while dash.function(name)["status"]["state"] == "building":
        time.sleep(0.05)


def test_a_deploy_stuck_past_the_timeout_that_then_fails_is_redeployed_next_run(tmp_path):
    root = models(tmp_path / "registry", "a")
    with DashboardStandIn(ready_after=0.3) as dash:
        dash.deploy_error("image pull timed out", name="gdrive-a", times=1)

        first = sync(root, dash, tmp_path, SYNC_DEPLOY_TIMEOUT="0")
        assert first["errors"] == [{"folder": "a", "error": "function gdrive-a not published: created, but not "
                                                             "ready after 0 s (state 'building')"}]
        _settle(dash, "gdrive-a")
        assert dash.function("gdrive-a")["status"]["state"] == "error"
        assert listed_ids(dash) == ["gdrive-a"]  # CVAT lists it, broken: it must not stay so

        dash.clear_log()
        second = sync(root, dash, tmp_path)  # same config, failed deploy: redeploy it
        assert (second["updated"], second["synced"], second["errors"]) == (["gdrive-a"], ["a"], [])
        assert [(w.method, w.path) for w in dash.writes] == [("PUT", "/api/functions/gdrive-a")]
        assert dash.function("gdrive-a")["status"]["state"] == "ready"
        dash.clear_log()
        assert sync(root, dash, tmp_path)["unchanged"] == ["gdrive-a"] and dash.writes == []


def test_project_creation_failing_is_reported_and_the_next_run_recovers(tmp_path, dash):
    root = models(tmp_path / "registry", "a", "b")
    dash.fail_next(500, times=2, method="POST", path="/api/projects", message="etcd unavailable")

    report = sync(root, dash, tmp_path, client=quick_client(dash, retries=1))

    assert [e["folder"] for e in report["errors"]] == ["a", "b"]
    assert report["errors"][0]["error"] == ("function gdrive-a not published: project 'cvat' unavailable: dashboard "
                                            "create project cvat: 500 etcd unavailable")
    assert dash.write_counts == {} and "cvat" not in dash.projects
    assert sync(root, dash, tmp_path)["created"] == ["gdrive-a", "gdrive-b"]


# ---- functions registry-sync does not own ----------------------------------------------------------

def _deploy(dash, name, labels, annotations=None, project="cvat"):
    dash.add_project(project)
    body = {"metadata": {"name": name, "labels": labels,
                         "annotations": annotations or {"name": name, "type": "detector", "spec": "[]"}},
            "spec": {"description": "deployed by hand", "image": "x"}}
    status, _ = call(dash.url, "POST", "/api/functions", body, {"x-nuclio-project-name": project})
    assert status == 202


def test_look_alike_functions_are_never_written_or_deleted(tmp_path, dash):
    root = models(tmp_path / "registry", "a", "b")
    _deploy(dash, "gdrive-a", {MANAGED_LABEL: "false", MODEL_LABEL: "a"})
    _deploy(dash, "gdrive-old1", {MANAGED_LABEL: "yes", MODEL_LABEL: "old1"})
    _deploy(dash, "gdrive-old2", {MANAGED_LABEL: "true"})                      # a copied label, no model label
    _deploy(dash, "gdrive-b", {MANAGED_LABEL: "true"},
            {"name": "b", "type": "detector", CONFIG_HASH_ANNOTATION: "0" * 32})
    dash.clear_log()

    report = sync(root, dash, tmp_path)

    assert report["left_alone"] == ["gdrive-a", "gdrive-b", "gdrive-old1", "gdrive-old2"]
    assert sorted(e["folder"] for e in report["errors"]) == ["a", "b"]
    assert "not managed by registry-sync" in report["errors"][0]["error"]
    assert report["created"] == report["updated"] == report["deleted"] == []
    assert dash.writes == []
    assert all(dash.function(n)["spec"]["description"] == "deployed by hand"
               for n in ("gdrive-a", "gdrive-b", "gdrive-old1", "gdrive-old2"))


def test_a_function_with_our_labels_but_no_folder_annotation_is_ours(tmp_path, dash):
    # Both labels are set only by render.py and are immutable in Nuclio: a stale one is deleted,
    # and its error or deletion is reported under its name when the folder is unknown.
    root = models(tmp_path / "registry", "a")
    _deploy(dash, "gdrive-gone", {MANAGED_LABEL: "true", MODEL_LABEL: "gone"}, {"type": "detector"})

    report = sync(root, dash, tmp_path)

    assert (report["created"], report["deleted"], report["errors"]) == (["gdrive-a"], ["gdrive-gone"], [])


def test_functions_of_other_projects_are_never_touched_even_if_the_dashboard_lists_them(tmp_path, dash):
    root = models(tmp_path / "registry", "a")
    other = {MANAGED_LABEL: "true", MODEL_LABEL: "a"}
    _deploy(dash, "gdrive-a", other, project="staging")       # same name, another project's registry-sync
    _deploy(dash, "gdrive-stale", {**other, MODEL_LABEL: "stale"}, project="staging")
    everything = {**dash.functions_json(None)}                 # a dashboard ignoring the project header
    dash.answer_next(200, everything, method="GET", path="/api/functions")
    dash.clear_log()

    report = sync(root, dash, tmp_path)

    assert report["deleted"] == [] and report["created"] == []
    assert report["errors"] == [{"folder": "a", "error": (
        "function gdrive-a not published: a function named 'gdrive-a' exists in another Nuclio project (names "
        "are unique per namespace); left untouched")}]
    assert [w for w in dash.writes if w.path.startswith("/api/functions")] == []
    assert dash.function("gdrive-stale")["metadata"]["labels"]["nuclio.io/project-name"] == "staging"
    assert dash.function("gdrive-a")["metadata"]["labels"]["nuclio.io/project-name"] == "staging"


# ---- concurrency ----------------------------------------------------------------------------------

HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(3600)
"""


def test_a_run_in_progress_blocks_and_a_killed_one_does_not(tmp_path, dash):
    root = models(tmp_path / "registry", "a")
    work = tmp_path / "work"
    work.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(work / LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(SyncBusy, match="another registry-sync run is still in progress"):
            sync(root, dash, tmp_path, SYNC_LOCK_TIMEOUT="0")
        busy = Worker(SYNC_DIR, env=env_for(root, dash, work, SYNC_LOCK_TIMEOUT="0")).invoke(cron_event(b""))
        assert (busy.status, busy.content_type) == (409, "application/json")
        assert dash.writes == []
        os.kill(holder.pid, signal.SIGKILL)  # killed mid-run: the kernel drops its flock
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    assert (work / LOCK_NAME).exists()  # the stale file stays; it blocks nothing
    assert sync(root, dash, tmp_path, SYNC_LOCK_TIMEOUT="0")["created"] == ["gdrive-a"]


def test_cron_tick_and_http_run_at_once_in_one_container_publish_each_model_once(tmp_path):
    from tests.nuclio_emu import FunctionServer

    root = models(tmp_path / "registry", "a", "b", "c")
    names = ["gdrive-a", "gdrive-b", "gdrive-c"]
    with DashboardStandIn(ready_after=0.2) as dash:
        env = env_for(root, dash, tmp_path / "work")
        with FunctionServer(SYNC_DIR, env=env, python_path=[str(REPO)], run_cron=False) as fn:
            answers = {}
            threads = [threading.Thread(target=lambda: answers.__setitem__("cron", fn.tick())),
                       threading.Thread(target=lambda: answers.__setitem__("http", fn.post_json({})))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            reports = {k: v.json() for k, v in answers.items()}
            assert all(a.status == 200 for a in answers.values()), reports
            # The lock serialises them: one creates everything, the other finds it done.
            assert sorted([reports["cron"]["created"], reports["http"]["created"]]) == [[], names]
            assert sorted([reports["cron"]["unchanged"], reports["http"]["unchanged"]]) == [[], names]
            assert dash.write_counts == {"POST": 3}

            # Oversized and odd requests do not stop it serving.
            big = fn.request("POST", "/", b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"})
            assert big.status == 413
            assert fn.post_json({"dry_run": True}).json()["unchanged"] == names


# ---- HTTP requests to the function ------------------------------------------------------------------

@pytest.mark.parametrize("event, error", [
    (http_event(None, raw=b"{not json"), "request body is not valid JSON"),
    (http_event(None, raw=b"\xff\xfe\x00", content_type="application/octet-stream"), "request body is not valid JSON"),
    (http_event([1, 2]), "request body must be a JSON object"),
    (http_event(None, raw=b"null"), "request body must be a JSON object"),
    (http_event({"dry_run": "true"}), "dry_run must be true or false"),
    (http_event({"dry_run": 1}), "dry_run must be true or false"),
])
def test_bad_requests_get_a_json_400_and_change_nothing(tmp_path, dash, event, error):
    root = models(tmp_path / "registry", "a")
    worker = Worker(SYNC_DIR, env=env_for(root, dash, tmp_path / "work"))
    answer = worker.invoke(event)
    assert (answer.status, answer.content_type) == (400, "application/json")
    assert error in answer.json()["error"]
    assert dash.requests == []
    assert worker.invoke(http_event({"dry_run": True})).json()["created"] == ["gdrive-a"]  # still serving


def test_a_get_without_body_and_a_cron_tick_of_any_bytes_run_a_real_sync(tmp_path, dash):
    root = models(tmp_path / "registry", "a")
    worker = Worker(SYNC_DIR, env=env_for(root, dash, tmp_path / "work"))
    tick = worker.invoke(cron_event(b'\x00\xff{"dry_run": true}'))
    assert tick.status == 200 and tick.json()["created"] == ["gdrive-a"] and tick.json()["dry_run"] is False
    get = worker.invoke(http_event(None, method="GET", content_type=""))
    assert get.status == 200 and get.json()["unchanged"] == ["gdrive-a"]


# ---- settings: refused at start, naming the variable ------------------------------------------------

BAD_SETTINGS = [
    ({"NUCLIO_DASHBOARD_URL": "nuclio:8070"}, "NUCLIO_DASHBOARD_URL must be an http(s) URL"),
    ({"NUCLIO_DASHBOARD_URL": "http://"}, "NUCLIO_DASHBOARD_URL must be an http(s) URL with a host"),
    ({"NUCLIO_DASHBOARD_URL": "http://nuclio:99999"}, "NUCLIO_DASHBOARD_URL must be an http(s) URL"),
    ({"NUCLIO_NAMESPACE": "Nuclio NS"}, "NUCLIO_NAMESPACE must be a lowercase DNS-1123 label"),
    ({"NUCLIO_PROJECT": "CVAT"}, "NUCLIO_PROJECT must be a lowercase DNS-1123 label"),
    ({"NUCLIO_NETWORK": "cvat cvat"}, "NUCLIO_NETWORK must be a Docker network name"),
    ({"SYNC_DELETE_STALE": "maybe"}, "SYNC_DELETE_STALE must be true or false"),
    ({"SYNC_SMOKE_TESTS": "2"}, "SYNC_SMOKE_TESTS must be true or false"),
    ({"SYNC_PREVIOUS_VERSIONS": "all"}, "SYNC_PREVIOUS_VERSIONS must be true or false"),
    ({"SYNC_DEPLOY_TIMEOUT": "5m"}, "SYNC_DEPLOY_TIMEOUT must be a number of seconds"),
    ({"SYNC_DEPLOY_TIMEOUT": "nan"}, "SYNC_DEPLOY_TIMEOUT must be a number of seconds"),
    ({"SYNC_LOCK_TIMEOUT": "-1"}, "SYNC_LOCK_TIMEOUT must be a number of seconds"),
    ({"SYNC_FAMILIES": "onnx,caffe"}, "SYNC_FAMILIES: unknown runtime families caffe"),
    ({"PUBLISH_NAME_PREFIX": "GDrive_"}, "PUBLISH_NAME_PREFIX: function name prefix 'GDrive_'"),
    ({"PUBLISH_PASS_ENV": "DRIVE_RETRIES,BAD NAME"}, "PUBLISH_PASS_ENV: 'BAD NAME' is not an environment variable"),
    ({"PUBLISH_PASS_ENV": "GOOGLE_DRIVE_API_KEY"}, "PUBLISH_PASS_ENV: GOOGLE_DRIVE_API_KEY holds a secret"),
    ({"PUBLISH_MAX_EVENT_TIMEOUT": "0"}, "PUBLISH_MAX_EVENT_TIMEOUT must be a whole number from 1"),
    ({"PUBLISH_REGISTRY_HOST_DIR": "srv/registry"}, "PUBLISH_REGISTRY_HOST_DIR must be an absolute path"),
    ({"GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": "/run/sa.json", "PUBLISH_CREDENTIALS_HOST_PATH": "sa.json"},
     "PUBLISH_CREDENTIALS_HOST_PATH must be an absolute path"),
    ({"GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": "secrets/sa.json"},
     "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY must be an absolute path when it is passed to the functions"),
    ({"RUNNER_IMAGE_ONNX": "My Runner:latest"}, "RUNNER_IMAGE_ONNX is not a Docker image reference"),
    ({"RUNNER_IMAGE_PYTORCH_GPU": "runner:"}, "RUNNER_IMAGE_PYTORCH_GPU is not a Docker image reference"),
    ({"MODEL_CACHE_DIR": "cache"}, "MODEL_CACHE_DIR must be an absolute path"),
    ({"MODEL_CACHE_HOST_DIR": "./cache"}, "MODEL_CACHE_HOST_DIR must be an absolute path"),
    ({"MODEL_CACHE_SIZE": "lots"}, "MODEL_CACHE_SIZE"),
    ({"RUNNER_WORKERS": "0"}, "RUNNER_WORKERS must be a whole number from 1 to 100"),
    ({"MODEL_REFRESH_SECONDS": "-5"}, "MODEL_REFRESH_SECONDS must be a number of seconds"),
]


@pytest.mark.parametrize("bad, message", BAD_SETTINGS, ids=[next(iter(b)) for b, _ in BAD_SETTINGS])
def test_a_bad_setting_stops_the_start_naming_the_variable(tmp_path, dash, bad, message):
    env = env_for(tmp_path / "registry", dash, tmp_path / "work", **bad)
    with pytest.raises(SettingsError) as raised:
        Worker(SYNC_DIR, env=env)
    assert message in str(raised.value)
    assert dash.requests == []


def test_an_unusable_work_dir_stops_the_start_naming_it(tmp_path, dash):
    (tmp_path / "a-file").write_text("")
    for key in ("SYNC_WORK_DIR", "MODEL_CACHE_DIR"):
        env = env_for(tmp_path / "registry", dash, tmp_path / "a-file" / "work")
        if key == "MODEL_CACHE_DIR":
            env[key] = env.pop("SYNC_WORK_DIR")
        with pytest.raises(SettingsError, match=f"{key} '.*/a-file/work' cannot hold registry-sync's lock file"):
            Worker(SYNC_DIR, env=env)


def test_the_cli_reports_bad_settings_and_a_broken_dashboard_without_a_traceback(tmp_path, dash, capsys):
    root = models(tmp_path / "registry", "a")
    assert cli_main(["sync"], env=env_for(root, dash, tmp_path / "work", NUCLIO_PROJECT="Bad")) == 1
    err = capsys.readouterr().err
    assert err.startswith("cvat-registry: error: environment: NUCLIO_PROJECT must be a lowercase DNS-1123 label")
    dash.answer_next(200, [], method="GET", path="/api/functions")
    assert cli_main(["sync"], env=env_for(root, dash, tmp_path / "work")) == 1
    err = capsys.readouterr().err
    assert err == ("cvat-registry: error: dashboard list functions: 200 expected a JSON object name -> function, "
                   "got list\n")


# ---- secrets ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_key_pem() -> str:
    from tests.drive_standin.keys import new_private_key_pem

    return new_private_key_pem()


def _drive_registry(drive) -> None:
    from tests import synthetic_models as sm
    from tests.test_runner_drive import seed
    from tests.test_runner_synthetic import PAD

    root = seed(drive, sm.content_box_detector(64, 64, PAD / 255.0), shared=True)
    broken = drive.add_folder("broken", root)
    drive.share_with_anyone(broken)
    drive.share_with_anyone(drive.add_file("model.json", broken, b'{"name": "broken",}', "application/json"))


def _everything_said(dash, report, caplog, *more) -> str:
    # Every log line but the stand-ins' own (they play Google and the dashboard).
    lines = [f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("tests.")]
    said = [json.dumps(report), *lines, *more]
    for r in dash.requests:
        said += [r.path, json.dumps(r.headers), r.body.decode("utf-8", "replace")]
    for fn in dash.functions_json(None).values():
        said.append(json.dumps(fn))
    return "\n".join(said)


def test_the_api_key_never_leaves_registry_sync(tmp_path, dash, drive, caplog):
    _drive_registry(drive)
    drive.accept_api_keys("AIza-secret-123")
    env = {"MODEL_REGISTRY": "gdrive:CVAT_Models", "NUCLIO_DASHBOARD_URL": dash.url, "DRIVE_ROOT_URL": drive.root_url,
           "SYNC_WORK_DIR": str(tmp_path / "work"), "SYNC_SMOKE_TESTS": "false", "DRIVE_RETRIES": "1",
           "GOOGLE_DRIVE_API_KEY": "AIza-secret-123", "PUBLISH_PASS_ENV": "DRIVE_ROOT_URL,DRIVE_RETRIES"}
    with caplog.at_level(logging.DEBUG):
        worker = Worker(SYNC_DIR, env=env, log_level="debug")
        first = worker.invoke(http_event({}))
        drive.fail_next(403, "dailyLimitExceeded", times=None)
        outage = worker.invoke(cron_event(b""))
    assert first.json()["created"] == ["gdrive-boxes"] and [e["folder"] for e in first.json()["errors"]] == ["broken"]
    assert outage.status == 502 and outage.json()["listing_failed"] is True
    said = _everything_said(dash, [first.json(), outage.json()], caplog, first.body.decode(), outage.body.decode())
    assert "AIza-secret-123" not in said
    assert "secret-123" not in said


def test_the_service_account_key_is_never_published_logged_or_reported(tmp_path, dash, drive, caplog, capsys,
                                                                      private_key_pem):
    from tests.test_runner_drive import key_file

    _drive_registry(drive)
    path = key_file(tmp_path, drive, private_key_pem)
    env = {"MODEL_REGISTRY": "gdrive:CVAT_Models", "NUCLIO_DASHBOARD_URL": dash.url, "DRIVE_ROOT_URL": drive.root_url,
           "SYNC_WORK_DIR": str(tmp_path / "work"), "SYNC_SMOKE_TESTS": "false", "DRIVE_RETRIES": "1",
           "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": str(path), "PUBLISH_CREDENTIALS_HOST_PATH": "/srv/secrets/sa.json"}
    with caplog.at_level(logging.DEBUG):
        report = run_sync(SyncSettings.from_env(env)).as_dict()
    assert report["created"] == ["gdrive-boxes"]
    fn = dash.function("gdrive-boxes")
    assert {"name": "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY", "value": str(path)} in fn["spec"]["env"]  # the path only
    said = _everything_said(dash, report, caplog)
    body = "".join(private_key_pem.splitlines()[1:-1])
    assert all(line not in said for line in private_key_pem.splitlines()[1:-1])
    assert body[:40] not in said and "0123456789abcdef" not in said  # key material, private_key_id

    # The key pasted where its path belongs: refused at start without repeating it.
    pasted = {**env, "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": path.read_text()}
    with caplog.at_level(logging.DEBUG), pytest.raises(SettingsError) as raised:
        Worker(SYNC_DIR, env=pasted)
    assert "holds what looks like the key itself" in str(raised.value)
    assert "PRIVATE KEY" not in str(raised.value) + caplog.text and body[:40] not in caplog.text
    assert cli_main(["sync", "--dry-run"], env=pasted) == 1
    err = capsys.readouterr().err
    assert "holds what looks like the key itself" in err and "PRIVATE KEY" not in err and body[:40] not in err
