"""What a model file is, read from its bytes, before any engine opens it.

:func:`detect_format` tells the common model formats apart by content (a few
bytes, or the first protobuf fields), without importing any framework, so a
file handed to the wrong runtime gets a clear error instead of the engine's
own parse failure: :func:`check_runtime_can_run` raises
:class:`~common.errors.RuntimeLoadError` naming the format and the framework
to set. :mod:`common.runtimes.filecheck` asks it too (``partial=True``), to
tell a damaged file by what it starts as.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from common.errors import RuntimeLoadError

# format -> (what it is, in words; the model.json framework that runs it)
FORMATS: dict[str, tuple[str, str]] = {
    "onnx": ("an ONNX model", "onnx"),
    "openvino_ir": ("an OpenVINO IR (.xml)", "openvino"),
    "tf_saved_model": ("a TensorFlow SavedModel", "tensorflow"),
    "tf_frozen_graph": ("a TensorFlow frozen graph (GraphDef .pb)", "tensorflow"),
    "tflite": ("a TensorFlow Lite flatbuffer", "tensorflow"),
    "keras": ("a Keras model (.keras)", "keras"),
    "hdf5": ("an HDF5 file (Keras .h5)", "keras"),
    "torchscript": ("a PyTorch archive (TorchScript or torch.save)", "pytorch"),
    "pickle": ("a Python pickle (legacy torch.save or pickle.dump)", "pytorch"),
}
# What detect_format(partial=True) also answers for a file that only starts
# like a format: the rest is damaged, cut short or undecided.
PARTIAL_FORMATS: dict[str, str] = {
    "empty": "an empty file (0 bytes)",
    "zip": "a zip archive that is neither a PyTorch nor a Keras model, or a damaged one",
    "xml": "an XML file that is not an OpenVINO IR",
    "onnx": "a protobuf that starts as an ONNX model (ir_version) but is not a whole one",
}

# runtime -> formats it runs. A runtime missing here is not checked.
RUNTIME_FORMATS: dict[str, frozenset[str]] = {
    "onnxruntime": frozenset({"onnx"}),
    "openvino": frozenset({"openvino_ir", "onnx", "tf_saved_model", "tf_frozen_graph", "tflite"}),
    "tensorflow": frozenset({"tf_saved_model", "tf_frozen_graph", "tflite", "keras", "hdf5"}),
    "tflite": frozenset({"tflite"}),
}

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect_format(path: Path | str, *, partial: bool = False) -> str | None:
    """The format of the file (or SavedModel folder) at ``path``, a key of
    :data:`FORMATS`; None when unknown or unreadable.

    With ``partial``, a file the content does not confirm is named by what it
    starts as, a key of :data:`PARTIAL_FORMATS`, where it starts as one."""
    path = Path(path)
    if path.is_dir():
        return "tf_saved_model" if (path / "saved_model.pb").is_file() else None
    if path.name in ("saved_model.pb", "saved_model.pbtxt"):
        return "tf_saved_model"
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head:
        return "empty" if partial else None
    if head[4:8] == b"TFL3":
        return "tflite"
    if any(head[at:at + 8] == _HDF5_MAGIC for at in (0, 512, 1024, 2048)):
        return "hdf5"
    if head.startswith(b"PK"):
        return _zip_format(path) or ("zip" if partial else None)
    text = head.lstrip()
    if text.startswith(b"<") and b"<net" in head:
        return "openvino_ir"
    if partial and text.startswith(b"<?xml"):
        return "xml"
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:  # PROTO opcode: a pickle (legacy torch.save)
        return "pickle"
    return _protobuf_format(path, partial)


def _zip_format(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if "config.json" in names and any(n.endswith(".weights.h5") or n == "metadata.json" for n in names):
        return "keras"
    if any(n.endswith(("/data.pkl", "/constants.pkl")) or n == "data.pkl" for n in names):
        return "torchscript"
    return None


def _varint(f) -> int | None:
    value = shift = 0
    for _ in range(10):
        byte = f.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        shift += 7
    return None


def _protobuf_fields(path: Path, limit: int = 64) -> list[tuple[int, int]]:
    """(field number, wire type) of the first top-level fields of a protobuf
    file, skipping their contents; stops at the first thing that is not protobuf."""
    fields: list[tuple[int, int]] = []
    size = path.stat().st_size
    with open(path, "rb") as f:
        while len(fields) < limit and f.tell() < size:
            key = _varint(f)
            if key is None or key >> 3 == 0:
                break
            number, wire = key >> 3, key & 7
            if wire == 0:
                if _varint(f) is None:
                    break
            elif wire == 1:
                f.seek(8, 1)
            elif wire == 2:
                length = _varint(f)
                if length is None or f.tell() + length > size:
                    break
                f.seek(length, 1)
            elif wire == 5:
                f.seek(4, 1)
            else:
                break
            fields.append((number, wire))
    return fields


def _protobuf_format(path: Path, partial: bool = False) -> str | None:
    """ONNX ModelProto (ir_version varint 1, graph 7, opset_import 8) or
    TensorFlow GraphDef (node 1, library 2, versions 4, all messages); with
    ``partial``, ONNX too for what starts with ir_version (how every ONNX writer
    starts) and stops, cut short or damaged, before it is whole."""
    try:
        fields = _protobuf_fields(path)
    except OSError:
        return None
    if not fields:
        return None
    numbers = {n for n, _ in fields}
    if (1, 0) in fields and numbers & {7, 8}:
        return "onnx"
    if (1, 2) in fields and all(wire == 2 for n, wire in fields if n in (1, 2, 4)) and numbers <= {1, 2, 3, 4}:
        return "tf_frozen_graph"
    if partial and fields[0] == (1, 0):
        return "onnx"
    return None


def check_runtime_can_run(runtime: str, path: Path | str) -> None:
    """RuntimeLoadError when ``path`` is, by its content, a format ``runtime``
    cannot run; nothing when it can, when the format is unknown, or when
    ``runtime`` is not in :data:`RUNTIME_FORMATS`."""
    formats = RUNTIME_FORMATS.get(runtime)
    found = detect_format(path)
    if formats is None or found is None or found in formats:
        return
    what, framework = FORMATS[found]
    runnable = ", ".join(FORMATS[f][0] for f in sorted(formats))
    raise RuntimeLoadError(f"{Path(path).name}: this is {what}, which runtime {runtime!r} cannot run "
                           f"(it runs {runnable}); set \"framework\": \"{framework}\" in model.json "
                           f"(and leave runtime.name out, or pick a runtime that runs it)")

