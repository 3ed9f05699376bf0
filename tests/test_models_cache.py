"""Model files built once into the assets cache (tools.models.cache)."""

from __future__ import annotations

import hashlib

import pytest

from tools.models.cache import built_folder, cache_key


def test_cache_key_hashes_the_parts_joined():
    assert cache_key("abc", "torch 2.0", "builder 1") == hashlib.sha256(b"abc|torch 2.0|builder 1").hexdigest()[:16]


def test_built_once_and_never_half_built(tmp_path, monkeypatch):
    monkeypatch.setenv("CVAT_PACK_ASSETS", str(tmp_path))
    calls = []

    def build(out):
        calls.append(out)
        (out / "model.bin").write_bytes(b"weights")

    folder = built_folder("net", "0123", build)
    assert folder == tmp_path / "built" / "net-0123"
    assert (folder / "model.bin").read_bytes() == b"weights" and (folder / "done").read_text() == "ok\n"
    assert built_folder("net", "0123", build) == folder
    assert len(calls) == 1 and not calls[0].exists()  # built in a scratch folder, then moved in place

    def broken(out):
        (out / "part.bin").write_bytes(b"half")
        raise RuntimeError("converter failed")

    with pytest.raises(RuntimeError, match="converter failed"):
        built_folder("net", "4567", broken)
    assert sorted(p.name for p in (tmp_path / "built").iterdir()) == [".lock", "net-0123"]
