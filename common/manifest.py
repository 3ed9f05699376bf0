"""model.json, validated once at the edge into typed, immutable objects.

``parse_manifest(data)`` checks a model.json document against
``common/schema/model.schema.json`` (JSON Schema draft 7, checked with
``jsonschema``), then against the chosen decoder's own parameter schema, and
returns a :class:`ModelManifest`. Every fault is reported with its JSON path
(e.g. ``$.input.layout``) in one :class:`~common.errors.ModelConfigError`.
Nothing downstream reads the raw dict again. The format is documented in
``docs/model-json.md``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Literal, Mapping

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
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def label_by_id(self) -> dict[int, Label]:
        return {label.id: label for label in self.labels}


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------

SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "model.schema.json"

# Frameworks this runner has an engine for, and which engines run which.
RUNNABLE_FRAMEWORKS = ("onnx", "openvino")
RUNTIME_FRAMEWORKS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "onnxruntime": ("onnx",),
    "openvino": ("onnx", "openvino"),
})
DEFAULT_DECODER = "yolo"  # for detectors whose model.json names no decoder

_PathParts = tuple[str | int, ...]
_Problem = tuple[_PathParts, str]
_RESIZE = ("input", "preprocessing", "resize")


def load_schema() -> dict[str, Any]:
    """A fresh copy of the model.json JSON Schema (draft 7)."""
    return copy.deepcopy(_validator().schema)


@functools.lru_cache(maxsize=1)
def _validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return Draft7Validator(schema)


def parse_manifest(data: Mapping[str, Any], *, source: str = "model.json") -> ModelManifest:
    """Validate ``data`` (a decoded model.json) and build the typed manifest."""
    problems: list[_Problem] = [
        (tuple(err.absolute_path), _error_message(err)) for err in _validator().iter_errors(data)
    ]
    if isinstance(data, Mapping):
        problems += _semantic_problems(data)
    if problems:
        raise ModelConfigError(_sorted_problems(problems), source=source)
    manifest = _build(data, source)
    logger.debug("%s: %s %s (%s, %s) is valid", source, manifest.name, manifest.version,
                 manifest.framework, manifest.type)
    return manifest


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
    except ValueError as exc:
        raise ModelConfigError([("$", f"invalid JSON: {exc}")], source=source) from None

    if not duplicates:
        return parse_manifest(data, source=source)
    problems = [("$", f"duplicate key {key!r} in a JSON object (only the last one would count)")
                for key in dict.fromkeys(duplicates)]
    try:
        parse_manifest(data, source=source)
    except ModelConfigError as exc:
        problems += exc.problems  # already sorted; its "$" problems come first too
    raise ModelConfigError(problems, source=source)


# ---- problem formatting ----------------------------------------------------


def _json_path(parts: Iterable[str | int]) -> str:
    """``("labels", 0, "name")`` -> ``$.labels[0].name``."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.isidentifier():
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def _error_message(err: ValidationError) -> str:
    """jsonschema's message, unless the failing (sub)schema carries this
    project's ``errorMessage`` for the failing keyword (see the schema's $comment)."""
    custom = err.schema.get("errorMessage") if isinstance(err.schema, Mapping) else None
    if isinstance(custom, Mapping) and isinstance(custom.get(err.validator), str):
        return custom[err.validator]
    return err.message


def _sorted_problems(problems: Iterable[_Problem]) -> list[tuple[str, str]]:
    def key(problem: _Problem) -> tuple[Any, ...]:
        parts, message = problem
        return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in parts), message

    unique = dict.fromkeys((tuple(p), m) for p, m in problems)
    return [(_json_path(parts), message) for parts, message in sorted(unique, key=key)]


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
    return problems


def _check_framework(data: Mapping[str, Any]) -> list[_Problem]:
    framework = data.get("framework")
    if not isinstance(framework, str):
        return []
    if framework not in RUNNABLE_FRAMEWORKS:
        known = _validator().schema["properties"]["framework"]["enum"]
        if framework not in known:
            return []  # the schema already says so
        return [(("framework",), f"framework {framework!r} is not supported by this runner yet "
                                 f"(supported: {', '.join(RUNNABLE_FRAMEWORKS)})")]
    runtime = _obj(data.get("runtime"))
    name = runtime.get("name", DEFAULT_RUNTIME.get(framework))
    problems: list[_Problem] = []
    if name in RUNTIME_FRAMEWORKS and framework not in RUNTIME_FRAMEWORKS[name]:
        able = [rt for rt, fws in RUNTIME_FRAMEWORKS.items() if framework in fws]
        problems.append((("runtime", "name"), f"runtime {name!r} cannot run framework {framework!r} "
                                              f"(use {' or '.join(repr(rt) for rt in able)})"))
    precision = runtime.get("precision")
    if name == "onnxruntime" and isinstance(precision, str) and precision != "f32":
        problems.append((("runtime", "precision"), f"precision {precision!r} needs runtime 'openvino' "
                                                   "(onnxruntime runs the weights as stored: use 'f32')"))
    return problems


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
                problems.append((base + (pos,), f"duplicate {what} name {name!r} (already used by {first})"))
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
                             f"duplicate attribute name {name!r} (already used by {first})"))
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
        return [(path, f"unknown decoder {name!r}; known: {', '.join(decoders.names())}")]
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
                         f"keep_aspect_ratio {str(keep).lower()} contradicts mode {resize['mode']!r}"))
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
            problems.append((_RESIZE + (key,), f"resize.{key} {given} does not match the {key} "
                                               f"{static} of the static input.shape"))
    if missing:
        which = " and ".join(missing)
        problems.append((_RESIZE, f"resize mode {mode!r} needs a target size, but {which} "
                                  f"{'is' if len(missing) == 1 else 'are'} missing: set "
                                  f"{' and '.join('resize.' + k for k in missing)} or give a static "
                                  f"4-D input.shape"))
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
        decoder = DecoderSpec(name=choice[0], params=MappingProxyType(copy.deepcopy(choice[1])))
    return OutputSpec(
        decoder=decoder,
        score_threshold=float(out.get("score_threshold", 0.5)),
        shape=_shape(out.get("shape")),
        format=out.get("format"),
    )


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
