"""Stand-ins for ``nuctl``, ``docker`` and ``kubectl`` on PATH, for the deploy scripts' tests.

Typical use::

    from tests.nuctl_standin import install, calls
    bin_dir = install(tmp_path / "bin")          # writes nuctl, docker, kubectl wrappers
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "NUCTL_STANDIN_LOG": str(tmp_path / "calls.jsonl"),
           "NUCTL_STANDIN_DASHBOARD": dashboard.url}
    subprocess.run(["deploy/deploy.sh"], env=env, check=True)
    assert [c.argv[:1] for c in calls(tmp_path / "calls.jsonl")] == ...

The stand-in itself is ``__main__.py`` (what each call checks and records);
the rules a ``--file`` must follow are in :mod:`tests.nuctl_standin.rules`.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOOLS = ("nuctl", "docker", "kubectl")


@dataclass(frozen=True)
class Call:
    """One recorded call."""

    tool: str
    argv: tuple[str, ...]
    ok: bool
    error: str | None

    def flag(self, name: str) -> str | None:
        """The value of ``name`` (``--file`` or ``--file=x``), None when absent."""
        for i, token in enumerate(self.argv):
            if token == name and i + 1 < len(self.argv):
                return self.argv[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
        return None

    def flags(self, name: str) -> list[str]:
        """Every value of a repeatable flag."""
        return [self.argv[i + 1] for i, t in enumerate(self.argv[:-1]) if t == name]


def install(bin_dir: Path, tools: tuple[str, ...] = TOOLS) -> Path:
    """Write one executable wrapper per tool into ``bin_dir`` (made if missing); returns it."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in tools:
        wrapper = bin_dir / tool
        wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -I "
                           f"{shlex.quote(str(HERE / '__main__.py'))} {tool} \"$@\"\n")
        wrapper.chmod(0o755)
    return bin_dir


def calls(log: Path) -> list[Call]:
    """The recorded calls, in order (none when the log does not exist)."""
    if not log.exists():
        return []
    return [Call(d["tool"], tuple(d["argv"]), d["ok"], d["error"])
            for d in map(json.loads, log.read_text().splitlines())]
