"""The registry-sync benchmark (tools/bench_sync.py, ``make bench``) at 5 models: its
request counts are the real ones. No timing is checked here (timings belong in
``make bench``)."""

from __future__ import annotations

import logging

from tools import bench_sync

N = 5


def test_a_small_run_counts_the_requests_of_each_sync(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bench"):
        figures = bench_sync.run(sizes=(N,), repeat=1, tmp=tmp_path)[N]
    first, unchanged, changed = figures["first"], figures["unchanged"], figures["changed"]

    assert first["writes"] == {"POST": N}
    assert first["report"] == {"created": N, "updated": 0, "unchanged": 0, "deleted": 0, "errors": 0}
    assert first["media"] == N  # every model.json body read once
    # Listing, project GET + POST, then per model: a fresh read, the POST, one status read.
    assert first["dashboard"] == 1 + 2 + 3 * N

    assert unchanged["writes"] == {}
    assert unchanged["report"] == {"created": 0, "updated": 0, "unchanged": N, "deleted": 0, "errors": 0}
    assert unchanged["dashboard"] == 1  # the listing alone
    assert unchanged["media"] == 0  # the work dir's listing memo holds every body
    assert unchanged["drive"] < first["drive"]

    assert changed["writes"] == {"PUT": 1}
    assert changed["updated"] == [f"gdrive-m{N - 1:04d}"]
    assert changed["report"] == {"created": 0, "updated": 1, "unchanged": N - 1, "deleted": 0, "errors": 0}
    assert changed["media"] == 1
    assert changed["drive"] == unchanged["drive"] + 1
    assert all(f["grants"] == 1 for f in figures.values())  # one token per run: each opens the registry afresh

    rows = [m for m in caplog.messages if m.split()[:1] == [str(N)]]  # the table's rows for N models
    assert [r.split()[1] for r in rows] == ["first", "unchanged", "one"]
    assert f" {N} POST " in rows[0] and " POST" not in rows[1] + rows[2] and " 1 PUT " in rows[2]
