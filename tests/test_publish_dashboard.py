"""common.publish.dashboard: the Nuclio dashboard client, against the dashboard stand-in."""

from __future__ import annotations

import json
import logging
import socket

import pytest

from common.errors import PackError
from common.publish import CONFIG_HASH_ANNOTATION, MANAGED_LABEL, MODEL_LABEL
from common.publish.config import config_hash
from common.publish.dashboard import (
    MISSING_STATE,
    DashboardClient,
    DashboardError,
    FunctionExists,
)
from tests.nuclio_dashboard import PROJECT_LABEL, DashboardStandIn, cvat_ids

SECRET = "s3cr3t-token-value"


def body(name: str = "yolo", description: str = "YOLO detector") -> dict:
    out = {"metadata": {"name": name,
                        "labels": {MANAGED_LABEL: "true", MODEL_LABEL: name},
                        "annotations": {"name": name.upper(), "type": "detector",
                                        "spec": json.dumps([{"id": 0, "name": "person"}])}},
           "spec": {"description": description, "runtime": "python:3.11", "handler": "main:handler",
                    "env": [{"name": "DRIVE_TOKEN", "value": SECRET}],
                    "triggers": {"http": {"kind": "http", "name": "http", "numWorkers": 1}}}}
    out["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = config_hash(out)
    return out


class Clock:
    """A fake clock that the client's sleeps advance; records every sleep."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dash():
    with DashboardStandIn() as standin:
        standin.add_project("cvat")
        yield standin


def client_for(dash, **kwargs) -> DashboardClient:
    clock = kwargs.pop("clock", None) or Clock()
    return DashboardClient(dash.url if hasattr(dash, "url") else dash, sleep=clock.sleep, clock=clock,
                           rand=lambda: 1.0, **kwargs)


def test_every_call_sends_project_and_namespace_headers(dash):
    client = client_for(dash)
    assert client.ensure_project() is False
    client.create(body())
    assert client.get("yolo")["status"]["state"] == "ready"
    assert list(client.list_functions()) == ["yolo"]
    client.update("yolo", body(description="YOLO v2"))
    assert client.wait_terminal("yolo", 5) == ("ready", "")
    assert client.delete("yolo") is True
    assert len(dash.requests) == 7
    for request in dash.requests:
        assert request.headers["x-nuclio-project-name"] == "cvat", request
        assert request.headers["x-nuclio-function-namespace"] == "nuclio", request


def test_create_files_under_the_project_and_cvat_lists_it(dash):
    client = client_for(dash)
    dash.add_project("other")
    DashboardClient(dash.url, project="other").create(body("elsewhere"))
    client.create(body())
    [post] = [r for r in dash.writes if r.json()["metadata"]["name"] == "yolo"]
    assert (post.method, post.path, post.status) == ("POST", "/api/functions", 202)
    assert post.headers["content-type"] == "application/json"
    assert post.json()["metadata"]["namespace"] == "nuclio"       # filled in by the client
    stored = dash.function("yolo")
    assert stored["metadata"]["labels"][PROJECT_LABEL] == "cvat"
    assert stored["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == config_hash(body())
    assert list(client.list_functions()) == ["yolo"]                # the project filter
    assert cvat_ids(dash.functions_json("cvat")) == ["yolo"]


def test_create_existing_name_raises_function_exists(dash):
    client = client_for(dash)
    client.create(body())
    with pytest.raises(FunctionExists) as caught:
        client.create(body())
    assert caught.value.status == 409 and caught.value.http_status == 409
    assert "exists already" in str(caught.value)
    assert isinstance(caught.value, DashboardError) and isinstance(caught.value, PackError)
    assert dash.count("POST", "/api/functions") == 2                  # a 409 is not retried


def test_get_missing_is_none_and_update_sends_the_full_body(dash):
    client = client_for(dash)
    assert client.get("nope") is None
    client.create(body())
    new = body(description="YOLO v2")
    client.update("yolo", new)
    put = dash.writes[-1]
    assert (put.method, put.path, put.status) == ("PUT", "/api/functions/yolo", 202)
    assert put.json() == {"metadata": {**new["metadata"], "namespace": "nuclio"}, "spec": new["spec"]}
    assert dash.function("yolo")["spec"]["description"] == "YOLO v2"
    assert dash.deploy_count("yolo") == 2
    with pytest.raises(DashboardError) as caught:
        client.update("ghost", body("ghost"))
    assert caught.value.status == 404 and "Function not found" in str(caught.value)


def test_delete_sends_the_body_form_and_404_counts_as_done(dash):
    client = client_for(dash)
    client.create(body())
    assert client.delete("yolo") is True
    assert client.delete("yolo") is False
    first, second = dash.writes[-2:]
    assert (first.method, first.path, first.status) == ("DELETE", "/api/functions", 204)
    assert first.json() == {"metadata": {"name": "yolo", "namespace": "nuclio"}}
    assert second.status == 404
    assert dash.function("yolo") is None


def test_ensure_project_creates_a_missing_project():
    with DashboardStandIn() as dash:
        client = client_for(dash)
        assert client.ensure_project() is True
        assert "cvat" in dash.projects
        assert [(r.method, r.path, r.status) for r in dash.requests] == [
            ("GET", "/api/projects/cvat", 404), ("POST", "/api/projects", 201)]
        assert dash.requests[1].json()["metadata"] == {"name": "cvat", "namespace": "nuclio"}
        assert client.ensure_project() is False
        assert dash.count("POST") == 1


def test_ensure_project_counts_a_concurrent_create_as_success():
    with DashboardStandIn() as dash:
        dash.fail_next(409, method="POST", path="/api/projects", message="Project already exists: cvat")
        assert client_for(dash).ensure_project() is False
        assert dash.requests[-1].status == 409


def test_list_functions_rejects_a_non_object_answer(dash):
    dash.answer_next(200, [{"metadata": {"name": "x"}}], method="GET", path="/api/functions")
    with pytest.raises(DashboardError, match="expected a JSON object name -> function, got list"):
        client_for(dash).list_functions()


def test_503_twice_then_ok_is_retried_with_backoff(dash):
    clock = Clock()
    client = client_for(dash, clock=clock, backoff=0.5)
    dash.fail_next(503, times=2, method="GET", path="/api/functions")
    assert client.list_functions() == {}
    assert dash.count("GET", "/api/functions") == 3
    assert clock.sleeps == [0.5, 1.0]                                 # exponential; rand=1 → full step


def test_jitter_keeps_the_upper_half_of_each_step(dash):
    sleeps: list[float] = []
    client = DashboardClient(dash.url, backoff=2.0, sleep=sleeps.append, rand=lambda: 0.0)
    dash.fail_next(502, times=3, method="GET")
    client.list_functions()
    assert sleeps == [1.0, 2.0, 4.0]


def test_retries_run_out_and_the_last_status_is_reported(dash):
    client = client_for(dash, retries=2)
    dash.fail_next(500, times=5, method="GET", message="etcd timeout")
    with pytest.raises(DashboardError) as caught:
        client.list_functions()
    assert caught.value.status == 500 and caught.value.error == "etcd timeout"
    assert str(caught.value) == "dashboard list functions: 500 etcd timeout"
    assert dash.count("GET", "/api/functions") == 3


def test_4xx_is_not_retried_and_the_error_text_is_kept(dash):
    client = client_for(dash)
    bad = body()
    bad["spec"]["description"] = ""
    with pytest.raises(DashboardError) as caught:
        client.create(bad)
    assert caught.value.status == 400 and "spec.description must be a non-empty string" in caught.value.error
    assert dash.count("POST", "/api/functions") == 1


def test_errors_are_bounded_and_never_carry_the_request_body(dash, caplog):
    caplog.set_level(logging.DEBUG, logger="common.publish.dashboard")
    client = client_for(dash)
    dash.fail_next(400, method="POST", message="bad config " + "x" * 5000)
    with pytest.raises(DashboardError) as caught:
        client.create(body())
    assert len(str(caught.value)) < 400 and str(caught.value).endswith("…")
    assert SECRET not in str(caught.value) and SECRET not in caplog.text
    assert "dashboard POST /api/functions -> 400" in caplog.text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_retried_then_reported():
    clock = Clock()
    client = DashboardClient(f"http://127.0.0.1:{_closed_port()}", retries=3, backoff=0.25,
                             sleep=clock.sleep, clock=clock, rand=lambda: 1.0)
    with pytest.raises(DashboardError) as caught:
        client.get("yolo")
    assert caught.value.status == 0
    assert "unreachable" in str(caught.value) and "after 4 attempts" in str(caught.value)
    assert "ConnectionRefusedError" in str(caught.value)
    assert clock.sleeps == [0.25, 0.5, 1.0]


def test_a_dashboard_that_never_answers_times_out_and_is_retried():
    with socket.socket() as server:      # listens, never accepts: the request hangs until our timeout
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        clock = Clock()
        client = DashboardClient(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=0.2, retries=1,
                                 sleep=clock.sleep, clock=clock, rand=lambda: 1.0)
        with pytest.raises(DashboardError) as caught:
            client.list_functions()
    assert caught.value.status == 0 and "after 2 attempts" in str(caught.value)
    assert "TimeoutError" in str(caught.value)
    assert clock.sleeps == [0.5]


def test_wait_terminal_reports_ready_error_missing_and_timeout():
    with DashboardStandIn(ready_after=1000) as dash:
        dash.add_project("cvat")
        clock = Clock()
        client = client_for(dash, clock=clock)
        client.create(body("slow"))
        assert client.wait_terminal("slow", timeout=10, poll=1.0) == (
            "building", "not ready after 10 s (state 'building')")
        assert dash.count("GET", "/api/functions/slow") == 11          # t = 0, 1, ..., 10
        assert clock.now == 10.0
        assert client.wait_terminal("gone", timeout=10) == (MISSING_STATE, "the function no longer exists")
        dash.ready_after = 0
        dash.deploy_error("image pull failed", name="broken", state="unhealthy")
        client.create(body("broken"))
        assert client.wait_terminal("broken", timeout=10) == ("unhealthy", "image pull failed")
        client.create(body("fine"))
        assert client.wait_terminal("fine", timeout=10) == ("ready", "")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="http:// or https://"):
        DashboardClient("dashboard:8070")
    with pytest.raises(ValueError):
        DashboardClient("http://dashboard:8070", retries=-1)


# ---- stand-in additions used by the reconciler's tests ------------------------------------

def test_standin_deploy_error_for_a_number_of_deploys(dash):
    client = client_for(dash)
    dash.deploy_error("boom", name="yolo", times=1)
    client.create(body())
    assert client.wait_terminal("yolo", 1) == ("error", "boom")
    client.update("yolo", body())
    assert client.wait_terminal("yolo", 1) == ("ready", "")
    dash.deploy_error("always", times=None)
    client.update("yolo", body())
    client.create(body("other"))
    assert client.wait_terminal("yolo", 1) == ("error", "always")
    assert client.wait_terminal("other", 1) == ("error", "always")


def test_standin_logs_answered_statuses_and_answers_verbatim(dash):
    dash.answer_next(200, {"not": "a function"}, method="GET", path="/api/functions/x")
    client = client_for(dash)
    assert client.get("x") == {"not": "a function"}
    assert client.get("x") is None
    assert [r.status for r in dash.requests] == [200, 404]
