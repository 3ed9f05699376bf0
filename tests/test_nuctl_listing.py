"""deploy/nuctl_listing.py: the names remove.sh reads from ``nuctl get function -o json``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.nuctl_listing import ListingError, names, parse

REPO = Path(__file__).resolve().parent.parent
PACK = {"cvat-gdrive-pack/managed": "true", "cvat-gdrive-pack/model": "m"}


def fn(name: str, labels: dict | None = None) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": {}, "status": {"state": "ready"}}


LISTED = [fn("registry-sync", PACK), fn("gdrive-a", PACK), fn("yolov7"),
          fn("hand-made", {"cvat-gdrive-pack/managed": "true"}),
          fn("other-copy", {**PACK, "nuclio.io/project-name": "other"}),
          fn("gdrive-b", {**PACK, "nuclio.io/project-name": "cvat"})]


@pytest.mark.parametrize("text", [
    json.dumps(LISTED),                                              # an array
    "".join(json.dumps(f, indent=2) + "\n" for f in LISTED),          # one object after another
    "\n".join(json.dumps(f) for f in LISTED),
])
def test_every_form_nuctl_prints_gives_the_same_names(text):
    functions = parse(text)
    assert [f["metadata"]["name"] for f in functions] == [
        "registry-sync", "gdrive-a", "yolov7", "hand-made", "other-copy", "gdrive-b"]
    # Only the pack's own (both labels, CVAT's project), registry-sync left to "sync".
    assert names(functions, "managed") == ["gdrive-a", "gdrive-b"]
    assert names(functions, "sync", "cvat-gdrive-pack") == ["registry-sync"]


def test_registry_sync_in_another_project_is_someone_elses():
    theirs = [fn("registry-sync", {"nuclio.io/project-name": "someone-else"})]
    assert names(theirs, "sync", "cvat-gdrive-pack") == []
    ours = [fn("registry-sync", {"nuclio.io/project-name": "cvat-gdrive-pack"})]
    assert names(ours, "sync", "cvat-gdrive-pack") == ["registry-sync"]


def test_a_function_listed_twice_is_named_once():
    text = json.dumps([fn("gdrive-a", PACK)]) + "\n" + json.dumps(fn("gdrive-a", PACK))
    assert names(parse(text), "managed") == ["gdrive-a"]


def test_log_lines_before_the_json_are_skipped(caplog):
    text = "26.12.04 17:02:05.101 nuctl (I) Getting functions\n" + json.dumps([fn("gdrive-a", PACK)])
    assert names(parse(text), "managed") == ["gdrive-a"]
    assert "skipped what nuctl printed before its listing" in caplog.text


@pytest.mark.parametrize("text", ["", "  \n", "No functions found", "No functions found.\n", "[]",
                                  "26.12.04 nuctl (I) Getting functions\nNo functions found\n"])
def test_no_function(text):
    assert parse(text) == []


def test_one_function_is_one_object():
    assert names(parse(json.dumps(fn("gdrive-a", PACK))), "managed") == ["gdrive-a"]


@pytest.mark.parametrize("text, message", [
    ("functions: none", "answered what is not JSON: 'functions: none'"),
    ("[{\"metadata\": {\"name\": \"a\"}}] trailing", "answered what is not JSON: 'trailing'"),
    ("42", "answered what is not JSON: '42'"),                                 # a listing is [ or {
    ("null", "answered what is not JSON: 'null'"),
    ('"registry-sync"', "answered what is not JSON: '\"registry-sync\"'"),
    ("[42]", "not a Nuclio function: 42"),
    ("[null]", "not a Nuclio function: null"),
    ('{"a": {"metadata": {"name": "a"}}}', "not a Nuclio function"),          # a map of functions
    ('[{"metadata": null}]', 'not a Nuclio function: {"metadata": null}'),
    ('[{"metadata": {"name": 5}}]', "not a Nuclio function"),
    ('[{"metadata": {"name": "evil\\ncvat-own"}}]', "not a Nuclio function"),  # would split into two names
    ('[{"metadata": {"name": "--platform"}}]', "not a Nuclio function"),       # would read as a flag
    ('[{"metadata": {"name": "cvat-own\\n"}}]', "not a Nuclio function"),     # would delete cvat-own
    ("[[" + "[" * 100_000 + "]" * 100_000 + "]]", "nested too deeply"),
])
def test_what_is_not_a_listing_is_refused(text, message):
    with pytest.raises(ListingError) as caught:
        parse(text)
    assert message in str(caught.value)


def test_command_line_prints_names_or_exits_2():
    run = lambda which, text: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "deploy.nuctl_listing", which], input=text, capture_output=True, text=True,
        cwd=REPO)
    done = run("managed", json.dumps(LISTED))
    assert (done.returncode, done.stdout) == (0, "gdrive-a\ngdrive-b\n")
    refused = run("managed", "[1]")
    assert refused.returncode == 2 and "not a Nuclio function: 1" in refused.stderr and refused.stdout == ""


def test_command_line_reads_bytes_that_are_not_utf8():
    listing = json.dumps([fn("gdrive-a", PACK)]).replace('"spec": {}', '"spec": {"description": "caf\\u00e9"}')
    raw = listing.encode().replace(b"caf\\u00e9", b"caf\xe9")   # a Latin-1 byte in someone's description
    done = subprocess.run([sys.executable, "-m", "deploy.nuctl_listing", "managed"], input=raw,
                          capture_output=True, cwd=REPO, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8",
                                                             "PYTHONUTF8": "0"})
    assert (done.returncode, done.stdout) == (0, b"gdrive-a\n"), done.stderr


def test_sync_needs_the_project():
    done = subprocess.run([sys.executable, "-m", "deploy.nuctl_listing", "sync"], input="[]", capture_output=True,
                          text=True, cwd=REPO)
    assert done.returncode == 2 and "sync needs --project" in done.stderr
