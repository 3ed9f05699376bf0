"""Drive downloads under fault, end to end: the real google-api-python-client and
DriveRegistry against the Drive stand-in, every file admitted through
ModelCache.get(file, registry.fetch) with the size, md5 and sha256 Drive lists.

Each case ends one of two ways: the right bytes in the cache, or an error that names
the reason; never a wrong or partial file admitted (the cache's keys and its tmp/
folder are checked after every case), and the number of Drive requests is checked
where it matters (quota, abuse and notFound are never retried). Backoff sleeps are
recorded, never slept.

A fault "mid" download hits the second ranged request: the stand-in's faults match
requests, not byte ranges, so a sink wrapper arms the fault once the first range is
written (it only watches; the bytes go to the cache's own sink unchanged).

Last, a 1000-model registry: the exact number of Drive requests for a first listing, a
repeat with nothing changed, and a repeat with one model.json changed.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import logging
import math
import time
import warnings
from dataclasses import replace

import pytest
from google.auth.exceptions import RefreshError
from google.oauth2.credentials import Credentials

from common.cache import ModelCache
from common.errors import IntegrityError, ModelConfigError, ModelNotFound, RegistryError
from common.manifest import DriveOptions, parse_manifest
from common.registry.gdrive import ACKNOWLEDGE_ABUSE, PARENTS_PER_QUERY, DriveRegistry, build_service
from tests.conftest import model_json
from tests.drive_standin import DriveStandIn

log = logging.getLogger(__name__)

MEDIA = {"alt": "media"}
CHUNK = 64 << 10
WEIGHTS = hashlib.sha256(b"weights").digest() * 6250  # 200000 bytes: four ranges of 64 KiB (the last short)
RANGES = ["bytes=0-65535", "bytes=65536-131071", "bytes=131072-196607", "bytes=196608-199999"]
OTHER = hashlib.sha256(b"other").digest() * 6250  # same size, other bytes
HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body></body></html>"


# ---------------------------------------------------------------- helpers


class Refreshable(Credentials):
    """OAuth credentials whose refresh the test controls: each refresh hands out the next
    token, or raises it when it is an exception (the refresh token was revoked)."""

    def __init__(self, token, *fresh):
        super().__init__(token=token)
        self.fresh, self.refreshes = list(fresh), 0

    def refresh(self, request):
        self.refreshes += 1
        nxt = self.fresh.pop(0)
        if isinstance(nxt, Exception):
            raise nxt
        self.token = nxt


class Watch(io.RawIOBase):
    """Passes every write to ``sink`` unchanged; calls ``action`` once, as soon as
    ``at`` bytes went through (to fault a later ranged request)."""

    def __init__(self, sink, at, action):
        self.sink, self.at, self.action, self.count = sink, at, action, 0

    def writable(self):
        return True

    def write(self, data):
        n = self.sink.write(data)
        before, self.count = self.count, self.count + n
        if before < self.at <= self.count:
            self.action()
        return n


class World:
    """A registry folder of its own with three models, its DriveRegistry (found by folder id),
    a cache, and the recorded backoff sleeps."""

    def __init__(self, drive, tmp_path, credentials=None, **kwargs):
        drive.clear_faults()
        self.drive, self.sleeps = drive, []
        self.root = drive.add_folder("CVAT_Models")
        add_model(drive, self.root, "plain", model_json("plain"), {"model.onnx": WEIGHTS})
        add_model(drive, self.root, "trusted", model_json("trusted", drive={"acknowledge_abuse": True}),
                  {"model.onnx": WEIGHTS[::-1]})
        add_model(drive, self.root, "empty", model_json("empty"), {"model.onnx": b""})
        service = build_service(drive.root_url, credentials or Credentials(token="test-token"), timeout=10)
        self.reg = DriveRegistry(service, root_id=self.root, chunk_size=CHUNK, sleep=self.sleeps.append,
                                 rand=lambda: 1.0, **kwargs)
        self.records = {m.folder: m for m in self.reg.list_models().models}
        assert sorted(self.records) == ["empty", "plain", "trusted"]
        self.cache = ModelCache(tmp_path / "cache", 10 << 20)
        drive.requests.clear()

    def file(self, model="plain"):
        return self.records[model].primary

    def file_id(self, model="plain"):
        return self.file(model).locator.split("#")[0]

    def get(self, file=None, *, mid=None):
        """cache.get through registry.fetch; ``mid``: an action run once the first range is in."""
        file = file or self.file()
        if mid is None:
            return self.cache.get(file, self.reg.fetch)
        return self.cache.get(file, lambda f, sink: self.reg.fetch(f, Watch(sink, CHUNK, mid)))

    def media(self):
        return self.drive.requests.filter(**MEDIA)

    def ranges(self):
        return self.drive.requests.ranges(**MEDIA)

    def assert_admitted(self, path, file, data):
        assert path.read_bytes() == data
        assert self.cache.keys() == [file.content_key]
        assert list(self.cache.tmp.iterdir()) == []

    def assert_nothing_admitted(self):
        assert self.cache.keys() == []
        assert list(self.cache.tmp.iterdir()) == []  # the partial download was removed

    def close(self):
        self.drive.clear_faults()
        self.reg._service._http.http.close()  # its keep-alive socket, not left to a later gc


def add_model(drive, parent, folder, data, files):
    fid = drive.add_folder(folder, parent)
    drive.add_file("model.json", fid, json.dumps(data).encode(), "application/json")
    for name, body in files.items():
        drive.add_file(name, fid, body)
    return fid


@pytest.fixture(scope="module")
def standin():
    """One stand-in for the cases that change nothing global on it (each has its own
    registry folder, and clears the faults and the request log): starting, stopping and
    collecting a stand-in per case would cost more than the cases themselves. Cases that
    turn on bearer checking (accept_tokens) use the per-test ``drive`` fixture."""
    server = DriveStandIn()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.fixture
def world(standin, tmp_path):
    w = World(standin, tmp_path)
    yield w
    w.close()


@pytest.fixture
def make_world(standin, tmp_path):
    """World(**kwargs) on the shared stand-in, e.g. fewer retries."""
    made = []

    def make(**kwargs):
        made.append(World(standin, tmp_path, **kwargs))
        return made[-1]

    yield make
    for w in made:
        w.close()


@pytest.fixture
def token_world(drive, tmp_path):
    """World(credentials) on a stand-in of its own that accepts only ``tokens``."""
    made = []

    def make(credentials, *tokens):
        drive.accept_tokens(*tokens)
        made.append(World(drive, tmp_path, credentials=credentials))
        return made[-1]

    yield make
    for w in made:
        w.close()


def ranges_from(pos):
    """The Range headers of a download resumed at ``pos``: chunk after chunk to the end."""
    return [f"bytes={p}-{min(p + CHUNK, len(WEIGHTS)) - 1}" for p in range(pos, len(WEIGHTS), CHUNK)]


def at(when):
    """Where a fault lands: the first request, or the second range (after 64 KiB arrived)."""
    return 0 if when == "start" else 1


# ---------------------------------------------------------------- retried: rate limits, server errors

TRANSIENT = [
    pytest.param(429, "rateLimitExceeded", id="429"),
    pytest.param(403, "userRateLimitExceeded", id="403-userRateLimitExceeded"),
    pytest.param(403, "rateLimitExceeded", id="403-rateLimitExceeded"),
    pytest.param(500, "backendError", id="500"),
    pytest.param(503, "backendError", id="503"),
]


@pytest.mark.parametrize("when", ["start", "mid"])
@pytest.mark.parametrize("status,reason", TRANSIENT)
def test_a_transient_answer_is_retried_with_backoff_and_the_bytes_admitted(world, status, reason, when):
    fault = lambda: world.drive.fail_next(status, reason, times=2, **MEDIA)
    if when == "start":
        fault()
    path = world.get(mid=fault if when == "mid" else None)
    world.assert_admitted(path, world.file(), WEIGHTS)
    i = at(when)
    assert world.ranges() == RANGES[:i] + [RANGES[i]] * 3 + RANGES[i + 1:]
    assert [r.status for r in world.media()][i:i + 3] == [status, status, 206]
    assert world.sleeps == [1.0, 2.0]  # exponential, jitter pinned to its top


@pytest.mark.parametrize("when", ["start", "mid"])
@pytest.mark.parametrize("status,reason", TRANSIENT)
def test_a_transient_answer_that_never_ends_gives_up_after_retries(make_world, status, reason, when):
    world = make_world(retries=3)
    fault = lambda: world.drive.fail_next(status, reason, times=None, **MEDIA)
    if when == "start":
        fault()
    with pytest.raises(RegistryError, match=rf"downloading model.onnx .*Drive answered {status} {reason}"):
        world.get(mid=fault if when == "mid" else None)
    world.assert_nothing_admitted()
    assert len(world.media()) == at(when) + 3 and len(world.sleeps) == 2


# ---------------------------------------------------------------- broken bodies


@pytest.mark.parametrize("when", ["start", "mid"])
@pytest.mark.parametrize("fault", ["truncated", "reset"])
def test_a_broken_body_resumes_at_the_first_missing_byte(world, fault, when):
    def inject():
        if fault == "truncated":  # Content-Length announced, 1000 bytes sent, then FIN
            world.drive.truncate_next(1000, **MEDIA)
        else:  # TCP RST before any answer
            world.drive.reset_next(**MEDIA)

    if when == "start":
        inject()
    path = world.get(mid=inject if when == "mid" else None)
    world.assert_admitted(path, world.file(), WEIGHTS)
    i = at(when)
    start = i * CHUNK
    if fault == "truncated":  # the next request starts after the 1000 bytes that did arrive
        assert world.ranges() == RANGES[:i + 1] + ranges_from(start + 1000)
    else:  # nothing arrived: that range again
        assert world.ranges() == RANGES[:i + 1] + RANGES[i:]
    assert len(world.sleeps) == 1


@pytest.mark.parametrize("fault", ["truncated", "reset"])
def test_a_body_that_keeps_breaking_gives_up(make_world, fault):
    world = make_world(retries=3)
    if fault == "truncated":
        world.drive.truncate_next(1000, times=None, **MEDIA)
    else:
        world.drive.reset_next(times=None, **MEDIA)
    at_byte = 3000 if fault == "truncated" else 0  # 1000 more bytes arrive each time before the FIN
    with pytest.raises(RegistryError, match=rf"failed 3 times in a row at byte {at_byte}"):
        world.get()
    world.assert_nothing_admitted()
    assert len(world.media()) == 3


# ---------------------------------------------------------------- 401 mid-download


def test_a_token_revoked_between_ranges_is_refreshed_once(drive, token_world):
    creds = Refreshable("old", "fresh")
    world = token_world(creds, "old", "fresh")
    # Drive answers the second range 401: "old" was revoked (the client still thinks it valid)
    path = world.get(mid=lambda: drive.fail_next(401, "authError", **MEDIA))
    world.assert_admitted(path, world.file(), WEIGHTS)
    assert [(r.range, r.status, r.authorization) for r in world.media()] == [
        (RANGES[0], 206, "Bearer old"), (RANGES[1], 401, "Bearer old"),
        (RANGES[1], 206, "Bearer fresh"), (RANGES[2], 206, "Bearer fresh"), (RANGES[3], 206, "Bearer fresh")]
    assert creds.refreshes == 1 and world.sleeps == []


def test_a_refreshed_token_that_is_refused_too_fails_cleanly(drive, token_world):
    creds = Refreshable("old", "not-accepted", "never-asked")
    world = token_world(creds, "old")
    with pytest.raises(RegistryError, match=r"downloading model.onnx .*401 authError: the credentials were refused"):
        world.get(mid=lambda: drive.fail_next(401, "authError", **MEDIA))
    world.assert_nothing_admitted()
    assert [(r.status, r.authorization) for r in world.media()] == [
        (206, "Bearer old"), (401, "Bearer old"), (401, "Bearer not-accepted")]  # one refresh only
    assert creds.refreshes == 1 and world.sleeps == []


def test_a_refresh_that_fails_mid_download_fails_cleanly(drive, token_world):
    creds = Refreshable("old", RefreshError("invalid_grant: Token has been expired or revoked."))
    world = token_world(creds, "old")
    with pytest.raises(RegistryError, match=r"credentials were refused or could not be refreshed .*invalid_grant"):
        world.get(mid=lambda: drive.fail_next(401, "authError", **MEDIA))
    world.assert_nothing_admitted()
    assert [r.status for r in world.media()] == [206, 401] and creds.refreshes == 1


# ---------------------------------------------------------------- final refusals: never retried


def test_an_exhausted_download_quota_is_not_retried(world):
    world.drive.set_download_quota(world.file_id(), downloads=0)
    with pytest.raises(RegistryError, match=r"403 downloadQuotaExceeded: .*about 24 hours; not retried"):
        world.get()
    world.assert_nothing_admitted()
    assert len(world.media()) == 1 and world.sleeps == []


def test_a_download_quota_running_out_mid_download_is_not_retried(world):
    world.drive.set_download_quota(world.file_id(), bytes=CHUNK)  # the first range uses it up
    with pytest.raises(RegistryError, match=r"403 downloadQuotaExceeded"):
        world.get()
    world.assert_nothing_admitted()
    assert [(r.range, r.status) for r in world.media()] == [(RANGES[0], 206), (RANGES[1], 403)]
    assert world.sleeps == []


def test_a_file_deleted_after_listing_is_not_retried(world):
    world.drive.delete(world.file_id())
    with pytest.raises(ModelNotFound, match=r"404 notFound: it does not exist or is not shared"):
        world.get()
    world.assert_nothing_admitted()
    assert len(world.media()) == 1 and world.sleeps == []


# ---------------------------------------------------------------- abusive files and the opt-in


def test_the_opt_in_is_typed_into_the_manifest_and_misspellings_are_refused():
    assert parse_manifest(model_json("m")).drive == DriveOptions(acknowledge_abuse=False)
    assert parse_manifest(model_json("m", drive={})).drive.acknowledge_abuse is False
    assert parse_manifest(model_json("m", drive={"acknowledge_abuse": True})).drive.acknowledge_abuse is True
    for bad, where in [({"acknowledge_abuse": "yes"}, "$.drive.acknowledge_abuse"),
                       ({"acknowlege_abuse": True}, "$.drive"), (True, "$.drive")]:
        with pytest.raises(ModelConfigError) as info:
            parse_manifest(model_json("m", drive=bad))
        assert [path for path, _ in info.value.problems] == [where], info.value.problems


def test_a_locator_with_an_unknown_option_is_refused(world):
    file = replace(world.file(), locator=world.file_id() + "#somethingElse")
    with pytest.raises(RegistryError, match="is not a Drive file locator"):
        world.get(file)
    world.assert_nothing_admitted()
    assert world.media() == []


def test_only_an_opted_in_model_carries_the_acknowledgement(world):
    assert world.records["trusted"].manifest.drive.acknowledge_abuse is True
    assert world.records["plain"].manifest.drive.acknowledge_abuse is False
    assert world.file("trusted").locator == world.file_id("trusted") + ACKNOWLEDGE_ABUSE
    assert "#" not in world.file("plain").locator
    # an opted-in file Drive has not flagged: asked plainly (Drive refuses acknowledgeAbuse on it)
    path = world.get(world.file("trusted"))
    world.assert_admitted(path, world.file("trusted"), WEIGHTS[::-1])
    assert world.ranges() == RANGES and all("acknowledgeAbuse" not in r.query for r in world.media())


def test_an_abusive_file_without_the_opt_in_is_refused_once_and_says_how_to_opt_in(world):
    world.drive.flag_abusive(world.file_id())
    with pytest.raises(RegistryError) as info:
        world.get()
    message = str(info.value)
    assert "403 cannotDownloadAbusiveFile: Drive flagged the file as malware or spam" in message
    assert '"drive": {"acknowledge_abuse": true}' in message
    world.assert_nothing_admitted()
    assert len(world.media()) == 1 and world.sleeps == []
    assert "acknowledgeAbuse" not in world.media()[0].query


def test_an_abusive_file_with_the_opt_in_downloads_with_acknowledge_abuse(world):
    fid = world.file_id("trusted")
    world.drive.flag_abusive(fid)
    path = world.get(world.file("trusted"))
    world.assert_admitted(path, world.file("trusted"), WEIGHTS[::-1])
    media = world.media()
    assert [(r.range, r.status, r.query.get("acknowledgeAbuse")) for r in media] == [
        (RANGES[0], 403, None)] + [(rng, 206, "true") for rng in RANGES]
    assert all(r.file_id == fid for r in media) and world.sleeps == []


def test_an_abusive_file_only_its_owner_may_acknowledge_is_refused_after_one_acknowledged_ask(world):
    world.drive.flag_abusive(world.file_id("trusted"), owner_can_acknowledge=False)
    with pytest.raises(RegistryError, match=r"cannotDownloadAbusiveFile: .*refused even with acknowledgeAbuse=true "
                                            r".*only from the file's owner"):
        world.get(world.file("trusted"))
    world.assert_nothing_admitted()
    assert [(r.status, r.query.get("acknowledgeAbuse")) for r in world.media()] == [(403, None), (403, "true")]


def test_a_file_flagged_between_ranges_is_acknowledged_from_there(world):
    fid = world.file_id("trusted")
    path = world.get(world.file("trusted"), mid=lambda: world.drive.flag_abusive(fid))
    world.assert_admitted(path, world.file("trusted"), WEIGHTS[::-1])
    assert [(r.range, r.status, r.query.get("acknowledgeAbuse")) for r in world.media()] == [
        (RANGES[0], 206, None), (RANGES[1], 403, None)] + [(rng, 206, "true") for rng in RANGES[1:]]


# ---------------------------------------------------------------- zero bytes, HTML


def test_a_zero_byte_file_is_admitted(world):
    empty = world.file("empty")
    assert (empty.size, empty.md5) == (0, hashlib.md5(b"").hexdigest())
    world.drive.fail_next(503, **MEDIA)
    path = world.get(empty)
    world.assert_admitted(path, empty, b"")
    assert [(r.range, r.status) for r in world.media()] == [(None, 503), (None, 200)]  # never a Range on it


def test_an_html_page_instead_of_the_bytes_is_refused_at_once(world):
    world.drive.inject("status", status=200, body=HTML, headers={"Content-Type": "text/html; charset=utf-8"},
                       **MEDIA)
    with pytest.raises(RegistryError, match="Drive sent an HTML page instead of the file's bytes"):
        world.get()
    world.assert_nothing_admitted()
    assert len(world.media()) == 1 and world.sleeps == []


@pytest.mark.parametrize("page_size", [len(HTML), 100_000], ids=["short-page", "long-page"])
def test_an_html_page_in_the_middle_of_a_download_never_enters_the_cache(world, page_size):
    """An interstitial answered 200 to the second range (at byte 65536). The client takes a
    200 for the whole file and skips the bytes it has; it checks for HTML only at byte 0 of
    the file, so here it does not see the page. A page shorter than what arrived ends short
    and is asked again (the stand-in then sends the whole file: right bytes); a longer one
    is handed over as the file's tail and the cache's size check refuses it. Either way,
    never admitted; a client that refuses the page itself passes too."""
    page = HTML[:-len(b"</body></html>")] + b"x" * (page_size - len(HTML)) + b"</body></html>"
    assert len(page) == page_size

    def inject():
        world.drive.inject("status", status=200, body=page, headers={"Content-Type": "text/html"}, **MEDIA)

    try:
        path = world.get(mid=inject)
    except (RegistryError, IntegrityError) as exc:
        assert "HTML page" in str(exc) or "size mismatch: expected 200000 bytes, got 100000" in str(exc)
        world.assert_nothing_admitted()
    else:
        world.assert_admitted(path, world.file(), WEIGHTS)
    assert len(world.media()) <= 3


# ---------------------------------------------------------------- content changed since the listing


@pytest.mark.parametrize("checksums", ["md5+sha256", "md5"])
def test_content_changed_since_the_listing_is_refused_by_checksum(world, checksums):
    file = world.file()
    if checksums == "md5":  # Drive lists no sha256 for some files: md5 alone must catch it
        file = replace(file, sha256=None)
    world.drive.update_file(world.file_id(), OTHER)  # same size, other bytes
    algorithm = "sha256" if file.sha256 else "md5"
    expected = getattr(file, algorithm)
    with pytest.raises(IntegrityError, match=rf"model.onnx: {algorithm} mismatch: expected {expected}"):
        world.get(file)
    world.assert_nothing_admitted()
    assert world.ranges() == RANGES  # no retry: the bytes arrived fine, they are other bytes
    # listed again, the new checksums admit the new bytes
    fresh = next(m for m in world.reg.list_models().models if m.folder == "plain").primary
    world.assert_admitted(world.get(fresh), fresh, OTHER)


def test_content_changed_between_ranges_is_refused_by_checksum(world):
    """Ranges 2..4 come from the new version: a stitched file of the right size."""
    with pytest.raises(IntegrityError, match=r"model.onnx: sha256 mismatch"):
        world.get(mid=lambda: world.drive.update_file(world.file_id(), OTHER))
    world.assert_nothing_admitted()
    assert world.ranges() == RANGES


@pytest.mark.parametrize("size", [1000, len(WEIGHTS) + 1])
def test_a_size_changed_since_the_listing_is_refused_at_the_first_range(world, size):
    world.drive.update_file(world.file_id(), OTHER[:size] if size < len(OTHER) else OTHER + b"x")
    with pytest.raises(RegistryError, match=rf"the file changed on Drive \(now {size} bytes, listed as 200000\); "
                                            r"list the registry again"):
        world.get()
    world.assert_nothing_admitted()
    assert len(world.media()) == 1
    # The client dropped the connection with the range's body unread (TCP RST): give the
    # stand-in's handler thread a moment, so the traceback socketserver prints for that
    # lands in this test's captured output rather than on the terminal between tests.
    time.sleep(0.05)


# ---------------------------------------------------------------- 1000 models: requests per listing


def test_a_listing_of_1000_models_costs_a_fixed_number_of_requests(drive, tmp_path):
    n = 1000
    started = time.monotonic()
    root = drive.add_folder("CVAT_Models")
    json_ids = {}
    for i in range(n):
        folder = drive.add_folder(f"m{i:04d}", root)
        json_ids[i] = drive.add_file("model.json", folder, json.dumps(model_json(f"m{i:04d}")).encode(),
                                     "application/json")
        drive.add_file("model.onnx", folder, b"w%d" % i)
    seeded = time.monotonic()
    service = build_service(drive.root_url, Credentials(token="test-token"), timeout=10)
    reg = DriveRegistry(service, cache_dir=tmp_path, sleep=lambda s: None)

    first = reg.list_models()
    listed = time.monotonic()
    assert len(first.models) == n and not first.errors and first.total_folders == n
    pages = math.ceil(n / 1000)  # 1: the model folders, pageSize=1000
    batches = math.ceil(n / PARENTS_PER_QUERY)  # 25: model.json and weights of 40 folders per query
    lists = [r for r in drive.requests if r.path == "/drive/v3/files"]
    # root lookup + 1 page of 1000 model folders + 25 batched children queries, + each model.json once
    assert len(lists) == 1 + pages + batches == 27
    assert drive.count(**MEDIA) == n
    assert len(drive.requests) == 27 + n == 1027

    drive.requests.clear()
    again = reg.list_models()
    assert [(m.folder, m.version) for m in again.models] == [(m.folder, m.version) for m in first.models]
    assert drive.count(**MEDIA) == 0  # every model.json's md5 unchanged: no body downloaded
    # No request per model: pages + batches, 26 for N=1000 (2 for N <= 40), against 2N+1 = 2001
    # for a walk folder by folder; it grows by one query per 40 folders, not per folder.
    assert len(drive.requests) == pages + batches == 26

    drive.update_file(json_ids[500], json.dumps(model_json("m0500", "1.1.0")).encode())
    drive.requests.clear()
    changed = reg.list_models()
    assert next(m for m in changed.models if m.folder == "m0500").version == "1.1.0"
    assert drive.count(**MEDIA) == 1 and drive.count(file_id=json_ids[500]) == 1
    assert len(drive.requests) == 26 + 1 == 27

    log.info("1000 models: seeding %.2f s, first listing %.2f s (%d requests), repeats %.2f s",
             seeded - started, listed - seeded, 27 + n, time.monotonic() - listed)
