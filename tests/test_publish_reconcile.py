"""common.publish.reconcile: plan + apply against the dashboard stand-in."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from common.publish import CONFIG_HASH_ANNOTATION, MANAGED_LABEL, MODEL_LABEL
from common.publish.config import FunctionConfig, config_hash
from common.publish.dashboard import DashboardClient
from common.publish.reconcile import ApplyResult, Plan, apply, plan
from tests.nuclio_dashboard import DashboardStandIn, cvat_ids


def fc(name: str, version: str = "1", *, managed: bool = True, description: str | None = None) -> FunctionConfig:
    """A hand-built rendered function, as render.py would produce it."""
    labels = {MODEL_LABEL: name}
    if managed:
        labels[MANAGED_LABEL] = "true"
    body = {"metadata": {"name": name, "labels": labels,
                         "annotations": {"name": f"{name} v{version}", "type": "detector", "version": version,
                                         "spec": json.dumps([{"id": 0, "name": "person"}])}},
            "spec": {"description": description or f"{name} served by the runner",
                     "runtime": "python:3.11", "handler": "main:handler",
                     "env": [{"name": "MODEL_ID", "value": name}, {"name": "MODEL_VERSION", "value": version}],
                     "triggers": {"http": {"kind": "http", "name": "http", "numWorkers": 1}}}}
    digest = config_hash(body)
    body["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = digest
    return FunctionConfig(name=name, folder=name.upper(), version=version, body=body, hash=digest)


def listed(*configs: FunctionConfig, state: str = "ready") -> dict:
    """A ``list_functions()`` answer holding ``configs``."""
    return {c.name: {**json.loads(json.dumps(c.body)), "status": {"state": state}} for c in configs}


class Clock:
    def __init__(self):
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def client_for(dash, **kwargs) -> DashboardClient:
    return DashboardClient(dash.url, **kwargs)


def run(dash, desired, **kwargs) -> ApplyResult:
    client = client_for(dash)
    current = client.list_functions()
    return apply(plan(desired, current, keep=kwargs.pop("keep", ()), delete_stale=kwargs.pop("delete_stale", True)),
                 client, poll=0.01, **kwargs)


@pytest.fixture
def dash():
    with DashboardStandIn() as standin:
        standin.add_project("cvat")
        yield standin


# ---- plan (pure) --------------------------------------------------------------------------

def test_plan_sorts_functions_into_their_fields():
    a, b, c = fc("a"), fc("b"), fc("c")
    b2 = fc("b", "2")
    foreign = {"metadata": {"name": "hand-made", "labels": {}, "annotations": {}}, "spec": {}}
    current = {**listed(a, b, fc("stale"), fc("errored")), "hand-made": foreign}
    result = plan([c, b2, a], current, keep={"errored"})
    assert [x.name for x in result.create] == ["c"]
    assert result.update == (b2,)
    assert (result.unchanged, result.delete, result.kept, result.stale, result.foreign, result.conflicts) == (
        ("a",), ("stale",), ("errored",), (), ("hand-made",), ())
    assert result.writes == 3
    assert isinstance(result, Plan)
    with pytest.raises(AttributeError):
        result.create = ()                                              # frozen


def test_plan_without_delete_stale_reports_stale_and_deletes_nothing():
    result = plan([fc("a")], listed(fc("a"), fc("old")), delete_stale=False)
    assert (result.delete, result.stale, result.unchanged, result.writes) == ((), ("old",), ("a",), 0)


def test_plan_unchanged_is_decided_by_the_hash_annotation_only():
    a = fc("a")
    stored = listed(a)
    stored["a"]["metadata"]["namespace"] = "nuclio"                     # dashboard enrichment
    stored["a"]["spec"]["triggers"]["http"]["attributes"] = {"port": 0}
    assert plan([a], stored).unchanged == ("a",)
    stored["a"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] = "0" * 32
    assert plan([a], stored).update == (a,)


def test_plan_never_touches_foreign_functions_and_reports_collisions():
    foreign = listed(fc("taken", managed=False), fc("other", managed=False))
    result = plan([fc("taken"), fc("new")], foreign)
    assert [x.name for x in result.create] == ["new"] and result.update == () and result.delete == ()
    assert result.foreign == ("other", "taken")
    [(name, reason)] = result.conflicts
    assert name == "taken" and "not managed by registry-sync" in reason


def test_plan_reports_bad_desired_configs_as_conflicts():
    unmanaged = fc("unmarked", managed=False)
    no_hash = fc("nohash")
    del no_hash.body["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
    no_hash = FunctionConfig("nohash", "NOHASH", "1", no_hash.body)
    twin = FunctionConfig("a", "A-COPY", "1", fc("a").body, fc("a").hash)
    result = plan([fc("a"), twin, unmanaged, no_hash], {})
    assert [x.name for x in result.create] == ["a"]
    reasons = dict(result.conflicts)
    assert "two registry models render to the function name 'a'" in reasons["a"]
    assert f"lacks the label {MANAGED_LABEL}=true" in reasons["unmarked"]
    assert f"lacks the annotation {CONFIG_HASH_ANNOTATION}" in reasons["nohash"]


# ---- apply against the stand-in ------------------------------------------------------------

def test_first_run_creates_the_project_first_then_every_function():
    with DashboardStandIn() as dash:
        result = run(dash, [fc("a"), fc("b")])
        assert (result.created, result.failed) == (("a", "b"), ())
        assert all(r.status != 412 for r in dash.requests)
        assert [(r.method, r.path, r.status) for r in dash.requests[:5]] == [
            ("GET", "/api/functions", 200), ("GET", "/api/projects/cvat", 404), ("POST", "/api/projects", 201),
            ("GET", "/api/functions/a", 404), ("POST", "/api/functions", 202)]
        assert cvat_ids(dash.functions_json("cvat")) == ["a", "b"]


def test_second_run_with_nothing_changed_makes_no_write(dash):
    desired = [fc("a"), fc("b")]
    run(dash, desired)
    dash.clear_log()
    result = run(dash, desired)
    assert result == ApplyResult(unchanged=("a", "b"))
    assert [(r.method, r.path) for r in dash.requests] == [("GET", "/api/functions")]


def test_one_changed_model_costs_exactly_one_put(dash):
    run(dash, [fc("a"), fc("b"), fc("c")])
    dash.clear_log()
    b2 = fc("b", "2")
    result = run(dash, [fc("a"), b2, fc("c")])
    assert (result.updated, result.unchanged, result.failed) == (("b",), ("a", "c"), ())
    assert dash.write_counts == {"PUT": 1}
    [put] = dash.writes
    assert put.path == "/api/functions/b" and put.json()["metadata"]["annotations"] == b2.body["metadata"]["annotations"]
    assert dash.function("b")["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == b2.hash
    assert dash.function("b")["status"]["state"] == "ready"


def test_stale_managed_function_is_deleted_with_the_body_form(dash):
    run(dash, [fc("a"), fc("old"), fc("errored")])
    dash.clear_log()
    result = run(dash, [fc("a")], keep={"errored"})
    assert (result.deleted, result.kept, result.unchanged) == (("old",), ("errored",), ("a",))
    [delete] = dash.writes
    assert (delete.method, delete.path, delete.status) == ("DELETE", "/api/functions", 204)
    assert delete.json() == {"metadata": {"name": "old", "namespace": "nuclio"}}
    assert sorted(dash.functions_json()) == ["a", "errored"]


def test_delete_stale_off_leaves_stale_functions(dash):
    run(dash, [fc("a"), fc("old")])
    dash.clear_log()
    result = run(dash, [fc("a")], delete_stale=False)
    assert (result.stale, result.deleted, dash.writes) == (("old",), (), [])


def test_foreign_function_in_the_project_is_never_written(dash):
    hand_made = fc("taken", "9", managed=False).body
    DashboardClient(dash.url).create(hand_made)
    DashboardClient(dash.url).create(fc("mine-by-hand", managed=False).body)
    dash.clear_log()
    result = run(dash, [fc("taken"), fc("new")])
    assert result.created == ("new",) and result.foreign == ("mine-by-hand", "taken")
    [(name, reason)] = result.failed
    assert name == "taken" and "not managed by registry-sync" in reason
    assert [(w.method, w.json()["metadata"]["name"]) for w in dash.writes] == [("POST", "new")]
    assert dash.function("taken")["metadata"]["annotations"]["version"] == "9"
    assert dash.deploy_count("taken") == 1


def test_503_twice_then_ok_succeeds_with_retries(dash):
    dash.fail_next(503, times=2, method="POST", path="/api/functions")
    client = DashboardClient(dash.url, backoff=0.001)
    result = apply(plan([fc("a")], client.list_functions()), client, poll=0.01)
    assert (result.created, result.failed) == (("a",), ())
    assert [r.status for r in dash.requests if r.method == "POST"] == [503, 503, 202]
    assert dash.deploy_count("a") == 1


def test_update_that_ends_in_error_is_rolled_back(dash):
    a1, a2 = fc("a"), fc("a", "2")
    run(dash, [a1])
    old_stored = dash.function("a")
    dash.deploy_error("ImportError: no module named onnxruntime", name="a", times=1)
    dash.clear_log()
    result = run(dash, [a2])
    assert result.updated == () and result.rolled_back == ("a",)
    [(name, reason)] = result.failed
    assert name == "a"
    assert reason == ("update ended error: ImportError: no module named onnxruntime; "
                      "rolled back to the previous version")
    first, second = dash.writes
    assert (first.method, second.method) == ("PUT", "PUT")
    assert first.json()["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == a2.hash
    assert second.json() == {"metadata": old_stored["metadata"], "spec": old_stored["spec"]}
    now = dash.function("a")
    assert now["status"]["state"] == "ready"
    assert now["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] == a1.hash


def test_create_that_ends_in_error_is_deleted_and_reported(dash):
    dash.deploy_error("image pull failed", name="bad")
    result = run(dash, [fc("bad"), fc("good")])
    assert result.created == ("good",)
    assert result.failed == (("bad", "deploy ended error: image pull failed; removed again"),)
    assert [(w.method, w.json()["metadata"]["name"], w.status) for w in dash.writes] == [
        ("POST", "bad", 202), ("DELETE", "bad", 204), ("POST", "good", 202)]
    assert cvat_ids(dash.functions_json("cvat")) == ["good"]


def test_wait_timeout_is_reported_not_raised():
    with DashboardStandIn(ready_after=1000) as dash:
        dash.add_project("cvat")
        clock = Clock()
        client = DashboardClient(dash.url, sleep=clock.sleep, clock=clock)
        result = apply(plan([fc("slow")], client.list_functions()), client, wait_timeout=30, poll=5)
        assert result.created == ()
        assert result.failed == (("slow", "created, but not ready after 30 s (state 'building')"),)
        assert dash.count("GET", "/api/functions/slow") == 1 + 7          # re-read, then t = 0, 5, ..., 30
        assert dash.function("slow") is not None                          # still deploying: left alone


def test_unreachable_project_fails_every_write_and_writes_nothing(dash):
    client = client_for(dash, retries=0)
    current = listed(fc("old"))
    dash.fail_next(403, method="GET", path="/api/projects", message="forbidden")
    result = apply(plan([fc("a")], current), client, poll=0.01)
    assert [name for name, _ in result.failed] == ["a", "old"]
    assert "project 'cvat' unavailable: dashboard get project cvat: 403 forbidden" in result.failed[0][1]
    assert dash.writes == []


def test_one_bad_function_does_not_stop_the_rest(dash):
    bad = fc("bad")
    bad.body["spec"]["description"] = ""                                # the dashboard answers 400
    result = run(dash, [fc("a"), bad, fc("c")])
    assert result.created == ("a", "c")
    [(name, reason)] = result.failed
    assert name == "bad" and "400 spec.description must be a non-empty string" in reason


def test_apply_rechecks_before_writing_a_stale_plan(dash):
    a1, a2 = fc("a"), fc("a", "2")
    run(dash, [a1])
    old_plan = plan([a2, fc("b")], DashboardClient(dash.url).list_functions())
    assert old_plan.update == (a2,) and [x.name for x in old_plan.create] == ["b"]
    run(dash, [a2, fc("b")])                                            # another run got there first
    dash.clear_log()
    result = apply(old_plan, DashboardClient(dash.url), poll=0.01)
    assert result == ApplyResult(unchanged=("a", "b"))
    assert dash.writes == []


def test_create_that_loses_the_race_rereads_and_puts_only_if_different(dash):
    run(dash, [fc("a"), fc("b")])
    dash.clear_log()
    # The re-read misses the function (as if the other run's POST came right after it).
    dash.fail_next(404, method="GET", path="/api/functions/a", message="Function not found")
    dash.fail_next(404, method="GET", path="/api/functions/b", message="Function not found")
    client = DashboardClient(dash.url)
    result = apply(Plan(create=(fc("a"), fc("b", "2"))), client, poll=0.01)
    assert (result.unchanged, result.updated, result.failed) == (("a",), ("b",), ())
    assert [(w.method, w.path, w.status) for w in dash.writes] == [
        ("POST", "/api/functions", 409), ("POST", "/api/functions", 409), ("PUT", "/api/functions/b", 202)]


def test_two_concurrent_runs_converge_without_double_writes():
    desired = [fc(name) for name in ("a", "b", "c", "d")]
    with DashboardStandIn(ready_after=0.2) as dash:                      # the project is missing too
        barrier = threading.Barrier(2)

        def one_run() -> ApplyResult:
            client = DashboardClient(dash.url)
            barrier.wait()
            return apply(plan(desired, client.list_functions()), client, poll=0.02)

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(one_run) for _ in range(2)]
        results = [future.result() for future in futures]                 # re-raises a run's exception
        assert all(r.failed == () for r in results)
        names = ["a", "b", "c", "d"]
        assert sorted(results[0].created + results[1].created) == names      # each created by exactly one
        assert sorted(results[0].created + results[0].unchanged) == names
        assert sorted(results[1].created + results[1].unchanged) == names
        for name in names:
            assert dash.deploy_count(name) == 1
            accepted = [w for w in dash.writes if w.method == "POST" and w.path == "/api/functions"
                        and w.status == 202 and w.json()["metadata"]["name"] == name]
            assert len(accepted) == 1
        assert {w.status for w in dash.writes if w.path == "/api/functions"} <= {202, 409}
        assert dash.count("PUT") == 0 and dash.count("DELETE") == 0
        assert [r.status for r in dash.requests if r.method == "POST" and r.path == "/api/projects"] in (
            [201], [201, 409])
        end = dash.functions_json("cvat")
        assert {n: f["metadata"]["annotations"][CONFIG_HASH_ANNOTATION] for n, f in end.items()} == {
            c.name: c.hash for c in desired}
        assert all(f["status"]["state"] == "ready" for f in end.values())
        dash.clear_log()
        again = run(dash, desired)
        assert again == ApplyResult(unchanged=tuple(names))
        assert dash.writes == []
