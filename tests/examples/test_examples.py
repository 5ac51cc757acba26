"""The examples run end to end on SQLite and PostgreSQL and keep a saga's promises: what
completed was done exactly once, what failed was undone (newest step first)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import DeclarativeBase

from examples import app as example_app
from examples import deploy_model, orders
from examples.app import ExampleApp, build_app
from examples.scenarios import (
    ScenarioResult,
    check_outcome,
    demo_scenarios,
    run_scenarios,
    summarize_history,
)
from saga_core import SagaStateMixin, SagaStatus

ROOT = Path(__file__).resolve().parents[2]

BACKENDS = [
    pytest.param("postgresql", id="pg", marks=pytest.mark.postgres),
    pytest.param("sqlite", id="sqlite"),
]


def fresh_model() -> type[SagaStateMixin]:
    """A saga model on a table of its own, so the test shares nothing with other tests."""

    class Base(DeclarativeBase):
        pass

    table = f"example_saga_{uuid.uuid4().hex[:10]}"
    model: type[SagaStateMixin] = type(
        "ExampleSaga", (SagaStateMixin, Base), {"__tablename__": table}
    )
    return model


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'examples.db'}"


@pytest.fixture
async def app(db_url: str) -> AsyncIterator[ExampleApp[Any]]:
    model = fresh_model()
    example = build_app(db_url, model_class=model)
    await example.orchestrator.create_tables()
    try:
        yield example
    finally:
        async with example.orchestrator.engine.sql_engine.begin() as conn:
            await conn.run_sync(model.__table__.drop)  # type: ignore[attr-defined]
        await example.aclose()


def lines_of(result: ScenarioResult) -> list[tuple[str, str, list[str]]]:
    return [
        (ln.phase, ln.step_id, ln.outcomes) for ln in summarize_history(result.saga.step_history)
    ]


async def test_demo_scenarios_keep_the_saga_promises(app: ExampleApp[Any]) -> None:
    results = await run_scenarios(app, demo_scenarios(app), deadline_s=30)
    by_key = {r.scenario.key: r for r in results}

    assert {k: r.status for k, r in by_key.items()} == {
        "order-1001": SagaStatus.COMPLETED,
        "order-1002": SagaStatus.COMPLETED,
        "order-1003": SagaStatus.COMPENSATED,
        "order-1004": SagaStatus.COMPENSATED,
        "sentiment-small:3": SagaStatus.COMPLETED,
        "vision-xl:2": SagaStatus.COMPENSATED,
    }
    failed = [c for c in check_outcome(app, results) if not c.ok]
    assert not failed, failed

    inv, pay, ship = app.orders.inventory, app.orders.payments, app.orders.shipping

    # The flaky gateway: 503, then a charge whose response was lost, then success. The
    # idempotency key is stable across retries, so the customer is charged exactly once.
    assert lines_of(by_key["order-1002"]) == [
        ("execute", "ReserveStock", ["SUCCESS"]),
        ("execute", "ChargePayment", ["ERROR", "ERROR", "SUCCESS"]),
        ("execute", "ShipOrder", ["SUCCESS"]),
    ]
    errors = [
        e["error_type"]
        for e in by_key["order-1002"].saga.step_history
        if e["step_id"] == "ChargePayment" and e["status"] == "ERROR"
    ]
    assert errors == ["GatewayUnavailable", "GatewayTimeout"]
    for order_id in ("order-1001", "order-1002"):
        charges = [c for c in pay.charges.values() if c.order_id == order_id]
        assert len(charges) == 1 and not charges[0].refunded
        assert [s.order_id for s in ship.shipments.values()].count(order_id) == 1

    # Shipping fails for good: refund, then release the stock (newest first).
    assert lines_of(by_key["order-1003"]) == [
        ("execute", "ReserveStock", ["SUCCESS"]),
        ("execute", "ChargePayment", ["SUCCESS"]),
        ("execute", "ShipOrder", ["ERROR", "ERROR"]),
        ("compensate", "ChargePayment", ["SUCCESS"]),
        ("compensate", "ReserveStock", ["SUCCESS"]),
    ]
    assert [c.refunded for c in pay.charges.values() if c.order_id == "order-1003"] == [True]
    assert inv.stock == {"KB-42": 10 - 2, "MOUSE-7": 5 - 1, "CABLE-1": 3}
    assert sorted(r.quantity for r in inv.reservations.values()) == [1, 2]

    # Out of stock: the first step fails, nothing to undo.
    assert lines_of(by_key["order-1004"]) == [("execute", "ReserveStock", ["ERROR"])]

    # Deployment: the GPU reservation and the weights staging run side by side after the
    # model check (a parallel saga), then the container is deployed and polled until healthy.
    healthy = lines_of(by_key["sentiment-small:3"])
    assert healthy[0] == ("execute", "CheckModel", ["SUCCESS"])
    assert sorted(healthy[1:3]) == [
        ("execute", "ReserveGpuQuota", ["SUCCESS"]),
        ("execute", "StageWeights", ["SUCCESS"]),
    ]
    assert healthy[3:] == [
        ("execute", "DeployContainer", ["SUCCESS"]),
        ("execute", "WaitForHealth", ["ERROR", "ERROR", "SUCCESS"]),
        ("execute", "PublishEndpoint", ["SUCCESS"]),
    ]
    # A hanging health probe times out on every poll; the rollback tears the container down,
    # then undoes the two branches newest first (by the order they finished).
    hung = by_key["vision-xl:2"]
    lines = lines_of(hung)
    assert lines[3:5] == [
        ("execute", "DeployContainer", ["SUCCESS"]),
        ("execute", "WaitForHealth", ["TIMEOUT"] * deploy_model.HEALTH_POLLS),
    ]
    finished = [ln[1] for ln in lines[1:3]]
    assert lines[5:] == [
        ("compensate", "DeployContainer", ["SUCCESS"]),
        ("compensate", finished[1], ["SUCCESS"]),
        ("compensate", finished[0], ["SUCCESS"]),
        ("compensate", "CheckModel", ["NOTHING_TO_COMPENSATE"]),
    ]
    assert app.deploy.cache.evicted == ["/cache/vision-xl/2"]
    assert list(app.deploy.cache.staged) == ["/cache/sentiment-small/3"]
    gpus = app.deploy.gpus
    assert gpus.in_use == 1 and list(gpus.released.values()) == [4]
    assert sorted(c.state for c in app.deploy.platform.containers.values()) == [
        "running",
        "torn_down",
    ]
    assert app.deploy.router.routes == {
        "sentiment": by_key["sentiment-small:3"].saga.context["step_outputs"]["DeployContainer"][
            "internal_url"
        ]
    }


async def test_factories_register_the_sagas(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'factories.db'}"  # a sync URL is turned into aiosqlite
    for factory, names in [
        (orders.make_orchestrator, ["orders"]),
        (deploy_model.make_orchestrator, ["deploy_model"]),
        (example_app.make_orchestrator, ["deploy_model", "orders"]),
    ]:
        orchestrator = factory(url)
        try:
            assert orchestrator.saga_names == names
            assert orchestrator.engine.table_name == "saga_state"
            await orchestrator.create_tables()
            assert orchestrator.engine.sql_engine.url.drivername == "sqlite+aiosqlite"
        finally:
            await orchestrator.engine.sql_engine.dispose()


def run_demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "examples", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_command_succeeds(tmp_path: Path) -> None:
    proc = run_demo(cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: every saga ended as expected" in proc.stdout
    assert "ChargePayment │ ERROR, ERROR, SUCCESS" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # the default database was temporary


def test_demo_command_fails_when_sagas_do_not_settle(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    # No time to run anything but the inline saga: the others never finish.
    proc = run_demo("--database-url", f"sqlite:///{db}", "--deadline", "0", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout
    assert db.exists()  # a database given by the user is kept


def test_demo_hints_work_as_typed(tmp_path: Path) -> None:
    """The demo's closing hint runs as printed, from a shell whose PATH has no virtualenv:
    sagactl by its path; without --database-url, the demo again, keeping its database."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "COLUMNS": "120",
        "NO_COLOR": "1",
        "PYTHONPATH": str(ROOT),
    }

    def run(command: list[str]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
        return proc

    demo = run([sys.executable, "-m", "examples"])
    hint = demo.stdout.splitlines()[-1].strip()
    assert hint == f"{sys.executable} -m examples --database-url sqlite:///saga-demo.db"
    again = run(["bash", "-c", hint])
    assert (tmp_path / "saga-demo.db").exists()
    hint = again.stdout.splitlines()[-1].strip()
    assert "Inspect them:" in again.stdout
    sagactl = Path(sys.executable).with_name("sagactl")
    assert hint == f"{sagactl} list --database-url sqlite+aiosqlite:///saga-demo.db"
    listed = run(["bash", "-c", hint])
    assert "showing 1-6 of 6" in listed.stderr and "deploy_model" in listed.stdout


def quickstart_program() -> tuple[str, str]:
    """The runnable program of README.md and the output it documents."""
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"```python\n(.*?asyncio\.run\(main\(\)\)\n)```(.*?)```text\n(.*?)```", text, re.S
    )
    assert match, "README.md lost its runnable program or its output block"
    return match.group(1), match.group(3)


def test_quickstart_program_prints_what_the_docs_say(tmp_path: Path) -> None:
    program, expected = quickstart_program()
    (tmp_path / "quickstart.py").write_text(program)
    for _ in range(2):  # a second run reuses the database file
        proc = subprocess.run(
            [sys.executable, "quickstart.py"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        got = [line.rstrip() for line in proc.stdout.splitlines()]
        assert got == expected.splitlines()
