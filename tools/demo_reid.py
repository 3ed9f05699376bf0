"""The reid part of ``make demo``: two frames, CVAT's reid payload, a picture of the matches.

For each reid demo model (:data:`SCENES`) the worker gets CVAT's batch-job
payload (cvat-contract.md §2.3): a frame, the next frame (here the same
picture shifted, as a slow camera pan would), and the rectangles on each,
the next frame's in another order, one of them without a partner. The answer
is written as JSON and drawn: both frames side by side, every box outlined,
matched boxes in one colour and linked by a line, unmatched ones white.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tools.assets import asset_path

log = logging.getLogger("demo")

COLORS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")
GAP = 16  # pixels between the two frames on the picture


@dataclass(frozen=True)
class Scene:
    """A frame pair: ``picture`` and the same picture cropped by ``shift`` (x, y) on the left and top."""

    picture: str
    shift: tuple[int, int]
    boxes0: dict[str, tuple[float, float, float, float]]  # name -> box on the first frame
    boxes1: dict[str, tuple[float, float, float, float]]  # name -> box on the next frame, in this order


def _shifted(box, shift, jitter=(4, -3, 2, 5)):
    """A box of the first frame on the next one, redrawn a few pixels off as an annotator would."""
    return tuple(v - shift[k % 2] + jitter[k] for k, v in enumerate(box))


_ASTRONAUT = {"face": (170, 60, 280, 190), "flag": (0, 0, 95, 290), "rocket": (355, 0, 470, 280),
              "helmet": (280, 345, 510, 512)}
SCENES = {
    "mobilenet-reid": Scene(
        "astronaut.png", (24, 16), _ASTRONAUT,
        {"helmet": _shifted(_ASTRONAUT["helmet"], (24, 16)), "flag": _shifted(_ASTRONAUT["flag"], (24, 16)),
         "patch": (110, 330, 185, 410),  # the mission patch: on the next frame only
         "face": _shifted(_ASTRONAUT["face"], (24, 16)), "rocket": _shifted(_ASTRONAUT["rocket"], (24, 16))}),
}


def frames(scene: Scene, folder: Path) -> tuple[Path, Path]:
    """The two frames as PNG files (the second made into ``folder``)."""
    first = asset_path(scene.picture)
    second = folder / f"{Path(scene.picture).stem}-shifted-{scene.shift[0]}-{scene.shift[1]}.png"
    if not second.exists():
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(first).convert("RGB")
        image.crop((scene.shift[0], scene.shift[1], image.width, image.height)).save(second)
    return first, second


def cvat_boxes(boxes: dict, frame: int, first_id: int) -> list[dict]:
    """Rectangles as CVAT's reid job sends them: its stored shapes (all labelled the same here)."""
    return [{"id": first_id + i, "label_id": 1, "frame": frame, "type": "rectangle", "points": [float(v) for v in box],
             "attributes": [], "group": 0, "occluded": False, "source": "manual", "z_order": 0, "rotation": 0.0}
            for i, box in enumerate(boxes.values())]


def draw_matches(path0: Path, path1: Path, boxes0: list, boxes1: list, answer: list[int], out: Path) -> None:
    """Both frames side by side; matched boxes share a colour and a line between their centres."""
    left, right = Image.open(path0).convert("RGB"), Image.open(path1).convert("RGB")
    canvas = Image.new("RGB", (left.width + GAP + right.width, max(left.height, right.height)), "black")
    canvas.paste(left, (0, 0))
    offset = left.width + GAP
    canvas.paste(right, (offset, 0))
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, min(canvas.size) // 40))
    colour1 = {}
    for i, j in enumerate(answer):
        colour = COLORS[i % len(COLORS)] if j >= 0 else "#ffffff"
        x1, y1, x2, y2 = boxes0[i]["points"]
        pen.rectangle((x1, y1, x2, y2), outline=colour, width=3)
        pen.text((x1 + 4, y1 + 2), f"{i}", fill=colour, font=font)
        if j >= 0:
            colour1[j] = colour
            u1, v1, u2, v2 = boxes1[j]["points"]
            pen.line(((x1 + x2) / 2, (y1 + y2) / 2, offset + (u1 + u2) / 2, (v1 + v2) / 2), fill=colour, width=3)
    for j, box in enumerate(boxes1):
        u1, v1, u2, v2 = box["points"]
        pen.rectangle((offset + u1, v1, offset + u2, v2), outline=colour1.get(j, "#ffffff"), width=3)
        pen.text((offset + u1 + 4, v1 + 2), f"{j}", fill=colour1.get(j, "#ffffff"), font=font)
    canvas.save(out)


def run(worker, model: str, images: Path, output: Path) -> tuple[list[tuple], int]:
    """Ask ``worker`` (serving reid model ``model``) about its scene; (table rows, failures)."""
    from tools.nuclio_harness import http_event

    scene = SCENES[model]
    path0, path1 = frames(scene, images)
    boxes0, boxes1 = cvat_boxes(scene.boxes0, 0, 1), cvat_boxes(scene.boxes1, 1, 100)
    body = {"image0": _b64(path0), "image1": _b64(path1), "boxes0": boxes0, "boxes1": boxes1, "max_distance": 50}
    event = http_event(body)
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        result = worker.invoke(event)
        timings.append((time.perf_counter() - started) * 1000)
    name = f"{path0.name} -> {path1.name}"
    if result.status != 200:
        log.error("%s on %s: HTTP %d %s", model, name, result.status, result.body[:300])
        return [], 1
    answer = result.json()
    names0, names1 = list(scene.boxes0), list(scene.boxes1)
    pairs = {names0[i]: (names1[j] if j >= 0 else None) for i, j in enumerate(answer)}
    stem = Path(scene.picture).stem  # one JSON and one PNG per scene, named after its picture
    (output / f"{stem}.json").write_text(json.dumps({"answer": answer, "pairs": pairs}, indent=1))
    draw_matches(path0, path1, boxes0, boxes1, answer, output / f"{stem}.png")
    wrong = [n for n, m in pairs.items() if m != n]
    if wrong:
        log.error("%s: boxes matched wrongly: %s", model, ", ".join(f"{n} -> {pairs[n]}" for n in wrong))
    matched = sum(j >= 0 for j in answer)
    row = (model, f"{stem} pair", matched, f"matched {matched} of {len(answer)} (reid)",
           statistics.median(timings))
    return [row], 1 if wrong else 0


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode("ascii")
