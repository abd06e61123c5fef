"""What `sagas status` prints, pure: a view in, the terminal's text out (no servers).

Given a run with the example shop's step names that compensated and got stuck, when an operator
reads it in a 100-column terminal, then every step name and state is there in full and no line
is wider than the terminal.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from workflows.core.views import DeadLetterView, EventView, SagaView, StepView
from workflows.interfaces.cli import main
from workflows.interfaces.cli.output import since, span
from workflows.interfaces.cli.saga_view import show_saga
from workflows.store.db import alembic_config

T0 = datetime(2026, 12, 7, 9, 30, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stuck_order() -> SagaView:
    """order_fulfillment: shipment failed for good, payment refunded, the reservation's release stuck."""
    steps = [
        StepView(0, "reserve_inventory", "COMPENSATION_FAILED", 1, 5, {"reservation_id": "res-7f3a9c2e41b0"},
                 "ReleaseError: the warehouse API answered 503 five times", None, at(0.01), at(0.05), None, None),
        StepView(1, "process_payment", "COMPENSATED", 2, 1, {"payment_id": "pay-19b2", "amount": "129.90"}, None,
                 None, at(0.06), at(1.4), at(2.9), None, redeliveries=1),
        StepView(2, "create_shipment", "FAILED", 3, 0, None, "CarrierUnavailable: no carrier for zone 7", None,
                 at(1.41), at(2.7), None, None),
        StepView(3, "send_confirmation", "PENDING", 0, 0, None, None, None, None, None, None, None),
    ]
    events = [EventView(i, at(s), typ, step, att, detail) for i, (s, typ, step, att, detail) in enumerate([
        (0, "SagaStarted", None, None, {}),
        (0.01, "StepDispatched", "reserve_inventory", 1, {"task_id": "t1"}),
        (2.7, "StepFailed", "create_shipment", 3, {"error": "CarrierUnavailable: no carrier for zone 7"}),
        (2.7, "CompensationStarted", None, None, {"reason": "create_shipment failed"}),
        (185.0, "CompensationFailed", "reserve_inventory", 5, {"error": "ReleaseError: 503"}),
        (185.0, "SagaFailed", None, None, {"reason": "the compensation of reserve_inventory failed"}),
    ])]
    dead = DeadLetterView("6b1f0c3e-5a4d-4e8b-9a53-2c1d7e8f9a01", "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f",
                          "reserve_inventory", "compensation", "inventory.release", "inventory", [], {}, {}, 5,
                          "ReleaseError: the warehouse API answered 503", "Traceback ...", "OPEN", None, at(185), None)
    return SagaView("0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f", "order_fulfillment", "orchestrated", "FAILED", 17,
                    {"order_id": "o-1234"}, "order-1234", "the compensation of reserve_inventory failed", T0, at(185),
                    None, steps, events, [dead])


def test_a_typical_run_fits_100_columns_with_full_step_names_and_states(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "100")

    show_saga(stuck_order())

    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(line for line in lines if len(line) > 100)
    steps = lines[lines.index(next(line for line in lines if line.strip() == "steps")):]
    for name, state in (("reserve_inventory", "COMPENSATION_FAILED"), ("process_payment", "COMPENSATED"),
                        ("create_shipment", "FAILED"), ("send_confirmation", "PENDING")):
        assert any(name in line and state in line for line in steps), (name, state, out)
    assert "reserve_i…" not in out and "COMPENSAT…" not in out
    # times relative to the run's start instead of three full timestamps per step
    assert "2026-12-07" not in "\n".join(steps[:8])
    assert "+1.4s" in out and "1.3s" in out and "+2.9s" in out  # process_payment: started, took, compensated
    assert "1 + 5 comp." in out and "redelivered" in out
    # the run's lock counter is not called a version
    assert "saga version 1" in out and "17 transitions" in out and "run version" not in out
    assert "last change +3m05s" in out


def test_durations_are_a_few_characters() -> None:
    assert [span(s) for s in (0.012, 3.44, 243, 7500, 3 * 86400 + 4 * 3600)] == [
        "12ms", "3.4s", "4m03s", "2h05m", "3d04h"]
    assert since(at(1.5), T0) == "+1.5s" and since(None, T0) == ""


def test_migrate_says_from_which_revision_to_which_and_how_many_it_applied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Given a database one revision behind the newest (SQLite, the saga tables only)
    url = f"sqlite:///{tmp_path / 'sagas.db'}"
    scripts = ScriptDirectory.from_config(alembic_config(url))
    head = scripts.get_current_head()
    assert head is not None
    previous = scripts.get_revision(head).down_revision
    command.upgrade(alembic_config(url), str(previous))

    # When `sagas migrate` runs, then again
    done = CliRunner().invoke(main, ["migrate", "--url", url])
    again = CliRunner().invoke(main, ["migrate", "--url", url])

    # Then it says what it did, and then that there was nothing to do
    assert done.exit_code == 0, done.output
    assert f"migrated from {previous} to {head}: 1 migration(s) applied" in done.stdout, done.stdout
    assert again.exit_code == 0, again.output
    assert f"nothing to apply, already at {head}; schema is at the newest revision" in again.stdout, again.stdout
