"""The choreographies on the embedded defaults: kombu's filesystem broker and SQLite, no server.

The demo process publishes, a worker subprocess consumes: the topic exchange's bindings must
route across processes on the filesystem transport too (they live in its control folder).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workflows.choreography.demo import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


def test_both_choreographies_run_on_the_filesystem_broker_and_sqlite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "TEST_"))}
    env["SAGA_DATA_DIR"] = str(tmp_path / "data")

    done = subprocess.run([sys.executable, "-m", "workflows.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)

    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "filesystem://" in out
    summary = out[out.index("Summary"):]
    for _, title, expected, _, _ in SCENARIOS:
        row = next(line for line in summary.splitlines() if title[:60] in line)
        assert f"✔ {expected}" in row, row
    assert "OrderCreated  by client  -> inventory: handled, payment: handled" in out  # fan-out: two copies
    assert "'payment': ['VOIDED']" in out  # the overtaken charge never happened
    assert list((tmp_path / "data" / "broker" / "control").glob("events.exchange"))  # bindings on disk
