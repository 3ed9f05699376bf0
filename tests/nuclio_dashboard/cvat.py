"""How CVAT's lambda_manager reads a dashboard listing (cvat-contract.md §1.3–1.5, CVAT v2.73).

Written from the contract text. ``cvat_list`` skips functions with an
:class:`InvalidFunctionMetadataError` (as ``LambdaGateway.list`` does) and lets every other
error escape (CVAT answers 500 and lists nothing). ``cvat_function`` is ``gateway.get``: any
metadata error escapes.
"""

from __future__ import annotations

import json

KINDS = ("detector", "interactor", "reid", "tracker")


class InvalidFunctionMetadataError(Exception):
    """The function is logged and skipped from CVAT's list."""


def _parse_attributes(attributes) -> list[dict]:
    out, seen = [], set()
    for attr in attributes:
        parsed = {"name": attr["name"], "input_type": attr["input_type"], "values": attr["values"]}
        if parsed["name"] in seen:
            raise InvalidFunctionMetadataError(f"duplicate attribute name {parsed['name']!r}")
        seen.add(parsed["name"])
        out.append(parsed)
    return out


def parse_labels(labels) -> list[dict]:
    if not isinstance(labels, list):
        raise TypeError(f"label spec must be a JSON array, got {type(labels).__name__}")
    out, seen = [], set()
    for label in labels:
        parsed = {"name": label["name"], "type": label.get("type", "any"),
                  "attributes": _parse_attributes(label.get("attributes", []))}
        if parsed["type"] == "skeleton":
            parsed["sublabels"] = parse_labels(label["sublabels"])
            parsed["svg"] = label["svg"]
        if parsed["name"] in seen:
            raise InvalidFunctionMetadataError(f"duplicate label name {parsed['name']!r}")
        seen.add(parsed["name"])
        out.append(parsed)
    return out


def cvat_function(data: dict) -> dict:
    """One dashboard function object → the dict CVAT's ``GET /api/lambda/functions`` shows."""
    name = data["metadata"]["name"]
    meta = data["metadata"]["annotations"]
    description = data["spec"]["description"]
    data["status"].get("httpPort")   # `status` must exist; httpPort is optional
    kind = meta.get("type")
    if kind not in KINDS:
        raise InvalidFunctionMetadataError(f"{name}: unknown function type {kind!r}")
    labels = parse_labels(json.loads(meta.get("spec") or "[]"))
    out = {"id": name, "kind": kind, "labels_v2": labels, "description": description,
           "name": meta.get("name", name), "version": int(meta.get("version", 1))}
    if kind == "interactor":
        out.update({"min_pos_points": int(meta.get("min_pos_points", 1)),
                    "min_neg_points": int(meta.get("min_neg_points", -1)),
                    "startswith_box": bool(meta.get("startswith_box", False)),
                    "startswith_box_optional": bool(meta.get("startswith_box_optional", False)),
                    "help_message": meta.get("help_message", ""),
                    "animated_gif": meta.get("animated_gif", "")})
    if kind == "tracker":
        if "supported_shape_types" in meta:
            shapes = [s.strip() for s in meta["supported_shape_types"].split(",") if s.strip()]
            if not shapes:
                raise InvalidFunctionMetadataError(f"{name}: supported_shape_types is empty")
        else:
            shapes = ["rectangle"]
        out["supported_shape_types"] = shapes
    return out


def cvat_list(functions_json) -> list[dict]:
    """The listing CVAT would show for a ``GET /api/functions`` body (dict, or its JSON text)."""
    if isinstance(functions_json, (str, bytes)):
        functions_json = json.loads(functions_json)
    if not isinstance(functions_json, dict):
        raise TypeError("dashboard listing must be a JSON object keyed by function name")
    out = []
    for data in functions_json.values():
        try:
            out.append(cvat_function(data))
        except InvalidFunctionMetadataError:
            continue
    return out


def cvat_ids(functions_json) -> list[str]:
    """Just the ids CVAT would list."""
    return [f["id"] for f in cvat_list(functions_json)]
