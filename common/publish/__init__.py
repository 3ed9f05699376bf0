"""Publishing registry models to CVAT as Nuclio functions (registry-sync).

The flow, one module per step::

    registry listing ─► render.py ─► gate.py ─► reconcile.py ─► dashboard.py
    (ModelRecord)       (FunctionConfig)  (CVAT would    (plan: create /    (Nuclio dashboard
                                           accept it?)    update / delete)   REST API, §2)
                 kinds.py: registry ``type`` → CVAT kind + label spec
                 naming.py: model folder → function name
                 sync.py: one run end to end, and its report
                 export.py: rendered configs as function.yaml files, dry-run diff

What marks a function as ours, and what says it changed, is fixed here so that
every module (and every older release of the pack) agrees on it.
"""

from __future__ import annotations

# metadata.labels: Nuclio labels are immutable after the first deploy (nuclio.md §1.1),
# so they carry only what never changes for a function: that we manage it, and which
# registry folder it serves.
MANAGED_LABEL = "cvat-gdrive-pack/managed"         # value "true"
MODEL_LABEL = "cvat-gdrive-pack/model"             # the model folder, DNS-safe form
PROJECT_LABEL = "nuclio.io/project-name"           # set by the dashboard from the project header
CVAT_PROJECT = "cvat"

# metadata.annotations (mutable): the hash of the rendered config, so an unchanged
# model costs no write, and the registry version it serves.
CONFIG_HASH_ANNOTATION = "cvat-gdrive-pack/config-hash"
MODEL_VERSION_ANNOTATION = "cvat-gdrive-pack/model-version"
PACK_VERSION_ANNOTATION = "cvat-gdrive-pack/pack-version"
# The exact registry folder name (MODEL_LABEL holds a label-safe form of it, which
# may be shortened and hashed for unusual names).
MODEL_FOLDER_ANNOTATION = "cvat-gdrive-pack/model-folder"
