"""Stage a Nuclio build folder: the function's own files plus ``common/``.

``nuctl deploy --path`` copies exactly one folder into the image at
/opt/nuclio, so the shared package must travel inside it::

    build/<function>/
      main.py, function.yaml       from functions/<function>/
      requirements.txt             the runner image's pins (requirements/runner-cpu.txt)
      common/                      the shared package, without caches

Usage: python -m tools.stage <function> [<out dir>]
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = {"gdrive-runner": "runner-cpu.txt"}

log = logging.getLogger(__name__)


def stage(function: str, out: Path | None = None) -> Path:
    src = REPO / "functions" / function
    if not (src / "function.yaml").is_file():
        raise SystemExit(f"no function {function!r} under functions/")
    out = out or REPO / "build" / function
    if out.exists():
        shutil.rmtree(out)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(src, out, ignore=ignore)
    shutil.copytree(REPO / "common", out / "common", ignore=ignore)
    shutil.copy(REPO / "requirements" / REQUIREMENTS[function], out / "requirements.txt")
    log.info("staged %s in %s", function, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("function")
    parser.add_argument("out", nargs="?", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stage(args.function, args.out)


if __name__ == "__main__":
    main()
