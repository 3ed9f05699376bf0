"""The Nuclio emulation itself (nuclio.md §7 layers 1-3) on tiny handler modules.

Layer 1: events built as the processor's msgpack map, decoded by nuclio-sdk.
Layer 2: the wrapper's return-value rules, in-process (tools.nuclio_harness.Worker)
and through real worker processes. Layer 3: the worker pool behind the local
http trigger (413/503/408, readiness, restarts, cron, termination, crashes).
Handlers block on files the test creates, never on sleeps, so no outcome
depends on how fast this machine is.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.nuclio_emu import (
    CRON_JOB_TRIGGER_HEADER,
    TARGET_HEADER,
    ConfigError,
    EmptyBatchError,
    FunctionConfig,
    FunctionServer,
    ProcessorFailed,
    Worker,
    canonical_header,
    cron_event,
    http_event,
    parse_duration,
)
from tests.nuclio_emu import pool as emu
from tools.nuclio_harness import event_message, pack_event

REPO = Path(__file__).resolve().parent.parent
EPOCH = datetime.datetime(1970, 1, 1)

# One function module for every test: the path picks the behaviour; state goes to files in STATE_DIR.
FUNCTION = textwrap.dedent('''
    import json
    import os
    import time
    from pathlib import Path

    import numpy as np

    STATE = Path(os.environ["STATE_DIR"])


    def note(name, text):
        with open(STATE / name, "a") as f:
            f.write(text + "\\n")


    def wait_for(path):
        while not path.exists():
            time.sleep(0.01)


    def init_context(context):
        note("init", f"{context.trigger.name}/{context.worker_id} {os.getpid()}")
        context.platform.set_termination_callback(
            lambda: note("terminated", f"{context.trigger.name}/{context.worker_id} {os.getpid()}"))
        if (STATE / "fail-init").exists():
            raise RuntimeError("init failed on purpose")
        while (STATE / "hold-init").exists():
            time.sleep(0.01)


    def describe(context, event):
        body = event.body if isinstance(event.body, (dict, list)) else repr(event.body)
        return {"kind": event.trigger.kind, "name": event.trigger.name, "body": body,
                "content_type": event.content_type, "headers": event.headers, "fields": event.fields,
                "method": event.method, "path": event.path, "timestamp": event.timestamp.isoformat(),
                "worker_id": context.worker_id, "context_trigger": [context.trigger.kind, context.trigger.name],
                "platform": [context.platform.kind, context.platform.namespace], "pid": os.getpid()}


    def cron_run(context, event):
        start = time.monotonic()
        time.sleep(float(os.environ.get("CRON_SLEEP", "0")))
        note("cron", json.dumps({"start": start, "end": time.monotonic(), "pid": os.getpid(),
                                 "body": repr(event.body), "timestamp": event.timestamp.isoformat()}))
        return "ticked"


    def handler(context, event):
        if event.trigger.kind == "cron":
            return cron_run(context, event)
        path = event.path
        if path == "/list":
            return [{"label": "a"}, {"label": "b"}]
        if path == "/empty":
            return []
        if path == "/numpy":
            return {"f32": np.float32(0.5), "i64": np.int64(3), "f64": np.float64(0.25)}
        if path == "/response-numpy":
            return context.Response(body={"f32": np.float32(0.5)}, headers={}, status_code=200)
        if path == "/response-dict":
            return context.Response(body={"a": 1}, status_code=201, content_type="text/plain",
                                    headers={"X-Str": "v", "X-Int": 3, "X-Float": 1.5, "X-Bool": True})
        if path == "/raise":
            raise ValueError("boom")
        if path == "/bytes":
            return bytes(range(256))
        if path == "/tuple":
            return (202, {"ok": True})
        if path == "/tuple-text":
            return (400, "bad input")
        if path == "/int":
            return 42
        if path == "/block":
            note("started", str(os.getpid()))
            wait_for(STATE / "release")
            return "released"
        if path == "/hang":
            time.sleep(3600)
        if path == "/exit":
            os._exit(3)
        return describe(context, event)


    async def async_handler(context, event):
        return {"awaited": True, "worker_id": context.worker_id}
''')


def write_function(root: Path, *, triggers: str | None = None, event_timeout: str | None = None,
                   env: dict[str, str] | None = None) -> Path:
    """The function folder (main.py + function.yaml) and its STATE_DIR under ``root``."""
    fn, state = root / "fn", root / "state"
    fn.mkdir(parents=True, exist_ok=True)
    state.mkdir(exist_ok=True)
    (fn / "main.py").write_text(FUNCTION)
    env_lines = "".join(f"    - name: {k}\n      value: \"{v}\"\n" for k, v in {"STATE_DIR": state, **(env or {})}.items())
    triggers = triggers or "    web:\n      kind: http\n      numWorkers: 1\n"
    (fn / "function.yaml").write_text(
        "metadata:\n  name: emu-test\nspec:\n  handler: main:handler\n  runtime: \"python:3.11\"\n"
        + (f"  eventTimeout: {event_timeout}\n" if event_timeout else "")
        + "  env:\n" + env_lines + "  triggers:\n" + triggers)
    return fn


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_until(predicate, what: str, limit: float = 60.0):
    """Poll until ``predicate()`` is truthy; the limit only guards against a hang."""
    deadline = time.monotonic() + limit
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)
    return value


# -- layer 1: events --------------------------------------------------------------

def test_cron_event_body_stays_bytes_and_time_is_epoch():
    event = cron_event(body=b'{"sync": true}', headers={"X-Reason": "tick"}, trigger_name="every-5m")
    assert event.body == b'{"sync": true}'  # content type "": never parsed, even when it is JSON
    assert event.content_type == ""
    assert (event.trigger.kind, event.trigger.name) == ("cron", "every-5m")
    assert event.timestamp == EPOCH
    assert event.get_header("x-reason") == "tick"
    assert event.path == "/"


def test_http_event_json_only_for_exact_content_type():
    assert http_event({"a": 1}).body == {"a": 1}
    charset = http_event(raw=b'{"a": 1}', content_type="application/json; charset=utf-8")
    assert charset.body == b'{"a": 1}'
    event = http_event(raw="x", content_type="text/plain", query={"q": "1"}, method="GET", path="/p")
    assert (event.body, event.fields, event.method, event.path) == (b"x", {"q": "1"}, "GET", "/p")
    assert event.timestamp > EPOCH


def test_kube_cron_job_is_an_http_event_with_headers():
    event = http_event(raw=b"", content_type="", headers={CRON_JOB_TRIGGER_HEADER: "cron", TARGET_HEADER: "sync"})
    assert event.trigger.kind == "http"
    assert event.get_header("x-nuclio-invoke-trigger") == "cron"
    assert event.get_header("X-NUCLIO-TARGET") == "sync"


# -- layer 2: the wrapper's output rules, in-process -----------------------------

@pytest.fixture
def worker(tmp_path):
    fn = write_function(tmp_path)
    return Worker(fn, env={"STATE_DIR": str(tmp_path / "state")})


def call(worker: Worker, path: str):
    return worker.invoke(http_event({}, path=path))


def test_list_is_a_batch_and_only_element_zero_reaches_the_client(worker):
    result = call(worker, "/list")
    assert (result.status, result.content_type, result.json()) == (200, "application/json", {"label": "a"})


def test_empty_list_fails_loudly(worker):
    with pytest.raises(EmptyBatchError, match="empty list"):
        call(worker, "/empty")


def test_dict_with_numpy_values_becomes_repr_strings(worker):
    result = call(worker, "/numpy")
    assert result.status == 200
    # float64 subclasses float and stays a number; the others are their repr().
    assert result.json() == {"f32": "np.float32(0.5)", "i64": "np.int64(3)", "f64": 0.25}


def test_response_with_numpy_dict_body_is_a_500(worker):
    result = call(worker, "/response-numpy")
    assert (result.status, result.content_type) == (500, "text/plain")
    assert result.body.decode().startswith(
        'Exception caught in handler - "Object of type float32 is not JSON serializable": Traceback')


def test_response_dict_body_is_json_and_only_string_headers_survive(worker):
    result = call(worker, "/response-dict")
    assert (result.status, result.content_type, result.body) == (201, "application/json", b'{"a": 1}')
    assert result.headers == {"X-Str": "v"}


def test_exception_is_a_500_with_traceback(worker):
    result = call(worker, "/raise")
    text = result.body.decode()
    assert (result.status, result.content_type) == (500, "text/plain")
    assert text.startswith('Exception caught in handler - "boom": Traceback (most recent call last):')
    assert text.rstrip().endswith("ValueError: boom")
    assert call(worker, "/int").body == b"42"  # the worker keeps serving


def test_bytes_body_round_trips_through_base64(worker):
    result = call(worker, "/bytes")
    assert (result.status, result.content_type, result.body) == (200, "text/plain", bytes(range(256)))


def test_tuples_and_plain_values(worker):
    assert (r := call(worker, "/tuple")).status == 202 and r.json() == {"ok": True}
    assert r.content_type == "application/json"
    assert (r := call(worker, "/tuple-text")).status == 400 and (r.content_type, r.body) == ("text/plain", b"bad input")
    assert (r := call(worker, "/int")).status == 200 and (r.content_type, r.body) == ("text/plain", b"42")


def test_in_process_context_and_termination_callback(worker, tmp_path):
    body = call(worker, "/context").json()
    assert (body["worker_id"], body["context_trigger"], body["platform"]) == ("0", ["http", "myHttpTrigger"],
                                                                               ["local", "nuclio"])
    worker.terminate()
    assert [line.split()[0] for line in lines(tmp_path / "state" / "terminated")] == ["myHttpTrigger/0"]


def test_async_handler_is_awaited(tmp_path):
    fn = write_function(tmp_path)
    w = Worker(fn, "main:async_handler", env={"STATE_DIR": str(tmp_path / "state")}, worker_id="3")
    assert w.invoke(http_event({})).json() == {"awaited": True, "worker_id": "3"}


# -- config -------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("30s", 30), ("1m30s", 90), ("250ms", 0.25), ("1h", 3600),
                                           ("1.5s", 1.5), ("0", 0)])
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", "s", "1x", "1m 30s"])
def test_bad_go_durations(text):
    with pytest.raises(ConfigError, match="not a Go duration"):
        parse_duration(text)


def test_runner_function_yaml():
    config = FunctionConfig.from_yaml(REPO / "functions" / "gdrive-runner" / "function.yaml")
    http = config.http_trigger
    assert (config.name, config.handler, config.event_timeout_s) == ("gdrive-runner", "main:handler", 60.0)
    assert (http.name, http.num_workers, http.max_request_body_size, http.availability_timeout_s) == (
        "myHttpTrigger", 2, 67108864, 10.0)
    assert config.env["MODEL_CACHE_DIR"] == "/var/cache/cvat-models"
    assert config.readiness_timeout_s == 300


def test_config_defaults_and_rules():
    config = FunctionConfig.from_dict({"metadata": {"name": "f"}, "spec": {"triggers": {
        "tick": {"kind": "cron", "maxWorkers": 2, "attributes": {"schedule": "@every 5m",
                                                                 "event": {"body": "{}", "headers": {"a": 1}}}}}}})
    [cron] = config.cron_triggers
    assert (cron.num_workers, cron.interval_s, cron.event_body, dict(cron.event_headers)) == (2, 300.0, b"{}",
                                                                                              {"a": "1"})
    http = config.http_trigger  # added because none is declared
    assert (http.name, http.num_workers, http.max_request_body_size) == ("default-http", 1, 4 * 1024 * 1024)
    with pytest.raises(ConfigError, match="'meta' is ignored"):
        FunctionConfig.from_dict({"meta": {"name": "f"}})
    with pytest.raises(ConfigError, match="exactly one of"):
        FunctionConfig.from_dict({"metadata": {"name": "f"}, "spec": {"triggers": {"c": {"kind": "cron"}}}})
    with pytest.raises(ConfigError, match="spec.env must be a list"):
        FunctionConfig.from_dict({"metadata": {"name": "f"}, "spec": {"env": {"A": "1"}}})


def test_canonical_header_names():
    assert canonical_header("x-nuclio-TARGET") == "X-Nuclio-Target"
    assert canonical_header("content-type") == "Content-Type"


# -- layer 2 again, through worker processes ------------------------------------------

def test_output_rules_through_worker_processes(tmp_path):
    fn = write_function(tmp_path)
    with FunctionServer(fn) as server:
        assert server.post_json({}, "/list").json() == {"label": "a"}
        assert server.post_json({}, "/numpy").json() == {"f32": "np.float32(0.5)", "i64": "np.int64(3)",
                                                         "f64": 0.25}
        result = server.post_json({}, "/response-dict")
        assert (result.status, result.content_type, result.body) == (201, "application/json", b'{"a": 1}')
        assert "X-Str" in result.headers and "X-Int" not in result.headers and "X-Bool" not in result.headers
        assert server.post_json({}, "/bytes").body == bytes(range(256))
        result = server.post_json({}, "/raise")
        assert (result.status, result.content_type) == (500, "text/plain")
        assert result.body.startswith(b'Exception caught in handler - "boom": Traceback')
        assert "Exception caught in handler" in server.log_messages("error")
        assert server.post_json({}, "/int").body == b"42"


def test_empty_list_through_the_pool_is_a_fault_at_stop(tmp_path):
    server = FunctionServer(write_function(tmp_path)).start()
    result = server.post_json({}, "/empty")
    assert result.status == 500
    assert server.faults == ["web/0: handler returned an empty list: Nuclio's processor panics on that"]
    with pytest.raises(ProcessorFailed, match="empty list"):
        server.stop()


# -- layer 3: the pool --------------------------------------------------------------

def test_event_and_context_as_workers_see_them(tmp_path):
    fn = write_function(tmp_path, triggers="    web:\n      kind: http\n      numWorkers: 2\n")
    with FunctionServer(fn) as server:
        result = server.request("PUT", "/some/path?q=1&q=2&r=x", b'{"a": 1}',
                                headers={"content-type": "application/json", "x-nuclio-target": "emu-test",
                                         CRON_JOB_TRIGGER_HEADER: "cron"})
        body = result.json()
        assert (body["kind"], body["name"], body["body"], body["content_type"]) == (
            "http", "web", {"a": 1}, "application/json")
        assert (body["method"], body["path"], body["fields"]) == ("PUT", "/some/path", {"q": "2", "r": "x"})
        assert body["headers"]["X-Nuclio-Target"] == "emu-test"
        assert body["headers"]["X-Nuclio-Invoke-Trigger"] == "cron"
        assert (body["context_trigger"], body["platform"]) == (["http", "web"], ["local", "nuclio"])
        charset = server.request("POST", "/", b'{"a": 1}',
                                 headers={"Content-Type": "application/json; charset=utf-8"}).json()
        assert charset["body"] == "b'{\"a\": 1}'"
        assert server.request("GET", "/__internal/health").status == 200
        # Each worker is its own process with its own id.
        infos = server.workers()
        assert [(w.trigger, w.worker_id, w.generation) for w in infos] == [("web", "0", 0), ("web", "1", 0)]
        assert len({w.pid for w in infos} | {os.getpid()}) == 3
    init = sorted(lines(tmp_path / "state" / "init"))
    assert [line.split()[0] for line in init] == ["web/0", "web/1"]
    assert {int(line.split()[1]) for line in init} == {w.pid for w in infos}


def test_two_workers_serve_two_requests_at_once(tmp_path):
    state = tmp_path / "state"
    fn = write_function(tmp_path, triggers="    web:\n      kind: http\n      numWorkers: 2\n")
    with FunctionServer(fn) as server:
        results = []
        threads = [threading.Thread(target=lambda: results.append(server.post_json({}, "/block")))
                   for _ in range(2)]
        for t in threads:
            t.start()
        # Both handlers are inside the handler at the same time, in different processes.
        started = wait_until(lambda: len(lines(state / "started")) == 2 and lines(state / "started"), "2 started")
        assert set(map(int, started)) == {w.pid for w in server.workers()}
        (state / "release").touch()
        for t in threads:
            t.join()
        assert [r.body for r in results] == [b"released", b"released"]


def test_not_ready_until_every_worker_initialised(tmp_path):
    state = tmp_path / "state"
    fn = write_function(tmp_path, triggers="    web:\n      kind: http\n      numWorkers: 2\n")
    (state / "hold-init").touch()
    server = FunctionServer(fn).start(wait=False)
    try:
        wait_until(lambda: len(lines(state / "init")) == 2, "both workers in init_context")
        result = server.post_json({})
        assert (result.status, result.json()) == (503, {"error": "Server not ready"})
        assert server.request("GET", "/__internal/health").status == 200
        (state / "hold-init").unlink()
        server.wait_ready()
        assert server.post_json({}).status == 200
    finally:
        server.stop()


def test_503_when_no_worker_frees_up_in_time(tmp_path):
    state = tmp_path / "state"
    fn = write_function(tmp_path)
    with FunctionServer(fn, availability_timeout_ms=200) as server:
        blocked = []
        thread = threading.Thread(target=lambda: blocked.append(server.post_json({}, "/block")))
        thread.start()
        wait_until(lambda: lines(state / "started"), "the only worker is busy")
        busy = server.post_json({}, "/int")
        assert (busy.status, busy.body) == (503, b"")
        (state / "release").touch()
        thread.join()
        assert blocked[0].body == b"released"
        assert server.post_json({}, "/int").body == b"42"  # the worker was released


def test_413_over_max_request_body_size_and_the_next_request_works(tmp_path):
    fn = write_function(tmp_path)
    with FunctionServer(fn, max_request_body_size=1024) as server:
        too_big = server.request("POST", "/int", b"x" * 1025, headers={"Content-Type": "text/plain"})
        assert (too_big.status, too_big.body) == (413, b"body size exceeds the given limit")
        assert server.request("POST", "/int", b"x" * 1024).body == b"42"


def test_408_on_event_timeout_kills_and_respawns_the_worker(tmp_path):
    state = tmp_path / "state"
    fn = write_function(tmp_path, event_timeout="500ms")
    with FunctionServer(fn) as server:
        [before] = server.workers()
        result = server.post_json({}, "/hang")
        assert (result.status, result.json()) == (408, {"error": "handler timed out"})
        # The next request waits for the new worker (availability timeout 10 s) and gets it.
        assert server.post_json({}, "/int").body == b"42"
        [after] = server.workers()
        assert (after.worker_id, after.generation) == ("0", 1) and after.pid != before.pid
        init = lines(state / "init")
        assert [line.split()[0] for line in init] == ["web/0", "web/0"]  # init_context ran again
        assert [int(line.split()[1]) for line in init] == [before.pid, after.pid]
        assert server.failure is None
    # The killed process got no termination callback; the one that replaced it did.
    assert lines(state / "terminated") == [f"web/0 {after.pid}"]


def test_termination_callback_runs_on_stop_after_the_current_event(tmp_path):
    state = tmp_path / "state"
    fn = write_function(tmp_path, triggers=(
        "    web:\n      kind: http\n      numWorkers: 2\n"
        "    tick:\n      kind: cron\n      attributes:\n        interval: 1h\n"))
    server = FunctionServer(fn).start()
    in_flight = []
    thread = threading.Thread(target=lambda: in_flight.append(server.post_json({}, "/block")))
    thread.start()
    [busy_pid] = map(int, wait_until(lambda: lines(state / "started"), "one worker busy"))
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    # The idle workers end at once; the busy one only after its event.
    wait_until(lambda: len(lines(state / "terminated")) == 2, "idle workers terminated")
    assert busy_pid not in [int(line.split()[1]) for line in lines(state / "terminated")]
    assert server.post_json({}, "/int").status == 503  # no new events once terminating
    (state / "release").touch()
    stopper.join()
    thread.join()
    assert in_flight[0].body == b"released"
    assert sorted(line.split()[0] for line in lines(state / "terminated")) == ["tick/0", "web/0", "web/1"]
    assert [w.returncode for w in server.workers()] == [0, 0, 0]


def test_cron_ticks_never_overlap(tmp_path):
    state = tmp_path / "state"
    # Two cron workers, a 20 ms interval and 100 ms runs: only sequencing keeps runs apart.
    fn = write_function(tmp_path, env={"CRON_SLEEP": "0.1"}, triggers=(
        "    web:\n      kind: http\n"
        "    sync:\n      kind: cron\n      numWorkers: 2\n      attributes:\n        interval: 20ms\n"
        "        event:\n          body: '{\"full\": true}'\n"))
    with FunctionServer(fn) as server:
        manual = [threading.Thread(target=server.tick) for _ in range(2)]  # manual ticks join the same queue
        for t in manual:
            t.start()
        wait_until(lambda: len(lines(state / "cron")) >= 6, "6 cron runs")
        for t in manual:
            t.join()
    runs = sorted((json.loads(line) for line in lines(state / "cron")), key=lambda r: r["start"])
    for earlier, later in zip(runs, runs[1:]):
        assert later["start"] >= earlier["end"], "two cron runs overlapped"
    assert {r["body"] for r in runs} == {"b'{\"full\": true}'"}  # bytes, though it is JSON
    assert {r["timestamp"] for r in runs} == {"1970-01-01T00:00:00"}


def test_tick_fires_one_run_synchronously(tmp_path):
    state = tmp_path / "state"
    fn = write_function(tmp_path, triggers=(
        "    web:\n      kind: http\n    sync:\n      kind: cron\n      attributes:\n        interval: 1h\n"))
    with FunctionServer(fn) as server:
        result = server.tick()
        assert (result.status, result.body) == (200, b"ticked")
        assert len(lines(state / "cron")) == 1
        assert server.tick("sync").body == b"ticked"
        with pytest.raises(ValueError, match="name the cron trigger"):
            server.tick("web")


def test_a_worker_that_dies_fails_the_processor(tmp_path):
    fn = write_function(tmp_path, triggers="    web:\n      kind: http\n      numWorkers: 2\n")
    server = FunctionServer(fn).start()
    result = server.post_json({}, "/exit")
    assert result.status == 500
    assert "exited unexpectedly with code 3" in result.json()["error"]
    assert "exited unexpectedly with code 3" in server.failure
    after = server.post_json({}, "/int")  # the real processor is gone; the other worker is not used
    assert after.status == 503 and "processor exited" in after.json()["error"]
    with pytest.raises(ProcessorFailed, match="code 3"):
        server.stop()


def test_init_failure_fails_the_start(tmp_path):
    state = tmp_path / "state"
    fn = write_function(tmp_path)
    (state / "fail-init").touch()
    with pytest.raises(ProcessorFailed, match="init failed on purpose"):
        with FunctionServer(fn):
            pass


def test_a_worker_gone_with_an_event_unread_still_answers_whoever_waits(tmp_path):
    # A frame sent as a worker exits stays unread; on a Unix socket its reader then sees
    # ECONNRESET, not EOF, and must still hand the waiter the worker's end (a stop hung on it).
    fn = write_function(tmp_path, triggers="    web:\n      kind: http\n")
    with FunctionServer(fn) as server:
        worker = server._pools["web"].acquire(5)
        os.kill(worker.proc.pid, signal.SIGSTOP)   # it reads nothing more
        assert worker.send(pack_event(event_message(b"{}", content_type="application/json",
                                                         trigger_kind="http", trigger_name="web")))
        worker.kill()
        assert worker.result(10) is emu._GONE
        worker.reader.join(10)
        assert not worker.reader.is_alive()
