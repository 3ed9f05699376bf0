"""``make bench``: the runner's cost over the bare runtime, per demo model.

For each demo model, on one 1920×1080 JPEG, all measured in this run:

* handler: median latency of the full Nuclio handler (base64 + JPEG decode,
  preprocessing, runtime, decoder, CVAT JSON) through real nuclio-sdk objects;
* runtime: median of the bare ``runtime.run`` on the same preprocessed tensor;
* ratio handler/runtime and the overhead in ms, checked against the target:
  overhead ≤ max(10 % of the handler time, 15 ms);
* stages: where the overhead goes (base64 + image decode at the scale the
  model needs, preprocess, output decoder);
* cold start with the model already cached (a new worker's init_context)
  against creating the runtime session alone.

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
from tools.demo import REPO, RUNNER_DIR, build_registry

log = logging.getLogger("bench")


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


def measure(model_name: str, registry: Path, cache: Path, repeat: int) -> dict[str, float]:
    """All figures for one model, in this process (a worker hosts one model)."""
    from common.imaging import decode_image_for
    from common.runtimes import load_runtime
    from tools.nuclio_harness import Worker, http_event

    jpeg = bench_image()
    b64 = base64.b64encode(jpeg).decode("ascii")
    event = http_event({"image": b64})
    env = {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": model_name,
           "MODEL_CACHE_DIR": str(cache), "MODEL_CACHE_SIZE": "1GiB"}
    worker = Worker(RUNNER_DIR, env=env)  # also fills the cache: later starts are cached starts
    model = worker.context.user_data.model
    pipeline = model.pipeline
    image, _ = decode_image_for(jpeg, pipeline.needed_size)
    tensor, _ = pipeline.preprocess(image)
    feeds = {pipeline.input.name: tensor}
    outputs = model.runtime.run(feeds)
    hw = tuple(tensor.shape[2:4]) if pipeline.manifest.input.layout == "NCHW" else tuple(tensor.shape[1:3])
    threshold = pipeline.manifest.output.score_threshold
    stages = {
        "handler": lambda: worker.invoke(event),
        "runtime": lambda: model.runtime.run(feeds),
        "decode": lambda: decode_image_for(b64, pipeline.needed_size),
        "prep": lambda: pipeline.preprocess(image),
        "post": lambda: pipeline.decode(outputs, hw, threshold),
    }
    for _ in range(3):  # warm-up
        worker.invoke(event)
    # Interleaved, so that the machine's ups and downs hit every stage alike.
    times: dict[str, list[float]] = {name: [] for name in stages}
    for _ in range(repeat):
        for name, fn in stages.items():
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1000)
    figures = {name: statistics.median(values) for name, values in times.items()}

    manifest = model.record.manifest
    files = {p: model.snapshot.file(p) for p in manifest.extra_files}
    cold, warm = [], []
    for _ in range(3):
        started = time.perf_counter()
        fresh = Worker(RUNNER_DIR, env=env)
        cold.append((time.perf_counter() - started) * 1000)
        warm.append(fresh.context.user_data.model.timings["warm_up"] * 1000)
    figures["cold"], figures["warmup"] = statistics.median(cold), statistics.median(warm)
    figures["session"] = median_ms(lambda: load_runtime(manifest.runtime.name, model.snapshot.file(manifest.file_name),
                                                        extra_paths=files, precision=manifest.runtime.precision), 3)
    figures["jpeg_kib"] = len(jpeg) / 1024
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / ".demo")
    parser.add_argument("--model", help="measure this model only and print its figures as JSON (internal)")
    drive = parser.add_mutually_exclusive_group()
    drive.add_argument("--drive-only", action="store_true", help="only the Drive registry's figures")
    drive.add_argument("--no-drive", action="store_true", help="skip the Drive registry's figures")
    parser.add_argument("--drive-repeat", type=int, default=3, help="runs of each 1 GiB download kind")
    runtimes = parser.add_mutually_exclusive_group()
    runtimes.add_argument("--runtimes-only", action="store_true", help="only the per-runtime table")
    runtimes.add_argument("--no-runtimes", action="store_true", help="skip the per-runtime table")
    memory = parser.add_mutually_exclusive_group()
    memory.add_argument("--memory-only", action="store_true", help="only the per-model memory table")
    memory.add_argument("--no-memory", action="store_true", help="skip the per-model memory table")
    parser.add_argument("--memory-model", help="measure this model's memory only, as JSON (internal)")
    args = parser.parse_args()
    if args.memory_model:
        return _memory_main(args)
    if args.memory_only:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        bench_memory(args.out / "registry", args)
        return 0
    logging.basicConfig(level=logging.WARNING if args.model else logging.INFO, format="%(message)s",
                        stream=sys.stdout)
    logging.getLogger("common").setLevel(logging.WARNING)
    registry = args.out / "registry"
    if args.model:
        sys.stdout.write(json.dumps(measure(args.model, registry, args.out / "cache", args.repeat)) + "\n")
        return 0
    if not (args.drive_only or args.runtimes_only):
        bench_models(registry, args)
    if not (args.drive_only or args.runtimes_only or args.no_memory):
        bench_memory(registry, args)
    if args.runtimes_only or not (args.drive_only or args.no_runtimes):
        from tools import bench_runtimes

        bench_runtimes.run(repeat=args.repeat)
    if not (args.no_drive or args.runtimes_only):
        from tools import bench_drive

        bench_drive.run(args.drive_repeat)
    return 0


def bench_models(registry: Path, args: argparse.Namespace) -> None:
    """The per-model tables."""
    build_registry(registry)
    results = {}
    for model_dir in sorted(p for p in registry.iterdir() if p.is_dir()):
        # One process per model, as in Nuclio: no other engine's threads compete.
        done = subprocess.run([sys.executable, "-m", "tools.bench", "--model", model_dir.name, "--repeat",
                               str(args.repeat), "--out", str(args.out)], capture_output=True, text=True, check=True)
        results[model_dir.name] = json.loads(done.stdout.strip().splitlines()[-1])

    some = next(iter(results.values()))
    log.info("1920x1080 JPEG (%d KiB), median of %d interleaved calls, times in ms",
             some["jpeg_kib"], args.repeat)
    header = (f"{'model':<32} {'handler':>8} {'runtime':>8} {'ratio':>6} {'overhead':>9} {'target':>7}  "
              f"{'decode':>7} {'prep':>6} {'post':>6}")
    log.info("%s\n%s", header, "-" * len(header))
    for name, f in results.items():
        overhead = f["handler"] - f["runtime"]
        target = max(0.10 * f["handler"], 15.0)
        log.info("%-32s %8.1f %8.1f %6.2f %9.1f %7.1f  %7.1f %6.1f %6.1f  %s", name, f["handler"], f["runtime"],
                 f["handler"] / f["runtime"], overhead, target, f["decode"], f["prep"], f["post"],
                 "ok" if overhead <= target else "OVER")
    log.info("overhead = handler - runtime; target = max(10 % of handler, 15 ms); decode includes base64")
    log.info("\ncold start with the model already cached (median of 3), ms: a new worker's init_context")
    log.info("(registry lookup, cache checkout, session, one warm-up inference) against the session alone")
    log.info("%-32s %8s %8s %8s %6s", "model", "init", "warm-up", "session", "ratio")
    for name, f in results.items():
        log.info("%-32s %8.1f %8.1f %8.1f %6.2f", name, f["cold"], f["warmup"], f["session"],
                 (f["cold"] - f["warmup"]) / f["session"])
    log.info("ratio = (init - warm-up) / session")


# ---- memory per runner worker (docs/admin-guide.md, Sizing) -------------------------------------------------

def _status_mib(field: str) -> float:
    """A /proc/self/status figure (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def measure_memory(model_name: str, registry: Path, cache: Path) -> dict[str, float | str]:
    """One runner worker's memory, in this fresh process: before the function loads (the
    interpreter and nuclio-sdk), after init_context, and the peak over one 1920x1080 call."""
    from tools.nuclio_harness import Worker, http_event

    event = http_event({"image": base64.b64encode(bench_image()).decode("ascii")})
    before = _status_mib("VmRSS")
    worker = Worker(RUNNER_DIR, env={"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": model_name,
                                     "MODEL_CACHE_DIR": str(cache), "MODEL_CACHE_SIZE": "1GiB",
                                     "MODEL_REFRESH_SECONDS": "0"})
    ready = _status_mib("VmRSS")
    # A detector's payload: other kinds answer 400 to it, before their model runs (their peak is init's).
    status = worker.invoke(event).status
    record = worker.context.user_data.model.record
    return {"runtime": record.manifest.runtime.name, "files_mib": sum(f.size for f in record.files) / 2**20,
            "kind": record.manifest.type, "status": status,
            "before": before, "ready": ready, "after": _status_mib("VmRSS"), "peak": _status_mib("VmHWM")}


def _memory_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    figures = measure_memory(args.memory_model, args.out / "registry", args.out / "cache")
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


def bench_memory(registry: Path, args: argparse.Namespace) -> dict[str, dict]:
    """The per-model memory table: each model in its own process, as in one Nuclio worker."""
    build_registry(registry)
    results = {}
    for model_dir in sorted(p for p in registry.iterdir() if p.is_dir()):
        done = subprocess.run([sys.executable, "-m", "tools.bench", "--memory-model", model_dir.name,
                               "--out", str(args.out)], capture_output=True, text=True, check=True)
        results[model_dir.name] = json.loads(done.stdout.strip().splitlines()[-1])
    log.info("\nmemory of one runner worker, MiB (one process per model; peak over one 1920x1080 call)")
    header = (f"{'model':<36} {'runtime':<12} {'files':>6} {'empty':>6} {'ready':>6} {'peak':>6} "
              f"{'2 workers':>9}")
    log.info("%s\n%s", header, "-" * len(header))
    for name, f in results.items():
        log.info("%-36s %-12s %6.1f %6.0f %6.0f %6.0f %9.0f%s", name, f["runtime"], f["files_mib"], f["before"],
                 f["ready"], f["peak"], 2 * f["peak"], "" if f["status"] == 200 else f"  ({f['kind']}: init only)")
    log.info("empty = interpreter + nuclio-sdk before the function loads; ready = after init_context;")
    log.info("peak = VmHWM; a CPU function runs RUNNER_WORKERS (default 2) such processes, a GPU function 1")
    return results


if __name__ == "__main__":
    sys.exit(main())
