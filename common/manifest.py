"""model.json, validated once at the edge into typed, immutable objects.

``parse_manifest(data)`` checks a model.json document against
``common/schema/model.schema.json`` (JSON Schema draft 7, checked with
``jsonschema``), then against the chosen decoder's own parameter schema, and
returns a :class:`ModelManifest`. Every fault is reported with its JSON path
(e.g. ``$.input.layout``) in one :class:`~common.errors.ModelConfigError`.
Nothing downstream reads the raw dict again. The format is documented in
``docs/model-json.md``.

Whatever JSON document comes in, the outcome is a manifest or a
ModelConfigError: documents nested too deeply, numbers that are not finite
floats, and text that cannot be written as UTF-8 are refused (with their path)
before anything else looks at them. Values quoted in messages are JSON, cut to
about 80 characters, and at most ``MAX_PROBLEMS`` problems are listed.
"""

from __future__ import annotations

import ast
import copy
import functools
import json
import logging
import math
import posixpath
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Iterator, Literal, Mapping

from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from common import decoders
from common.errors import ModelConfigError
from common.runtimes import DEFAULT_RUNTIME

logger = logging.getLogger(__name__)

Layout = Literal["NCHW", "NHWC"]
ColorOrder = Literal["RGB", "BGR"]
ResizeMode = Literal["letterbox", "stretch", "none"]


@dataclass(frozen=True)
class Attribute:
    """A CVAT label attribute; CVAT requires all of name/input_type/values."""

    name: str
    input_type: str  # number | checkbox | radio | select | text
    values: tuple[str, ...]
    default_value: str | None = None


@dataclass(frozen=True)
class Label:
    """One class the model can return. ``id`` is the model's class index."""

    id: int
    name: str
    type: str = "any"  # CVAT label type: rectangle, polygon, mask, tag, points, skeleton, any, ...
    attributes: tuple[Attribute, ...] = ()
    sublabels: tuple["Label", ...] = ()  # skeleton points, in keypoint order (type "skeleton" only)
    svg: str | None = None  # CVAT's skeleton drawing (type "skeleton" only)


@dataclass(frozen=True)
class Resize:
    """How the image is fitted to the network input.

    letterbox: keep the aspect ratio, pad to (height, width) with pad_value,
    content centred. stretch: resize to exactly (height, width). none: feed
    the image at its own size (dynamic inputs), padded on the right/bottom up
    to a multiple of ``multiple_of``.
    """

    mode: ResizeMode = "letterbox"
    width: int | None = None
    height: int | None = None
    pad_value: float = 114.0  # in pixel units (0..255), before normalisation
    multiple_of: int = 1


@dataclass(frozen=True)
class InputSpec:
    """The network input and the preprocessing that produces it.

    tensor = ((pixel * scale) - mean) / std, per channel, in ``color_order``,
    laid out as ``layout``, cast to ``dtype``. ``name`` None means the first
    model input. ``shape`` entries are None where the dimension is dynamic.
    """

    name: str | None = None
    shape: tuple[int | None, ...] | None = None
    dtype: str = "float32"
    layout: Layout = "NCHW"
    color_order: ColorOrder = "RGB"
    resize: Resize = field(default_factory=Resize)
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class DecoderSpec:
    """Output decoder chosen by name; ``params`` were checked by its own schema."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputSpec:
    decoder: DecoderSpec | None  # None only for non-detector types that name no decoder
    score_threshold: float = 0.5  # used when the request carries no threshold
    shape: tuple[int | None, ...] | None = None
    format: str | None = None


@dataclass(frozen=True)
class RuntimeSpec:
    """Which engine runs the weights. ``name`` defaults from ``framework``
    (onnx -> onnxruntime, openvino -> openvino); ONNX may run on openvino.
    ``precision`` is OpenVINO's INFERENCE_PRECISION_HINT (f32 unless asked)."""

    name: str
    precision: str = "f32"
    device: str = "CPU"


@dataclass(frozen=True)
class DriveOptions:
    """How the Google Drive registry downloads the model's files (other registries
    ignore it). ``acknowledge_abuse``: download a file Drive has flagged as malware
    or spam anyway (Drive's ``acknowledgeAbuse=true``)."""

    acknowledge_abuse: bool = False


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str  # semantic version "X.Y.Z"
    framework: str
    type: str
    file_name: str
    display_name: str
    description: str
    input: InputSpec
    output: OutputSpec
    runtime: RuntimeSpec
    labels: tuple[Label, ...] = ()
    label_id_offset: int = 0  # id of the first plain-string label (1 when class 0 is background)
    extra_files: tuple[str, ...] = ()  # e.g. an OpenVINO .bin; folders allowed (SavedModel)
    drive: DriveOptions = field(default_factory=DriveOptions)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def label_by_id(self) -> dict[int, Label]:
        return {label.id: label for label in self.labels}


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "model.schema.json"

# Frameworks this runner has an engine for, and which engines run which.
RUNNABLE_FRAMEWORKS = ("onnx", "openvino", "pytorch", "tensorflow", "keras")
RUNTIME_FRAMEWORKS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "onnxruntime": ("onnx",),
    "openvino": ("onnx", "openvino"),
    "torch": ("pytorch",),
    "tensorflow": ("tensorflow", "keras"),
    "tflite": ("tensorflow",),
})
# Model file extensions that say which framework wrote the file; file_name with one of
# these under one of FILE_FRAMEWORKS must match (other extensions are not judged here).
MODEL_EXTENSIONS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    ".onnx": ("onnx", "openvino"), ".xml": ("openvino",), ".pt": ("pytorch",), ".pth": ("pytorch",),
    ".pt2": ("pytorch",), ".engine": ("tensorrt",), ".plan": ("tensorrt",), ".trt": ("tensorrt",),
    ".tflite": ("tensorflow",), ".keras": ("keras", "tensorflow"), ".h5": ("keras", "tensorflow"),
    ".pb": ("tensorflow",),
})
FILE_FRAMEWORKS = ("onnx", "openvino", "pytorch", "tensorflow", "keras")
TENSORRT_REFUSAL = ('framework "tensorrt" is not supported here: a serialized TensorRT engine only runs on the GPU '
                    'model and TensorRT version it was built for, and no runner image loads one. Publish the ONNX '
                    'model instead (framework "onnx"): the ONNX GPU runner (cvat.gdrive-runner.onnx-gpu) runs it '
                    'through ONNX Runtime\'s TensorRT provider where that is installed, the CPU runners on the CPU')
DEFAULT_DECODER = "yolo"  # for detectors whose model.json names no decoder

# Limits on the document itself (the schema caps the sizes of its values).
MAX_DEPTH = 100  # arrays and objects nested in one another, the document being level 1
MAX_PROBLEMS = 100  # problems listed in one ModelConfigError; the rest are counted
QUOTE_LIMIT = 80  # characters of an offending value quoted in a message

_PathParts = tuple[str | int, ...]
_Problem = tuple[_PathParts, str]
_RESIZE = ("input", "preprocessing", "resize")
_FLOAT_MAX = sys.float_info.max


def load_schema() -> dict[str, Any]:
    """A fresh copy of the model.json JSON Schema (draft 7)."""
    return copy.deepcopy(_validator().schema)


@functools.lru_cache(maxsize=1)
def _validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return Draft7Validator(schema)


def parse_manifest(data: Mapping[str, Any], *, source: str = "model.json") -> ModelManifest:
    """Validate ``data`` (a decoded model.json) and build the typed manifest.

    Raises ModelConfigError, and nothing else, whatever ``data`` holds."""
    return _parse_guarded(data, source, [])


def _parse_guarded(data: Any, source: str, known: list[_Problem]) -> ModelManifest:
    """:func:`_parse`, with anything but ModelConfigError turned into one.
    ``known`` problems (found in the JSON text) are reported with the rest."""
    try:
        manifest = _parse(data, source, known)
    except RecursionError:
        raise _config_error([((), _too_deep())], source) from None
    except (OverflowError, ValueError, TypeError, ArithmeticError) as exc:
        # The checks above should have refused whatever gets here; say so rather than crash.
        logger.warning("%s: unexpected %s while reading model.json", source, type(exc).__name__, exc_info=True)
        raise _config_error([((), f"cannot be read ({type(exc).__name__}: {_cut(str(exc))})")],
                            source) from None
    logger.debug("%s: %s %s (%s, %s) is valid", source, manifest.name, manifest.version,
                 manifest.framework, manifest.type)
    return manifest


def _parse(data: Any, source: str, known: list[_Problem]) -> ModelManifest:
    problems = known + _document_problems(data)
    if len(problems) > len(known):  # not plain JSON values: nothing below could quote them safely
        raise _config_error(problems, source)
    problems += [(tuple(err.absolute_path), _error_message(err)) for err in _validator().iter_errors(data)
                 if not _superseded(err)]
    if isinstance(data, Mapping):
        problems += _semantic_problems(data)
    if problems:
        raise _config_error(problems, source)
    return _build(data, source)


def load_manifest(text: str | bytes, *, source: str = "model.json") -> ModelManifest:
    """Decode JSON text and parse it; bad JSON is a ModelConfigError too."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ModelConfigError([("$", f"not UTF-8 text (bad byte at offset {exc.start})")],
                                   source=source) from None
    elif text.startswith("\ufeff"):
        text = text[1:]

    duplicates: list[str] = []

    def object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                duplicates.append(key)
            obj[key] = value
        return obj

    def reject_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed in JSON")

    try:
        data = json.loads(text, object_pairs_hook=object_pairs, parse_constant=reject_constant)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(
            [("$", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")], source=source
        ) from None
    except RecursionError:
        raise ModelConfigError([("$", _too_deep())], source=source) from None
    except ValueError as exc:
        message = str(exc)
        if "integer string conversion" in message:  # Python's guard against huge integer literals
            message = f"a number has more than {sys.get_int_max_str_digits()} digits"
        raise ModelConfigError([("$", f"invalid JSON: {_cut(message)}")], source=source) from None

    problems: list[_Problem] = [
        ((), f"duplicate key {_quote(key)} in a JSON object (only the last one would count)")
        for key in dict.fromkeys(duplicates)]
    return _parse_guarded(data, source, problems)


# ---- problem formatting ----------------------------------------------------


def _config_error(problems: Iterable[_Problem], source: str) -> ModelConfigError:
    return ModelConfigError(_sorted_problems(problems, limit=MAX_PROBLEMS), source=source)


def _more_line(more: int) -> tuple[str, str]:
    return "$", f"... and {more} more problem{'s' if more > 1 else ''} not listed"


def _too_deep() -> str:
    return f"nested too deeply (at most {MAX_DEPTH} levels of arrays and objects)"


def _cut(text: str, limit: int = 2 * QUOTE_LIMIT) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``value`` written as JSON, cut to ``limit`` characters with "…".

    Builds only what it shows, so a 5 MB value costs no more than a small one;
    lone surrogates come out as ``\\udc00`` text (the message must be writable)."""
    out: list[str] = []
    room = limit + 1

    def put(text: str) -> None:
        nonlocal room
        if room > 0:
            out.append(text[:room])
            room -= len(text)

    def emit(v: Any) -> None:
        if room <= 0:
            return
        if isinstance(v, str):
            put(json.dumps(v[:room], ensure_ascii=False))
        elif isinstance(v, bool) or v is None:
            put(json.dumps(v))
        elif isinstance(v, int):
            put(json.dumps(v) if v.bit_length() < 3000 else f"<an integer of {v.bit_length()} bits>")
        elif isinstance(v, float):
            put(json.dumps(v))
        elif isinstance(v, Mapping):
            put("{")
            for i, (key, item) in enumerate(v.items()):
                if room <= 0:
                    return
                put(", " if i else "")
                emit(str(key))
                put(": ")
                emit(item)
            put("}")
        elif isinstance(v, (list, tuple)):
            put("[")
            for i, item in enumerate(v):
                if room <= 0:
                    return
                put(", " if i else "")
                emit(item)
            put("]")
        else:
            put(repr(v))

    emit(value)
    text = "".join(out).encode("utf-8", "backslashreplace").decode("utf-8")
    if room <= 0 or len(text) > limit:
        text = text[:limit - 1] + "…"
    return text


def _json_path(parts: Iterable[str | int]) -> str:
    """``("labels", 0, "name")`` -> ``$.labels[0].name`` (long keys cut, long paths cut in the middle)."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier() and len(part) <= QUOTE_LIMIT:
            out += f".{part}"
        else:
            out += f"[{_quote(part)}]"
    if len(out) > 3 * QUOTE_LIMIT:
        out = out[:2 * QUOTE_LIMIT] + "…" + out[-QUOTE_LIMIT:]
    return out


def _json_text(value: Any) -> str:
    """A schema's own value (an enum list, a bound) as JSON."""
    return json.dumps(value, ensure_ascii=False)


_BOUND_MESSAGES = {
    "minimum": "is less than the minimum of",
    "maximum": "is greater than the maximum of",
    "exclusiveMinimum": "is less than or equal to the minimum of",
    "exclusiveMaximum": "is greater than or equal to the maximum of",
}


def _error_message(err: ValidationError) -> str:
    """jsonschema's message with the offending value quoted by :func:`_quote`
    (never jsonschema's unbounded repr), unless the failing (sub)schema carries
    this project's ``errorMessage`` for the failing keyword (see the schema's $comment)."""
    custom = err.schema.get("errorMessage") if isinstance(err.schema, Mapping) else None
    if isinstance(custom, Mapping) and isinstance(custom.get(err.validator), str):
        return custom[err.validator]
    keyword, expected, instance = err.validator, err.validator_value, err.instance
    value = _quote(instance)
    if keyword == "type":
        types = [expected] if isinstance(expected, str) else list(expected)
        return f"{value} is not of type {', '.join(_json_text(t) for t in types)}"
    if keyword == "enum":
        return f"{value} is not one of {_json_text(expected)}"
    if keyword == "const":
        return f"{_json_text(expected)} was expected"
    if keyword in _BOUND_MESSAGES:
        return f"{value} {_BOUND_MESSAGES[keyword]} {_json_text(expected)}"
    if keyword == "required":
        missing = err.message.removesuffix(" is a required property")
        try:
            missing = _json_text(ast.literal_eval(missing))
        except (ValueError, SyntaxError):
            pass
        return f"{missing} is a required property"
    if keyword == "additionalProperties" and isinstance(instance, Mapping) and isinstance(err.schema, Mapping):
        extras = _unexpected_keys(instance, err.schema)
        if extras:
            shown = ", ".join(_quote(k) for k in extras[:5])
            if len(extras) > 5:
                shown += f" and {len(extras) - 5} more"
            verb = "was" if len(extras) == 1 else "were"
            return f"Additional properties are not allowed ({shown} {verb} unexpected)"
    if keyword in ("minItems", "minLength"):
        return f"{value} {'should be non-empty' if expected == 1 else 'is too short'}"
    if keyword in ("maxItems", "maxLength"):
        return f"{value} {'is expected to be empty' if expected == 0 else 'is too long'}"
    if keyword == "uniqueItems":
        return f"{value} has non-unique elements"
    if keyword == "pattern":
        return f"{value} does not match {_json_text(expected)}"
    if keyword == "multipleOf":
        return f"{value} is not a multiple of {_json_text(expected)}"
    if keyword in ("anyOf", "oneOf"):
        return f"{value} is not valid under any of the given schemas"
    if keyword == "not":
        return f"{value} should not be valid under {_cut(_json_text(expected))}"
    # Any other keyword: swap jsonschema's leading repr of the value, and bound the rest.
    message, leading = err.message, repr(instance) if _small(instance) else None
    if leading is not None and message.startswith(leading):
        message = value + message[len(leading):]
    return _cut(message, 4 * QUOTE_LIMIT)


def _small(value: Any) -> bool:
    return isinstance(value, (bool, int, float, type(None))) or (isinstance(value, str) and len(value) < 10_000)


def _unexpected_keys(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return sorted((k for k in instance
                   if k not in known and not any(re.search(p, k) for p in patterns)), key=str)


def _superseded(err: ValidationError) -> bool:
    """Schema errors that a semantic check reports more precisely."""
    return err.validator == "uniqueItems" and tuple(err.absolute_path) == ("extra_files",)


def _sorted_problems(problems: Iterable[_Problem], *, limit: int | None = None) -> list[tuple[str, str]]:
    """Unique problems sorted by path, paths written out; past ``limit``, one line counts the rest."""
    def key(problem: _Problem) -> tuple[Any, ...]:
        parts, message = problem
        return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in parts), message

    unique = sorted(dict.fromkeys((tuple(p), m) for p, m in problems), key=key)
    shown = unique if limit is None else unique[:limit]
    listed = [(_json_path(parts), message) for parts, message in shown]
    return listed + ([_more_line(len(unique) - len(shown))] if len(shown) < len(unique) else [])


# ---- the document as JSON values (checked first, on any input) --------------


def _document_problems(data: Any) -> list[_Problem]:
    """Faults of the document as a whole, found without recursion: nesting
    deeper than MAX_DEPTH (reported alone, at ``$``), numbers that are not
    finite floats (``1e999`` parses to infinity; an integer beyond ±1.8e308 has
    no float), and text that cannot be written as UTF-8 (lone surrogates, which
    JSON escapes such as ``\\udc00`` can produce)."""
    problems: list[_Problem] = []

    def check(value: Any, parts: Callable[[], _PathParts]) -> None:
        if isinstance(value, str):
            bad = _not_utf8(value)
            if bad:
                problems.append((parts(), f"text {bad}"))
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append((parts(), f"{_quote(value)} is not a finite number (a JSON number beyond "
                                      f"±1.8e308, such as 1e999, overflows to infinity)"))
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > _FLOAT_MAX:
            problems.append((parts(), "number too large (beyond ±1.8e308 it has no floating-point value)"))

    containers = (Mapping, list, tuple)
    if not isinstance(data, containers):
        check(data, tuple)
        return problems
    stack: list[tuple[Any, _PathParts]] = [(data, ())]
    while stack:
        value, parts = stack.pop()
        if len(parts) >= MAX_DEPTH:
            return [((), f"{_too_deep()}, e.g. under {_json_path(parts[:8])}…")]
        items = value.items() if isinstance(value, Mapping) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and (bad := _not_utf8(key)):
                problems.append((parts, f"the key {_quote(key)} {bad}"))
            if isinstance(item, containers):
                stack.append((item, parts + (key,)))
            else:
                check(item, lambda: parts + (key,))  # noqa: B023 - called at once
    return problems


def _not_utf8(text: str) -> str | None:
    """Why ``text`` cannot be written as UTF-8, or None when it can."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        char = text[exc.start].encode("utf-8", "backslashreplace").decode("ascii")
        return (f"cannot be written as UTF-8: lone surrogate {char} at character {exc.start} "
                f"(a \\u escape of half a surrogate pair)")
    return None


# ---- type-tolerant readers (semantic checks also run on invalid documents) --


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_int(value: Any) -> int | None:
    """An integer as JSON Schema sees one (640 or 640.0), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _shape(value: Any) -> tuple[int | None, ...] | None:
    if not isinstance(value, list):
        return None
    dims: list[int | None] = []
    for dim in value:
        if dim is not None and _as_int(dim) is None:
            return None
        dims.append(None if dim is None else _as_int(dim))
    return tuple(dims)


def _layout(inp: Mapping[str, Any], shape: tuple[int | None, ...] | None) -> Layout:
    layout = inp.get("layout")
    if layout in ("NCHW", "NHWC"):
        return layout
    if shape is not None and len(shape) == 4:
        if shape[1] in (1, 3):
            return "NCHW"
        if shape[-1] in (1, 3):
            return "NHWC"
    return "NCHW"


def _static_hw(shape: tuple[int | None, ...] | None, layout: Layout) -> tuple[int | None, int | None]:
    """(height, width) of a 4-D input shape, None where dynamic or unknown."""
    if shape is None or len(shape) != 4:
        return None, None
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def _resize_mode(resize: Mapping[str, Any]) -> ResizeMode:
    mode = resize.get("mode")
    if mode in ("letterbox", "stretch", "none"):
        return mode
    keep = resize.get("keep_aspect_ratio")
    if isinstance(keep, bool):
        return "letterbox" if keep else "stretch"
    return "letterbox"


def _label_entries(labels: Any, offset: int) -> Iterator[tuple[int, int | None, str | None, Any]]:
    """(position, id, name, item) per label item; plain names take
    ids ``offset``, ``offset + 1``, ... in the order the plain names appear."""
    if not isinstance(labels, list):
        return
    plain = 0
    for pos, item in enumerate(labels):
        if isinstance(item, str):
            yield pos, offset + plain, item, item
            plain += 1
        elif isinstance(item, Mapping):
            name = item.get("name")
            yield pos, _as_int(item.get("id")), name if isinstance(name, str) else None, item


def _attr_text(value: Any) -> str:
    """An attribute value as CVAT stores it: a string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---- checks the schema cannot express ------------------------------------


def _semantic_problems(data: Mapping[str, Any]) -> list[_Problem]:
    problems: list[_Problem] = []
    problems += _check_framework(data)
    problems += _check_labels(data)
    problems += _check_decoder(data)
    problems += _check_resize(data)
    problems += _check_files(data)
    return problems


def _check_framework(data: Mapping[str, Any]) -> list[_Problem]:
    framework = data.get("framework")
    if not isinstance(framework, str):
        return []
    if framework == "tensorrt":
        return [(("framework",), TENSORRT_REFUSAL)]
    if framework not in RUNNABLE_FRAMEWORKS:
        known = _validator().schema["properties"]["framework"]["enum"]
        if framework not in known:
            return []  # the schema already says so
        return [(("framework",), f"framework {_quote(framework)} is not supported by this runner yet "
                                 f"(supported: {', '.join(RUNNABLE_FRAMEWORKS)})")]
    runtime = _obj(data.get("runtime"))
    name = runtime.get("name", DEFAULT_RUNTIME.get(framework))
    problems: list[_Problem] = []
    if name in RUNTIME_FRAMEWORKS and framework not in RUNTIME_FRAMEWORKS[name]:
        able = [rt for rt, fws in RUNTIME_FRAMEWORKS.items() if framework in fws]
        problems.append((("runtime", "name"), f"runtime {_quote(name)} cannot run framework {_quote(framework)} "
                                              f"(use {' or '.join(_quote(rt) for rt in able)})"))
    precision = runtime.get("precision")
    if name in ("onnxruntime", "torch") and isinstance(precision, str) and precision != "f32":
        problems.append((("runtime", "precision"), f"precision {_quote(precision)} needs runtime \"openvino\" "
                                                   f"({name} runs the weights as stored: use \"f32\")"))
    problems += _check_model_file(data, framework)
    return problems


def _check_model_file(data: Mapping[str, Any], framework: str) -> list[_Problem]:
    """file_name's extension against the framework; TorchScript's missing input description."""
    file_name = data.get("file_name")
    if not isinstance(file_name, str) or framework not in FILE_FRAMEWORKS:
        return []
    ext = posixpath.splitext(file_name)[1].lower()
    owners = MODEL_EXTENSIONS.get(ext)
    if owners is not None and framework not in owners:
        return [(("file_name",), f"{_quote(file_name)} is a {owners[0]} file name ({ext}), not a {framework} "
                                 f"model: set framework {_quote(owners[0])}, or name the file after its format")]
    inp = _obj(data.get("input"))
    if framework == "pytorch" and ext != ".pt2" and "shape" not in inp:
        return [(("input",), "a TorchScript model carries no description of its input: give input.shape "
                             "(e.g. [1, 3, 224, 224], null for a dynamic dimension) and input.dtype unless float32")]
    return []


def _check_labels(data: Mapping[str, Any]) -> list[_Problem]:
    offset = _as_int(data.get("label_id_offset"))
    offset = offset if offset is not None and offset >= 0 else 0
    problems: list[_Problem] = []
    problems += _duplicates(("labels",), _label_entries(data.get("labels"), offset))
    labels = data.get("labels")
    for pos, item in enumerate(labels if isinstance(labels, list) else ()):
        if not isinstance(item, Mapping):
            continue
        problems += _check_attributes(("labels", pos), item)
        subs = item.get("sublabels")
        if isinstance(subs, list):
            entries = ((i, _as_int(_obj(s).get("id", i)), _obj(s).get("name"), _obj(s))
                       for i, s in enumerate(subs))
            problems += _duplicates(("labels", pos, "sublabels"), entries, what="sublabel")
            for i, sub in enumerate(subs):
                if isinstance(sub, Mapping):
                    problems += _check_attributes(("labels", pos, "sublabels", i), sub)
    return problems


def _duplicates(base: _PathParts, entries: Iterable[tuple[int, Any, Any, Any]], *,
                what: str = "label") -> list[_Problem]:
    problems: list[_Problem] = []
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for pos, ident, name, _ in entries:
        if isinstance(ident, int):
            if ident in ids:
                first = _json_path(base + (ids[ident],))
                problems.append((base + (pos,), f"duplicate {what} id {ident} (already used by {first})"))
            ids.setdefault(ident, pos)
        if isinstance(name, str):
            if name in names:
                first = _json_path(base + (names[name],))
                problems.append((base + (pos,), f"duplicate {what} name {_quote(name)} (already used by {first})"))
            names.setdefault(name, pos)
    return problems


def _check_attributes(base: _PathParts, label: Mapping[str, Any]) -> list[_Problem]:
    attributes = label.get("attributes")
    problems: list[_Problem] = []
    seen: dict[str, int] = {}
    for i, attr in enumerate(attributes if isinstance(attributes, list) else ()):
        name = _obj(attr).get("name")
        if not isinstance(name, str):
            continue
        if name in seen:
            first = _json_path(base + ("attributes", seen[name]))
            problems.append((base + ("attributes", i),
                             f"duplicate attribute name {_quote(name)} (already used by {first})"))
        seen.setdefault(name, i)
    return problems


def _decoder_choice(data: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(name, params) of the decoder model.json asks for (or the detector
    default); None when there is none or it is malformed."""
    output = _obj(data.get("output"))
    if "decoder" not in output:
        return (DEFAULT_DECODER, {}) if data.get("type") == "detector" else None
    decoder = output["decoder"]
    if not isinstance(decoder, Mapping) or not isinstance(decoder.get("name"), str) or not decoder["name"]:
        return None
    return decoder["name"], {k: v for k, v in decoder.items() if k != "name"}


def _check_decoder(data: Mapping[str, Any]) -> list[_Problem]:
    choice = _decoder_choice(data)
    if choice is None:
        return []
    name, params = choice
    explicit = "decoder" in _obj(data.get("output"))
    try:
        info = decoders.get(name)
    except KeyError:
        path = ("output", "decoder", "name") if explicit else ("output", "decoder")
        return [(path, f"unknown decoder {_quote(name)}; known: {', '.join(decoders.names())}")]
    validator = Draft7Validator(info.params_schema)
    return [(("output", "decoder") + tuple(err.absolute_path), _error_message(err))
            for err in validator.iter_errors(params)]


def _check_resize(data: Mapping[str, Any]) -> list[_Problem]:
    inp = _obj(data.get("input"))
    resize = _obj(_obj(inp.get("preprocessing")).get("resize"))
    mode = _resize_mode(resize)
    problems: list[_Problem] = []

    keep = resize.get("keep_aspect_ratio")
    if resize.get("mode") in ("letterbox", "stretch") and isinstance(keep, bool) \
            and keep != (resize["mode"] == "letterbox"):
        problems.append((_RESIZE + ("keep_aspect_ratio",),
                         f"keep_aspect_ratio {str(keep).lower()} contradicts mode {_quote(resize['mode'])}"))
    if mode == "none":
        return problems

    shape = _shape(inp.get("shape"))
    static_h, static_w = _static_hw(shape, _layout(inp, shape))
    missing = []
    for key, static in (("width", static_w), ("height", static_h)):
        given = _as_int(resize.get(key))
        if key not in resize and static is None:
            missing.append(key)
        elif given is not None and static is not None and given != static:
            problems.append((_RESIZE + (key,), f"resize.{key} {_quote(given)} does not match the {key} "
                                               f"{static} of the static input.shape"))
    if missing:
        which = " and ".join(missing)
        problems.append((_RESIZE, f"resize mode {mode!r} needs a target size, but {which} "
                                  f"{'is' if len(missing) == 1 else 'are'} missing: set "
                                  f"{' and '.join('resize.' + k for k in missing)} or give a static "
                                  f"4-D input.shape"))
    return problems


def _check_files(data: Mapping[str, Any]) -> list[_Problem]:
    """file_name and extra_files name each file once: no path twice, none
    inside a folder that is listed too (the registry lists a folder's files,
    so they would come twice). The schema checks each path's form."""
    def plain(path: Any) -> bool:  # the schema reports any other form
        return isinstance(path, str) and not any(s in ("", ".", "..") for s in path.split("/"))

    entries: list[tuple[_PathParts, str]] = []
    if plain(data.get("file_name")):
        entries.append((("file_name",), data["file_name"]))
    extras = data.get("extra_files")
    entries += [(("extra_files", i), p) for i, p in enumerate(extras if isinstance(extras, list) else ())
                if plain(p)]
    problems: list[_Problem] = []
    first: dict[str, _PathParts] = {}
    for parts, path in entries:
        if path not in first:
            first[path] = parts
        elif first[path] == ("file_name",):
            problems.append((parts, "is the file_name already: leave it out of extra_files"))
        else:
            problems.append((parts, f"listed twice (also {_json_path(first[path])})"))
    for parts, path in entries:
        if first[path] != parts:
            continue
        segments = path.split("/")
        for k in range(1, len(segments)):
            folder = "/".join(segments[:k])
            if folder not in first:
                continue
            where = first[folder]
            if parts == ("file_name",):
                problems.append((where, f"is the folder of file_name {_quote(path)}: list the other files "
                                        f"in it instead (the folder would bring file_name twice)"))
            else:
                problems.append((parts, f"is inside {_quote(folder)} ({_json_path(where)}), which "
                                        f"brings everything in that folder already"))
            break
    return problems


# ---- building the typed manifest (data is valid here) -----------------------


def _build(data: Mapping[str, Any], source: str) -> ModelManifest:
    framework = data["framework"]
    file_name = data["file_name"]
    offset = int(data.get("label_id_offset", 0))
    extra_files = list(data.get("extra_files", ()))
    stem, ext = posixpath.splitext(file_name)
    if framework == "openvino" and ext.lower() == ".xml" and stem + ".bin" not in extra_files:
        extra_files.append(stem + ".bin")
    runtime = data.get("runtime", {})
    return ModelManifest(
        name=data["name"],
        version=data["version"],
        framework=framework,
        type=data["type"],
        file_name=file_name,
        display_name=data.get("display_name") or data["name"],
        description=data.get("description", ""),
        input=_build_input(data.get("input", {}), source),
        output=_build_output(data),
        runtime=RuntimeSpec(
            name=runtime.get("name", DEFAULT_RUNTIME[framework]),
            precision=runtime.get("precision", "f32"),
            device=runtime.get("device", "CPU"),
        ),
        labels=tuple(_build_label(item, ident)
                     for _, ident, _, item in _label_entries(data.get("labels", []), offset)),
        label_id_offset=offset,
        extra_files=tuple(extra_files),
        drive=DriveOptions(acknowledge_abuse=bool(data.get("drive", {}).get("acknowledge_abuse", False))),
        raw=MappingProxyType(copy.deepcopy(dict(data))),
    )


def _build_input(inp: Mapping[str, Any], source: str) -> InputSpec:
    shape = _shape(inp.get("shape"))
    layout = _layout(inp, shape)
    pre = inp.get("preprocessing", {})
    resize = pre.get("resize", {})
    mode = _resize_mode(resize)
    static_h, static_w = _static_hw(shape, layout)
    width = _as_int(resize["width"]) if "width" in resize else static_w
    height = _as_int(resize["height"]) if "height" in resize else static_h

    normalize = pre.get("normalize")
    mean, std = pre.get("mean"), pre.get("std")
    if normalize is False:
        if mean is not None or std is not None:
            logger.warning("%s: normalize is false, so mean and std are ignored (mean 0, std 1)", source)
        mean, std = [0.0], [1.0]
    elif normalize is True and mean is None and std is None:
        std = [255.0]

    return InputSpec(
        name=inp.get("name"),
        shape=shape,
        dtype=inp.get("dtype", "float32"),
        layout=layout,
        color_order=inp.get("color_order", "RGB"),
        resize=Resize(
            mode=mode,
            width=width if mode != "none" else None,
            height=height if mode != "none" else None,
            pad_value=float(resize.get("pad_value", Resize.pad_value)),
            multiple_of=int(resize.get("multiple_of", Resize.multiple_of)),
        ),
        scale=float(pre.get("scale", 1.0)),
        mean=_per_channel(mean, 0.0),
        std=_per_channel(std, 1.0),
    )


def _per_channel(values: list[float] | None, default: float) -> tuple[float, ...]:
    values = [default] if values is None else values
    return tuple(float(v) for v in (values * 3 if len(values) == 1 else values))


def _build_output(data: Mapping[str, Any]) -> OutputSpec:
    out = data.get("output", {})
    choice = _decoder_choice(data)
    decoder = None
    if choice is not None:
        name, params = choice
        params = _integers_as_int(copy.deepcopy(params), decoders.get(name).params_schema)
        decoder = DecoderSpec(name=name, params=MappingProxyType(params))
    return OutputSpec(
        decoder=decoder,
        score_threshold=float(out.get("score_threshold", 0.5)),
        shape=_shape(out.get("shape")),
        format=out.get("format"),
    )


def _integers_as_int(value: Any, schema: Any) -> Any:
    """``value`` (valid under ``schema``) with every integral float that the
    schema lets be an "integer" but not a "number" turned into an int.

    JSON Schema counts 10.0 as an integer, so a decoder asking for an integer
    may otherwise get a float (and fail on a slice). Follows ``properties``,
    ``additionalProperties``, ``patternProperties`` and ``items`` (one schema or
    one per position, then ``additionalItems``) into nested objects and arrays."""
    if not isinstance(schema, Mapping):
        return value
    if isinstance(value, float) and value.is_integer():
        types = schema.get("type")
        types = [types] if isinstance(types, str) else types if isinstance(types, list) else []
        return int(value) if "integer" in types and "number" not in types else value
    if isinstance(value, dict):
        known = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for key, item in value.items():
            subs = ([known[key]] if key in known else []) + [
                sub for pattern, sub in patterns.items() if re.search(pattern, key)]
            if not subs:
                subs = [schema.get("additionalProperties")]
            for sub in subs:
                item = _integers_as_int(item, sub)
            value[key] = item
    elif isinstance(value, list):
        items = schema.get("items")
        for i, item in enumerate(value):
            if isinstance(items, list):
                sub = items[i] if i < len(items) else schema.get("additionalItems")
            else:
                sub = items
            value[i] = _integers_as_int(item, sub)
    return value


def _build_label(item: Any, ident: int) -> Label:
    if isinstance(item, str):
        return Label(id=ident, name=item)
    return Label(
        id=ident,
        name=item["name"],
        type=item.get("type", "any"),
        attributes=_build_attributes(item),
        sublabels=tuple(
            Label(id=int(sub.get("id", i)), name=sub["name"], type=sub.get("type", "points"),
                  attributes=_build_attributes(sub))
            for i, sub in enumerate(item.get("sublabels", ()))
        ),
        svg=item.get("svg"),
    )


def _build_attributes(label: Mapping[str, Any]) -> tuple[Attribute, ...]:
    return tuple(
        Attribute(
            name=attr["name"],
            input_type=attr["input_type"],
            values=tuple(_attr_text(v) for v in attr["values"]),
            default_value=_attr_text(attr["default_value"]) if "default_value" in attr else None,
        )
        for attr in label.get("attributes", ())
    )
