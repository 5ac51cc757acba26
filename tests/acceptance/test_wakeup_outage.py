"""Wake-ups through PostgreSQL NOTIFY (also after the listening connection is lost), and a
database outage while sagas run."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sagad_kit import SagaDb, SagadFactory, wait_until
from sqlalchemy.engine import make_url
from tcpproxy import TcpProxy

POLL_INTERVAL = "30"
PROMPT_S = 5.0
"""'Well before the poll interval': the first step must start within this, not 30 s."""


async def _first_step_started(saga_db: SagaDb, saga_id: Any) -> bool:
    rows = await saga_db.fetch("SELECT count(*) FROM {t}_runs WHERE saga_id = :s", s=saga_id)
    return bool(rows[0][0])


async def _listener_pids(saga_db: SagaDb) -> set[int]:
    rows = await saga_db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'sagad-listener'"
    )
    return {r[0] for r in rows}


async def test_idle_workers_wake_at_once_on_start_and_after_listener_loss(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    env = {**saga_db.sagad_env(lease=5), "SAGA_POLL_INTERVAL": POLL_INTERVAL}
    workers = [sagad.start(*saga_db.sagad_args(), env=env) for _ in range(2)]
    await asyncio.gather(*(w.wait_ready() for w in workers))

    (saga_id,) = await saga_db.start("steps", 1)
    await wait_until(
        lambda: _first_step_started(saga_db, saga_id),
        timeout=PROMPT_S,
        what="the first step of a new saga (NOTIFY wake-up)",
    )

    # Drop the listening connections: the workers reconnect and keep waking up at once.
    before = await _listener_pids(saga_db)
    assert len(before) == 2
    await saga_db.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'sagad-listener'"
    )

    async def reconnected() -> bool:
        pids = await _listener_pids(saga_db)
        return len(pids) == 2 and not pids & before

    await wait_until(reconnected, timeout=15, what="both listeners to reconnect")
    (saga_id,) = await saga_db.start("steps", 1)
    await wait_until(
        lambda: _first_step_started(saga_db, saga_id),
        timeout=PROMPT_S,
        what="the first step after the listener reconnected",
    )
    assert all(w.running() for w in workers)


async def test_database_outage_while_running_loses_nothing(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    real = make_url(saga_db.url)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    await proxy.restore()
    try:
        via_proxy = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False
        )
        # Sagas live behind the proxy; the steps record their runs directly, so they keep
        # completing during the outage while their checkpoints wait in memory.
        env = {**saga_db.sagad_env(lease=60), "ACCEPT_RECORD_URL": saga_db.url}
        worker = sagad.start(
            "--app", "app_sagas:make", "--database-url", via_proxy, "--concurrency", "20", env=env
        )
        await worker.wait_ready()
        n = 60
        ids = await saga_db.start("steps", n, {"sleep": 0.4})

        async def ok_runs() -> int:
            rows = await saga_db.fetch("SELECT count(*) FROM {t}_runs WHERE outcome = 'ok'")
            return int(rows[0][0])

        async def open_runs() -> int:
            rows = await saga_db.fetch("SELECT count(*) FROM {t}_runs WHERE ended_at IS NULL")
            return int(rows[0][0])

        async def steps_done_and_running() -> bool:
            # Cut while steps run: the sagas move in waves (same step length), and a cut in
            # the gap between two waves would leave no step to finish offline.
            return await ok_runs() >= 10 and await open_runs() > 0

        await wait_until(steps_done_and_running, timeout=30, what="some steps done, some running")
        await proxy.cut()
        cut_at = await ok_runs()
        running_at_cut = await open_runs()

        state: dict[str, Any] = {}

        async def all_steps_done_offline() -> bool:
            # Every step in flight at the cut has finished (recorded directly), so its
            # checkpoint can only be in sagad's memory; and the writer has retried a while.
            state.update(
                open_runs=await open_runs(),
                new_ok_runs=await ok_runs() - cut_at,
                retried="database unavailable while writing" in worker.log,
                listener_noticed="wake-up listener" in worker.log,
            )
            return (
                state["open_runs"] == 0
                # Steps running at the cut finished offline (when the cut missed every step,
                # in the instant between two waves, there is none to wait for).
                and (state["new_ok_runs"] > 0 or running_at_cut == 0)
                and state["retried"]
                and state["listener_noticed"]
            )

        try:
            await wait_until(all_steps_done_offline, timeout=60, what="sagad blocked on the outage")
        except AssertionError as exc:
            tail = "\n".join(worker.log.splitlines()[-30:])
            raise AssertionError(f"{exc}; conditions: {state}; sagad log tail:\n{tail}") from None
        assert worker.running()
        await proxy.restore()

        await saga_db.wait_all({"COMPLETED"}, n, timeout=90)
        runs = await saga_db.runs()
        per_step = Counter((r.saga_id, r.step_id) for r in runs if r.outcome == "ok")
        assert len(per_step) == 3 * n and set(per_step.values()) == {1}
        assert {r.saga_id for r in runs} == set(ids)
        assert "listening for wake-ups again" in worker.log
        assert worker.running()
        assert await worker.stop() == 0
    finally:
        await proxy.close()
