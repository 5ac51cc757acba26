"""``sagad`` as an operator meets it: systemd notify, logs, exit codes, ``sagad check``,
SIGHUP, metrics, and the single-worker rule of SQLite."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sqlite3
import tempfile
import urllib.request
from pathlib import Path

import app_sagas
import pytest
from sagad_kit import NotifySocket, SagaDb, SagadFactory, wait_until

from saga_core.settings import SagaSettings, load_settings

EXIT_UNAVAILABLE = 75
EXIT_CONFIG = 78


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


async def test_notify_socket_ready_watchdog_stopping_and_json_logs(
    sagad: SagadFactory, saga_db: SagaDb
) -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        notify = NotifySocket(str(Path(d) / "notify.sock"))  # a path, as systemd uses
        worker = sagad.start(
            *saga_db.sagad_args("--log-format", "json"),
            env={**saga_db.sagad_env(lease=5), "WATCHDOG_USEC": "400000"},
            notify=notify,
        )
        await worker.wait_ready()
        await worker.wait_message("WATCHDOG=1", timeout=10)
        await saga_db.start("trivial", 3)
        await saga_db.wait_all({"COMPLETED"}, 3, timeout=30)
        worker.signal(signal.SIGTERM)
        await worker.wait_message("STOPPING=1", timeout=10)
        assert await worker.wait_exit() == 0
        messages = notify.poll()
        assert messages.index("READY=1") < messages.index("STOPPING=1")
        assert any(m.startswith("STATUS=running: ") for m in messages)
        assert f"MAINPID={worker.pid}" in messages

    records = [json.loads(line) for line in worker.log.splitlines() if line.strip()]
    assert records and all({"ts", "level", "message", "worker"} <= r.keys() for r in records)
    completed = [r for r in records if r["message"] == "saga completed"]
    assert len(completed) == 3
    assert all({"saga_id", "saga_name"} <= r.keys() for r in completed)


async def test_under_journald_lines_carry_priorities_and_no_timestamps(
    sagad: SagadFactory, saga_db: SagaDb, tmp_path: Path
) -> None:
    cfg = tmp_path / "sagad.toml"
    cfg.write_text("concurrency = 4\n")
    worker = sagad.start(
        "--config", str(cfg), *saga_db.sagad_args(), env=saga_db.sagad_env(lease=5), journal=True
    )
    await worker.wait_ready()

    async def logged(text: str) -> None:
        async def probe() -> bool:
            return text in worker.log

        await wait_until(probe, timeout=10, what=repr(text))

    cfg.write_text("concurrency = 0\n")  # SIGHUP: an error (not reloaded)
    worker.signal(signal.SIGHUP)
    await logged("not reloaded")
    cfg.write_text("concurrency = 4\npoll_interval = 2.0\n")  # a warning (needs a restart)
    worker.signal(signal.SIGHUP)
    await logged("take effect on restart")
    assert await worker.stop() == 0
    lines = worker.log.splitlines()
    assert all(re.match(r"<[2-7]>[A-Z]+ +\| ", line) for line in lines), lines
    by_text = {line.split("|", 1)[1].strip(): line[:3] for line in lines}
    assert (
        by_text[
            "SIGHUP: not reloaded: concurrency: Input should be greater than or equal "
            "to 1 (from config file)"
        ]
        == "<3>"
    )
    assert any(
        t.startswith("SIGHUP: changes to poll_interval") and p == "<4>" for t, p in by_text.items()
    )
    assert any(
        t.startswith("sagad ") and " ready: " in t and p == "<6>" for t, p in by_text.items()
    )
    assert "\x1b[" not in worker.log

    # A JOURNAL_STREAM that does not name our stderr (inherited, then redirected): plain text.
    other = sagad.start(
        *saga_db.sagad_args(), env={**saga_db.sagad_env(lease=5), "JOURNAL_STREAM": "8:12345"}
    )
    await other.wait_ready()
    assert await other.stop() == 0
    assert all(re.match(r"\d{4}-\d\d-\d\d ", line) for line in other.log.splitlines())


def test_malformed_toml_exits_78_with_one_line(sagad: SagadFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("concurrency = \n")
    res = sagad.run("--config", str(cfg), "--app", "app_sagas:make")
    assert res.returncode == EXIT_CONFIG
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and "not valid TOML" in lines[0] and str(cfg) in lines[0]


def test_invalid_settings_exit_78_one_line_per_field(sagad: SagadFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "sagad.toml"
    cfg.write_text('[sagad]\nconcurrency = 0\nlog_format = "xml"\nno_such_setting = 1\n')
    res = sagad.run("--config", str(cfg), "--app", "app_sagas:make", "--batch-size", "lots")
    assert res.returncode == EXIT_CONFIG, res.stderr
    lines = _error_lines(res.stderr)
    assert len(lines) == 4, res.stderr
    for field in ("concurrency", "log_format", "no_such_setting", "batch_size"):
        assert sum(line.startswith(f"sagad: {field}: ") for line in lines) == 1, field
    assert "(from flag)" in next(line for line in lines if "batch_size" in line)


@pytest.mark.parametrize(
    ("app", "expected"),
    [
        ("no_such_module:orchestrator", "cannot import module 'no_such_module'"),
        ("app_sagas:missing", "has no attribute 'missing'"),
        ("app_sagas:not_an_orchestrator", "not a SagaOrchestrator"),
    ],
)
def test_unusable_app_exits_78_with_one_line(
    sagad: SagadFactory, pg_url: str, app: str, expected: str
) -> None:
    res = sagad.run("--app", app, "--database-url", pg_url)
    assert res.returncode == EXIT_CONFIG
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and expected in lines[0], res.stderr


def test_unreachable_database_exits_75_without_leaking_the_password(
    sagad: SagadFactory,
) -> None:
    url = f"postgresql://postgres:s3cret@127.0.0.1:{_free_port()}/nowhere"
    res = sagad.run(
        "--app", "app_sagas:make", "--database-url", url, env={"SAGA_STARTUP_TIMEOUT": "1"}
    )
    assert res.returncode == EXIT_UNAVAILABLE, res.stderr
    lines = _error_lines(res.stderr)
    assert lines[-1].startswith("sagad: database unreachable: ")
    assert "s3cret" not in res.stderr and "***" in lines[-1]
    check = sagad.run(
        "check", "--app", "app_sagas:make", "--database-url", url, env={"SAGA_STARTUP_TIMEOUT": "0"}
    )
    assert check.returncode == EXIT_UNAVAILABLE
    assert _error_lines(check.stderr)[-1].startswith("sagad: database unreachable: ")


def test_password_file_is_used_and_never_shown(
    sagad: SagadFactory, saga_db: SagaDb, tmp_path: Path
) -> None:
    secret = tmp_path / "db-password"
    secret.write_text("s3cret-from-file\n")
    env = {**saga_db.sagad_env(2), "SAGA_DATABASE_PASSWORD_FILE": str(secret)}
    ok = sagad.run("check", *saga_db.sagad_args(), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "s3cret" not in ok.stdout + ok.stderr

    env["SAGA_DATABASE_PASSWORD_FILE"] = str(tmp_path / "missing")
    bad = sagad.run("check", *saga_db.sagad_args(), env=env)
    assert bad.returncode == EXIT_CONFIG
    lines = _error_lines(bad.stderr)
    assert len(lines) == 1 and lines[0].startswith("sagad: database_password_file: cannot read")


async def test_missing_schema_exits_78_and_check_reports_it(
    sagad: SagadFactory, pg_url: str
) -> None:
    env = {"ACCEPT_TABLE": "never_created"}
    args = ["--app", "app_sagas:make", "--database-url", pg_url]
    res = sagad.run(*args, env=env)
    assert res.returncode == EXIT_CONFIG
    lines = _error_lines(res.stderr)
    assert len(lines) == 1 and "never_created does not exist" in lines[0]
    assert "run `sagactl db upgrade`" in lines[0]

    check = sagad.run("check", *args, env=env)
    assert check.returncode == EXIT_CONFIG
    assert "never_created does not exist" in check.stderr

    db = SagaDb(pg_url, "checked_table", lease=2.0)
    await db.setup()
    await db.engine.dispose()
    ok = sagad.run("check", *args, env={"ACCEPT_TABLE": "checked_table"})
    assert ok.returncode == 0, ok.stderr
    assert "schema: ok (checked_table, saga_workers)" in ok.stdout
    assert "sagas: ledger, ledger_rollback, rollback, steps, trivial" in ok.stdout


async def test_sighup_reloads_log_level_and_concurrency(
    sagad: SagadFactory, saga_db: SagaDb, tmp_path: Path
) -> None:
    cfg = tmp_path / "sagad.toml"
    cfg.write_text("concurrency = 2\nheartbeat_interval = 0.2\n")
    worker = sagad.start("--config", str(cfg), *saga_db.sagad_args(), env=saga_db.sagad_env(2))
    await worker.wait_ready()

    async def registered_concurrency() -> int | None:
        rows = await saga_db.fetch(
            "SELECT concurrency FROM saga_workers WHERE pid = :p", p=worker.pid
        )
        return rows[0][0] if rows else None

    assert await wait_until(registered_concurrency, timeout=10, what="registry row") == 2
    cfg.write_text('concurrency = 7\nheartbeat_interval = 0.2\nlog_level = "DEBUG"\n')
    worker.signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return await registered_concurrency() == 7

    await wait_until(reloaded, timeout=10, what="concurrency 7 in the registry")
    assert "SIGHUP: reloaded (log_level DEBUG, concurrency 7)" in worker.log
    assert "heartbeat_interval" not in worker.log.split("SIGHUP")[1]
    assert worker.running()
    assert await worker.stop() == 0


async def test_metrics_endpoint(sagad: SagadFactory, saga_db: SagaDb) -> None:
    port = _free_port()
    worker = sagad.start(
        *saga_db.sagad_args(), env={**saga_db.sagad_env(2), "SAGA_METRICS_PORT": str(port)}
    )
    await worker.wait_ready()
    await saga_db.start("trivial", 4)
    await saga_db.start("rollback", 1)
    await saga_db.wait_all({"COMPLETED", "COMPENSATED"}, 5, timeout=30)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    async def finished_counted() -> str | None:
        text = await asyncio.to_thread(scrape)
        return text if 'status="COMPENSATED"} 1.0' in text else None

    text = await wait_until(finished_counted, timeout=10, what="metrics")
    assert 'sagad_sagas_finished_total{saga_name="trivial",status="COMPLETED"} 4.0' in text
    assert 'sagad_sagas_started_total{saga_name="trivial"} 4.0' in text
    assert (
        'sagad_step_failures_total{phase="execute",saga_name="rollback",status="ERROR",step="c"} 1.0'
        in text
    )
    assert "sagad_step_duration_seconds_bucket" in text
    assert "sagad_claim_batch_size_count" in text
    assert "sagad_in_flight" in text and "sagad_event_loop_lag_seconds" in text
    assert await worker.stop() == 0


async def test_sqlite_runs_one_worker_and_refuses_a_second(
    sagad: SagadFactory, tmp_path: Path
) -> None:
    path = tmp_path / "embedded.db"
    url = f"sqlite+aiosqlite:///{path}"
    with sqlite3.connect(path) as conn:
        conn.execute(app_sagas.runs_ddl("sqlite", "embedded"))
    args = ["--app", "app_sagas:make", "--database-url", url, "--create-schema"]
    env = {"ACCEPT_TABLE": "embedded", "SAGA_POLL_INTERVAL": "0.2"}
    first = sagad.start(*args, env=env)
    await first.wait_ready()

    orch = app_sagas.build(url, table="embedded")
    try:
        saga_id = await orch.start(saga_name="steps", initial_data={}, aggregation_id="one")
        snap = await orch.wait(saga_id, timeout=30)
        assert snap.status.value == "COMPLETED"
    finally:
        await orch.engine.sql_engine.dispose()

    second = sagad.run(*args, env=env)
    assert second.returncode == EXIT_CONFIG
    lines = _error_lines(second.stderr)
    assert len(lines) == 1 and "SQLite supports one worker process" in lines[0]
    assert f"pid {first.pid}" in lines[0]

    assert await first.stop() == 0
    again = sagad.start(*args, env=env)
    await again.wait_ready()
    assert await again.stop() == 0


CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def test_example_config_documents_and_accepts_every_setting(tmp_path: Path) -> None:
    text = (CONFIG_DIR / "sagad.toml").read_text()
    assert load_settings(CONFIG_DIR / "sagad.toml").app == ["myapp.sagas:orchestrator"]
    for name in SagaSettings.model_fields:
        assert re.search(rf"^(# )?{name} = ", text, re.MULTILINE), name
    # Every commented-out example is itself valid.
    enabled = tmp_path / "all.toml"
    enabled.write_text(re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE))
    settings = load_settings(enabled)
    assert settings.metrics_port == 9464 and settings.concurrency == 512
