"""``sagactl notify --aggregation-id X --event-name N``: delivery by correlation to a named
wait; refusals exit 4 saying why and are recorded; ``show`` renders them."""

from __future__ import annotations

import asyncio
import getpass
import uuid
from collections.abc import Callable

import pytest
from cli_app import build
from cli_helpers import CliFn, Run
from cli_seed import Seeded

from saga_core import SagaAdminSnapshot

GetSaga = Callable[..., SagaAdminSnapshot]


@pytest.fixture
def waiting(pg_url: str, seeded: Seeded) -> uuid.UUID:
    """A saga ``approval`` (aggregation id ``agg-approval``) waiting for event ``approval``."""

    async def start() -> uuid.UUID:
        orch = build(pg_url)
        try:
            return await orch.start(
                saga_name="approval", initial_data={}, aggregation_id="agg-approval", inline=True
            )
        finally:
            await orch.engine.sql_engine.dispose()

    return asyncio.run(start())


def by_name(cli: CliFn, name: str, *extra: str, agg: str = "agg-approval") -> Run:
    return cli("notify", "--aggregation-id", agg, "--event-name", name, *extra)


def test_notify_by_correlation_delivers(cli: CliFn, waiting: uuid.UUID, get_saga: GetSaga) -> None:
    before = get_saga(waiting)
    assert before.status.value == "SUSPENDED"
    assert [w["name"] for w in before.context["waits"].values()] == ["approval"]
    r = cli(
        "notify",
        "--aggregation-id",
        "agg-approval",
        "--event-name",
        "approval",
        "--event",
        '{"approved": true}',
        "-r",
        "approved by ops",
        "-y",
    )
    assert r.exit_code == 0, r.stderr
    assert "notified" in r.stdout and "SUSPENDED → RUNNING" in r.stdout
    after = get_saga(waiting)
    assert after.status.value == "RUNNING"
    assert after.context["latest_event"] == {"approved": True}
    entry = after.step_history[-1]
    assert (entry["status"], entry["event_name"], entry["reason"], entry["actor"]) == (
        "RECEIVED",
        "approval",
        "approved by ops",
        getpass.getuser(),
    )


def test_wrong_name_exits_4_and_is_recorded(
    cli: CliFn, waiting: uuid.UUID, get_saga: GetSaga
) -> None:
    before = get_saga(waiting)
    r = cli(
        "notify",
        "-a",
        "agg-approval",
        "--event-name",
        "payment",
        "-e",
        '{"paid": 1}',
        "-r",
        "try",
        "-y",
    )
    assert r.exit_code == 4
    assert "waiting for 'approval', not 'payment'" in r.stderr
    assert "recorded in its history" in r.stderr
    after = get_saga(waiting)
    assert after.status.value == "SUSPENDED"
    assert after.step_execution_token == before.step_execution_token
    assert after.context == before.context
    assert after.step_history[:-1] == before.step_history
    refusal = after.step_history[-1]
    assert (
        refusal["status"],
        refusal["event_name"],
        refusal["event_preview"],
        refusal["note"],
    ) == (
        "REFUSED",
        "payment",
        '{"paid":1}',
        "try",
    )

    r = cli("show", str(waiting))
    assert r.exit_code == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "REFUSED" in out and "refused: waiting for 'approval', not 'payment'" in out
    assert "by name 'approval'" in out, "the header says the wait can be notified by name"
    assert "for event 'approval'" in out, "the WAITING entry shows the name"


def test_no_active_saga_and_unknown_aggregation(
    cli: CliFn, seeded: Seeded, get_saga: GetSaga
) -> None:
    before = get_saga(seeded["completed"])
    r = by_name(cli, "approval", "-r", "x", "-y", agg="agg-completed")
    assert r.exit_code == 4
    assert "no active saga for aggregation_id 'agg-completed'" in r.stderr
    assert get_saga(seeded["completed"]).step_history == before.step_history
    r = by_name(cli, "approval", "-r", "x", "-y", agg="agg-nope")
    assert r.exit_code == 3


def test_dry_run_says_what_would_happen(cli: CliFn, waiting: uuid.UUID, get_saga: GetSaga) -> None:
    before = get_saga(waiting)
    r = by_name(cli, "approval", "--dry-run")
    assert r.exit_code == 0 and "would deliver" in r.stdout
    r = by_name(cli, "other", "--dry-run", "-o", "json")
    data = r.json()
    assert data["allowed"] is False and data["reason"] == "waiting for 'approval', not 'other'"
    assert get_saga(waiting).step_history == before.step_history


def test_bad_combinations_exit_2(cli: CliFn, waiting: uuid.UUID, get_saga: GetSaga) -> None:
    before = get_saga(waiting)
    tok = str(before.step_execution_token)
    for args in (
        ["notify", "-r", "x", "-y"],
        ["notify", str(waiting), "-r", "x", "-y"],
        ["notify", "--token", tok, "-r", "x", "-y"],
        ["notify", "-a", "agg-approval", "-r", "x", "-y"],
        ["notify", "--event-name", "approval", "-r", "x", "-y"],
        ["notify", str(waiting), "--token", tok, "-a", "agg-approval", "--event-name", "approval"],
        ["notify", "-a", "agg-approval", "--event-name", "", "-r", "x", "-y"],
    ):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
    assert get_saga(waiting).step_history == before.step_history
