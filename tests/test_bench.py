"""The per-model benchmark (tools/bench.py, ``make bench``): every kind measured, failures shown.

No timing is checked here (timings belong in ``make bench``): a short run over one
model of each CVAT kind must finish and list each model in its table, and a child
that dies must show why, let the run go on and make it exit non-zero.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# One demo model per CVAT kind (a classifier is a detector-kind model too), by kind.
MODELS = {"detector": "blazeface-face-detector-tflite", "classification": "page-orientation-classifier",
          "tracker": "face-aware-box-tracker", "interactor": "selfie-person-interactor", "reid": "mobilenet-reid"}


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.bench", *args], cwd=REPO, capture_output=True, text=True)


def _rows(text: str, header: str, end: str) -> list[list[str]]:
    """The rows (split on spaces) of the table under the line starting with ``header``, up to a
    blank line or one starting with ``end``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 1:]:
        if not line or line.startswith(end):
            break
        if not line.startswith("---"):
            rows.append(line.split())
    return rows


def test_a_short_run_measures_one_model_of_each_kind(tmp_path):
    done = bench("--models-only", "--repeat", "1", "--out", str(tmp_path), "--models", ",".join(MODELS.values()))
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "failed" not in out.lower()
    detectors = _rows(out, "model                                 handler", "detector-kind models")
    assert [r[0] for r in detectors] == ["blazeface-face-detector-tflite", "page-orientation-classifier"]
    assert all(r[-1] in ("ok", "OVER") and len(r) == 10 for r in detectors)
    others = _rows(out, "model                                kind", "cold start")
    assert [(r[0], r[1]) for r in others] == [("face-aware-box-tracker", "tracker"), ("mobilenet-reid", "reid"),
                                             ("selfie-person-interactor", "interactor")]
    assert " ".join(others[0][5:]).startswith("one box (the astronaut's face) continued")
    assert " ".join(others[2][5:]) == "one positive click on the astronaut's face"
    cold = _rows(out, "model                                    init", "ratio =")
    assert [r[0] for r in cold] == sorted(MODELS.values())
    # The per-model registry lies under --out (make bench: .bench/models), only the models asked for.
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == sorted(MODELS.values())


def test_a_failing_model_shows_its_error_and_the_run_exits_non_zero(tmp_path):
    (tmp_path / "cache").write_text("a file where the model cache folder should be")
    done = bench("--models-only", "--repeat", "1", "--out", str(tmp_path), "--models", MODELS["detector"])
    assert done.returncode == 1
    assert "model blazeface-face-detector-tflite failed (exit status 1); its stderr ends:" in done.stdout
    assert str(tmp_path / "cache") in done.stdout.split("its stderr ends:")[1]   # the child's own error
    assert done.stdout.rstrip().endswith(
        "bench FAILED: per-model latency: blazeface-face-detector-tflite (the errors are above)")


def test_unknown_models_are_refused():
    done = bench("--models-only", "--models", "no-such-model")
    assert done.returncode == 2 and "--models: no demo model no-such-model" in done.stderr


@pytest.mark.parametrize("args, message", [
    (("--models", ",,"), "argument --models: names no model"),
    (("--repeat", "0"), "argument --repeat: must be 1 or more, got 0"),
    (("--drive-repeat", "-2"), "argument --drive-repeat: must be 1 or more, got -2"),
    (("--out", ""), "argument --out: needs a folder"),
])
def test_arguments_that_measure_nothing_are_refused(args, message):
    done = bench("--models-only", *args)
    assert done.returncode == 2 and message in done.stderr, done.stderr
