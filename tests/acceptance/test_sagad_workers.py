"""Several real ``sagad`` processes sharing work: exactly-once without crashes, recovery from
``kill -9``, and draining on SIGTERM."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import Counter, defaultdict
from typing import Any

from sagad_kit import SagaDb, SagadFactory, wait_until

TERMINAL = {"COMPLETED", "COMPENSATED", "ABORTED", "FAILED"}


def _no_overlap(runs: list[Any], killed_at: Any = None) -> None:
    """Runs of one saga never overlap: its steps and compensations are sequential, and a
    takeover starts only after the previous holder stopped (or was killed)."""
    by_saga: dict[Any, list[Any]] = defaultdict(list)
    for r in runs:
        by_saga[r.saga_id].append(r)
    for saga_id, rs in by_saga.items():
        rs.sort(key=lambda r: r.started_at)
        for prev, nxt in itertools.pairwise(rs):
            end = prev.ended_at if prev.ended_at is not None else killed_at
            assert end is not None, f"open run of saga {saga_id} without a kill: {prev}"
            assert end <= nxt.started_at, f"saga {saga_id}: {prev} overlaps {nxt}"


async def test_workers_share_2000_sagas_each_step_exactly_once(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    workers = [
        sagad.start(
            *saga_db.sagad_args("--concurrency", "32", "--batch-size", "16"),
            env=saga_db.sagad_env(lease=30),
        )
        for _ in range(3)
    ]
    await asyncio.gather(*(w.wait_ready() for w in workers))

    n = 2000
    ids = await saga_db.start("trivial", n)
    counts = await saga_db.wait_all({"COMPLETED"}, n, timeout=150)
    assert counts == {"COMPLETED": n}

    runs = await saga_db.runs()
    per_step = Counter((r.saga_id, r.step_id, r.phase) for r in runs)
    assert len(per_step) == 2 * n
    assert set(per_step.values()) == {1}, "a step ran more than once"
    assert {r.saga_id for r in runs} == set(ids)
    assert all(r.outcome == "ok" for r in runs)
    by_pid = Counter(r.pid for r in runs)
    assert len(by_pid) >= 2, f"the work was not shared: {by_pid}"
    assert set(by_pid) <= {w.pid for w in workers}

    # Nobody crashed, and each stops cleanly and leaves its registry row marked stopped.
    assert all(w.running() for w in workers)
    for w in workers:
        w.signal(signal.SIGTERM)
    assert [await w.wait_exit() for w in workers] == [0, 0, 0]
    rows = await saga_db.fetch("SELECT pid, stopped_at, in_flight FROM saga_workers")
    mine = [r for r in rows if r.pid in {w.pid for w in workers}]
    assert len(mine) == 3 and all(r.stopped_at is not None for r in mine)


async def test_kill9_mid_steps_and_compensations_others_finish(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    lease = 2.0
    args = saga_db.sagad_args("--concurrency", "8", "--batch-size", "4")
    env = saga_db.sagad_env(lease=lease)
    victim = sagad.start(*args, env=env)
    await victim.wait_ready()
    # Interleave the two kinds so the victim's first claims hold both.
    forward: list[Any] = []
    backward: list[Any] = []
    for _ in range(10):
        forward += await saga_db.start("steps", 3, {"sleep": 0.6})
        backward += await saga_db.start("rollback", 3, {"sleep": 0.3, "comp_sleep": 1.0})
    others = [sagad.start(*args, env=env) for _ in range(2)]

    async def victim_busy_both_ways() -> bool:
        rows = await saga_db.fetch(
            "SELECT DISTINCT phase FROM {t}_runs WHERE pid = :pid AND ended_at IS NULL",
            pid=victim.pid,
        )
        return {r.phase for r in rows} == {"execute", "compensate"}

    await wait_until(victim_busy_both_ways, timeout=30, what="the victim mid-step both ways")
    victim.proc.kill()
    assert await victim.wait_exit() == -signal.SIGKILL
    killed_at = await saga_db.db_now()
    await asyncio.gather(*(w.wait_ready() for w in others))

    total = len(forward) + len(backward)
    await saga_db.wait_all(TERMINAL, total, timeout=90)
    status = dict(await saga_db.fetch("SELECT id, status FROM {t}"))
    assert {status[i] for i in forward} == {"COMPLETED"}
    assert {status[i] for i in backward} == {"COMPENSATED"}

    runs = await saga_db.runs()
    interrupted = [r for r in runs if r.ended_at is None]
    assert interrupted and {r.pid for r in interrupted} == {victim.pid}
    assert {r.phase for r in interrupted} == {"execute", "compensate"}
    _no_overlap(runs, killed_at)
    ok = Counter((r.saga_id, r.step_id, r.phase) for r in runs if r.outcome == "ok")
    for saga_id in forward:
        assert all(ok[(saga_id, s, "execute")] >= 1 for s in "abc")
    for saga_id in backward:
        assert all(ok[(saga_id, s, "execute")] >= 1 for s in "ab")
        assert all(ok[(saga_id, s, "compensate")] >= 1 for s in "ab")
    # Only steps the victim had in hand ran twice: one in flight when it died (its run left
    # open), or one that had finished but whose checkpoint had not been written yet (its run
    # ended, the checkpoint died with the process). Either way the victim ran it first and
    # another worker ran it again once the lease had expired.
    reruns = [k for k, v in ok.items() if v > 1]
    for key in reruns:
        done = sorted((r for r in runs if _key(r) == key and r.outcome == "ok"), key=_start)
        assert done[0].pid == victim.pid, f"{key} first ran on a live worker: {done}"
        assert all(r.pid != victim.pid for r in done[1:]), f"{key} ran twice on the victim"
    held = {r.saga_id for r in interrupted} | {saga_id for saga_id, _, _ in reruns}
    assert len(held) <= 8, "more sagas than the victim's concurrency"
    taken = await saga_db.fetch("SELECT count(*) FROM {t} WHERE takeover_count > 0")
    assert taken[0][0] >= len(held)
    assert all(w.running() for w in others)


def _key(r: Any) -> tuple[Any, str, str]:
    return (r.saga_id, r.step_id, r.phase)


def _start(r: Any) -> Any:
    return r.started_at


async def test_sigterm_lets_in_flight_steps_finish_then_releases(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    # A long lease: if the drained sagas were not released, nobody could take them for 60s.
    env = saga_db.sagad_env(lease=60)
    first = sagad.start(*saga_db.sagad_args("--concurrency", "4"), env=env)
    await first.wait_ready()
    ids = await saga_db.start("steps", 4, {"sleep_a": 1.5, "sleep": 0.1})

    async def all_running() -> bool:
        rows = await saga_db.fetch("SELECT count(*) FROM {t}_runs WHERE ended_at IS NULL")
        return rows[0][0] == 4

    await wait_until(all_running, timeout=20, what="4 steps in flight")
    first.signal(signal.SIGTERM)
    assert await first.wait_exit() == 0

    runs = await saga_db.runs()
    assert [(r.step_id, r.outcome) for r in runs] == [("a", "ok")] * 4, "steps a finished"
    rows = await saga_db.fetch("SELECT status, lease_owner, current_step_index FROM {t}")
    assert {(r.status, r.lease_owner, r.current_step_index) for r in rows} == {("RUNNING", None, 1)}
    assert "STOPPING=1" in (first.notify.poll() if first.notify else [])

    second = sagad.start(*saga_db.sagad_args(), env=env)
    await saga_db.wait_all({"COMPLETED"}, 4, timeout=30)
    runs = await saga_db.runs()
    per_step = Counter((r.saga_id, r.step_id) for r in runs if r.outcome == "ok")
    assert len(per_step) == 12 and set(per_step.values()) == {1}
    assert {r.pid for r in runs if r.step_id == "a"} == {first.pid}
    assert {r.pid for r in runs if r.step_id != "a"} == {second.pid}
    assert {r.saga_id for r in runs} == set(ids)
    assert await second.stop() == 0


async def _start_long_steps(sagad: SagadFactory, saga_db: SagaDb, drain: str) -> Any:
    env = {**saga_db.sagad_env(lease=60), "SAGA_DRAIN_TIMEOUT": drain}
    worker = sagad.start(*saga_db.sagad_args("--concurrency", "3"), env=env)
    await worker.wait_ready()
    await saga_db.start("steps", 3, {"sleep_a": 20, "sleep": 0.1})

    async def running() -> bool:
        rows = await saga_db.fetch("SELECT count(*) FROM {t}_runs WHERE ended_at IS NULL")
        return rows[0][0] == 3

    await wait_until(running, timeout=20, what="3 long steps in flight")
    return worker


async def _released_and_finished_elsewhere(
    sagad: SagadFactory, saga_db: SagaDb, first: Any
) -> None:
    runs = await saga_db.runs()
    assert [(r.step_id, r.outcome) for r in runs] == [("a", "cancelled")] * 3
    history = await saga_db.fetch(
        "SELECT step_history, lease_owner, status, retry_counter FROM {t}"
    )
    for hist, owner, status, retries in history:
        assert owner is None and status == "RUNNING" and retries == 0
        assert [h["status"] for h in hist] == ["INTERRUPTED"]
    # A second worker takes the released sagas at once (their lease would last 60 s).
    second = sagad.start(
        *saga_db.sagad_args(), env={**saga_db.sagad_env(lease=60), "ACCEPT_MAX_SLEEP": "0.1"}
    )
    await saga_db.wait_all({"COMPLETED"}, 3, timeout=30)
    runs = await saga_db.runs()
    ok = Counter((r.saga_id, r.step_id) for r in runs if r.outcome == "ok")
    assert len(ok) == 9 and set(ok.values()) == {1}
    assert {r.pid for r in runs if r.outcome == "ok"} == {second.pid}
    assert first.pid not in {r.pid for r in runs if r.outcome == "ok"}
    assert await second.stop() == 0


async def test_sigterm_drain_timeout_cancels_and_releases(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    worker = await _start_long_steps(sagad, saga_db, drain="1")
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(timeout=20) == 0
    assert "released mid-step" in worker.log
    await _released_and_finished_elsewhere(sagad, saga_db, worker)


async def test_second_signal_skips_the_drain(sagad: SagadFactory, saga_db: SagaDb) -> None:
    worker = await _start_long_steps(sagad, saga_db, drain="600")
    worker.signal(signal.SIGTERM)

    async def draining() -> bool:
        return "draining" in worker.log

    await wait_until(draining, timeout=10, what="the drain to start")
    worker.signal(signal.SIGINT)
    assert await worker.wait_exit(timeout=20) == 0
    await _released_and_finished_elsewhere(sagad, saga_db, worker)
