"""The Nuclio build carries common/ with it, and the function spec is sane."""

import subprocess
import sys
import textwrap

import yaml

from tools.stage import REPO, RUNNER_VARIANTS, flatten_requirements, requirement_pins, stage

RUNNER = REPO / "functions" / "gdrive-runner"


def test_staged_runner_imports_only_from_the_build_folder(tmp_path):
    out = stage("gdrive-runner", tmp_path / "gdrive-runner")
    assert sorted(p.name for p in out.iterdir()) == ["common", "function.yaml", "main.py", "requirements.txt"]
    assert (out / "requirements.txt").read_text().splitlines() == \
        flatten_requirements(REPO / "requirements" / "runner-onnx.txt")
    code = textwrap.dedent(f"""
        import os, sys
        stage = {str(out)!r}
        # Nothing on the path but the build folder could provide the function's code.
        assert not any(os.path.exists(os.path.join(p, "common")) or os.path.exists(os.path.join(p, "main.py"))
                       for p in sys.path), sys.path
        sys.path.insert(0, stage)   # what Nuclio does: PYTHONPATH=/opt/nuclio
        import main, common, common.decoders
        import common.runtimes.onnxruntime_engine, common.runtimes.openvino_engine
        names = common.decoders.names()
        ours = [m.__file__ for n, m in sys.modules.items()
                if (n == "main" or n == "common" or n.startswith("common.")) and getattr(m, "__file__", None)]
        outside = [f for f in ours if not f.startswith(stage)]
        assert not outside, outside
        assert callable(main.handler) and callable(main.init_context)
        print(len(ours), ",".join(names))
    """)
    # -I: isolated mode, no PYTHONPATH, no current directory, no user site.
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    count, names = done.stdout.split()
    assert int(count) > 10
    assert set(names.split(",")) >= {"yolo", "ssd", "gfl", "db_text", "ssd_anchors"}


def test_runner_function_yaml_follows_nuclio_rules():
    config = yaml.safe_load((RUNNER / "function.yaml").read_text())
    assert "metadata" in config and "meta" not in config
    spec = config["spec"]
    assert spec["description"].strip()
    assert spec["handler"] == "main:handler" and spec["runtime"] == "python:3.11"
    assert isinstance(spec["env"], list) and all(set(e) == {"name", "value"} for e in spec["env"])
    http = [t for t in spec["triggers"].values() if t["kind"] == "http"]
    assert len(http) == 1 and http[0]["numWorkers"] >= 1 and "maxWorkers" not in http[0]
    assert http[0]["attributes"]["maxRequestBodySize"] >= 64 * 1024 * 1024
    for volume in spec["volumes"]:
        assert volume["volume"]["name"] == volume["volumeMount"]["name"]
    env = {e["name"]: e["value"] for e in spec["env"]}
    mounts = [v["volumeMount"]["mountPath"] for v in spec["volumes"]]
    assert env["MODEL_CACHE_DIR"] in mounts


def test_pyproject_pins_match_the_requirement_files():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def pins(name):  # this file's own pins, not its -r includes nor pip options
        lines = (REPO / "requirements" / name).read_text().splitlines()
        return {l.strip() for l in lines if l.strip() and not l.startswith(("#", "-"))}

    assert set(project["dependencies"]) == pins("runner-base.txt")
    assert set(project["optional-dependencies"]["dev"]) == pins("dev.txt")
    for variant, (_, requirements) in RUNNER_VARIANTS.items():
        assert set(project["optional-dependencies"][variant]) == pins(requirements), variant
        assert requirement_pins(REPO / "requirements" / requirements) >= pins("runner-base.txt"), variant
    every = {p for f in (REPO / "requirements").glob("*.txt") for p in pins(f.name)}
    assert all("==" in p for p in every), every
