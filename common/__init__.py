"""Shared code of the CVAT Google-Drive model pack.

The flow, one module each: registry (where models live) -> cache (local,
verified copies) -> runtimes (run a network) -> preprocess / decoders (pixels
in, detections out) -> cvat (CVAT's exact shapes). `pipeline` ties them
together for the runner.
"""

__version__ = "0.1.0"
