"""Plumbing of the event fault test (``test_chaos_events``): the deliverers that answer the
``evfork`` sagas' steps (see :mod:`chaos_events`), and the invariants checked afterwards.

The deliverers poll ``<table>_asks`` for tokens the steps handed out and answer each at once,
from several orchestrators of their own (each its own connection pool) concurrently,
sometimes twice or three times (duplicates, some of them late), by token or, for the named
wait, by ``aggregation_id`` + event name. Every delivery and its outcome is kept
(:class:`Sent`) for the checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chaos_events import EVENT_NAME, WAIT_STEPS
from faultkit import TERMINAL, FaultDb
from sqlalchemy import text

from saga_core import SagaOrchestrator

STEPS = ("a", "t", "n", "w", "d")
AFTER = {"a": (), "t": ("a",), "n": ("a",), "w": ("a",), "d": ("t", "n", "w")}
_FAR = datetime.max.replace(tzinfo=UTC)


@dataclass
class Sent:
    """One delivery and what came of it (``accepted`` None: it raised, see ``error``)."""

    saga_id: uuid.UUID
    step_id: str
    round: int
    token: uuid.UUID | None
    form: str
    sender: str
    eid: str
    accepted: bool | None = None
    queued: bool | None = None
    event_id: str | None = None
    reason: str | None = None
    error: str | None = None


class Deliverers:
    """Answers every ask in ``<table>_asks`` (see the module docstring)."""

    def __init__(self, db: FaultDb, orchs: list[SagaOrchestrator[Any]], rng: random.Random) -> None:
        self.db = db
        self.orchs = orchs
        self.rng = rng
        self.sent: list[Sent] = []
        self.asks = 0
        self.pending: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event, interval: float = 0.02) -> None:
        """Poll for asks until ``stop`` is set (then once more); wait for the deliveries."""
        while True:
            stopping = stop.is_set()
            for ask in await self._take():
                task = asyncio.create_task(self._answer(ask))
                self.pending.add(task)
                task.add_done_callback(self.pending.discard)
            if stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        while self.pending:
            await asyncio.gather(*list(self.pending))

    async def _take(self) -> list[Any]:
        async with self.db.engine.begin() as conn:
            rows = list(
                (
                    await conn.execute(
                        text(
                            f"UPDATE {self.db.table}_asks SET taken = true WHERE NOT taken "
                            "RETURNING saga_id, aggregation_id, step_id, round, token, name, "
                            "answer_after"
                        )
                    )
                ).all()
            )
        self.asks += len(rows)
        return rows

    async def _answer(self, ask: Any) -> None:
        rng = self.rng
        copies = rng.choice([1, 2, 2, 3])
        sends = []
        # At once (early: the step has not begun to wait yet) unless the saga's plan asks for
        # a late answer; duplicates at the same moment (concurrent) or a little later.
        first = float(ask.answer_after)
        for j in range(copies):
            form = "token" if ask.name is None else rng.choice(["token", "name"])
            delay = first if j == 0 or rng.random() < 0.5 else first + rng.uniform(0.05, 0.6)
            sends.append(self._send(ask, form, delay, j % len(self.orchs)))
        await asyncio.gather(*sends)

    async def _send(self, ask: Any, form: str, delay: float, which: int) -> None:
        if delay > 0:
            await asyncio.sleep(delay)  # a late duplicate (the scenario, not synchronisation)
        eid = uuid.uuid4().hex
        sender = f"test-{which}"
        event = {"step": ask.step_id, "round": ask.round, "eid": eid, "by": sender}
        s = Sent(ask.saga_id, ask.step_id, ask.round, ask.token, form, sender, eid)
        orch = self.orchs[which]
        try:
            if form == "token":
                got = await orch.deliver(saga_id=ask.saga_id, token=ask.token, event=event)
            else:
                got = await orch.deliver(
                    aggregation_id=ask.aggregation_id, event_name=EVENT_NAME, event=event
                )
            s.accepted, s.queued, s.event_id, s.reason = (
                got.accepted,
                got.queued,
                got.event_id,
                got.reason,
            )
        except Exception as exc:  # a delivery that raised is a finding
            s.error = f"{type(exc).__name__}: {exc}"[:500]
        self.sent.append(s)


@dataclass
class EvReport:
    sagas: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    stuck: int = 0
    stranded: int = 0
    """SUSPENDED with no due time at the end (waiting for an event that will never come)."""
    concurrent: int = 0
    stats: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    _dumped: set[Any] = field(default_factory=set, repr=False)

    def problem(self, row: Any, what: str) -> None:
        if len(self.problems) < 60:
            self.problems.append(f"{row.id}: {what}")
        if row.id not in self._dumped and len(self._dumped) < 3:
            self._dumped.add(row.id)
            self.details.append(
                f"--- saga {row.id}: {row.status} takeovers={row.takeover_count} "
                f"plan={(row.context.get('initial_data') or {})}"
            )
            for e in row.step_history or []:
                shown = {k: v for k, v in e.items() if k not in ("input", "output", "traceback")}
                self.details.append(f"  history {shown!r}")


def _by_saga(rows: list[Any]) -> dict[Any, list[Any]]:
    out: dict[Any, list[Any]] = defaultdict(list)
    for r in rows:
        out[r.saga_id].append(r)
    return out


async def check_event_sagas(
    db: FaultDb, kill_times: dict[int, datetime], sent: list[Sent]
) -> EvReport:
    """Check every ``evfork`` saga (the invariants are listed in ``test_chaos_events``)."""
    rep = EvReport()
    rows = await db.fetch(
        "SELECT id, status, last_error, takeover_count, step_history, context, inbox, "
        "deadline_at, lease_owner FROM {t} WHERE saga_name = 'evfork'"
    )
    runs = _by_saga(
        await db.fetch(
            "SELECT saga_id, step_id, phase, attempt, pid, started_at, ended_at, outcome "
            "FROM {t}_runs ORDER BY started_at, id"
        )
    )
    effects = _by_saga(
        await db.fetch("SELECT saga_id, key, step_id, phase, tries FROM {t}_effects")
    )
    asks = _by_saga(
        await db.fetch("SELECT saga_id, step_id, round, attempt, token, key FROM {t}_asks")
    )
    from_workers = [
        Sent(
            r.saga_id,
            r.step_id,
            r.round,
            r.token,
            r.form,
            r.sender,
            r.eid,
            r.accepted,
            r.queued,
            r.event_id,
            r.reason,
            r.error,
        )
        for r in await db.fetch(
            "SELECT saga_id, step_id, round, token, form, sender, eid, accepted, queued, "
            "event_id, reason, error FROM {t}_deliveries"
        )
    ]
    all_sent = _by_saga([*sent, *from_workers])
    for row in rows:
        rep.sagas += 1
        rep.statuses[row.status] += 1
        _check_status(rep, row)
        received = _check_events(rep, row)
        succeeded = _check_steps(rep, row)
        _check_effects(rep, row, succeeded, effects.get(row.id, []))
        _check_asks(rep, row, asks.get(row.id, []), effects.get(row.id, []))
        _check_sent(rep, row, all_sent.get(row.id, []), received)
        _check_dropped(rep, row, all_sent.get(row.id, []))
        _check_runs(rep, row, runs.get(row.id, []), kill_times)
    for s in [*sent, *from_workers]:
        rep.stats[f"sent_{s.form}"] += 1
        if s.accepted:
            rep.stats[f"accepted_{s.form}" + ("_queued" if s.queued else "")] += 1
        elif s.accepted is False:
            rep.stats["refused"] += 1
            reason = (s.reason or "").split(":")[0].split(" (")[0]
            rep.stats[f"refused: {reason[:40]}"] += 1
    return rep


def _plan(row: Any) -> dict[str, Any]:
    return dict((row.context.get("initial_data") or {}).get("plan") or {})


def _check_status(rep: EvReport, row: Any) -> None:
    always = any(v == "always" for v in _plan(row).values())
    if row.status not in TERMINAL:
        rep.stuck += 1
        if row.status == "SUSPENDED" and row.deadline_at is None:
            rep.stranded += 1
        rep.problem(
            row,
            f"not finished: {row.status} (deadline_at {row.deadline_at}, lease_owner "
            f"{row.lease_owner}, inbox {row.inbox})",
        )
    elif row.status == "COMPLETED" and always:
        rep.problem(row, "COMPLETED although a step always fails")
    elif row.status == "COMPENSATED" and not always:
        rep.problem(row, "COMPENSATED although no step always fails")
    elif row.status not in ("COMPLETED", "COMPENSATED"):
        rep.problem(row, f"{row.status}: {row.last_error}")
    if row.status in TERMINAL and row.inbox:
        rep.problem(row, f"events left in the inbox of a finished saga: {row.inbox}")


def _check_events(rep: EvReport, row: Any) -> dict[str, dict[str, Any]]:
    """Every accepted event (RECEIVED) consumed exactly once or recorded UNUSED; what was
    consumed is what the context holds, each event once, each for the step it names.
    Returns the RECEIVED entries by event id."""
    received: dict[str, dict[str, Any]] = {}
    fates: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    order: dict[str, int] = {}
    for i, e in enumerate(row.step_history or []):
        if e.get("phase") != "event":
            continue
        st, eid = e.get("status"), str(e.get("event_id"))
        if st == "RECEIVED":
            if eid in received:
                rep.problem(row, f"event {eid} RECEIVED twice")
            received[eid], order[eid] = e, i
        elif st in ("CONSUMED", "UNUSED"):
            fates[eid].append((i, e))
        if st == "UNUSED":
            rep.stats[f"history UNUSED: {str(e.get('reason'))[:40]}"] += 1
        elif st:
            rep.stats[f"history {st}" + ("(queued)" if e.get("queued") else "")] += 1
    consumed: list[tuple[str | None, dict[str, Any]]] = []
    for eid, e in received.items():
        fate = fates.pop(eid, [])
        if e.get("queued"):
            if len(fate) != 1:
                what = [f.get("status") for _, f in fate]
                rep.problem(row, f"queued event {eid}: {what} (exactly one CONSUMED or UNUSED)")
            for i, f in fate:
                if i < order[eid]:
                    rep.problem(row, f"event {eid} {f.get('status')} before it was RECEIVED")
                if f.get("status") == "CONSUMED":
                    consumed.append((f.get("step_id"), f.get("event") or {}))
        else:
            if fate:
                rep.problem(row, f"event {eid} consumed at once, then also {fate}")
            consumed.append((e.get("step_id"), e.get("event") or {}))
    for eid, fate in fates.items():
        rep.problem(row, f"{[f.get('status') for _, f in fate]} of event {eid} never RECEIVED")
    for step_id, ev in consumed:
        if ev.get("step") != step_id:
            rep.problem(row, f"event for step {ev.get('step')} consumed by step {step_id}")
    seen = row.context.get("events") or []
    per_eid = Counter(str(ev.get("eid")) for ev in seen)
    if any(n > 1 for n in per_eid.values()):
        rep.problem(row, f"an event is in the context more than once: {per_eid}")
    if set(per_eid) != {str(ev.get("eid")) for _, ev in consumed}:
        rep.problem(
            row,
            f"context events {sorted(per_eid)} != consumed "
            f"{sorted(str(ev.get('eid')) for _, ev in consumed)}",
        )
    per_round = Counter((ev.get("step"), ev.get("round")) for ev in seen)
    if any(n > 1 for n in per_round.values()):
        rep.problem(row, f"one wait consumed more than one event: {dict(per_round)}")
    return received


def _check_steps(rep: EvReport, row: Any) -> set[str]:
    """What succeeded agrees with the status, and each waiting step saw its rounds once."""
    history = row.step_history or []
    succ = Counter(
        e["step_id"]
        for e in history
        if e.get("phase") == "execute" and e.get("status") == "SUCCESS"
    )
    if any(n > 1 for n in succ.values()):
        rep.problem(row, f"a step succeeded more than once: {dict(succ)}")
    succeeded = set(succ)
    compensated = [
        e["step_id"]
        for e in history
        if e.get("phase") == "compensate" and e.get("status") == "SUCCESS"
    ]
    if row.status == "COMPLETED" and (succeeded != set(STEPS) or compensated):
        rep.problem(row, f"COMPLETED: succeeded {sorted(succeeded)}, compensated {compensated}")
    if row.status == "COMPENSATED" and (
        sorted(compensated) != sorted(succeeded) or "d" in succeeded
    ):
        rep.problem(row, f"COMPENSATED: succeeded {sorted(succeeded)}, compensated {compensated}")
    outputs = row.context.get("step_outputs") or {}
    rounds = int((row.context.get("initial_data") or {}).get("rounds", 1))
    for step in WAIT_STEPS:
        if step not in succeeded:
            continue
        want = list(range(1, (rounds if step == "t" else 1) + 1))
        got = (outputs.get(step) or {}).get("rounds")
        if got != want:
            rep.problem(row, f"step {step} saw the events of rounds {got}, not {want}")
    return succeeded


def _check_effects(rep: EvReport, row: Any, succeeded: set[str], effects: list[Any]) -> None:
    """Idempotent by key: one effect per step (and per compensation), its key the step's."""
    keys: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in effects:
        keys[(e.step_id, e.phase)].append(e.key)
        rep.stats["effects re-applied (same key)"] += e.tries - 1
    for (step, phase), ks in keys.items():
        if len(ks) > 1:
            rep.problem(row, f"side effect of {step}/{phase} applied under {len(ks)} keys: {ks}")
    history = row.step_history or []
    cancelled = {e.get("step_id") for e in history if e.get("status") == "CANCELLED"}
    outputs = row.context.get("step_outputs") or {}
    for step in STEPS:
        has = (step, "execute") in keys
        if step in succeeded:
            if not has:
                rep.problem(row, f"step {step} succeeded without its side effect")
            elif keys[(step, "execute")] != [(outputs.get(step) or {}).get("key")]:
                rep.problem(row, f"step {step}: effect key != its idempotency key")
        elif has:
            if step in cancelled:
                rep.stats["effects of cancelled branches"] += 1  # documented: not compensated
            else:
                rep.problem(
                    row, f"side effect of {step}, which neither succeeded nor was cancelled"
                )
    compensated = {
        e["step_id"]
        for e in history
        if e.get("phase") == "compensate" and e.get("status") == "SUCCESS"
    }
    for step in STEPS:
        if (step in compensated) != ((step, "compensate") in keys):
            rep.problem(row, f"compensation of {step}: history and side effect disagree")


def _check_asks(rep: EvReport, row: Any, asks: list[Any], effects: list[Any]) -> None:
    """A step's token is the same for every run of one wait (claims, takeovers, sibling
    retries, its own failed attempts) and a new one for the next wait; its idempotency key
    is the same throughout."""
    by_round: dict[tuple[str, int], set[Any]] = defaultdict(set)
    keys: dict[str, set[str]] = defaultdict(set)
    for a in asks:
        by_round[(a.step_id, a.round)].add(a.token)
        keys[a.step_id].add(a.key)
    rep.stats["asks"] += len(asks)
    for (step, rnd), tokens in by_round.items():
        if len(tokens) > 1:
            rep.problem(row, f"step {step} round {rnd} handed out {len(tokens)} tokens")
        if rnd > 1 and tokens & by_round.get((step, rnd - 1), set()):
            rep.problem(row, f"step {step}: round {rnd} reused the token of round {rnd - 1}")
    effect_keys = {e.step_id: e.key for e in effects if e.phase == "execute"}
    for step, ks in keys.items():
        if len(ks) > 1 or (step in effect_keys and ks != {effect_keys[step]}):
            rep.problem(row, f"step {step}: idempotency keys {ks} (effect {effect_keys.get(step)})")


def _check_sent(
    rep: EvReport, row: Any, sent: list[Sent], received: dict[str, dict[str, Any]]
) -> None:
    """Every accepted delivery is in the history; a token is accepted at most once; no
    delivery raised."""
    per_token: Counter[Any] = Counter()
    for s in sent:
        if s.error is not None:
            rep.problem(row, f"a delivery ({s.form}, {s.sender}) raised: {s.error}")
        if not s.accepted:
            continue
        if s.event_id not in received:
            rep.problem(row, f"accepted delivery {s.event_id} ({s.form}) not RECEIVED")
        if s.form == "token":
            per_token[s.token] += 1
    for token, n in per_token.items():
        if n > 1:
            rep.problem(row, f"{n} deliveries to token {token} accepted")


def _check_dropped(rep: EvReport, row: Any, sent: list[Sent]) -> None:
    """An accepted event is kept for its wait: none is dropped (UNUSED) while the wait it
    was sent to goes on and then consumes an event that came later."""
    wait_of = {s.event_id: (s.step_id, s.round) for s in sent if s.accepted}
    received_at: dict[str, int] = {}
    dropped: list[tuple[int, str, dict[str, Any]]] = []
    for i, e in enumerate(row.step_history or []):
        if e.get("phase") != "event":
            continue
        eid = str(e.get("event_id"))
        if e.get("status") == "RECEIVED":
            received_at[eid] = i
        elif e.get("status") == "UNUSED":
            dropped.append((i, eid, e))
    for i, eid, e in dropped:
        wait = wait_of.get(eid)
        if wait is None:
            continue  # sent from a worker killed before it recorded the delivery
        later = [
            other
            for other in row.context.get("events") or []
            if (other.get("step"), other.get("round")) == wait
            and received_at.get(_event_id(row, other), -1) > i
        ]
        if later:
            rep.problem(
                row,
                f"event {eid} for {wait} dropped ({e.get('reason')}), then the same wait "
                f"consumed one that came later",
            )


def _event_id(row: Any, event: dict[str, Any]) -> str:
    """The history's id of a consumed event (by the ``eid`` in it)."""
    for e in row.step_history or []:
        if e.get("status") in ("RECEIVED", "CONSUMED") and (e.get("event") or {}).get(
            "eid"
        ) == event.get("eid"):
            return str(e.get("event_id"))
    return ""


def _check_runs(rep: EvReport, row: Any, runs: list[Any], kill_times: dict[int, datetime]) -> None:
    """Runs of one step never overlap; a step ran only after the steps it depends on had
    succeeded; no compensation overlapped an execution."""

    def end_of(r: Any) -> datetime:
        return r.ended_at or kill_times.get(r.pid) or _FAR

    for r in runs:
        if end_of(r) is _FAR:
            rep.problem(row, f"run of {r.step_id}/{r.phase} by live pid {r.pid} never ended")
    for step in STEPS:
        mine = [r for r in runs if r.step_id == step]
        for i, y in enumerate(mine):
            if any(y.started_at < end_of(x) for x in mine[:i]):
                rep.concurrent += 1
                rep.problem(row, f"runs of {step} overlap")
    for r in runs:
        if r.phase != "execute":
            continue
        for dep in AFTER[r.step_id]:
            if not any(
                d.step_id == dep
                and d.phase == "execute"
                and d.outcome == "ok"
                and end_of(d) <= r.started_at
                for d in runs
            ):
                rep.problem(row, f"{r.step_id} ran before {dep} had succeeded")
    comps = [r.started_at for r in runs if r.phase == "compensate"]
    if comps and any(end_of(r) > min(comps) for r in runs if r.phase == "execute"):
        rep.concurrent += 1
        rep.problem(row, "a compensation started while an execution still ran")
