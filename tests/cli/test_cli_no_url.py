"""No database URL, no silent file: without ``--database-url``, ``SAGA_DATABASE_URL`` or a
config file naming one, ``sagactl`` says how to give it and creates nothing; a
configuration that names a SQLite file explicitly works as before, and so does an ``--app``
orchestrator with its own engine (``sagad``'s behaviour is unchanged)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import SAGACTL

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SAGAD = str(Path(sys.executable).with_name("sagad"))

APP = """
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from saga_core import BaseStep, SagaBuilder, SagaOrchestrator


class Empty(BaseModel):
    pass


class Noop(BaseStep[Empty, Empty]):
    async def execute(self, inp: Empty) -> Empty:
        return Empty()


orch = SagaOrchestrator(
    session_maker=async_sessionmaker(create_async_engine("sqlite+aiosqlite:///app.db"))
)
builder = SagaBuilder()
builder.add_step(step=Noop(), step_id="noop", input_map=lambda ctx: Empty())
orch.register("noop", builder.build())
"""


@pytest.fixture
def env() -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SAGA")}
    base["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
    base["COLUMNS"] = "160"
    return base


def run(
    cwd: Path, env: dict[str, str], *args: str, exe: str = SAGACTL
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [exe, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def says_how(text: str) -> None:
    assert "no database URL configured" in text
    for how in ("--database-url", "SAGA_DATABASE_URL", "config file", "--config FILE"):
        assert how in text, how


@pytest.mark.parametrize(
    "args", [["list"], ["db", "upgrade"], ["db", "status"], ["abort", "--status", "FAILED"]]
)
def test_no_url_is_a_usage_error_and_creates_nothing(
    tmp_path: Path, env: dict[str, str], args: list[str]
) -> None:
    r = run(tmp_path, env, *args, "--reason", "x", "--yes") if args[0] == "abort" else None
    r = r or run(tmp_path, env, *args)
    assert r.returncode == 2, r.stderr
    says_how(r.stderr)
    assert r.stdout == ""
    assert list(tmp_path.iterdir()) == [], "no stray ./saga.db"


def test_no_url_in_json_mode(tmp_path: Path, env: dict[str, str]) -> None:
    r = run(tmp_path, env, "-o", "json", "stats")
    assert r.returncode == 2
    err = json.loads(r.stderr)["error"]
    assert err["kind"] == "usage" and "SAGA_DATABASE_URL" in err["message"]
    assert list(tmp_path.iterdir()) == []


def test_an_explicit_sqlite_file_is_fine(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "sagactl.toml").write_text('database_url = "sqlite+aiosqlite:///ops.db"\n')
    r = run(tmp_path, env, "--config", "sagactl.toml", "db", "upgrade")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "ops.db").exists() and not (tmp_path / "saga.db").exists()
    r = run(tmp_path, env, "--config", "sagactl.toml", "-o", "json", "list")
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 0
    # The default file name too, when someone names it.
    r = run(tmp_path, {**env, "SAGA_DATABASE_URL": "sqlite+aiosqlite:///saga.db"}, "db", "upgrade")
    assert r.returncode == 0 and (tmp_path / "saga.db").exists()


def test_app_factory_needs_the_url(tmp_path: Path, env: dict[str, str]) -> None:
    r = run(tmp_path, env, "--app", "cli_app:build", "list")
    assert r.returncode == 2
    assert "--app cli_app:build is a factory that takes the database URL" in r.stderr
    says_how(r.stderr)
    assert list(tmp_path.iterdir()) == []


def test_app_object_uses_its_own_database_in_sagactl_and_sagad(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (tmp_path / "myapp.py").write_text(APP)
    r = run(tmp_path, env, "--app", "myapp:orch", "db", "upgrade")
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, env, "--app", "myapp:orch", "-o", "json", "list")
    assert r.returncode == 0 and json.loads(r.stdout)["total"] == 0, r.stderr
    assert (tmp_path / "app.db").exists() and not (tmp_path / "saga.db").exists()
    r = run(tmp_path, env, "check", "--app", "myapp:orch", exe=SAGAD)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "saga.db").exists()
