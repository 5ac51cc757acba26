"""Stored text is shown literally in every view of the real ``sagactl``: rich markup,
ANSI and OSC 8 escape sequences, control characters, bidi overrides, emoji codes and very
long text in a saga's name, aggregation id, error, history (reason, actor, event, event
name, worker) and in the worker registry neither break a view nor act on the terminal.

The sagas are made through the public API (a saga name, an aggregation id, a step's
exception, an event delivered and one refused, a worker id); colour is forced on
(``--color always``), as on a terminal."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from cli_helpers import SAGACTL
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import (
    BaseStep,
    InputContext,
    NoRetry,
    SagaBuilder,
    SagaOrchestrator,
    current_step,
)

MARKUP = "[/][link=http://evil.example/x]click[/link][bold red]BOOM"
ANSI_RED = "\x1b[31mred\x1b[0m"
OSC8 = "\x1b]8;;http://evil.example/o\x1b\\osc\x1b]8;;\x1b\\"
BIDI = "\u202eevil\u202c"
CONTROLS = "\x07\x08\r\x9b2J\x7f"
EMOJI = ":smile:"


def hostile(tag: str) -> str:
    return f"{tag}{MARKUP} {ANSI_RED} {OSC8} {BIDI} {CONTROLS} {EMOJI}"


def short(tag: str) -> str:
    """For the worker registry's 50-character columns."""
    return f"{tag}[/][link=http://e.x]k[/link] \x1b[31mred\x1b]8;;h\x07 \u202ev"


NAME = hostile("N")
AGG_FAILED = hostile("A1")
AGG_WAITING = hostile("A2")
EVENT_NAME = hostile("V")
ERROR = hostile("E") + " " + "long error " * 2000
REASON = hostile("R")
ACTOR = hostile("U")
PAYLOAD = hostile("P")
WORKER = short("W")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
"""The colour and cursor sequences rich itself writes (stripped to read the text)."""


class In(BaseModel):
    go: bool = False


class Out(BaseModel):
    ok: bool


class Wait(BaseStep[In, Out]):
    async def execute(self, inp: In) -> Out:
        if not inp.go:
            current_step().wait_for_event(name=EVENT_NAME)
        return Out(ok=True)


class Boom(BaseStep[In, Out]):
    async def execute(self, inp: In) -> Out:
        raise RuntimeError(ERROR)


def wait_input(ctx: InputContext) -> dict[str, Any]:
    return {"go": ctx.latest_event is not None}


@dataclass(frozen=True)
class Hostile:
    failed: uuid.UUID
    waiting: uuid.UUID


async def _seed(url: str) -> Hostile:
    engine = create_async_engine(url)
    orch: SagaOrchestrator[Any] = SagaOrchestrator(
        session_maker=async_sessionmaker(engine), worker_id=WORKER
    )
    b = SagaBuilder(compensate_on_failure=False)
    b.add_step(step=Wait(), input_map=wait_input, step_id="wait")
    b.add_step(step=Boom(), input_map=wait_input, step_id="boom", retry_policy=NoRetry())
    orch.register(NAME, b.build())
    try:
        await orch.create_tables()
        async with engine.begin() as conn:
            await conn.execute(text("TRUNCATE saga_state, saga_workers"))
        failed = await orch.start(
            saga_name=NAME, initial_data={}, aggregation_id=AGG_FAILED, inline=True
        )
        waiting = await orch.start(
            saga_name=NAME, initial_data={}, aggregation_id=AGG_WAITING, inline=True
        )
        # A refused delivery (wrong event name) and an accepted one, by a hostile actor.
        refused = await orch.deliver(
            aggregation_id=AGG_FAILED, event_name="other", event={"p": PAYLOAD}, actor=ACTOR
        )
        assert not refused.accepted
        delivered = await orch.deliver(
            aggregation_id=AGG_FAILED,
            event_name=EVENT_NAME,
            event={"p": PAYLOAD},
            actor=ACTOR,
            reason=REASON,
        )
        assert delivered.accepted
        while await orch.run_due():
            pass
        assert (await orch.get_snapshot(failed)).status.value == "FAILED"
        assert (await orch.get_snapshot(waiting)).status.value == "SUSPENDED"
        await orch.engine.store.worker_heartbeat(
            {
                "id": WORKER,
                "host": short("H"),
                "pid": 7,
                "version": short("X"),
                "in_flight": 0,
                "concurrency": 4,
                "saga_names": [NAME],
                "saga_versions": {"saga_state": {NAME: [2]}},
                "info": {"note": PAYLOAD},
            }
        )
        return Hostile(failed, waiting)
    finally:
        await engine.dispose()


@pytest.fixture
def hostile_sagas(pg_url: str) -> Hostile:
    return asyncio.run(_seed(pg_url))


def sagactl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGACTL, "--color", "always", *args],
        env={**env, "COLUMNS": "250"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_inert(raw: str, *, live: bool = False) -> str:
    """``raw`` carries no sequence from stored text; returns it without rich's own colour."""
    assert "\x1b]" not in raw, "an OSC sequence (hyperlink, title) from stored text"
    assert ANSI_RED not in raw and "\x1b[31mred" not in raw
    for ch in ("\u202e", "\u202c", "\x07", "\x08", "\x9b", "\x7f"):
        assert ch not in raw, repr(ch)
    if not live:  # rich Live moves the cursor with CR itself
        assert "\r" not in raw
    shown = ANSI.sub("", raw)
    assert "\x1b" not in shown, "an escape sequence rich did not write"
    assert "😄" not in shown, "an emoji code was replaced"
    return shown


def assert_literal(shown: str, *, whole: bool = True) -> None:
    """The hostile text reads as stored (escaped where it would act on the terminal)."""
    assert "[/][link=http://evil.example/x]click" in shown
    if whole:
        assert MARKUP in shown
        assert "\\x1b[31mred\\x1b[0m" in shown
        assert "\\x1b]8;;http://evil.example/o\\x1b\\osc" in shown
        assert "\\u202eevil\\u202c" in shown
        assert "\\x07\\x08\\x0d\\x9b2J\\x7f" in shown
        assert EMOJI in shown


def test_every_view_shows_stored_text_literally(
    subprocess_env: dict[str, str], hostile_sagas: Hostile
) -> None:
    env = subprocess_env
    failed, waiting = str(hostile_sagas.failed), str(hostile_sagas.waiting)

    def ok(*args: str, live: bool = False, code: int = 0) -> tuple[str, str]:
        r = sagactl(env, *args)
        assert r.returncode == code, (args, r.stdout[-2000:], r.stderr[-2000:])
        return assert_inert(r.stdout, live=live), assert_inert(r.stderr)

    out, _ = ok("list")
    assert failed[:8] in out and waiting[:8] in out
    assert_literal(out, whole=False)  # names and errors are cut to the column

    out, _ = ok("show", failed, "--context", "--history")
    assert_literal(out)
    for tag in ("N", "A1", "E", "R", "U", "P"):
        assert tag + "[/][link=" in out, tag
    assert "W[/][link=http://e.x]k[/link]" in out  # the worker in the history
    assert "more characters: -o json" in out  # the long error is cut in the header
    assert "REFUSED" in out and "boom" in out and "FAILED" in out

    out, _ = ok("show", "--aggregation-id", AGG_WAITING)
    assert waiting in out and "waiting for an event" in out
    assert_literal(out)  # the event name the wait is for, the aggregation id

    out, _ = ok("watch", "--count", "1", live=True)
    assert failed[:8] in out
    assert_literal(out, whole=False)

    out, _ = ok("stats")
    assert_literal(out, whole=False)
    out, _ = ok("workers")
    assert "H[/][link=http://e.x]k[/link] \\x1b[31mred\\x1b]8;;h\\x07 \\u202ev" in out
    out, err = ok("orphans", "--ids")
    assert waiting in out and "(name, version) group" in err
    assert_literal(out, whole=False)

    # Action results and dry runs name the saga.
    out, err = ok("retry", failed, "--dry-run")
    assert "dry run: would retry" in out
    assert_literal(out)
    out, err = ok(
        "notify", "--aggregation-id", AGG_WAITING, "--event-name", EVENT_NAME, "--dry-run"
    )
    assert "would deliver" in out
    assert_literal(out)

    # Error messages printed through rich quote what was typed or stored.
    _, err = ok("show", "--aggregation-id", hostile("Z"), code=3)
    assert "no saga with aggregation id" in err and MARKUP in err  # quoted as a repr
    _, err = ok("list", "--name", hostile("Q"))
    assert "no sagas match" in err
    assert_literal(err)
    _, err = ok("abort", failed, "--reason", hostile("S"), "--yes")
    assert "aborted" in ANSI.sub("", sagactl(env, "show", failed).stdout)
    out, _ = ok("show", failed)
    assert "S[/][link=http://evil.example/x]click" in out  # the operator's reason


def test_json_keeps_stored_text_exact_and_inert(
    subprocess_env: dict[str, str], hostile_sagas: Hostile
) -> None:
    """JSON carries the stored text exactly (as parsed) with nothing raw that a terminal
    would act on: json.dumps escapes C0 controls; DEL, C1 and bidi characters too."""
    env = subprocess_env
    for args in (
        ("list", "-o", "json"),
        ("show", str(hostile_sagas.failed), "-o", "json"),
        ("workers", "-o", "json"),
        ("watch", "-o", "jsonl", "--count", "1"),
        ("show", "--aggregation-id", AGG_FAILED, "--all", "-o", "jsonl"),
    ):
        r = sagactl(env, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert_inert(r.stdout)
        docs = (
            [json.loads(line) for line in r.stdout.splitlines()]
            if "jsonl" in args
            else [json.loads(r.stdout)]
        )
        assert docs
    saga = json.loads(sagactl(env, "show", str(hostile_sagas.failed), "-o", "json").stdout)
    assert saga["saga_name"] == NAME and saga["aggregation_id"] == AGG_FAILED
    assert saga["last_error"].startswith("RuntimeError: " + hostile("E"))
    received = next(e for e in saga["step_history"] if e.get("status") == "RECEIVED")
    assert received["actor"] == ACTOR and received["reason"] == REASON
    assert received["event"] == {"p": PAYLOAD} and received["event_name"] == EVENT_NAME
