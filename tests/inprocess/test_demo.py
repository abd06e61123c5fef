"""`make demo` on a machine with no server: SQLite and the filesystem broker, its own worker."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tasks.choreography.demo import SCENARIOS as CHOREOGRAPHY_SCENARIOS
from tasks.demo import HYBRID

ROOT = Path(__file__).resolve().parents[2]


def summary_of(out: str) -> str:
    return out[out.index("Summary"):]


def test_demo_runs_without_any_server_and_shows_every_outcome(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGA_", "TEST_"))}
    env["SAGA_DATA_DIR"] = str(tmp_path / "data")

    done = subprocess.run([sys.executable, "-m", "tasks.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=240)

    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert f"sqlite:///{tmp_path / 'data'}" in out and "filesystem://" in out
    # one ✔ per summary row: 8 orchestrated scenarios, the 2 child runs, 3 approvals, 6 choreographies,
    # 2 hybrid sagas and their 2 checkout choreographies
    assert out.count("✔") == 8 + 2 + 3 + len(CHOREOGRAPHY_SCENARIOS) + 2 * len(HYBRID) == 23 and "✘" not in out
    assert "StepAttemptFailed process_payment (attempt 1)" in out
    # the parallel order: out of stock while the card was charged, the charge refunded
    assert "✔ COMPENSATED" in next(line for line in out.splitlines() if "out of stock while the card" in line
                                   and "✔" in line)  # its row in the summary
    parallel = out[out.index("6. parallel: out of stock"):]
    assert "StepFailed reserve_inventory" in parallel and "StepCompensated process_payment" in parallel
    assert "StepSucceeded process_payment (attempt 3)" in out
    assert "StepCompensated process_payment" in out and "StepCompensated reserve_inventory" in out
    # the checkout with a shipping saga of its own: the declined card compensates the child
    child = out[out.index("8. child saga: card declined"):]
    assert "ChildStarted shipping" in child and "ChildCompensationOrdered shipping" in child
    assert "StepCompensated create_shipment" in child and "StepCompensated shipping" in child
    summary_rows = [line for line in out[out.index("Summary"):].splitlines() if "child saga" in line]
    assert len(summary_rows) == 4 and all("✔" in row for row in summary_rows), summary_rows
    assert (tmp_path / "data" / "sagas.db").exists()
    # the order above the limit: approved once, rejected once, timed out once (the stock released)
    # numbered on from the 8 orchestrated scenarios (7 and 8 are the child sagas)
    approved = out[out.index("9. approval"):out.index("10. approval")]
    assert "WaitStarted manager_approval" in approved and "WaitApproved manager_approval" in approved
    assert "StepSucceeded send_confirmation" in approved
    rejected = out[out.index("10. approval"):out.index("11. approval")]
    assert "WaitRejected manager_approval" in rejected and "StepCompensated reserve_inventory" in rejected
    assert "StepSucceeded process_payment" not in rejected
    timed_out = out[out.index("11. approval"):]
    assert "WaitTimedOut manager_approval" in timed_out and "StepCompensated reserve_inventory" in timed_out
    for title in ("approves: completes", "rejects: the stock is released", "times out, the stock is released"):
        row = next(line for line in summary_of(out).splitlines() if title in line)
        assert "✔" in row, row
    # The choreographies too: the demo process publishes, the worker subprocess consumes, so the
    # topic exchange's bindings must route across processes (they live in the control folder).
    summary = out[out.index("Summary"):]
    for _, title, expected, _, _ in CHOREOGRAPHY_SCENARIOS:
        row = next(line for line in summary.splitlines() if title[:60] in line)
        assert f"✔ {expected}" in row, row
    assert "OrderCreated  by client  -> inventory: handled, payment: handled" in out  # fan-out: two copies
    assert "'payment': ['VOIDED']" in out  # the overtaken charge never happened
    assert list((tmp_path / "data" / "broker" / "control").glob("events.exchange"))  # bindings on disk
    # the hybrid: the choreography's OrderPlaced starts the orchestrated saga (its cause in its history),
    # the payment service's PaymentSettled answers the saga's wait (approved once, declined once)
    paid = out[out.index("H1. hybrid"):out.index("H2. hybrid")]
    assert "SagaStarted  started by OrderPlaced of order_checkout" in paid
    assert "WaitApproved payment_settled" in paid and "SagaCompleted" in paid
    assert "PaymentSettled  by checkout_payment  -> saga_waits: handled" in paid
    assert "OrchestratedSagaStarted: fulfilment started order_paid_fulfillment" in paid
    declined = out[out.index("H2. hybrid"):out.index("Summary")]
    assert "WaitRejected payment_settled" in declined and "StepCompensated reserve_inventory" in declined
    for title, expected, _ in HYBRID:
        row = next(line for line in summary.splitlines() if title[:60] in line)
        assert f"✔ {expected}" in row, row
