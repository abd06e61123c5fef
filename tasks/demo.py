"""`make demo`: real sagas end to end, then what happened, as timelines.

With no SAGA_* variables it needs no server: SQLite and kombu's filesystem broker in
`.demo-data/` (wiped at start), and a worker it starts itself. With SAGA_BROKER_URL and
SAGA_DATABASE_URL set (Redis/RabbitMQ, PostgreSQL) the same demo runs against them.
Exits 0 when every saga ended as expected.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo-data"


def _prepare_env() -> None:
    embedded = not os.environ.get("SAGA_DATABASE_URL") and not os.environ.get("SAGA_BROKER_URL")
    if embedded and "SAGA_DATA_DIR" not in os.environ:
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
        os.environ["SAGA_DATA_DIR"] = str(DEMO_DIR)
    os.environ.setdefault("SAGA_LOG_LEVEL", "WARNING")
    from workflows.runtime.settings import get_settings

    get_settings.cache_clear()


def _order(order_id: str, sku: str, **overrides: Any) -> dict[str, Any]:
    order = {"order_id": order_id, "customer_id": "cust-42", "email": "ada@example.com",
             "items": [{"sku": sku, "quantity": 2, "price": "19.90"}],
             "payment": {"card": "4242424242424242"},
             "shipping_address": {"name": "Ada Lovelace", "street": "12 St James's Sq", "city": "London",
                                  "country": "GB"}}
    order.update(overrides)
    return order


SCENARIOS: list[tuple[str, str, str, dict[str, Any], str]] = [
    # (saga, title, expected state, order overrides, fault or stock to arrange before starting)
    ("order_fulfillment", "order completes", "COMPLETED", {}, ""),
    ("order_fulfillment", "card declined at payment: inventory released", "COMPENSATED",
     {"payment": {"card": "4000000000000002"}}, ""),
    ("order_fulfillment", "no carrier for the address: payment refunded, then inventory released", "COMPENSATED",
     {"shipping_address": {"name": "Nemo", "street": "1 Deep Rd", "city": "Atlantis", "country": "XX"}}, ""),
    ("order_fulfillment", "payment gateway times out twice: retried, then completes", "COMPLETED", {},
     "payment-transient-2"),
    ("order_fulfillment_parallel", "parallel: stock and payment at once, then ship: completes", "COMPLETED", {}, ""),
    ("order_fulfillment_parallel", "parallel: out of stock while the card is charged: the charge is refunded",
     "COMPENSATED", {}, "out-of-stock"),
    ("order_with_shipping", "child saga: the shipping saga completes, then the card is charged", "COMPLETED", {}, ""),
    ("order_with_shipping", "child saga: card declined after shipping: the shipping saga is compensated",
     "COMPENSATED", {"payment": {"card": "4000000000000002"}}, ""),
]
CHILD_EXPECTED = {"order_with_shipping": {"COMPLETED": "COMPLETED", "COMPENSATED": "COMPENSATED"}}
"""The state each child run of a scenario must end in, by the parent's expected state."""


def _start_worker(log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork", "-c", "2",
           "-n", f"demo-{os.getpid()}@%h", "--loglevel=WARNING"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_orchestrated(console: Any) -> list[tuple[str, str, Any]]:
    from tasks.common import arm_fault, clear_faults
    from tasks.inventory import restock

    from workflows.operations.client import start_saga, wait_for

    clear_faults()
    results = []
    for n, (saga, title, expected, overrides, fault) in enumerate(SCENARIOS, start=1):
        sku = f"DEMO-SKU-{n}"
        restock({sku: 1 if fault == "out-of-stock" else 5})  # each order takes 2
        if fault == "payment-transient-2":
            arm_fault("payment", times=2, permanent=False, message="gateway timeout (injected)")
        order = _order(f"order-{n:03d}-{int(time.time())}", sku, **overrides)
        saga_id = start_saga(saga, order, idempotency_key=order["order_id"])
        view = wait_for(saga_id, timeout=60)
        results.append((title, expected, view))
        _print_timeline(console, n, title, view)
        for child in view.children:
            kid = wait_for(child.id, timeout=60)
            results.append((f"   its child saga {kid.saga_type} ({child.parent_step})",
                            CHILD_EXPECTED[saga][expected], kid))
            _print_timeline(console, n, f"the child saga of step {child.parent_step!r}, started by saga "
                            f"{view.id[:8]}", kid)
    clear_faults()
    return results


APPROVALS: list[tuple[str, str, dict[str, Any] | None]] = [
    # (title, expected state, the manager's answer; None: no answer before the wait's deadline)
    ("approval: an order above the limit waits, the manager approves: completes", "COMPLETED",
     {"approved": True, "reason": "regular customer"}),
    ("approval: the manager rejects: the stock is released", "COMPENSATED",
     {"approved": False, "reason": "over the customer's credit"}),
    ("approval: no answer within two days: the wait times out, the stock is released", "COMPENSATED", None),
]


def run_approvals(console: Any, first: int) -> list[tuple[str, str, Any]]:
    """`order_approval` (tasks/sagas.py): an order of 10 x 19.90 is above the limit of 100.00, so it
    waits for the signal `approval`; the demo sends it (as `POST /api/sagas/{id}/signals/approval`
    would), or moves the sweeper's clock two days on (`sweep(now=...)`) for the timeout."""
    from datetime import timedelta

    from tasks.inventory import restock

    from workflows.operations.client import get_saga, start_saga, wait_for
    from workflows.operations.signals import signal
    from workflows.operations.sweeper import sweep
    from workflows.runtime.container import get_runtime

    results = []
    for n, (title, expected, answer) in enumerate(APPROVALS, start=first):
        sku = f"DEMO-SKU-{n}"
        restock({sku: 20})
        order = _order(f"order-{n:03d}-{int(time.time())}", sku, items=[{"sku": sku, "quantity": 10,
                                                                          "price": "19.90"}])
        saga_id = start_saga("order_approval", order, idempotency_key=order["order_id"])
        deadline = time.monotonic() + 60
        while get_saga(saga_id).state != "WAITING":  # reserve_inventory runs on the worker, then it parks
            if time.monotonic() > deadline or get_saga(saga_id).terminal:
                raise RuntimeError(f"saga {saga_id} did not park on its wait: {get_saga(saga_id).state}")
            time.sleep(0.05)
        if answer is not None:
            signal(saga_id, "approval", answer, idempotency_key=f"approval-{order['order_id']}", who="manager")
        else:
            rt = get_runtime()
            sweep(rt, now=rt.clock() + timedelta(days=2, seconds=1))  # two days later, for the sweeper
        view = wait_for(saga_id, timeout=60)
        results.append((title, expected, view))
        _print_timeline(console, n, title, view)
        if answer is None:
            console.print("   [dim](the sweeper ran with now = two days later; the compensation then ran at the "
                          "real time)[/]\n")
    return results


HYBRID: list[tuple[str, str, dict[str, Any]]] = [
    # (title, expected state of the saga, order overrides); the checkout choreography completes either way
    ("hybrid: OrderPlaced starts the fulfilment saga; the payment service's PaymentSettled answers its wait",
     "COMPLETED", {}),
    ("hybrid: card declined: PaymentSettled (declined) rejects the saga's wait, the stock is released",
     "COMPENSATED", {"payment": {"card": "4000000000000002"}}),
]


def run_hybrid(console: Any, *, timeout: float = 60.0) -> list[tuple[str, str, str]]:
    """The hybrid (tasks/choreography/checkout.py): the shop publishes the choreographed `OrderPlaced`;
    the fulfilment service starts the orchestrated saga `order_paid_fulfillment` under the order's id,
    the payment service charges and publishes `PaymentSettled`, which answers the saga's wait."""
    from tasks.choreography.checkout import checkout
    from tasks.inventory import restock

    from workflows.choreography.operations import format_trace, trace
    from workflows.operations.client import get_saga, wait_for
    from workflows.runtime.container import get_runtime

    rows: list[tuple[str, str, str]] = []
    for n, (title, expected, overrides) in enumerate(HYBRID, start=1):
        sku = f"DEMO-HYBRID-{n}-{int(time.time())}"
        restock({sku: 5})
        order = _order(f"order-h{n}-{int(time.time() * 1000)}", sku, **overrides)
        flow = checkout.start("OrderPlaced", order, idempotency_key=f"placed-{order['order_id']}")
        deadline = time.monotonic() + timeout
        while get_runtime().store.saga_type(order["order_id"]) is None:  # the fulfilment service starts it
            if time.monotonic() > deadline:
                raise RuntimeError(f"no saga was started for {order['order_id']} (checkout {flow})")
            time.sleep(0.05)
        view = wait_for(order["order_id"], timeout=timeout)
        flow_view = get_saga(flow)
        while not flow_view.terminal and time.monotonic() < deadline:
            time.sleep(0.05)
            flow_view = get_saga(flow)
        _print_timeline(console, f"H{n}", title, view)
        console.print(f"   the checkout choreography {flow[:8]} ({flow_view.state}), as its event tree:",
                      markup=False, highlight=False)
        for line in format_trace(trace(flow)):
            console.print(f"   {line}", markup=False, highlight=False)
        for e in flow_view.events:
            if e.type == "OrchestratedSagaStarted":
                console.print(f"   {e.type}: {e.detail['consumer']} started {e.detail['started_saga_type']} "
                              f"{e.detail['started_saga_id']} on {e.step} {str(e.detail['event_id'])[:8]}",
                              markup=False, highlight=False)
        console.print()
        rows += [(title, expected, view.state), ("   its checkout choreography (order_checkout)", "COMPLETED",
                                                 flow_view.state)]
    return rows


def _print_timeline(console: Any, n: int | str, title: str, view: Any) -> None:
    from rich.table import Table

    colour = {"COMPLETED": "green", "COMPENSATED": "yellow", "FAILED": "red"}.get(view.state, "white")
    table = Table(title=f"[bold]{n}. {title}[/] — saga {view.id[:8]} [{colour}]{view.state}[/]",
                  title_justify="left", show_lines=False)
    for col in ("step", "status", "attempts", "compensation", "result / error"):
        table.add_column(col)
    for s in view.steps:
        comp = "" if s.compensation_attempts == 0 else f"{s.compensation_attempts} attempt(s)"
        detail = s.error or (", ".join(f"{k}={v}" for k, v in (s.result or {}).items()))
        table.add_row(s.name, s.status, str(s.attempts), comp, detail[:70])
    console.print(table)
    t0: datetime = view.events[0].at
    for e in view.events:
        if e.type in ("SagaCreated", "StepDispatched", "CompensationDispatched"):
            continue
        ms = (e.at - t0).total_seconds() * 1000
        what = e.type + (f" {e.step}" if e.step else "") + (f" (attempt {e.attempt})" if e.attempt else "")
        note = e.detail.get("error") or e.detail.get("reason") or ""
        if e.detail.get("cause"):
            cause = e.detail["cause"]
            note = f"started by {cause['event_type']} of {cause['choreography']} {cause['saga_id'][:8]}"
        if not note and e.detail.get("signal"):
            who = e.detail.get("who")
            note = f"signal {e.detail['signal']!r}" + (f" from {who}" if who else "") + (
                f", deadline {e.detail['deadline_at'][:19]}" if e.detail.get("deadline_at") else "")
        console.print(f"   +{ms:7.0f} ms  {what}  [dim]{str(note)[:80]}[/]")
    console.print()


def main() -> int:
    _prepare_env()
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 120)
    import worker  # noqa: F401  (installs the runtime with the settings above)

    from tasks.schema import migrate  # the saga tables and the shop's
    from workflows.runtime.container import get_runtime

    rt = get_runtime()
    url = rt.settings.resolved_database_url()
    console.print(f"[bold]Saga demo[/]  database: {url}  broker: {rt.settings.resolved_broker_url()}")
    migrate(url)
    log = rt.settings.absolute_data_dir() / "demo-worker.log"
    proc = _start_worker(log)
    ok = True
    try:
        results = run_orchestrated(console)
        # numbered on from the scenarios (the results also hold their child runs' rows)
        results += run_approvals(console, len(SCENARIOS) + 1)
        extra = _run_choreography(console)
        extra += run_hybrid(console)
        summary_rows = [(t, e, v.state) for t, e, v in results] + extra
        from rich.table import Table

        summary = Table(title="[bold]Summary[/]", title_justify="left")
        for col in ("scenario", "expected", "got"):
            summary.add_column(col)
        for title, expected, got in summary_rows:
            mark = "[green]✔[/]" if got == expected else "[red]✘[/]"
            ok &= got == expected
            summary.add_row(title, expected, f"{mark} {got}")
        console.print(summary)
        console.print(f"Every transition is in the database: [cyan]SELECT * FROM sagas; SELECT * FROM saga_events;[/] "
                      f"({url})")
    except Exception as e:  # the demo must say what went wrong, and where to look
        console.print(f"[red]demo failed: {e}[/]  (worker log: {log})")
        ok = False
    finally:
        _stop_worker(proc)
    return 0 if ok else 1


def _run_choreography(console: Any) -> list[tuple[str, str, str]]:
    """The choreographed examples (tasks/choreography), after the orchestrated ones."""
    from tasks.choreography.demo import run_choreography_demo

    return list(run_choreography_demo(console))


if __name__ == "__main__":
    sys.exit(main())
