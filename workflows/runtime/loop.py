"""The decision loop: load → decide → commit → publish, for every transition of every run.

    applied = loop.apply(saga, saga_id, outcome, by="operator:ada")

1. **load** the run (or take the snapshot the caller just read);
2. **decide** with the pure engine, the time and ids from this loop (`clock`, `ids`);
3. **commit** the `Transition` through the store: all its rows or none, on the version decided
   on; a `ConcurrentTransition` means another writer got there first: back to 1;
   (a step message's own pass, `step`, runs the step function between 1 and 2: guarded by the
   load, it runs only if the run still waits on that very message;)
4. **publish** what the committed transition says: its step messages, then the broker copies of
   its dead letters, each marked sent once out (the sweeper sends what a crash left unsent), then
   the first messages of the child runs it started, then its orders for other runs (cancel or
   compensate a child, report to a parent), each one pass of this loop on that run.

Nothing here runs inside a transaction, and the store calls nothing back. A message reporting on
another version than the run's is stale: it changes nothing and is noted in the history, unless
the current version is its own commit (a redelivery after a crash: `Applied.own_commit`).
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from workflows.core.definition import Saga, SagaRegistry, registry
from workflows.core.engine import commands_for, decide, is_current, new_run
from workflows.core.errors import ConcurrentTransition, SagaNotFound, UnknownSaga
from workflows.core.state import (STARTED_BY, Command, DeadLetter, DeadLetterClosure, Dispatch, ErrorInfo,
                                  HistoryEvent, IdSource, Ignored, MessageInfo, Order, Outcome, RunState, Schedule,
                                  Signal, SignalReceived, Started, Timing, Transition)
from workflows.core.views import DeadLetterView
from workflows.projections.base import NO_PROJECTIONS, Projections
from workflows.runtime.dispatch import Dispatcher, dead_letter_body
from workflows.runtime.hand_on import hand_on
from workflows.runtime.recovery import found_own_commit
from workflows.runtime.redelivery import may_run_again
from workflows.runtime.step_report import StepPass, StepReport
from workflows.runtime.tracing import NO_TRACING, Segment, Tracing
from workflows.store.base import Recorder

if TYPE_CHECKING:
    from workflows.store.base import CallerTx

log = logging.getLogger("workflows.loop")
step_log = logging.getLogger("workflows.orchestration")

DEAD_LETTER_GRACE = 10.0
"""Seconds a committed dead letter's copy is left to its writer before the sweeper sends it."""


@dataclass(frozen=True)
class Applied:
    """What one pass of the loop did: a committed transition, or why there was none."""

    transition: Transition | None
    state: RunState
    stale: bool = False
    """The message expected another version of the run."""
    own_commit: bool = False
    """Stale, but the current version was made by this very message (a redelivery after a crash)."""
    ignored: str | None = None


@dataclass(frozen=True)
class Start:
    """What `DecisionLoop.start` did."""

    saga_id: str
    transition: Transition | None
    """The run's first transition, None when an idempotency key named an existing run."""


class DecisionLoop:
    def __init__(self, store: Recorder, dispatcher: Dispatcher, *, clock: Callable[[], datetime], ids: IdSource,
                 timing: Timing = Timing(), definitions: SagaRegistry = registry,
                 projections: Projections = NO_PROJECTIONS, tracing: Tracing = NO_TRACING) -> None:
        self.store, self.dispatcher, self.clock, self.ids, self.timing = store, dispatcher, clock, ids, timing
        self.projections = projections  # after-commit projections: records written with each transition
        self.tracing = tracing  # spans (`runtime.tracing`): every pass but a step message's begins a segment
        self.definitions = definitions
        """Where the definitions come from: a run's own (`definition_of`), a child step's (`child_definition`)."""

    # ------------------------------------------------------------ the loop

    def commit(self, saga: Saga, saga_id: str, outcome: Outcome, *, by: str, expected_version: int | None = None,
               dispatch: Dispatch | None = None, state: RunState | None = None, message: MessageInfo | None = None,
               closures: tuple[DeadLetterClosure, ...] = (), trace: str | None = None) -> Applied:
        """Steps 1 to 3: the committed transition (not yet published), or why there is none.

        `dispatch`: the step message reporting (stale unless its step still waits on it);
        `expected_version`: the version the caller decided on (the sweeper's, an operator's);
        `state`: the run as the caller just read it (decided on if still current); `message`: the
        message a dead letter of this transition keeps; `closures`: dead letters it also resolves;
        `trace`: the trace segment it begins (`runtime.tracing`)."""
        while True:
            now = self.clock()
            run = state if state is not None else self.store.load(saga_id)
            state = None  # a retry reads the run again
            if expected_version is not None and run.version != expected_version:
                return self.ignore_stale(run, by=by, step=getattr(outcome, "step", None), what=type(outcome).__name__,
                                         own=run.version == expected_version + 1 and run.caused_by == by,
                                         message_version=expected_version)
            if dispatch is not None and not is_current(run, dispatch.step, dispatch.kind, dispatch.task_id,
                                                       dispatch.attempt):
                return self.ignore_stale(run, by=by, step=dispatch.step, what=type(outcome).__name__,
                                         own=run.caused_by == by, attempt=dispatch.attempt)
            try:
                t = decide(saga, run, outcome, now, self.ids, self.timing, self.definitions.child_definition)
            except Ignored as ig:
                if ig.event is not None:
                    self.store.record(saga_id, ig.event, by=by, now=now)
                return Applied(None, run, ignored=ig.reason, own_commit=run.caused_by == by)
            t = self.projections.derive(t.with_message(message).closing(*closures).traced(trace), now)
            try:
                self.store.commit(t, by=by, now=now)
            except ConcurrentTransition:
                continue  # someone else made progress: decide again on what they wrote
            return Applied(t, t.after)

    def publish(self, t: Transition, *, inline: Command | None = None) -> None:
        """Step 4: the transition's messages, then its dead letters' broker copies (marked sent),
        then the first messages of the child runs it started, then its orders for other runs.
        `inline`: a message of `t` the caller runs itself instead (`orchestration.inline`). First of
        all, its projections' records (`workflows.projections`): a saga's events go out in order."""
        if t.projected:
            self.projections.send(t.projected, self.store)
        for cmd in t.commands:
            if cmd != inline:
                self.dispatcher.send_step(t.after, cmd)
        if t.dead_letters:
            self.send_dead_letters(t.dead_letters, t.after.saga_id)
        for child in t.children:
            self.publish(child)  # committed with `t`; a lost publish is the sweeper's (a first step)
        for order in t.orders:
            self.deliver(order, by=f"saga:{t.after.saga_id}")

    def deliver(self, order: Order, *, by: str) -> Applied | None:
        """Apply `order` (an outcome `t` gives another run) as one pass of this loop. A failure is
        logged, not raised: `t` is committed, and the sweeper finds what the order was to do
        (`child_links`: a child to cancel or compensate, a parent to report to)."""
        try:
            run = self.store.load(order.saga_id)
            return self.apply(self.definitions.definition_of(run), order.saga_id, order.outcome, by=by, state=run)
        except Exception as e:  # the database or the broker: the sweeper's recovery of children
            log.warning("%s for run %s not applied (%s): the sweeper applies it", type(order.outcome).__name__,
                        order.saga_id, e, extra={"saga_id": order.saga_id})
            return None

    def apply(self, saga: Saga, saga_id: str, outcome: Outcome, *, by: str, expected_version: int | None = None,
              dispatch: Dispatch | None = None, state: RunState | None = None, message: MessageInfo | None = None,
              closures: tuple[DeadLetterClosure, ...] = ()) -> Applied:
        """The whole loop, for the sweeper, operators and a lost worker given up (a step's own
        report goes through `step`, then its caller publishes: it may run the follow-up inline,
        or retry its own message instead)."""
        with self.tracing.segment(saga.name, saga_id, type(outcome).__name__) as segment:
            applied = self.commit(saga, saga_id, outcome, by=by, expected_version=expected_version,
                                  dispatch=dispatch, state=state, message=message, closures=closures,
                                  trace=segment.context)
            if applied.transition is not None:
                segment.link(applied.transition.before.trace)
                self.publish(applied.transition)
        return applied

    def ignore_stale(self, run: RunState, *, by: str, step: str | None, what: str, own: bool,
                     **detail: Any) -> Applied:
        """A report that no longer applies (its step moved on, or the run changed from the version
        the caller decided on) changes nothing. Noted in the history, unless the run's current
        version is this very reporter's own commit (`own`: a redelivery after a crash)."""
        if not own:
            self.store.record(run.saga_id, HistoryEvent("StaleMessageIgnored", step, None, {
                "outcome": what, **detail, "run_version": run.version}), by=by, now=self.clock())
        return Applied(None, run, stale=True, own_commit=own)

    # ------------------------------------------------------------ signals

    def signal(self, saga: Saga, saga_id: str, signal: Signal) -> Applied:
        """Record `signal` and apply it (consumed by its wait, or kept until the wait begins) in one
        version-checked write, then publish what follows. A signal already recorded under its key
        changes nothing (`ignored` is "duplicate"); if the current version is that signal's own
        commit, what it dispatched is published again (the sender died between commit and publish)."""
        with self.tracing.segment(saga.name, saga_id, f"signal {signal.name}") as segment:
            return self._signal(saga, saga_id, signal, segment)

    def _signal(self, saga: Saga, saga_id: str, signal: Signal, segment: Segment) -> Applied:
        by = signal_by(signal.id)
        while True:
            now = self.clock()
            run = self.store.load(saga_id)
            # after the load: a same-key signal committed since then moves the version, and this
            # write is refused and decided again, finding it here
            seen = self.store.signal_for_key(saga_id, signal.idempotency_key)
            if seen is not None:
                if run.caused_by == signal_by(seen.id):
                    self.republish(saga, run)
                return Applied(None, run, ignored="duplicate")
            try:
                t = decide(saga, run, SignalReceived(signal), now, self.ids, self.timing,
                           self.definitions.child_definition).traced(segment.context)
            except Ignored as ig:
                if ig.event is not None:
                    self.store.record(saga_id, ig.event, by=by, now=now)
                return Applied(None, run, ignored=ig.reason)
            t = self.projections.derive(t, now)
            try:
                self.store.commit(t, by=by, now=now)
            except ConcurrentTransition:
                continue
            segment.link(t.before.trace)
            self.publish(t)
            return Applied(t, t.after)

    def republish(self, saga: Saga, run: RunState, *,
                  select: Callable[[Sequence[Command]], Sequence[Command]] | None = None) -> Sequence[Command]:
        """The messages `run` waits on, derived from its state (a follow-up a crash may have lost),
        or those of them `select` picks; returns what was sent."""
        cmds: Sequence[Command] = commands_for(saga, run, self.timing)
        if select is not None:
            cmds = select(cmds)
        for cmd in cmds:
            self.dispatcher.send_step(run, cmd)
        return cmds

    # ------------------------------------------------------------ a step message's own pass

    def step(self, report: StepReport, work: Callable[[Saga, RunState], tuple[Outcome, BaseException | None]], *,
             state: RunState | None = None, after_commit: Callable[[], None] | None = None) -> StepPass:
        """A step message: guard (load the run; a stale or duplicate message does not run), `work`
        (run the step function: its outcome, and its error if it raised), decide, commit. The
        caller publishes the committed transition. `state`: the run as just committed (an inline
        step: no load); `after_commit`: called right after the commit (the tests' crash points).

        Around the guard: a message no run can take is dead-lettered; a run on a saga version
        this worker does not hold is handed on (`runtime.hand_on`); a redelivered message counts
        its lost worker first (`runtime.redelivery`); a message whose own transition committed
        publishes again what may be missing (`runtime.recovery`)."""
        if report.saga not in self.definitions:  # a worker deployed without this saga: keep the message, never drop it
            known = ', '.join(self.definitions.names()) or 'none'
            unknown = UnknownSaga(f"unknown saga {report.saga!r} (registered: {known})")
            self._dead_letter_report(report, ErrorInfo("UnknownSaga", str(unknown)))
            return StepPass()
        try:
            run = state or self.store.load(report.saga_id)  # the snapshot the outcome is decided on, if still current
        except SagaNotFound as e:  # a worker on another database, or a run deleted: keep the message too
            self._dead_letter_report(report, ErrorInfo("SagaNotFound", str(e)))
            return StepPass()
        # the run's own version decides, not the message's
        if not self.definitions.has(run.saga_type, run.saga_version):
            return StepPass(hand_on=hand_on(self, run, report))
        saga, d, by = self.definitions.definition_of(run), report.dispatch, report.by
        if not is_current(run, d.step, d.kind, d.task_id, d.attempt):
            # Stale (a duplicate, or overtaken by a timeout/cancel/retry) or our own commit redelivered:
            # the step must not run again.
            applied = self.ignore_stale(run, by=by, step=d.step, what=f"{d.kind} (not run)", own=run.caused_by == by,
                                        message_version=report.version, attempt=d.attempt)
            if applied.own_commit:
                found_own_commit(self, saga, applied.state, report.delivery, d.step, report.inline_queues)
            return StepPass()
        message = report.message(run)
        if report.delivery.redelivered and not may_run_again(self, saga, run, d, message):
            return StepPass()
        outcome, error = work(saga, run)
        applied = self.commit(saga, report.saga_id, outcome, by=by, dispatch=d, state=run, message=message)
        if after_commit is not None:
            after_commit()
        if applied.transition is None:
            if applied.own_commit and state is None:
                found_own_commit(self, saga, applied.state, report.delivery, d.step, report.inline_queues)
            return StepPass()
        return StepPass(applied.transition, error)

    def _dead_letter_report(self, report: StepReport, error: ErrorInfo) -> None:
        """Keep a step message no run can take (`error` says why) as a dead letter, in the table and
        on the broker's `dead_letter` queue, instead of dropping it."""
        self.dead_letter(DeadLetter(self.ids(), report.kind, report.step, report.task, 0, error,
                                    report.raw_message()), saga_id=report.saga_id)
        step_log.error("step message dead-lettered: %s", error, extra={"saga_id": report.saga_id, "step": report.step})

    # ------------------------------------------------------------ starts and dead letters

    def start(self, saga: Saga, data: dict[str, Any], *, saga_id: str | None = None,
              idempotency_key: str | None = None, tx: CallerTx | None = None,
              start_at: datetime | None = None, trace: str | None = None,
              cause: dict[str, Any] | None = None) -> Start:
        """Record a run already started (step 1 dispatched) in one atomic write; the caller publishes
        `transition` (or calls `publish`). An idempotency key already used returns its run, and no
        transition. If the first message is lost, the sweeper sends it once step 1's deadline passed.

        With `tx` (the caller's SQLAlchemy Session or Connection) the write is in a savepoint of the
        caller's transaction; the caller publishes only after that commits (`store.after_commit`).
        `trace`: the run's first trace segment (`runtime.tracing`). `cause`: what started it (an
        event of a choreography), recorded in its first history row."""
        now = self.clock()
        run_id = saga_id or _uuid(self.ids())
        # `start_at`: recorded SCHEDULED (nothing to publish); the sweeper starts it when due
        first = Schedule(start_at, cause) if start_at is not None else Started(cause)
        t = self.projections.derive(decide(saga, new_run(saga, run_id, data, STARTED_BY), first, now, self.ids,
                                           self.timing, self.definitions.child_definition).traced(trace), now)
        if tx is None:
            created = self.store.create_run(t, idempotency_key=idempotency_key, now=now)
        else:
            created = self.store.create_run_in(tx, t, idempotency_key=idempotency_key, now=now)
        return Start(created.saga_id, t if created.created else None)

    def dead_letter(self, dl: DeadLetter, *, saga_id: str | None) -> None:
        """Keep a message no transition takes (no run for it, no such saga type) as a dead letter."""
        self.store.add_dead_letter(dl, saga_id=saga_id, now=self.clock())
        self.send_dead_letters((dl,), saga_id)

    def send_dead_letters(self, dls: tuple[DeadLetter, ...], saga_id: str | None) -> None:
        """Copy committed dead letters to the broker and mark them sent. A broker error leaves the
        rest unsent for the sweeper (`resend_dead_letters`): the record is the row, already committed."""
        try:
            self._send(dls, lambda dl: saga_id)
        except Exception as e:  # the broker: the sweeper sends it later
            log.warning("dead letter recorded, its broker copy not sent (%s): the sweeper sends it", e,
                        extra={"saga_id": saga_id})

    def resend_dead_letters(self, grace: float = DEAD_LETTER_GRACE, limit: int = 100) -> list[str]:
        """The sweeper's part: send the copies of dead letters committed over `grace` seconds ago
        and never sent (their writer died, or the broker was down, between commit and publish)."""
        pending = self.store.unsent_dead_letters(self.clock() - timedelta(seconds=grace), limit)
        return self._send(pending, lambda dl: dl.saga_id)

    def _send(self, dls: Sequence[DeadLetter] | Sequence[DeadLetterView],
              saga_of: Callable[[Any], str | None]) -> list[str]:
        """Send each copy, then mark sent the ones that went out, even if the broker failed half way."""
        now = self.clock()
        sent: list[str] = []
        try:
            for dl in dls:
                self.dispatcher.send_dead_letter(dead_letter_body(dl, saga_of(dl), now))
                sent.append(dl.id)
        finally:
            self.store.mark_dead_letters_sent(sent, now)
        return sent


def signal_by(signal_id: str) -> str:
    """`caused_by` of the version a signal made (how a duplicate knows its original committed)."""
    return f"signal:{signal_id}"


def _uuid(hex_id: str) -> str:
    """A run id in the usual 8-4-4-4-12 form (the id source's hex digits, when it gives 32)."""
    try:
        return str(uuid.UUID(hex=hex_id))
    except ValueError:
        return hex_id
