"""Nuclio entry points of registry-sync: publish every registry model to CVAT.

The cron trigger runs a sync every ``interval``; the HTTP trigger runs one on
demand (``nuctl invoke registry-sync``), a dry run with the body
``{"dry_run": true}`` (the answer then carries the diff). Kubernetes'
CronJob mode arrives as an HTTP event with ``X-Nuclio-Invoke-Trigger: cron``;
both are handled alike. The answer and the log carry the run's report
(common/publish/sync.py).
"""

import json
import logging

from common import __version__
from common.errors import BadRequest, PackError
from common.publish.sync import SyncSettings, run_sync


def init_context(context):
    logging.basicConfig(level=logging.INFO)
    # googleapiclient logs each request URL at DEBUG, API key (key=...) included.
    logging.getLogger("googleapiclient.discovery").setLevel(logging.INFO)
    # Bad settings stop the start with a clear message instead of failing every run.
    context.user_data.settings = settings = SyncSettings.from_env()
    settings.check_work_dir()
    context.logger.info_with("registry-sync ready", pack_version=__version__, registry=settings.publish.registry,
                             dashboard=settings.dashboard_url, delete_stale=settings.delete_stale,
                             smoke_tests=settings.smoke_tests)


def _json(context, status, payload):
    return context.Response(body=json.dumps(payload), headers={}, content_type="application/json",
                            status_code=status)


def _dry_run(event) -> bool:
    if event.trigger.kind != "http":
        return False  # cron events carry bytes (their configured body); never a dry run
    body = event.body
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        if not body.strip():
            return False
        try:
            body = json.loads(body)
        except ValueError:
            raise BadRequest("request body is not valid JSON; send {} or {\"dry_run\": true}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object, e.g. {\"dry_run\": true}")
    dry = body.get("dry_run", False)
    if not isinstance(dry, bool):
        raise BadRequest("dry_run must be true or false")
    return dry


def handler(context, event):
    from common.publish.export import diff_text

    try:
        dry_run = _dry_run(event)
        report = run_sync(context.user_data.settings, dry_run=dry_run)
        answer = report.as_dict()
        if dry_run and report.plan is not None:
            answer["diff"] = diff_text(report.plan, report.current)
    except PackError as exc:
        context.logger.error_with("registry-sync failed", error=str(exc))
        return _json(context, exc.http_status, {"error": str(exc)})
    except Exception as exc:  # never Nuclio's text/plain traceback
        context.logger.error_with("registry-sync failed", error=repr(exc))
        return _json(context, 500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
    log = context.logger.error_with if report.listing_failed else context.logger.info_with
    log("registry-sync run", trigger=event.trigger.kind, **{k: v for k, v in answer.items() if k != "diff"})
    return _json(context, 502 if report.listing_failed else 200, answer)
