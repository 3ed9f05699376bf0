"""Open the runtime of one model at runner start: files checked, device planned, engine loaded.

:func:`open_model_runtime` is what the runner calls with the model's local
files: :func:`common.runtimes.filecheck.validate_files` first (a bad file gets
its own message before any engine touches it), then
:func:`common.runtimes.devices.plan_device` (GPU when the runtime sees one,
``RUNNER_GPU_FALLBACK`` when a needed GPU is missing), then the engine with
model.json's declared input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from common.runtimes import Runtime, declared_inputs, load_runtime
from common.runtimes.devices import plan_device
from common.runtimes.filecheck import validate_files


def requested_device(manifest) -> str | None:
    """model.json's runtime.device as written; None when absent (the runner picks)."""
    runtime = manifest.raw.get("runtime") if manifest.raw else None
    device = runtime.get("device") if isinstance(runtime, Mapping) else None
    return device if isinstance(device, str) and device.strip() else None


def gpu_required(manifest) -> bool:
    requirements = manifest.raw.get("requirements") if manifest.raw else None
    return bool(isinstance(requirements, Mapping) and requirements.get("gpu_required") is True)


def open_model_runtime(manifest, local_paths: Mapping[str, Path], *, env: Mapping[str, str] | None = None,
                       threads: int | None = None) -> Runtime:
    """The loaded engine for ``manifest`` (a ModelManifest); ``local_paths`` maps
    model.json's file names (file_name, extra_files) to local paths."""
    validate_files(manifest, local_paths)
    plan = plan_device(manifest.runtime.name, model=manifest.name, requested=requested_device(manifest),
                       gpu_required=gpu_required(manifest), env=env)
    extra = {k: Path(v) for k, v in local_paths.items() if k != manifest.file_name}
    return load_runtime(manifest.runtime.name, Path(local_paths[manifest.file_name]), extra_paths=extra,
                        precision=manifest.runtime.precision, device=plan.device, threads=threads,
                        declared_inputs=declared_inputs(manifest), manifest=manifest)
