"""`make demo` against the suite's RabbitMQ and PostgreSQL (the embedded run, with no server:
tests/inprocess/test_demo.py)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_same_demo_runs_on_rabbitmq_and_postgresql() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env["SAGA_BROKER_URL"] = os.environ["TEST_AMQP_URL"]
    env["SAGA_DATABASE_URL"] = os.environ["TEST_PG_URL"]
    env["SAGA_FIELD_KEYS"] = os.environ["SAGA_FIELD_KEYS"]  # the example seals its orders' card numbers
    env["SAGA_FIELD_HASH_KEY"] = os.environ["SAGA_FIELD_HASH_KEY"]

    done = subprocess.run([sys.executable, "-m", "tasks.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)

    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "amqp://" in out and "postgresql" in out
    assert out.count("✔") >= 4 and "✘" not in out
