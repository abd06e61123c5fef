"""The chaos test, small size: 200 order sagas, three pools SIGKILLed at random, faults everywhere.

It runs `bench/chaos.py` (the same script as by hand, `--n 2000`) in a subprocess against the test
PostgreSQL and Redis, without restarting Redis (others share it). Its own three pools are the
workers that matter; if the session's shared worker is up it consumes the same queues and is
never killed, which changes the figures but none of the invariants. The script checks them all
(see bench/chaos_invariants.py) and exits 1 on any violation.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N = int(os.environ.get("CHAOS_N", "200"))


def test_every_invariant_holds_under_kills_duplicates_and_faults(database, broker, tmp_path):  # type: ignore[no-untyped-def]
    out = tmp_path / "chaos.json"
    cmd = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--n", str(N), "--rate", "8", "--bound", "150",
           "--database", database, "--broker", broker, "--json", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=420)
    print(proc.stdout[-6000:])
    assert out.exists(), proc.stderr[-4000:]
    report = json.loads(out.read_text())
    figures = report["figures"]

    assert report["violations"] == [], "\n".join(report["violations"][:30])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert figures["sagas"] == N and figures["not_terminal_at_bound"] == 0
    assert sum(figures["states"].get(s, 0) for s in ("COMPLETED", "COMPENSATED", "FAILED")) == N
    # the run was a real chaos run: workers died, faults fired, and both endings happened
    assert figures["kills"] >= 3
    assert figures["redelivered_messages"] + figures["messages_handled_again"] > 0  # a kill hit work in flight
    assert figures["step_attempts_failed"] > 0
    assert figures["states"].get("COMPLETED", 0) > 0 and figures["states"].get("COMPENSATED", 0) > 0
