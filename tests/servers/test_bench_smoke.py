"""The benchmark at a smoke size: it runs end to end and its JSON says what bench/README.md promises.

Not a timing test: the numbers are only checked to be sane (positive, counts that follow from
the definitions). Runs on its own database and Redis db (TEST_BENCH_PG_URL, TEST_BENCH_REDIS_URL),
because the bench wipes both.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.databases import empty_pg_database

ROOT = Path(__file__).resolve().parents[2]
BENCH_PG_URL = os.environ.get("TEST_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test_bench")
BENCH_REDIS_URL = os.environ.get("TEST_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.mark.skipif("TEST_BENCH_REDIS_URL" not in os.environ and BENCH_REDIS_URL == os.environ.get("TEST_REDIS_URL"),
                    reason="the session's test workers consume the 'saga' queue of this Redis db and do not know "
                           "the bench's sagas; set TEST_BENCH_REDIS_URL to a db of the bench's own")
def test_bench_at_smoke_size_writes_every_number(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}  # not the test session's settings
    empty_pg_database(BENCH_PG_URL)  # the bench's own: whatever an earlier run (of other code) left in it


    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--n", "10", "--rounds", "1", "--warmup", "2",
         "--window", "4", "--unloaded-n", "3", "--database-url", BENCH_PG_URL, "--broker-url", BENCH_REDIS_URL,
         "--output", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)

    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["saga_vs_baseline_with_state"] > 0 and doc["saga_vs_baseline"] > 0
    configs = doc["configs"]
    expected = {"baseline", "baseline_state", "saga", "saga_failure", "queues_state", "saga_queues",
                "group_state", "saga_group", "queues_state_pools", "saga_queues_pools"}
    if importlib.util.find_spec("dbos") is not None:  # the optional peer (`make bench` installs it)
        expected |= {"dbos", "dbos_queues"}
        assert doc["saga_vs_dbos"] > 0 and doc["saga_unloaded_p50_vs_dbos"] > 0
        assert doc["saga_queues_vs_dbos_queues"] > 0 and doc["saga_pools_vs_dbos_queues"] > 0
    assert set(configs) == expected
    assert doc["saga_group_vs_group_with_state"] > 0 and doc["saga_queues_vs_chain_queues_with_state"] > 0
    assert doc["saga_pools_vs_chain_pools_with_state"] > 0
    for name, c in configs.items():
        assert c["errors"] == 0, name
        assert c["throughput"]["median"] > 0 and len(c["throughput"]["rounds"]) == 1
        assert 0 < c["latency_ms"]["p50"] <= c["latency_ms"]["p99"]
        assert c["unloaded_latency_ms"]["n"] == 3 and c["unloaded_latency_ms"]["p50"] > 0
        assert c["peak_rss_mb"] > 0 or name.startswith("dbos")
    # messages follow from the definitions: 4 chain links; the sagas on one queue, or on four queues
    # one worker consumes, run every step after the first inline (start_saga publishes the first: 1
    # message, compensations included); on four queues with a worker each, 4 steps
    assert configs["baseline"]["messages_per_saga"] == 4
    assert configs["baseline_state"]["messages_per_saga"] == 4
    assert configs["queues_state"]["messages_per_saga"] == 4
    assert configs["saga"]["messages_per_saga"] == 1
    assert configs["saga_failure"]["messages_per_saga"] == 1
    assert configs["saga_queues"]["messages_per_saga"] == 1
    assert configs["queues_state_pools"]["messages_per_saga"] == 4
    assert configs["saga_queues_pools"]["messages_per_saga"] == 4
    assert configs["group_state"]["messages_per_saga"] == 4 and configs["saga_group"]["messages_per_saga"] == 4
    assert configs["baseline"]["statements_per_saga"] == 0
    assert configs["baseline_state"]["statements_per_saga"] == 5  # INSERT + 4 UPDATEs
    assert configs["baseline_state"]["db_round_trips_per_saga"] == 5  # each one statement in autocommit
    # the saga: its creation, then per step a write, and a read per message (an inline step decides
    # on the state just committed), each one statement in autocommit (creation and transition are
    # one statement each on PostgreSQL): 1 + 1 + 4 inline; 1 + 4 x 2 published to a pool each
    assert configs["saga"]["statements_per_saga"] == 6
    assert configs["saga"]["db_round_trips_per_saga"] == 6
    assert configs["saga_failure"]["statements_per_saga"] == 7  # 1 + 1 + 3 actions + 2 compensations
    assert configs["saga_queues"]["statements_per_saga"] == 6
    assert configs["queues_state_pools"]["statements_per_saga"] == 5
    assert configs["saga_queues_pools"]["statements_per_saga"] == 9
    # the group: the same one creation, read and write per branch; branches reporting at once on one
    # run retry their write on the version they lost (a read and a write more each time)
    assert configs["saga_group"]["statements_per_saga"] >= 9
    assert "sagas/s median (min-max)" in proc.stdout  # the table was printed
