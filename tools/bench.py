"""``make bench``: the runner's cost over the bare runtime, per demo model.

For each detector-kind demo model (CVAT detectors: detector, classification,
segmentation and keypoint models), on one 1920×1080 JPEG, all measured in this run:

* handler: median latency of the full Nuclio handler (base64 + JPEG decode,
  preprocessing, runtime, decoder, CVAT JSON) through real nuclio-sdk objects;
* runtime: median of the bare ``runtime.run`` on the same preprocessed tensor;
* ratio handler/runtime and the overhead in ms, checked against the target:
  overhead ≤ max(10 % of the handler time, 15 ms);
* stages: where the overhead goes (base64 + image decode at the scale the
  model needs, preprocess, output decoder);
* cold start with the model already cached (a new worker's init_context)
  against creating the runtime session alone (every model).

Interactor, tracker and reid models get a table of their own: the handler on a
valid request of the kind (one click, one tracked box, one reid pair) against
one bare runtime call. Each model is measured in a child process; a child that
fails has its stderr's last lines logged, the other models and parts go on, and
the run exits 1 at the end naming what failed. The per-model parts' registry and
cache are under ``.bench/models/`` (``--out``); ``--models-only`` runs that part alone.

Then one network per runtime family in every format this machine can make
(:mod:`tools.bench_runtimes`: load from the cache, bare call, handler;
``--runtimes-only`` runs that part alone, ``--no-runtimes`` skips it).

Then each demo model's memory: one runner worker per process, its resident
set after init_context and its peak over one 1920×1080 call (VmRSS, VmHWM),
the sizing figures of docs/admin-guide.md (``--memory-only`` runs that part
alone, ``--no-memory`` skips it).

Then the Drive registry against the Drive v3 stand-in (:mod:`tools.bench_drive`):
requests per listing, and a 1 GiB download's throughput and memory
(``--drive-only`` runs that part alone, ``--no-drive`` skips it).

Then registry-sync against the Drive and dashboard stand-ins (:mod:`tools.bench_sync`):
requests and wall time of a sync of 100 and 1000 models, first, unchanged and with one
model changed (``--sync-only`` runs that part alone, ``--no-sync`` skips it).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from tools.assets import asset_path
from tools.demo import DEMO_MODELS, REPO, RUNNER_DIR, build_registry

log = logging.getLogger("bench")

# The per-model parts' registry and cache (the per-runtime part has its own under .bench/).
OUT = REPO / ".bench" / "models"
CHILD_TAIL = 20  # lines of a failed child's stderr shown


def bench_image() -> bytes:
    """A 1920×1080 JPEG made of real photos (astronaut, Grace Hopper)."""
    canvas = Image.new("RGB", (1920, 1080), (128, 128, 128))
    canvas.paste(Image.open(asset_path("astronaut.png")).convert("RGB").resize((1080, 1080)), (0, 0))
    canvas.paste(Image.open(asset_path("grace_hopper.jpg")).convert("RGB").resize((921, 1080)), (1080, 0))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=90)
    return out.getvalue()


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


# The handler's request per CVAT kind, on the bench image (the astronaut fills its left 1080x1080:
# its face is about [373, 171, 574, 369] there). Detectors get {"image"} only.
ASTRONAUT_FACE = [373.0, 171.0, 574.0, 369.0]
PAYLOADS = {
    "interactor": "one positive click on the astronaut's face",
    "tracker": "one box (the astronaut's face) continued on the next frame (a continue call with its state)",
    "reid": "one box on each of two frames (one pair of crops)",
}


def measure(model_name: str, registry: Path, cache: Path, repeat: int) -> dict[str, float | str]:
    """All figures for one model, in this process (a worker hosts one model)."""
    from common.publish.kinds import cvat_kind
    from common.runtimes import declared_inputs, load_runtime
    from tools.nuclio_harness import Worker

    jpeg = bench_image()
    env = {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": model_name,
           "MODEL_CACHE_DIR": str(cache), "MODEL_CACHE_SIZE": "1GiB"}
    worker = Worker(RUNNER_DIR, env=env)  # also fills the cache: later starts are cached starts
    model = worker.context.user_data.model
    kind = cvat_kind(model.record.manifest.type)
    if kind == "detector":
        figures: dict[str, float | str] = _measure_detector(worker, jpeg, repeat)
    else:
        figures = _measure_other(worker, kind, jpeg, repeat)
    figures["kind"] = kind

    manifest = model.record.manifest
    files = {p: model.snapshot.file(p) for p in manifest.extra_files}
    cold, warm = [], []
    for _ in range(3):
        started = time.perf_counter()
        fresh = Worker(RUNNER_DIR, env=env)
        cold.append((time.perf_counter() - started) * 1000)
        warm.append(fresh.context.user_data.model.timings["warm_up"] * 1000)
    figures["cold"], figures["warmup"] = statistics.median(cold), statistics.median(warm)
    # The engine as the runner opens it (TorchScript takes its input description from model.json).
    figures["session"] = median_ms(lambda: load_runtime(manifest.runtime.name, model.snapshot.file(manifest.file_name),
                                                        extra_paths=files, precision=manifest.runtime.precision,
                                                        declared_inputs=declared_inputs(manifest),
                                                        manifest=manifest), 3)
    figures["jpeg_kib"] = len(jpeg) / 1024
    return figures


def interleaved_ms(stages: dict, repeat: int) -> dict[str, float]:
    """Median ms of each stage, the stages called in turn so that the machine's ups and downs hit
    every stage alike."""
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(repeat):
        for name, fn in stages.items():
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def _answered(worker, event) -> object:
    """The handler's answer to ``event``; a refusal is a broken benchmark, not a figure."""
    result = worker.invoke(event)
    if result.status != 200:
        raise RuntimeError(f"the handler answered HTTP {result.status}: {str(result.body)[:300]}")
    return result.json()


def _measure_detector(worker, jpeg: bytes, repeat: int) -> dict[str, float | str]:
    """A detector-kind model (detector, classifier, segmenter, keypoints): handler, bare runtime and
    the stages between them."""
    from common.imaging import decode_image_for
    from tools.nuclio_harness import http_event

    b64 = base64.b64encode(jpeg).decode("ascii")
    event = http_event({"image": b64})
    model = worker.context.user_data.model
    pipeline = model.pipeline
    image, _ = decode_image_for(jpeg, pipeline.needed_size)
    tensor, _ = pipeline.preprocess(image)
    feeds = {pipeline.input.name: tensor}
    outputs = model.runtime.run(feeds)
    hw = tuple(tensor.shape[2:4]) if pipeline.manifest.input.layout == "NCHW" else tuple(tensor.shape[1:3])
    threshold = pipeline.manifest.output.score_threshold
    for _ in range(3):  # warm-up
        _answered(worker, event)
    return interleaved_ms({
        "handler": lambda: worker.invoke(event),
        "runtime": lambda: model.runtime.run(feeds),
        "decode": lambda: decode_image_for(b64, pipeline.needed_size),
        "prep": lambda: pipeline.preprocess(image),
        "post": lambda: pipeline.decode(outputs, hw, threshold),
    }, repeat)


def kind_request(worker, kind: str, b64: str) -> dict:
    """A valid request body of ``kind`` on the bench image (:data:`PAYLOADS`); a tracker's is a
    continue call, so its start call is made here first."""
    from tools.nuclio_harness import http_event

    if kind == "detector":
        return {"image": b64}
    if kind == "interactor":
        return {"image": b64, "pos_points": [[475, 253]], "neg_points": [], "obj_bbox": []}
    if kind == "tracker":
        start = _answered(worker, http_event({"image": b64, "states": [],
                                              "shapes": [{"type": "rectangle", "points": ASTRONAUT_FACE}]}))
        return {"image": b64, "shapes": [None], "states": start["states"]}
    if kind == "reid":
        box = {"type": "rectangle", "label_id": 1, "points": ASTRONAUT_FACE}
        return {"image0": b64, "image1": b64, "boxes0": [box], "boxes1": [box]}
    raise ValueError(f"no benchmark request for CVAT kind {kind!r}")


def _measure_other(worker, kind: str, jpeg: bytes, repeat: int) -> dict[str, float | str]:
    """An interactor, tracker or reid model: the handler on a valid request of its kind
    (:func:`kind_request`) against one bare runtime call of the kind's network input."""
    import numpy as np

    from common.imaging import decode_image
    from common.preprocess import prepare
    from tools.nuclio_harness import http_event

    b64 = base64.b64encode(jpeg).decode("ascii")
    model = worker.context.user_data.model
    pipeline = model.pipeline
    image = decode_image(jpeg)
    x1, y1, x2, y2 = (int(v) for v in ASTRONAUT_FACE)
    face = np.ascontiguousarray(image[y1:y2, x1:x2])
    event = http_event(kind_request(worker, kind, b64))
    if kind == "interactor":
        tensor, _ = prepare(face, pipeline.manifest.input, pipeline.target_hw)
        dtype = pipeline.input.dtype
        feeds = {pipeline.input.name: tensor if dtype is None else tensor.astype(dtype, copy=False)}
    elif kind == "tracker":
        if pipeline.detector is None:  # template matching only: no network call to compare with
            feeds = None
        else:
            tensor, _ = pipeline.detector.preprocess(image)
            feeds = {pipeline.detector.input.name: tensor}
    else:  # reid: the handler embeds both crops in one call (two, when the batch is fixed at 1)
        crop = pipeline._tensor(face)
        batch = np.concatenate([crop] * (pipeline.static_batch or 2), axis=0)
        feeds = {pipeline.input.name: batch}
    for _ in range(3):  # warm-up
        _answered(worker, event)
    stages = {"handler": lambda: worker.invoke(event)}
    if feeds is not None:
        stages["runtime"] = lambda: model.runtime.run(feeds)
    figures: dict[str, float | str] = dict(interleaved_ms(stages, repeat))
    if kind == "reid" and pipeline.static_batch == 1:
        figures["runtime"] *= 2  # one call per crop
    figures["payload"] = PAYLOADS[kind]
    return figures


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _model_names(text: str) -> frozenset[str]:
    names = frozenset(filter(None, (name.strip() for name in text.split(","))))
    if not names:
        raise argparse.ArgumentTypeError("names no model; give demo model folders, "
                                         "e.g. --models blazeface-face-detector,mobilenet-reid")
    return names


def _out_dir(text: str) -> Path:
    # Absolute, since child processes are handed it.
    if not text.strip():
        raise argparse.ArgumentTypeError("needs a folder")
    return Path(text).expanduser().resolve()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=_positive, default=30, help="timed calls per figure")
    parser.add_argument("--out", type=_out_dir, default=OUT,
                        help="the per-model registry and cache go here")
    parser.add_argument("--model", help="measure this model only and print its figures as JSON (internal)")
    parser.add_argument("--models-only", action="store_true", help="only the per-model latency tables")
    parser.add_argument("--models", type=_model_names,
                        help="comma-separated demo models of the per-model parts (default: all)")
    drive = parser.add_mutually_exclusive_group()
    drive.add_argument("--drive-only", action="store_true", help="only the Drive registry's figures")
    drive.add_argument("--no-drive", action="store_true", help="skip the Drive registry's figures")
    parser.add_argument("--drive-repeat", type=_positive, default=3, help="runs of each 1 GiB download kind")
    sync = parser.add_mutually_exclusive_group()
    sync.add_argument("--sync-only", action="store_true", help="only the registry-sync figures")
    sync.add_argument("--no-sync", action="store_true", help="skip the registry-sync figures")
    runtimes = parser.add_mutually_exclusive_group()
    runtimes.add_argument("--runtimes-only", action="store_true", help="only the per-runtime table")
    runtimes.add_argument("--no-runtimes", action="store_true", help="skip the per-runtime table")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--memory-only", action="store_true", help="only the per-model memory table")
    memory.add_argument("--no-memory", action="store_true", help="skip the per-model memory table")
    parser.add_argument("--memory-model", help="measure this model's memory only, as JSON (internal)")
    args = parser.parse_args(argv)
    unknown = sorted((args.models or frozenset()) - {p.name for p in DEMO_MODELS.iterdir()})
    if unknown:
        parser.error(f"--models: no demo model {', '.join(unknown)} (folders of {DEMO_MODELS})")
    if args.memory_model:
        return _memory_main(args)
    logging.basicConfig(level=logging.WARNING if args.model else logging.INFO, format="%(message)s",
                        stream=sys.stderr if args.model else sys.stdout)
    logging.getLogger("common").setLevel(logging.WARNING)
    registry = args.out / "registry"
    if args.model:
        sys.stdout.write(json.dumps(measure(args.model, registry, args.out / "cache", args.repeat)) + "\n")
        return 0
    only = args.models_only or args.memory_only or args.runtimes_only or args.drive_only or args.sync_only
    parts = {
        "per-model latency": (args.models_only or not only, lambda: bench_models(registry, args)),
        "per-model memory": (args.memory_only or not (only or args.no_memory), lambda: bench_memory(registry, args)),
        "per-runtime": (args.runtimes_only or not (only or args.no_runtimes), lambda: _runtimes(args)),
        "Drive registry": (args.drive_only or not (only or args.no_drive), lambda: _drive(args)),
        "registry-sync": (args.sync_only or not (only or args.no_sync), lambda: _sync(args)),
    }
    failed = []
    for part, (wanted, fn) in parts.items():
        if not wanted:
            continue
        try:
            failures = fn() or []
        except Exception:  # one part's failure must not hide the others' figures
            log.exception("%s benchmark failed", part)
            failures = [part]
        failed += [f if f == part else f"{part}: {f}" for f in failures]
    if failed:
        log.error("\nbench FAILED: %s (the errors are above)", "; ".join(failed))
        return 1
    return 0


def _runtimes(args: argparse.Namespace) -> list[str]:
    from tools import bench_runtimes

    bench_runtimes.run(repeat=args.repeat)
    return []


def _drive(args: argparse.Namespace) -> list[str]:
    from tools import bench_drive

    bench_drive.run(args.drive_repeat)
    return []


def _sync(args: argparse.Namespace) -> list[str]:
    from tools import bench_sync

    bench_sync.run()
    return []


def run_child(argv: list[str], what: str) -> dict | None:
    """A child ``python -m tools.bench`` process's JSON figures; None when it failed, its stderr's
    last lines logged (a child dies on its own, the others go on)."""
    done = subprocess.run([sys.executable, "-m", "tools.bench", *argv], capture_output=True, text=True, cwd=REPO)
    if done.returncode == 0:
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            log.error("%s: no figures in the child's output: %r", what, done.stdout[-300:])
            return None
    tail = "\n".join("    " + line for line in done.stderr.strip().splitlines()[-CHILD_TAIL:])
    log.error("%s failed (exit status %d); its stderr ends:\n%s", what, done.returncode, tail)
    return None


def _models(registry: Path, names: frozenset[str] | None) -> list[Path]:
    """The registry's model folders to measure (a registry left by an earlier run may hold more)."""
    return sorted(p for p in registry.iterdir() if p.is_dir() and (names is None or p.name in names))


def bench_models(registry: Path, args: argparse.Namespace) -> list[str]:
    """The per-model tables; returns the models whose measurement failed."""
    build_registry(registry, args.models)
    results: dict[str, dict] = {}
    failed = []
    for model_dir in _models(registry, args.models):
        # One process per model, as in Nuclio: no other engine's threads compete.
        figures = run_child(["--model", model_dir.name, "--repeat", str(args.repeat), "--out", str(args.out)],
                            f"model {model_dir.name}")
        if figures is None:
            failed.append(model_dir.name)
        else:
            results[model_dir.name] = figures
    if not results:
        return failed

    some = next(iter(results.values()))
    detectors = {n: f for n, f in results.items() if f["kind"] == "detector"}
    others = {n: f for n, f in results.items() if f["kind"] != "detector"}
    log.info("1920x1080 JPEG (%d KiB), median of %d interleaved calls, times in ms",
             some["jpeg_kib"], args.repeat)
    header = (f"{'model':<36} {'handler':>8} {'runtime':>8} {'ratio':>6} {'overhead':>9} {'target':>7}  "
              f"{'decode':>7} {'prep':>6} {'post':>6}")
    log.info("%s\n%s", header, "-" * len(header))
    for name, f in detectors.items():
        overhead = f["handler"] - f["runtime"]
        target = max(0.10 * f["handler"], 15.0)
        log.info("%-36s %8.1f %8.1f %6.2f %9.1f %7.1f  %7.1f %6.1f %6.1f  %s", name, f["handler"], f["runtime"],
                 f["handler"] / f["runtime"], overhead, target, f["decode"], f["prep"], f["post"],
                 "ok" if overhead <= target else "OVER")
    log.info("detector-kind models (detector, classification, segmentation, keypoint): request {\"image\"}")
    log.info("overhead = handler - runtime; target = max(10 % of handler, 15 ms); decode includes base64")
    if others:
        log.info("\ninteractor, tracker and reid models: the handler on a valid request of the kind against")
        log.info("one bare runtime call (no overhead target: the handler may call the network more than once)")
        header = f"{'model':<36} {'kind':<10} {'handler':>8} {'runtime':>8} {'ratio':>6}  request"
        log.info("%s\n%s", header, "-" * len(header))
        for name, f in others.items():
            runtime = f.get("runtime")
            log.info("%-36s %-10s %8.1f %8s %6s  %s", name, f["kind"], f["handler"],
                     "-" if runtime is None else f"{runtime:.1f}", "-" if runtime is None else
                     f"{f['handler'] / runtime:.2f}", f["payload"])
    log.info("\ncold start with the model already cached (median of 3), ms: a new worker's init_context")
    log.info("(registry lookup, cache checkout, session, one warm-up inference) against the session alone")
    log.info("%-36s %8s %8s %8s %6s", "model", "init", "warm-up", "session", "ratio")
    for name, f in results.items():
        log.info("%-36s %8.1f %8.1f %8.1f %6.2f", name, f["cold"], f["warmup"], f["session"],
                 (f["cold"] - f["warmup"]) / f["session"])
    log.info("ratio = (init - warm-up) / session")
    return failed


# ---- memory per runner worker (docs/admin-guide.md, Sizing) -------------------------------------------------

def _status_mib(field: str) -> float:
    """A /proc/self/status figure (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def measure_memory(model_name: str, registry: Path, cache: Path) -> dict[str, float | str]:
    """One runner worker's memory, in this fresh process: before the function loads (the
    interpreter and nuclio-sdk), after init_context, and the peak over one 1920x1080 request of
    the model's kind (:func:`kind_request`)."""
    from tools.nuclio_harness import Worker, http_event

    b64 = base64.b64encode(bench_image()).decode("ascii")
    before = _status_mib("VmRSS")
    worker = Worker(RUNNER_DIR, env={"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": model_name,
                                     "MODEL_CACHE_DIR": str(cache), "MODEL_CACHE_SIZE": "1GiB",
                                     "MODEL_REFRESH_SECONDS": "0"})
    ready = _status_mib("VmRSS")
    from common.publish.kinds import cvat_kind  # after the figures above: not part of a runner

    record = worker.context.user_data.model.record
    kind = cvat_kind(record.manifest.type)
    _answered(worker, http_event(kind_request(worker, kind, b64)))
    return {"runtime": record.manifest.runtime.name, "files_mib": sum(f.size for f in record.files) / 2**20,
            "kind": kind,
            "before": before, "ready": ready, "after": _status_mib("VmRSS"), "peak": _status_mib("VmHWM")}


def _memory_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    figures = measure_memory(args.memory_model, args.out / "registry", args.out / "cache")
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


def bench_memory(registry: Path, args: argparse.Namespace) -> list[str]:
    """The per-model memory table: each model in its own process, as in one Nuclio worker;
    returns the models whose measurement failed."""
    build_registry(registry, args.models)
    results = {}
    failed = []
    for model_dir in _models(registry, args.models):
        figures = run_child(["--memory-model", model_dir.name, "--out", str(args.out)], f"memory of {model_dir.name}")
        if figures is None:
            failed.append(model_dir.name)
        else:
            results[model_dir.name] = figures
    log.info("\nmemory of one runner worker, MiB (one process per model; peak over one 1920x1080 request of its kind)")
    header = (f"{'model':<36} {'runtime':<12} {'files':>6} {'empty':>6} {'ready':>6} {'peak':>6} "
              f"{'2 workers':>9}")
    log.info("%s\n%s", header, "-" * len(header))
    for name, f in results.items():
        log.info("%-36s %-12s %6.1f %6.0f %6.0f %6.0f %9.0f%s", name, f["runtime"], f["files_mib"], f["before"],
                 f["ready"], f["peak"], 2 * f["peak"], "" if f["kind"] == "detector" else f"  ({f['kind']})")
    log.info("empty = interpreter + nuclio-sdk before the function loads; ready = after init_context;")
    log.info("peak = VmHWM; a CPU function runs RUNNER_WORKERS (default 2) such processes, a GPU function 1")
    return failed


if __name__ == "__main__":
    sys.exit(main())
