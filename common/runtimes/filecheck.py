"""Look inside a model file before any runtime loads it.

:func:`validate_files` is the file-level half of validating a registry
model (model.json's own checks are in :mod:`common.manifest`): the runner
calls it before loading, and registry-sync can call it on downloaded files.
Each bad file gets its own message, and nothing here runs code from the
file: PyTorch pickles are read opcode by opcode (``pickletools``), never
unpickled; ONNX protobufs are walked field by field; IR headers are XML.

What is checked, per framework:

* pytorch: a TorchScript archive or a torch.export program (.pt2); a plain
  state_dict, a pickled module/object, a truncated archive or another
  format are refused, each saying what the file is and how to export it.
* onnx: the protobuf is whole, the ai.onnx opset is one the installed
  ONNX Runtime runs, and model.json's input.shape agrees with the graph's.
* openvino: the IR version in the .xml is one this OpenVINO reads, the .bin
  is there and long enough for every constant the .xml reads from it.
* tensorflow, keras: the file is a format the framework's runtime opens
  (SavedModel, frozen graph, .tflite, .keras, .h5); a SavedModel's
  saved_model.pb is whole and, when its graph has variables, its variables/
  folder is there; a frozen graph is whole; a .tflite has its identifier.

What a file is comes from :func:`common.runtimes.model_files.detect_format`.
"""

from __future__ import annotations

import functools
import io
import logging
import mmap
import pickletools
import posixpath
import threading
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping
from xml.etree import ElementTree

from common.errors import RuntimeLoadError
from common.runtimes import TensorInfo, shape_conflict
from common.runtimes.model_files import FORMATS, RUNTIME_FORMATS, detect_format

log = logging.getLogger(__name__)

_torch_load_lock = threading.Lock()

# OpenVINO IR versions the pinned openvino (2026.4.1) reads; 7 and 12 are refused
# by its IR frontend (tests/test_runtime_torch.py keeps this list honest).
OPENVINO_IR_VERSIONS = (10, 11)

_EXPORT_HOWTO = ('export it from Python instead: torch.jit.save(torch.jit.trace(model, example), "model.pt") '
                 '(framework "pytorch"), or torch.onnx.export(model, example, "model.onnx") (framework "onnx")')


class ModelFileError(RuntimeLoadError):
    """A model file is not what model.json says, or is damaged. ``file`` is its
    model.json name (e.g. ``model.pt``)."""

    def __init__(self, file: str, message: str):
        super().__init__(f"{file}: {message}")
        self.file = file


@dataclass(frozen=True)
class FileReport:
    """What :func:`inspect_file` found: ``kind`` (torchscript, torch.export, onnx,
    openvino-ir, tf_saved_model, tf_frozen_graph, tflite, keras, hdf5) and format
    details (opset, IR version, input shapes...)."""

    file: str
    kind: str
    details: Mapping[str, Any] = field(default_factory=dict)


# ---- what the file is ---------------------------------------------------------


def file_format(path: Path) -> str:
    """What the file is by its content: a key of model_files' FORMATS, or of its
    PARTIAL_FORMATS for a file that only starts as one (``empty``, ``zip``,
    ``xml``, ``onnx``); ``unknown`` otherwise."""
    return detect_format(path, partial=True) or "unknown"


_ZIP = ("a zip archive (PyTorch or Keras)", None)
_IR = ("an OpenVINO IR .xml", "openvino")
_FORMAT_NAMES = {"openvino_ir": _IR, "xml": _IR, "hdf5": ("a Keras HDF5 file", "keras"),
                 "tflite": ("a TensorFlow Lite model", "tensorflow"), "onnx": ("an ONNX model", "onnx"),
                 "zip": _ZIP, "torchscript": _ZIP, "keras": _ZIP, "pickle": ("a Python pickle (PyTorch)", "pytorch"),
                 "tf_saved_model": ("a TensorFlow SavedModel", "tensorflow"),
                 "tf_frozen_graph": ("a TensorFlow frozen graph (GraphDef .pb)", "tensorflow")}
_ZIP_FORMATS = ("zip", "torchscript", "keras")


def _wrong_format(name: str, framework: str, found: str) -> ModelFileError:
    if found == "empty":
        return ModelFileError(name, "the file is empty (0 bytes): upload it again")
    what, right = _FORMAT_NAMES.get(found, ("not a format this runner knows", None))
    hint = f': set framework "{right}" in model.json' if right and right != framework else ""
    return ModelFileError(name, f'the file is {what}, not a {framework} model{hint}')


# ---- PyTorch -------------------------------------------------------------------

# Globals a weights-only pickle (a state_dict or checkpoint dict) may name.
_DATA_MODULES = {"collections": {"OrderedDict"}, "builtins": {"set", "frozenset", "slice"},
                 "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state",
                                  "_rebuild_qtensor", "_rebuild_sparse_tensor"},
                 "torch": {"Size", "device", "float32", "float16", "bfloat16", "int64", "int32", "uint8", "bool"}}


def _is_data_global(module: str, name: str) -> bool:
    if module == "torch" and name.endswith("Storage"):
        return True
    if module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"):
        return True
    return name in _DATA_MODULES.get(module, ())


# protocol 0-2 pickles name some modules by their Python 2 names
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def pickle_globals(data: bytes | memoryview) -> list[str]:
    """Every ``module.name`` the pickles in ``data`` would import, read from the
    opcodes without unpickling (consecutive pickles, as the legacy torch.save writes)."""
    stream = io.BytesIO(data)
    found: list[str] = []
    while True:
        start = stream.tell()
        if stream.read(1) != b"\x80":
            break
        stream.seek(start)
        strings: list[str] = []  # recent string pushes, for STACK_GLOBAL (protocol 4+)
        memo: dict[int, str] = {}
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    module, _, name = str(arg).partition(" ")
                    found.append(f"{_PY2_MODULES.get(module, module)}.{name}")
                elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                    strings.append(arg)
                elif op.name in ("BINPUT", "LONG_BINPUT") and strings:
                    memo[arg] = strings[-1]
                elif op.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif op.name in ("BINGET", "LONG_BINGET") and arg in memo:
                    strings.append(memo[arg])
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
        except ValueError:  # raw storage bytes after the pickles, or a damaged pickle
            break
    return found


def _torch_pickle_problem(name: str, globals_: list[str], legacy: bool) -> ModelFileError:
    others = [g for g in dict.fromkeys(globals_) if not _is_data_global(*g.rsplit(".", 1))]
    saved = " (a plain pickle: legacy torch.save or pickle.dump)" if legacy else ""
    if not others:
        return ModelFileError(
            name, f"the file is a PyTorch state_dict{saved}: weights only (torch.save(model.state_dict())), "
                  f"with no network for the runner to run. Build the model in Python, load_state_dict() it, "
                  f"then {_EXPORT_HOWTO}")
    modules = [g for g in others if g.startswith("torch.nn.")]
    what = "a pickled torch.nn.Module (torch.save(model))" if modules else "a pickled Python object"
    shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
    return ModelFileError(
        name, f"the file is {what}{saved} that names {shown}; unpickling it would run code from the file, so "
              f"the runner never does. A model file must be a TorchScript archive or a torch.export program: "
              f"{_EXPORT_HOWTO}")


def _check_program_pickles(z: zipfile.ZipFile, name: str) -> None:
    """A torch.export program (.pt2) keeps sample inputs and constants as torch.save
    archives (or plain pickles) inside its zip; those hold tensors only. One that names
    anything else would run code if loaded without weights_only: refused here, unread."""
    for member in z.namelist():
        data = z.read(member)
        pickles = []
        if data[:1] == b"\x80":
            pickles = [data]
        elif data[:2] == b"PK":
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    pickles = [inner.read(n) for n in inner.namelist() if n.endswith(".pkl")]
            except zipfile.BadZipFile:
                continue
        others = [g for d in pickles for g in dict.fromkeys(pickle_globals(d)) if not _is_data_global(*g.rsplit(".", 1))]
        if others:
            shown = ", ".join(others[:4]) + (", ..." if len(others) > 4 else "")
            raise ModelFileError(name, f"the torch.export program holds a pickle ({member}) that names {shown}, "
                                       f"not tensors only; loading it would run code from the file, so the runner "
                                       f"never does. Export the program again: torch.export.save(torch.export."
                                       f"export(model, example), \"model.pt2\")")


def inspect_torch(path: Path, name: str | None = None) -> FileReport:
    """``torchscript`` or ``torch.export`` (.pt2); anything else is a ModelFileError saying what it is."""
    name = name or path.name
    kind = file_format(path)
    if kind == "pickle":
        raise _torch_pickle_problem(name, pickle_globals(path.read_bytes()), legacy=True)
    if kind not in _ZIP_FORMATS:
        raise _wrong_format(name, "pytorch", kind)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(name, f"the file is truncated or damaged: it starts as a zip archive (TorchScript / "
                                   f"torch.save) but has no end-of-archive directory ({path.stat().st_size} bytes); "
                                   f"upload it again")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            members = {n.split("/", 1)[1] if "/" in n else n for n in names}
            if "archive_format" in members:
                fmt = z.read(next(n for n in names if n.endswith("archive_format"))).decode("ascii", "replace")
                if fmt.strip() == "pt2":
                    return FileReport(name, "torch.export", {"archive_format": "pt2"})
            if "constants.pkl" in members and any(m.startswith("code/") for m in members):
                return FileReport(name, "torchscript", {})
            if "data.pkl" in members:
                data = z.read(next(n for n in names if n.endswith("/data.pkl") or n == "data.pkl"))
                raise _torch_pickle_problem(name, pickle_globals(data), legacy=False)
            if any(m.startswith("keras_version") or m in ("config.json", "metadata.json") for m in members):
                raise ModelFileError(name, 'the file is a Keras .keras archive, not a pytorch model: '
                                           'set framework "keras" in model.json')
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(name, f"the zip archive is damaged ({exc}): upload it again") from None
    raise ModelFileError(name, "the zip archive holds neither a TorchScript module (code/, constants.pkl) nor a "
                               f"torch.export program (archive_format pt2): {_EXPORT_HOWTO}")


# ---- ONNX (a minimal protobuf reader: onnx is not installed in runner images) ----


class _Malformed(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _Malformed(f"a number at byte {pos} runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise _Malformed(f"an overlong number at byte {pos}")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message; length-delimited values are (start, end)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Malformed(f"field {number} at byte {pos} needs {size} bytes, {end - pos} are left")
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            value, pos = None, pos + (8 if wire == 1 else 4)
            if pos > end:
                raise _Malformed(f"field {number} runs past the end")
        else:
            raise _Malformed(f"wire type {wire} at byte {pos}")
        yield number, wire, value


def _text(buf, span) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
                9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64"}


def _value_info(buf, span) -> tuple[str, tuple[int | None, ...], str | None]:
    name, dims, dtype = "", (), None
    for number, _, value in _fields(buf, *span):
        if number == 1:
            name = _text(buf, value)
        elif number == 2:
            for n2, _, tensor in _fields(buf, *value):
                if n2 != 1:  # TypeProto.tensor_type
                    continue
                for n3, _, v3 in _fields(buf, *tensor):
                    if n3 == 1:
                        dtype = _ONNX_DTYPES.get(v3)
                    elif n3 == 2:
                        shape = []
                        for n4, _, dim in _fields(buf, *v3):
                            if n4 != 1:
                                continue
                            size = None
                            for n5, w5, v5 in _fields(buf, *dim):
                                if n5 == 1 and w5 == 0 and v5 > 0:
                                    size = v5
                            shape.append(size)
                        dims = tuple(shape)
    return name, dims, dtype


def read_onnx_header(path: Path) -> dict[str, Any]:
    """ir_version, opsets ({domain: version}) and graph inputs of an ONNX file,
    read without the onnx package; a ModelFileError when the protobuf is cut or not ONNX."""
    name = path.name
    if path.stat().st_size == 0:
        raise ModelFileError(name, "the file is empty (0 bytes): upload it again")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        ir_version, opsets, graph = None, {}, None
        try:
            for number, wire, value in _fields(buf, 0, len(buf)):
                if number == 1 and wire == 0:
                    ir_version = value
                elif number == 8 and wire == 2:
                    domain, version = "", None
                    for n2, _, v2 in _fields(buf, *value):
                        if n2 == 1:
                            domain = _text(buf, v2)
                        elif n2 == 2:
                            version = v2
                    opsets[domain or "ai.onnx"] = version
                elif number == 7 and wire == 2:
                    graph = value
            if ir_version is None or graph is None:
                raise _Malformed("no ir_version or no graph")
            inputs, initializers = [], set()
            for number, wire, value in _fields(buf, *graph):
                if number == 11 and wire == 2:
                    inputs.append(_value_info(buf, value))
                elif number == 5 and wire == 2:
                    initializers.update(_text(buf, v) for n, _, v in _fields(buf, *value) if n == 8)
        except _Malformed as exc:
            size = len(buf)
            raise ModelFileError(name, f"the file is truncated or not an ONNX model ({exc}; {size} bytes): "
                                       f"upload it again, or check framework in model.json") from None
    return {"ir_version": ir_version, "opsets": opsets,
            "inputs": [TensorInfo(n, s, d) for n, s, d in inputs if n not in initializers]}


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _ld(number: int, payload: bytes) -> bytes:
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _vi(number: int, value: int) -> bytes:
    return _encode_varint(number << 3) + _encode_varint(value)


def _identity_model(opset: int) -> bytes:
    """A one-node ONNX model (y = Identity(x), float[1]) stamped with ``opset``."""
    tensor_type = _ld(1, _vi(1, 1) + _ld(2, _ld(1, _vi(1, 1))))
    node = _ld(1, b"x") + _ld(2, b"y") + _ld(4, b"Identity")
    graph = (_ld(1, node) + _ld(2, b"g") + _ld(11, _ld(1, b"x") + _ld(2, tensor_type))
             + _ld(12, _ld(1, b"y") + _ld(2, tensor_type)))
    return _vi(1, 10) + _ld(7, graph) + _ld(8, _ld(1, b"") + _vi(2, opset))


@functools.lru_cache(maxsize=1)
def onnxruntime_max_opset() -> int | None:
    """The newest ai.onnx opset the installed ONNX Runtime loads (asked of it with a
    one-node model), or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 4

    def loads(opset: int) -> bool:
        try:
            ort.InferenceSession(_identity_model(opset), options, providers=["CPUExecutionProvider"])
            return True
        except Exception:
            return False

    lo, hi = 7, 64  # lo loads; find the last that does
    if not loads(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if loads(mid) else (lo, mid - 1)
    return lo


def inspect_onnx(path: Path, name: str | None = None, *, runtime: str = "onnxruntime",
                 declared: tuple[TensorInfo, ...] = ()) -> FileReport:
    name = name or path.name
    kind = file_format(path)
    if kind != "onnx":
        raise _wrong_format(name, "onnx", kind)
    header = read_onnx_header(path)
    opset = header["opsets"].get("ai.onnx")
    if runtime == "onnxruntime" and opset is not None:
        newest = onnxruntime_max_opset()
        if newest is not None and opset > newest:
            import onnxruntime as ort
            raise ModelFileError(
                name, f"the model uses ONNX opset {opset} (domain ai.onnx), but this runner's onnxruntime "
                      f"{ort.__version__} runs opsets up to {newest}: export it again with opset_version={newest} "
                      f"or lower (torch.onnx.export(..., opset_version={newest}), or "
                      f"onnx.version_converter.convert_version(model, {newest}))")
    _check_declared(name, declared, header["inputs"])
    return FileReport(name, "onnx", header)


def _check_declared(name: str, declared: tuple[TensorInfo, ...], inputs: list[TensorInfo]) -> None:
    for want in declared:
        actual = next((i for i in inputs if i.name == want.name), None) if want.name else \
            (inputs[0] if inputs else None)
        problem = shape_conflict(want, actual) if actual is not None else None
        if problem:
            raise ModelFileError(name, problem)


# ---- OpenVINO IR -----------------------------------------------------------------


def read_ir_header(path: Path) -> dict[str, Any]:
    """The IR version (``<net version=...>``) and how many .bin bytes the constants read."""
    name = path.name
    version, needed = None, 0
    try:
        for _, elem in ElementTree.iterparse(path, events=("start",)):
            if version is None:
                if elem.tag != "net":
                    raise ModelFileError(name, f"the .xml is not an OpenVINO IR (its root element is <{elem.tag}>, "
                                               f"not <net>)")
                text = elem.get("version", "")
                version = int(text) if text.isdigit() else text or None
            elif elem.tag == "data" and elem.get("offset") is not None and elem.get("size") is not None:
                try:
                    needed = max(needed, int(elem.get("offset")) + int(elem.get("size")))
                except ValueError:
                    pass
    except ElementTree.ParseError as exc:
        raise ModelFileError(name, f"the .xml cannot be read ({exc}): it is damaged or not an OpenVINO IR") from None
    return {"ir_version": version, "bin_bytes_needed": needed}


def inspect_openvino(path: Path, name: str | None = None, *, weights: Path | None = None,
                     weights_name: str | None = None) -> FileReport:
    name = name or path.name
    kind = file_format(path)
    if path.suffix.lower() == ".onnx" or kind == "onnx":
        return inspect_onnx(path, name, runtime="openvino")
    if kind not in ("openvino_ir", "xml"):
        raise _wrong_format(name, "openvino", kind)
    header = read_ir_header(path)
    version = header["ir_version"]
    if version not in OPENVINO_IR_VERSIONS:
        try:
            import openvino
            runtime = f"openvino {openvino.__version__}"
        except ImportError:
            runtime = "the pinned openvino"
        raise ModelFileError(
            name, f"the file is OpenVINO IR version {version}, but {runtime} reads IR versions "
                  f"{' and '.join(map(str, OPENVINO_IR_VERSIONS))}: convert the original model again with this "
                  f"OpenVINO (ov.save_model(ov.convert_model(...), \"model.xml\")), or upload the ONNX model instead")
    weights_name = weights_name or posixpath.splitext(name)[0] + ".bin"
    if weights is None or not weights.is_file():
        raise ModelFileError(name, f"the IR weights file {weights_name} is missing: upload it next to {name} "
                                   f"(model.json extra_files lists it)")
    size = weights.stat().st_size
    if size < header["bin_bytes_needed"]:
        raise ModelFileError(weights_name, f"the IR weights file is truncated: it holds {size} bytes, {name} reads "
                                           f"up to byte {header['bin_bytes_needed']}; upload it again")
    return FileReport(name, "openvino-ir", header)


# ---- TensorFlow and Keras (read with the protobuf reader above: no TensorFlow import) ----

# SignatureDef keys TensorFlow adds for itself (as common.runtimes.tensorflow_engine skips them)
_INTERNAL_SIGNATURES = ("__saved_model_init_op", "__saved_model_train_op")

# model.json framework -> the formats the tensorflow runtime opens for it
_TF_FORMATS = {"tensorflow": ("tf_saved_model", "tf_frozen_graph", "tflite", "keras", "hdf5"),
               "keras": ("keras", "hdf5")}
_KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def _walk(path: Path, name: str, what: str, read) -> Any:
    """``read(buf)`` over the file's bytes; a ModelFileError when the protobuf is cut or damaged."""
    if path.stat().st_size == 0:  # (mmap refuses an empty file)
        raise _wrong_format(name, "tensorflow", "empty")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            return read(buf)
        except _Malformed as exc:
            raise ModelFileError(name, f"{what} is damaged or truncated ({exc}; {len(buf)} bytes): "
                                       f"upload it again") from None


def _meta_graphs(buf) -> list[dict[str, Any]]:
    """Per MetaGraphDef of a SavedModel: its tags, whether it has variables (an object graph
    node of kind variable, or a non-empty ``variables`` / ``trainable_variables`` collection)
    and whether it has a saver (``saver_def``: loading restores the variables/ checkpoint)."""
    graphs = []
    for number, wire, span in _fields(buf, 0, len(buf)):
        if number != 2 or wire != 2:  # SavedModel.meta_graphs
            continue
        tags, variables, saver = [], False, False
        for n2, w2, v2 in _fields(buf, *span):
            if w2 != 2:
                continue
            saver |= n2 == 3  # saver_def
            if n2 == 1:  # meta_info_def
                tags += [_text(buf, v3) for n3, w3, v3 in _fields(buf, *v2) if n3 == 4 and w3 == 2]
            elif n2 == 4:  # collection_def: map entry {key 1, CollectionDef 2}
                entry = {n3: v3 for n3, w3, v3 in _fields(buf, *v2) if w3 == 2}
                if 1 in entry and 2 in entry and _text(buf, entry[1]) in ("variables", "trainable_variables"):
                    # node_list 1 / bytes_list 2, each {repeated value 1}
                    variables |= any(n4 in (1, 2) and any(n5 == 1 for n5, _, _ in _fields(buf, *v4))
                                     for n4, w4, v4 in _fields(buf, *entry[2]) if w4 == 2)
            elif n2 == 7:  # object_graph_def: nodes 1, each a SavedObject with kind variable = 7
                variables |= any(n4 == 7 for n3, w3, v3 in _fields(buf, *v2) if n3 == 1 and w3 == 2
                                 for n4, _, _ in _fields(buf, *v3))
        graphs.append({"tags": tags, "variables": variables, "saver": saver})
    return graphs


def _tflite_extent(buf) -> int:
    """Walk a .tflite flatbuffer's Model table (operator codes, subgraphs, buffers and each
    buffer's data, inline or at a file offset) and raise _Malformed when any of it lies
    past the end of the file, as in a truncated upload. Returns the number of buffers."""
    size = len(buf)

    def uint(pos: int, width: int, signed: bool = False) -> int:
        if pos < 0 or pos + width > size:
            raise _Malformed(f"an offset at byte {pos} points past the end")
        return int.from_bytes(buf[pos:pos + width], "little", signed=signed)

    def field(table: int, index: int) -> int | None:
        vtable = table - uint(table, 4, signed=True)
        slot = 4 + 2 * index
        if slot + 2 > uint(vtable, 2):
            return None
        offset = uint(vtable + slot, 2)
        return table + offset if offset else None

    def vector(table: int, index: int, item: int) -> tuple[int, int]:
        pos = field(table, index)
        if pos is None:
            return 0, 0
        start = pos + uint(pos, 4)
        count = uint(start, 4)
        if start + 4 + count * item > size:
            raise _Malformed(f"a vector of {count} items at byte {start} runs past the end")
        return start + 4, count

    root = uint(0, 4)
    vector(root, 1, 4)  # operator_codes
    vector(root, 2, 4)  # subgraphs
    start, count = vector(root, 4, 4)  # buffers
    for k in range(count):
        table = start + 4 * k + uint(start + 4 * k, 4)
        vector(table, 0, 1)  # inline data
        at, length = field(table, 1), field(table, 2)
        if at is not None and length is not None and uint(at, 8) > 1 and uint(at, 8) + uint(length, 8) > size:
            raise _Malformed(f"buffer {k} lies at bytes {uint(at, 8)}..{uint(at, 8) + uint(length, 8)}, past the end")
    return count


def _keras_code_layers(path: Path) -> list[str]:
    """Names of the layers of a .keras archive's config.json that carry Python code (Lambda),
    read as JSON: nothing is deserialised."""
    import json

    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError):
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                layer = node.get("config")
                found.append(str(layer.get("name", "?")) if isinstance(layer, dict) else "?")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def _serving_signatures(buf) -> list[str] | None:
    """The signature keys (TensorFlow's own left out) of the graph the engine serves
    (tag serve, else the only one); None when no graph is that one."""
    graphs = []
    for number, wire, span in _fields(buf, 0, len(buf)):
        if number != 2 or wire != 2:  # SavedModel.meta_graphs
            continue
        tags, keys = [], []
        for n2, w2, v2 in _fields(buf, *span):
            if w2 == 2 and n2 == 1:  # meta_info_def.tags
                tags += [_text(buf, v3) for n3, w3, v3 in _fields(buf, *v2) if n3 == 4 and w3 == 2]
            elif w2 == 2 and n2 == 5:  # signature_def: map entry {key 1, SignatureDef 2}
                keys += [_text(buf, v3) for n3, w3, v3 in _fields(buf, *v2) if n3 == 1 and w3 == 2]
        graphs.append((tags, sorted(k for k in keys if k not in _INTERNAL_SIGNATURES)))
    serving = next((g for g in graphs if "serve" in g[0]), graphs[0] if len(graphs) == 1 else None)
    return None if serving is None else serving[1]


def _check_saved_model(path: Path, name: str) -> FileReport:
    """saved_model.pb is whole, holds a graph, and the variables/ folder next to it is
    there when the serving graph (tag serve, else the only one) reads it: when it has
    variables or a saver (TensorFlow's loader then restores the checkpoint, even an empty one)."""
    if path.name != "saved_model.pb":  # the text form: TensorFlow reads it, this reader does not
        return FileReport(name, "tf_saved_model", {})
    graphs = _walk(path, name, "the SavedModel's saved_model.pb", _meta_graphs)
    if not graphs:
        raise ModelFileError(name, "the SavedModel holds no graph: export it again with tf.saved_model.save")
    serving = next((g for g in graphs if "serve" in g["tags"]), graphs[0] if len(graphs) == 1 else None)
    folder = path.parent / "variables"
    complete = (folder / "variables.index").is_file() and any(folder.glob("variables.data-*"))
    if serving is not None and (serving["variables"] or serving["saver"]) and not complete:
        where = posixpath.join(posixpath.dirname(name), "variables")
        what = "is missing" if not folder.is_dir() else "lacks variables.index or variables.data-*"
        raise ModelFileError(name, f"the SavedModel loads its variables from a variables/ folder, which {what} "
                                   f"(expected {where}/variables.index and {where}/variables.data-00000-of-00001): "
                                   f"list the folder in model.json extra_files, e.g. \"{where}\"")
    return FileReport(name, "tf_saved_model", {"graphs": graphs, "variables_folder": complete})


def _check_frozen_graph(path: Path, name: str) -> FileReport:
    """The GraphDef is whole (every top-level field fits in the file) and has nodes."""
    def nodes(buf) -> int:
        return sum(1 for number, wire, _ in _fields(buf, 0, len(buf)) if number == 1 and wire == 2)

    count = _walk(path, name, "the frozen graph", nodes)
    if not count:
        raise ModelFileError(name, "the frozen graph has no nodes")
    return FileReport(name, "tf_frozen_graph", {"nodes": count})


def inspect_tensorflow(path: Path, name: str | None = None, *, framework: str = "tensorflow",
                       runtime: str | None = None) -> FileReport:
    """A file of framework ``tensorflow`` or ``keras``: a format ``runtime`` (default
    tensorflow) opens for it, and whole; anything else is a ModelFileError saying what it is."""
    name = name or path.name
    kind = file_format(path)
    runtime = runtime or "tensorflow"
    runs = RUNTIME_FORMATS.get(runtime, frozenset(FORMATS))
    allowed = [f for f in _TF_FORMATS[framework] if f in runs]
    if kind in allowed:
        if kind == "tf_saved_model":
            return _check_saved_model(path, name)
        if kind == "tf_frozen_graph":
            return _check_frozen_graph(path, name)
        if kind == "tflite":
            _walk(path, name, "the TensorFlow Lite model", _tflite_extent)
        return FileReport(name, kind, {})
    what = _FORMAT_NAMES.get(kind, ("not a format this runner knows",))[0]
    if kind in _TF_FORMATS["tensorflow"]:  # a TensorFlow format, but not one for this framework / runtime
        if framework == "keras":
            raise ModelFileError(name, f'the file is {what}, not a Keras model (.keras or .h5): set framework '
                                       f'"tensorflow" in model.json')
        raise ModelFileError(name, f'the file is {what}; runtime "{runtime}" runs only '
                                   f'{", ".join(FORMATS[f][0] for f in allowed)}: leave runtime.name out of '
                                   f'model.json (runtime "tensorflow" opens it)')
    if kind == "empty":
        raise _wrong_format(name, framework, kind)
    suffix = path.suffix.lower()
    if allowed == ["tflite"] or suffix == ".tflite":
        it_is = f" (it is {what})" if kind != "unknown" else ""
        raise ModelFileError(name, f'the file is not a TensorFlow Lite model: it has no "TFL3" identifier at byte '
                                   f'4{it_is}: upload the .tflite file again, or check framework in model.json')
    if kind == "zip" and (framework == "keras" or suffix in _KERAS_SUFFIXES):
        if not zipfile.is_zipfile(path):
            raise ModelFileError(name, f"the .keras archive is truncated or damaged: it starts as a zip archive but "
                                       f"has no end-of-archive directory ({path.stat().st_size} bytes); upload it "
                                       f"again")
        raise ModelFileError(name, 'the zip archive is not a Keras model (it has no config.json with '
                                   'model.weights.h5 or metadata.json): save the model with model.save("model.keras")')
    if kind == "unknown" and suffix == ".pb":
        raise ModelFileError(name, "the file is neither a SavedModel's saved_model.pb nor a frozen GraphDef: it is "
                                   "damaged or another format; upload it again, or check framework in model.json")
    raise _wrong_format(name, framework, kind)


# ---- one entry point ---------------------------------------------------------------


def inspect_file(framework: str, path: Path, *, name: str | None = None, runtime: str | None = None,
                 extra_paths: Mapping[str, Path] | None = None,
                 declared: tuple[TensorInfo, ...] = ()) -> FileReport | None:
    """Check the primary model file of ``framework``; None for frameworks checked elsewhere."""
    name = name or path.name
    if not path.is_file():
        raise ModelFileError(name, f"the model file is missing (expected at {path})")
    if framework == "pytorch":
        return inspect_torch(path, name)
    if framework == "onnx":
        return inspect_onnx(path, name, runtime=runtime or "onnxruntime", declared=declared)
    if framework == "openvino":
        weights_name = posixpath.splitext(name)[0] + ".bin"
        extra = dict(extra_paths or {})
        weights = extra.get(weights_name)
        if weights is None:
            bins = [p for k, p in extra.items() if k.lower().endswith(".bin")]
            weights = bins[0] if len(bins) == 1 else path.with_suffix(".bin")
        return inspect_openvino(path, name, weights=weights, weights_name=weights_name)
    if framework in _TF_FORMATS:
        return inspect_tensorflow(path, name, framework=framework, runtime=runtime)
    return None


def validate_files(record, local_paths: Mapping[str, Path]) -> FileReport | None:
    """Check the files of ``record`` (a ModelRecord, or a ModelManifest) as downloaded:
    ``local_paths`` maps model.json's file names (file_name, extra_files) to local
    paths. Raises :class:`ModelFileError`; returns what was found (None when the
    framework has no file-level checks here)."""
    from common.runtimes import declared_inputs

    manifest = getattr(record, "manifest", record)
    file_name = manifest.file_name
    if file_name not in local_paths:
        raise ModelFileError(file_name, "the model file was not downloaded")
    extra = {k: Path(v) for k, v in local_paths.items() if k != file_name}
    report = inspect_file(manifest.framework, Path(local_paths[file_name]), name=file_name,
                          runtime=manifest.runtime.name, extra_paths=extra, declared=declared_inputs(manifest))
    if report is not None:
        _check_against_manifest(report, Path(local_paths[file_name]), manifest)
    return report


def _check_against_manifest(report: FileReport, path: Path, manifest) -> None:
    """What the file says that model.json must answer: which SavedModel signature to serve
    (several and none named), and whether Keras code may run (a Lambda layer, refused by
    the engine's safe mode unless runtime.allow_unsafe_keras); and the pickles inside a
    torch.export program hold tensors only."""
    raw = getattr(manifest, "raw", None) or {}
    runtime = raw.get("runtime") if isinstance(raw.get("runtime"), Mapping) else {}
    if report.kind == "tf_saved_model" and path.name == "saved_model.pb" and "signature" not in runtime:
        found = _walk(path, report.file, "the SavedModel's saved_model.pb", _serving_signatures) or []
        listed = ", ".join(repr(k) for k in found)
        if len(found) > 1:
            raise ModelFileError(report.file, f"the SavedModel has {len(found)} signatures ({listed}) and "
                                              f"model.json names none: set runtime.signature to one of them")
    if report.kind == "torch.export":  # at validation; the engine's weights-only load is the second guard
        with zipfile.ZipFile(path) as z:
            _check_program_pickles(z, report.file)
    code = _keras_code_layers(path) if report.kind == "keras" else None
    if code and runtime.get("allow_unsafe_keras") is not True:
        raise ModelFileError(report.file, f"the Keras model has Lambda layer(s) ({', '.join(code[:4])}) that carry "
                                          f"Python code, which loading would run: the runner refuses it (Keras safe "
                                          f"mode). Only if you trust the file, set \"runtime\": "
                                          f"{{\"allow_unsafe_keras\": true}} in model.json")


@contextmanager
def weights_only_torch_load():
    """Within the block every ``torch.load`` is ``weights_only=True``, whatever the
    caller asked: torch.export.load would otherwise fall back to a full unpickle
    for some payloads of a .pt2, which would run code from a registry file."""
    import torch

    original = torch.load

    def guarded(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    with _torch_load_lock:
        torch.load = guarded
        try:
            yield
        finally:
            torch.load = original

