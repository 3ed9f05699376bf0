"""One runner image per runtime family: what each staged folder installs, and the
message a model gets in an image that lacks its runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from common.runtimes.families import family_of, image_name
from tools.stage import REPO, RUNNER_VARIANTS, requirement_pins, stage, stage_all_families

# family -> the runtime packages its images may carry; variant -> the one it must carry
FAMILY_RUNTIMES = {
    "onnx": {"onnxruntime", "onnxruntime-gpu", "openvino"},
    "pytorch": {"torch"},
    "tensorflow": {"tensorflow-cpu", "tensorflow", "ai-edge-litert"},
}
RUNTIME_PACKAGES = set().union(*FAMILY_RUNTIMES.values())
CORE_RUNTIME = {"onnx": "onnxruntime", "onnx-gpu": "onnxruntime-gpu", "pytorch": "torch", "pytorch-gpu": "torch",
                "tensorflow": "tensorflow-cpu", "tensorflow-gpu": "tensorflow"}


def _package(pin: str) -> str:
    return pin.split("==")[0].split("[")[0].strip().lower()


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {folder.name.removeprefix("gdrive-runner-"): folder for folder in stage_all_families(root)}


def test_every_variant_is_staged_with_only_its_runtime(staged):
    assert sorted(staged) == sorted(RUNNER_VARIANTS) == sorted(CORE_RUNTIME)
    base = requirement_pins(REPO / "requirements" / "runner-base.txt")
    for variant, folder in staged.items():
        assert sorted(p.name for p in folder.iterdir()) == ["common", "function.yaml", "main.py", "requirements.txt"]
        lines = (folder / "requirements.txt").read_text().splitlines()
        assert not any(line.strip().startswith(("-r ", "--requirement")) for line in lines)  # inlined
        pins = {l.strip() for l in lines if l.strip() and not l.strip().startswith(("#", "-"))}
        extra = {_package(p) for p in pins - base}  # what this image adds to the shared base
        assert CORE_RUNTIME[variant] in extra, variant
        assert extra <= FAMILY_RUNTIMES[variant.removesuffix("-gpu")], (variant, extra)
    pytorch = (staged["pytorch"] / "requirements.txt").read_text()
    assert "onnxruntime" not in pytorch and "openvino" not in pytorch and "tensorflow" not in pytorch
    assert "torch==2.13.0" in pytorch and "--extra-index-url https://download.pytorch.org/whl/cpu" in pytorch
    assert "torch" not in (staged["onnx"] / "requirements.txt").read_text()
    assert "openvino==2026.4.1" in (staged["onnx"] / "requirements.txt").read_text().splitlines()
    assert [v for v, f in staged.items() if "tensorflow" in (f / "requirements.txt").read_text()] == \
        ["tensorflow", "tensorflow-gpu"]


def test_function_specs_name_their_image_and_gpu_needs(staged):
    names = set()
    for variant, folder in staged.items():
        config = yaml.safe_load((folder / "function.yaml").read_text())
        spec = config["spec"]
        family, gpu = variant.removesuffix("-gpu"), variant.endswith("-gpu")
        assert spec["build"]["image"] == image_name(family, gpu) == f"cvat.gdrive-runner.{variant}"
        assert config["metadata"]["annotations"]["framework"] == family
        http = spec["triggers"]["myHttpTrigger"]
        env = {e["name"]: e["value"] for e in spec["env"]}
        if gpu:
            assert spec["resources"] == {"limits": {"nvidia.com/gpu": 1}}
            assert http["numWorkers"] == 1 and env["RUNNER_WORKERS"] == "1"
            assert env["RUNNER_GPU_FALLBACK"] == "fail"
        else:
            assert "resources" not in spec and "RUNNER_GPU_FALLBACK" not in env
            assert http["numWorkers"] == int(env["RUNNER_WORKERS"]) == 2
        names.add(config["metadata"]["name"])
    assert len(names) == len(staged)
    # the onnx CPU spec is still functions/gdrive-runner/function.yaml
    assert yaml.safe_load((REPO / "functions/gdrive-runner/function.yaml").read_text())["spec"]["build"]["image"] \
        == "cvat.gdrive-runner.onnx"


def test_runtime_families():
    assert {r: family_of(r) for r in ("onnxruntime", "openvino", "torch", "tensorflow", "caffe")} == {
        "onnxruntime": "onnx", "openvino": "onnx", "torch": "pytorch", "tensorflow": "tensorflow", "caffe": None}
    with pytest.raises(ValueError, match="unknown runner family 'caffe'"):
        image_name("caffe")


def test_a_pytorch_model_in_an_image_without_torch_names_its_image(tmp_path):
    out = stage("gdrive-runner", tmp_path / "onnx", family="onnx")
    model = tmp_path / "model.pt"
    model.write_bytes(b"never read")
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class NoTorch(importlib.abc.MetaPathFinder):
            # what an image without torch looks like to the runner
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ModuleNotFoundError("No module named 'torch'", name="torch")
                return None
        sys.meta_path.insert(0, NoTorch())
        sys.path.insert(0, {str(out)!r})
        from common.errors import RuntimeLoadError
        from common.runtimes import load_runtime
        try:
            load_runtime("torch", {str(model)!r})
        except RuntimeLoadError as exc:
            print(exc)
        assert "torch" not in sys.modules
    """)
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "runtime 'torch' is not installed in this runner image (No module named 'torch'): this model needs the "
        "pytorch runner image (cvat.gdrive-runner.pytorch, or cvat.gdrive-runner.pytorch-gpu on a GPU node)")
