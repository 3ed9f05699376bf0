"""The real runner behind the emulated Nuclio processor (nuclio.md §3.1, §7 layer 3).

functions/gdrive-runner is staged as ``nuctl deploy`` would get it (tools/stage.py)
and served by two ``FunctionServer`` instances of two worker processes each that
share one MODEL_CACHE_DIR, like two containers bind-mounting one host path. All
four workers start together, so all four miss the empty cache at once; the cache
must end up with one copy of each file. Then requests from several threads, an
oversized body and bad bodies go through real HTTP.
"""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.nuclio_emu import FunctionServer
from tests.test_golden import GOLDEN
from tools.assets import asset_path
from tools.stage import stage

MODEL = "blazeface-face-detector"  # small (OpenVINO IR, two files)
IMAGE = "astronaut.png"


@pytest.fixture(scope="module")
def runner_dir(tmp_path_factory) -> Path:
    return stage("gdrive-runner", tmp_path_factory.mktemp("staged") / "gdrive-runner")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(scope="module")
def containers(runner_dir, cache_dir, demo_registry):
    """Two processors ("containers") of 2 workers each on one cache folder, started together."""
    env = {"MODEL_REGISTRY": f"local:{demo_registry}", "MODEL_NAME": MODEL, "MODEL_CACHE_DIR": str(cache_dir),
           "MODEL_CACHE_SIZE": "1GiB"}
    servers = [FunctionServer(runner_dir, env=env, num_workers=2) for _ in range(2)]
    try:
        for server in servers:
            server.start(wait=False)
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop(check=False)
    for server in servers:  # teardown: a clean stop, the refresher's termination callback included
        assert server.failure is None and server.faults == []
        assert [w.returncode for w in server.workers()] == [0, 0]


def ask(server: FunctionServer, body: bytes, content_type: str = "application/json"):
    return server.request("POST", "/", body, headers={"Content-Type": content_type})


def image_body() -> bytes:
    return json.dumps({"image": base64.b64encode(asset_path(IMAGE).read_bytes()).decode()}).encode()


def test_four_workers_start_on_one_cold_cache_and_keep_one_copy(containers, cache_dir, demo_registry):
    assert [len(s.workers()) for s in containers] == [2, 2]
    for server in containers:
        ready = [line for line in server.logs if line.message == "model ready"]
        assert sorted(line.worker for line in ready) == ["myHttpTrigger/0", "myHttpTrigger/1"]
        assert {line.with_["model"] for line in ready} == {MODEL}
    manifest = json.loads((demo_registry / MODEL / "model.json").read_text())
    files = [manifest["file_name"], *manifest["extra_files"]]
    expected_sizes = sorted((demo_registry / MODEL / rel).stat().st_size for rel in files)
    blobs = sorted((cache_dir / "blobs").iterdir())
    assert len(blobs) == len(files) == 2
    assert sorted(b.stat().st_size for b in blobs) == expected_sizes
    assert sum(b.stat().st_size for b in blobs) == sum(expected_sizes)
    assert [p.name for p in (cache_dir / "tmp").iterdir() if p.suffix == ".part"] == []
    [snapshot] = (cache_dir / "snapshots" / MODEL).iterdir()
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(["model.json", *files])


def test_concurrent_requests_all_answer_the_same(containers):
    body = image_body()
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda i: ask(containers[i % 2], body), range(12)))
    assert [r.status for r in results] == [200] * 12
    assert {r.content_type for r in results} == {"application/json"}
    assert len({r.body for r in results}) == 1
    [(label, points)] = GOLDEN[(MODEL, IMAGE)]
    [shape] = results[0].json()
    assert shape["label"] == label and shape["type"] == "rectangle"
    assert shape["points"] == pytest.approx(points, abs=1.0)


def test_oversized_body_is_413_and_the_next_request_works(containers):
    server = containers[0]
    result = ask(server, b"x" * (65 * 1024 * 1024))  # the runner's limit is 64 MiB
    assert result.status == 413
    assert ask(server, image_body()).status == 200
    assert server.failure is None


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b'{"image": "%%%not base64%%%"}', "application/json", 400, "not valid base64"),
    (b'{"threshold": 0.5}', "text/plain", 400, "missing 'image'"),
])
def test_bad_body_is_4xx_json_and_the_worker_keeps_serving(containers, body, content_type, status, message):
    server = containers[1]
    pids = [w.pid for w in server.workers()]
    result = ask(server, body, content_type)
    assert (result.status, result.content_type) == (status, "application/json")
    assert message in result.json()["error"]
    # Both workers still answer (two requests at once need both), and none was replaced.
    barrier = threading.Barrier(2)

    def good(_):
        barrier.wait()
        return ask(server, image_body()).status

    with ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(good, range(2))) == [200, 200]
    assert [w.pid for w in server.workers()] == pids and server.failure is None
