"""The 1000 ImageNet-1k category names, read as data from a pinned torchvision wheel.

torchvision's ``models/_meta.py`` (BSD-3-Clause) holds them as the list literal
``_IMAGENET_CATEGORIES``, in the class order of torchvision's ImageNet
checkpoints (the order of MobileNetV2's 1000 logits). The file is fetched and
sha256-checked by tools/assets.py and parsed with :mod:`ast`; the package is
never imported (it cannot be next to the CPU torch, trap T2) and the list is
never copied into this repository.

Usage: ``python -m tools.models.imagenet_labels`` logs the names with their ids.
"""

from __future__ import annotations

import ast
import logging
from functools import lru_cache
from pathlib import Path

from tools.assets import asset_path

log = logging.getLogger(__name__)

SOURCE = "_meta.py"  # tools/assets.py: torchvision==0.28.0, torchvision/models/_meta.py
VARIABLE = "_IMAGENET_CATEGORIES"
COUNT = 1000


class LabelSourceError(RuntimeError):
    """The pinned file does not hold the expected list of names."""


def read_categories(path: Path, variable: str = VARIABLE, count: int = COUNT) -> tuple[str, ...]:
    """The list literal assigned to ``variable`` at the top level of the Python file ``path``:
    ``count`` distinct, non-empty strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    values = [node.value for node in tree.body
              if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == variable
                                                      for t in node.targets)]
    if len(values) != 1:
        raise LabelSourceError(f"{path}: expected one top-level assignment to {variable}, found {len(values)}")
    try:
        names = ast.literal_eval(values[0])
    except ValueError as exc:
        raise LabelSourceError(f"{path}: {variable} is not a literal: {exc}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
        raise LabelSourceError(f"{path}: {variable} is not a list of non-empty strings")
    if len(names) != count or len(set(names)) != count:
        raise LabelSourceError(f"{path}: {variable} holds {len(names)} names ({len(set(names))} distinct), "
                               f"expected {count} distinct")
    return tuple(names)


@lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 names, index = class id (285 is "Egyptian cat", 967 "espresso")."""
    return read_categories(asset_path(SOURCE))


def label_entries() -> list[dict]:
    """model.json ``labels`` for an ImageNet classifier: ``{"id": i, "name": ..., "type": "tag"}``."""
    return [{"id": i, "name": name, "type": "tag"} for i, name in enumerate(imagenet_categories())]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for i, name in enumerate(imagenet_categories()):
        log.info("%4d %s", i, name)


if __name__ == "__main__":
    main()
