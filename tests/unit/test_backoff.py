"""The retry policy of database loops: exponential waits with jitter and a cap, a give-up
deadline, permanent errors with their own budget, and a success resetting everything."""

from __future__ import annotations

import asyncpg
import pytest

from saga_core.backoff import BackoffPolicy, RetryGaveUp
from saga_core.errors import SagaStoreError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


REFUSED = ConnectionRefusedError(111, "Connect call failed")
BAD_PASSWORD = asyncpg.InvalidPasswordError('password authentication failed for user "app"')
REVOKED = asyncpg.InsufficientPrivilegeError("permission denied for table saga_state")


def test_waits_grow_to_the_cap_and_a_success_resets_them() -> None:
    clock = Clock()
    b = BackoffPolicy(first=0.5, maximum=4.0, jitter=0.0).start(clock=clock)
    assert [b.failure(REFUSED) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.attempts == 6 and b.last is not None and b.last.transient
    b.success()
    assert b.attempts == 0 and b.last is None and b.failing_for == 0.0
    assert b.failure(REFUSED) == 0.5


def test_jitter_shortens_a_wait_by_at_most_its_fraction() -> None:
    low = BackoffPolicy(first=2.0, maximum=2.0, jitter=0.25).start(rng=lambda: 0.999999)
    high = BackoffPolicy(first=2.0, maximum=2.0, jitter=0.25).start(rng=lambda: 0.0)
    assert low.failure(REFUSED) == pytest.approx(1.5, abs=1e-4)
    assert high.failure(REFUSED) == 2.0


def test_deadline_gives_one_last_attempt_then_gives_up() -> None:
    clock = Clock()
    b = BackoffPolicy(first=4.0, maximum=4.0, jitter=0.0, give_up_after=10.0).start(clock=clock)
    assert b.failure(REFUSED) == 4.0
    clock.now += 8.0
    assert b.failure(REFUSED) == 2.0, "the wait is cut to the deadline"
    clock.now += 2.0
    with pytest.raises(RetryGaveUp) as caught:
        b.failure(REFUSED)
    err = caught.value
    assert isinstance(err, SagaStoreError)
    assert not err.permanent and err.attempts == 3 and err.elapsed == 10.0
    assert err.__cause__ is REFUSED and err.info.problem.value == "unreachable"


def test_permanent_error_gives_up_at_once_by_default() -> None:
    b = BackoffPolicy(give_up_after=30.0).start()
    with pytest.raises(RetryGaveUp) as caught:
        b.failure(BAD_PASSWORD)
    assert caught.value.permanent and caught.value.attempts == 1
    assert "authentication failed" in str(caught.value)


def test_permanent_error_with_a_budget_is_retried_then_gives_up() -> None:
    clock = Clock()
    policy = BackoffPolicy(first=1.0, maximum=60.0, jitter=0.0, permanent_give_up_after=100.0)
    b = policy.start(clock=clock)
    assert b.permanent_left() is None
    assert b.failure(REVOKED) == 1.0
    clock.now += 90.0
    assert b.permanent_left() == 10.0
    assert b.failure(REVOKED) == 2.0
    clock.now += 9.0
    assert b.failure(REVOKED) == 1.0, "the wait is cut to the permanent budget"
    clock.now += 1.0
    with pytest.raises(RetryGaveUp) as caught:
        b.failure(REVOKED)
    assert caught.value.permanent


def test_a_transient_error_or_a_success_restarts_the_permanent_budget() -> None:
    clock = Clock()
    b = BackoffPolicy(first=1.0, jitter=0.0, permanent_give_up_after=100.0).start(clock=clock)
    b.failure(REVOKED)
    clock.now += 99.0
    b.failure(REFUSED)  # the database went away meanwhile: not the same problem
    assert b.permanent_left() is None
    b.failure(REVOKED)
    clock.now += 99.0
    assert b.failure(REVOKED) >= 0.01
    b.success()
    b.failure(REVOKED)
    assert b.permanent_left() == 100.0


def test_permanent_errors_never_give_up_when_the_policy_says_so() -> None:
    clock = Clock()
    b = BackoffPolicy(first=1.0, maximum=5.0, jitter=0.0, permanent_give_up_after=None).start(
        clock=clock
    )
    for _ in range(50):
        clock.now += 1000.0
        assert b.failure(REVOKED) <= 5.0
    assert b.permanent_left() is None


@pytest.mark.parametrize(
    "kwargs", [{"first": 0.0}, {"first": 5.0, "maximum": 1.0}, {"factor": 0.5}, {"jitter": 1.0}]
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)
