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

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

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
    decoder: DecoderSpec
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


def parse_manifest(data: Mapping[str, Any], *, source: str = "model.json") -> ModelManifest:
    """Validate ``data`` (a decoded model.json) and build the typed manifest."""
    raise NotImplementedError  # implemented in the model.json step


def load_manifest(text: str | bytes, *, source: str = "model.json") -> ModelManifest:
    """Decode JSON text and parse it; bad JSON is a ModelConfigError too."""
    raise NotImplementedError
