"""The documentation's examples stay valid: every JSON example in docs/ parses,
and every complete model.json or `output` example passes the real validator."""

import json
import re
from pathlib import Path

import pytest

from common.manifest import parse_manifest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BASE = {"name": "doc-example", "version": "1.0.0", "framework": "onnx", "type": "detector",
        "file_name": "model.onnx", "labels": ["a", "b"], "input": {"shape": [1, 3, 64, 64]}}


def examples():
    for page in sorted(DOCS.glob("*.md")):
        for i, block in enumerate(re.findall(r"```json\n(.*?)```", page.read_text(), re.S)):
            yield pytest.param(block, id=f"{page.name}#{i}")


@pytest.mark.parametrize("block", list(examples()))
def test_json_examples_in_the_docs_are_valid(block):
    text = block.strip()
    # A fragment such as `"output": {...}` is shown as it appears inside model.json.
    data = json.loads("{" + text + "}" if text.startswith('"') else text)
    if "file_name" in data:  # a whole model.json
        parse_manifest(data, source="docs example")
    elif "output" in data and "decoder" in data["output"]:  # an `output` example
        parse_manifest({**BASE, **data}, source="docs example")
