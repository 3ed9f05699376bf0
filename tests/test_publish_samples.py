"""Registry.samples(): a model folder's samples/ pictures, from a local folder and from
Drive (the real client against the stand-in), with the same answer and few requests."""

from __future__ import annotations

import io
import json
from pathlib import Path

from google.oauth2.credentials import Credentials

from common.registry import RemoteFile
from common.registry.gdrive import DriveRegistry, build_service
from common.registry.local import LocalRegistry
from tests.conftest import model_json, write_model

PICTURES = {f"samples/{name}": name.encode() * 3 for name in (
    "b.png", "a.JPG", "c.jpeg", "d.bmp", "e.webp", "f.tif", "g.tiff", "h.png", "i.png", "j.png")}
EXPECTED = ["samples/a.JPG", "samples/b.png", "samples/c.jpeg", "samples/d.bmp", "samples/e.webp",
            "samples/f.tif", "samples/g.tiff", "samples/h.png"]  # sorted by name, the first 8


def tree(root: Path) -> Path:
    files = {"model.onnx": b"weights", **PICTURES, "samples/notes.txt": b"not a picture",
             "samples/.png": b"no name", "samples/deeper/k.png": b"in a subfolder", "README.md": b"hi"}
    write_model(root, "withsamples", model_json("withsamples"), files)
    write_model(root, "nosamples", model_json("nosamples"), {"model.onnx": b"w"})
    write_model(root, "emptysamples", model_json("emptysamples"), {"model.onnx": b"w", "samples/x.txt": b"x"})
    return root


def mirror(drive, local: Path, parent: str) -> None:
    for path in sorted(local.iterdir()):
        if path.is_dir():
            mirror(drive, path, drive.add_folder(path.name, parent))
        else:
            drive.add_file(path.name, parent, path.read_bytes(),
                           "application/json" if path.suffix == ".json" else "application/octet-stream")


def drive_registry(drive) -> DriveRegistry:
    service = build_service(drive.root_url, Credentials(token="test-token"), timeout=10)
    return DriveRegistry(service, sleep=lambda s: None)


def fetched(registry, sample: RemoteFile) -> bytes:
    sink = io.BytesIO()
    registry.fetch(sample, sink)
    return sink.getvalue()


def test_local_samples(tmp_path):
    reg = LocalRegistry(tree(tmp_path / "registry"))
    samples = reg.samples(reg.resolve("withsamples"))
    assert [s.path for s in samples] == EXPECTED
    assert [s.size for s in samples] == [len(PICTURES[p]) for p in EXPECTED]
    assert all(s.sha256 and len(s.sha256) == 64 for s in samples)
    assert fetched(reg, samples[0]) == b"a.JPGa.JPGa.JPG"
    assert reg.samples(reg.resolve("nosamples")) == []
    assert reg.samples(reg.resolve("emptysamples")) == []


def test_a_link_out_of_the_registry_is_not_a_sample(tmp_path):
    root = tree(tmp_path / "registry")
    (tmp_path / "secret.png").write_bytes(b"outside")
    (root / "nosamples" / "samples").mkdir()
    (root / "nosamples" / "samples" / "leak.png").symlink_to(tmp_path / "secret.png")
    (root / "nosamples" / "samples" / "ok.png").write_bytes(b"ok")
    reg = LocalRegistry(root)
    assert [s.path for s in reg.samples(reg.resolve("nosamples"))] == ["samples/ok.png"]


def test_drive_samples_equal_local_ones_in_three_requests(drive, tmp_path):
    local_root = tree(tmp_path / "CVAT_Models")
    root = drive.add_folder("CVAT_Models")
    mirror(drive, local_root, root)
    reg, local = drive_registry(drive), LocalRegistry(local_root)
    record = reg.resolve("withsamples")
    drive.requests.clear()
    samples = reg.samples(record)
    # the model folder by name, its children, the children of samples/
    assert len(drive.requests) == 3, [(r.method, r.query.get("q")) for r in drive.requests]
    assert [s.path for s in samples] == EXPECTED
    expected = local.samples(local.resolve("withsamples"))
    assert [(s.path, s.size, s.sha256) for s in samples] == [(s.path, s.size, s.sha256) for s in expected]
    assert fetched(reg, samples[1]) == b"b.pngb.pngb.png"

    for folder in ("nosamples", "emptysamples"):
        record = reg.resolve(folder)
        drive.requests.clear()
        assert reg.samples(record) == []
        assert len(drive.requests) == (2 if folder == "nosamples" else 3)  # no samples/ folder to list


def test_drive_sample_shortcuts_are_followed(drive, tmp_path):
    root = drive.add_folder("CVAT_Models")
    folder = drive.add_folder("m", root)
    drive.add_file("model.json", folder, json.dumps(model_json("m")).encode(), "application/json")
    drive.add_file("model.onnx", folder, b"w")
    samples = drive.add_folder("samples", folder)
    elsewhere = drive.add_file("street.png", drive.add_folder("pictures"), b"street pixels")
    drive.add_shortcut("a-street.png", samples, elsewhere)
    drive.add_google_doc("b-notes.png", samples)  # a Google Doc with an image name: left out
    reg = drive_registry(drive)
    record = reg.resolve("m")
    drive.requests.clear()
    found = reg.samples(record)
    assert [(s.path, s.size, s.locator) for s in found] == [("samples/a-street.png", 13, elsewhere)]
    assert len(drive.requests) == 4  # + one files.get for the shortcut's target
    assert fetched(reg, found[0]) == b"street pixels"
