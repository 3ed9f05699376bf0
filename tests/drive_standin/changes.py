"""The changes feed (shared/reference/gdrive.md §1.8, §7 item 12): ``changes/startPageToken``
and ``changes?pageToken=``. A mixin for DriveStandIn.

Every mutation (seeding API or write endpoint) appends one entry with the item as it was right
after that mutation; tokens are the 1-based position of the next entry, as numeric strings.
"""

from __future__ import annotations

from . import fields as fieldmask
from .errors import DriveError, invalid_param
from .store import Change, Item, rfc3339
from .wire import Principal, Response, bool_param, login_required, page_size_param

MAX_CHANGES_PAGE = 1000
DEFAULT_CHANGES_PAGE = 100
DEFAULT_CHANGE_MASK = {
    "kind": None, "nextPageToken": None, "newStartPageToken": None,
    "changes": {"kind": None, "changeType": None, "time": None, "removed": None, "fileId": None,
                "file": {"kind": None, "id": None, "name": None, "mimeType": None, "resourceKey": None}},
}


class ChangesMixin:
    """Change recording plus the two changes endpoints; mixed into DriveStandIn."""

    # ================================================================ recording
    def _record_change(self, item: Item, *, removed: bool = False) -> None:
        """Append one change for ``item`` (call with the store lock held, after the mutation)."""
        st = self.store
        with st.lock:
            snapshot = None if removed else self._render(item, Principal("token"))
            st.changes.append(Change(st.next_change_token, item.id, removed, st.tick(), item.drive_id, snapshot))

    def _delete_tree(self, item_id: str) -> None:
        """Remove an item and its descendants, one ``removed`` change each (children first)."""
        st = self.store
        with st.lock:
            doomed = st.descendants(st.require(item_id).id)
            for doomed_id in reversed(doomed):
                item = st.items.pop(doomed_id)
                self._record_change(item, removed=True)

    @property
    def changes(self) -> list[Change]:
        """Every recorded change, oldest first (``changes[i].token == i + 1``)."""
        return self.store.changes

    def start_page_token(self) -> str:
        """What ``changes.getStartPageToken`` would answer now."""
        return str(self.store.next_change_token)

    # ================================================================ endpoints
    def _changes_start_token(self, query: dict, headers: dict, principal: Principal) -> Response:
        if principal.kind != "token":
            raise login_required()
        tree = self._fields_tree(query, "StartPageToken")
        drive_id = query.get("driveId") or query.get("teamDriveId")
        if drive_id and drive_id not in self.store.drives:
            raise DriveError(404, "notFound", f"Shared drive not found: {drive_id}", location="driveId")
        payload = {"kind": "drive#startPageToken", "startPageToken": self.start_page_token()}
        return self._json_response(200, fieldmask.apply(payload, tree), headers, query)

    def _changes_list(self, query: dict, headers: dict, principal: Principal) -> Response:
        if principal.kind != "token":
            raise login_required()
        tree = self._fields_tree(query, "ChangeList") or DEFAULT_CHANGE_MASK
        raw = query.get("pageToken")
        if raw is None or raw == "":
            raise DriveError(400, "required", "Required parameter: pageToken", location="pageToken")
        page_size = page_size_param(query, DEFAULT_CHANGES_PAGE, MAX_CHANGES_PAGE)
        supports = bool_param(query, "supportsAllDrives") or bool_param(query, "supportsTeamDrives")
        include = bool_param(query, "includeItemsFromAllDrives") or bool_param(query, "includeTeamDriveItems")
        include_removed = bool_param(query, "includeRemoved", True)
        my_drive_only = bool_param(query, "restrictToMyDrive")
        drive_id = query.get("driveId") or query.get("teamDriveId") or None
        if drive_id is not None and drive_id not in self.store.drives:
            raise DriveError(404, "notFound", f"Shared drive not found: {drive_id}", location="driveId")
        spaces = {s.strip() for s in query.get("spaces", "drive").split(",")}
        if not spaces <= {"drive", "appDataFolder", "photos"}:
            raise invalid_param("spaces", f"Invalid value '{query.get('spaces')}'.")
        with self.store.lock:
            log_ = self.store.changes
            if not raw.isdigit() or not 1 <= int(raw) <= len(log_) + 1:
                raise invalid_param("pageToken", "Invalid Value")
            pos = int(raw) - 1
            picked: list[Change] = []
            while pos < len(log_) and len(picked) < page_size:
                change = log_[pos]
                pos += 1
                if change.removed and not include_removed:
                    continue
                if "drive" not in spaces:
                    continue
                if drive_id is not None:
                    if change.drive_id != drive_id or not (include and supports):
                        continue
                elif change.drive_id is not None and (my_drive_only or not (include and supports)):
                    continue
                picked.append(change)
            payload: dict = {"kind": "drive#changeList"}
            if pos < len(log_):
                payload["nextPageToken"] = str(pos + 1)
            else:
                payload["newStartPageToken"] = str(len(log_) + 1)
        entries = []
        for change in picked:
            entry: dict = {"kind": "drive#change", "changeType": "file", "time": rfc3339(change.time),
                           "removed": change.removed, "fileId": change.file_id}
            if change.file is not None:
                entry["file"] = change.file
            entries.append(entry)
        payload["changes"] = entries
        return self._json_response(200, fieldmask.apply(payload, tree), headers, query)
