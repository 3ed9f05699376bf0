"""The TensorFlow runtimes on real and tiny models: SavedModel, TF1 frozen graph, Keras, TFLite.

Real models: the SSDLite person detector (frozen graph as shipped, and the
SavedModel tools/models/tensorflow_build.py makes of it) and BlazeFace short
range (.tflite). Tiny models are made here where a test needs an exact value or
a particular defect (two signatures, no variables/, a Lambda layer).
"""

from __future__ import annotations

import json
import pickle
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from common.errors import ModelConfigError, RuntimeLoadError
from common.manifest import parse_manifest
from common.pipeline import DetectorPipeline
from common.runtimes import TensorInfo, declared_inputs, load_runtime
from common.runtimes.filecheck import FileReport, ModelFileError, inspect_file, validate_files
from common.runtimes.model_files import detect_format
from tests.conftest import model_json
from tools.assets import asset_path
from tools.models.tensorflow_build import build_blazeface, build_ssdlite

REPO = Path(__file__).resolve().parent.parent
ASTRONAUT_PERSON = [3.3, 32.4, 373.2, 509.0]  # checked by eye on `make demo`'s picture
NO_RESIZE = {"preprocessing": {"resize": {"mode": "none"}}}  # tiny non-image models


def demo_manifest(folder: str, **overrides):
    data = json.loads((REPO / "demo" / "models" / folder / "model.json").read_text())
    data.update(overrides)
    return parse_manifest(data)


def with_runtime_keys(manifest, **keys):
    """The manifest with keys under model.json's runtime the schema does not list yet
    (signature, outputs, allow_unsafe_keras): the engines read them from ``raw``."""
    raw = dict(manifest.raw)
    raw["runtime"] = {**raw.get("runtime", {}), **keys}
    return replace(manifest, raw=MappingProxyType(raw))


def load(manifest, path: Path, **kwargs):
    return load_runtime(manifest.runtime.name, path, declared_inputs=declared_inputs(manifest), manifest=manifest,
                        threads=1, **kwargs)


@pytest.fixture(scope="module")
def tf():
    from common.runtimes.tensorflow_engine import import_tensorflow

    return import_tensorflow()


@pytest.fixture(scope="module")
def ssdlite():
    return build_ssdlite()


@pytest.fixture(scope="module")
def astronaut():
    from PIL import Image

    return np.asarray(Image.open(asset_path("astronaut.png")).convert("RGB"))


# ---- real models -----------------------------------------------------------------


def test_frozen_graph_finds_the_astronaut(ssdlite, astronaut):
    manifest = demo_manifest("ssdlite-person-detector")
    assert manifest.runtime.name == "tensorflow"
    runtime = load(manifest, ssdlite.frozen_graph)
    assert type(runtime).__name__ == "FrozenGraphEngine" and runtime.device == "CPU" and runtime.threads == 1
    assert runtime.session._config.intra_op_parallelism_threads == 1
    assert runtime.inputs == [TensorInfo("image_tensor", (None, None, None, 3), np.dtype(np.uint8))]
    assert [o.name for o in runtime.outputs] == ["detection_boxes", "detection_scores", "detection_classes",
                                                 "num_detections"]
    shapes = DetectorPipeline(manifest, runtime)(astronaut)
    assert [s["label"] for s in shapes] == ["person"]
    assert float(shapes[0]["confidence"]) > 0.9
    np.testing.assert_allclose(shapes[0]["points"], ASTRONAUT_PERSON, atol=0.5)


def test_savedmodel_finds_the_astronaut_as_the_frozen_graph_does(ssdlite, astronaut):
    manifest = demo_manifest("ssdlite-person-detector-savedmodel")
    assert detect_format(ssdlite.saved_model) == detect_format(ssdlite.saved_model / "saved_model.pb") \
        == "tf_saved_model"
    runtime = load(manifest, ssdlite.saved_model / "saved_model.pb")
    assert type(runtime).__name__ == "SavedModelEngine" and runtime.signature == "serving_default"
    assert runtime.inputs == [TensorInfo("image_tensor", (None, None, None, 3), np.dtype(np.uint8))]
    assert sorted(o.name for o in runtime.outputs) == ["detection_boxes", "detection_classes", "detection_scores",
                                                       "num_detections"]
    shapes = DetectorPipeline(manifest, runtime)(astronaut)
    frozen = DetectorPipeline(demo_manifest("ssdlite-person-detector"), load(
        demo_manifest("ssdlite-person-detector"), ssdlite.frozen_graph))(astronaut)
    assert [s["label"] for s in shapes] == [s["label"] for s in frozen] == ["person"]
    np.testing.assert_allclose(shapes[0]["points"], frozen[0]["points"], atol=0.5)
    assert abs(float(shapes[0]["confidence"]) - float(frozen[0]["confidence"])) <= 1e-3


def test_savedmodel_outputs_picked_by_name(ssdlite):
    manifest = with_runtime_keys(demo_manifest("ssdlite-person-detector-savedmodel"),
                                 outputs=["detection_scores", "num_detections"])
    runtime = load(manifest, ssdlite.saved_model)
    out = runtime.run({"image_tensor": np.zeros((1, 300, 300, 3), np.uint8)})
    assert list(out) == ["detection_scores", "num_detections"]
    assert out["detection_scores"].shape == (1, 100) and out["num_detections"].shape == (1,)
    bad = with_runtime_keys(manifest, outputs=["boxes"])
    with pytest.raises(RuntimeLoadError, match=r"runtime.outputs \['boxes'\] are not outputs of signature "
                                               r"'serving_default' \(outputs: detection_boxes, detection_classes, "
                                               r"detection_scores, num_detections\)"):
        load(bad, ssdlite.saved_model)


def test_tflite_engine_on_blazeface():
    files = build_blazeface()
    manifest = demo_manifest("blazeface-face-detector-tflite")
    runtime = load(manifest, files.tflite)
    assert type(runtime).__name__ == "TFLiteEngine" and runtime.threads == 1
    assert runtime.provider.startswith("ai-edge-litert")
    assert runtime.inputs == [TensorInfo("input", (1, 128, 128, 3), np.dtype(np.float32))]
    assert [(o.name, o.shape) for o in runtime.outputs] == [("regressors", (1, 896, 16)),
                                                            ("classificators", (1, 896, 1))]
    with pytest.raises(RuntimeLoadError, match=r"input 'input' takes shape \[1, 128, 128, 3\], got \[1, 3, 128, 128\]"):
        runtime.run({"input": np.zeros((1, 3, 128, 128), np.float32)})


# ---- bad files and contradicting model.json ------------------------------------------


def test_frozen_graph_given_to_onnxruntime_is_named(ssdlite, tmp_path):
    with pytest.raises(RuntimeLoadError) as info:
        load_runtime("onnxruntime", ssdlite.frozen_graph)
    assert str(info.value) == (
        "frozen_inference_graph.pb: this is a TensorFlow frozen graph (GraphDef .pb), which runtime 'onnxruntime' "
        "cannot run (it runs an ONNX model); set \"framework\": \"tensorflow\" in model.json (and leave "
        "runtime.name out, or pick a runtime that runs it)")
    # model.json alone already says so at validation
    with pytest.raises(ModelConfigError, match=r'\$\.file_name: "model.pb" is a tensorflow file name \(\.pb\), '
                                               r'not a onnx model'):
        parse_manifest(model_json("m", file_name="model.pb"))


def test_truncated_tflite_is_a_specific_error(tmp_path):
    data = build_blazeface().tflite.read_bytes()
    cut = tmp_path / "face.tflite"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeLoadError, match=rf"^face.tflite: the TFLite model is damaged or truncated "
                                               rf"\({len(data) // 2} bytes\), ai-edge-litert"):
        load_runtime("tensorflow", cut)
    (tmp_path / "fake.tflite").write_bytes(b"\x00" * 64)
    with pytest.raises(RuntimeLoadError, match="fake.tflite: not a TensorFlow Lite model"):
        load_runtime("tflite", tmp_path / "fake.tflite")


def test_truncated_frozen_graph_is_a_specific_error(ssdlite, tmp_path):
    cut = tmp_path / "graph.pb"
    cut.write_bytes(ssdlite.frozen_graph.read_bytes()[:100_000])
    with pytest.raises(RuntimeLoadError, match=r"^graph.pb: not a readable frozen graph: the file is damaged or "
                                               r"truncated \(100000 bytes\)"):
        load_runtime("tensorflow", cut)


def test_input_shape_contradicting_the_model(ssdlite):
    manifest = demo_manifest("blazeface-face-detector-tflite")
    nchw = replace(manifest, input=replace(manifest.input, shape=(1, 3, 128, 128)))
    with pytest.raises(RuntimeLoadError) as info:
        load(nchw, build_blazeface().tflite)
    assert str(info.value).startswith("face_detection_short_range.tflite: model.json input.shape [1, 3, 128, 128] "
                                      "contradicts the model's input 'input' [1, 128, 128, 3] (dimension 1, 3)")
    ssd = demo_manifest("ssdlite-person-detector")
    four_channels = replace(ssd, input=replace(ssd.input, shape=(1, 300, 300, 4)))
    for path in (ssdlite.frozen_graph, ssdlite.saved_model):
        with pytest.raises(RuntimeLoadError, match=r"input.shape \[1, 300, 300, 4\] contradicts the model's input "
                                                   r"'image_tensor' \[null, null, null, 3\] \(dimension 3\)"):
            load(four_channels, path)


def test_frozen_graph_names_that_are_not_in_it(ssdlite):
    manifest = demo_manifest("ssdlite-person-detector", input={**demo_manifest(
        "ssdlite-person-detector").raw["input"], "name": "images"})
    with pytest.raises(RuntimeLoadError) as info:
        load(manifest, ssdlite.frozen_graph)
    assert str(info.value) == (
        "frozen_inference_graph.pb: model.json input.name 'images' is not a node of the graph; the graph's "
        "Placeholders are ['image_tensor'], its likely outputs (nodes nothing consumes) ['detection_boxes', "
        "'detection_scores', 'detection_classes', 'num_detections']")


def _tiny_module(tf, with_variable: bool):
    module = tf.Module()
    module.w = tf.Variable([[2.0], [3.0]]) if with_variable else None

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def detect(x):
        w = module.w if with_variable else tf.constant([[2.0], [3.0]])
        return {"y": tf.matmul(x, w)}

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def classify(x):
        return {"sum": tf.reduce_sum(x, axis=1)}

    module.detect, module.classify = detect, classify
    return module


def test_savedmodel_signature_choice(tf, tmp_path):
    folder = tmp_path / "two"
    module = _tiny_module(tf, with_variable=True)
    tf.saved_model.save(module, str(folder), signatures={"detect": module.detect, "classify": module.classify})
    with pytest.raises(RuntimeLoadError) as info:
        load_runtime("tensorflow", folder / "saved_model.pb")
    assert str(info.value) == ("two: the SavedModel has 2 signatures ('classify', 'detect') and model.json names "
                               "none: set runtime.signature to one of them")
    manifest = with_runtime_keys(parse_manifest(model_json("two", framework="tensorflow",
                                                           file_name="two/saved_model.pb", input=NO_RESIZE | {"name": "x"})),
                                 signature="detect")
    runtime = load_runtime("tensorflow", folder, manifest=manifest, threads=1)
    assert runtime.inputs == [TensorInfo("x", (None, 2), np.dtype(np.float32))]
    assert runtime.run({"x": np.array([[1.0, 1.0], [0.5, 2.0]], np.float32)})["y"].tolist() == [[5.0], [7.0]]
    with pytest.raises(RuntimeLoadError, match=r"runtime.signature 'serve' is not a signature of the SavedModel "
                                               r"\(signatures: 'classify', 'detect'\)"):
        load_runtime("tensorflow", folder, manifest=with_runtime_keys(manifest, signature="serve"))


def test_savedmodel_without_variables_folder(tf, tmp_path):
    folder = tmp_path / "saved_model"
    module = _tiny_module(tf, with_variable=True)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.detect})
    assert load_runtime("tensorflow", folder).run({"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[5.0]]
    shutil.rmtree(folder / "variables")
    with pytest.raises(RuntimeLoadError) as info:
        load_runtime("tensorflow", folder / "saved_model.pb")
    assert str(info.value) == (
        f"saved_model: the SavedModel's variables/ folder is missing (expected {folder}/variables/variables.index "
        f"and variables.data-00000-of-00001): list the folder in model.json extra_files, e.g. "
        f"\"saved_model/variables\"")


def test_keras_lambda_refused_in_safe_mode_unless_opted_in(tf, tmp_path):
    import keras

    inp = keras.Input((2,), name="x")
    dense = keras.layers.Dense(1, name="dense", kernel_initializer=keras.initializers.Constant([[1.0], [10.0]]),
                               bias_initializer=keras.initializers.Constant(0.5))
    model = keras.Model(inp, dense(keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)))
    model.save(tmp_path / "lambda.keras")
    model.save(tmp_path / "lambda.h5")
    manifest = parse_manifest(model_json("lam", framework="keras", file_name="lambda.keras",
                                         input=NO_RESIZE | {"name": "x", "shape": [None, 2]}))
    for name in ("lambda.keras", "lambda.h5"):
        with pytest.raises(RuntimeLoadError) as info:
            load(manifest, tmp_path / name)
        assert str(info.value) == (
            f"{name}: refused in Keras safe mode: the model carries Python code (a Lambda layer or similar) that "
            f"loading would run. Only if you trust the file, set \"runtime\": {{\"allow_unsafe_keras\": true}} "
            f"in model.json")
    trusted = with_runtime_keys(manifest, allow_unsafe_keras=True)
    runtime = load(trusted, tmp_path / "lambda.keras")
    assert runtime.inputs == [TensorInfo("x", (None, 2), np.dtype(np.float32))]
    assert [o.name for o in runtime.outputs] == ["dense"]
    # (1*2)*1 + (3*2)*10 + 0.5
    assert runtime.run({"x": np.array([[1.0, 3.0]], np.float32)})["dense"].tolist() == [[62.5]]


# ---- file checks at validation, before any engine (common.runtimes.filecheck) ----------


def test_tensorflow_files_pass_validation_as_what_they_are(ssdlite, tf):
    manifest = demo_manifest("ssdlite-person-detector-savedmodel")
    report = validate_files(manifest, {"saved_model/saved_model.pb": ssdlite.saved_model / "saved_model.pb",
                                       "saved_model/variables": ssdlite.saved_model / "variables"})
    assert report == FileReport("saved_model/saved_model.pb", "tf_saved_model",
                                {"graphs": [{"tags": ["serve"], "variables": False, "saver": True}],
                                 "variables_folder": True})
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(ssdlite.frozen_graph.read_bytes())
    frozen = validate_files(demo_manifest("ssdlite-person-detector"), {"frozen_inference_graph.pb": ssdlite.frozen_graph})
    assert frozen == FileReport("frozen_inference_graph.pb", "tf_frozen_graph", {"nodes": len(graph_def.node)})
    tflite = validate_files(demo_manifest("blazeface-face-detector-tflite"),
                            {"face_detection_short_range.tflite": build_blazeface().tflite})
    assert tflite == FileReport("face_detection_short_range.tflite", "tflite", {})


def test_savedmodel_variables_folder_checked_at_validation(tf, tmp_path):
    folder = tmp_path / "saved_model"
    module = _tiny_module(tf, with_variable=True)
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.detect})
    pb, name = folder / "saved_model.pb", "saved_model/saved_model.pb"
    assert inspect_file("tensorflow", pb, name=name).details == {
        "graphs": [{"tags": ["serve"], "variables": True, "saver": True}], "variables_folder": True}
    start = "saved_model/saved_model.pb: the SavedModel loads its variables from a variables/ folder, which"
    hint = ("(expected saved_model/variables/variables.index and saved_model/variables/variables.data-00000-of-00001)"
            ": list the folder in model.json extra_files, e.g. \"saved_model/variables\"")
    (folder / "variables" / "variables.index").unlink()
    with pytest.raises(ModelFileError) as info:
        inspect_file("tensorflow", pb, name=name)
    assert str(info.value) == f"{start} lacks variables.index or variables.data-* {hint}"
    shutil.rmtree(folder / "variables")
    with pytest.raises(ModelFileError) as info:
        inspect_file("tensorflow", pb, name=name)
    assert str(info.value) == f"{start} is missing {hint}"
    # A graph without variables still has a saver: TensorFlow's loader reads the (empty) checkpoint,
    # so the folder is needed all the same; validation says so where the load would fail obscurely.
    plain = tmp_path / "plain"
    module = _tiny_module(tf, with_variable=False)
    tf.saved_model.save(module, str(plain), signatures={"serving_default": module.detect})
    assert inspect_file("tensorflow", plain / "saved_model.pb").details == {
        "graphs": [{"tags": ["serve"], "variables": False, "saver": True}], "variables_folder": True}
    assert load_runtime("tensorflow", plain, threads=1).run({"x": np.ones((1, 2), np.float32)})["y"].tolist() == [[5.0]]
    shutil.rmtree(plain / "variables")
    with pytest.raises(ModelFileError, match=r"^saved_model\.pb: the SavedModel loads its variables from a "
                                             r"variables/ folder, which is missing \(expected variables/variables"):
        inspect_file("tensorflow", plain / "saved_model.pb")
    with pytest.raises(RuntimeLoadError, match="is not a valid checkpoint"):
        load_runtime("tensorflow", plain, threads=1)


def test_damaged_tensorflow_files_caught_at_validation(ssdlite, tmp_path):
    (tmp_path / "graph.pb").write_bytes(ssdlite.frozen_graph.read_bytes()[:100_000])
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "saved_model.pb").write_bytes((ssdlite.saved_model / "saved_model.pb").read_bytes()[:100_000])
    (tmp_path / "fake.tflite").write_bytes(b"\x00" * 64)
    (tmp_path / "empty.pb").write_bytes(b"")
    (tmp_path / "cut.keras").write_bytes(b"PK\x03\x04junk")
    (tmp_path / "notes.pb").write_bytes(b"not a graph at all")
    cases = [
        ("graph.pb", r"graph\.pb: the frozen graph is damaged or truncated \(field 1 at byte \d+ needs \d+ bytes, \d+ "
                     r"are left; 100000 bytes\): upload it again"),
        ("cut/saved_model.pb", r"saved_model\.pb: the SavedModel's saved_model\.pb is damaged or truncated \(field 2 "
                               r"at byte 7 needs \d+ bytes, 99993 are left; 100000 bytes\): upload it again"),
        ("fake.tflite", r'fake\.tflite: the file is not a TensorFlow Lite model: it has no "TFL3" identifier at byte 4: '
                        r"upload the \.tflite file again, or check framework in model\.json"),
        ("empty.pb", r"empty\.pb: the file is empty \(0 bytes\): upload it again"),
        ("cut.keras", r"cut\.keras: the \.keras archive is truncated or damaged: it starts as a zip archive but has no "
                      r"end-of-archive directory \(8 bytes\); upload it again"),
        ("notes.pb", r"notes\.pb: the file is neither a SavedModel's saved_model\.pb nor a frozen GraphDef: it is "
                     r"damaged or another format; upload it again, or check framework in model\.json"),
    ]
    for file, message in cases:
        with pytest.raises(ModelFileError, match=f"^{message}$"):
            inspect_file("tensorflow", tmp_path / file)


def test_tensorflow_and_keras_files_of_the_wrong_format(ssdlite, tf, tmp_path):
    import keras

    with pytest.raises(ModelFileError) as info:
        inspect_file("tensorflow", ssdlite.ir_xml)
    assert str(info.value) == ('ssdlite.xml: the file is an OpenVINO IR .xml, not a tensorflow model: set framework '
                               '"openvino" in model.json')
    with pytest.raises(ModelFileError) as info:
        inspect_file("keras", build_blazeface().tflite, name="face.keras")
    assert str(info.value) == ('face.keras: the file is a TensorFlow Lite model, not a Keras model (.keras or .h5): '
                               'set framework "tensorflow" in model.json')
    with pytest.raises(ModelFileError) as info:
        inspect_file("tensorflow", ssdlite.saved_model / "saved_model.pb", runtime="tflite")
    assert str(info.value) == ('saved_model.pb: the file is a TensorFlow SavedModel; runtime "tflite" runs only a '
                               'TensorFlow Lite flatbuffer: leave runtime.name out of model.json (runtime "tensorflow" '
                               'opens it)')
    # Keras files pass under either framework; a zip that is not a Keras model does not
    inp = keras.Input((2,), name="x")
    model = keras.Model(inp, keras.layers.Dense(1, name="dense")(inp))
    model.save(tmp_path / "m.keras")
    model.save(tmp_path / "m.h5")
    for framework in ("keras", "tensorflow"):
        for file, kind in (("m.keras", "keras"), ("m.h5", "hdf5")):
            manifest = parse_manifest(model_json("k", framework=framework, file_name=file,
                                                 input=NO_RESIZE | {"name": "x", "shape": [None, 2]}))
            assert validate_files(manifest, {file: tmp_path / file}) == FileReport(file, kind, {})
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ModelFileError) as info:
        inspect_file("keras", tmp_path / "other.keras")
    assert str(info.value) == ('other.keras: the zip archive is not a Keras model (it has no config.json with '
                               'model.weights.h5 or metadata.json): save the model with model.save("model.keras")')


def test_detect_format_names_what_a_damaged_file_starts_as(tmp_path):
    files = {"empty.bin": b"", "cut.zip": b"PK\x03\x04junk", "doc.xml": b"<?xml version='1.0'?><graph/>",
             "cut.onnx": b"\x08\x0a\x3a\xff\xff\xff\x0f", "old.pth": pickle.dumps({"w": 1}, protocol=2)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert {n: detect_format(tmp_path / n, partial=True) for n in files} == {
        "empty.bin": "empty", "cut.zip": "zip", "doc.xml": "xml", "cut.onnx": "onnx", "old.pth": "pickle"}
    # without partial only what the content confirms is named
    assert {n: detect_format(tmp_path / n) for n in files} == {
        "empty.bin": None, "cut.zip": None, "doc.xml": None, "cut.onnx": None, "old.pth": "pickle"}
    with pytest.raises(RuntimeLoadError) as info:
        load_runtime("onnxruntime", tmp_path / "old.pth")
    assert str(info.value) == (
        "old.pth: this is a Python pickle (legacy torch.save or pickle.dump), which runtime 'onnxruntime' cannot run "
        "(it runs an ONNX model); set \"framework\": \"pytorch\" in model.json (and leave runtime.name out, or pick a "
        "runtime that runs it)")
