"""The retry schedule is a pure function: growth, cap, jitter bounds, classification."""
from __future__ import annotations

import random

import pytest

from workflows import DefinitionError, PermanentError, RetryableError, RetryPolicy


def test_interval_grows_by_the_backoff_and_is_capped() -> None:
    p = RetryPolicy(max_attempts=10, initial_interval=1.0, backoff=2.0, max_interval=10.0, jitter=False)
    assert [p.countdown(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_full_jitter_stays_within_zero_and_the_capped_interval() -> None:
    p = RetryPolicy(max_attempts=10, initial_interval=0.5, backoff=3.0, max_interval=20.0)
    rng = random.Random(7)
    for attempt in range(1, 8):
        draws = [p.countdown(attempt, rng) for _ in range(500)]
        assert min(draws) >= 0.0 and max(draws) <= p.interval(attempt)
        assert max(draws) > 0.8 * p.interval(attempt)  # really spread over the range


def test_classification_of_errors() -> None:
    class Declined(Exception):
        pass

    p = RetryPolicy(retryable=(ConnectionError, Declined), non_retryable=(Declined,))
    assert p.is_retryable(ConnectionError())
    assert not p.is_retryable(Declined())  # non_retryable wins
    assert not p.is_retryable(KeyError())  # not listed as retryable
    assert not p.is_retryable(PermanentError())
    assert p.is_retryable(RetryableError())


@pytest.mark.parametrize("kwargs, message", [
    ({"max_attempts": 0}, "max_attempts"),
    ({"initial_interval": -1}, "initial_interval"),
    ({"backoff": 0.5}, "backoff"),
    ({"initial_interval": 10, "max_interval": 5}, "max_interval"),
    ({"retryable": (ValueError, "x")}, "retryable"),
    ({"non_retryable": [ValueError]}, "non_retryable"),
])
def test_insane_policies_are_refused_with_a_message_naming_the_field(kwargs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DefinitionError, match=message):
        RetryPolicy(**kwargs)


def test_defaults_are_sane_and_compensations_are_more_patient() -> None:
    from workflows.core.retry import DEFAULT_ACTION_POLICY, DEFAULT_COMPENSATION_POLICY

    assert DEFAULT_ACTION_POLICY.max_attempts == 3
    assert DEFAULT_COMPENSATION_POLICY.max_attempts > DEFAULT_ACTION_POLICY.max_attempts
    assert DEFAULT_COMPENSATION_POLICY.max_interval > DEFAULT_ACTION_POLICY.max_interval


def test_the_retry_verdict_is_one_answer_for_every_caller() -> None:
    from workflows.core.retry import RetryVerdict, retry_verdict

    # Given a policy of 3 tries
    p = RetryPolicy(max_attempts=3)
    # Then failed attempts 1 and 2 are retried, the 3rd (and any beyond, e.g. counting lost workers) is the last
    assert [retry_verdict(p, n) for n in (1, 2, 3, 4)] == [RetryVerdict.RETRY, RetryVerdict.RETRY,
                                                           RetryVerdict.EXHAUSTED, RetryVerdict.EXHAUSTED]
    # and an error the policy does not retry gives up at once, whatever the attempt
    assert retry_verdict(p, 1, retryable=False) is RetryVerdict.PERMANENT
    # and a policy of one try never retries
    assert retry_verdict(RetryPolicy(max_attempts=1), 1) is RetryVerdict.EXHAUSTED
