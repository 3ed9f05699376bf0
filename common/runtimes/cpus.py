"""How many CPU threads an engine should use.

``os.cpu_count()`` reports the host's CPUs, not what a container may use: a
Nuclio function limited to 2 CPUs on a 64-core node that starts 64 threads
per worker thrashes. :func:`usable_cpus` takes the CPU affinity mask and caps
it by the cgroup CPU quota (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us`` /
``cpu.cfs_period_us``). :func:`threads_per_worker` splits that between the
function's workers, with ``RUNNER_THREADS`` as an explicit override.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _quota_cpus(root: Path) -> int | None:
    """CPUs allowed by the cgroup quota under ``root``, or None when unlimited/unknown."""
    # cgroup v2: "<quota> <period>" or "max <period>"
    text = _read(root / "cpu.max")
    if text is not None:
        parts = text.split()
        if len(parts) >= 1 and parts[0] != "max":
            try:
                quota = int(parts[0])
                period = int(parts[1]) if len(parts) > 1 else 100_000
            except ValueError:
                log.warning("ignoring unreadable %s: %r", root / "cpu.max", text)
                return None
            if quota > 0 and period > 0:
                return max(1, math.ceil(quota / period))
        return None
    # cgroup v1: the files may sit directly under the root or in a cpu controller folder
    for folder in (root, root / "cpu", root / "cpu,cpuacct", root / "cpuacct,cpu"):
        quota_text = _read(folder / "cpu.cfs_quota_us")
        period_text = _read(folder / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        try:
            quota, period = int(quota_text), int(period_text)
        except ValueError:
            log.warning("ignoring unreadable cgroup v1 quota in %s", folder)
            return None
        if quota > 0 and period > 0:  # quota -1 means unlimited
            return max(1, math.ceil(quota / period))
        return None
    return None


def usable_cpus(cgroup_root: Path | str = CGROUP_ROOT) -> int:
    """The CPUs this process may really use: affinity, capped by the cgroup quota; at least 1."""
    cpus = _affinity_cpus()
    quota = _quota_cpus(Path(cgroup_root))
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, cpus)


def _positive_int_env(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def threads_per_worker(workers: int | None = None, *, cgroup_root: Path | str = CGROUP_ROOT) -> int:
    """Threads one engine instance should use.

    ``RUNNER_THREADS`` wins when set. Otherwise the usable CPUs are split
    between ``workers`` (default: ``RUNNER_WORKERS``, else 1); at least 1.
    A set but invalid variable is a ValueError naming it.
    """
    threads = _positive_int_env("RUNNER_THREADS")
    if threads is not None:
        return threads
    if workers is None:
        workers = _positive_int_env("RUNNER_WORKERS") or 1
    if workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    return max(1, usable_cpus(cgroup_root) // workers)
