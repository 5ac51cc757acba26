"""Plumbing of the fault tests: real ``sagad`` processes (the acceptance tests' factory),
a saga table for :mod:`chaos_app`, and the invariant checks run after a fault run.

The acceptance kit (``tests/acceptance/sagad_kit.py``) is reused for the sagad processes.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FAULTS_DIR = Path(__file__).resolve().parent
ACCEPT_DIR = FAULTS_DIR.parent / "acceptance"
for _p in (str(ACCEPT_DIR), str(FAULTS_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)


import chaos_app  # noqa: E402
from app_sagas import runs_ddl  # noqa: E402
from sagad_kit import Sagad, SagadFactory, wait_until  # noqa: E402, F401
from sqlalchemy import text  # noqa: E402
from tcpproxy import TcpProxy  # noqa: E402, F401  (re-exported for the fault tests)

TEST_APP_NAME = "chaos-test"
SETTLE_STALL_S = 60.0
"""After the faults, how long the sagas may go without one finishing before the rest count
as stuck (the workers make steady progress, slower on a loaded machine)."""
SETTLE_LIMIT_S = 900.0
"""A cap on the whole settling wait, however it progresses."""
TERMINAL = {"COMPLETED", "COMPENSATED", "ABORTED", "FAILED"}


def child_env(table: str, *, lease: float, **extra: str) -> dict[str, str]:
    """Environment of a sagad running ``chaos_app:make`` on ``table``."""
    return {
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(FAULTS_DIR), str(ACCEPT_DIR), os.environ.get("PYTHONPATH", "")) if p
        ),
        "CHAOS_TABLE": table,
        "CHAOS_LEASE": str(lease),
        **extra,
    }


async def wait_settled(
    unfinished: Callable[[], Awaitable[int]],
    *,
    stall: float = SETTLE_STALL_S,
    limit: float = SETTLE_LIMIT_S,
    interval: float = 0.25,
) -> int:
    """Poll ``unfinished()`` until it is 0, or until it has not gone down for ``stall``
    seconds (or ``limit`` in all); the last count (the caller reports those as stuck).

    A deadline on progress, not on the total: how long 2,000 sagas take depends on the
    machine, a stall does not."""
    start = moved = time.monotonic()
    fewest: int | None = None
    while True:
        left = await unfinished()
        now = time.monotonic()
        if left == 0:
            return 0
        if fewest is None or left < fewest:
            fewest, moved = left, now
        if now - moved > stall or now - start > limit:
            return left
        await asyncio.sleep(interval)


class FaultDb:
    """A fresh chaos table (and its ``_runs`` side table) seen through the test's own
    orchestrator (application_name ``chaos-test``: never a target of the faults)."""

    def __init__(self, url: str, *, lease: float = 2.0, table: str | None = None) -> None:
        self.url = url
        self.table = table or f"f_{uuid.uuid4().hex[:10]}"
        self.orch = chaos_app.build(url, table=self.table, lease=lease, app_name=TEST_APP_NAME)
        self.engine = self.orch.engine.sql_engine

    async def setup(self) -> None:
        await self.orch.create_tables()
        async with self.engine.begin() as conn:
            await conn.execute(text(runs_ddl("postgresql", self.table)))

    async def close(self) -> None:
        if os.environ.get("CHAOS_KEEP_TABLES"):
            print(f"\nkept tables {self.table}, {self.table}_runs in {self.url}")
            await self.engine.dispose()
            return
        async with self.engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE IF EXISTS {self.table}_runs"))
            await conn.execute(text(f"DROP TABLE IF EXISTS {self.table}"))
        await self.engine.dispose()

    async def start_many(self, items: list[tuple[str, dict[str, Any]]]) -> list[uuid.UUID]:
        ids: list[uuid.UUID] = []
        sem = asyncio.Semaphore(16)

        async def one(name: str, data: dict[str, Any]) -> None:
            async with sem:
                ids.append(
                    await self.orch.start(
                        saga_name=name, initial_data=data, aggregation_id=uuid.uuid4().hex
                    )
                )

        await asyncio.gather(*(one(n, d) for n, d in items))
        return ids

    async def fetch(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql.format(t=self.table)), params)).all())

    async def db_now(self) -> datetime:
        value: datetime = (await self.fetch("SELECT clock_timestamp()"))[0][0]
        return value

    async def status_counts(self) -> Counter[str]:
        rows = await self.fetch("SELECT status, count(*) FROM {t} GROUP BY status")
        return Counter({r[0]: int(r[1]) for r in rows})

    async def unfinished(self) -> int:
        counts = await self.status_counts()
        return sum(v for k, v in counts.items() if k not in TERMINAL)


@dataclass
class Report:
    sagas: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    stuck: int = 0
    concurrent: int = 0
    reexecutions: int = 0
    unexplained_reexecutions: int = 0
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    """History and runs of the first sagas with a problem."""
    _dumps: dict[Any, Any] = field(default_factory=dict, repr=False)

    def problem(self, saga_id: Any, what: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(f"{saga_id}: {what}")
        if saga_id not in self._dumps and len(self._dumps) < 3 and saga_id in self._all:
            self._dumps[saga_id] = True
            row, runs = self._all[saga_id]
            lines = [f"--- saga {saga_id}: {row.status} takeovers={row.takeover_count}"]
            for e in row.step_history or []:
                lines.append(
                    "  history "
                    + repr({k: v for k, v in e.items() if k not in ("input", "output")})
                )
            for r in runs:
                lines.append(
                    f"  run {r.step_id}/{r.phase} attempt={r.attempt} pid={r.pid} "
                    f"{r.started_at.time()}..{r.ended_at and r.ended_at.time()} {r.outcome}"
                )
            self.details.extend(lines)

    _all: dict[Any, Any] = field(default_factory=dict, repr=False)


STEPS = ("a", "b", "c")


async def _settled_sagas(
    rep: Report, db: FaultDb, saga_name: str, runs_db: FaultDb | None = None
) -> list[tuple[Any, list[dict[str, Any]], dict[str, Any], list[Any]]]:
    """Every saga named ``saga_name`` counted in ``rep``; those that ended COMPLETED or
    COMPENSATED as (row, history, plan, runs oldest first). One not finished is stuck; a
    FAILED one is quarantined or a problem."""
    rows = await db.fetch(
        "SELECT id, status, last_error, takeover_count, step_history, steps_state, context, "
        "lease_owner, deadline_at, clock_timestamp() AS db_now FROM {t} WHERE saga_name = :name",
        name=saga_name,
    )
    runs_by: dict[Any, list[Any]] = defaultdict(list)
    for r in await (runs_db or db).fetch(
        "SELECT saga_id, step_id, phase, attempt, pid, started_at, ended_at, outcome "
        "FROM {t}_runs ORDER BY started_at, id"
    ):
        runs_by[r.saga_id].append(r)
    out = []
    for row in rows:
        rep.sagas += 1
        rep.statuses[row.status] += 1
        runs = runs_by.get(row.id, [])
        rep._all[row.id] = (row, runs)
        if row.status not in TERMINAL:
            rep.stuck += 1
            rep.problem(
                row.id,
                f"not finished: {row.status} (lease_owner {row.lease_owner}, deadline_at "
                f"{row.deadline_at}, database time {row.db_now})",
            )
        elif row.status == "FAILED":
            if (row.last_error or "").startswith("quarantined:"):
                rep.quarantined += 1
            else:
                rep.problem(row.id, f"FAILED: {row.last_error or '(no reason)'}")
        else:
            plan = (row.context.get("initial_data") or {}).get("plan") or {}
            out.append((row, row.step_history or [], plan, runs))
    return out


async def check_invariants(
    db: FaultDb, kill_times: dict[int, datetime], runs_db: FaultDb | None = None
) -> Report:
    """Check every chaos saga against its runs and its history (see the test's docstring).

    ``kill_times``: pid of each SIGKILLed worker -> a database time just after it died (the
    end of any run of that pid left open)."""
    rep = Report()
    for row, history, plan, runs in await _settled_sagas(rep, db, "chaos", runs_db):
        sid = row.id
        # No two runs of this saga overlap (its steps run one at a time, each at most once at
        # a time); a run left open ended when its process was killed.
        last_end: datetime | None = None
        for r in runs:
            end = r.ended_at or kill_times.get(r.pid)
            if last_end is not None and r.started_at < last_end:
                rep.concurrent += 1
                rep.problem(sid, f"run of {r.step_id}/{r.phase} overlaps the previous run")
            if end is None:
                rep.problem(sid, f"run of {r.step_id}/{r.phase} by live pid {r.pid} never ended")
                end = datetime.max.replace(tzinfo=r.started_at.tzinfo)
            last_end = end if last_end is None else max(last_end, end)

        ok_exec = [s for s in STEPS if any(_ok(r, s, "execute") for r in runs)]
        planned_fail = next((s for s in STEPS if plan.get(s) == "always"), None)
        if row.status == "COMPLETED":
            if ok_exec != list(STEPS):
                rep.problem(sid, f"COMPLETED but only {ok_exec} succeeded")
            if planned_fail is not None:
                rep.problem(sid, f"COMPLETED although {planned_fail} always fails")
            if any(r.phase == "compensate" for r in runs):
                rep.problem(sid, "COMPLETED with compensation runs")
        elif row.status == "COMPENSATED":
            if planned_fail is None:
                rep.problem(sid, "COMPENSATED although no step always fails")
            done = list(STEPS[: STEPS.index(planned_fail)]) if planned_fail else []
            if ok_exec != done:
                rep.problem(sid, f"COMPENSATED: steps that succeeded {ok_exec} != {done}")
            last_comp = {
                s: max((r for r in runs if _ok(r, s, "compensate")), key=lambda r: r.started_at)
                for s in done
                if any(_ok(r, s, "compensate") for r in runs)
            }
            if set(last_comp) != set(done):
                rep.problem(sid, f"compensated {sorted(last_comp)}, completed {done}")
            elif any(
                last_comp[later].ended_at > last_comp[earlier].started_at
                for earlier, later in itertools.pairwise(done)
            ):
                rep.problem(sid, "compensations not newest first")
            if any(r.phase == "compensate" and r.step_id not in done for r in runs):
                rep.problem(sid, "a step that never completed was compensated")
            hist_comp = [
                e["step_id"]
                for e in history
                if e.get("phase") == "compensate" and e.get("status") == "SUCCESS"
            ]
            if hist_comp != list(reversed(done)):
                rep.problem(sid, f"history compensations {hist_comp} != {list(reversed(done))}")
        else:
            rep.problem(sid, f"unexpected status {row.status}")

        _check_reruns_and_history(rep, row, history, runs, ("INTERRUPTED",))
        succ = Counter(
            e["step_id"]
            for e in history
            if e.get("phase") == "execute" and e.get("status") == "SUCCESS"
        )
        if any(n != 1 for n in succ.values()) or sorted(succ) != ok_exec:
            rep.problem(sid, f"history successes {dict(succ)} vs runs {ok_exec}")
    return rep


_FAR = datetime.max.replace(tzinfo=UTC)
FORK_AFTER = {"a": (), "b": ("a",), "c": ("a",), "d": ("b", "c")}


async def check_fork_invariants(db: FaultDb, kill_times: dict[int, datetime]) -> Report:
    """The invariants of the parallel ``fork`` sagas (a -> (b, c) -> d): terminal; runs of one
    step never overlap (branches of a saga may); a step only ran after a successful run of
    each step it depends on had ended; no compensation overlapped an execution; COMPLETED
    exactly when every step succeeded; COMPENSATED with every succeeded step compensated,
    newest first by the order they finished; re-executions explained; history agrees."""
    rep = Report()
    for row, history, plan, runs in await _settled_sagas(rep, db, "fork"):
        sid = row.id

        def end_of(r: Any) -> datetime:
            return r.ended_at or kill_times.get(r.pid) or _FAR

        for r in runs:
            if end_of(r) is _FAR:
                rep.problem(sid, f"run of {r.step_id}/{r.phase} by live pid {r.pid} never ended")
        # Runs of one step (execute or compensate) never overlap.
        for step in FORK_AFTER:
            mine = [r for r in runs if r.step_id == step]
            for x, y in itertools.pairwise(mine):
                if y.started_at < end_of(x):
                    rep.concurrent += 1
                    rep.problem(sid, f"runs of {step} overlap")
        # A step ran only after every step it depends on had succeeded.
        for r in runs:
            if r.phase != "execute":
                continue
            for dep in FORK_AFTER[r.step_id]:
                if not any(_ok(d, dep, "execute") and end_of(d) <= r.started_at for d in runs):
                    rep.problem(sid, f"{r.step_id} ran before {dep} had succeeded")
        comps = [r for r in runs if r.phase == "compensate"]
        execs = [r for r in runs if r.phase == "execute"]
        if comps and execs:
            first_comp = min(r.started_at for r in comps)
            if any(end_of(r) > first_comp for r in execs):
                rep.concurrent += 1
                rep.problem(sid, "a compensation started while an execution still ran")
        succeeded = {
            e["step_id"]
            for e in history
            if e.get("phase") == "execute" and e.get("status") == "SUCCESS"
        }
        planned_fail = next((s for s in FORK_AFTER if plan.get(s) == "always"), None)
        if row.status == "COMPLETED":
            if succeeded != set(FORK_AFTER) or planned_fail is not None or comps:
                rep.problem(sid, f"COMPLETED: succeeded {sorted(succeeded)}, plan {plan}")
        elif row.status == "COMPENSATED":
            if planned_fail is None or planned_fail in succeeded or "d" in succeeded:
                rep.problem(sid, f"COMPENSATED: succeeded {sorted(succeeded)}, plan {plan}")
            seq = {s["step_id"]: int(s.get("seq") or 0) for s in row.steps_state}
            newest_first = sorted(succeeded, key=lambda s: -seq[s])
            hist_comp = [
                e["step_id"]
                for e in history
                if e.get("phase") == "compensate" and e.get("status") == "SUCCESS"
            ]
            if hist_comp != newest_first:
                rep.problem(sid, f"compensations {hist_comp} != newest first {newest_first}")
            last_comp = {
                s: max((r for r in comps if _ok(r, s, "compensate")), key=lambda r: r.started_at)
                for s in newest_first
                if any(_ok(r, s, "compensate") for r in comps)
            }
            if set(last_comp) != set(newest_first):
                rep.problem(sid, f"compensation runs {sorted(last_comp)} != {newest_first}")
            elif any(
                end_of(last_comp[a]) > last_comp[b].started_at
                for a, b in itertools.pairwise(newest_first)
            ):
                rep.problem(sid, "compensation runs not newest first")
            if any(r.step_id not in succeeded for r in comps):
                rep.problem(sid, "a step that never succeeded was compensated")
        else:
            rep.problem(sid, f"unexpected status {row.status}")
        # A cancelled branch is interrupted too: its attempt runs again.
        _check_reruns_and_history(rep, row, history, runs, ("INTERRUPTED", "CANCELLED"))
    return rep


def _check_reruns_and_history(
    rep: Report,
    row: Any,
    history: list[dict[str, Any]],
    runs: list[Any],
    interruptions: tuple[str, ...],
) -> None:
    """Re-executions (one attempt run more than once) only where a takeover or an
    interruption explains them; every outcome in history was a real run with that result."""
    sid = row.id
    per_attempt = Counter((r.step_id, r.phase, r.attempt) for r in runs)
    again = sum(n - 1 for n in per_attempt.values() if n > 1)
    if again:
        rep.reexecutions += again
        interrupted = any(e.get("status") in interruptions for e in history)
        if not (row.takeover_count > 0 or interrupted):
            rep.unexplained_reexecutions += again
            rep.problem(sid, f"{again} re-execution(s) without takeover or interruption")
    for e in history:
        if e.get("phase") not in ("execute", "compensate") or e.get("status") not in (
            "SUCCESS",
            "ERROR",
        ):
            continue  # INTERRUPTED, CANCELLED: a release, not a run's outcome
        want = "ok" if e.get("status") == "SUCCESS" else "error"
        if not any(
            r.step_id == e["step_id"]
            and r.phase == e["phase"]
            and r.attempt == e["attempt"]
            and r.outcome == want
            for r in runs
        ):
            rep.problem(sid, f"history entry {e['phase']}/{e['step_id']} has no such run")


def _ok(r: Any, step: str, phase: str) -> bool:
    return bool(r.step_id == step and r.phase == phase and r.outcome == "ok")
