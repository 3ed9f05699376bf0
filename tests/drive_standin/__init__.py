"""A local Drive v3 stand-in for tests (see shared/reference/gdrive.md §7).

Typical use::

    from tests.drive_standin import DriveStandIn
    with DriveStandIn() as drive:
        folder = drive.add_folder("CVAT_Models")
        drive.add_file("model.json", folder, b"{}", "application/json")
        service = build_service(drive.root_url)   # see fixtures.py
"""

from .errors import DriveError
from .faults import Fault, RecordedRequest, RequestLog
from .query import QueryError, compile_query, escape
from .server import DriveStandIn
from .store import DOC_MIME, FOLDER_MIME, SHEET_MIME, SHORTCUT_MIME, Item

__all__ = [
           "DOC_MIME",
           "FOLDER_MIME",
           "SHEET_MIME",
           "SHORTCUT_MIME",
           "DriveError",
           "DriveStandIn",
           "Fault",
           "Item",
           "QueryError",
           "RecordedRequest",
           "RequestLog",
           "compile_query",
           "escape",
]
