"""Stage Nuclio build folders: the function's own files plus ``common/``.

``nuctl deploy --path`` copies exactly one folder into the image at
/opt/nuclio, so the shared package must travel inside it. The runner has one
image per runtime family (onnx, pytorch, tensorflow; CPU and GPU), so it is
staged once per family, each folder with only that family's requirements::

    build/gdrive-runner-<family>[-gpu]/
      main.py                      from functions/gdrive-runner/
      function.yaml                the family's spec (function[-<family>][-gpu].yaml)
      requirements.txt             requirements/runner-<family>[-gpu].txt, with -r includes inlined
      common/                      the shared package, without caches

Other functions (registry-sync) stage as before: ``build/<function>/``.

Usage: python -m tools.stage <function> [--family F | --all] [<out dir>]
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# runner variant (family, or family-gpu) -> (function spec, requirements file)
RUNNER_VARIANTS: dict[str, tuple[str, str]] = {
    "onnx": ("function.yaml", "runner-onnx.txt"),
    "onnx-gpu": ("function-gpu.yaml", "runner-onnx-gpu.txt"),
    "pytorch": ("function-pytorch.yaml", "runner-pytorch.txt"),
    "pytorch-gpu": ("function-pytorch-gpu.yaml", "runner-pytorch-gpu.txt"),
    "tensorflow": ("function-tensorflow.yaml", "runner-tensorflow.txt"),
    "tensorflow-gpu": ("function-tensorflow-gpu.yaml", "runner-tensorflow-gpu.txt"),
}
RUNNER = "gdrive-runner"
DEFAULT_FAMILY = "onnx"
# functions other than the runner: one image, one requirements file (registry-sync reads
# registries and model.json, and runs no model: the runners' shared base is enough)
REQUIREMENTS: dict[str, str] = {"registry-sync": "runner-base.txt"}

log = logging.getLogger(__name__)


def flatten_requirements(path: Path, seen: tuple[Path, ...] = ()) -> list[str]:
    """The lines of a requirements file with ``-r other.txt`` replaced by that file's lines
    (a build folder holds one requirements.txt); pip options such as --extra-index-url stay."""
    if path in seen:
        raise ValueError(f"{path.name} includes itself (through {' -> '.join(p.name for p in seen)})")
    lines: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith(("-r ", "--requirement ")):
            lines += flatten_requirements(path.parent / stripped.split(None, 1)[1], seen + (path,))
        else:
            lines.append(line)
    return lines


def requirement_pins(path: Path) -> set[str]:
    """The package pins of a requirements file and its includes (no comments, no pip options)."""
    return {line.strip() for line in flatten_requirements(path)
            if line.strip() and not line.strip().startswith(("#", "-"))}


def _copy_function(src: Path, out: Path, spec: str | None) -> None:
    if out.exists():
        shutil.rmtree(out)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "function*.yaml")
    shutil.copytree(src, out, ignore=ignore)
    shutil.copy(src / (spec or "function.yaml"), out / "function.yaml")
    shutil.copytree(REPO / "common", out / "common", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def stage(function: str, out: Path | None = None, *, family: str | None = None) -> Path:
    """Stage ``function`` (for the runner: its ``family`` variant, default onnx) into ``out``."""
    src = REPO / "functions" / function
    if not (src / "function.yaml").is_file():
        raise SystemExit(f"no function {function!r} under functions/")
    if function == RUNNER:
        family = family or DEFAULT_FAMILY
        if family not in RUNNER_VARIANTS:
            raise SystemExit(f"no runner family {family!r} (known: {', '.join(RUNNER_VARIANTS)})")
        spec, requirements = RUNNER_VARIANTS[family]
        out = out or REPO / "build" / f"{RUNNER}-{family}"
    else:
        if family is not None:
            raise SystemExit(f"{function} has no families")
        spec, requirements = None, REQUIREMENTS.get(function)
        out = out or REPO / "build" / function
    _copy_function(src, out, spec)
    if requirements is not None:
        lines = flatten_requirements(REPO / "requirements" / requirements)
        (out / "requirements.txt").write_text("\n".join(lines) + "\n")
    log.info("staged %s%s in %s", function, f" ({family})" if family else "", out)
    return out


def stage_all_families(root: Path | None = None) -> list[Path]:
    """Every runner variant, each in ``<root>/gdrive-runner-<variant>``."""
    root = root or REPO / "build"
    return [stage(RUNNER, root / f"{RUNNER}-{family}", family=family) for family in RUNNER_VARIANTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function")
    parser.add_argument("out", nargs="?", type=Path)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--family", help=f"runner variant: {', '.join(RUNNER_VARIANTS)} (default {DEFAULT_FAMILY})")
    which.add_argument("--all", action="store_true", help="every runner variant, under <out> (default build/)")
    args = parser.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.all:
        if args.function != RUNNER:
            raise SystemExit("--all stages the runner's families only")
        stage_all_families(args.out)
    else:
        stage(args.function, args.out, family=args.family)


if __name__ == "__main__":
    main()
