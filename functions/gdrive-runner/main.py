"""Nuclio entry points of the generic runner: one registry model per function.

``init_context`` loads the model named by the environment (see
common/runner.py) once per worker process; ``handler`` answers CVAT's detector
payload. Errors become JSON ``{"error": ...}`` with the status their class
carries (4xx for bad requests); the worker keeps serving.
"""

import json
import logging

from common.cvat import parse_detector_request
from common.errors import PackError
from common.runner import RunnerSettings, load_model


def init_context(context):
    logging.basicConfig(level=logging.INFO)
    model = load_model(RunnerSettings.from_env())
    context.user_data.model = model
    manifest = model.record.manifest
    context.logger.info_with("model ready", model=manifest.name, version=manifest.version,
                             runtime=manifest.runtime.name, device=model.runtime.device)


def _json(context, status, payload):
    return context.Response(body=json.dumps(payload), headers={}, content_type="application/json",
                            status_code=status)


def handler(context, event):
    try:
        request = parse_detector_request(event.body)
        shapes = context.user_data.model.pipeline.annotate(request.image, request.threshold)
    except PackError as exc:
        if exc.http_status >= 500:
            context.logger.error_with("request failed", error=str(exc))
        return _json(context, exc.http_status, {"error": str(exc)})
    except Exception as exc:  # never let a bug answer Nuclio's text/plain traceback
        context.logger.error_with("unexpected error", error=repr(exc))
        return _json(context, 500, {"error": f"internal error: {exc}"})
    return _json(context, 200, shapes)
