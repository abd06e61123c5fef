"""Countdowns that cannot outlive Redis's visibility timeout (issue 20).

A message waiting for its retry's countdown, then running up to its time limit, is unacknowledged
all along; past the visibility timeout Redis gives a second copy of the same attempt to another
worker. `install()` refuses such a declaration on Redis, naming the saga, the step and both numbers,
so the worker does not start.
"""
from __future__ import annotations



import pytest
from celery import Celery

from workflows import RetryPolicy, Saga, Step
from workflows.choreography.declaration import ChoreographyRegistry
from workflows.core.definition import Parallel, SagaRegistry
from workflows.core.errors import DefinitionError, VisibilityTimeoutTooShort
from workflows.runtime.settings import Settings
from workflows.runtime.visibility import check_visibility_timeout, longest_countdown, unacked

LONG = RetryPolicy(max_attempts=4, initial_interval=10, backoff=2, max_interval=30, jitter=False)
PATIENT = Saga("vis.patient", steps=[
    Step("quick", action="vis.quick", compensation=None, timeout=5),
    Parallel("group", [Step("charge", action="vis.charge", compensation="vis.refund", timeout=20, retry=LONG,
                            compensation_retry=LONG),
                       Step("other", action="vis.other", compensation=None, timeout=5)]),
])


def test_the_longest_countdown_is_what_the_policy_can_reach() -> None:
    assert longest_countdown(LONG) == 30  # 10, 20, then 40 capped at 30
    assert longest_countdown(RetryPolicy(max_attempts=3, initial_interval=1, backoff=2, max_interval=60)) == 2
    assert longest_countdown(RetryPolicy(max_attempts=1)) == 0  # no retry, no countdown


def test_a_step_whose_countdown_and_time_limit_outlive_the_timeout_is_refused_naming_both_numbers() -> None:
    # charge: a countdown of up to 60 s (an outage's retry; its policy's own is 30 s) + 20 s + 5 s hard grace
    [charge] = [u for u in unacked(PATIENT) if (u.step, u.kind) == ("charge", "action")]
    assert (charge.countdown, charge.limit, charge.seconds) == (60, 25, 85)
    with pytest.raises(VisibilityTimeoutTooShort) as refused:
        check_visibility_timeout([PATIENT], 80)
    e = refused.value
    assert (e.saga, e.step, e.kind, e.needed, e.visibility_timeout) == ("vis.patient", "charge", "action", 85, 80)
    assert "'vis.patient'" in str(e) and "'charge'" in str(e) and "85s" in str(e) and "80s" in str(e)
    assert isinstance(e, DefinitionError)
    check_visibility_timeout([PATIENT], 86)  # above it: accepted


def test_install_refuses_on_redis_and_not_on_rabbitmq(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    wiring = importlib.import_module("workflows.install")  # the module (the package exports its function)

    only = SagaRegistry()
    only.register(PATIENT)
    monkeypatch.setattr(wiring, "registry", only)  # this process's registry stays as it is
    monkeypatch.setattr(wiring, "choreographies", ChoreographyRegistry())  # nor do the session's choreographies count
    monkeypatch.setattr(wiring, "set_runtime", lambda rt: None)  # nor is its runtime replaced
    monkeypatch.setattr(wiring, "install_consumers", lambda app: None)
    settings = Settings(redis_visibility_timeout=10)

    redis_app = Celery("vis-redis", broker="redis://127.0.0.1:6379/14")
    redis_app.conf.broker_transport_options = {"visibility_timeout": 10}
    with pytest.raises(VisibilityTimeoutTooShort, match="visibility timeout of 10s"):
        wiring.install(redis_app, settings=settings)

    # RabbitMQ has no visibility timeout; and the check can be turned off for a test rig
    wiring.install(Celery("vis-amqp", broker="amqp://guest:guest@127.0.0.1:5672//"), settings=settings)
    wiring.install(redis_app, settings=Settings(redis_visibility_timeout=10, redis_visibility_check=False))
