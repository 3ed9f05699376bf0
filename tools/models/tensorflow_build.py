"""Model files made from the pinned TensorFlow models, for the demo registry and the parity tests.

From the SSDLite person detector (``frozen_inference_graph.pb``, a TF1 frozen
graph): a TF2 SavedModel (one ``serving_default`` signature, input
``image_tensor``, the four detection outputs by name) and an OpenVINO IR. From
BlazeFace short range (``face_detection_short_range.tflite``): an OpenVINO IR.
The IRs keep f32 weights (no fp16 compression) and carry exactly the tensor
names of the TensorFlow model, so one model.json fits every format.

Files are built once into ``<assets>/built/<model>-<key>/`` (outside the
repository) and reused; ``key`` changes with the source file, the converter
versions and this builder. Usage: ``python -m tools.models.tensorflow_build``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tools.assets import ASSETS, asset_path
from tools.models.cache import built_folder, cache_key

log = logging.getLogger(__name__)

SSDLITE_GRAPH = "frozen_inference_graph.pb"
BLAZEFACE_TFLITE = "face_detection_short_range.tflite"
BUILDER_VERSION = "2"  # bump when the files built here change
SSDLITE_INPUT = "image_tensor"
SSDLITE_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
BLAZEFACE_INPUT = "input"
BLAZEFACE_OUTPUTS = ("regressors", "classificators")


@dataclass(frozen=True)
class SsdliteFiles:
    frozen_graph: Path  # the .pb as shipped
    saved_model: Path  # folder: saved_model.pb, variables/, fingerprint.pb
    ir_xml: Path  # OpenVINO IR converted from the frozen graph
    ir_bin: Path


@dataclass(frozen=True)
class BlazefaceFiles:
    tflite: Path  # as shipped
    ir_xml: Path  # OpenVINO IR converted from the .tflite
    ir_bin: Path


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def _key(source: str) -> str:
    return cache_key(ASSETS[source].sha256, f"tensorflow-cpu {_version('tensorflow-cpu')}",
                     f"openvino {_version('openvino')}", f"builder {BUILDER_VERSION}")


def build_ssdlite() -> SsdliteFiles:
    folder = built_folder("ssdlite-person", _key(SSDLITE_GRAPH), _build_ssdlite)
    return SsdliteFiles(asset_path(SSDLITE_GRAPH), folder / "saved_model", folder / "ssdlite.xml",
                        folder / "ssdlite.bin")


def build_blazeface() -> BlazefaceFiles:
    folder = built_folder("blazeface-tflite", _key(BLAZEFACE_TFLITE), _build_blazeface)
    return BlazefaceFiles(asset_path(BLAZEFACE_TFLITE), folder / "blazeface.xml", folder / "blazeface.bin")


def ssdlite_savedmodel_folder() -> Path:
    """The folder in which the files of the demo model ``ssdlite-person-detector-savedmodel``
    lie at the paths its model.json names (``saved_model/saved_model.pb``, ``saved_model/variables``)."""
    return build_ssdlite().saved_model.parent


def frozen_graph_to_saved_model(graph_path: Path, out: Path, inputs: dict[str, str], outputs: tuple[str, ...],
                                input_dtype: str = "uint8", input_shape: tuple = (None, None, None, 3)) -> None:
    """Write a TF2 SavedModel whose ``serving_default`` signature runs the frozen
    graph: ``inputs`` maps signature input name -> graph tensor, outputs keep their names."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    wrapped = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    (key, tensor), = inputs.items()
    pruned = wrapped.prune(feeds=wrapped.graph.get_tensor_by_name(tensor),
                           fetches={name: wrapped.graph.get_tensor_by_name(f"{name}:0") for name in outputs})

    @tf.function(input_signature=[tf.TensorSpec(input_shape, getattr(tf, input_dtype), name=key)])
    def serve(image):
        return pruned(image)

    module = tf.Module()
    module.graph = pruned  # keeps the pruned function (and its constants) alive in the object graph
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})


def _rename_ports(model, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
    """Give each port exactly the TensorFlow name (without ':0') among the names it carries,
    and no other tensor a name: when the CPU plugin fuses an output's producer (SSDLite's
    ``detection_classes = add(...)``), the compiled port would otherwise also carry the
    fused tensor's name, and that one may be the name reported for it."""
    for ports, wanted in ((model.inputs, inputs), (model.outputs, outputs)):
        for port in ports:
            names = {n.split(":")[0] for n in port.get_names()}
            match = [w for w in wanted if w in names]
            if len(match) == 1:
                port.get_tensor().set_names({match[0]})
    keep = set(inputs) | set(outputs)
    for op in model.get_ordered_ops():
        for out in op.outputs():
            if out.get_names() and not out.get_names() & keep:
                out.get_tensor().set_names(set())


def _build_ssdlite(out: Path) -> None:
    import openvino as ov

    graph = asset_path(SSDLITE_GRAPH)
    frozen_graph_to_saved_model(graph, out / "saved_model", {SSDLITE_INPUT: f"{SSDLITE_INPUT}:0"}, SSDLITE_OUTPUTS)
    model = ov.convert_model(str(graph))
    _rename_ports(model, (SSDLITE_INPUT,), SSDLITE_OUTPUTS)
    ov.save_model(model, str(out / "ssdlite.xml"), compress_to_fp16=False)


def _build_blazeface(out: Path) -> None:
    import openvino as ov

    model = ov.convert_model(str(asset_path(BLAZEFACE_TFLITE)))
    _rename_ports(model, (BLAZEFACE_INPUT,), BLAZEFACE_OUTPUTS)
    ov.save_model(model, str(out / "blazeface.xml"), compress_to_fp16=False)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("%s", build_ssdlite())
    log.info("%s", build_blazeface())


if __name__ == "__main__":
    main()
