"""Retry policies: attempt counting, backoff maths, jitter bounds and argument checks."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saga_core.retry import (
    ExponentialRetry,
    FixedRetry,
    NoRetry,
    RetryPolicy,
    default_compensation_policy,
)

attempts = st.integers(min_value=1, max_value=50)
seconds = st.floats(min_value=0, max_value=3600, allow_nan=False, allow_infinity=False)
multipliers = st.floats(min_value=1, max_value=10, allow_nan=False, allow_infinity=False)


def executions_allowed(policy: RetryPolicy) -> int:
    """How many times a step governed by ``policy`` runs when every execution fails."""
    failures = 0
    while True:
        failures += 1  # one more execution, and it failed
        if policy.next_delay(failures) is None:
            return failures
        assert failures < 10_000, "policy never gives up"


def seconds_of(delay: timedelta | None) -> float:
    assert delay is not None
    return delay.total_seconds()


# --- NoRetry -------------------------------------------------------------------------------


def test_no_retry_runs_once() -> None:
    policy = NoRetry()
    assert policy.max_attempts == 1
    assert policy.next_delay(1) is None
    assert executions_allowed(policy) == 1


@pytest.mark.parametrize("failures", [1, 2, 5, 100])
def test_no_retry_never_waits(failures: int) -> None:
    assert NoRetry().next_delay(failures) is None


def test_no_retry_is_a_retry_policy_and_compares_equal() -> None:
    assert isinstance(NoRetry(), RetryPolicy)
    assert NoRetry() == NoRetry()
    assert hash(NoRetry()) == hash(NoRetry())


# --- FixedRetry ----------------------------------------------------------------------------


def test_fixed_retry_max_attempts_counts_the_first_try() -> None:
    policy = FixedRetry(3, timedelta(seconds=2))
    assert policy.next_delay(1) == timedelta(seconds=2)
    assert policy.next_delay(2) == timedelta(seconds=2)
    assert policy.next_delay(3) is None
    assert policy.next_delay(4) is None
    assert executions_allowed(policy) == 3


def test_fixed_retry_with_one_attempt_is_no_retry() -> None:
    assert FixedRetry(1, 5).next_delay(1) is None


def test_fixed_retry_accepts_seconds_and_defaults_to_no_wait() -> None:
    assert FixedRetry(2, 1.5).next_delay(1) == timedelta(seconds=1.5)
    assert FixedRetry(2, 3).delay == timedelta(seconds=3)
    assert FixedRetry(2).next_delay(1) == timedelta(0)


@given(max_attempts=attempts, delay=seconds)
def test_fixed_retry_property(max_attempts: int, delay: float) -> None:
    policy = FixedRetry(max_attempts, delay)
    expected = timedelta(seconds=delay)
    for failures in range(1, max_attempts):
        assert policy.next_delay(failures) == expected
    assert policy.next_delay(max_attempts) is None
    assert executions_allowed(policy) == max_attempts


def test_fixed_retry_equality() -> None:
    assert FixedRetry(3, 1) == FixedRetry(3, timedelta(seconds=1))
    assert FixedRetry(3, 1) != FixedRetry(3, 2)
    assert FixedRetry(3, 1) != FixedRetry(4, 1)
    assert hash(FixedRetry(3, 1)) == hash(FixedRetry(3, timedelta(seconds=1)))
    assert "FixedRetry" in repr(FixedRetry(3, 1))


# --- ExponentialRetry ----------------------------------------------------------------------


def test_exponential_retry_sequence_without_jitter() -> None:
    policy = ExponentialRetry(5, base_delay=timedelta(seconds=1), jitter=False)
    delays = [policy.next_delay(n) for n in range(1, 6)]
    assert delays == [
        timedelta(seconds=1),
        timedelta(seconds=2),
        timedelta(seconds=4),
        timedelta(seconds=8),
        None,
    ]
    assert executions_allowed(policy) == 5


def test_exponential_retry_custom_multiplier_and_cap() -> None:
    policy = ExponentialRetry(
        10, base_delay=0.5, multiplier=3, max_delay=timedelta(seconds=10), jitter=False
    )
    assert [seconds_of(policy.next_delay(n)) for n in range(1, 6)] == [
        0.5,
        1.5,
        4.5,
        10.0,  # 13.5 capped
        10.0,
    ]


def test_exponential_retry_cap_below_base_delay() -> None:
    policy = ExponentialRetry(3, base_delay=10, max_delay=2, jitter=False)
    assert policy.next_delay(1) == timedelta(seconds=2)


def test_exponential_retry_multiplier_one_is_constant() -> None:
    policy = ExponentialRetry(4, base_delay=3, multiplier=1, jitter=False)
    assert [policy.next_delay(n) for n in (1, 2, 3)] == [timedelta(seconds=3)] * 3


def test_exponential_retry_jitter_is_default() -> None:
    assert ExponentialRetry(3, 1).jitter is True


@given(
    max_attempts=attempts,
    base=seconds,
    multiplier=multipliers,
    cap=st.none() | seconds,
)
def test_exponential_retry_exact_maths(
    max_attempts: int, base: float, multiplier: float, cap: float | None
) -> None:
    policy = ExponentialRetry(
        max_attempts, base_delay=base, multiplier=multiplier, max_delay=cap, jitter=False
    )
    # timedelta keeps microseconds: the base is rounded to them first.
    base_us = timedelta(seconds=base).total_seconds()
    cap_us = None if cap is None else timedelta(seconds=cap).total_seconds()
    for n in range(1, max_attempts):
        expected = base_us * multiplier ** (n - 1)
        if cap_us is not None:
            expected = min(expected, cap_us)
        expected = min(expected, 10 * 365 * 86400)
        got = seconds_of(policy.next_delay(n))
        assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-6)
        if cap_us is not None:
            assert got <= cap_us
    assert policy.next_delay(max_attempts) is None
    assert policy.next_delay(max_attempts + 1) is None


@given(max_attempts=attempts, base=seconds, multiplier=multipliers, cap=st.none() | seconds)
def test_exponential_retry_delays_never_decrease(
    max_attempts: int, base: float, multiplier: float, cap: float | None
) -> None:
    policy = ExponentialRetry(max_attempts, base, multiplier, cap, jitter=False)
    delays = [seconds_of(policy.next_delay(n)) for n in range(1, max_attempts)]
    assert delays == sorted(delays)


@given(
    max_attempts=st.integers(min_value=2, max_value=40),
    base=seconds,
    multiplier=multipliers,
    cap=st.none() | seconds,
    data=st.data(),
)
def test_exponential_retry_full_jitter_stays_in_range(
    max_attempts: int, base: float, multiplier: float, cap: float | None, data: st.DataObject
) -> None:
    jittered = ExponentialRetry(max_attempts, base, multiplier, cap, jitter=True)
    exact = ExponentialRetry(max_attempts, base, multiplier, cap, jitter=False)
    n = data.draw(st.integers(min_value=1, max_value=max_attempts - 1), label="failures")
    ceiling = exact.next_delay(n)
    assert ceiling is not None
    for _ in range(20):
        delay = jittered.next_delay(n)
        assert delay is not None
        assert timedelta(0) <= delay <= ceiling
    assert jittered.next_delay(max_attempts) is None


def test_exponential_retry_jitter_actually_varies() -> None:
    policy = ExponentialRetry(3, base_delay=100)
    samples = {policy.next_delay(1) for _ in range(50)}
    assert len(samples) > 1
    assert all(s is not None and timedelta(0) <= s <= timedelta(seconds=100) for s in samples)


def test_exponential_retry_huge_exponent_does_not_overflow() -> None:
    policy = ExponentialRetry(5000, base_delay=1, multiplier=10, jitter=False)
    delay = policy.next_delay(4000)
    assert delay is not None
    assert delay <= timedelta(days=3650)
    capped = ExponentialRetry(5000, base_delay=1, multiplier=10, max_delay=60, jitter=False)
    assert capped.next_delay(4000) == timedelta(seconds=60)
    jittered = ExponentialRetry(5000, base_delay=1, multiplier=10)
    assert timedelta(0) <= jittered.next_delay(4999) <= timedelta(days=3650)  # type: ignore[operator]


def test_exponential_retry_zero_base_stays_zero() -> None:
    policy = ExponentialRetry(5000, base_delay=0, jitter=False)
    assert policy.next_delay(1) == timedelta(0)
    assert policy.next_delay(4000) == timedelta(0)


def test_exponential_retry_equality() -> None:
    assert ExponentialRetry(3, 1, jitter=False) == ExponentialRetry(
        3, timedelta(seconds=1), 2, None, False
    )
    assert ExponentialRetry(3, 1) != ExponentialRetry(3, 1, jitter=False)


# --- invalid arguments ---------------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [0, -1, -100])
def test_max_attempts_below_one_is_rejected(max_attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        FixedRetry(max_attempts, 1)
    with pytest.raises(ValueError, match="max_attempts"):
        ExponentialRetry(max_attempts, 1)


@pytest.mark.parametrize("max_attempts", [True, False, 2.0, "3", None])
def test_max_attempts_must_be_an_int(max_attempts: object) -> None:
    with pytest.raises(TypeError, match="max_attempts"):
        FixedRetry(max_attempts, 1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_attempts"):
        ExponentialRetry(max_attempts, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize("delay", [-1, -0.001, timedelta(seconds=-1), timedelta(microseconds=-1)])
def test_negative_delays_are_rejected(delay: timedelta | float) -> None:
    with pytest.raises(ValueError, match="delay"):
        FixedRetry(3, delay)
    with pytest.raises(ValueError, match="base_delay"):
        ExponentialRetry(3, delay)
    with pytest.raises(ValueError, match="max_delay"):
        ExponentialRetry(3, 1, max_delay=delay)


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_delays_are_rejected(delay: float) -> None:
    with pytest.raises(ValueError, match="delay"):
        FixedRetry(3, delay)
    with pytest.raises(ValueError, match="base_delay"):
        ExponentialRetry(3, delay)
    with pytest.raises(ValueError, match="max_delay"):
        ExponentialRetry(3, 1, max_delay=delay)


@pytest.mark.parametrize("delay", [True, False, "1", None, [1]])
def test_delays_of_wrong_type_are_rejected(delay: object) -> None:
    with pytest.raises(TypeError, match="delay"):
        FixedRetry(3, delay)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="base_delay"):
        ExponentialRetry(3, delay)  # type: ignore[arg-type]
    if delay is not None:  # None means "no cap" for max_delay
        with pytest.raises(TypeError, match="max_delay"):
            ExponentialRetry(3, 1, max_delay=delay)  # type: ignore[arg-type]


@pytest.mark.parametrize("multiplier", [0.99, 0, -2, float("nan"), float("inf")])
def test_bad_multiplier_is_rejected(multiplier: float) -> None:
    with pytest.raises(ValueError, match="multiplier"):
        ExponentialRetry(3, 1, multiplier=multiplier)


@pytest.mark.parametrize("multiplier", [True, "2", None])
def test_multiplier_of_wrong_type_is_rejected(multiplier: object) -> None:
    with pytest.raises(TypeError, match="multiplier"):
        ExponentialRetry(3, 1, multiplier=multiplier)  # type: ignore[arg-type]


def test_zero_delays_are_allowed() -> None:
    assert FixedRetry(2, 0).next_delay(1) == timedelta(0)
    assert ExponentialRetry(2, 0, max_delay=0, jitter=False).next_delay(1) == timedelta(0)


def test_retry_policy_is_abstract() -> None:
    with pytest.raises(TypeError):
        RetryPolicy()  # type: ignore[abstract]


# --- compensation default ------------------------------------------------------------------


def test_default_compensation_policy_retries_with_backoff() -> None:
    policy = default_compensation_policy()
    assert isinstance(policy, RetryPolicy)
    assert policy.max_attempts > 1
    assert executions_allowed(policy) == policy.max_attempts
    assert isinstance(policy, ExponentialRetry)
    exact = ExponentialRetry(
        policy.max_attempts,
        policy.base_delay,
        policy.multiplier,
        policy.max_delay,
        jitter=False,
    )
    ceilings = [seconds_of(exact.next_delay(n)) for n in range(1, policy.max_attempts)]
    assert ceilings[0] > 0
    assert ceilings == sorted(ceilings)
    assert ceilings[-1] > ceilings[0], "backoff: later waits are longer"
    for n in range(1, policy.max_attempts):
        assert timedelta(0) <= policy.next_delay(n) <= exact.next_delay(n)  # type: ignore[operator]


def test_default_compensation_policy_matches_documentation() -> None:
    policy = default_compensation_policy()
    assert isinstance(policy, ExponentialRetry)
    assert policy.max_attempts == 5
    assert policy.base_delay == timedelta(seconds=1)
    assert policy.max_delay == timedelta(seconds=60)


def test_default_compensation_policy_is_a_fresh_equal_instance() -> None:
    assert default_compensation_policy() == default_compensation_policy()
    assert default_compensation_policy() is not default_compensation_policy()
