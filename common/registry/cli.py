"""``cvat-registry`` (``python -m common.registry.cli``): the registry from the command line.

The same commands on a local registry and on Google Drive. The registry is
``--registry SPEC`` or ``MODEL_REGISTRY`` (``local:<folder>``, a folder path,
``gdrive:<root folder name>``, ``gdrive-id:<folder id>``); Drive credentials
come from the environment as the runner's do (common/registry/drive_auth.py),
``DRIVE_ROOT_URL`` included. ``push`` and ``remove`` ask for the full ``drive``
scope (an API key can only read).

=====================================================  =====================================================
``list [--search T] [--framework F] [--type T]``       current version of every model (``--tag`` repeatable,
``     [--tag TAG] [--json]``                          every tag must match; search: name/display
                                                       name/description, any case)
``show NAME [--version V] [--json]``                   one model version: metadata, files, all versions
``validate PATH``                                      check a local model folder (nothing is sent)
``push PATH``                                          validate, then add the model, or a new version of it
``pull NAME [--version V] DEST``                       download a version's files and model.json into DEST
``versions NAME``                                      every version, current first
``remove NAME``                                        Drive: to the trash; local: into <root>/.trash/
``sync [--dashboard URL] [--dry-run] [--no-delete]``   publish every model to CVAT through the Nuclio
``     [--no-smoke] [--json]``                         dashboard, as the registry-sync function does
                                                       (``--dry-run``: print the diff, write nothing)
``export DIR [--no-smoke]``                            write each model's rendered Nuclio config as
                                                       ``DIR/<function>/function.yaml`` (nuctl, GitOps)
=====================================================  =====================================================

``sync`` and ``export`` read the same settings as the registry-sync function
(common/publish/sync.py, common/publish/render.py); their cache (lock, Drive
listing memo, smoke-test copies) is ``SYNC_WORK_DIR`` or
``~/.cache/cvat-registry``. Both exit 1 when some model could not be
published or exported (the others still are), after listing why.

Exit status: 0 done, 1 the request failed (one line on stderr, ``cvat-registry:
error: ...``; validate lists one problem per line), 2 bad usage. Progress of
copies and uploads is logged on stderr (``--quiet`` hides it, ``-v`` shows more).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.atomic import atomic_write
from common.errors import PackError
from common.registry import ModelRecord, Registry
from common.registry.opening import open_registry
from common.registry.writer import (MODEL_JSON, FolderInvalid, validate_folder,
                                    writer_for)

PROG = "cvat-registry"
REGISTRY_SETTING = "MODEL_REGISTRY"


class UserError(PackError):
    """A request the tool cannot carry out: exit 1 with the message."""


# --------------------------------------------------------------------- opening the registry

# --------------------------------------------------------------------- output helpers

def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _tags(record: ModelRecord) -> list[str]:
    tags = record.manifest.raw.get("tags") or []
    return [str(t) for t in tags] if isinstance(tags, list) else []


def _summary(record: ModelRecord) -> dict[str, Any]:
    m = record.manifest
    return {"name": m.name, "folder": record.folder, "version": m.version, "framework": m.framework,
            "type": m.type, "display_name": m.display_name, "description": m.description, "tags": _tags(record),
            "file_name": m.file_name, "size": sum(f.size for f in record.files)}


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


# --------------------------------------------------------------------- commands

def cmd_list(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    listing = _registry(args, env).list_models()
    needle = (args.search or "").lower()
    rows = []
    for r in sorted(listing.models, key=lambda r: r.manifest.name):
        m = r.manifest
        if needle and not any(needle in s.lower() for s in (m.name, r.folder, m.display_name, m.description)):
            continue
        if args.framework and m.framework != args.framework:
            continue
        if args.type and m.type != args.type:
            continue
        if args.tag and not set(args.tag) <= set(_tags(r)):
            continue
        rows.append(r)
    for e in listing.errors:
        _err(f"{PROG}: warning: skipped folder {e.folder}: {e.error}")
    if args.json:
        doc = {"models": [_summary(r) for r in rows],
               "errors": [{"folder": e.folder, "error": e.error} for e in listing.errors],
               "total_folders": listing.total_folders}
        _out(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    if not rows:
        _out("no models found")
        return 0
    table = [["NAME", "VERSION", "FRAMEWORK", "TYPE", "TAGS", "DISPLAY NAME"]]
    table += [[r.manifest.name, r.version, r.manifest.framework, r.manifest.type, ",".join(_tags(r)),
               r.manifest.display_name] for r in rows]
    for line in _table(table):
        _out(line)
    return 0


def cmd_show(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    registry = _registry(args, env)
    record = registry.resolve(args.name, args.version)
    versions = registry.versions(args.name)
    if args.json:
        doc = _summary(record) | {"current": record.current, "versions": versions,
                                  "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "md5": f.md5}
                                            for f in record.files]}
        _out(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    m = record.manifest
    lines = [("name", m.name), ("folder", record.folder),
             ("version", m.version + ("" if record.current else " (previous version)")),
             ("display name", m.display_name), ("framework", m.framework), ("type", m.type),
             ("description", m.description or "-"), ("tags", ", ".join(_tags(record)) or "-"),
             ("labels", str(len(m.labels))), ("versions", ", ".join(versions))]
    for key, value in lines:
        _out(f"{key + ':':<14}{value}")
    _out("files:")
    for f in record.files:
        digest = f"sha256 {f.sha256}" if f.sha256 else f"md5 {f.md5}"
        _out(f"  {f.path}  {f.size} bytes  {digest}")
    return 0


def cmd_versions(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    versions = _registry(args, env).versions(args.name)
    for i, v in enumerate(versions):
        _out(f"{v}  (current)" if i == 0 else v)
    return 0


def cmd_validate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    folder = validate_folder(args.path)
    m = folder.manifest
    _check_file_contents(folder)
    _out(f"ok: {args.path}: {m.name} {m.version} ({m.framework} {m.type}), {len(folder.files)} files, "
         f"{folder.total_bytes} bytes")
    return 0


def _check_file_contents(folder: Any) -> None:
    """What the runner checks before loading (common.runtimes.filecheck): a state_dict, a pickle
    that would run code, a truncated or wrong-format file... each as its own problem. A file
    whose content is no known format is left to the runner (it names it at start)."""
    from common.runtimes.filecheck import ModelFileError, file_format, validate_files

    m = folder.manifest
    primary = folder.root / m.file_name
    if file_format(primary) == "unknown":
        return
    try:
        validate_files(m, {rel: folder.root / rel for rel in (m.file_name, *m.extra_files)})
    except ModelFileError as exc:
        raise FolderInvalid([f"{folder.root / exc.file}: {str(exc).removeprefix(exc.file + ': ')}"]) from None


def cmd_push(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    folder = validate_folder(args.path)  # before anything is opened: a bad folder needs no credentials
    result = writer_for(_registry(args, env, write=True)).push(folder)
    _out(f"pushed {result.name} {result.version}: {result.files} files, {result.bytes} bytes")
    if result.previous:
        _out(f"previous version {result.previous} moved to {result.name}/previous_versions/v{result.previous}/")
    return 0


def cmd_remove(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    registry = _registry(args, env, write=True)
    record = registry.resolve(args.name)
    where = writer_for(registry).remove(args.name)
    _out(f"removed {record.folder} (moved to {where})")
    return 0


def cmd_pull(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    registry = _registry(args, env)
    record = registry.resolve(args.name, args.version)
    dest = Path(args.dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} exists and is not an empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    for f in record.files:
        target = dest / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        _fetch_checked(registry, f, target)
    (dest / MODEL_JSON).write_text(json.dumps(dict(record.manifest.raw), indent=2) + "\n", encoding="utf-8")
    _out(f"pulled {record.manifest.name} {record.version} into {dest}: {len(record.files) + 1} files, "
         f"{sum(f.size for f in record.files)} bytes")
    return 0


class _HashingSink:
    def __init__(self, raw: Any):
        self.raw, self.md5, self.sha256, self.size = raw, hashlib.md5(), hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.sha256.update(data)
        self.size += len(data)
        return self.raw.write(data)


def _fetch_checked(registry: Registry, f: Any, target: Path) -> None:
    with atomic_write(target) as raw:
        sink = _HashingSink(raw)
        registry.fetch(f, sink)
        bad = (sink.size != f.size or (f.sha256 and sink.sha256.hexdigest() != f.sha256.lower())
               or (f.md5 and sink.md5.hexdigest() != f.md5.lower()))
        if bad:
            raise UserError(f"{f.path}: the downloaded bytes do not match the registry's size or checksum")


def _registry(args: argparse.Namespace, env: Mapping[str, str], write: bool = False) -> Registry:
    spec = args.registry or env.get(REGISTRY_SETTING, "").strip()
    if not spec:
        raise UserError(f"no registry: give --registry or set {REGISTRY_SETTING} "
                        f"(local:<folder>, gdrive:<folder name>, gdrive-id:<folder id>)")
    return open_registry(spec, env, write=write)  # ModelConfigError (bad spec, no credentials): exit 1


# --------------------------------------------------------------------- publishing

def _sync_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Any:
    from common.publish.sync import SyncSettings

    merged = dict(env)
    if args.registry:
        merged[REGISTRY_SETTING] = args.registry
    if not merged.get(REGISTRY_SETTING, "").strip():
        raise UserError(f"no registry: give --registry or set {REGISTRY_SETTING}")
    if not merged.get("SYNC_WORK_DIR", "").strip():
        # Lock, listing memo and smoke-test copies; MODEL_CACHE_DIR stays what the
        # published functions use.
        merged["SYNC_WORK_DIR"] = str(Path.home() / ".cache" / "cvat-registry")
    if getattr(args, "dashboard", None):
        merged["NUCLIO_DASHBOARD_URL"] = args.dashboard
    kind, _, where = merged[REGISTRY_SETTING].strip().partition(":")
    if kind == "local" and not where.startswith("/"):
        _err(f"{PROG}: warning: the published functions get MODEL_REGISTRY={merged[REGISTRY_SETTING].strip()}, a "
             f"path relative to their own working directory: give the registry's absolute path as the "
             f"functions see it, and PUBLISH_REGISTRY_HOST_DIR to mount it")
    if getattr(args, "no_delete", False):
        merged["SYNC_DELETE_STALE"] = "false"
    if args.no_smoke:
        merged["SYNC_SMOKE_TESTS"] = "false"
    return SyncSettings.from_env(merged)


def _print_errors(errors: list[dict[str, str]]) -> None:
    for e in errors:
        _err(f"{PROG}: {e['folder']}: {e['error']}")


def cmd_sync(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from common.publish.export import diff_text
    from common.publish.sync import run_sync

    report = run_sync(_sync_settings(args, env), dry_run=args.dry_run)
    answer = report.as_dict()
    if args.json:
        if args.dry_run and report.plan is not None:
            answer["diff"] = diff_text(report.plan, report.current)
        _out(json.dumps(answer, indent=2, sort_keys=True))
    else:
        if args.dry_run and report.plan is not None:
            text = diff_text(report.plan, report.current)
            if text:
                sys.stdout.write(text)
        for key in ("created", "updated", "deleted", "unchanged", "kept", "left_alone"):
            if answer[key]:
                what = key.replace("_", " ")
                if args.dry_run and key in ("created", "updated", "deleted"):
                    what = f"would be {what}"
                _out(f"{what}: {', '.join(answer[key])}")
        _out(f"{answer['synced_count']} of {answer['total_folders']} model folders synced, "
             f"{answer['error_count']} errors")
    _print_errors(report.errors)
    return 1 if report.errors else 0


def cmd_export(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from common.cache import ModelCache
    from common.publish.export import export_configs
    from common.publish.sync import ListingFailed, SyncReport, collect

    settings = _sync_settings(args, env)
    registry = open_registry(settings.publish.registry, settings.env,
                             cache_dir=settings.cache_dir / "registry-listing")
    report = SyncReport()
    try:
        desired = collect(registry, settings, report, ModelCache(settings.cache_dir, settings.publish.cache_size))
    except ListingFailed as exc:
        raise UserError(str(exc)) from None
    written = export_configs(desired.configs, args.dir)
    for path in written:
        _out(str(path))
    _print_errors(report.errors)
    return 1 if report.errors else 0


# --------------------------------------------------------------------- entry point

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Browse and manage the CVAT model registry.")
    parser.add_argument("--registry", metavar="SPEC",
                        help=f"local:<folder>, gdrive:<folder name> or gdrive-id:<id> (default: ${REGISTRY_SETTING})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is done")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list models (current versions)")
    p.add_argument("--search", metavar="TEXT", help="in name, display name and description (any case)")
    p.add_argument("--framework", metavar="F")
    p.add_argument("--type", metavar="T")
    p.add_argument("--tag", metavar="TAG", action="append", help="repeatable; every tag must match")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="one model's details")
    p.add_argument("name")
    p.add_argument("--version", metavar="V")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("validate", help="check a local model folder")
    p.add_argument("path")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("push", help="add a model, or a new version of one")
    p.add_argument("path")
    p.set_defaults(func=cmd_push)

    p = sub.add_parser("pull", help="download a model version into a folder")
    p.add_argument("name")
    p.add_argument("--version", metavar="V")
    p.add_argument("dest")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("versions", help="a model's versions, current first")
    p.add_argument("name")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("remove", help="Drive: move to the trash; local: move into .trash/")
    p.add_argument("name")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser("sync", help="publish every model to CVAT through the Nuclio dashboard")
    p.add_argument("--dashboard", metavar="URL", help="the dashboard (default: $NUCLIO_DASHBOARD_URL)")
    p.add_argument("--dry-run", action="store_true", help="print what would change; write nothing")
    p.add_argument("--no-delete", action="store_true", help="keep functions whose model left the registry")
    p.add_argument("--no-smoke", action="store_true", help="skip the samples/ smoke inference")
    p.add_argument("--json", action="store_true", help="the run's report as JSON")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("export", help="write each model's Nuclio config as DIR/<function>/function.yaml")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--no-smoke", action="store_true", help="skip the samples/ smoke inference")
    p.set_defaults(func=cmd_export)
    return parser


def _setup_logging(verbose: bool, quiet: bool) -> Any:
    """Send the pack's logs to stderr for this run; returns the undo (main restores the
    loggers as they were, so an embedding process or a test keeps its own setup)."""
    common = logging.getLogger("common")
    progress = logging.getLogger("common.registry.progress")
    saved = (common.level, common.propagate, progress.level)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    common.addHandler(handler)
    common.setLevel(logging.INFO if verbose else logging.ERROR)
    common.propagate = False
    progress.setLevel(logging.WARNING if quiet else logging.INFO)

    def restore() -> None:
        common.removeHandler(handler)
        common.setLevel(saved[0])
        common.propagate = saved[1]
        progress.setLevel(saved[2])

    return restore


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on bad usage
    restore = _setup_logging(args.verbose, args.quiet)
    env = os.environ if env is None else env
    try:
        return args.func(args, env)
    except FolderInvalid as exc:
        _err(f"{PROG}: error: {args.path}: not a valid model folder")
        for problem in exc.problems:
            _err(f"  {problem}")
        return 1
    except (PackError, OSError) as exc:
        text = str(exc) if not isinstance(exc, OSError) else f"{exc.filename or ''}: {exc.strerror or exc}"
        _err(f"{PROG}: error: {' '.join(text.split())}")
        return 1
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted")
        return 130
    finally:
        restore()


if __name__ == "__main__":
    sys.exit(main())
