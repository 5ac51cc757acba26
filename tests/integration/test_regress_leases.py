"""Investigation tests of issue 11, case 11 (a) and (b): leases around database trouble,
reproduced with a TCP proxy that *holds* one worker's traffic (``tests/acceptance/holdproxy``)
and, for (b), a slow trigger on the saga table. PostgreSQL only (row locks, triggers).

(a) The save between two steps kept the lease deadline and was fenced by the token only: a
    save that reaches the database after the lease expired (its statement delayed) lets the
    worker start the next step on an expired lease, while another worker claims the saga and
    runs that step too. Invariant asserted: no two concurrent executions of one step.
(b) A run that stops on an unexpected error kept its lease owner and token, so a renewal
    in flight (blocked behind the release's row lock) still matched and turned the 5 s retry
    delay into a whole lease. Asserted: the saga is due about 5 s after the release.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from itkit import SAFETY_TIMEOUT, Harness, Num, Out, Worker, eventually, from_context
from regresskit import describe, history, settle
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import BaseStep, SagaAdmin, SagaBuilder, SagaOrchestrator, current_step

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "acceptance"))
from holdproxy import HoldProxy

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("postgresql", id="pg", marks=pytest.mark.postgres)]
)


class Tracked(BaseStep[Num, Out]):
    """Records who runs which step and how many executions of a step overlap; a step with a
    gate waits for it."""

    def __init__(self) -> None:
        self.inflight: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self.starts: list[tuple[str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}

    def started_event(self, step_id: str) -> asyncio.Event:
        return self.started.setdefault(step_id, asyncio.Event())

    async def execute(self, inp: Num) -> Out:
        ctx = current_step()
        sid = ctx.step_id
        self.inflight[sid] += 1
        self.most[sid] = max(self.most[sid], self.inflight[sid])
        self.starts.append((sid, ctx.worker))
        self.started_event(sid).set()
        try:
            gate = self.gates.get(sid)
            if gate is not None:
                await gate.wait()
        finally:
            self.inflight[sid] -= 1
        return Out(n=inp.n + 1)


def define(h: Harness, step: Tracked) -> None:
    builder = SagaBuilder()
    for sid in ("a", "b", "c"):
        builder.add_step(step=step, step_id=sid, input_map=from_context)
    h.define("flow", builder.build())


async def proxied_worker(h: Harness, proxy: HoldProxy, *, lease: float, name: str) -> Worker:
    """A worker whose every connection goes through ``proxy``."""
    url = make_url(h.url).set(host="127.0.0.1", port=proxy.port)
    sql = create_async_engine(url, connect_args={"server_settings": {"application_name": name}})
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        model_class=h.model,
        session_maker=async_sessionmaker(sql),
        execution_lease=timedelta(seconds=lease),
        worker_id=name,
    )
    for saga_name, definition in h.definitions.items():
        orch.register(saga_name, definition)
    w = Worker(sql, orch, SagaAdmin(engine=orch.engine, actor="tester"))
    h.workers.append(w)
    return w


async def start_proxy(h: Harness) -> HoldProxy:
    real = make_url(h.url)
    proxy = HoldProxy(real.host or "127.0.0.1", real.port or 5432)
    await proxy.restore()
    return proxy


# --------------------------------------------------------------------------- (a)

LEASE_A = 2.0


async def test_case11a_a_late_save_never_lets_two_workers_run_a_step(h: Harness) -> None:
    """Issue 11 case 11 (a): worker 1 (behind the proxy) finishes step a; its save is held
    in the proxy until the lease has expired by the database clock, then delivered, while
    its lease renewal (sent later) stays held. Worker 2 then claims whatever is due. Step b
    must never run on both workers at once, and the saga completes."""
    step = Tracked()
    define(h, step)
    proxy = await start_proxy(h)
    try:
        w1 = await proxied_worker(h, proxy, lease=LEASE_A, name="i11a-w1")
        w2 = await h.worker("i11a-w2", lease=LEASE_A)
        sid = await w2.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="a-1")
        step.gates["a"] = gate_a = asyncio.Event()
        step.gates["b"] = gate_b = asyncio.Event()
        run1 = w1.spawn(w1.orch.run_due())
        await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)

        proxy.hold("up")  # from here on nothing worker 1 sends reaches the server
        gate_a.set()  # a returns: its save is sent (and held)

        async def save_held() -> bool:
            return bool(proxy.held_up())

        await eventually(save_held, what="worker 1's save to be held")
        await h.wait_lease_expired(sid)
        save_link = proxy.held_up()[0]
        proxy.release(save_link)  # only the save (the oldest held statement) goes on

        async def save_decided() -> bool:
            row = await h.row(sid)
            saved = any(e.get("step_id") == "a" and e["status"] == "SUCCESS" for e in history(row))
            return saved or run1.done()

        # (An implementation may send something else first, e.g. a renewal: then the save
        # stays held and worker 2's claim below is judged all the same.)
        with contextlib.suppress(AssertionError):
            await eventually(save_decided, what="worker 1's late save", timeout=5)
        run2 = w2.spawn(w2.orch.run_due())

        async def w2_settled() -> bool:
            return run2.done() or ("b", w2.id) in step.starts

        await eventually(w2_settled, what="worker 2's claim")
        proxy.release_all()
        gate_b.set()
        await asyncio.wait_for(asyncio.gather(run1, run2, return_exceptions=True), 30)
        row = await settle(h, w2, sid, timeout=30)
        assert step.most["b"] == 1, (
            f"step b ran on two workers at once: starts={step.starts}, {describe(row)}"
        )
        assert step.most == Counter({"a": 1, "b": 1, "c": 1}), step.starts
        assert row.status == "COMPLETED", describe(row)
    finally:
        proxy.release_all()
        await proxy.close()


async def test_case11a_a_step_outliving_its_lease_in_an_outage_is_cancelled(
    h: Harness,
) -> None:
    """Issue 11 case 11 (a), the outage itself: worker 1 loses the database (proxy cut)
    while its step runs, so its renewals fail; once the lease has expired by the database
    clock, worker 2 claims the saga and runs the step again. By then worker 1 must have
    cancelled its own execution (lease lost): the step never runs on both at once."""
    step = Tracked()
    define(h, step)
    proxy = await start_proxy(h)
    try:
        w1 = await proxied_worker(h, proxy, lease=LEASE_A, name="i11a-cut-w1")
        w2 = await h.worker("i11a-cut-w2", lease=LEASE_A)
        sid = await w2.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="a-2")
        step.gates["a"] = gate_a = asyncio.Event()
        run1 = w1.spawn(w1.orch.run_due())
        await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
        await proxy.cut()
        await h.wait_lease_expired(sid)
        run2 = w2.spawn(w2.orch.run_due())

        async def w2_runs_a() -> bool:
            return ("a", w2.id) in step.starts or run2.done()

        await eventually(w2_runs_a, what="worker 2 to take the saga over")
        overlap = step.most["a"]
        await proxy.restore()
        gate_a.set()
        await asyncio.wait_for(asyncio.gather(run1, run2, return_exceptions=True), 30)
        row = await settle(h, w2, sid, timeout=30)
        assert overlap == 1, (
            f"step a ran on two workers at once: starts={step.starts}, {describe(row)}"
        )
        assert row.status == "COMPLETED", describe(row)
    finally:
        await proxy.close()


# --------------------------------------------------------------------------- (b)

LEASE_B = 10.0
TRIGGER_SLEEP = 2.0


@pytest.fixture
async def slow_release(h: Harness) -> Any:
    """A CHECK that refuses step a's checkpoint (the run stops on an unexpected error) and a
    trigger that holds the release of such a run (the update that makes the saga due in
    about 5 s) for ``TRIGGER_SLEEP`` seconds, its row lock held meanwhile. Removed
    afterwards."""
    table = h.table_name
    fn = f"slow_{uuid.uuid4().hex[:8]}"
    assert h._observer_sql is not None
    async with h._observer_sql.begin() as conn:
        await conn.execute(
            text(
                f"ALTER TABLE {table} ADD CONSTRAINT {fn}_ck CHECK (current_step_index < 1) "
                "NOT VALID"
            )
        )
        await conn.execute(
            text(
                f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "IF NEW.deadline_at IS DISTINCT FROM OLD.deadline_at AND "
                "NEW.deadline_at BETWEEN now() + interval '3 s' AND now() + interval '7 s' THEN "
                f"PERFORM pg_sleep({TRIGGER_SLEEP}); END IF; RETURN NEW; END $$"
            )
        )
        await conn.execute(
            text(
                f"CREATE TRIGGER {fn}_tr BEFORE UPDATE ON {table} FOR EACH ROW "
                f"EXECUTE FUNCTION {fn}()"
            )
        )

    async def lift() -> None:
        assert h._observer_sql is not None
        async with h._observer_sql.begin() as conn:
            await conn.execute(text(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {fn}_ck"))
            await conn.execute(text(f"DROP TRIGGER IF EXISTS {fn}_tr ON {table}"))
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {fn}()"))

    try:
        yield lift
    finally:
        await lift()


async def _lock_waiters(h: Harness, app: str) -> int:
    assert h._observer_sql is not None
    async with h._observer_sql.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a "
                        "AND wait_event_type = 'Lock'"
                    ),
                    {"a": app},
                )
            ).scalar_one()
        )


async def _sleeping(h: Harness, app: str) -> int:
    """Backends of ``app`` sleeping in the trigger."""
    assert h._observer_sql is not None
    async with h._observer_sql.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a "
                        "AND wait_event = 'PgSleep'"
                    ),
                    {"a": app},
                )
            ).scalar_one()
        )


async def _busy(h: Harness, app: str) -> int:
    """Backends of ``app`` inside a statement or a transaction."""
    assert h._observer_sql is not None
    async with h._observer_sql.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a "
                        "AND state <> 'idle'"
                    ),
                    {"a": app},
                )
            ).scalar_one()
        )


async def test_case11b_a_renewal_in_flight_does_not_stretch_the_error_delay(
    h: Harness, slow_release: Any
) -> None:
    """Issue 11 case 11 (b): worker 1's run stops on an unexpected error (its checkpoint is
    refused by a CHECK constraint) and releases the saga for a retry in about 5 s; the
    release's row lock is held for 2 s (a trigger), and the lease renewal worker 1 sends
    meanwhile waits for it. The release's reply is held in the proxy until that renewal has
    finished. The renewal must not extend the lease: the saga is due about 5 s after the
    release, not a whole lease (10 s) after the renewal."""
    step = Tracked()
    define(h, step)
    proxy = await start_proxy(h)
    app = f"i11b-{uuid.uuid4().hex[:6]}"
    try:
        w1 = await proxied_worker(h, proxy, lease=LEASE_B, name=app)
        w2 = await h.worker("i11b-w2", lease=LEASE_B)
        sid = await w2.orch.start(saga_name="flow", initial_data={"n": 1}, aggregation_id="b-1")
        step.gates["a"] = gate_a = asyncio.Event()
        run1 = w1.spawn(w1.orch.run_due())
        await asyncio.wait_for(step.started_event("a").wait(), SAFETY_TIMEOUT)
        claimed = await h.row(sid)
        assert claimed.deadline_at is not None
        # Let a return just before the keeper's first renewal (half the lease).
        renew_at = claimed.deadline_at - timedelta(seconds=LEASE_B / 2)

        async def nearly_renewal_time() -> bool:
            return await h.db_now() >= renew_at - timedelta(seconds=0.5)

        await eventually(nearly_renewal_time, what="the eve of the first renewal")
        released_at = await h.db_now()
        gate_a.set()

        async def release_sleeping() -> bool:
            return await _sleeping(h, app) >= 1

        await eventually(release_sleeping, what="worker 1's release to sleep in the trigger")

        async def renewal_blocked_or_release_done() -> bool:
            return await _lock_waiters(h, app) >= 1 or await _sleeping(h, app) == 0

        await eventually(renewal_blocked_or_release_done, what="a renewal behind the release")
        raced = await _lock_waiters(h, app) >= 1
        if raced:
            # The release's link sent its statement before the renewal's. Its UPDATE sleeps
            # in the trigger; hold the answer to its COMMIT: the release commits, worker 1
            # does not know yet, and the renewal waiting for the row goes on.
            links = sorted(proxy.open_links(), key=lambda link: link.last_up_at)
            newest = links[-1].last_up_at
            release_link = next(link for link in links if link.last_up_at >= newest - TRIGGER_SLEEP)
            proxy.hold_reply_to_next(release_link)

        async def renewal_done() -> bool:
            return await _lock_waiters(h, app) == 0 and await _busy(h, app) == 0

        await eventually(renewal_done, what="the renewal to finish")
        row = await h.row(sid)
        proxy.release_all()
        await asyncio.wait_for(run1, 30)
        assert row.status == "RUNNING" and row.deadline_at is not None, describe(row)
        due_in = (row.deadline_at - released_at).total_seconds()
        assert due_in < 5 + TRIGGER_SLEEP + 1, (
            f"due {due_in:.1f}s after the release (renewal raced it: {raced}): a renewal "
            f"stretched the 5 s delay ({describe(row)})"
        )
        await slow_release()
        row = await settle(h, w2, sid, timeout=30)
        assert row.status == "COMPLETED", describe(row)
    finally:
        proxy.release_all()
        await proxy.close()
