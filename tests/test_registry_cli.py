"""The registry command-line tool (common.registry.cli) and its write operations
(common.registry.writer): every command on a local registry with its exact
output, pushing a second version, rollback of a push that fails half way,
validation errors that name their paths; push/remove on Drive through the real
client against the stand-in, when the stand-in has upload endpoints."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.registry import cli
from common.registry.local import LocalRegistry
from common.registry.writer import LocalWriter, PushError, copy_with_progress
from tests.conftest import model_json, registry_tree, write_model

SKIPPED = [
    "cvat-registry: warning: skipped folder bad-field: bad-field/model.json: $.input.layout: \"NCWH\" is not one "
    "of [\"NCHW\", \"NHWC\"]; $.input.preprocessing.resize: resize mode 'letterbox' needs a target size, but width "
    "and height are missing: set resize.width and resize.height or give a static 4-D input.shape",
    "cvat-registry: warning: skipped folder bad-json: bad-json/model.json: $: invalid JSON at line 1, column 14: "
    "Expecting property name enclosed in double quotes",
    "cvat-registry: warning: skipped folder no-json: No model.json found",
    "cvat-registry: warning: skipped folder no-weights: Model file model.onnx not found",
]


@pytest.fixture
def root(tmp_path):
    root = registry_tree(tmp_path / "registry")
    write_model(root, "gamma", model_json("gamma", "0.3.0", display_name="Gamma Segmenter", type="segmentation",
                                          description="Finds COCO things", tags=["coco", "fast"],
                                          output={"decoder": {"name": "yolo"}}),
                {"model.onnx": b"gamma weights"})
    return root


def run(capsys, root, *argv, env=None):
    """(exit code, stdout lines, stderr lines) of one CLI run."""
    env = {"MODEL_REGISTRY": f"local:{root}"} if env is None else env
    code = cli.main(list(argv), env=env)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def source(tmp_path, name="delta", version="1.0.0", files=None, **extra) -> Path:
    folder = tmp_path / "src" / f"{name}-{version}"
    write_model(folder.parent, folder.name, model_json(name, version, **extra),
                files if files is not None else {"model.onnx": f"{name} {version} weights".encode()})
    return folder


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------- read commands

def test_list(capsys, root):
    code, out, err = run(capsys, root, "list")
    assert code == 0
    assert out == [
        "NAME   VERSION  FRAMEWORK  TYPE          TAGS       DISPLAY NAME",
        "alpha  2.1.0    onnx       detector                 alpha",
        "beta   1.0.0    openvino   detector                 beta",
        "gamma  0.3.0    onnx       segmentation  coco,fast  Gamma Segmenter",
    ]
    assert err == SKIPPED


@pytest.mark.parametrize("argv, names", [
    (["--search", "coco"], ["gamma"]),          # description
    (["--search", "SEGMENTER"], ["gamma"]),     # display name, any case
    (["--search", "ph"], ["alpha"]),            # name
    (["--search=-ir"], ["beta"]),               # folder name
    (["--framework", "openvino"], ["beta"]),
    (["--type", "detector"], ["alpha", "beta"]),
    (["--tag", "coco", "--tag", "fast"], ["gamma"]),
    (["--tag", "coco", "--tag", "slow"], []),
])
def test_list_filters(capsys, root, argv, names):
    code, out, _ = run(capsys, root, "list", "--json", *argv)
    assert code == 0
    assert [m["name"] for m in json.loads("\n".join(out))["models"]] == names


def test_list_json_and_nothing_found(capsys, root):
    code, out, _ = run(capsys, root, "list", "--json", "--search", "coco")
    doc = json.loads("\n".join(out))
    assert doc["models"] == [{"name": "gamma", "folder": "gamma", "version": "0.3.0", "framework": "onnx",
                              "type": "segmentation", "display_name": "Gamma Segmenter",
                              "description": "Finds COCO things", "tags": ["coco", "fast"],
                              "file_name": "model.onnx", "size": 13}]
    assert doc["total_folders"] == 7
    assert {e["folder"] for e in doc["errors"]} == {"bad-field", "bad-json", "no-json", "no-weights"}
    assert run(capsys, root, "list", "--framework", "tensorflow")[:2] == (0, ["no models found"])


def test_show(capsys, root):
    digest = hashlib.sha256(b"old weights").hexdigest()
    code, out, err = run(capsys, root, "show", "alpha", "--version", "1.0.0")
    assert (code, err) == (0, [])
    assert out == [
        "name:         alpha",
        "folder:       alpha",
        "version:      1.0.0 (previous version)",
        "display name: alpha",
        "framework:    onnx",
        "type:         detector",
        "description:  -",
        "tags:         -",
        "labels:       2",
        "versions:     2.1.0, 2.0.0, 1.0.0",
        "files:",
        f"  model.onnx  11 bytes  sha256 {digest}",
    ]
    code, out, _ = run(capsys, root, "show", "beta", "--json")
    doc = json.loads("\n".join(out))
    assert (doc["folder"], doc["current"], [f["path"] for f in doc["files"]]) == ("beta-ir", True,
                                                                                  ["net.xml", "net.bin"])


def test_versions(capsys, root):
    assert run(capsys, root, "versions", "alpha") == (0, ["2.1.0  (current)", "2.0.0", "1.0.0"], [])


def test_user_errors_exit_1_with_one_line(capsys, root, tmp_path):
    assert run(capsys, root, "show", "nope") == (1, [], [f"cvat-registry: error: no model 'nope' in {root}"])
    assert run(capsys, root, "show", "alpha", "--version", "9.9.9") == (
        1, [], ["cvat-registry: error: model 'alpha' has no version 9.9.9; versions: 2.1.0, 2.0.0, 1.0.0"])
    assert run(capsys, root, "list", env={}) == (1, [], [
        "cvat-registry: error: no registry: give --registry or set MODEL_REGISTRY (local:<folder>, "
        "gdrive:<folder name>, gdrive-id:<folder id>)"])
    missing = tmp_path / "nowhere"
    assert run(capsys, root, "--registry", f"local:{missing}", "list") == (
        1, [], [f"cvat-registry: error: registry folder {missing} does not exist"])
    assert run(capsys, root, "list", env={"MODEL_REGISTRY": "gdrive:CVAT_Models"})[0] == 1  # no credentials


def test_usage_errors_exit_2(capsys, root):
    for argv in (["bogus"], [], ["show"], ["list", "--nope"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv, env={})
        assert exc.value.code == 2
    assert "usage: cvat-registry" in capsys.readouterr().err


def test_pull(capsys, root, tmp_path):
    dest = tmp_path / "out"
    code, out, err = run(capsys, root, "pull", "beta", str(dest))
    assert (code, err) == (0, [])
    assert out == [f"pulled beta 1.0.0 into {dest}: 3 files, 16 bytes"]
    assert snapshot(dest).keys() == {"model.json", "net.xml", "net.bin"}
    assert (dest / "net.bin").read_bytes() == b"\x00" * 10
    assert json.loads((dest / "model.json").read_text())["name"] == "beta"
    # a previous version without its own model.json: the inherited one, with its version
    code, out, _ = run(capsys, root, "pull", "alpha", "--version", "2.0.0", str(tmp_path / "old"))
    assert code == 0 and (tmp_path / "old" / "model.onnx").read_bytes() == b"v2.0 weights"
    assert json.loads((tmp_path / "old" / "model.json").read_text())["version"] == "2.0.0"
    assert run(capsys, root, "pull", "alpha", str(dest)) == (
        1, [], [f"cvat-registry: error: {dest} exists and is not an empty folder"])


# --------------------------------------------------------------------- validate

def test_validate_ok(capsys, root, tmp_path):
    src = source(tmp_path)
    assert run(capsys, root, "validate", str(src)) == (
        0, [f"ok: {src}: delta 1.0.0 (onnx detector), 2 files, {src.joinpath('model.json').stat().st_size + 19} "
            f"bytes"], [])


def test_validate_errors_name_their_paths(capsys, root, tmp_path):
    src = source(tmp_path, files={"model.onnx": b""}, extra_files=["net.bin", "vars"])
    (src / "vars").mkdir()
    code, out, err = run(capsys, root, "validate", str(src))
    assert (code, out) == (1, [])
    assert err == [f"cvat-registry: error: {src}: not a valid model folder",
                   f"  {src}/model.onnx: file is empty",
                   f"  {src}/net.bin: not found (named by model.json)",
                   f"  {src}/vars: folder is empty"]

    bad = source(tmp_path, "bad", version="1.0", file_name="weights.zip")
    code, _, err = run(capsys, root, "validate", str(bad))
    assert code == 1
    assert err[1:] == [f"  {bad}/model.json: $.version: a version must look like MAJOR.MINOR.PATCH, e.g. '1.2.0'"]
    (bad / "model.json").write_text(json.dumps(model_json("bad", file_name="weights.zip")))
    (bad / "weights.zip").write_bytes(b"zip")
    assert run(capsys, root, "validate", str(bad))[2][1:] == [
        f"  {bad}/model.json: $.file_name: 'weights.zip' has none of the allowed extensions .onnx .pt .pth .pb .h5 "
        f".tflite .engine .xml .bin .ort"]
    (bad / "model.json").unlink()
    assert run(capsys, root, "validate", str(bad))[2][1:] == [
        f"  {bad}/model.json: not found (every model folder needs a model.json)"]
    assert run(capsys, root, "validate", str(tmp_path / "none"))[2][1:] == [f"  {tmp_path / 'none'}: not a folder"]


def test_push_validates_first(capsys, root, tmp_path):
    before = snapshot(root)
    src = source(tmp_path, files={})
    code, _, err = run(capsys, root, "push", str(src))
    assert code == 1 and err[1:] == [f"  {src}/model.onnx: not found (named by model.json)"]
    assert snapshot(root) == before


# --------------------------------------------------------------------- push / remove, local

def test_push_new_model_then_a_second_version(capsys, root, tmp_path):
    v1 = source(tmp_path, extra_files=["vars"], files={"model.onnx": b"one", "vars/a.bin": b"A", "README.md": b"#"})
    code, out, err = run(capsys, root, "push", str(v1))
    assert code == 0
    size1 = sum(p.stat().st_size for p in v1.rglob("*") if p.is_file())
    assert out == [f"pushed delta 1.0.0: 4 files, {size1} bytes"]
    assert err == ["model.json: 100% ({0} B of {0} B)".format((v1 / "model.json").stat().st_size),
                   "model.onnx: 100% (3 B of 3 B)", "vars/a.bin: 100% (1 B of 1 B)", "README.md: 100% (1 B of 1 B)"]
    assert snapshot(root / "delta") == snapshot(v1)
    assert not [p for p in root.iterdir() if p.name.startswith(".push")]

    v2 = source(tmp_path, version="1.1.0", files={"model.onnx": b"two", "labels.txt": b"x"}, extra_files=["labels.txt"])
    code, out, _ = run(capsys, root, "--quiet", "push", str(v2))
    assert code == 0
    assert out[1] == "previous version 1.0.0 moved to delta/previous_versions/v1.0.0/"
    # the version's files move; README.md (the model's, not a version's) stays unless the push brings one
    old_files = {k: v for k, v in snapshot(v1).items() if k != "README.md"}
    assert snapshot(root / "delta") == {**snapshot(v2), "README.md": b"#",
                                        **{f"previous_versions/v1.0.0/{k}": v for k, v in old_files.items()}}
    registry = LocalRegistry(root)
    assert registry.versions("delta") == ["1.1.0", "1.0.0"]
    old = registry.resolve("delta", "1.0.0")
    assert {f.path for f in old.files} == {"model.onnx", "vars/a.bin"}
    assert run(capsys, root, "versions", "delta")[1] == ["1.1.0  (current)", "1.0.0"]

    # the same version again, or an older one that is there already: refused, nothing changes
    before = snapshot(root)
    assert run(capsys, root, "push", str(v1)) == (1, [], [
        "cvat-registry: error: delta 1.0.0 already exists in the registry (versions: 1.1.0, 1.0.0); "
        "bump \"version\" in model.json"])
    assert snapshot(root) == before


def test_push_refuses_a_name_taken_by_another_folder(capsys, root, tmp_path):
    src = source(tmp_path, "beta", "2.0.0")
    assert run(capsys, root, "push", str(src)) == (
        1, [], ["cvat-registry: error: model name 'beta' is already used by registry folder 'beta-ir'"])


class FailingCopy:
    """Copies ``ok`` files, then fails (a disk full half way through the push)."""

    def __init__(self, ok: int):
        self.ok, self.calls = ok, 0

    def __call__(self, src, dst, progress):
        self.calls += 1
        if self.calls > self.ok:
            Path(dst).write_bytes(b"half")
            raise OSError(28, "No space left on device")
        copy_with_progress(src, dst, progress)


def test_failed_push_rolls_back(root, tmp_path):
    before = snapshot(root)
    with pytest.raises(PushError, match=r"push failed and was rolled back: \[Errno 28\] No space left on device"):
        LocalWriter(LocalRegistry(root), copy=FailingCopy(1)).push(source(tmp_path, "alpha", "3.0.0"))
    with pytest.raises(PushError, match="rolled back"):
        LocalWriter(LocalRegistry(root), copy=FailingCopy(1)).push(source(tmp_path, "epsilon"))
    assert snapshot(root) == before
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["alpha", "beta-ir", "gamma", "no-json", "no-weights", "bad-json", "bad-field", ".hidden"])
    assert sorted(p.name for p in (root / "alpha").iterdir()) == ["model.json", "model.onnx", "previous_versions"]


def test_failure_while_moving_versions_rolls_back(root, tmp_path, monkeypatch):
    """The renames that swap versions are undone too (the last one fails here)."""
    before = snapshot(root)
    real, calls = os.rename, []

    def rename(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 3:  # model.json and model.onnx moved away; the new model.json fails
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(PushError, match="rolled back"):
        LocalWriter(LocalRegistry(root)).push(source(tmp_path, "alpha", "3.0.0"))
    monkeypatch.undo()
    assert snapshot(root) == before
    assert not (root / "alpha" / "previous_versions" / "v2.1.0").exists()
    assert not [p for p in (root / "alpha").iterdir() if p.name.startswith(".push")]


def test_remove_moves_into_trash(capsys, root):
    code, out, _ = run(capsys, root, "remove", "beta")
    assert code == 0
    trashed = list((root / ".trash").iterdir())
    assert [p.name.startswith("beta-ir-") for p in trashed] == [True]
    assert out == [f"removed beta-ir (moved to .trash/{trashed[0].name})"]
    assert snapshot(trashed[0]).keys() == {"model.json", "net.xml", "net.bin"}
    assert not (root / "beta-ir").exists()
    assert run(capsys, root, "list", "--json")[0] == 0 and ".trash" not in json.dumps(
        run(capsys, root, "list", "--json")[1])
    assert run(capsys, root, "remove", "beta")[0] == 1


def test_module_entry_point(root):
    proc = subprocess.run([sys.executable, "-m", "common.registry.cli", "--registry", str(root), "versions", "alpha"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "2.1.0  (current)\n2.0.0\n1.0.0\n", "")


# --------------------------------------------------------------------- push / remove, Drive stand-in

def _tree(drive, folder_id: str, prefix: str = "") -> dict[str, str]:
    """path -> md5 of every untrashed file under a stand-in folder (folders end in /)."""
    out: dict[str, str] = {}
    for item in drive.store.items.values():
        if item.parent != folder_id or drive.store.is_trashed(item):
            continue
        if item.is_folder:
            out[f"{prefix}{item.name}/"] = ""
            out.update(_tree(drive, item.id, f"{prefix}{item.name}/"))
        else:
            out[prefix + item.name] = item.hashes.md5
    return out


def test_push_and_remove_on_drive(drive, tmp_path):
    from google.oauth2.credentials import Credentials

    from common.registry.gdrive import DriveRegistry, build_service
    from common.registry.writer import DriveWriter

    root_id = drive.add_folder("CVAT_Models")
    alpha = drive.add_folder("alpha", root_id)
    drive.add_file("model.json", alpha, json.dumps(model_json("alpha")).encode(), "application/json")
    drive.add_file("model.onnx", alpha, b"alpha weights")

    def writer() -> DriveWriter:
        service = build_service(drive.root_url, Credentials(token="test-token"), timeout=10)
        return DriveWriter(DriveRegistry(service, sleep=lambda s: None), chunk_size=256 << 10)

    big = bytes(range(256)) * 2500  # 640000 bytes: three resumable chunks of 256 KiB
    v1 = source(tmp_path, files={"model.onnx": big, "vars/a.bin": b"A"}, extra_files=["vars"])
    result = writer().push(v1)
    assert (result.name, result.version, result.previous, result.files) == ("delta", "1.0.0", None, 3)
    md5 = {k: hashlib.md5(v).hexdigest() for k, v in snapshot(v1).items()}
    delta = next(i.id for i in drive.store.items.values() if i.name == "delta" and i.parent == root_id)
    assert _tree(drive, delta) == {"model.json": md5["model.json"], "model.onnx": md5["model.onnx"],
                                   "vars/": "", "vars/a.bin": md5["vars/a.bin"]}
    uploads = drive.requests.filter(path_prefix="/upload/")
    assert all(r.query.get("uploadType") == "resumable" for r in uploads)
    assert [r.status for r in uploads if r.method == "POST"] == [200, 200, 200]  # one session per file
    chunks = [r for r in uploads if r.method == "PUT"]
    assert [r.status for r in chunks] == [200, 308, 308, 200, 200]  # model.json; model.onnx in 3; a.bin
    assert not [i for i in drive.store.items.values() if i.name.startswith(".push") and not drive.store.is_trashed(i)]

    v2 = source(tmp_path, version="1.1.0", files={"model.onnx": b"second"})
    drive.requests.clear()
    assert writer().push(v2).previous == "1.0.0"
    assert _tree(drive, delta) == {
        "model.json": hashlib.md5((v2 / "model.json").read_bytes()).hexdigest(),
        "model.onnx": hashlib.md5(b"second").hexdigest(), "previous_versions/": "", "previous_versions/v1.0.0/": "",
        "previous_versions/v1.0.0/model.json": md5["model.json"], "previous_versions/v1.0.0/model.onnx": md5["model.onnx"],
        "previous_versions/v1.0.0/vars/": "", "previous_versions/v1.0.0/vars/a.bin": md5["vars/a.bin"]}
    reader = writer().registry
    assert reader.versions("delta") == ["1.1.0", "1.0.0"]
    assert reader.resolve("delta", "1.0.0").primary.md5 == md5["model.onnx"]

    with pytest.raises(PushError, match="already exists"):
        writer().push(v2)
    # an upload that fails half way: rolled back, delta as it was
    before = _tree(drive, delta)
    drive.fail_next(400, "badRequest", times=None, path_prefix="/upload/")  # not retried
    with pytest.raises(PushError, match="rolled back"):
        writer().push(source(tmp_path, version="2.0.0"))
    drive.clear_faults()
    assert _tree(drive, delta) == before

    assert writer().remove("delta") == "Drive trash"
    assert drive.store.is_trashed(drive.store.items[delta])
    assert drive.store.items[alpha].explicitly_trashed is False


def test_drive_writes_refuse_an_api_key(capsys, root, tmp_path):
    env = {"MODEL_REGISTRY": "gdrive:CVAT_Models", "GOOGLE_DRIVE_API_KEY": "key"}
    assert run(capsys, root, "push", str(source(tmp_path)), env=env) == (1, [], [
        "cvat-registry: error: environment: an API key can only read the registry; push and remove need a service account key "
        "(GOOGLE_DRIVE_SERVICE_ACCOUNT_KEY) or GOOGLE_DRIVE_USE_ADC=1 with write access"])


def test_a_failed_upload_chunk_resumes_from_what_drive_holds(drive, tmp_path, monkeypatch):
    from google.oauth2.credentials import Credentials

    from common.registry import writer as writer_module
    from common.registry.gdrive import DriveRegistry, build_service
    from common.registry.writer import DriveWriter

    monkeypatch.setattr(writer_module.time, "sleep", lambda s: None)
    drive.add_folder("CVAT_Models")
    big = bytes(range(256)) * 2500  # three chunks of 256 KiB
    v1 = source(tmp_path, files={"model.onnx": big})
    drive.fail_next(503, "backendError", times=1, path_prefix="/upload/", method="PUT")
    service = build_service(drive.root_url, Credentials(token="test-token"), timeout=10)
    DriveWriter(DriveRegistry(service, sleep=lambda s: None), chunk_size=256 << 10).push(v1)
    stored = next(i for i in drive.store.items.values() if i.name == "model.onnx")
    assert stored.hashes.md5 == hashlib.md5(big).hexdigest()
    puts = [r for r in drive.requests.filter(path_prefix="/upload/") if r.method == "PUT"]
    # the failed chunk is followed by a status query (bytes */N), never a blind resend
    failed = next(i for i, r in enumerate(puts) if r.status == 503)
    assert puts[failed + 1].content_range.startswith("bytes */")


def test_progress_is_a_tqdm_bar_on_a_terminal_and_log_lines_elsewhere(monkeypatch, caplog):
    import io as _io
    import logging as _logging

    from common.registry import writer as writer_module

    class Terminal(_io.StringIO):
        def isatty(self):
            return True

    caplog.set_level(_logging.INFO, logger="common.registry.progress")
    terminal = Terminal()
    monkeypatch.setattr(writer_module.sys, "stderr", terminal)
    bar = writer_module.Progress("model.onnx", 3 * 1024 * 1024)
    bar.update(1024 * 1024)
    bar.finish()
    assert "model.onnx: 100%" in terminal.getvalue() and "3.00M" in terminal.getvalue()
    assert not caplog.records  # no log lines beside the bar

    monkeypatch.setattr(writer_module.sys, "stderr", _io.StringIO())  # not a terminal
    plain = writer_module.Progress("model.onnx", 2048)
    plain.finish()
    assert [r.getMessage() for r in caplog.records] == ["model.onnx: 100% (2.0 KiB of 2.0 KiB)"]
