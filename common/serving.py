"""Which pipeline serves a model: dispatch by the CVAT function kind of its model.json ``type``.

CVAT calls a function of each kind with its own payload and reads its own
answer (cvat-contract.md §2.3, §2.4). The kind comes from
:func:`common.publish.kinds.cvat_kind` (detector, segmentation,
classification and keypoint models are all CVAT detectors), and each kind
has one pipeline class, imported only when a model of that kind is loaded
(an interactor image need not import the tracker's code, and a missing
module names itself).

Every pipeline class has the same small interface (:class:`Pipeline`):
``__init__(manifest, runtime)``, ``warm_up()`` once at start, and
``handle(body)`` per request, where ``body`` is ``event.body`` as Nuclio
gives it (a dict for an ``application/json`` request, bytes or str
otherwise). ``handle`` returns the answer as plain Python values (what
``json.dumps`` takes) and raises :class:`common.errors.BadRequest` (or
:class:`~common.errors.InvalidImage`) for bad input.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import Any, Mapping, Protocol

from common.manifest import ModelManifest
from common.publish.kinds import cvat_kind
from common.runtimes import Runtime

# CVAT kind -> "module:Class" of its pipeline.
KIND_PIPELINES: Mapping[str, str] = MappingProxyType({
    "detector": "common.pipeline:DetectorPipeline",
    "interactor": "common.interactor:InteractorPipeline",
    "tracker": "common.tracker:TrackerPipeline",
    "reid": "common.reid:ReidPipeline",
})


class Pipeline(Protocol):
    """What the runner's handler needs of a loaded model."""

    def warm_up(self) -> None:
        """One run at start, so the first request is not the slow one and a bad model.json fails early."""

    def handle(self, body: Any) -> Any:
        """The JSON-serialisable answer to one CVAT request body."""


def pipeline_class(manifest_type: str) -> type:
    """The pipeline class serving model.json ``type`` (NotPublishable for types without a CVAT kind)."""
    target = KIND_PIPELINES[cvat_kind(manifest_type)]
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def build_pipeline(manifest: ModelManifest, runtime: Runtime) -> Pipeline:
    """The pipeline for ``manifest``'s kind around its loaded ``runtime`` (not yet warmed up)."""
    return pipeline_class(manifest.type)(manifest, runtime)
