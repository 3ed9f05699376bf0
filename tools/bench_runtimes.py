"""``make bench``, runtimes part: one network and one picture, per runtime that can run it.

Each runtime family gets the same network in every format this machine can make,
the same picture, and the same model.json apart from the format's fields:

* MobileNetV2 (ImageNet classifier, the demo model ``mobilenet-v2-classifier``) on
  chelsea.png: ONNX on ONNX Runtime, OpenVINO IR (f32), the ONNX file on OpenVINO,
  TorchScript on torch (tools/models/build.py makes the files);
* SSDLite person detector (``ssdlite-person-detector``) on astronaut.png: the TF1
  frozen graph and the SavedModel made from it on TensorFlow, the OpenVINO IR
  converted from the frozen graph (tools/models/tensorflow_build.py);
* BlazeFace short range (``blazeface-face-detector-tflite``) on astronaut.png: the
  .tflite on the TFLite interpreter, the OpenVINO IR converted from it.

Per variant, in a process of its own (as in Nuclio, no other engine's threads compete),
all measured in this run with the files already in the runner's cache:

* load: a new worker's start (``init_context``: registry lookup, cache checkout, runtime
  and pipeline through ``common.runner.load_record``, one warm-up inference), median of
  ``loads`` fresh starts after a first one that pays the imports; with its parts
  ``files`` (cache checkout) and ``runtime`` (engine + pipeline) from the runner's own timings;
* bare: median of the bare ``runtime.run`` on the preprocessed tensor;
* handler: median of the full handler (base64 + image decode, preprocessing, runtime,
  decoder, CVAT JSON) through real nuclio-sdk objects; ``ratio`` = handler / bare;
* answer: the handler's labels, so that the rows of one family can be compared.

The table is logged and the figures are written as JSON (``.bench/runtimes.json``).
Formats that cannot be made here are listed, each with the reason.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tools.assets import asset_path
from tools.bench import interleaved_ms
from tools.demo import REPO, RUNNER_DIR, demo_manifest

log = logging.getLogger("bench")

OUT = REPO / ".bench"
MOBILENET_INPUT = "input"  # the ONNX export's (and so the IRs') input name; TorchScript's is "x"


@dataclass(frozen=True)
class Variant:
    """One format of one network, served from a registry folder named after the variant."""

    name: str
    family: str  # the network
    runtime: str  # how it runs, for the table
    base: str  # the demo model whose model.json it uses
    image: str
    files: Callable[[], dict[str, Path]]  # model.json path -> built file (or folder)
    overrides: dict = field(default_factory=dict)  # model.json fields of this format


def _mobilenet(kind: str) -> dict[str, Path]:
    from tools.models.build import build_mobilenet_v2

    built = build_mobilenet_v2()
    return {"torchscript": {"mobilenet_v2.pt": built.torchscript},
            "onnx": {"mobilenet_v2.onnx": built.onnx},
            "ir": {"mobilenet_v2.xml": built.ir_xml, "mobilenet_v2.bin": built.ir_bin}}[kind]


def _ssdlite(kind: str) -> dict[str, Path]:
    from tools.models.tensorflow_build import build_ssdlite

    built = build_ssdlite()
    return {"frozen": {"frozen_inference_graph.pb": built.frozen_graph},
            "savedmodel": {"saved_model/saved_model.pb": built.saved_model / "saved_model.pb",
                           "saved_model/variables": built.saved_model / "variables"},
            "ir": {"ssdlite.xml": built.ir_xml, "ssdlite.bin": built.ir_bin}}[kind]


def _blazeface(kind: str) -> dict[str, Path]:
    from tools.models.tensorflow_build import build_blazeface

    built = build_blazeface()
    return {"tflite": {"face_detection_short_range.tflite": built.tflite},
            "ir": {"blazeface.xml": built.ir_xml, "blazeface.bin": built.ir_bin}}[kind]


def _input(base: str, **changes) -> dict:
    return {**demo_manifest(base)["input"], **changes}


MOBILENET, SSDLITE, BLAZEFACE = "mobilenet-v2-classifier", "ssdlite-person-detector", "blazeface-face-detector-tflite"
VARIANTS = (
    Variant("mobilenet-v2-onnxruntime", "MobileNetV2", "onnxruntime (ONNX)", MOBILENET, "chelsea.png",
            lambda: _mobilenet("onnx"), {"framework": "onnx", "file_name": "mobilenet_v2.onnx"}),
    Variant("mobilenet-v2-openvino-ir", "MobileNetV2", "openvino (IR f32)", MOBILENET, "chelsea.png",
            lambda: _mobilenet("ir"), {"framework": "openvino", "file_name": "mobilenet_v2.xml",
                                       "extra_files": ["mobilenet_v2.bin"]}),
    Variant("mobilenet-v2-onnx-openvino", "MobileNetV2", "openvino (ONNX)", MOBILENET, "chelsea.png",
            lambda: _mobilenet("onnx"), {"framework": "onnx", "file_name": "mobilenet_v2.onnx",
                                         "runtime": {"name": "openvino"}}),
    Variant("mobilenet-v2-torchscript", "MobileNetV2", "torch (TorchScript)", MOBILENET, "chelsea.png",
            lambda: _mobilenet("torchscript")),
    Variant("ssdlite-frozen-graph", "SSDLite", "tensorflow (frozen .pb)", SSDLITE, "astronaut.png",
            lambda: _ssdlite("frozen")),
    Variant("ssdlite-savedmodel", "SSDLite", "tensorflow (SavedModel)", SSDLITE, "astronaut.png",
            lambda: _ssdlite("savedmodel"), {"file_name": "saved_model/saved_model.pb",
                                             "extra_files": ["saved_model/variables"]}),
    Variant("ssdlite-openvino-from-pb", "SSDLite", "openvino (IR from .pb)", SSDLITE, "astronaut.png",
            lambda: _ssdlite("ir"), {"framework": "openvino", "file_name": "ssdlite.xml",
                                     "extra_files": ["ssdlite.bin"]}),
    Variant("blazeface-tflite", "BlazeFace", "tflite (.tflite)", BLAZEFACE, "astronaut.png",
            lambda: _blazeface("tflite")),
    Variant("blazeface-openvino-from-tflite", "BlazeFace", "openvino (IR from .tflite)", BLAZEFACE, "astronaut.png",
            lambda: _blazeface("ir"), {"framework": "openvino", "file_name": "blazeface.xml",
                                        "extra_files": ["blazeface.bin"]}),
)
# The IRs keep the source's tensor names; the ONNX export names its input "input".
_ONNX_NAMED = {"mobilenet-v2-onnxruntime", "mobilenet-v2-openvino-ir", "mobilenet-v2-onnx-openvino"}
BY_NAME = {v.name: v for v in VARIANTS}

NO_TF_CONVERTER = ("no converter to a TensorFlow format in the pinned stack: TF 2.21 cannot load ONNX, onnx2tf pins "
                   "TF 2.19 and numpy 1.26, and nothing turns TorchScript or OpenVINO IR into a graph")
CANNOT = (
    ("MobileNetV2", "tensorflow (SavedModel / frozen .pb)", NO_TF_CONVERTER),
    ("MobileNetV2", "tflite (.tflite)", NO_TF_CONVERTER + "; the TFLite converter needs a TensorFlow model first"),
    ("SSDLite", "onnxruntime (ONNX)", "no TensorFlow-to-ONNX converter in the pinned stack (tf2onnx is not a "
                                      "dependency)"),
    ("SSDLite", "torch (TorchScript)", "no converter from a TensorFlow graph to TorchScript exists"),
    ("SSDLite", "tflite (.tflite)", "TFLiteConverter refuses the graph: its NMS uses TensorArrayV3 ops, which need "
                                    "the Flex delegate LiteRT lacks"),
    ("BlazeFace", "onnxruntime (ONNX)", "no TFLite-to-ONNX converter in the pinned stack"),
    ("BlazeFace", "tensorflow (SavedModel)", "TensorFlow has no converter from .tflite back to a graph"),
)


def variant_manifest(variant: Variant) -> dict:
    """The base demo model's model.json with this format's fields (and its own name)."""
    manifest = {**demo_manifest(variant.base), **variant.overrides, "name": variant.name}
    if variant.name in _ONNX_NAMED:
        manifest["input"] = _input(variant.base, name=MOBILENET_INPUT)
    return manifest


def build_bench_registry(dest: Path, variants: tuple[Variant, ...] = VARIANTS) -> Path:
    """A local registry with one folder per variant: its model.json and its files."""
    for variant in variants:
        target = dest / variant.name
        target.mkdir(parents=True, exist_ok=True)
        (target / "model.json").write_text(json.dumps(variant_manifest(variant), indent=2, ensure_ascii=False))
        for rel, src in variant.files().items():
            out = target / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, out, dirs_exist_ok=True)
            elif not out.exists() or out.stat().st_size != src.stat().st_size:
                shutil.copy(src, out)
    return dest


def _env(registry: Path, cache: Path, name: str) -> dict[str, str]:
    return {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": name, "MODEL_CACHE_DIR": str(cache),
            "MODEL_CACHE_SIZE": "2GiB", "MODEL_REFRESH_SECONDS": "0"}


def measure(variant: Variant, registry: Path, cache: Path, repeat: int, loads: int) -> dict:
    """All figures of one variant, in this process."""
    from common.imaging import decode_image_for
    from tools.nuclio_harness import Worker, http_event

    picture = asset_path(variant.image).read_bytes()
    b64 = base64.b64encode(picture).decode("ascii")
    event = http_event({"image": b64})
    env = _env(registry, cache, variant.name)
    Worker(RUNNER_DIR, env=env).terminate()  # pays the imports and fills the cache: later starts are cached
    starts, files, runtime_load, warm_up = [], [], [], []
    for _ in range(loads):
        started = time.perf_counter()
        worker = Worker(RUNNER_DIR, env=env)
        starts.append((time.perf_counter() - started) * 1000)
        timings = worker.context.user_data.model.timings
        files.append(timings["files"] * 1000)
        runtime_load.append(timings["load"] * 1000)
        warm_up.append(timings["warm_up"] * 1000)

    model = worker.context.user_data.model
    pipeline = model.pipeline
    image, _ = decode_image_for(picture, pipeline.needed_size)
    tensor, _ = pipeline.preprocess(image)
    feeds = {pipeline.input.name: tensor}
    stages = {"handler": lambda: worker.invoke(event), "bare": lambda: model.runtime.run(feeds)}
    for _ in range(3):  # warm-up
        for fn in stages.values():
            fn()
    medians = interleaved_ms(stages, repeat)
    result = worker.invoke(event)
    if result.status != 200:
        raise RuntimeError(f"{variant.name}: HTTP {result.status} {result.body[:300]!r}")
    answer = [f"{s['label']} {float(s['confidence']):.3f}" for s in result.json()]
    handler, bare = medians["handler"], medians["bare"]
    return {"family": variant.family, "runtime": variant.runtime, "image": variant.image,
            "device": model.runtime.device, "handler_ms": handler, "bare_ms": bare, "ratio": handler / bare,
            "overhead_ms": handler - bare, "load_ms": statistics.median(starts),
            "load_files_ms": statistics.median(files), "load_runtime_ms": statistics.median(runtime_load),
            "load_warm_up_ms": statistics.median(warm_up), "answer": answer}


def run(out: Path = OUT, *, repeat: int = 30, loads: int = 3, names: tuple[str, ...] | None = None) -> dict:
    """Measure every variant (or ``names``), one process each; log the table, write ``out/runtimes.json``."""
    variants = tuple(BY_NAME[n] for n in names) if names else VARIANTS
    build_bench_registry(out / "registry", variants)
    results = {}
    for variant in variants:
        done = subprocess.run([sys.executable, "-m", "tools.bench_runtimes", "--variant", variant.name,
                               "--repeat", str(repeat), "--loads", str(loads), "--out", str(out)],
                              cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{variant.name}: exit {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        results[variant.name] = json.loads(done.stdout.strip().splitlines()[-1])
    report = {"repeat": repeat, "loads": loads, "cpus": os.cpu_count(), "variants": results,
              "not_measured": [{"family": f, "runtime": r, "reason": why} for f, r, why in CANNOT]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtimes.json").write_text(json.dumps(report, indent=1) + "\n")
    _log_table(report)
    log.info("figures: %s", out / "runtimes.json")
    return report


def _log_table(report: dict) -> None:
    log.info("\none network per family, same picture and model.json; medians of %d interleaved calls and of %d "
             "cached starts, ms", report["repeat"], report["loads"])
    header = (f"{'family':<12} {'runtime':<27} {'handler':>8} {'bare':>8} {'ratio':>6}  {'load':>7} {'files':>6} "
              f"{'runtime':>8} {'warm-up':>8}  answer")
    log.info("%s\n%s", header, "-" * len(header))
    for f in report["variants"].values():
        log.info("%-12s %-27s %8.1f %8.1f %6.2f  %7.1f %6.1f %8.1f %8.1f  %s", f["family"], f["runtime"],
                 f["handler_ms"], f["bare_ms"], f["ratio"], f["load_ms"], f["load_files_ms"], f["load_runtime_ms"],
                 f["load_warm_up_ms"], ", ".join(f["answer"][:2])[:44])
    log.info("ratio = handler / bare runtime call; load = a new worker's init_context with the files cached "
             "(files = cache checkout, runtime = engine + pipeline, warm-up = one inference)")
    log.info("not measured (cannot be made here):")
    for item in report["not_measured"]:
        log.info("  %-12s %-36s %s", item["family"], item["runtime"], item["reason"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per stage")
    parser.add_argument("--loads", type=int, default=3, help="cached starts timed per variant")
    parser.add_argument("--out", type=Path, default=OUT, help="registry, cache and runtimes.json go here")
    parser.add_argument("--only", nargs="+", choices=sorted(BY_NAME), help="these variants only")
    parser.add_argument("--variant", choices=sorted(BY_NAME), help="measure this variant, print JSON (internal)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.variant else logging.INFO, format="%(message)s",
                        stream=sys.stdout)
    logging.getLogger("common").setLevel(logging.WARNING)
    if args.variant:
        figures = measure(BY_NAME[args.variant], args.out / "registry", args.out / "cache", args.repeat, args.loads)
        sys.stdout.write(json.dumps(figures) + "\n")
        return 0
    run(args.out, repeat=args.repeat, loads=args.loads, names=tuple(args.only) if args.only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
