"""``make bench``: the runner's cost over the bare runtime, per demo model.

For each demo model, on one 1920×1080 JPEG, all measured in this run:

* handler: median latency of the full Nuclio handler (base64 + JPEG decode,
  preprocessing, runtime, decoder, CVAT JSON) through real nuclio-sdk objects;
* runtime: median of the bare ``runtime.run`` on the same preprocessed tensor;
* ratio handler/runtime and the overhead in ms, checked against the target:
  overhead ≤ max(10 % of the handler time, 15 ms);
* stages: where the overhead goes (image decode, preprocess, decode+format);
* cold start with the model already cached (a new worker's init_context)
  against creating the runtime session alone.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import statistics
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / ".demo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("common").setLevel(logging.WARNING)

    from common.imaging import decode_image
    from common.runtimes import load_runtime
    from tools.nuclio_harness import Worker, http_event

    registry = build_registry(args.out / "registry")
    jpeg = bench_image()
    event = http_event({"image": base64.b64encode(jpeg).decode("ascii")})
    rows, starts = [], []
    for model_dir in sorted(p for p in registry.iterdir() if p.is_dir()):
        env = {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": model_dir.name,
               "MODEL_CACHE_DIR": str(args.out / "cache"), "MODEL_CACHE_SIZE": "1GiB"}
        worker = Worker(RUNNER_DIR, env=env)  # also fills the cache: later starts are cached starts
        model = worker.context.user_data.model
        pipeline = model.pipeline
        image = decode_image(jpeg)
        tensor, transform = pipeline.preprocess(image)
        feeds = {pipeline.input.name: tensor}
        outputs = model.runtime.run(feeds)
        hw = tuple(tensor.shape[2:4]) if pipeline.manifest.input.layout == "NCHW" else tuple(tensor.shape[1:3])
        threshold = pipeline.manifest.output.score_threshold
        for _ in range(3):  # warm-up
            worker.invoke(event)
        handler = median_ms(lambda: worker.invoke(event), args.repeat)
        runtime = median_ms(lambda: model.runtime.run(feeds), args.repeat)
        decode = median_ms(lambda: decode_image(base64.b64encode(jpeg).decode("ascii")), args.repeat)
        prep = median_ms(lambda: pipeline.preprocess(image), args.repeat)
        post = median_ms(lambda: pipeline.decode(outputs, hw, threshold), args.repeat)
        overhead = handler - runtime
        target = max(0.10 * handler, 15.0)
        rows.append((model_dir.name, handler, runtime, handler / runtime, overhead, target, decode, prep, post))

        manifest = model.record.manifest
        cold = median_ms(lambda: Worker(RUNNER_DIR, env=env), 3)
        files = {p: model.snapshot.file(p) for p in manifest.extra_files}
        session = median_ms(lambda: load_runtime(manifest.runtime.name, model.snapshot.file(manifest.file_name),
                                                 extra_paths=files, precision=manifest.runtime.precision), 3)
        starts.append((model_dir.name, cold, session))

    log.info("1920x1080 JPEG (%d KiB), median of %d calls, times in ms", len(jpeg) // 1024, args.repeat)
    header = (f"{'model':<32} {'handler':>8} {'runtime':>8} {'ratio':>6} {'overhead':>9} {'target':>7}  "
              f"{'decode':>7} {'prep':>6} {'post':>6}")
    log.info("%s\n%s", header, "-" * len(header))
    worst = 0
    for name, handler, runtime, ratio, overhead, target, decode, prep, post in rows:
        verdict = "ok" if overhead <= target else "OVER"
        worst |= verdict != "ok"
        log.info("%-32s %8.1f %8.1f %6.2f %9.1f %7.1f  %7.1f %6.1f %6.1f  %s", name, handler, runtime, ratio,
                 overhead, target, decode, prep, post, verdict)
    log.info("\ncold start, model already cached (median of 3), ms")
    log.info("%-32s %10s %10s %6s", "model", "init", "session", "ratio")
    for name, cold, session in starts:
        log.info("%-32s %10.1f %10.1f %6.2f", name, cold, session, cold / session)
    return 0


if __name__ == "__main__":
    sys.exit(main())
