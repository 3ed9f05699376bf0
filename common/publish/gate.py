"""The validation gate: nothing reaches the dashboard that CVAT would choke on or skip.

CVAT v2.73 parses every function of the dashboard listing on every Models page
load (cvat-contract.md §1.3, §1.5): some faults only hide the function, others
(bad JSON in ``spec``, a label without ``name``, a non-integer ``version``...)
make the whole listing fail with HTTP 500, so one bad registry entry would blank
the page for everybody. :func:`check_function` refuses all of them, and what the
dashboard itself would refuse (nuclio.md §1.1, §1.3, §1.4), with one
:class:`PublishRefused` naming the rule. :func:`check_files` refuses a model
whose files are missing or empty; :func:`smoke_test` runs the model on its
``samples/`` pictures through the runner's own loading path before it is
published. docs/publishing.md lists every rule.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from common.errors import PackError, RuntimeLoadError
from common.publish import CONFIG_HASH_ANNOTATION
from common.publish.config import FunctionConfig, config_hash
from common.publish.naming import CVAT_ID, DNS_LABEL, LABEL_VALUE, MAX_NAME, RESERVED_NAMES
from common.registry import ModelRecord, Registry, RemoteFile

log = logging.getLogger(__name__)

KINDS = ("detector", "interactor", "reid", "tracker")
LABEL_TYPES = ("any", "rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton", "tag")
INPUT_TYPES = ("number", "checkbox", "radio", "select", "text")
SHAPE_TYPES = ("rectangle", "polygon", "polyline", "points", "ellipse", "cuboid", "mask", "skeleton")
INTEGER_ANNOTATIONS = ("version", "min_pos_points", "min_neg_points")  # CVAT calls int() on them
BOOLEAN_ANNOTATIONS = ("startswith_box", "startswith_box_optional")  # CVAT calls bool() on the string
FALSE_LOOKING = frozenset({"", "false", "0", "no", "off", "none", "null"})
MIN_REQUEST_BODY = 64 << 20
_INTEGER = re.compile(r"^-?[0-9]+$")
MAX_SAMPLE_BYTES = 32 << 20  # a sample picture larger than this is left out of the smoke test


class PublishRefused(PackError):
    """The model (version) must not be published; ``reason`` says why."""

    http_status = 422

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ---- the function config --------------------------------------------------------


def check_function(config: FunctionConfig) -> None:
    """Raise PublishRefused unless CVAT v2.73 would list ``config`` and the dashboard deploy it."""
    body = config.body
    if not isinstance(body, Mapping):
        raise PublishRefused("the function body must be an object")
    meta, spec = body.get("metadata"), body.get("spec")
    if not isinstance(meta, Mapping) or not isinstance(spec, Mapping):
        raise PublishRefused("the function body needs 'metadata' and 'spec' objects")
    _check_name(meta.get("name"), config.name)
    labels = meta.get("labels", {})
    if not isinstance(labels, Mapping) or not all(isinstance(k, str) and isinstance(v, str) and
                                                  LABEL_VALUE.match(v) and len(v) <= MAX_NAME
                                                  for k, v in labels.items()):
        raise PublishRefused(f"metadata.labels must map names to label values (at most {MAX_NAME} characters of "
                             f"[A-Za-z0-9-_.], alphanumeric at both ends): {labels!r}")
    annotations = meta.get("annotations")
    if not isinstance(annotations, Mapping):
        raise PublishRefused("metadata.annotations is missing (CVAT reads it for every function)")
    for key, value in annotations.items():
        if not isinstance(value, str):
            raise PublishRefused(f"annotation {key!r} is {type(value).__name__}, not a string "
                                 f"(Nuclio annotations are strings)")
    _check_annotations(annotations)
    _check_spec(spec)
    if config.hash:
        stored = annotations.get(CONFIG_HASH_ANNOTATION)
        if stored != config.hash or config_hash(body) != config.hash:
            raise PublishRefused(f"annotation {CONFIG_HASH_ANNOTATION} ({stored!r}) is not the hash of the "
                                 f"rendered body ({config_hash(body)!r})")


def _check_name(name: Any, expected: str) -> None:
    if not isinstance(name, str) or not name:
        raise PublishRefused("metadata.name must be a non-empty string")
    if name != expected:
        raise PublishRefused(f"metadata.name {name!r} is not the config's name {expected!r}")
    if len(name) > MAX_NAME:
        raise PublishRefused(f"function name {name!r} is longer than {MAX_NAME} characters")
    if not CVAT_ID.match(name):
        raise PublishRefused(f"function name {name!r} does not match CVAT's URL pattern [a-zA-Z0-9_.-]+ "
                             f"(it would be listed but could not be called)")
    if not DNS_LABEL.match(name):
        raise PublishRefused(f"function name {name!r} is not a lowercase DNS-1123 label ([a-z0-9-], "
                             f"alphanumeric at both ends)")
    if name in RESERVED_NAMES:
        raise PublishRefused(f"function name {name!r} is reserved by Nuclio")


def _check_annotations(ann: Mapping[str, str]) -> None:
    kind = ann.get("type")
    if kind not in KINDS:
        raise PublishRefused(f"annotation type {kind!r} is not a CVAT function kind ({', '.join(KINDS)}); "
                             f"CVAT would leave the function out of its list")
    text = ann.get("spec") or "[]"
    try:
        labels = json.loads(text)
    except ValueError as exc:
        raise PublishRefused(f"annotation spec is not valid JSON ({exc}); CVAT's whole model list "
                             f"would fail") from None
    if not isinstance(labels, list):
        raise PublishRefused(f"annotation spec must be a JSON array of labels, got {type(labels).__name__}")
    _check_labels(labels, "spec")
    for key in INTEGER_ANNOTATIONS:
        if key in ann and not _INTEGER.match(ann[key]):
            raise PublishRefused(f"annotation {key} {ann[key]!r} is not an integer (CVAT calls int() on it)")
    for key in BOOLEAN_ANNOTATIONS:
        if key in ann and ann[key].strip().lower() in FALSE_LOOKING:
            raise PublishRefused(f"annotation {key} {ann[key]!r} would read as true: CVAT takes any non-empty "
                                 f"string as true; leave the key out for false")
    if "supported_shape_types" in ann:
        shapes = [s.strip() for s in ann["supported_shape_types"].split(",") if s.strip()]
        if not shapes:
            raise PublishRefused("annotation supported_shape_types is empty; CVAT would leave the tracker out")
        unknown = [s for s in shapes if s not in SHAPE_TYPES]
        if unknown:
            raise PublishRefused(f"annotation supported_shape_types names unknown shape types {unknown}")


def _check_labels(labels: Sequence[Any], where: str) -> None:
    seen: set[str] = set()
    for pos, label in enumerate(labels):
        at = f"{where}[{pos}]"
        if not isinstance(label, Mapping):
            raise PublishRefused(f"{at} is not a label object")
        name = label.get("name")
        if not isinstance(name, str) or not name:
            raise PublishRefused(f"{at} has no name (CVAT's whole model list would fail)")
        if not name.strip():
            raise PublishRefused(f"{at}: label name {name!r} is blank (no annotation could ever match it)")
        if name in seen:
            raise PublishRefused(f"{at}: label name {name!r} is used twice at this level "
                                 f"(CVAT would leave the function out)")
        seen.add(name)
        label_type = label.get("type", "any")
        if label_type not in LABEL_TYPES:
            raise PublishRefused(f"{at} ({name!r}): label type {label_type!r} is not a CVAT label type "
                                 f"({', '.join(LABEL_TYPES)})")
        _check_attributes(label.get("attributes", []), f"{at} ({name!r})")
        if label_type == "skeleton":
            subs, svg = label.get("sublabels"), label.get("svg")
            if not isinstance(subs, list) or not subs:
                raise PublishRefused(f"{at} ({name!r}): a skeleton needs a non-empty sublabels list")
            if not isinstance(svg, str) or not svg.strip():
                raise PublishRefused(f"{at} ({name!r}): a skeleton needs its svg")
            _check_labels(subs, f"{at}.sublabels")


def _check_attributes(attributes: Any, at: str) -> None:
    if not isinstance(attributes, list):
        raise PublishRefused(f"{at}: attributes must be a list")
    seen: set[str] = set()
    for i, attr in enumerate(attributes):
        if not isinstance(attr, Mapping):
            raise PublishRefused(f"{at}: attribute {i} is not an object")
        name = attr.get("name")
        if not isinstance(name, str) or not name:
            raise PublishRefused(f"{at}: attribute {i} has no name")
        if attr.get("input_type") not in INPUT_TYPES:
            raise PublishRefused(f"{at}: attribute {name!r} needs input_type, one of {', '.join(INPUT_TYPES)}")
        values = attr.get("values")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise PublishRefused(f"{at}: attribute {name!r} needs values, a list of strings")
        if name in seen:
            raise PublishRefused(f"{at}: attribute name {name!r} is used twice (CVAT would leave the function out)")
        seen.add(name)


def _check_spec(spec: Mapping[str, Any]) -> None:
    text = spec.get("description")
    if not isinstance(text, str) or not text.strip():
        raise PublishRefused("spec.description is empty: the dashboard drops it and CVAT's whole model list fails")
    triggers = spec.get("triggers")
    if not isinstance(triggers, Mapping):
        raise PublishRefused("spec.triggers must map trigger names to triggers")
    http = [(key, t) for key, t in triggers.items() if isinstance(t, Mapping) and t.get("kind") == "http"]
    if len(http) != 1:
        raise PublishRefused(f"spec.triggers must hold exactly one http trigger, found {len(http)} (without one "
                             f"Nuclio adds a default with a 4 MiB body limit)")
    key, trigger = http[0]
    if trigger.get("name", key) != key:
        raise PublishRefused(f"http trigger {key!r}: its name {trigger.get('name')!r} must equal its key")
    attributes = trigger.get("attributes")
    size = attributes.get("maxRequestBodySize") if isinstance(attributes, Mapping) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_REQUEST_BODY:
        raise PublishRefused(f"http trigger {key!r}: attributes.maxRequestBodySize {size!r} is below "
                             f"{MIN_REQUEST_BODY} (64 MiB): CVAT's base64 frames would be refused")
    env = spec.get("env", [])
    if not isinstance(env, list) or not all(isinstance(e, Mapping) and isinstance(e.get("name"), str)
                                            and e["name"] and isinstance(e.get("value"), str) for e in env):
        raise PublishRefused("spec.env must be a list of {name, value} with string values")
    names = [e["name"] for e in env]
    if len(set(names)) != len(names):
        raise PublishRefused(f"spec.env sets a variable twice: {sorted({n for n in names if names.count(n) > 1})}")
    model = next((e["value"] for e in env if e["name"] == "MODEL_NAME"), None)
    if model is not None and model != model.strip():
        # The runner strips MODEL_NAME: it would look for another folder (or none).
        raise PublishRefused(f"model folder {model!r} starts or ends with white space, which the runner's "
                             f"MODEL_NAME cannot carry: rename the folder")
    volumes = spec.get("volumes", [])
    if not isinstance(volumes, list):
        raise PublishRefused("spec.volumes must be a list")
    seen: set[str] = set()
    for i, entry in enumerate(volumes):
        volume = entry.get("volume") if isinstance(entry, Mapping) else None
        mount = entry.get("volumeMount") if isinstance(entry, Mapping) else None
        if not isinstance(volume, Mapping) or not isinstance(mount, Mapping):
            raise PublishRefused(f"spec.volumes[{i}] needs volume and volumeMount")
        if not volume.get("name") or volume.get("name") != mount.get("name"):
            raise PublishRefused(f"spec.volumes[{i}]: volume name {volume.get('name')!r} and volumeMount name "
                                 f"{mount.get('name')!r} must be set and equal")
        if volume["name"] in seen:
            raise PublishRefused(f"spec.volumes[{i}]: volume name {volume['name']!r} is used twice")
        seen.add(volume["name"])


# ---- the model's files ------------------------------------------------------------


def check_files(record: ModelRecord) -> None:
    """Raise PublishRefused unless every file model.json names is listed with bytes in it."""
    manifest = record.manifest
    paths = {f.path for f in record.files}
    if manifest.file_name not in paths:
        raise PublishRefused(f"{record.folder}: the weights file {manifest.file_name} is missing")
    for extra in manifest.extra_files:
        if extra not in paths and not any(p.startswith(extra + "/") for p in paths):
            raise PublishRefused(f"{record.folder}: extra file {extra} is missing (or an empty folder)")
    for f in record.files:
        if f.size <= 0:
            raise PublishRefused(f"{record.folder}: model file {f.path} is empty (0 bytes)")


# ---- smoke test -------------------------------------------------------------------


@dataclass(frozen=True)
class SampleResult:
    """One sample picture's outcome: how many shapes, and which labels (sorted, unique)."""

    path: str
    shapes: int
    labels: tuple[str, ...]


@dataclass(frozen=True)
class SmokeResult:
    """``ran`` False means skipped, and ``skipped`` says why. ``class_count``: what the
    decoder read off the outputs (None: it cannot tell)."""

    ran: bool
    skipped: str | None = None
    samples: tuple[SampleResult, ...] = ()
    class_count: int | None = None


def smoke_test(record: ModelRecord, registry: Registry, cache: Any, *,
               samples: Sequence[RemoteFile]) -> SmokeResult:
    """Load ``record`` as a runner worker would (:func:`common.runner.load_record`, the
    same cache and checks) and run every sample picture through it.

    Refuses (PublishRefused) a model that fails to load or to answer a sample,
    that returns a label its published spec lacks, or whose label count does not
    match the class count its decoder reads off the output shapes. Skipped (with
    the reason logged and in the result) when there are no samples, when the
    runner does not serve the model's type, when its CVAT kind is not a detector
    (interactors, trackers and reid need prompts, not just pictures), or when the
    model's engine is not installed in this process. ``cache`` is a :class:`common.cache.ModelCache`."""
    from common import decoders
    from common.publish.kinds import cvat_kind, label_spec
    from common.runner import SERVED_TYPES, RunnerSettings, load_record

    manifest = record.manifest
    if not samples:
        return _skip(record, "no sample pictures in samples/")
    if manifest.type not in SERVED_TYPES:
        return _skip(record, f"the runner does not serve type {manifest.type!r} yet")
    kind = cvat_kind(manifest.type)
    if kind != "detector":  # only a detector answers a bare picture
        return _skip(record, f"a CVAT {kind} needs more than a picture per call (clicks, shapes or frame pairs)")
    settings = RunnerSettings(registry=repr(registry), model=record.folder, version=manifest.version,
                              cache_dir=cache.root, cache_size=cache.size_limit, refresh_seconds=0)
    try:
        loaded = load_record(settings, record, registry.fetch)
    except RuntimeLoadError as exc:
        if isinstance(exc.__cause__, ImportError):
            return _skip(record, f"runtime {manifest.runtime.name!r} is not installed here ({exc.__cause__})")
        raise PublishRefused(f"{record.folder}: the model does not load: {exc}") from exc
    except Exception as exc:  # anything else a broken model makes an engine raise
        raise PublishRefused(f"{record.folder}: the model does not load: {exc}") from exc
    try:
        count = None
        decoder = manifest.output.decoder
        if decoder is not None:
            count = decoders.class_count(decoder.name, loaded.runtime.outputs, decoder.params)
        if count is not None:
            expected = count - manifest.label_id_offset
            ids = [label.id for label in manifest.labels]
            if len(ids) != expected or any(i >= count for i in ids):
                raise PublishRefused(
                    f"{record.folder}: model.json has {len(ids)} labels (ids {_span(ids)}) but the model's "
                    f"outputs carry {count} classes ({decoder.name} decoder; label_id_offset "
                    f"{manifest.label_id_offset}): expected {expected} labels with ids below {count}")
        published = {label["name"] for label in label_spec(manifest)}
        results = []
        for sample in samples:
            if sample.size > MAX_SAMPLE_BYTES:
                log.warning("smoke test %s: %s is %d bytes, more than %d; left out", record.folder, sample.path,
                            sample.size, MAX_SAMPLE_BYTES)
                continue
            buf = io.BytesIO()
            try:
                registry.fetch(sample, buf)
                shapes = loaded.pipeline.annotate(buf.getvalue())
            except Exception as exc:
                raise PublishRefused(f"{record.folder}: sample {sample.path} failed: {exc}") from exc
            names = tuple(sorted({s["label"] for s in shapes}))
            unknown = [n for n in names if n not in published]
            if unknown:
                raise PublishRefused(f"{record.folder}: sample {sample.path} returned labels {unknown} that the "
                                     f"published spec lacks (CVAT would drop them)")
            results.append(SampleResult(sample.path, len(shapes), names))
    finally:
        loaded.snapshot.release()
    result = SmokeResult(ran=True, samples=tuple(results), class_count=count)
    log.info("smoke test %s %s: %d samples, %s", record.folder, manifest.version, len(results),
             ", ".join(f"{r.path}: {r.shapes} shapes" for r in results) or "none run")
    return result


def _skip(record: ModelRecord, reason: str) -> SmokeResult:
    log.info("smoke test of %s %s skipped: %s", record.folder, record.version, reason)
    return SmokeResult(ran=False, skipped=reason)


def _span(ids: Sequence[int]) -> str:
    return f"{min(ids)}..{max(ids)}" if ids else "none"
