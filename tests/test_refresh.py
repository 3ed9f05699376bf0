"""Background refresh (common/refresh.py): a new version in the registry is swapped in
without a failed request; registry failures keep the cached model serving and are
logged once per interval.

Deterministic: the tests call ``refresher.check_now()`` instead of waiting for the
thread; one test runs the thread with a tiny interval and a bounded wait.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time

import numpy as np
import pytest

from common.cache import ModelCache
from common.errors import ModelConfigError
from common.refresh import ModelRefresher
from common.runner import RunnerSettings, load_model
from tests import synthetic_models as sm
from tests.conftest import write_model
from tests.test_runner_drive import answers, public, seed
from tests.test_runner_synthetic import detector_manifest, white
from tools.demo import RUNNER_DIR
from tools.nuclio_harness import Worker, http_event

DECODER = {"name": "yolo", "nms_in_graph": True, "rows": "xyxy_score_class"}
BOX_1 = [8.0, 8.0, 24.0, 40.0]
BOX_2 = [30.0, 10.0, 60.0, 20.0]
BOX_3 = [4.0, 4.0, 12.0, 12.0]


def detector(box) -> bytes:
    """A 64x64 detector that always finds ``box`` (class 0, score 0.9): on a 64x64 picture the answer is ``box``."""
    return sm.fixed_rows_detector(np.array([[[*box, 0.9, 0], [0, 0, 0, 0, 0, 0]]], np.float32), (64, 64))


def manifest(version: str) -> dict:
    data = detector_manifest("boxes", decoder=DECODER, labels=("thing", "other"))
    data["version"] = version
    return data


def env(tmp_path, **extra) -> dict[str, str]:
    return {"MODEL_REGISTRY": f"local:{tmp_path / 'registry'}", "MODEL_NAME": "boxes",
            "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_CACHE_SIZE": "64MiB", **extra}


def publish(tmp_path, version: str, box, folder: str = "boxes") -> None:
    write_model(tmp_path / "registry", folder, manifest(version), {"model.onnx": detector(box)})


def start(tmp_path, **extra) -> Worker:
    publish(tmp_path, "1.0.0", BOX_1)
    return Worker(RUNNER_DIR, env=env(tmp_path, **extra))


def box_of(w: Worker) -> list[float]:
    result = w.invoke(http_event({"image": white(64, 64)}))
    assert result.status == 200, result.body
    [shape] = result.json()
    assert shape["label"] == "thing"
    return shape["points"]


def refresh_log(caplog, level=logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "common.refresh" and r.levelno >= level]


# -- a new version is swapped in --------------------------------------------------------

def test_a_new_version_is_swapped_in_and_a_request_in_flight_finishes_on_the_old(tmp_path, caplog):
    w = start(tmp_path)
    refresher = w.context.user_data.refresher
    assert box_of(w) == BOX_1
    assert refresher.check_now() is False  # nothing changed: nothing reloaded
    old = refresher.current
    in_flight = old.pipeline  # what a request that started before the swap holds

    publish(tmp_path, "1.1.0", BOX_2)
    with caplog.at_level(logging.INFO, logger="common.refresh"):
        assert refresher.check_now() is True
    assert box_of(w) == BOX_2
    assert refresher.current.record.version == "1.1.0"
    assert w.context.user_data.model is refresher.current  # kept current for readers of user_data.model
    assert any("now serving boxes 1.1.0 (was boxes 1.0.0)" in m for m in refresh_log(caplog))

    # The old snapshot's pins are released: its blob may be evicted from disk...
    assert old.snapshot.released and not refresher.current.snapshot.released
    evicted = ModelCache(tmp_path / "cache", 64 << 20).evict(64 << 20)
    assert old.record.primary.content_key in evicted
    assert refresher.current.record.primary.content_key not in evicted  # pinned by the serving model
    # ...and the request still running on the old pipeline finishes on it (weights are in memory).
    [shape] = in_flight(np.full((64, 64, 3), 255, np.uint8))
    assert shape["points"] == BOX_1

    assert refresher.check_now() is False  # the swapped-in version is now the current one
    assert box_of(w) == BOX_2


def test_a_changed_model_json_alone_is_a_new_model(tmp_path):
    w = start(tmp_path)
    refresher = w.context.user_data.refresher
    data = manifest("1.0.0")
    data["labels"] = ["renamed", "other"]
    write_model(tmp_path / "registry", "boxes", data, {})
    assert refresher.check_now() is True
    [shape] = w.invoke(http_event({"image": white(64, 64)})).json()
    assert shape["label"] == "renamed" and shape["points"] == BOX_1


def test_a_pinned_version_does_not_move_unless_its_own_files_change(tmp_path):
    w = start(tmp_path, MODEL_VERSION="1.0.0")
    refresher = w.context.user_data.refresher
    # 1.0.0 moves to previous_versions/, 1.1.0 becomes current.
    shutil.copytree(tmp_path / "registry" / "boxes", tmp_path / "registry" / "boxes" / "previous_versions" / "v1.0.0")
    publish(tmp_path, "1.1.0", BOX_2)
    assert refresher.check_now() is False
    assert box_of(w) == BOX_1 and refresher.current.record.version == "1.0.0"
    # The pinned version's own weights replaced in place: that is picked up.
    (tmp_path / "registry" / "boxes" / "previous_versions" / "v1.0.0" / "model.onnx").write_bytes(detector(BOX_3))
    assert refresher.check_now() is True
    assert box_of(w) == BOX_3 and refresher.current.record.version == "1.0.0"


# -- failures keep the cached model serving -------------------------------------------------

def test_local_registry_gone_keeps_serving_and_warns_once_then_recovers(tmp_path, caplog):
    w = start(tmp_path)
    refresher = w.context.user_data.refresher
    registry = tmp_path / "registry"
    registry.rename(tmp_path / "moved")
    with caplog.at_level(logging.INFO, logger="common.refresh"):
        for _ in range(4):
            assert refresher.check_now() is False
            assert box_of(w) == BOX_1
        [warning] = refresh_log(caplog, logging.WARNING)
        assert "cannot be read" in warning and "does not exist" in warning and "boxes 1.0.0" in warning
        caplog.clear()
        (tmp_path / "moved").rename(registry)
        assert refresher.check_now() is False
        assert refresher.check_now() is False
    [recovered] = refresh_log(caplog)
    assert "answers again" in recovered
    assert box_of(w) == BOX_1


@pytest.mark.parametrize("status, reason", [(503, "backendError"), (403, "userRateLimitExceeded")])
def test_drive_failing_keeps_serving_and_warns_once_per_interval(tmp_path, drive, caplog, status, reason):
    root = seed(drive, sm.content_box_detector(64, 64, 114 / 255.0), shared=True)
    w = public(tmp_path, drive, root)
    refresher = w.context.user_data.refresher
    refresher.registry.backoff = 0.01  # the stand-in's failures need no real waiting
    answers(w)
    drive.fail_next(status, reason, times=None)
    with caplog.at_level(logging.INFO, logger="common.refresh"):
        for _ in range(3):
            assert refresher.check_now() is False
            answers(w)  # requests never touch Drive: the cached model answers
        [warning] = refresh_log(caplog, logging.WARNING)
        assert str(status) in warning and "still serving the cached boxes 1.0.0" in warning
        caplog.clear()
        drive.clear_faults()
        assert refresher.check_now() is False
    [recovered] = refresh_log(caplog)
    assert "answers again" in recovered
    answers(w)


def test_the_failure_warning_repeats_once_per_interval(tmp_path, caplog):
    publish(tmp_path, "1.0.0", BOX_1)
    settings = RunnerSettings.from_env(env(tmp_path, MODEL_REFRESH_SECONDS="60"))
    now = [1000.0]
    refresher = ModelRefresher(settings, load_model(settings), clock=lambda: now[0])  # not started
    (tmp_path / "registry").rename(tmp_path / "moved")
    with caplog.at_level(logging.WARNING, logger="common.refresh"):
        for step in (0, 10, 59):  # within one interval: once
            now[0] = 1000.0 + step
            refresher.check_now()
        assert len(refresh_log(caplog, logging.WARNING)) == 1
        now[0] = 1060.0  # the next interval: once more
        refresher.check_now()
        refresher.check_now()
        assert len(refresh_log(caplog, logging.WARNING)) == 2
    assert refresher.current.pipeline is not None and not refresher.current.snapshot.released


def test_an_invalid_model_json_keeps_the_current_model_and_is_logged_once(tmp_path, caplog):
    w = start(tmp_path)
    refresher = w.context.user_data.refresher
    bad = manifest("1.1.0")
    del bad["file_name"]
    write_model(tmp_path / "registry", "boxes", bad, {"model.onnx": detector(BOX_2)})
    with caplog.at_level(logging.INFO, logger="common.refresh"):
        for _ in range(3):
            assert refresher.check_now() is False
            assert box_of(w) == BOX_1
        [error] = refresh_log(caplog, logging.ERROR)
        assert "not usable" in error and "file_name" in error and "still serving boxes 1.0.0" in error
        caplog.clear()
        publish(tmp_path, "1.1.0", BOX_2)  # fixed
        assert refresher.check_now() is True
    assert box_of(w) == BOX_2
    assert any("answers again" in m for m in refresh_log(caplog))


def test_a_new_version_that_fails_to_load_keeps_the_current_model_and_is_logged_once(tmp_path, caplog):
    w = start(tmp_path)
    refresher = w.context.user_data.refresher
    write_model(tmp_path / "registry", "boxes", manifest("1.1.0"), {"model.onnx": b"not an onnx model"})
    with caplog.at_level(logging.INFO, logger="common.refresh"):
        for _ in range(3):
            assert refresher.check_now() is False
            assert box_of(w) == BOX_1
        [error] = refresh_log(caplog, logging.ERROR)
        assert "cannot load boxes 1.1.0" in error and "still serving boxes 1.0.0" in error
        caplog.clear()
        publish(tmp_path, "1.1.1", BOX_2)
        assert refresher.check_now() is True
    assert any("works again" in m for m in refresh_log(caplog))
    assert box_of(w) == BOX_2
    # The failed version's blob was not left pinned: everything but the serving model can go.
    evicted = ModelCache(tmp_path / "cache", 64 << 20).evict(64 << 20)
    assert refresher.current.record.primary.content_key not in evicted and len(evicted) == 2


# -- the thread and the setting ----------------------------------------------------------

def refresh_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "model-refresh-boxes" and t.is_alive()]


def test_the_background_thread_swaps_in_a_new_version(tmp_path):
    w = start(tmp_path, MODEL_REFRESH_SECONDS="0.05")
    refresher = w.context.user_data.refresher
    try:
        assert refresher.running
        assert w.context.platform._termination_callback == refresher.stop  # Nuclio stops it at termination
        publish(tmp_path, "1.1.0", BOX_2)
        deadline = time.monotonic() + 20
        while box_of(w) != BOX_2:  # every request succeeds meanwhile, on one model or the other
            assert time.monotonic() < deadline, "the new version was not picked up"
            time.sleep(0.02)
        assert refresher.current.record.version == "1.1.0"
    finally:
        refresher.stop()
    assert not refresher.running


def test_zero_starts_no_thread(tmp_path):
    before = refresh_threads()
    w = start(tmp_path, MODEL_REFRESH_SECONDS="0")
    refresher = w.context.user_data.refresher
    assert not refresher.running and refresh_threads() == before
    publish(tmp_path, "1.1.0", BOX_2)
    assert refresher.check_now() is True  # a check can still be asked for
    assert box_of(w) == BOX_2
    refresher.stop()  # harmless without a thread


def test_default_interval_and_accepted_values(tmp_path):
    assert RunnerSettings.from_env({"MODEL_NAME": "m"}).refresh_seconds == 300
    assert RunnerSettings.from_env({"MODEL_NAME": "m", "MODEL_REFRESH_SECONDS": " "}).refresh_seconds == 300
    assert RunnerSettings.from_env({"MODEL_NAME": "m", "MODEL_REFRESH_SECONDS": "0"}).refresh_seconds == 0
    assert RunnerSettings.from_env({"MODEL_NAME": "m", "MODEL_REFRESH_SECONDS": "2.5"}).refresh_seconds == 2.5


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf", "5m"])
def test_a_bad_interval_stops_the_start(tmp_path, value):
    publish(tmp_path, "1.0.0", BOX_1)
    with pytest.raises(ModelConfigError, match="MODEL_REFRESH_SECONDS") as info:
        Worker(RUNNER_DIR, env=env(tmp_path, MODEL_REFRESH_SECONDS=value))
    assert info.value.source == "environment"
    assert not (tmp_path / "cache" / "snapshots").exists()  # refused before anything was loaded


def test_a_worker_nobody_holds_any_more_takes_its_thread_along(tmp_path):
    import gc

    before = refresh_threads()
    w = start(tmp_path)
    assert len(refresh_threads()) == len(before) + 1
    del w
    gc.collect()
    deadline = time.monotonic() + 10
    while len(refresh_threads()) > len(before):
        assert time.monotonic() < deadline, "the refresh thread outlived its worker"
        time.sleep(0.01)
