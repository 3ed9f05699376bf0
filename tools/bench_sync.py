"""``make bench``, registry-sync part: what one registry-sync run costs for 100 and 1000
models, against the Drive v3 stand-in (tests/drive_standin) and the Nuclio dashboard
stand-in (tests/nuclio_dashboard), both on loopback in this process. All figures are
measured in this run.

The registry is ``gdrive:CVAT_Models`` with N model folders (each a model.json and a
tiny weights file), read with a service-account key whose ``token_uri`` is the Drive
stand-in's token endpoint. Each run is the production path:
``run_sync(SyncSettings.from_env(env))`` with ``SYNC_SMOKE_TESTS=false`` and one
``SYNC_WORK_DIR`` kept across the runs (its Drive listing memo included), so every run
opens the registry and the dashboard client afresh, as a cron tick does. The runs:

* first: an empty dashboard; every model is created (one POST each);
* unchanged: nothing changed since the first run (expected: no writes);
* one changed: the last model's model.json gets a new version through the Drive
  stand-in's store (expected: exactly one PUT).

Per run: Drive API requests (in brackets, of which ``alt=media``, i.e. model.json
bodies; the one OAuth token grant per run is counted apart), dashboard requests (every
request the dashboard stand-in logged: listings, reads, project calls and writes), of
which function writes (POST/PUT/DELETE on /api/functions), the report's counts
(created/updated/unchanged/errors) and the wall time of ``run_sync``. What the requests
should add up to: on Drive, the root lookup (every run opens the registry afresh), one
page of model folders and one batched query per 40 folders, plus one ``alt=media`` per
model.json not in the memo; on the dashboard, for the first run the listing, the
project's GET and POST, and per model a fresh read, the POST and one status read; for
an unchanged run the listing alone; for one changed model the listing, the project's
GET, a fresh read, the PUT and one status read.

Each size is measured ``repeat`` times (3), each time on fresh stand-ins and a fresh
work dir; the counts must agree between the repeats, the times are medians. One
throw-away run of 1 model comes first, so that imports and first-call setup land in no
figure.

Baseline, measured just before each run on the same state: a registry opened the same
way (``open_registry``: the key file loaded, the service built) and a bare
``list_models`` of it, with a listing memo of its own kept across the runs like the
sync's, plus a bare ``GET /api/functions`` through the sync's dashboard client: reading
both sides once, the least any sync must do. Ratio = sync / baseline.

Deploy latency: the dashboard stand-in's ``ready_after`` is 0, i.e. a POST or PUT answers
202 and the function is ``ready`` on the first status read after it. That is the fastest
honest setting: the sync still waits for every deploy (one GET per write), but no
simulated build time is added; a real Nuclio build takes seconds to minutes per function
and is not part of these figures (and with any ``ready_after`` > 0 the client's 1 s
status poll would add a second per write, 1000 s for the first run of 1000 models).
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from tools.bench_drive import loopback_only, manifest

log = logging.getLogger("bench")

SIZES = (100, 1000)
ROOT_NAME = "CVAT_Models"
SA_EMAIL = "registry-sync@bench.iam.gserviceaccount.com"
RUNS = ("first", "unchanged", "changed")
TITLES = {"first": "first", "unchanged": "unchanged", "changed": "one changed"}


def _service_account_key(path: Path, token_uri: str) -> Path:
    """A fresh service-account key file (mode 0600) whose grants go to ``token_uri``."""
    from tests.drive_standin.keys import new_private_key_pem, write_service_account_key

    return write_service_account_key(path, token_uri, new_private_key_pem(), SA_EMAIL)


def _seed(drive: Any, n: int) -> list[str]:
    """CVAT_Models/m0000 .. m<n-1>, each {model.json, model.onnx}; returns the model.json ids."""
    root = drive.add_folder(ROOT_NAME)
    ids = []
    for i in range(n):
        folder = drive.add_folder(f"m{i:04d}", root)
        ids.append(drive.add_file("model.json", folder, manifest(f"m{i:04d}"), "application/json"))
        drive.add_file("model.onnx", folder, b"w%d" % i)
    return ids


def measure(n: int, workdir: Path) -> dict[str, dict[str, Any]]:
    """The three runs' figures for ``n`` model folders: ``{run: {drive, media, grants, dashboard,
    writes: {method: count}, report: {...}, seconds, listing_s, dash_list_s}}``."""
    from common.publish.dashboard import DashboardClient
    from common.publish.sync import SyncSettings, run_sync
    from common.registry.opening import open_registry
    from tests.drive_standin import DriveStandIn
    from tests.nuclio_dashboard import DashboardStandIn

    with DriveStandIn() as drive, DashboardStandIn(ready_after=0.0) as dash:
        drive.accept_tokens()  # bearer checking on: only tokens granted to the key pass
        manifests = _seed(drive, n)
        key = _service_account_key(workdir / "sa.json", drive.root_url + "token")
        env = {"MODEL_REGISTRY": f"gdrive:{ROOT_NAME}", "NUCLIO_DASHBOARD_URL": dash.url,
               "SYNC_WORK_DIR": str(workdir / "sync"), "SYNC_SMOKE_TESTS": "false",
               "SYNC_DEPLOY_TIMEOUT": "30", "DRIVE_ROOT_URL": drive.root_url,
               "GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY": str(key),
               # As deployed: the key file mounted into the published functions.
               "PUBLISH_CREDENTIALS_HOST_PATH": str(key)}
        settings = SyncSettings.from_env(env)
        last = f"m{n - 1:04d}"

        def baseline() -> tuple[float, float]:
            started = time.perf_counter()
            registry = open_registry(env["MODEL_REGISTRY"], env, cache_dir=workdir / "baseline-listing")
            found = registry.list_models()
            listing = time.perf_counter() - started
            if len(found.models) != n or found.errors:
                raise RuntimeError(f"bare listing of {n} models: {len(found.models)} models, {found.errors[:3]}")
            client = DashboardClient(settings.dashboard_url, namespace=settings.publish.namespace,
                                     project=settings.publish.project)
            started = time.perf_counter()
            client.list_functions()
            return listing, time.perf_counter() - started

        def sync(what: str) -> dict[str, Any]:
            listing_s, dash_list_s = baseline()
            drive.requests.clear()
            dash.clear_log()
            started = time.perf_counter()
            report = run_sync(SyncSettings.from_env(env)).as_dict()
            seconds = time.perf_counter() - started
            if report["errors"] or report["synced_count"] != n:
                raise RuntimeError(f"{what} sync of {n} models: {report['synced_count']} synced, "
                                   f"errors {report['errors'][:3]}")
            return {"drive": drive.count(path_prefix="/drive/"), "media": drive.count(alt="media"),
                    "grants": drive.count(path_prefix="/token"), "dashboard": len(dash.requests),
                    "writes": dash.write_counts,
                    "report": {k: len(report[k]) for k in ("created", "updated", "unchanged", "deleted")}
                    | {"errors": report["error_count"]},
                    "updated": report["updated"], "seconds": seconds,
                    "listing_s": listing_s, "dash_list_s": dash_list_s}

        figures = {"first": sync("first"), "unchanged": sync("unchanged")}
        drive.update_file(manifests[-1], manifest(last, "1.0.1"))
        figures["changed"] = sync("one-changed")
        if figures["changed"]["updated"] != [f"gdrive-{last}"]:
            raise RuntimeError(f"one-changed sync updated {figures['changed']['updated']}, not gdrive-{last}")
        return figures


def _writes(counts: dict[str, int]) -> str:
    return " ".join(f"{counts[m]} {m}" for m in sorted(counts)) or "0"


TIMES = ("seconds", "listing_s", "dash_list_s")


def _combine(n: int, repeats: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """One figure set from the repeats: the counts (the same in every repeat, or the bench
    fails), each time the median of the repeats."""
    out = {}
    for what in RUNS:
        counts = [{k: v for k, v in r[what].items() if k not in TIMES} for r in repeats]
        if any(c != counts[0] for c in counts[1:]):
            raise RuntimeError(f"{what} sync of {n} models: the counts differ between repeats: {counts}")
        out[what] = counts[0] | {k: statistics.median(r[what][k] for r in repeats) for k in TIMES}
    return out


def run(sizes: tuple[int, ...] = SIZES, repeat: int = 3,
        tmp: Path | None = None) -> dict[int, dict[str, dict[str, Any]]]:
    """Measure ``repeat`` times per size and log the table (called by tools.bench); returns the
    figures per size (counts, median times)."""
    loopback_only()
    # The sync logs a line per model; quiet it for the measurement and give the levels back,
    # since the benchmark also runs inside the test process.
    loggers = [logging.getLogger(name) for name in ("common", "googleapiclient", "google")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        return _run(sizes, repeat, tmp)
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _run(sizes: tuple[int, ...], repeat: int, tmp: Path | None) -> dict[int, dict[str, dict[str, Any]]]:
    if tmp is not None:
        tmp.mkdir(parents=True, exist_ok=True)

    def fresh(n: int) -> dict[str, dict[str, Any]]:
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-sync-{n}-", dir=tmp))
        try:
            return measure(n, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    fresh(1)  # imports and first-call setup, so that they land in no figure
    results = {n: _combine(n, [fresh(n) for _ in range(max(1, repeat))]) for n in sizes}

    log.info("\nregistry-sync against the Drive v3 and dashboard stand-ins (loopback), median of %d runs of each; "
             "deploys ready at once (dashboard stand-in ready_after=0)", max(1, repeat))
    header = (f"{'models':>6} {'run':<11} {'Drive (media)':>13} {'dashboard':>9} {'writes':>9} "
              f"{'created/updated/unchanged/errors':>31} {'sync ms':>8} {'list ms':>8} {'GET ms':>7} "
              f"{'ratio':>6}")
    log.info("%s\n%s", header, "-" * len(header))
    for n, figures in results.items():
        for what in RUNS:
            f = figures[what]
            r = f["report"]
            floor = f["listing_s"] + f["dash_list_s"]
            log.info("%6d %-11s %6d (%4d) %9d %9s %31s %8.1f %8.1f %7.1f %6.2f", n, TITLES[what], f["drive"],
                     f["media"], f["dashboard"], _writes(f["writes"]),
                     f"{r['created']}/{r['updated']}/{r['unchanged']}/{r['errors']}", 1000 * f["seconds"],
                     1000 * f["listing_s"], 1000 * f["dash_list_s"], f["seconds"] / floor)
    grants = sorted({f["grants"] for figures in results.values() for f in figures.values()})
    log.info("Drive: Drive API requests (in brackets: alt=media, i.e. model.json bodies); OAuth token grants per "
             "run, on top: %s. dashboard: every request; writes: POST/PUT/DELETE on /api/functions (the "
             "first run also creates the cvat project: one GET and one POST on /api/projects).", "/".join(map(str, grants)))
    log.info("list ms: open_registry + a bare list_models (own listing memo, same state); GET ms: a bare "
             "GET /api/functions; ratio = sync / (list + GET)")
    return results
