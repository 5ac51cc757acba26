"""Investigation test of issue 11, case 11 (c): a claim that commits but whose reply never
reaches ``sagad`` (it gives up after ``CLAIM_TIMEOUT_S``) must not leave the saga leased for a
whole lease and then count a recovery (a takeover) though nothing ran.

``sagad`` talks to PostgreSQL through :class:`holdproxy.HoldProxy`. Once it is warm (its claim
statements prepared: a claim is then one round trip, committed on arrival), the proxy holds
every answer the server sends it; a saga is started; sagad's next claim commits in the
database and its reply is held until sagad's claim timeout has passed; then traffic flows
again ("the database answers again"). The saga must run without a takeover, well before the
lease of the lost claim would have expired.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from holdproxy import HoldProxy
from regresskit_sagad import RegressDb, brief
from sagad_kit import SagadFactory, wait_until
from sqlalchemy.engine import make_url

from sagad.worker import CLAIM_TIMEOUT_S

LEASE = 30.0


async def _claimed(db: RegressDb, sid: uuid.UUID) -> bool:
    return (await db.row(sid)).lease_owner is not None


async def _claim_with_reply_held(db: RegressDb, proxy: HoldProxy) -> uuid.UUID:
    """Hold every answer to sagad and start a saga; its id once sagad's claim of it has
    committed (its reply held)."""
    for attempt in range(3):
        proxy.hold("down")
        sid = await db.orch.start(
            saga_name="seq", initial_data={}, aggregation_id=f"lost-claim-{attempt}"
        )
        try:
            await wait_until(
                functools.partial(_claimed, db, sid), timeout=5, what="sagad's claim to commit"
            )
            return sid
        except AssertionError:
            # The claim went out on a connection that had to prepare it first (its answer
            # held): let it through and try again with a fresh saga.
            proxy.release_all()
    raise AssertionError("could not make a claim commit with its reply held")


@pytest.fixture
async def regress_db(pg_url: str) -> AsyncIterator[RegressDb]:
    db = RegressDb(pg_url, lease=LEASE)
    await db.setup()
    try:
        yield db
    finally:
        await db.close()


async def test_case11c_a_claim_whose_reply_is_lost_is_undone(
    sagad: SagadFactory, regress_db: RegressDb
) -> None:
    """Issue 11 case 11 (c): the claim's reply is lost (held past sagad's claim timeout); once
    the database answers again the saga is released and run with no takeover counted, long
    before the lost claim's lease would have run out."""
    db = regress_db
    real = make_url(db.url)
    proxy = HoldProxy(real.host or "127.0.0.1", real.port or 5432)
    await proxy.restore()
    try:
        url = real.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        args = ["--app", "regress_app:make", "--database-url", url, "--concurrency", "2"]
        proc = sagad.start(*args, env=db.sagad_env())
        await proc.wait_ready()
        # Warm up: a few sagas run, so that sagad's pooled connections hold the prepared
        # claim statements.
        warm = [
            await db.orch.start(saga_name="seq", initial_data={}, aggregation_id=f"warm-{i}")
            for i in range(6)
        ]

        async def warm_done() -> bool:
            return all([(await db.row(s)).status == "COMPLETED" for s in warm])

        await wait_until(warm_done, timeout=30, what="the warm-up sagas")

        sid = await _claim_with_reply_held(db, proxy)
        row = await db.row(sid)
        assert row.deadline_at is not None
        lost_lease_ends = row.deadline_at

        async def gave_up() -> bool:
            return "claim failed" in proc.log

        await wait_until(gave_up, timeout=CLAIM_TIMEOUT_S + 15, what="sagad to give the claim up")
        proxy.release_all()

        async def completed() -> bool:
            return (await db.row(sid)).status == "COMPLETED"

        await wait_until(completed, timeout=LEASE + 20, what="the saga to complete")
        row = await db.row(sid)
        assert row.finished_at is not None
        # sagad gives a claim up after CLAIM_TIMEOUT_S (20 s) of a 30 s lease: released at its
        # next claim, the saga finishes seconds later, well before that lease would end.
        assert row.finished_at < lost_lease_ends - timedelta(seconds=3), (
            f"finished at {row.finished_at}, the lost claim's lease ran until "
            f"{lost_lease_ends}: the saga waited for it ({brief(row)})"
        )
        assert row.takeover_count == 0, f"a takeover was counted though nothing ran: {brief(row)}"
        assert row.recovery_count == 0, f"a recovery was counted though nothing ran: {brief(row)}"
        assert proc.running()
        assert await proc.stop() == 0
    finally:
        proxy.release_all()
        await proxy.close()
