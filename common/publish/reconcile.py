"""Reconcile rendered functions with what the dashboard holds: ``plan`` then ``apply``.

``plan`` is pure: it compares the desired :class:`FunctionConfig` set with the
project's current functions by the config-hash annotation, so an unchanged
model costs no write (a Docker PUT means downtime, nuclio.md §6 "Redeploys").
Functions without our managed labels, or in another project, are never touched.
A managed function whose last deploy failed (``error``, ``unhealthy``) is redeployed
even when its hash is unchanged, so a transient deploy failure heals on the next run.

``apply`` re-reads each function right before writing and decides again, so two
runs at once do not write the same thing twice and do not undo each other. A
POST that loses a race (409) becomes a re-read. Every write is followed by polling
to a terminal state. A failed update is rolled back to the previous body, so the
last good version keeps serving. A failed create is deleted again, so CVAT never
lists a broken function. One bad function never stops the others.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from common.publish import CONFIG_HASH_ANNOTATION, MANAGED_LABEL, MODEL_LABEL, PROJECT_LABEL
from common.publish.config import FunctionConfig
from common.publish.dashboard import (
    FAILED_STATES,
    TERMINAL_STATES,
    DashboardClient,
    DashboardError,
    FunctionExists,
    function_body,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What a run would do. Names are sorted; each function appears in one field only
    (a conflicting desired name also appears in ``foreign``, as the function holding it)."""

    create: tuple[FunctionConfig, ...] = ()
    update: tuple[FunctionConfig, ...] = ()
    delete: tuple[str, ...] = ()          # managed, model gone from the registry, delete_stale on
    unchanged: tuple[str, ...] = ()       # managed, stored hash == desired hash
    kept: tuple[str, ...] = ()            # managed, in ``keep`` (registry entry errored): left alone
    stale: tuple[str, ...] = ()           # managed, model gone, but delete_stale off: left alone
    foreign: tuple[str, ...] = ()         # not managed by us: never written
    conflicts: tuple[tuple[str, str], ...] = ()   # (name, reason): desired configs not written

    @property
    def writes(self) -> int:
        """How many writes the plan asks for (before apply re-checks each)."""
        return len(self.create) + len(self.update) + len(self.delete)


@dataclass(frozen=True)
class ApplyResult:
    """What a run did. ``failed`` holds (name, reason) for every function not brought to
    its desired state, conflicts included; ``rolled_back`` names failed updates whose
    previous body was restored."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    stale: tuple[str, ...] = ()
    foreign: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()
    rolled_back: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


def _metadata_map(function: Any, key: str) -> Mapping[str, Any]:
    """``metadata[key]`` of a function object, or {} when the dashboard sent something else
    (a listing is outside input: a malformed entry must not crash the run)."""
    meta = function.get("metadata") if isinstance(function, Mapping) else None
    value = meta.get(key) if isinstance(meta, Mapping) else None
    return value if isinstance(value, Mapping) else {}


def is_managed(function: Mapping[str, Any] | None) -> bool:
    """True for a function object (or body) carrying ``MANAGED_LABEL: "true"`` and a
    ``MODEL_LABEL``. render.py sets both and Nuclio keeps labels immutable, so a function
    with only a copied managed label (hand-made) is not ours and is never written."""
    labels = _metadata_map(function, "labels")
    model = labels.get(MODEL_LABEL)
    return labels.get(MANAGED_LABEL) == "true" and isinstance(model, str) and bool(model)


def in_project(function: Mapping[str, Any] | None, project: str) -> bool:
    """False for a function labelled with another Nuclio project (names are unique per
    namespace, so a ``get`` can return one): never ours to write or delete."""
    return _metadata_map(function, "labels").get(PROJECT_LABEL, project) == project


def is_failed(function: Mapping[str, Any] | None) -> bool:
    """True when the dashboard reports the function's deploy as failed (error, unhealthy)."""
    status = function.get("status") if isinstance(function, Mapping) else None
    return isinstance(status, Mapping) and status.get("state") in FAILED_STATES


def stored_hash(function: Mapping[str, Any] | None) -> str:
    """The config-hash annotation of a function object ("" when absent)."""
    return str(_metadata_map(function, "annotations").get(CONFIG_HASH_ANNOTATION, ""))


def desired_hash(config: FunctionConfig) -> str:
    """``config.hash``, else the hash annotation in its body ("" when neither)."""
    return config.hash or stored_hash(config.body)


def _problem(config: FunctionConfig) -> str | None:
    """Why a desired config must not be written, or None."""
    meta = config.body.get("metadata") if isinstance(config.body, Mapping) else None
    if not isinstance(meta, Mapping) or meta.get("name") != config.name:
        return f"rendered body's metadata.name does not match {config.name!r}"
    if not is_managed(config.body):
        if _metadata_map(config.body, "labels").get(MANAGED_LABEL) != "true":
            return f"rendered body lacks the label {MANAGED_LABEL}=true"
        return f"rendered body lacks the label {MODEL_LABEL}"
    body_hash = stored_hash(config.body)
    if not body_hash:
        return f"rendered body lacks the annotation {CONFIG_HASH_ANNOTATION}"
    if config.hash and config.hash != body_hash:
        return "FunctionConfig.hash differs from the body's hash annotation"
    return None


def _foreign_reason(name: str) -> str:
    return (f"a function named {name!r} exists in the project and is not managed by registry-sync "
            f"(no {MANAGED_LABEL}=true and {MODEL_LABEL} labels); left untouched")


def plan(
    desired: Sequence[FunctionConfig],
    current: Mapping[str, dict],
    *,
    keep: Collection[str] = (),
    delete_stale: bool = True,
) -> Plan:
    """Compare ``desired`` with ``current`` (a ``list_functions()`` answer).

    ``keep``: managed functions whose registry entry errored this run; they are left as
    they are instead of being deleted. A name both desired and in ``keep`` is planned
    from its desired config.
    """
    create: list[FunctionConfig] = []
    update: list[FunctionConfig] = []
    unchanged: list[str] = []
    conflicts: list[tuple[str, str]] = []
    wanted: set[str] = set()
    for config in sorted(desired, key=lambda c: c.name):
        if config.name in wanted:
            conflicts.append((config.name, (f"two registry models render to the function name {config.name!r} "
                                            f"(folder {config.folder!r} not published)")))
            continue
        wanted.add(config.name)
        problem = _problem(config)
        existing = current.get(config.name)
        if problem is not None:
            conflicts.append((config.name, problem))
        elif existing is None:
            create.append(config)
        elif not is_managed(existing):
            conflicts.append((config.name, _foreign_reason(config.name)))
        elif stored_hash(existing) == desired_hash(config) and not is_failed(existing):
            unchanged.append(config.name)
        else:  # changed, or unchanged but its deploy failed (a later redeploy may succeed)
            update.append(config)

    delete: list[str] = []
    kept: list[str] = []
    stale: list[str] = []
    foreign: list[str] = []
    for name in sorted(current):
        if not is_managed(current[name]):
            foreign.append(name)
        elif name in wanted:
            continue
        elif name in keep:
            kept.append(name)
        elif delete_stale:
            delete.append(name)
        else:
            stale.append(name)
    return Plan(tuple(create), tuple(update), tuple(delete), tuple(unchanged), tuple(kept), tuple(stale),
                tuple(foreign), tuple(conflicts))


@dataclass
class _Tally:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)

    def fail(self, name: str, reason: str) -> None:
        log.warning("registry-sync: %s: %s", name, reason)
        self.failed.append((name, reason))


class _Applier:
    def __init__(self, client: DashboardClient, tally: _Tally, wait_timeout: float, poll: float):
        self.client, self.tally, self.wait_timeout, self.poll = client, tally, wait_timeout, poll

    def publish(self, config: FunctionConfig) -> None:
        """Bring one function to ``config``, deciding on a fresh read of it."""
        existing = self.client.get(config.name)
        if existing is None:
            try:
                self.client.create(config.body)
            except FunctionExists:
                # Another run created it between our read and our POST: decide on its copy.
                existing = self.client.get(config.name)
                if existing is None:
                    self.tally.fail(config.name, "create answered 409 but the function is gone; try again")
                    return
            else:
                self._after_create(config)
                return
        if not in_project(existing, self.client.project):
            self.tally.foreign.append(config.name)
            self.tally.fail(config.name, f"a function named {config.name!r} exists in another Nuclio project "
                                         f"(names are unique per namespace); left untouched")
        elif not is_managed(existing):
            self.tally.foreign.append(config.name)
            self.tally.fail(config.name, _foreign_reason(config.name))
        elif stored_hash(existing) == desired_hash(config) and not is_failed(existing):
            self.tally.unchanged.append(config.name)
        else:
            self._update(config, existing)

    def _after_create(self, config: FunctionConfig) -> None:
        state, message = self.client.wait_terminal(config.name, self.wait_timeout, self.poll)
        if state in FAILED_STATES:
            # Never leave a broken function for CVAT to list.
            try:
                self.client.delete(config.name)
                outcome = "removed again"
            except DashboardError as exc:
                outcome = f"and removing it failed: {exc}"
            self.tally.fail(config.name, f"deploy ended {state}: {message or 'no message'}; {outcome}")
        elif state not in TERMINAL_STATES:
            self.tally.fail(config.name, f"created, but {message}")
        else:
            log.info("registry-sync: created %s (%s)", config.name, state)
            self.tally.created.append(config.name)

    def _update(self, config: FunctionConfig, existing: dict) -> None:
        previous = function_body(existing, self.client.namespace)
        previous_state = str((existing.get("status") or {}).get("state") or "")
        self.client.update(config.name, config.body)
        state, message = self.client.wait_terminal(config.name, self.wait_timeout, self.poll)
        if state in TERMINAL_STATES and state not in FAILED_STATES:
            log.info("registry-sync: updated %s (%s)", config.name, state)
            self.tally.updated.append(config.name)
            return
        if state not in FAILED_STATES:
            self.tally.fail(config.name, f"updated, but {message}")
            return
        reason = f"update ended {state}: {message or 'no message'}"
        if previous_state in FAILED_STATES:
            self.tally.fail(config.name, f"{reason}; the previous version was {previous_state} too, left as is")
            return
        # Put the last good version back so CVAT keeps a working function.
        try:
            self.client.update(config.name, previous)
            back, back_message = self.client.wait_terminal(config.name, self.wait_timeout, self.poll)
        except DashboardError as exc:
            self.tally.fail(config.name, f"{reason}; rollback failed: {exc}")
            return
        if back in TERMINAL_STATES and back not in FAILED_STATES:
            self.tally.rolled_back.append(config.name)
            self.tally.fail(config.name, f"{reason}; rolled back to the previous version")
        else:
            self.tally.fail(config.name, f"{reason}; rollback ended {back}: {back_message or 'no message'}")

    def remove(self, name: str) -> None:
        existing = self.client.get(name)
        if existing is None:
            log.info("registry-sync: %s is gone already", name)
            return
        if not is_managed(existing) or not in_project(existing, self.client.project):
            self.tally.foreign.append(name)
            return
        if self.client.delete(name):
            log.info("registry-sync: deleted %s (its model left the registry)", name)
            self.tally.deleted.append(name)


def apply(plan: Plan, client: DashboardClient, *, wait_timeout: float = 300.0, poll: float = 1.0) -> ApplyResult:
    """Carry ``plan`` out against ``client``'s dashboard and project."""
    tally = _Tally(unchanged=list(plan.unchanged), foreign=list(plan.foreign))
    for name, reason in plan.conflicts:
        tally.fail(name, reason)
    writes = [*plan.create, *plan.update]
    if writes or plan.delete:
        try:
            client.ensure_project()
        except DashboardError as exc:
            for config in writes:
                tally.fail(config.name, f"project {client.project!r} unavailable: {exc}")
            for name in plan.delete:
                tally.fail(name, f"project {client.project!r} unavailable: {exc}")
            writes, deletes = [], []
        else:
            deletes = list(plan.delete)
        applier = _Applier(client, tally, wait_timeout, poll)
        for config in sorted(writes, key=lambda c: c.name):
            try:
                applier.publish(config)
            except DashboardError as exc:
                tally.fail(config.name, str(exc))
        for name in deletes:
            try:
                applier.remove(name)
            except DashboardError as exc:
                tally.fail(name, str(exc))
    return ApplyResult(
        created=tuple(tally.created), updated=tuple(tally.updated), deleted=tuple(tally.deleted),
        unchanged=tuple(sorted(set(tally.unchanged))), kept=plan.kept, stale=plan.stale,
        foreign=tuple(sorted(set(tally.foreign))), failed=tuple(tally.failed),
        rolled_back=tuple(tally.rolled_back))
