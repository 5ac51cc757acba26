"""db upgrade/status, --table, --app selection, settings sources and password masking."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cli_app import OrderSaga
from cli_helpers import CliFn, invoke
from cli_seed import seed
from sqlalchemy.engine import make_url


def test_db_status_and_upgrade_on_a_new_table(cli: CliFn) -> None:
    r = cli("db", "status", "--table", "cli_db_fresh")
    assert r.exit_code == 1
    assert "does not match" in r.stdout and "sagactl db upgrade" in r.stdout
    data = cli("db", "status", "--table", "cli_db_fresh", "-o", "json").json()
    assert data["up_to_date"] is False and data["tables"]["cli_db_fresh"]["exists"] is False
    assert data["expected_version"] >= 1
    r = cli("db", "upgrade", "--table", "cli_db_fresh")
    assert r.exit_code == 0, r.stderr
    assert "created table cli_db_fresh" in r.stdout and "database matches" in r.stdout
    data = cli("db", "upgrade", "--table", "cli_db_fresh", "-o", "json").json()
    assert data["changes"] == [] and data["up_to_date"] is True
    assert cli("db", "status", "--table", "cli_db_fresh").exit_code == 0
    assert cli("list", "--table", "cli_db_fresh", "-o", "json").json()["total"] == 0


def test_missing_table_explains_the_fix(cli: CliFn) -> None:
    r = cli("list", "--table", "cli_never_created")
    assert r.exit_code == 1 and "sagactl db upgrade" in r.stderr


def test_other_table_and_app_selection(cli: CliFn, pg_url: str) -> None:
    seeded = asyncio.run(seed(pg_url, model=OrderSaga))
    data = cli("list", "--table", "cli_orders", "-o", "json").json()
    assert data["total"] == 8
    assert str(seeded["failed"]) in {s["id"] for s in data["sagas"]}
    # The only orchestrator of --app is used when no table is named ...
    r = cli(
        "--app",
        "cli_app:build_orders",
        "skip",
        str(seeded["suspended"]),
        "--output",
        '{"charge_id": "c", "amount": 1}',
        "-r",
        "x",
        "-y",
    )
    assert r.exit_code == 0, r.stderr
    # ... and a named table must match one of them.
    r = cli("--app", "cli_app:build", "--table", "cli_orders", "list")
    assert r.exit_code == 2 and "no orchestrator of --app works on table 'cli_orders'" in r.stderr
    r = cli("--app", "cli_app:nothing_here", "list")
    assert r.exit_code == 2 and "has no attribute" in r.stderr
    r = cli("--app", "no_such_module_xyz:app", "list")
    assert r.exit_code == 2 and "cannot import" in r.stderr


def test_sqlite_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sagas.db'}"
    assert invoke(["db", "status", "--database-url", url]).exit_code == 1
    r = invoke(["db", "upgrade", "--database-url", url])
    assert r.exit_code == 0, r.stderr
    assert invoke(["list", "--database-url", url, "-o", "json"]).json()["total"] == 0
    assert invoke(["stats", "--database-url", url, "-o", "json"]).json()["total"] == 0


def test_settings_sources_flag_env_toml(tmp_path: Path, pg_url: str) -> None:
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    cfg = tmp_path / "saga.toml"
    cfg.write_text(f'[sagad]\ndatabase_url = "{pg_url}"\n')
    # TOML alone.
    assert invoke(["--config", str(cfg), "db", "upgrade", "-o", "json"]).exit_code == 0
    # The environment beats TOML; the flag beats the environment.
    env = {"SAGA_DATABASE_URL": unreachable}
    assert invoke(["db", "status", "--config", str(cfg)], env=env).exit_code == 6
    r = invoke(["db", "status", "--config", str(cfg), "--database-url", pg_url], env=env)
    assert r.exit_code == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('database_url = "mysql://x/y"\nconcurrency = 0\n')
    r = invoke(["--config", str(bad), "list"])
    assert r.exit_code == 2 and "database_url" in r.stderr and "concurrency" in r.stderr
    r = invoke(["--config", str(tmp_path / "missing.toml"), "list"])
    assert r.exit_code == 2 and "not found" in r.stderr


def test_passwords_are_masked(pg_url: str) -> None:
    # Trust authentication ignores the password, so the URL still connects.
    with_password = make_url(pg_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    for fmt in ("text", "json"):
        r = invoke(["db", "status", "--database-url", with_password, "-o", fmt])
        assert r.exit_code in (0, 1)
        assert "s3cret-pw" not in r.stdout + r.stderr
        assert "***" in r.stdout + r.stderr
    down = "postgresql+asyncpg://postgres:s3cret-pw@127.0.0.1:1/x"
    for fmt in ("text", "json"):
        r = invoke(["list", "--database-url", down, "-o", fmt])
        assert r.exit_code == 6
        assert "s3cret-pw" not in r.stdout + r.stderr and "unreachable" in r.stderr
