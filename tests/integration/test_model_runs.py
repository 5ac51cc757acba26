"""Model-based test of the run layer (issue 11): a hypothesis ``RuleBasedStateMachine`` drives
sequential and parallel sagas on real PostgreSQL with two workers and checks the invariants
after every rule.

Sagas: sequential ``a -> ask -> c`` and parallel ``(ask, b) -> d``, each with or without a
timed wait (``_t``: the asking step waits at most ``WAIT_S``). ``ask`` hands out its token
and waits for an event named ``reply``; work steps retry a failure at once (in place), the
asking step after 0.4 s (a retry wait: the saga is released), compensations not at all.

Rules: start (queued or run inline by the caller); one or both workers claim, their wall
clock (``time.time``) jumped by an hour either way or not; plan failures of a step's next
execution or compensation; deliver a reply by token (the latest token handed out, the first,
an unknown one) or by name, late (between runs) or early (while the asking step runs, before
it waits), once or twice at the same time; drop a run mid-step (the worker crashes: nothing
of it reaches the database, its leases are left to expire, a fresh worker replaces it); run
steps longer than a lease while the other worker keeps claiming; operator retry, skip,
compensate, abort; let time pass (leases and retry waits end by the database clock); settle.

Checked after every rule:
- no two executions of one step of one saga overlap;
- every accepted event is taken by a step at most once (in ``events`` and in the history:
  ``RECEIVED`` unqueued or ``CONSUMED``) or dropped ``UNUSED``, never both; no other event is
  taken; of concurrent deliveries at most one is accepted;
- nothing stranded: RUNNING/COMPENSATING rows have a due time or a lease; a SUSPENDED row
  without a due time waits for an event and has no accepted event left pending; an ended
  saga (not FAILED) has none either; ``settle`` (time passing, both workers claiming) brings
  every saga to rest within a few rounds: ended, FAILED, or waiting for an event;
- history well-formed (phase, upper-case status, attempt, at) and bounded in bytes;
- an operator action changes the saga's ``step_execution_token`` (every token is spent);
- oracle (``SAGA_MODEL_NO_ORACLE=1`` leaves it out): a delivery by a live token of a pending
  asking step, or by name to a waiting or running one, with no accepted event pending, is
  accepted, early or late; one by an unknown token or a token an operator action spent is
  refused; an operator action is allowed exactly where SEMANTICS.md's table says.

``SAGA_MODEL_EXAMPLES`` (default 10) and ``SAGA_MODEL_STEPS`` (default 20) set the depth; the
default run takes 7 to 30 s here. Deep runs: ``SAGA_MODEL_EXAMPLES=200`` (about 6 min on 2
shared cores), with ``SAGA_MODEL_STEPS=50`` too (about 18 min).

What it found. On the code before this version's operator-token change it fails in two
steps: an operator action kept the tokens of steps not waiting for an event, so the
snapshot's token was unchanged and a late reply to an attempt the operator had overruled was
accepted (``test_attack_operator_tokens.py``). On the rebuilt run layer it finds nothing at
200 examples of 20 and of 50 steps, nor at 400 of 20. The draft it replaces passed there
too, but checked less: its oracle never expected a refusal nor looked at the token after an
action, it slept a whole lease for every "let a lease pass" (most of its run time), and most
of its "drop" rules crashed a worker with nothing to drop. Two model errors of the draft,
found by reading (its few deliveries never reached them), fixed here: the latest token
counted as live after an accepted event had spent it (a second delivery by it is rightly
refused), and events dropped ``UNUSED`` counted as pending forever (which turned the oracle
off for that saga).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from itkit import Harness, Num, Out, Worker, from_context
from regresskit import TERMINAL, Done, Seen, replies
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from saga_core import (
    BaseStep,
    FixedRetry,
    SagaBuilder,
    SagaStateError,
    current_step,
)
from saga_core.store import SagaRow
from saga_core.waits import Delivery

EXAMPLES = int(os.environ.get("SAGA_MODEL_EXAMPLES", "10"))
ORACLE = os.environ.get("SAGA_MODEL_NO_ORACLE", "") in ("", "0")
"""``SAGA_MODEL_NO_ORACLE=1`` checks the invariants only (to look past a known refusal)."""
STEPS = int(os.environ.get("SAGA_MODEL_STEPS", "20"))
LEASE = 1.0
HISTORY_BOUND = 300_000
PHASES = {"execute", "compensate", "event", "admin"}
_REAL_TIME = time.time


class Boom(Exception):
    """A step's planned failure (a rule marks how many executions of a step fail)."""


class World:
    """What the steps did: overlapping executions, tokens handed out, gates, planned
    failures."""

    def __init__(self) -> None:
        self.inflight: Counter[tuple[uuid.UUID, str]] = Counter()
        self.overlaps: list[str] = []
        self.tokens: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        self.gate: asyncio.Event | None = None
        """While set to an unset event, every step of ``gated`` waits for it (after
        recording); the other sagas run freely."""
        self.gated: uuid.UUID | None = None
        self.gate_all = False
        """The gate holds the steps of every saga."""
        self.any_started = asyncio.Event()
        self.started: dict[uuid.UUID, asyncio.Event] = defaultdict(asyncio.Event)
        self.asking: dict[uuid.UUID, asyncio.Event] = defaultdict(asyncio.Event)
        self.fail: Counter[tuple[uuid.UUID, str]] = Counter()
        """(saga, step) -> how many of its next executions fail; (saga, "undo:" + step):
        of its compensations."""

    async def enter(self, step_id: str) -> tuple[uuid.UUID, str]:
        ctx = current_step()
        key = (ctx.saga_id, step_id)
        self.inflight[key] += 1
        if self.inflight[key] > 1:
            self.overlaps.append(f"{key} by {ctx.worker}")
        self.started[ctx.saga_id].set()
        self.any_started.set()
        gate = self.gate
        if gate is not None and (self.gate_all or ctx.saga_id == self.gated):
            try:
                await gate.wait()
            except BaseException:
                self.inflight[key] -= 1
                raise
        return key

    def leave(self, key: tuple[uuid.UUID, str]) -> None:
        self.inflight[key] -= 1
        self.planned_failure(key)

    def planned_failure(self, key: tuple[uuid.UUID, str]) -> None:
        if self.fail[key] > 0:
            self.fail[key] -= 1
            raise Boom(f"planned failure of {key[1]}")


class ModelWork(BaseStep[Num, Out]):
    def __init__(self, world: World) -> None:
        self.world = world

    async def execute(self, inp: Num) -> Out:
        key = await self.world.enter(current_step().step_id)
        self.world.leave(key)
        return Out(n=inp.n + 1)

    async def compensate(self, inp: Num, out: Out) -> None:
        ctx = current_step()
        self.world.planned_failure((ctx.saga_id, f"undo:{ctx.step_id}"))


class ModelAsk(BaseStep[Seen, Done]):
    """Hands out its token, then (maybe after the gate, maybe failing) returns once a reply
    arrived, else waits for one, named ``reply`` (at most ``timeout`` seconds)."""

    def __init__(self, world: World, timeout: float | None = None) -> None:
        self.world = world
        self.timeout = timeout

    async def execute(self, inp: Seen) -> Done:
        ctx = current_step()
        self.world.tokens[ctx.saga_id].append(ctx.token)
        self.world.asking[ctx.saga_id].set()
        key = await self.world.enter(ctx.step_id)
        self.world.leave(key)
        if inp.replies:
            return Done(replies=inp.replies)
        ctx.wait_for_event(self.timeout, name="reply")

    async def compensate(self, inp: Seen, out: Done) -> None:
        return None


WORK_RETRY = FixedRetry(2, 0)
"""Work steps: a failure is retried at once, by the worker holding the saga (in place)."""
ASK_RETRY = FixedRetry(3, 0.4)
"""The asking step: a failure is retried after 0.4 s, longer than the workers'
``in_place_retry_max``: the saga is released, SUSPENDED and due then (a retry wait)."""
IN_PLACE_MAX = 0.2
WORK_STEPS = {"seq": ("a", "c"), "par": ("b", "d")}


WAIT_S = 0.6
"""The wait of the asking step of the ``_t`` definitions: a TIMEOUT is a failed attempt."""


def definitions(world: World) -> dict[str, Any]:
    """``seq``: a -> ask -> c; ``par``: (ask, b) -> d; ``seq_t``, ``par_t``: the same with a
    timed wait."""
    out = {}
    for timed in (False, True):
        suffix = "_t" if timed else ""
        timeout = WAIT_S if timed else None
        seq = SagaBuilder()
        seq.add_step(
            step=ModelWork(world), step_id="a", input_map=from_context, retry_policy=WORK_RETRY
        )
        seq.add_step(
            step=ModelAsk(world, timeout),
            step_id="ask",
            input_map=replies,
            retry_policy=ASK_RETRY,
        )
        seq.add_step(
            step=ModelWork(world), step_id="c", input_map=from_context, retry_policy=WORK_RETRY
        )
        par = SagaBuilder(parallel=True)
        ask = par.add_step(
            step=ModelAsk(world, timeout),
            step_id="ask",
            input_map=replies,
            retry_policy=ASK_RETRY,
        )
        b = par.add_step(
            step=ModelWork(world), step_id="b", input_map=from_context, retry_policy=WORK_RETRY
        )
        par.add_step(
            step=ModelWork(world),
            step_id="d",
            input_map=lambda x, y: Num(n=1),
            depends_on=[ask, b],
            retry_policy=WORK_RETRY,
        )
        out[f"seq{suffix}"] = seq.build()
        out[f"par{suffix}"] = par.build()
    return out


async def _first(task: asyncio.Task[Any], event: asyncio.Event, timeout: float = 1.5) -> None:
    """Until ``task`` ends or ``event`` is set (at most ``timeout`` seconds)."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


class SmallHarness(Harness):
    """The harness with small connection pools: an example holds at most three engines
    (two workers and the observer), each with at most 4 connections."""

    def sql_engine(self) -> AsyncEngine:
        assert self.url is not None
        return create_async_engine(self.url, pool_size=2, max_overflow=2)


PG_URL: list[str] = []


class Runs(RuleBasedStateMachine):
    sagas = Bundle("sagas")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.world = World()
        self.h = SmallHarness("postgresql", PG_URL[0])
        self.run(self.h.setup())
        for name, d in definitions(self.world).items():
            self.h.define(name, d)
        self.workers: list[Worker] = [self.run(self._worker()) for _ in range(2)]
        self.kind: dict[uuid.UUID, str] = {}
        self.timed: set[uuid.UUID] = set()
        self.timeouts: Counter[uuid.UUID] = Counter()
        """saga -> TIMEOUT entries of its asking step seen so far (each spends a token)."""
        self.accepted: dict[uuid.UUID, dict[str, int]] = defaultdict(dict)
        """saga -> accepted event id -> the event's number."""
        self.acted_after: dict[uuid.UUID, int] = {}
        """saga -> number of tokens handed out when an operator last acted on it: the
        tokens before that are spent."""
        # Model fix: the draft took the latest token as live after an accepted event had
        # spent it (the wait consumed an event: a second delivery is refused, rightly).
        self.spent_after: dict[uuid.UUID, int] = {}
        """saga -> number of tokens handed out when it last accepted an event (which spends
        the asking step's token once its step takes it)."""
        # Model fix: the draft counted events dropped UNUSED as pending forever.
        self.left: dict[uuid.UUID, int] = defaultdict(int)
        """saga -> accepted events neither consumed nor dropped (as of the last check)."""
        self.due_later = False
        """Some saga is due, or its lease ends, later (as of the last check)."""
        self.due_now = False
        """Some saga is due now (as of the last check)."""
        self.numbers = iter(range(1, 10**9))
        self.started_sagas: list[uuid.UUID] = []
        self.offset = 0.0
        time.time = lambda: _REAL_TIME() + self.offset

    async def _worker(self) -> Worker:
        return await self.h.worker(lease=LEASE, in_place_retry_max=IN_PLACE_MAX)

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def teardown(self) -> None:
        time.time = _REAL_TIME
        try:
            if self.world.gate is not None:
                self.world.gate.set()
            self.run(self.h.close())
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()

    # --- rules ----------------------------------------------------------------------------

    @rule(target=sagas, parallel=st.booleans(), timed=st.booleans(), inline=st.booleans())
    def start(self, parallel: bool, timed: bool, inline: bool) -> uuid.UUID:
        """Start a saga; ``timed``: its asking step waits at most ``WAIT_S``; ``inline``: the
        caller runs it until it completes or suspends."""
        kind = "par" if parallel else "seq"
        sid: uuid.UUID = self.run(
            self.workers[0].orch.start(
                saga_name=f"{kind}_t" if timed else kind,
                initial_data={"n": 1},
                aggregation_id=f"m-{uuid.uuid4().hex[:10]}",
                inline=inline,
            )
        )
        self.started_sagas.append(sid)
        self.kind[sid] = kind
        if timed:
            self.timed.add(sid)
        return sid

    @rule(
        which=st.sampled_from(["first", "second", "both"]),
        offset=st.sampled_from([0.0, 0.0, -3600.0, 3600.0]),
    )
    def claim(self, which: str, offset: float) -> None:
        """One or both workers claim what is due, with their wall clock (``time.time``)
        jumped by ``offset`` (the run layer must time everything by the database clock)."""
        chosen = {"first": self.workers[:1], "second": self.workers[1:], "both": self.workers}
        self.offset = offset

        async def claims() -> None:
            await asyncio.gather(*(w.orch.run_due() for w in chosen[which]))

        self.run(claims())

    @rule(saga=sagas, step=st.sampled_from(["ask", "work0", "work1", "undo0", "undo1"]))
    def fail_next(self, saga: uuid.UUID, step: str) -> None:
        """The next execution of a step of ``saga`` fails (after handing out its token, for
        the asking step), or the next compensation of a work step (``undo``: no retry, the
        saga is FAILED); marks add up, so enough of them exhaust a step's retries."""
        if step == "ask":
            key = "ask"
        else:
            key = WORK_STEPS[self.kind[saga]][int(step[-1])]
            key = f"undo:{key}" if step.startswith("undo") else key
        self.world.fail[(saga, key)] += 1

    # Deliveries are three rules (hypothesis picks among rules, not among arguments): by
    # token and by name between runs, and early, while the asking step runs. ``twice``: two
    # deliveries of the same form at once (a duplicate).

    @rule(saga=sagas, which=st.sampled_from(["latest", "first", "unknown"]), twice=st.booleans())
    def deliver_by_token(self, saga: uuid.UUID, which: str, twice: bool) -> None:
        self.run(self._deliver(saga, "token", which, twice, early=False))

    @rule(saga=sagas, twice=st.booleans())
    def deliver_by_name(self, saga: uuid.UUID, twice: bool) -> None:
        self.run(self._deliver(saga, "name", "latest", twice, early=False))

    @rule(
        saga=sagas,
        form=st.sampled_from(["token", "name"]),
        which=st.sampled_from(["latest", "first", "unknown"]),
        twice=st.booleans(),
    )
    def deliver_early(self, saga: uuid.UUID, form: str, which: str, twice: bool) -> None:
        self.run(self._deliver_early(saga, form, which, twice))

    async def _deliver_early(self, saga: uuid.UUID, form: str, which: str, twice: bool) -> None:
        """Run what is due with the steps of ``saga`` held at the gate; if its asking step
        starts, deliver while it runs (before it waits)."""
        w = self.workers[0]
        task = self._gated_run(w, saga)
        try:
            await self._reached(task, saga)
            if self.world.asking[saga].is_set():
                await self._deliver(saga, form, which, twice, early=True)
        finally:
            self._open_gate()
            await asyncio.wait_for(task, 20)

    def _gated_run(self, w: Worker, saga: uuid.UUID) -> asyncio.Task[int]:
        self.world.gate = asyncio.Event()
        self.world.gated = saga
        self.world.started[saga].clear()
        self.world.asking[saga].clear()
        return w.spawn(w.orch.run_due())

    def _open_gate(self) -> None:
        if self.world.gate is not None:
            self.world.gate.set()
        self.world.gate = None
        self.world.gated = None
        self.world.gate_all = False

    async def _reached(self, task: asyncio.Task[int], saga: uuid.UUID) -> None:
        """Until the asking step of ``saga`` is held at the gate, or another of its steps is
        (then its asking step does not run before the gate opens), or the run ends
        (``saga`` was not claimed, or ran no step)."""
        await _first(task, self.world.started[saga], timeout=5.0)
        if self.world.started[saga].is_set():
            # In a parallel saga the asking step may start just after its sibling.
            await _first(task, self.world.asking[saga], timeout=0.2)

    async def _expect(
        self, saga: uuid.UUID, form: str, which: str, token: uuid.UUID, early: bool
    ) -> bool | None:
        """What the contract says of this delivery: True (accepted), False (refused), None
        (the model does not know, e.g. while an accepted event is still pending)."""
        tokens = self.world.tokens.get(saga, [])
        acted = self.acted_after.get(saga, 0)
        if form == "token" and token not in tokens[acted:]:
            return False  # unknown, or spent by an operator action
        if self.left[saga] > 0:
            return None  # one event per wait: whether this one is for the same wait varies
        row = await self.h.row(saga)
        if row.phase != "execute" or row.status not in ("RUNNING", "SUSPENDED"):
            return None
        if saga in self.timed and row.context.get("waits"):
            return None  # a timed wait: it may end (TIMEOUT) as the delivery runs
        if form == "token":
            live = which == "latest" and len(tokens) > max(acted, self.spent_after.get(saga, 0))
            ask = next(s for s in row.steps_state if s["step_id"] == "ask")
            pending = ask.get("status") not in ("SUCCEEDED", "SKIPPED")
            return True if live and pending else None
        if early:
            return True  # the asking step runs (held): kept until it waits
        if row.status == "SUSPENDED" and row.deadline_at is None and row.lease_owner is None:
            return True  # it waits for the event (the only wait of this model)
        return None

    async def _deliver(
        self, saga: uuid.UUID, form: str, which: str, twice: bool, *, early: bool
    ) -> None:
        tokens = self.world.tokens.get(saga, [])
        if which == "unknown" or not tokens:
            token = uuid.uuid4()
        else:
            token = tokens[-1] if which == "latest" else tokens[0]
        expect = await self._expect(saga, form, which, token, early)
        row = await self.h.row(saga)
        numbers = [next(self.numbers) for _ in range(2 if twice else 1)]

        async def one(n: int) -> Delivery:
            event = {"kind": "reply", "n": n}
            if form == "token":
                return await self.h.observer.deliver(saga_id=saga, token=token, event=event)
            return await self.h.observer.deliver(
                aggregation_id=row.aggregation_id, event_name="reply", event=event
            )

        results = await asyncio.gather(*(one(n) for n in numbers))
        oks = [r for r in results if r.accepted]
        assert len(oks) <= 1, f"{len(oks)} of {len(results)} concurrent deliveries accepted"
        if ORACLE and expect is not None:
            reasons = [r.reason for r in results]
            assert bool(oks) == expect, (
                f"delivery by {form} ({which}, early={early}) to saga {saga}: expected "
                f"{'acceptance' if expect else 'refusal'}, got {reasons}"
            )
        for n, r in zip(numbers, results, strict=True):
            if r.accepted and r.saga_id == saga:
                assert r.event_id is not None
                self.accepted[saga][r.event_id] = n
                self.spent_after[saga] = len(tokens)
                self.left[saga] += 1

    @precondition(lambda self: self.due_now)
    @rule()
    def drop_mid_step(self) -> None:
        self.run(self._drop())

    async def _drop(self) -> None:
        """The first worker runs what is due, holding every step at the gate, and crashes
        as soon as one runs (or its run ends): nothing of its runs reaches the database any
        more, their leases are left to expire. A fresh worker replaces it."""
        w = self.workers[0]
        self.world.gate = asyncio.Event()
        self.world.gate_all = True
        self.world.any_started.clear()
        task = w.spawn(w.orch.run_due())
        await _first(task, self.world.any_started, timeout=5.0)
        w.crash()  # from here nothing of this worker reaches the database
        for t in w.tasks:
            t.cancel()
        await asyncio.gather(*w.tasks, return_exceptions=True)
        self._open_gate()
        self.h.workers.remove(w)
        assert w.sql is not None
        await w.sql.dispose()
        self.workers[0] = await self._worker()

    @precondition(lambda self: self.due_now)
    @rule()
    def long_step(self) -> None:
        """The first worker's steps run longer than a lease (it renews it) while the second
        worker keeps claiming: it must not get those sagas."""
        self.run(self._long_step())

    async def _long_step(self) -> None:
        w, other = self.workers
        self.world.gate = asyncio.Event()
        self.world.gate_all = True
        self.world.any_started.clear()
        task = w.spawn(w.orch.run_due())
        claims: list[asyncio.Task[int]] = []
        try:
            await _first(task, self.world.any_started, timeout=5.0)
            if self.world.any_started.is_set():
                end = time.monotonic() + LEASE * 1.5
                while time.monotonic() < end:
                    claims.append(other.spawn(other.orch.run_due()))
                    await asyncio.sleep(0.25)
        finally:
            self._open_gate()
            await asyncio.wait_for(asyncio.gather(task, *claims), 20)

    @rule(saga=sagas, action=st.sampled_from(["retry", "skip", "compensate", "abort"]))
    def operate(self, saga: uuid.UUID, action: str) -> None:
        self.run(self._operate(saga, action))

    async def _operate(self, saga: uuid.UUID, action: str) -> None:
        """An operator action, allowed or refused as SEMANTICS.md's table says; an allowed
        one spends every token handed out (the snapshot's token is new)."""
        admin = self.workers[1].admin
        before = await self.h.row(saga)
        now = await self.h.db_now()
        lease = before.deadline_at if before.lease_owner is not None else None
        allowed: bool | None = {
            "retry": before.status in ("SUSPENDED", "FAILED"),
            "skip": before.status in ("SUSPENDED", "FAILED"),
            "compensate": before.status in ("SUSPENDED", "FAILED")
            or (before.status == "RUNNING" and (lease is None or lease < now)),
            "abort": before.status not in TERMINAL,
        }[action]
        if lease is not None and abs((lease - now).total_seconds()) < 0.5:
            allowed = None  # a lease expiring as the action runs: either answer is right
        try:
            if action == "retry":
                snap = await admin.retry_step(saga, reason="model")
            elif action == "skip":
                mock = {"replies": 0, "n": 0} if before.phase == "execute" else None
                snap = await admin.skip_step(saga, mock_output=mock, reason="m")
            elif action == "compensate":
                snap = await admin.compensate_step(saga, reason="model")
            else:
                snap = await admin.abort(saga, reason="model")
        except SagaStateError as exc:
            assert not (ORACLE and allowed), f"{action} of a {before.status} saga refused: {exc}"
            return
        assert allowed is not False, f"{action} of a {before.status} saga was allowed"
        assert snap.step_execution_token != before.step_execution_token, (
            f"{action}: the saga's token did not change"
        )
        self.acted_after[saga] = len(self.world.tokens.get(saga, []))

    @precondition(lambda self: self.due_later)
    @rule()
    def let_time_pass(self) -> None:
        self.run(self._time_passes())

    async def _time_passes(self) -> bool:
        """Until every lease left by a dropped run and every retry wait has ended by the
        database clock (no live worker holds a saga between rules, and no wait has a
        timeout). A real wait, not a fake clock: the expiry is the database's. Returns at
        once (False) when nothing is due later."""
        rows = [await self.h.row(s) for s in self.started_sagas]
        ends = [r.deadline_at for r in rows if r.deadline_at is not None]
        now = await self.h.db_now()
        if not ends or max(ends) < now:
            return False
        until = max(ends)
        give_up = time.monotonic() + LEASE + 1.0
        while await self.h.db_now() <= until:
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(0.05)
        return True

    @precondition(lambda self: self.started_sagas)
    @rule()
    def settle(self) -> None:
        """Liveness: with time passing and both workers claiming, every saga comes to rest
        within a few rounds: ended, FAILED, or SUSPENDED waiting for an event (no due time).
        A saga still due after that is stuck in a loop, or was never picked up."""
        self.run(self._settle(), timeout=60.0)

    async def _settle(self) -> None:
        self.offset = 0.0
        for _ in range(10):
            later = await self._time_passes()
            claimed = await asyncio.gather(*(w.orch.run_due() for w in self.workers))
            if not later and not any(claimed):
                break
        for saga in self.started_sagas:
            row = await self.h.row(saga)
            resting = row.status in TERMINAL or (
                row.status == "SUSPENDED" and row.deadline_at is None
            )
            assert resting, f"saga {saga} does not settle: {row.status} due {row.deadline_at}"

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def holds(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        assert not self.world.overlaps, f"overlapping executions: {self.world.overlaps}"
        now = await self.h.db_now()
        self.due_later = self.due_now = False
        for saga in self.started_sagas:
            row = await self.h.row(saga)
            self.due_later = self.due_later or bool(row.deadline_at and row.deadline_at > now)
            self.due_now = self.due_now or bool(
                row.status in ("RUNNING", "SUSPENDED", "COMPENSATING")
                and row.deadline_at
                and row.deadline_at <= now
            )
            hist = row.step_history or []
            for e in hist:
                assert e.get("phase") in PHASES, e
                assert isinstance(e.get("status"), str) and e["status"].isupper(), e
                assert isinstance(e.get("attempt"), int), e
                datetime.fromisoformat(str(e["at"]))
            size = len(json.dumps(hist).encode())
            assert size < HISTORY_BOUND, f"history of {saga} is {size} bytes"
            self._check_events(saga, row, hist)
            if row.status in ("RUNNING", "COMPENSATING"):
                assert row.deadline_at is not None or row.lease_owner is not None, row
            if row.status == "SUSPENDED" and row.deadline_at is None:
                assert row.context.get("waits"), f"stranded: saga {saga} waits for nothing"
                assert self.left[saga] == 0, (
                    f"stranded: saga {saga} SUSPENDED with no due time and "
                    f"{self.left[saga]} accepted event(s) not consumed"
                )
            if row.status in TERMINAL - {"FAILED"}:
                assert self.left[saga] == 0, (
                    f"saga {saga} ended with {self.left[saga]} accepted event(s) lost"
                )

    def _check_events(self, saga: uuid.UUID, row: SagaRow, hist: list[dict[str, Any]]) -> None:
        """Every accepted event is taken by a step at most once (in ``events`` and in the
        history), or dropped as ``UNUSED``, never both; nothing else is taken."""
        accepted = self.accepted[saga]
        seen = [e.get("n") for e in row.context.get("events", []) if e.get("kind") == "reply"]
        assert all(c == 1 for c in Counter(seen).values()), f"consumed twice: {seen}"
        taken: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        for e in hist:
            if e.get("phase") != "event":
                continue
            eid = str(e.get("event_id"))
            if e["status"] == "CONSUMED" or (e["status"] == "RECEIVED" and not e.get("queued")):
                taken[eid] += 1
            elif e["status"] == "UNUSED":
                dropped[eid] += 1
        assert set(taken) | set(dropped) <= set(accepted), f"unknown events in {saga}'s history"
        assert all(c == 1 for c in (taken + dropped).values()), (
            f"an event of {saga} taken or dropped twice: {taken}, {dropped}"
        )
        assert sorted(seen) == sorted(accepted[e] for e in taken), (
            f"events of {saga}: {seen} in the context, {[accepted[e] for e in taken]} taken"
        )
        self.left[saga] = len(accepted) - len(taken) - len(dropped)
        timeouts = sum(1 for e in hist if e["status"] == "TIMEOUT" and e.get("step_id") == "ask")
        if timeouts > self.timeouts[saga]:
            # The wait's end spent the token (the model does not know exactly when; it
            # only abstains from expecting acceptance until a new token is handed out).
            self.timeouts[saga] = timeouts
            self.spent_after[saga] = len(self.world.tokens.get(saga, []))


Runs.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.postgres
def test_model_runs(pg_url: str) -> None:
    """The state machine above (issue 11's model-based test; a draft)."""
    PG_URL[:] = [pg_url]
    run_state_machine_as_test(Runs, settings=Runs.TestCase.settings)
