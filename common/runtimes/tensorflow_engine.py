"""TensorFlow engine: SavedModel folders, TF1 frozen graphs (.pb) and Keras models (.keras, .h5).

:func:`open_tensorflow` is the ``tensorflow`` runtime: it looks at the file
(see :mod:`common.runtimes.model_files`) and opens it with the matching engine
here, or with :class:`common.runtimes.tflite_engine.TFLiteEngine` for a
``.tflite`` file. What model.json says to these engines is read once by
:func:`tf_options`:

- SavedModel: the signature is ``runtime.signature``; without it, the only
  signature the folder has; with several and none named, an error lists them.
  Inputs and outputs are the signature's, by their signature names.
- Frozen graph: inputs are ``input.name`` (else every Placeholder), outputs
  ``runtime.outputs`` (else the decoder parameters that name graph nodes, else
  the nodes nothing consumes). Names are used as model.json writes them, with or
  without TensorFlow's ``:0``.
- Keras: loaded with ``safe_mode`` on (a Lambda layer, or any Python code in the
  file, is refused) unless ``runtime.allow_unsafe_keras`` is true.

SavedModels and frozen graphs run in a ``tf.compat.v1.Session`` with its own
thread pools of ``threads`` threads; Keras runs eagerly on TensorFlow's
process-wide pools, which can be sized only before TensorFlow first runs.
TensorFlow itself is imported on the first load, never at module import.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from common.errors import RuntimeLoadError
from common.runtimes import Runtime, TensorInfo, shape_conflict
from common.runtimes.cpus import threads_per_worker
from common.runtimes.model_files import detect_format

log = logging.getLogger(__name__)

# SignatureDef keys TensorFlow adds for itself; never a serving signature.
_INTERNAL_SIGNATURES = ("__saved_model_init_op", "__saved_model_train_op")
# Graph ops that are never a model output.
_NOT_OUTPUTS = ("Const", "NoOp", "Placeholder", "PlaceholderWithDefault", "Assert", "VarHandleOp", "SaveV2",
                "RestoreV2")

_tf_lock = threading.Lock()


def import_tensorflow():
    """``tensorflow``, imported once with its C++ and Python logs turned down to errors."""
    with _tf_lock:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        try:
            import tensorflow as tf
        except ImportError as exc:
            raise RuntimeLoadError(f"TensorFlow is not installed in this runner image ({exc}); use the "
                                   "runner-tensorflow image (requirements/runner-tensorflow.txt)") from exc
        tf.get_logger().setLevel(logging.ERROR)
        return tf


@dataclass(frozen=True)
class TFOptions:
    """What model.json tells the TensorFlow engines (all optional)."""

    input_name: str | None = None
    output_names: tuple[str, ...] | None = None  # runtime.outputs
    decoder_names: tuple[str, ...] = ()  # string values of the decoder parameters (candidate output names)
    signature: str | None = None  # runtime.signature
    allow_unsafe_keras: bool = False  # runtime.allow_unsafe_keras


def tf_options(manifest: Any | None) -> TFOptions:
    """The options of a :class:`common.manifest.ModelManifest` (or None).
    ``runtime.signature``, ``runtime.outputs`` and ``runtime.allow_unsafe_keras``
    are read from the raw model.json, defensively: a wrong type is ignored."""
    if manifest is None:
        return TFOptions()
    raw = getattr(manifest, "raw", None) or {}
    runtime = raw.get("runtime") if isinstance(raw.get("runtime"), Mapping) else {}
    signature = runtime.get("signature")
    outputs = runtime.get("outputs")
    if isinstance(outputs, str):
        outputs = [outputs]
    if not (isinstance(outputs, (list, tuple)) and outputs and all(isinstance(o, str) and o for o in outputs)):
        outputs = None
    decoder = getattr(getattr(manifest, "output", None), "decoder", None)
    params = getattr(decoder, "params", None) or {}
    inp = getattr(manifest, "input", None)
    return TFOptions(
        input_name=getattr(inp, "name", None),
        output_names=tuple(outputs) if outputs else None,
        decoder_names=tuple(v for v in params.values() if isinstance(v, str) and v),
        signature=signature if isinstance(signature, str) and signature else None,
        allow_unsafe_keras=runtime.get("allow_unsafe_keras") is True,
    )


def open_tensorflow(model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                    device: str = "CPU", threads: int | None = None, declared_inputs: Sequence[TensorInfo] = (),
                    manifest: Any | None = None) -> Runtime:
    """The ``tensorflow`` runtime: the engine that fits the file at ``model_path``."""
    path = Path(model_path)
    if not path.exists():
        raise RuntimeLoadError(f"{path.name}: model file not found at {path}")
    kind = detect_format(path)
    suffix = path.suffix.lower()
    kwargs = dict(extra_paths=extra_paths, precision=precision, device=device, threads=threads,
                  declared_inputs=declared_inputs, manifest=manifest)
    if kind == "tflite" or (kind is None and suffix == ".tflite"):
        from common.runtimes.tflite_engine import TFLiteEngine
        return TFLiteEngine(path, **kwargs)
    if kind == "tf_saved_model":
        return SavedModelEngine(path, **kwargs)
    if kind in ("keras", "hdf5") or suffix in (".keras", ".h5", ".hdf5"):
        return KerasEngine(path, **kwargs)
    if kind == "tf_frozen_graph" or suffix == ".pb":
        return FrozenGraphEngine(path, **kwargs)
    raise RuntimeLoadError(f"{path.name}: not a model the tensorflow runtime opens (a SavedModel folder or its "
                           "saved_model.pb, a frozen graph .pb, a .tflite, or a Keras .keras/.h5 file)")


# ---------------------------------------------------------------- shared bits


def _check_engine_args(name: str, precision: str, device: str) -> None:
    if precision.lower() not in ("f32", "fp32", "float32"):
        log.warning("%s: the tensorflow runtime runs the model's own precision; ignoring precision %r",
                    name, precision)
    if not device.upper().startswith("CPU"):
        log.warning("%s: the tensorflow runner image is CPU-only; ignoring device %r", name, device)


def _session_config(tf, threads: int):
    # Per-session pools: otherwise the first session in the process sizes the
    # pools of every later one, and RUNNER_THREADS would not hold.
    return tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads,
                                    use_per_session_threads=True, allow_soft_placement=True)


def _dims_from_proto(shape_proto) -> tuple[int | None, ...]:
    if shape_proto.unknown_rank:
        return ()
    return tuple(d.size if d.size >= 0 else None for d in shape_proto.dim)


def _dims_from_tf(shape) -> tuple[int | None, ...]:
    if shape.rank is None:
        return ()
    return tuple(None if d is None else int(d) for d in shape.as_list())


def _np_dtype(tf, dtype) -> np.dtype:
    try:
        return np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)
    except (TypeError, ValueError) as exc:
        raise RuntimeLoadError(f"unsupported tensor type {dtype!r}") from exc


def _check_feeds(model: str, inputs: list[TensorInfo], feeds: Mapping[str, np.ndarray]) -> None:
    expected = {i.name for i in inputs}
    if set(feeds) != expected:
        raise RuntimeLoadError(f"{model}: feeds do not match the model inputs "
                               f"(expected {sorted(expected)}, got {sorted(feeds)})")
    for info in inputs:
        value = np.asarray(feeds[info.name])
        if info.shape and (value.ndim != len(info.shape) or any(
                want is not None and want != have for want, have in zip(info.shape, value.shape))):
            shape = "[" + ", ".join("null" if d is None else str(d) for d in info.shape) + "]"
            raise RuntimeLoadError(f"{model}: input {info.name!r} takes shape {shape}, got {list(value.shape)}")


def check_declared(model: str, declared: Sequence[TensorInfo], inputs: list[TensorInfo]) -> None:
    """RuntimeLoadError when model.json's input (``declared``, see
    :func:`common.runtimes.declared_inputs`) contradicts the model's own."""
    for want in declared:
        if want.name:
            names = {want.name, _node_name(want.name), _tensor_name(want.name)}
            actual = next((i for i in inputs if i.name in names or _tensor_name(i.name) in names), None)
        else:
            actual = inputs[0] if inputs else None
        problem = shape_conflict(want, actual) if actual is not None else None
        if problem:
            raise RuntimeLoadError(f"{model}: {problem}")


def _tensor_name(name: str) -> str:
    return name if ":" in name else f"{name}:0"


def _node_name(name: str) -> str:
    return name.split(":", 1)[0].lstrip("^")


class _SessionEngine(Runtime):
    """A graph run by one ``tf.compat.v1.Session`` (thread-safe: no lock needed)."""

    def _start_session(self, tf, graph, threads: int):
        self.threads = threads
        self.session = tf.compat.v1.Session(graph=graph, config=_session_config(tf, threads))
        self.device = "CPU"

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _check_feeds(self.model_name, self.inputs, feeds)
        feed_dict = {self._input_tensors[k]: np.asarray(v) for k, v in feeds.items()}
        try:
            values = self.session.run(self._output_tensors, feed_dict)
        except Exception as exc:  # TF raises its own OpError family
            raise RuntimeLoadError(f"{self.model_name}: tensorflow failed to run the model: "
                                   f"{_first_line(exc)}") from exc
        return {info.name: np.asarray(values[info.name]) for info in self.outputs}

    def __del__(self):
        session = getattr(self, "session", None)
        if session is not None:
            try:
                session.close()
            except Exception:  # interpreter shutdown: TF may be half gone
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- SavedModel


def saved_model_dir(path: Path) -> Path:
    """The SavedModel folder for ``path``: the folder itself, or the folder of its saved_model.pb."""
    return path if path.is_dir() else path.parent


class SavedModelEngine(_SessionEngine):
    """A SavedModel folder, run through one of its signatures."""

    def __init__(self, model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                 device: str = "CPU", threads: int | None = None, declared_inputs: Sequence[TensorInfo] = (),
                 manifest: Any | None = None):
        self.model_path = saved_model_dir(Path(model_path))
        self.model_name = name = self.model_path.name
        options = tf_options(manifest)
        _check_engine_args(name, precision, device)
        proto_path = self.model_path / "saved_model.pb"
        if not proto_path.is_file():
            raise RuntimeLoadError(f"{name}: not a SavedModel folder (no saved_model.pb in {self.model_path})")
        tf = import_tensorflow()
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        try:
            proto.ParseFromString(proto_path.read_bytes())
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: saved_model.pb is damaged or truncated "
                                   f"({proto_path.stat().st_size} bytes): {_first_line(exc)}") from exc
        meta = self._meta_graph(proto)
        self._check_variables(meta)
        self.signature = self._choose_signature(meta, options.signature)
        sig = meta.signature_def[self.signature]

        self.threads = int(threads) if threads else threads_per_worker()
        graph = tf.Graph()
        self._start_session(tf, graph, self.threads)
        try:
            with graph.as_default():
                tf.compat.v1.saved_model.loader.load(self.session, list(meta.meta_info_def.tags),
                                                     str(self.model_path))
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: tensorflow cannot load the SavedModel: {_first_line(exc)}") from exc

        self.inputs = [TensorInfo(key, _dims_from_proto(sig.inputs[key].tensor_shape),
                                  _np_dtype(tf, sig.inputs[key].dtype)) for key in sorted(sig.inputs)]
        check_declared(name, declared_inputs, self.inputs)
        wanted = sorted(sig.outputs)
        if options.output_names:
            unknown = [o for o in options.output_names if o not in sig.outputs]
            if unknown:
                raise RuntimeLoadError(f"{name}: runtime.outputs {unknown} are not outputs of signature "
                                       f"{self.signature!r} (outputs: {', '.join(wanted)})")
            wanted = list(options.output_names)
        self.outputs = [TensorInfo(key, _dims_from_proto(sig.outputs[key].tensor_shape),
                                   _np_dtype(tf, sig.outputs[key].dtype)) for key in wanted]
        self._input_tensors = {key: sig.inputs[key].name for key in sig.inputs}
        self._output_tensors = {key: sig.outputs[key].name for key in wanted}
        log.info("tensorflow %s loaded SavedModel %s (signature %s) with %d thread(s)", tf.__version__, name,
                 self.signature, self.threads)

    def _meta_graph(self, proto):
        graphs = list(proto.meta_graphs)
        if not graphs:
            raise RuntimeLoadError(f"{self.model_name}: the SavedModel holds no graph")
        for meta in graphs:
            if "serve" in meta.meta_info_def.tags:
                return meta
        if len(graphs) == 1:
            return graphs[0]
        tags = [sorted(m.meta_info_def.tags) for m in graphs]
        raise RuntimeLoadError(f"{self.model_name}: the SavedModel has no graph tagged 'serve' "
                               f"(tag sets: {tags})")

    def _check_variables(self, meta) -> None:
        """A SavedModel that has variables needs its variables/ folder (index + data)."""
        folder = self.model_path / "variables"
        if (folder / "variables.index").is_file() and any(folder.glob("variables.data-*")):
            return
        has_variables = any(node.WhichOneof("kind") == "variable" for node in meta.object_graph_def.nodes)
        for key in ("variables", "trainable_variables"):
            if key in meta.collection_def:
                collection = meta.collection_def[key]
                has_variables |= bool(collection.bytes_list.value or collection.node_list.value)
        if has_variables:
            what = "is missing" if not folder.is_dir() else "lacks variables.index or variables.data-*"
            raise RuntimeLoadError(
                f"{self.model_name}: the SavedModel's variables/ folder {what} (expected {folder}/variables.index "
                f"and variables.data-00000-of-00001): list the folder in model.json extra_files, e.g. "
                f"\"{self.model_name}/variables\"")

    def _choose_signature(self, meta, named: str | None) -> str:
        found = sorted(k for k in meta.signature_def if k not in _INTERNAL_SIGNATURES)
        listed = ", ".join(repr(k) for k in found) or "none"
        if named is not None:
            if named not in found:
                raise RuntimeLoadError(f"{self.model_name}: model.json runtime.signature {named!r} is not a "
                                       f"signature of the SavedModel (signatures: {listed})")
            return named
        if len(found) == 1:
            return found[0]
        if not found:
            raise RuntimeLoadError(f"{self.model_name}: the SavedModel has no serving signature: export it with "
                                   "tf.saved_model.save(..., signatures=...)")
        raise RuntimeLoadError(f"{self.model_name}: the SavedModel has {len(found)} signatures ({listed}) and "
                               f"model.json names none: set runtime.signature to one of them")


# ---------------------------------------------------------------- frozen graph


class FrozenGraphEngine(_SessionEngine):
    """A TF1 frozen GraphDef (.pb): weights as constants, run by tensor name."""

    def __init__(self, model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                 device: str = "CPU", threads: int | None = None, declared_inputs: Sequence[TensorInfo] = (),
                 manifest: Any | None = None):
        self.model_path = Path(model_path)
        self.model_name = name = self.model_path.name
        options = tf_options(manifest)
        _check_engine_args(name, precision, device)
        if not self.model_path.is_file():
            raise RuntimeLoadError(f"{name}: model file not found at {self.model_path}")
        tf = import_tensorflow()
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(self.model_path.read_bytes())
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: not a readable frozen graph: the file is damaged or truncated "
                                   f"({self.model_path.stat().st_size} bytes): {_first_line(exc)}") from exc
        if not graph_def.node:
            raise RuntimeLoadError(f"{name}: the frozen graph has no nodes")
        nodes = {n.name: n for n in graph_def.node}
        placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
        consumed = {_node_name(i) for n in graph_def.node for i in n.input}
        sinks = [n.name for n in graph_def.node if n.name not in consumed and n.op not in _NOT_OUTPUTS]

        def help_text() -> str:
            return (f"the graph's Placeholders are {placeholders or 'none'}, its likely outputs (nodes nothing "
                    f"consumes) {sinks or 'none'}")

        if options.input_name:
            if _node_name(options.input_name) not in nodes:
                raise RuntimeLoadError(f"{name}: model.json input.name {options.input_name!r} is not a node of "
                                       f"the graph; {help_text()}")
            input_names = [options.input_name]
        else:
            input_names = placeholders
        if options.output_names:
            output_names = list(options.output_names)
            missing = [o for o in output_names if _node_name(o) not in nodes]
            if missing:
                raise RuntimeLoadError(f"{name}: model.json runtime.outputs {missing} are not nodes of the "
                                       f"graph; {help_text()}")
        else:
            output_names = [o for o in dict.fromkeys(options.decoder_names) if _node_name(o) in nodes] or sinks
        if not input_names or not output_names:
            raise RuntimeLoadError(f"{name}: cannot tell the graph's inputs and outputs: set input.name and "
                                   f"runtime.outputs in model.json; {help_text()}")

        graph = tf.Graph()
        try:
            with graph.as_default():
                tf.compat.v1.import_graph_def(graph_def, name="")
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: tensorflow cannot import the graph: {_first_line(exc)}") from exc
        self.threads = int(threads) if threads else threads_per_worker()
        self._start_session(tf, graph, self.threads)
        self.inputs, self._input_tensors = self._infos(tf, graph, input_names)
        self.outputs, self._output_tensors = self._infos(tf, graph, output_names)
        check_declared(name, declared_inputs, self.inputs)
        log.info("tensorflow %s loaded frozen graph %s (%s -> %s) with %d thread(s)", tf.__version__, name,
                 input_names, output_names, self.threads)

    def _infos(self, tf, graph, names: list[str]) -> tuple[list[TensorInfo], dict[str, str]]:
        infos, tensors = [], {}
        for name in names:
            try:
                tensor = graph.get_tensor_by_name(_tensor_name(name))
            except (KeyError, ValueError) as exc:
                raise RuntimeLoadError(f"{self.model_name}: no tensor {name!r} in the graph ({exc})") from exc
            infos.append(TensorInfo(name, _dims_from_tf(tensor.shape), _np_dtype(tf, tensor.dtype)))
            tensors[name] = tensor.name
        return infos, tensors


# ---------------------------------------------------------------- Keras


def _set_global_threads(tf, threads: int, model: str) -> None:
    """TensorFlow's process-wide pools (what eager Keras uses); fixed once TF has run."""
    config = tf.config.threading
    try:
        config.set_intra_op_parallelism_threads(threads)
        config.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        current = config.get_intra_op_parallelism_threads()
        if current != threads:
            log.warning("%s: TensorFlow already runs with %s intra-op thread(s) in this process; %d asked for",
                        model, current or "default", threads)


class KerasEngine(Runtime):
    """A Keras 3 model (.keras zip or legacy .h5), called eagerly with ``training=False``."""

    def __init__(self, model_path: Path, extra_paths: Mapping[str, Path] | None = None, precision: str = "f32",
                 device: str = "CPU", threads: int | None = None, declared_inputs: Sequence[TensorInfo] = (),
                 manifest: Any | None = None):
        self.model_path = Path(model_path)
        name = self.model_path.name
        options = tf_options(manifest)
        _check_engine_args(name, precision, device)
        if not self.model_path.is_file():
            raise RuntimeLoadError(f"{name}: model file not found at {self.model_path}")
        tf = import_tensorflow()
        self.threads = int(threads) if threads else threads_per_worker()
        _set_global_threads(tf, self.threads, name)
        import keras

        self.allow_unsafe = options.allow_unsafe_keras
        try:
            self.model = keras.saving.load_model(str(self.model_path), compile=False,
                                                 safe_mode=not self.allow_unsafe)
        except Exception as exc:
            text = str(exc)
            if "safe_mode" in text:
                raise RuntimeLoadError(
                    f"{name}: refused in Keras safe mode: the model carries Python code (a Lambda layer or "
                    f"similar) that loading would run. Only if you trust the file, set "
                    f"\"runtime\": {{\"allow_unsafe_keras\": true}} in model.json") from exc
            if "Could not locate" in text or "Unknown layer" in text or "custom_objects" in text:
                raise RuntimeLoadError(f"{name}: the model uses a custom Keras class this runner does not have "
                                       f"({_first_line(exc)}); export it to a SavedModel, ONNX or TFLite "
                                       f"instead") from exc
            raise RuntimeLoadError(f"{name}: keras cannot load the model (damaged, truncated or not a Keras "
                                   f"model?): {_first_line(exc)}") from exc
        if self.allow_unsafe:
            log.warning("%s: loaded with Keras safe mode off (runtime.allow_unsafe_keras): its Python code ran",
                        name)
        try:
            self.inputs = [TensorInfo(t.name, tuple(None if d is None else int(d) for d in t.shape),
                                      np.dtype(t.dtype)) for t in self.model.inputs]
            out_names = list(getattr(self.model, "output_names", None) or [t.name for t in self.model.outputs])
            self.outputs = [TensorInfo(n, tuple(None if d is None else int(d) for d in t.shape), np.dtype(t.dtype))
                            for n, t in zip(out_names, self.model.outputs)]
        except (AttributeError, TypeError, ValueError) as exc:
            raise RuntimeLoadError(f"{name}: the Keras model has no defined inputs/outputs (build it with an "
                                   f"Input before saving): {exc}") from exc
        check_declared(name, declared_inputs, self.inputs)
        self._tf = tf
        self.device = "CPU"
        log.info("keras %s loaded %s with %d thread(s)", keras.__version__, name, self.threads)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        name = self.model_path.name
        _check_feeds(name, self.inputs, feeds)
        args = [self._tf.convert_to_tensor(np.asarray(feeds[i.name]), dtype=i.dtype) for i in self.inputs]
        try:
            result = self.model(args[0] if len(args) == 1 else args, training=False)
        except Exception as exc:
            raise RuntimeLoadError(f"{name}: keras failed to run the model: {_first_line(exc)}") from exc
        if isinstance(result, Mapping):
            values = [result[o.name] for o in self.outputs]
        elif isinstance(result, (list, tuple)):
            values = list(result)
        else:
            values = [result]
        return {info.name: np.asarray(v.numpy() if hasattr(v, "numpy") else v)
                for info, v in zip(self.outputs, values)}
