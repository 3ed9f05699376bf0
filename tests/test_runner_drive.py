"""The runner on a Google Drive registry: real client, real google-auth, the Drive stand-in.

A tiny synthetic ONNX detector is seeded in the stand-in's CVAT_Models folder;
each test starts a runner worker (tools/nuclio_harness.Worker) whose
MODEL_REGISTRY is ``gdrive:...`` or ``gdrive-id:...`` and asks it for one answer.
Only loopback traffic: DRIVE_ROOT_URL and the key's token_uri point at the stand-in,
and NO_GCE_CHECK=true (set by the stand-in fixtures) keeps google-auth off metadata servers.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from common.errors import ModelConfigError, ModelNotFound, RegistryError
from common.registry.drive_auth import drive_credentials
from tests import synthetic_models as sm
from tests.drive_standin.keys import new_private_key_pem, write_service_account_key
from tests.test_runner_synthetic import PAD, detector_manifest, white
from tools.demo import RUNNER_DIR
from tools.nuclio_harness import Worker, http_event

SA_EMAIL = "registry-reader@cvat-models.iam.gserviceaccount.com"
READONLY = "https://www.googleapis.com/auth/drive.readonly"


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return sm.content_box_detector(64, 64, PAD / 255.0)


@pytest.fixture(scope="module")
def private_key_pem() -> str:
    return new_private_key_pem()


def seed(drive, onnx: bytes, *, shared: bool = False) -> str:
    """CVAT_Models/boxes/{model.json, model.onnx}; returns the root folder id."""
    root = drive.add_folder("CVAT_Models")
    folder = drive.add_folder("boxes", root)
    manifest = json.dumps(detector_manifest("boxes", labels=("thing",))).encode()
    ids = [root, folder, drive.add_file("model.json", folder, manifest, "application/json"),
           drive.add_file("model.onnx", folder, onnx)]
    if shared:
        for item in ids:
            drive.share_with_anyone(item)
    return root


def key_file(tmp_path, drive, pem: str, mode: int = 0o600, name: str = "sa.json"):
    return write_service_account_key(tmp_path / name, drive.root_url + "token", pem, SA_EMAIL, mode=mode)


def worker(tmp_path, drive, registry="gdrive:CVAT_Models", *, url: str | None = None, **env) -> Worker:
    """A runner worker on ``drive`` (``url``: its address, for a stand-in stopped meanwhile)."""
    url = url or drive.root_url
    return Worker(RUNNER_DIR, env={"MODEL_REGISTRY": registry, "MODEL_NAME": "boxes",
                                   "MODEL_CACHE_DIR": str(tmp_path / "cache"), "MODEL_CACHE_SIZE": "64MiB",
                                   "DRIVE_ROOT_URL": url, "DRIVE_RETRIES": "2", **env})


def answers(w: Worker) -> None:
    result = w.invoke(http_event({"image": white(100, 50)}))
    assert result.status == 200, result.body
    [shape] = result.json()
    assert shape["label"] == "thing"
    np.testing.assert_allclose(shape["points"], [0, 0, 100, 50], atol=1e-3)


# -- credentials --------------------------------------------------------------------

def test_service_account_key_gets_a_token_from_the_token_uri_and_serves(tmp_path, drive, onnx_bytes,
                                                                        private_key_pem, caplog):
    seed(drive, onnx_bytes)
    drive.accept_tokens()  # bearer checking on: only tokens the stand-in issued pass
    path = key_file(tmp_path, drive, private_key_pem)
    with caplog.at_level(logging.WARNING):
        w = worker(tmp_path, drive, GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY=str(path))
    answers(w)
    assert "readable by group or others" not in caplog.text
    [grant] = drive.issued_tokens
    assert grant["claims"]["iss"] == SA_EMAIL and grant["claims"]["scope"] == READONLY
    api = [r for r in drive.requests if r.path.startswith("/drive/v3/")]
    assert api and all(r.authorization == f"Bearer {grant['access_token']}" for r in api)
    assert all("key" not in r.query for r in api)
    assert w.context.user_data.model.record.folder == "boxes"
    assert (tmp_path / "cache" / "gdrive-manifests.json").is_file()  # model.json bodies remembered


def test_a_key_readable_by_others_is_warned_about(tmp_path, drive, onnx_bytes, private_key_pem, caplog):
    seed(drive, onnx_bytes)
    path = key_file(tmp_path, drive, private_key_pem, mode=0o644)
    with caplog.at_level(logging.WARNING, logger="common.registry.drive_auth"):
        answers(worker(tmp_path, drive, GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY=str(path)))
    [warning] = [r for r in caplog.records if "readable by group or others" in r.getMessage()]
    assert "0644" in warning.getMessage() and "PRIVATE KEY" not in caplog.text


def test_api_key_reads_a_folder_shared_with_anyone(tmp_path, drive, onnx_bytes, caplog):
    root = seed(drive, onnx_bytes, shared=True)
    drive.accept_api_keys("AIza-test-key")
    with caplog.at_level(logging.DEBUG):
        answers(worker(tmp_path, drive, f"gdrive-id:{root}", GOOGLE_DRIVE_API_KEY="AIza-test-key"))
    api = [r for r in drive.requests if r.path.startswith("/drive/v3/")]
    assert api and all(r.query.get("key") == "AIza-test-key" and r.authorization is None for r in api)
    # Never logged by the pack (googleapiclient's own DEBUG log of URLs is not ours).
    assert not [r for r in caplog.records if r.name.startswith("common") and "AIza-test-key" in r.getMessage()]


def test_application_default_credentials_from_a_key_file(tmp_path, drive, onnx_bytes, private_key_pem, monkeypatch):
    seed(drive, onnx_bytes)
    drive.accept_tokens()
    path = key_file(tmp_path, drive, private_key_pem, name="adc.json")
    answers(worker(tmp_path, drive, GOOGLE_DRIVE_USE_ADC="1", GOOGLE_APPLICATION_CREDENTIALS=str(path)))
    [grant] = drive.issued_tokens
    assert grant["claims"]["scope"] == READONLY


def test_no_credentials_names_the_options(tmp_path, drive, monkeypatch):
    for name in ("GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY", "GOOGLE_DRIVE_API_KEY", "GOOGLE_DRIVE_USE_ADC"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ModelConfigError) as info:
        worker(tmp_path, drive)
    assert info.value.source == "environment"
    for option in ("GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY", "GOOGLE_DRIVE_API_KEY", "GOOGLE_DRIVE_USE_ADC=1"):
        assert option in str(info.value)
    assert len(drive.requests) == 0


def test_credential_settings_in_order_and_bad_keys(tmp_path, private_key_pem):
    assert drive_credentials({"GOOGLE_DRIVE_API_KEY": " k "}) == (None, "k")
    with pytest.raises(ModelConfigError, match="cannot read the service-account key"):
        drive_credentials({"GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": str(tmp_path / "missing.json"),
                           "GOOGLE_DRIVE_API_KEY": "k"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    bad.chmod(0o600)
    with pytest.raises(ModelConfigError, match="not a usable service-account key"):
        drive_credentials({"GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": str(bad)})


# -- offline start ------------------------------------------------------------------

def public(tmp_path, drive, root, **env) -> Worker:
    """A worker reading the shared registry by folder id with an API key."""
    return worker(tmp_path, drive, f"gdrive-id:{root}", GOOGLE_DRIVE_API_KEY="k", **env)


def stop(drive) -> str:
    """Stop the stand-in (Drive unreachable: connection refused); returns its old address."""
    url = drive.root_url
    drive.stop()
    return url


@pytest.mark.parametrize("outage", ["503", "stopped"])
def test_drive_down_serves_the_cached_snapshot(tmp_path, drive, onnx_bytes, caplog, outage):
    root = seed(drive, onnx_bytes, shared=True)
    first = public(tmp_path, drive, root)
    answers(first)
    url = drive.root_url
    if outage == "503":
        drive.fail_next(503, "backendError", times=None)
    else:
        stop(drive)
    with caplog.at_level(logging.WARNING, logger="common.runner"):
        second = public(tmp_path, drive, root, url=url)
    answers(second)
    [warning] = [r for r in caplog.records if "serving the cached copy" in r.getMessage()]
    message = warning.getMessage()
    assert "boxes 1.0.0" in message and ("503" in message if outage == "503" else "unreachable" in message)
    record = second.context.user_data.model.record
    assert record.manifest.name == "boxes" and record.primary.size == len(onnx_bytes)
    assert record.primary.content_key == first.context.user_data.model.record.primary.content_key


def test_drive_down_serves_the_cached_snapshot_with_a_service_account(tmp_path, drive, onnx_bytes, private_key_pem):
    # The token endpoint (the stand-in) is down too: still a registry failure, not a crash.
    seed(drive, onnx_bytes)
    key = str(key_file(tmp_path, drive, private_key_pem))
    answers(worker(tmp_path, drive, GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY=key))
    url = stop(drive)
    answers(worker(tmp_path, drive, GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY=key, url=url))


def test_a_pinned_version_that_is_not_cached_is_not_served_offline(tmp_path, drive, onnx_bytes):
    root = seed(drive, onnx_bytes, shared=True)
    answers(public(tmp_path, drive, root))
    drive.fail_next(503, "backendError", times=None)
    answers(public(tmp_path, drive, root, MODEL_VERSION="1.0.0"))
    with pytest.raises(RegistryError, match="503"):
        public(tmp_path, drive, root, MODEL_VERSION="2.0.0")


def test_an_empty_cache_and_drive_down_fails_with_the_drive_error(tmp_path, drive, onnx_bytes):
    root = seed(drive, onnx_bytes, shared=True)
    drive.fail_next(503, "backendError", times=None)
    with pytest.raises(RegistryError, match="503 backendError"):
        public(tmp_path, drive, root)
    assert not (tmp_path / "cache" / "snapshots" / "boxes").exists()


def test_a_model_drive_says_does_not_exist_is_not_served_from_the_cache(tmp_path, drive, onnx_bytes):
    root = seed(drive, onnx_bytes, shared=True)
    answers(public(tmp_path, drive, root))
    [boxes] = [i.id for i in drive.store.items.values() if i.name == "boxes" and i.parent == root]
    drive.trash(boxes)
    with pytest.raises(ModelNotFound):
        public(tmp_path, drive, root)


def test_offline_start_takes_the_highest_cached_version_and_skips_evicted_snapshots(tmp_path, drive, onnx_bytes):
    root = seed(drive, onnx_bytes, shared=True)
    answers(public(tmp_path, drive, root))
    [doc] = [i.id for i in drive.store.items.values() if i.name == "model.json"]
    newer = detector_manifest("boxes", labels=("thing",))
    newer["version"] = "1.10.0"  # numeric order: 1.10.0 > 1.9.x > 1.0.0
    drive.update_file(doc, json.dumps(newer).encode())
    answers(public(tmp_path, drive, root))
    drive.fail_next(503, "backendError", times=None)
    offline = public(tmp_path, drive, root)
    answers(offline)
    assert offline.context.user_data.model.record.version == "1.10.0"
    pinned = public(tmp_path, drive, root, MODEL_VERSION="v1.0.0")
    assert pinned.context.user_data.model.record.version == "1.0.0"
    # Both snapshots link the same blob: once it is gone, nothing cached is usable.
    for blob in (tmp_path / "cache" / "blobs").iterdir():
        blob.unlink()
    with pytest.raises(RegistryError, match="503 backendError"):
        public(tmp_path, drive, root)


def test_the_token_endpoint_refuses_what_is_not_a_jwt_bearer_grant(drive):
    import httplib2

    http = httplib2.Http(timeout=10)
    url = drive.root_url + "token"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp, body = http.request(url, "POST", body="grant_type=password&username=u", headers=form)
    assert resp.status == 400 and json.loads(body)["error"] == "unsupported_grant_type"
    resp, body = http.request(url, "POST", headers=form,
                              body="grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=x.y")
    assert resp.status == 400 and json.loads(body)["error"] == "invalid_grant"
    assert drive.issued_tokens == []
