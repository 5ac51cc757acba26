"""Attack 14 on ``DbClock.iso`` (7cf55cc, 77eb33d): the ISO text of the database clock built
from a per-second text cached at module level (shared by every clock) plus the microseconds,
said to be "the same text" as ``now().isoformat()``.

The process's monotonic clock is pinned (``saga_core.lease.monotonic`` replaced by a fixed
reading) so that both texts are made from the same reading.

Finding: the microseconds were rounded from ``elapsed * 1e6`` while ``now()`` rounds the
exact ``elapsed`` (``timedelta(seconds=...)``); near half a microsecond the two differ by one
microsecond (about 1 reading in 4 at exact half-microsecond offsets), so a history entry could
read 1 µs off the clock's ``now()`` (fixed: timedelta's rounding there)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest

import saga_core.lease as lease
from saga_core.lease import DbClock


class Pinned:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: float = 1000.0) -> None:
        self.at = at
        monkeypatch.setattr(lease, "monotonic", lambda: self.at)


def test_attack3_a14_iso_is_now_isoformat_at_half_microseconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mono = Pinned(monkeypatch, 0.0)
    clock = DbClock(datetime(2026, 1, 1, 12, 0, 0, 250_000, tzinfo=UTC), 0.0)
    wrong = []
    for k in range(1_000_000, 1_000_200):
        mono.at = (k + 0.5) / 1e6
        if clock.iso() != clock.now().isoformat():
            wrong.append((mono.at, clock.iso(), clock.now().isoformat()))
    assert not wrong, f"{len(wrong)} of 200 readings: {wrong[:3]}"


def test_attack3_a14_iso_matches_now_for_hostile_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Held: clocks far apart (before the epoch too), readings before the clock's own
    (negative elapsed), second boundaries and 999_999.5 µs rounding into the next second, all
    interleaved so that the shared per-second text is made by one clock and read by another;
    non-UTC clocks (fixed offsets, negative ones, ZoneInfo) keep their offset."""
    mono = Pinned(monkeypatch)
    rng = random.Random(14)
    tzs: list[tzinfo] = [UTC, timezone(timedelta(hours=-3)), timezone(timedelta(minutes=330))]
    tzs.append(ZoneInfo("UTC"))
    tzs.append(ZoneInfo("America/New_York"))
    clocks = []
    for i in range(60):
        base = datetime(2026, 3, 8, 6, 59, 59, 999_999, tzinfo=UTC) + timedelta(
            microseconds=rng.randrange(-3, 3)
        )
        if i % 7 == 0:
            base = datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
        clocks.append(DbClock(base.astimezone(tzs[i % len(tzs)]), rng.uniform(0, 2000)))
    for _ in range(20_000):
        c = rng.choice(clocks)
        mono.at = c._mono + rng.choice(
            [rng.uniform(-2, 2), rng.randrange(-4, 4) * 5e-7, 0.0, 0.9999995, -0.0000005]
        )
        assert c.iso() == c.now().isoformat(), (c._db, mono.at - c._mono)


def test_attack3_a14_two_clocks_same_second_different_offsets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Held: two databases' clocks (one an hour ahead) read in the same process second:
    each its own time, never the other's cached second."""
    mono = Pinned(monkeypatch, 50.0)
    a = DbClock(datetime(2026, 1, 1, 0, 0, 0, 100, tzinfo=UTC), 50.0)
    b = DbClock(datetime(2026, 1, 1, 1, 0, 0, 100, tzinfo=UTC), 50.0)
    for step in range(10):
        mono.at = 50.0 + step * 0.3
        assert a.iso() == a.now().isoformat()
        assert b.iso() == b.now().isoformat()
        assert a.iso()[11:13] == "00" and b.iso()[11:13] == "01"
