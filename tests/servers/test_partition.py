"""Two worker hosts in network namespaces of their own: one cut off, the other killed, nothing lost.

It runs `bench/partition.py` (the same script as by hand, `--n 120 --cut 30`) smaller, in a
subprocess, against the test PostgreSQL and Redis: each "host" is a network namespace joined to
this machine by a veth pair, reaching PostgreSQL and Redis only through its own link, and runs a
pool per queue (`saga` and each service's, one process each, as the seeds deploy them). Host A's link
is cut while sagas are started, host B's worker is killed outright meanwhile; the script sweeps
every 2 s and checks every invariant of the chaos run (`bench/chaos_invariants.py`): every saga
terminal, each effect once, stock consistent. It needs root (namespaces, veth pairs) and socat,
as CI has.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("PARTITION_N", "60"))


def test_a_host_cut_off_and_another_killed_lose_nothing_and_double_nothing(database, broker, tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "partition.json"
    cmd = [sys.executable, str(ROOT / "bench" / "partition.py"), "--n", str(N), "--rate", "4", "--cut", "10",
           "--bound", "150", "--pools", "per-queue", "--database", database, "--broker", broker, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=420)
    print(proc.stdout[-6000:])
    assert out.exists(), proc.stderr[-4000:]
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert report["violations"] == [], "\n".join(report["violations"][:30])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert figures["n"] == N and figures["not_terminal_at_bound"] == 0 and figures["pools"] == "per-queue"
    assert sum(figures["states"].get(s, 0) for s in ("COMPLETED", "COMPENSATED", "FAILED")) == N
    assert "cut_at_s" in figures and "b_killed_at_s" in figures  # the cut and the kill both happened
