"""Function names and model label values made from registry folder names (common/publish/naming.py)."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from common.publish.naming import function_name, model_label_value, version_suffix

DNS = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
CVAT = re.compile(r"^[a-zA-Z0-9_.-]+$")
LABEL = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def h(folder: str) -> str:
    return hashlib.sha256(folder.encode()).hexdigest()[:10]


def valid(name: str) -> bool:
    return len(name) <= 63 and bool(DNS.match(name)) and bool(CVAT.match(name))


@pytest.mark.parametrize("folder, expected", [
    ("yolov8n", "gdrive-yolov8n"),
    ("cdla-layout-detector", "gdrive-cdla-layout-detector"),
    ("a", "gdrive-a"),
    ("0day", "gdrive-0day"),
])
def test_a_clean_folder_keeps_its_name(folder, expected):
    assert function_name(folder) == expected


@pytest.mark.parametrize("folder, base", [
    ("YOLOv8 Nano", "yolov8-nano"),
    ("my.model", "my-model"),
    ("yolo_v8", "yolo-v8"),
    ("Modèle détection", "modele-detection"),
    ("-edge-", "edge"),
    ("日本語モデル", "model"),          # nothing ASCII is left: a fixed word, then the hash
    ("yolo-0123456789", "yolo-0123456789"),  # looks like a hashed name: hashed itself
    ("yolo-v1-2-0", "yolo-v1-2-0"),  # looks like a versioned name: hashed itself
])
def test_a_lossy_folder_gets_its_hash(folder, base):
    assert function_name(folder) == f"gdrive-{base}-{h(folder)}"


def test_long_names_are_cut_and_hashed():
    folder = "a" * 80
    name = function_name(folder)
    assert name == "gdrive-" + "a" * (63 - 7 - 11) + "-" + h(folder)
    assert len(name) == 63 and valid(name)
    fits = "b" * 56  # 7 + 56 = 63: still lossless
    assert function_name(fits) == "gdrive-" + fits
    assert function_name(fits + "b") == "gdrive-" + "b" * 45 + "-" + h(fits + "b")


def test_versions_are_appended():
    assert function_name("yolov8n", version="1.2.0") == "gdrive-yolov8n-v1-2-0"
    assert function_name("yolov8n", version="v10.0.3") == "gdrive-yolov8n-v10-0-3"
    assert function_name("YOLOv8 Nano", version="2.0.0") == f"gdrive-yolov8-nano-{h('YOLOv8 Nano')}-v2-0-0"
    long = function_name("c" * 80, version="1.2.3")
    assert len(long) == 63 and long.endswith(f"-{h('c' * 80)}-v1-2-3") and valid(long)
    # A versioned name never equals another folder's current name.
    assert function_name("yolo", version="1.2.0") != function_name("yolo-v1-2-0")
    with pytest.raises(ValueError, match="not MAJOR.MINOR.PATCH"):
        version_suffix("1.2")


def test_prefix_rules_and_reserved_names():
    assert function_name("dashboard", prefix="") == f"dashboard-{h('dashboard')}"
    assert function_name("yolo", prefix="") == "yolo"
    assert function_name("yolo", prefix="cvat-") == "cvat-yolo"
    assert function_name("日本", prefix="") == f"model-{h('日本')}"
    with pytest.raises(ValueError, match="prefix 'Bad_' must be at most 24 characters"):
        function_name("yolo", prefix="Bad_")
    with pytest.raises(ValueError, match="non-empty string"):
        function_name("")


def test_names_are_unique_and_valid_over_random_folders():
    rng = random.Random(1234)
    alphabet = "abcxyzABCXYZ0189-_. éü日"
    folders = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 90))) for _ in range(2000)}
    folders |= {"yolo", "YOLO", "yolo.", "yolo-", "Yolo", "yo lo", "yo-lo", "yo_lo", "yo.lo"}
    names = {f: function_name(f) for f in folders}
    assert len(set(names.values())) == len(folders)
    assert all(valid(n) for n in names.values())
    versioned = {function_name(f, version="3.1.4") for f in folders}
    assert len(versioned | set(names.values())) == 2 * len(folders)
    assert all(valid(n) for n in versioned)
    # Stable: the same folder always gives the same name, whatever else exists.
    assert [function_name(f) for f in sorted(folders)] == [names[f] for f in sorted(folders)]
    labels = {model_label_value(f) for f in folders}
    assert len(labels) == len(folders)
    assert all(len(v) <= 63 and LABEL.match(v) for v in labels)


@pytest.mark.parametrize("folder, expected", [
    ("yolov8n", "yolov8n"),
    ("YOLOv8_nano.v2", "YOLOv8_nano.v2"),
    ("YOLOv8 Nano", f"YOLOv8-Nano-{h('YOLOv8 Nano')}"),
    ("_x_", f"x-{h('_x_')}"),
    ("日本", f"model-{h('日本')}"),
    ("d" * 64, "d" * 52 + "-" + h("d" * 64)),
])
def test_model_label_values(folder, expected):
    assert model_label_value(folder) == expected
    assert len(expected) <= 63 and LABEL.match(expected)
