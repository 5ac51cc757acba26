"""Attack 2 on main's worker-CPU changes: many concurrent sagas whose checkpoints travel in
shared batches (one autocommitted statement carrying one JSON document, or the array form
when a saga's output holds an integer orjson refuses), with the worker ``kill -9``-ed again
and again while batches are in flight. Every saga must complete with each step recorded
exactly once in its history (no record lost, none appended twice) and every output stored
as json would store it."""

from __future__ import annotations

import json
import signal
import uuid
from collections import Counter

import attack2_app
from sagad_kit import SagaDb, SagadFactory, wait_until

N = 240
ROUNDS = 3
LEASE = 1.5


async def test_attack2_kill9_while_checkpoint_batches_are_in_flight(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    args = [
        "--app",
        "attack2_app:make",
        "--database-url",
        saga_db.url,
        "--concurrency",
        "48",
        "--batch-size",
        "16",
    ]
    env = saga_db.sagad_env(lease=LEASE)
    steady = sagad.start(*args, env=env)
    await steady.wait_ready()

    orch = attack2_app.build(saga_db.url, table=saga_db.table, lease=LEASE)
    big = {i: i % 3 == 0 for i in range(N)}
    ids: dict[uuid.UUID, int] = {}
    try:
        per_round = N // ROUNDS
        for round_ in range(ROUNDS):
            victim = sagad.start(*args, env=env)
            await victim.wait_ready()
            for i in range(round_ * per_round, (round_ + 1) * per_round):
                # half without any work of their own: their checkpoints come back to back
                data = {"i": i, "big": big[i], "sleep": 0.0 if i % 2 else 0.15}
                sid = await orch.start(
                    saga_name="hostile", initial_data=data, aggregation_id=f"h-{i}", inline=False
                )
                ids[sid] = i

            async def victim_holds(victim_pid: int = victim.pid) -> bool:
                rows = await saga_db.fetch(
                    "SELECT count(*) FROM {t} WHERE lease_owner LIKE :p", p=f"%:{victim_pid}:%"
                )
                return rows[0][0] >= 5

            await wait_until(victim_holds, timeout=30, what=f"victim {round_} holding sagas")
            victim.proc.kill()
            assert await victim.wait_exit() == -signal.SIGKILL
        counts = await saga_db.wait_all({"COMPLETED"}, N, timeout=120)
        assert counts == {"COMPLETED": N}
        rows = await saga_db.fetch("SELECT id, context, step_history, takeover_count FROM {t}")
        taken = sum(1 for r in rows if r[3] > 0)
        for sid, ctx, hist, _ in rows:
            i = ids[sid]
            per_step = Counter(e["step_id"] for e in hist if e["status"] == "SUCCESS")
            assert per_step == {"a": 1, "b": 1, "c": 1}, (
                i,
                [(e["step_id"], e["status"]) for e in hist],
            )
            for step_id in "abc":
                want = json.loads(json.dumps(attack2_app.expected(step_id, i, big[i])))
                assert ctx["step_outputs"][step_id] == {"data": want}, (i, step_id)
        assert taken > 0, "no saga was taken over from a killed worker"
        assert steady.running()
    finally:
        await orch.engine.sql_engine.dispose()
