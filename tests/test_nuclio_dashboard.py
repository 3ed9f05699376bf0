"""The Nuclio dashboard stand-in (tests/nuclio_dashboard) and the CVAT listing parser."""

from __future__ import annotations

import copy
import json
import time

import pytest

from tests.nuclio_dashboard import (
    CVAT_HEADERS,
    PROJECT_LABEL,
    DashboardStandIn,
    InvalidFunctionMetadataError,
    call,
    cvat_function,
    cvat_ids,
    cvat_list,
)

PROJECT = {"metadata": {"name": "cvat", "namespace": "nuclio"}, "spec": {"description": "CVAT functions"}}
CVAT = {"x-nuclio-project-name": "cvat"}


def detector(name: str = "runner-yolov8n", **spec_overrides) -> dict:
    body = {"metadata": {"name": name, "namespace": "nuclio",
                         "labels": {PROJECT_LABEL: "cvat"},
                         "annotations": {"name": "YOLOv8n", "type": "detector", "framework": "onnx",
                                         "spec": json.dumps([{"id": 0, "name": "person"}, {"id": 1, "name": "car"}])}},
            "spec": {"description": "YOLOv8n via runner", "runtime": "python:3.11", "handler": "main:handler",
                     "image": "nuclio/processor-model-runner:latest",
                     "env": [{"name": "MODEL_ID", "value": "yolov8n"}],
                     "triggers": {"http": {"kind": "http", "name": "http", "numWorkers": 1,
                                           "attributes": {"maxRequestBodySize": 33554432}}},
                     "volumes": [{"volume": {"name": "cache", "hostPath": {"path": "/var/lib/model-cache"}},
                                  "volumeMount": {"name": "cache", "mountPath": "/cache"}}]}}
    body["spec"].update(spec_overrides)
    return body


@pytest.fixture
def dash():
    with DashboardStandIn() as standin:
        yield standin


@pytest.fixture
def cvat_dash(dash):
    assert call(dash.url, "POST", "/api/projects", PROJECT)[0] == 201
    return dash


def test_project_create_and_list(dash):
    status, projects = call(dash.url, "GET", "/api/projects")
    assert status == 200 and set(projects) == {"default"}
    status, created = call(dash.url, "POST", "/api/projects", PROJECT)
    assert status == 201 and created["metadata"]["name"] == "cvat"
    assert call(dash.url, "POST", "/api/projects", PROJECT)[0] == 409
    assert call(dash.url, "GET", "/api/projects/cvat")[0] == 200
    assert call(dash.url, "POST", "/api/projects", {"metadata": {"name": "Bad_Name"}})[0] == 400
    assert dash.projects == ["cvat", "default"]


def test_post_valid_function_is_listed_for_cvat_and_ready(cvat_dash):
    dash = cvat_dash
    call(dash.url, "POST", "/api/functions", detector("other"), {"x-nuclio-project-name": "default"})
    assert call(dash.url, "POST", "/api/functions", detector(), CVAT) == (202, None)
    status, listing = call(dash.url, "GET", "/api/functions", headers=CVAT_HEADERS)
    assert status == 200 and list(listing) == ["runner-yolov8n"]       # project filter by header
    fn = listing["runner-yolov8n"]
    assert fn["status"]["state"] == "ready" and fn["status"]["httpPort"] > 0
    assert fn["metadata"]["labels"][PROJECT_LABEL] == "cvat"
    assert set(call(dash.url, "GET", "/api/functions")[1]) == {"other", "runner-yolov8n"}
    assert call(dash.url, "GET", "/api/functions/runner-yolov8n")[1]["spec"]["description"] == "YOLOv8n via runner"
    assert call(dash.url, "GET", "/api/functions/nope")[0] == 404
    [listed] = cvat_list(listing)
    assert listed["id"] == "runner-yolov8n" and listed["kind"] == "detector" and listed["name"] == "YOLOv8n"
    assert [label["name"] for label in listed["labels_v2"]] == ["person", "car"]
    assert dash.write_counts == {"POST": 2}


def test_building_then_ready_after_delay_and_deploy_error():
    with DashboardStandIn(ready_after=0.3) as dash:
        dash.add_project("cvat")
        assert call(dash.url, "POST", "/api/functions", detector(), CVAT)[0] == 202
        assert dash.function("runner-yolov8n")["status"]["state"] == "building"
        # deleting while building needs the ignore-state header
        assert call(dash.url, "DELETE", "/api/functions", {"metadata": {"name": "runner-yolov8n"}})[0] == 412
        time.sleep(0.35)
        assert call(dash.url, "GET", "/api/functions/runner-yolov8n")[1]["status"]["state"] == "ready"
        dash.ready_after = 0
        dash.deploy_error("image pull failed", name="broken")
        assert call(dash.url, "POST", "/api/functions", detector("broken"), CVAT)[0] == 202
        status = dash.function("broken")["status"]
        assert status["state"] == "error" and status["message"] == "image pull failed"


def test_duplicate_post_is_409(cvat_dash):
    assert call(cvat_dash.url, "POST", "/api/functions", detector(), CVAT)[0] == 202
    status, err = call(cvat_dash.url, "POST", "/api/functions", detector(), CVAT)
    assert status == 409 and "already exists" in err["error"]


def test_missing_project_is_412(dash):
    status, err = call(dash.url, "POST", "/api/functions", detector(), CVAT)
    assert (status, err["error"]) == (412, "Project does not exist")
    assert dash.function("runner-yolov8n") is None


def _broken(mutate) -> dict:
    body = detector()
    mutate(body)
    return body


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda b: b["metadata"].update(name="Runner-YOLO"), id="uppercase-name"),
    pytest.param(lambda b: b["metadata"].update(name="runner_yolo"), id="underscore-name"),
    pytest.param(lambda b: b["metadata"].update(name="r" * 64), id="name-too-long"),
    pytest.param(lambda b: b["metadata"].update(name="-runner"), id="leading-dash"),
    pytest.param(lambda b: b.pop("metadata"), id="no-metadata"),
    pytest.param(lambda b: b.update(meta=b.pop("metadata")), id="meta-not-metadata"),
    pytest.param(lambda b: b["spec"].update(description=""), id="empty-description"),
    pytest.param(lambda b: b["spec"].pop("description"), id="no-description"),
    pytest.param(lambda b: b["spec"]["triggers"].update(api={"kind": "http", "numWorkers": 1}), id="two-http"),
    pytest.param(lambda b: b["spec"]["triggers"]["http"].update(name="web"), id="trigger-key-mismatch"),
    pytest.param(lambda b: b["spec"]["triggers"]["http"].update(numWorkers=100001), id="too-many-workers"),
    pytest.param(lambda b: b["spec"]["volumes"][0]["volumeMount"].update(name="other"), id="volume-mismatch"),
    pytest.param(lambda b: b["spec"]["volumes"][0]["volume"].pop("name"), id="volume-unnamed"),
    pytest.param(lambda b: b["spec"].update(env={"MODEL_ID": "x"}), id="env-map"),
])
def test_invalid_function_configs_are_400(cvat_dash, mutate):
    status, err = call(cvat_dash.url, "POST", "/api/functions", _broken(mutate), CVAT)
    assert status == 400 and err["error"]
    assert call(cvat_dash.url, "GET", "/api/functions")[1] == {}


def test_missing_metadata_is_named_in_the_error(cvat_dash):
    body = detector()
    body["meta"] = body.pop("metadata")
    status, err = call(cvat_dash.url, "POST", "/api/functions", body, CVAT)
    assert status == 400 and "'metadata'" in err["error"]


def test_reserved_name_is_412(cvat_dash):
    assert call(cvat_dash.url, "POST", "/api/functions", detector("dashboard"), CVAT)[0] == 412


def test_enrichment_adds_default_http_trigger_and_default_project(dash):
    body = detector("plain")
    del body["metadata"]["labels"]
    body["spec"]["triggers"] = {"tick": {"kind": "cron", "attributes": {"interval": "10m"}}}
    assert call(dash.url, "POST", "/api/functions", body)[0] == 202
    fn = dash.function("plain")
    assert fn["metadata"]["labels"][PROJECT_LABEL] == "default"
    assert fn["spec"]["triggers"]["default-http"]["numWorkers"] == 1
    assert fn["spec"]["triggers"]["tick"]["name"] == "tick"


def test_put_updates_and_counts_as_write(cvat_dash):
    dash = cvat_dash
    call(dash.url, "POST", "/api/functions", detector(), CVAT)
    updated = detector(description="YOLOv8n v2")
    updated["metadata"]["annotations"]["version"] = "2"
    assert call(dash.url, "PUT", "/api/functions/runner-yolov8n", updated, CVAT)[0] == 202
    fn = call(dash.url, "GET", "/api/functions/runner-yolov8n")[1]
    assert fn["spec"]["description"] == "YOLOv8n v2" and fn["status"]["state"] == "ready"
    assert cvat_function(fn)["version"] == 2
    assert dash.deploy_count("runner-yolov8n") == 2
    assert dash.write_counts == {"POST": 1, "PUT": 1}
    assert call(dash.url, "PUT", "/api/functions/unknown", detector("unknown"), CVAT)[0] == 404
    bad = detector(description="")
    assert call(dash.url, "PUT", "/api/functions/runner-yolov8n", bad, CVAT)[0] == 400
    put = next(r for r in dash.writes if r.method == "PUT")
    assert put.path == "/api/functions/runner-yolov8n" and put.headers["x-nuclio-project-name"] == "cvat"
    assert put.json()["spec"]["description"] == "YOLOv8n v2"


def test_delete_with_body(cvat_dash):
    dash = cvat_dash
    call(dash.url, "POST", "/api/functions", detector(), CVAT)
    assert call(dash.url, "DELETE", "/api/functions", {"metadata": {"name": "missing"}})[0] == 404
    assert call(dash.url, "DELETE", "/api/functions", {"metadata": {}})[0] == 400
    body = {"metadata": {"name": "runner-yolov8n", "namespace": "nuclio"}}
    assert call(dash.url, "DELETE", "/api/functions", body) == (204, None)
    assert call(dash.url, "GET", "/api/functions", headers=CVAT_HEADERS) == (200, {})
    assert dash.writes[-1].json() == body and dash.write_counts["DELETE"] == 3


def test_fail_next_then_recovers(cvat_dash):
    dash = cvat_dash
    dash.fail_next(503, times=2, method="GET")
    assert call(dash.url, "GET", "/api/functions")[0] == 503
    assert call(dash.url, "POST", "/api/functions", detector(), CVAT)[0] == 202   # POST not matched
    assert call(dash.url, "GET", "/api/functions")[0] == 503
    assert call(dash.url, "GET", "/api/functions")[0] == 200
    assert dash.count("GET", "/api/functions") == 3


def _listing(*functions) -> dict:
    return {f["metadata"]["name"]: dict(copy.deepcopy(f), status={"state": "ready", "httpPort": 32769})
            for f in functions}


def test_cvat_list_accepts_detector_and_skips_unknown_type():
    bad = detector("classifier-fn")
    bad["metadata"]["annotations"]["type"] = "classifier"
    dup = detector("dup-labels")
    dup["metadata"]["annotations"]["spec"] = json.dumps([{"name": "a"}, {"name": "a"}])
    tracker = detector("tracker-fn")
    tracker["metadata"]["annotations"].update(type="tracker", spec="")
    listing = _listing(detector(), bad, dup, tracker)
    assert cvat_ids(listing) == ["runner-yolov8n", "tracker-fn"]
    assert cvat_list(json.dumps(listing))[1]["supported_shape_types"] == ["rectangle"]
    with pytest.raises(InvalidFunctionMetadataError):
        cvat_function(listing["classifier-fn"])     # gateway.get propagates it


@pytest.mark.parametrize("mutate, error", [
    pytest.param(lambda b: b["metadata"]["annotations"].update(spec='[{"name": "person"},]'),
                 json.JSONDecodeError, id="spec-trailing-comma"),
    pytest.param(lambda b: b["spec"].pop("description"), KeyError, id="no-description"),
    pytest.param(lambda b: b["metadata"].pop("annotations"), KeyError, id="no-annotations"),
    pytest.param(lambda b: b["metadata"]["annotations"].update(spec='{"name": "x"}'), TypeError, id="spec-object"),
    pytest.param(lambda b: b["metadata"]["annotations"].update(version="v2"), ValueError, id="version-not-int"),
])
def test_cvat_list_fatal_errors_blank_the_whole_list(mutate, error):
    listing = _listing(detector("good"), _broken(mutate))
    with pytest.raises(error):
        cvat_list(listing)


def test_cvat_list_rejects_non_object_body():
    with pytest.raises(TypeError):
        cvat_list([])


def test_listing_from_standin_parses_with_cvat_rules(cvat_dash):
    dash = cvat_dash
    call(dash.url, "POST", "/api/functions", detector(), CVAT)
    assert cvat_ids(dash.functions_json("cvat")) == ["runner-yolov8n"]
    assert cvat_ids(dash.functions_json("default")) == []
