"""Nuclio entry points of the generic runner: one registry model per function.

``init_context`` loads the model named by the environment (see
common/runner.py) once per worker process and starts its background refresh
(common/refresh.py: a new version in the registry is loaded off the request
path and swapped in); ``handler`` answers CVAT's payload of the model's kind
(detector, interactor, tracker or reid: common/serving.py picks the pipeline)
with the model current when the request arrives, kept for the whole request. Errors
become JSON ``{"error": ...}`` with the status their class carries (4xx for
bad requests); the worker keeps serving.
"""

import json
import logging

from common import __version__
from common.errors import PackError
from common.runner import RunnerSettings, start_refresher


def init_context(context):
    logging.basicConfig(level=logging.INFO)
    settings = RunnerSettings.from_env()

    def swapped(new, old):
        context.user_data.model = new
        manifest = new.record.manifest
        context.logger.info_with("model swapped", model=manifest.name, version=manifest.version,
                                 previous=old.record.manifest.version)

    refresher = start_refresher(settings, on_swap=swapped)  # loads the model first
    context.user_data.refresher = refresher
    context.user_data.model = model = refresher.current  # the model now serving (kept current on swaps)
    set_termination = getattr(context.platform, "set_termination_callback", None)
    if set_termination is not None:  # nuclio_sdk.test's platform has none
        set_termination(refresher.stop)
    manifest = model.record.manifest
    context.logger.info_with("model ready", pack_version=__version__, model=manifest.name, version=manifest.version,
                             runtime=manifest.runtime.name, device=model.runtime.device,
                             refresh_seconds=settings.refresh_seconds)


def _json(context, status, payload):
    return context.Response(body=payload if isinstance(payload, str) else json.dumps(payload), headers={},
                            content_type="application/json", status_code=status)


def handler(context, event):
    try:
        # Read once: a swap during this request does not change the model it runs on.
        answer = context.user_data.refresher.current.pipeline.handle(event.body)
        # Serialised here, inside the guard: only plain JSON goes out (NaN/Infinity are not JSON,
        # numpy values are not serialisable), and a failure is a JSON 500, never a traceback.
        # Compact: a detector's mask is every pixel of its box (a 1080p person is ~1M values),
        # and the spaces alone would add a quarter to the bytes and the encoding time.
        body = json.dumps(answer, allow_nan=False, separators=(",", ":"))
    except PackError as exc:
        if exc.http_status >= 500:
            context.logger.error_with("request failed", error=str(exc))
        return _json(context, exc.http_status, {"error": str(exc)})
    except Exception as exc:  # never let a bug answer Nuclio's text/plain traceback
        context.logger.error_with("unexpected error", error=repr(exc))
        return _json(context, 500, {"error": f"internal error: {exc}"})
    return _json(context, 200, body)
