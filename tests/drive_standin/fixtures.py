"""pytest fixtures: a running Drive stand-in and the real google-api-python-client pointed at it.

Use them from a test module with::

    pytest_plugins = ("tests.drive_standin.fixtures",)
"""

from __future__ import annotations

import gc
import json
import os
import warnings

import pytest

from .server import DriveStandIn

# Never let google-auth probe the GCE metadata server (a non-loopback address) from tests,
# and never send loopback traffic through a proxy.
os.environ.setdefault("NO_GCE_CHECK", "true")
for _var in ("no_proxy", "NO_PROXY"):
    _current = os.environ.get(_var, "")
    if "127.0.0.1" not in _current:
        os.environ[_var] = ",".join(p for p in (_current, "127.0.0.1", "localhost") if p)

TEST_TOKEN = "test-token"


def discovery_doc(root_url: str) -> dict:
    """The static drive v3 discovery doc from the client wheel, rebased onto ``root_url``."""
    from googleapiclient import discovery_cache

    doc = json.loads(discovery_cache.get_static_doc("drive", "v3"))
    doc["rootUrl"] = root_url
    doc["baseUrl"] = root_url + doc.get("servicePath", "drive/v3/")
    return doc


def build_service(root_url: str, *, token: str | None = TEST_TOKEN, http=None, developer_key: str | None = None):
    """The real Drive v3 client against a stand-in (``build_from_document``, no network discovery).

    With ``http`` (e.g. ``httplib2.Http(timeout=1)`` or an ``AuthorizedHttp``), credentials are not
    passed (the client forbids both); ``developer_key`` models the API-key path.
    """
    from googleapiclient.discovery import build_from_document

    doc = discovery_doc(root_url)
    if http is not None or developer_key is not None:
        import httplib2

        return build_from_document(doc, http=http or httplib2.Http(timeout=30), developerKey=developer_key)
    from google.oauth2.credentials import Credentials

    return build_from_document(doc, credentials=Credentials(token=token))


@pytest.fixture
def drive():
    """A started :class:`DriveStandIn`, stopped at teardown."""
    standin = DriveStandIn()
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
        # The clients' keep-alive sockets to the stopped server are garbage now:
        # collect them here, not as a stray ResourceWarning inside a later test.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()


@pytest.fixture
def drive_service(drive):
    """``googleapiclient`` Drive v3 resource talking to ``drive`` with ``Bearer test-token``."""
    return build_service(drive.root_url)
