"""Leases are judged by the database clock: workers whose local wall clocks are an hour fast
and an hour slow share sagas without premature takeovers, and a takeover after a real crash
still happens.

Each ``sagad`` runs with a tiny ``sitecustomize`` on its ``PYTHONPATH`` that shifts
``time.time()``, ``datetime.now()`` and ``datetime.utcnow()`` by ``SKEW_SECONDS``. The
executor only uses the monotonic clock (to decide when to renew); expiry and due times are
computed by PostgreSQL's ``now()``, and history times are taken from the database clock.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

from faultkit import ACCEPT_DIR, FAULTS_DIR, FaultDb, Sagad, SagadFactory, child_env, wait_until

SITECUSTOMIZE = """
import datetime as _dt
import os as _os
import time as _time

_SKEW = float(_os.environ.get("SKEW_SECONDS", "0"))
if _SKEW:
    _real_time = _time.time
    _time.time = lambda: _real_time() + _SKEW
    _time.time_ns = lambda: int((_real_time() + _SKEW) * 1e9)

    class _SkewedDatetime(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return super().now(tz) + _dt.timedelta(seconds=_SKEW)

        @classmethod
        def utcnow(cls):
            return super().now(_dt.timezone.utc).replace(tzinfo=None) + _dt.timedelta(
                seconds=_SKEW
            )

    _dt.datetime = _SkewedDatetime
"""

LEASE = 2.0
STEP_S = 2.5
"""Longer than the lease: every step lives on renewals."""


def _skewed(sagad: SagadFactory, db: FaultDb, skew_dir: Path, skew: int) -> Sagad:
    env = child_env(db.table, lease=LEASE)
    env["PYTHONPATH"] = os.pathsep.join([str(skew_dir), str(FAULTS_DIR), str(ACCEPT_DIR)])
    env["SKEW_SECONDS"] = str(skew)
    env["SAGA_POLL_INTERVAL"] = "0.25"
    return sagad.start(
        "--app", "chaos_app:make", "--database-url", db.url, "--concurrency", "3", env=env
    )


async def test_skewed_worker_clocks_do_not_break_leases(
    sagad: SagadFactory, fault_db: FaultDb, tmp_path: Path
) -> None:
    skew_dir = tmp_path / "skew"
    skew_dir.mkdir()
    (skew_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    fast = _skewed(sagad, fault_db, skew_dir, +3600)
    slow = _skewed(sagad, fault_db, skew_dir, -3600)
    await fast.wait_ready()
    await slow.wait_ready()

    # 1. Both run sagas whose steps outlive the lease: no takeover, each step once.
    ids = await fault_db.start_many([("chaos", {"sleep": STEP_S}) for _ in range(6)])

    async def all_done() -> bool:
        rows = await fault_db.fetch("SELECT count(*) FROM {t} WHERE status = 'COMPLETED'")
        return bool(rows[0][0] == len(ids))

    await wait_until(all_done, timeout=90, what="the sagas to complete")
    rows = await fault_db.fetch("SELECT takeover_count, step_history, finished_at FROM {t}")
    assert [r.takeover_count for r in rows] == [0] * len(ids), "no premature takeover"
    runs = await fault_db.fetch("SELECT saga_id, step_id, pid FROM {t}_runs")
    assert set(Counter((r.saga_id, r.step_id) for r in runs).values()) == {1}
    assert {r.pid for r in runs} == {fast.pid, slow.pid}, "both workers took part"
    # History times are the database's, whatever the worker's clock says (they were the
    # worker's own, an hour off, before the run layer kept time by the database).
    offsets = {
        round((datetime.fromisoformat(e["at"]) - r.finished_at).total_seconds() / 3600)
        for r in rows
        for e in r.step_history
    }
    assert offsets == {0}, offsets
    # The skew was real: each worker's own log lines are stamped an hour off.
    now = datetime.now()
    for worker, hours in ((fast, 1), (slow, -1)):
        first = next(ln for ln in worker.log.splitlines() if re.match(r"\d{4}-\d\d-\d\d ", ln))
        stamp = datetime.strptime(first[:19], "%Y-%m-%d %H:%M:%S")
        assert round((stamp - now).total_seconds() / 3600) == hours, first

    # 2. A real crash of the fast worker mid-step: the slow one takes over once the lease
    # expires by the database clock.
    assert await slow.stop() == 0
    (sid,) = await fault_db.start_many([("chaos", {"sleep": STEP_S})])

    async def fast_started() -> bool:
        r = await fault_db.fetch("SELECT count(*) FROM {t}_runs WHERE saga_id = :s", s=sid)
        return bool(r[0][0])

    await wait_until(fast_started, timeout=30, what="the fast worker to start the saga")
    fast.proc.kill()
    await fast.wait_exit()
    slow2 = _skewed(sagad, fault_db, skew_dir, -3600)

    async def done() -> bool:
        r = await fault_db.fetch("SELECT status FROM {t} WHERE id = :s", s=sid)
        return bool(r[0][0] == "COMPLETED")

    await wait_until(done, timeout=60, what="the slow worker to take over and finish")
    (row,) = await fault_db.fetch("SELECT takeover_count FROM {t} WHERE id = :s", s=sid)
    assert row.takeover_count == 1
    assert await slow2.stop() == 0
