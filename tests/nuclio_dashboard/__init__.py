"""A local Nuclio dashboard stand-in for tests (shared/reference/nuclio.md §2, §7 layer 4).

Typical use::

    from tests.nuclio_dashboard import DashboardStandIn, call, cvat_list, CVAT_HEADERS
    with DashboardStandIn() as dash:
        dash.add_project("cvat")
        call(dash.url, "POST", "/api/functions", spec, {"x-nuclio-project-name": "cvat"})
        status, listing = call(dash.url, "GET", "/api/functions", headers=CVAT_HEADERS)
        assert [f["id"] for f in cvat_list(listing)] == ["runner-yolov8n"]
"""

from .client import CVAT_HEADERS, call
from .cvat import (
    InvalidFunctionMetadataError,
    cvat_function,
    cvat_ids,
    cvat_list,
    parse_labels,
)
from .server import DashboardStandIn, LoggedRequest
from .validate import (
    PROJECT_LABEL,
    RESERVED_NAMES,
    DashboardError,
    enrich_function,
    validate_function,
)

__all__ = [
    "CVAT_HEADERS",
    "PROJECT_LABEL",
    "RESERVED_NAMES",
    "DashboardError",
    "DashboardStandIn",
    "InvalidFunctionMetadataError",
    "LoggedRequest",
    "call",
    "cvat_function",
    "cvat_ids",
    "cvat_list",
    "enrich_function",
    "parse_labels",
    "validate_function",
]
