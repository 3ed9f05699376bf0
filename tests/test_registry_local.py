"""The local-folder registry: Drive's layout, listing, resolving, versions, fetch."""

import hashlib
import io

import pytest

from common.errors import ModelNotFound, RegistryError
from common.registry.local import LocalRegistry
from tests.conftest import model_json, registry_tree, write_model


manifest = model_json


@pytest.fixture
def root(tmp_path):
    return registry_tree(tmp_path)


def test_listing_reports_bad_entries_and_keeps_the_rest(root):
    listing = LocalRegistry(root).list_models()
    assert [m.folder for m in listing.models] == ["alpha", "beta-ir"]
    assert listing.total_folders == 6
    errors = {e.folder: e.error for e in listing.errors}
    assert set(errors) == {"bad-field", "bad-json", "no-json", "no-weights"}
    assert errors["no-json"] == "No model.json found"
    assert errors["no-weights"] == "Model file model.onnx not found"
    assert errors["bad-json"] == ("bad-json/model.json: $: invalid JSON at line 1, column 14: "
                                  "Expecting property name enclosed in double quotes")
    assert "$.input.layout" in errors["bad-field"]


def test_files_are_described_by_size_and_sha256(root):
    record = LocalRegistry(root).resolve("beta")  # by model.json name, folder is beta-ir
    assert record.folder == "beta-ir"
    by_path = {f.path: f for f in record.files}
    assert set(by_path) == {"net.xml", "net.bin"}  # the IR's .bin comes along
    assert by_path["net.bin"].size == 10
    assert by_path["net.bin"].sha256 == hashlib.sha256(b"\x00" * 10).hexdigest()
    assert by_path["net.xml"].content_key == "sha256-" + hashlib.sha256(b"<net/>").hexdigest()
    assert record.primary.path == "net.xml"


def test_resolve_versions(root):
    registry = LocalRegistry(root)
    assert registry.versions("alpha") == ["2.1.0", "2.0.0", "1.0.0"]
    current = registry.resolve("alpha")
    assert (current.version, current.current) == ("2.1.0", True)
    old = registry.resolve("alpha", "1.0.0")
    assert (old.version, old.current, old.folder) == ("1.0.0", False, "alpha")
    assert old.primary.size == len(b"old weights")
    inherited = registry.resolve("alpha", "v2.0.0")
    assert inherited.version == "2.0.0" and inherited.manifest.labels == current.manifest.labels
    assert inherited.primary.sha256 == hashlib.sha256(b"v2.0 weights").hexdigest()
    with pytest.raises(ModelNotFound, match=r"no version 9.9.9; versions: 2.1.0, 2.0.0, 1.0.0"):
        registry.resolve("alpha", "9.9.9")
    with pytest.raises(ModelNotFound, match="no model 'gamma'"):
        registry.resolve("gamma")


def test_fetch_streams_the_bytes(root):
    registry = LocalRegistry(root)
    record = registry.resolve("alpha")
    sink = io.BytesIO()
    registry.fetch(record.primary, sink)
    assert sink.getvalue() == b"current weights"
    (root / "alpha" / "model.onnx").unlink()
    with pytest.raises(RegistryError, match="cannot read"):
        registry.fetch(record.primary, io.BytesIO())


def test_missing_root_is_a_registry_error(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        LocalRegistry(tmp_path / "nowhere").list_models()


def test_links_out_of_the_model_folder_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    root = tmp_path / "registry"
    write_model(root, "leaky", manifest("leaky"), {})
    (root / "leaky" / "model.onnx").symlink_to(secret)
    write_model(root, "leaky-dir", manifest("leaky-dir", extra_files=["data"]), {"model.onnx": b"w"})
    (root / "leaky-dir" / "data").symlink_to(tmp_path)
    write_model(root, "inner-link", manifest("inner-link", extra_files=["data"]), {"model.onnx": b"w",
                                                                             "real/a.bin": b"a"})
    (root / "inner-link" / "data").mkdir()
    (root / "inner-link" / "data" / "a.bin").symlink_to(root / "inner-link" / "real" / "a.bin")
    write_model(root, "folder-weights", manifest("folder-weights"), {"model.onnx/x": b"w"})
    listing = LocalRegistry(root).list_models()
    errors = {e.folder: e.error for e in listing.errors}
    assert errors == {"leaky": "Model file model.onnx points outside the model folder",
                      "leaky-dir": "Model file data points outside the model folder",
                      "folder-weights": "Model file model.onnx is a folder, not a file"}
    [ok] = listing.models
    assert ok.folder == "inner-link"  # a link that stays inside the model folder is fine
    assert sorted(f.path for f in ok.files) == ["data/a.bin", "model.onnx"]


def test_an_unreadable_entry_is_reported_and_the_rest_still_listed(tmp_path):
    write_model(tmp_path, "good", manifest("good"), {"model.onnx": b"w"})
    write_model(tmp_path, "deep", {}, {}).joinpath("model.json").write_text("[" * 100000 + "]" * 100000)
    listing = LocalRegistry(tmp_path).list_models()
    assert [m.folder for m in listing.models] == ["good"]
    assert [e.folder for e in listing.errors] == ["deep"]


def test_a_linked_version_folder_cannot_reach_outside_the_registry(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.onnx").write_bytes(b"secret")
    root = tmp_path / "registry"
    write_model(root, "m", manifest("m", "1.0.0"), {"model.onnx": b"w"})
    (root / "m" / "previous_versions").mkdir()
    (root / "m" / "previous_versions" / "v0.0.1").symlink_to(outside)
    with pytest.raises(RegistryError, match="points outside"):
        LocalRegistry(root).resolve("m", "0.0.1")


def test_an_oversized_model_json_is_refused_unread(tmp_path):
    write_model(tmp_path, "big", {}, {}).joinpath("model.json").write_text('{"x": "' + "a" * (2 << 20) + '"}')
    write_model(tmp_path, "good", manifest("good"), {"model.onnx": b"w"})
    listing = LocalRegistry(tmp_path).list_models()
    assert [m.folder for m in listing.models] == ["good"]
    assert listing.errors[0].error == ("big/model.json: $: larger than 1048576 bytes; "
                                       "keep model.json to metadata")
