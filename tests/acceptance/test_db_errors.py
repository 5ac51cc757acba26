"""Permanent database errors stop ``sagad`` at once (exit 78, one line, password masked) and
``sagactl`` with its own exit code (7), while an unreachable server stays a transient problem
(75 after ``startup_timeout``; 6 for sagactl). A privilege revoked while ``sagad`` runs is
logged at ERROR on every claim and ends the process (78) after ``permanent_error_timeout``.

A wrong password needs a server that checks passwords: the shared test server trusts
127.0.0.1, so those tests start their own (``pgscram``, scram-sha-256)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from dbutil import plain_dsn
from pgscram import PASSWORD, ScramServer, start_scram_server
from sagad_kit import SagaDb, SagadFactory, base_env, wait_until
from sqlalchemy.engine import make_url

EXIT_UNAVAILABLE = 75
EXIT_CONFIG = 78
SAGACTL_UNREACHABLE = 6
SAGACTL_REFUSED = 7
QUICK_S = 10.0
"""A permanent error must end sagad well before startup_timeout (30 s by default)."""

SAGACTL = str(Path(sys.executable).with_name("sagactl"))


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def _sagactl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGACTL, *args], capture_output=True, text=True, env=base_env(), timeout=60
    )


def _timed(
    sagad: SagadFactory, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    res = sagad.run(*args, env=env)
    return res, time.monotonic() - started


@pytest.fixture(scope="module")
def scram() -> Iterator[ScramServer]:
    server = start_scram_server()
    if isinstance(server, str):
        pytest.skip(f"cannot start a password-checking PostgreSQL server: {server}")
    try:
        yield server
    finally:
        server.stop()


def test_wrong_password_exits_78_at_once_with_one_masked_line(
    sagad: SagadFactory, scram: ScramServer, tmp_path: Path
) -> None:
    wrong = scram.url(password="wrong-pw-123")
    res, took = _timed(sagad, "--app", "app_sagas:make", "--database-url", wrong)
    assert res.returncode == EXIT_CONFIG, res.stderr
    assert took < QUICK_S, f"took {took:.1f}s"
    lines = _lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert "authentication failed" in lines[0] and "(28P01)" in lines[0]
    assert "not retrying" in lines[0] and "***" in lines[0]
    assert "wrong-pw-123" not in res.stderr + res.stdout

    # The same from a password file (the systemd credential), and from `sagad check`.
    secret = tmp_path / "db-password"
    secret.write_text("wrong-from-file\n")
    env = {"SAGA_DATABASE_PASSWORD_FILE": str(secret)}
    check, took = _timed(
        sagad, "check", "--app", "app_sagas:make", "--database-url", scram.url(None), env=env
    )
    assert check.returncode == EXIT_CONFIG and took < QUICK_S
    assert "authentication failed" in check.stderr and "wrong-from-file" not in check.stderr

    # The right password gets past authentication (to the missing schema).
    secret.write_text(PASSWORD + "\n")
    ok = sagad.run("check", "--app", "app_sagas:make", "--database-url", scram.url(None), env=env)
    assert ok.returncode == EXIT_CONFIG and "does not exist" in ok.stderr, ok.stderr
    assert "authentication" not in ok.stderr


def test_sagactl_tells_authentication_failed_from_unreachable(scram: ScramServer) -> None:
    r = _sagactl("list", "--database-url", scram.url(password="wrong-pw-123"))
    assert r.returncode == SAGACTL_REFUSED, r.stderr
    assert "authentication failed" in r.stderr and "28P01" in r.stderr
    assert "wrong-pw-123" not in r.stderr
    r = _sagactl("list", "--database-url", scram.url(password="wrong-pw-123"), "-o", "json")
    assert r.returncode == SAGACTL_REFUSED and '"kind": "refused"' in r.stderr
    ok = _sagactl("db", "status", "--database-url", scram.url())
    assert ok.returncode == 1 and "authentication" not in ok.stderr, ok.stderr


def test_unknown_database_and_role_exit_78_unreachable_75(sagad: SagadFactory, pg_url: str) -> None:
    url = make_url(pg_url)
    cases = {
        "database does not exist": (url.set(database="no_such_db_i12"), "3D000"),
        "authentication failed": (url.set(username="no_such_role_i12"), "28000"),
    }
    for what, (bad, sqlstate) in cases.items():
        text_url = bad.set(password="s3cret").render_as_string(hide_password=False)
        res, took = _timed(sagad, "--app", "app_sagas:make", "--database-url", text_url)
        assert res.returncode == EXIT_CONFIG, res.stderr
        assert took < QUICK_S, f"{what}: took {took:.1f}s"
        lines = _lines(res.stderr)
        assert len(lines) == 1 and what in lines[0] and f"({sqlstate})" in lines[0], res.stderr
        assert "s3cret" not in res.stderr

        r = _sagactl("list", "--database-url", text_url)
        assert r.returncode == SAGACTL_REFUSED, r.stderr
        assert what in r.stderr and "s3cret" not in r.stderr

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = url.set(port=port, password="s3cret").render_as_string(hide_password=False)
    res, took = _timed(
        sagad,
        "--app",
        "app_sagas:make",
        "--database-url",
        closed,
        env={"SAGA_STARTUP_TIMEOUT": "2"},
    )
    assert res.returncode == EXIT_UNAVAILABLE, res.stderr
    assert 2.0 <= took < QUICK_S
    assert _lines(res.stderr)[-1].startswith("sagad: database unreachable: ")
    r = _sagactl("list", "--database-url", closed)
    assert r.returncode == SAGACTL_UNREACHABLE and "database unreachable" in r.stderr


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def test_privilege_revoked_while_running_logs_errors_then_exits_78(
    sagad: SagadFactory, saga_db: SagaDb, pg_url: str
) -> None:
    role = f"saga_w_{uuid.uuid4().hex[:10]}"
    dsn = plain_dsn(pg_url)
    db = make_url(pg_url).database
    t = saga_db.table
    await _admin(
        dsn,
        f"CREATE ROLE {role} LOGIN",
        f'GRANT CONNECT ON DATABASE "{db}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t}, {t}_runs, saga_workers TO {role}",
        f"GRANT SELECT ON saga_schema_version TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    )
    try:
        as_role = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
        worker = sagad.start(
            "--app",
            "app_sagas:make",
            "--database-url",
            as_role,
            env=saga_db.sagad_env(2, SAGA_PERMANENT_ERROR_TIMEOUT="3", SAGA_POLL_INTERVAL="0.2"),
        )
        await worker.wait_ready()
        await saga_db.start("trivial", 2)
        try:
            await saga_db.wait_all({"COMPLETED"}, 2, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{worker.log}") from None

        revoked_at = time.monotonic()
        await _admin(dsn, f"REVOKE ALL ON {t} FROM {role}")
        code = await worker.wait_exit(timeout=30)
        took = time.monotonic() - revoked_at
        assert code == EXIT_CONFIG, worker.log
        assert 3.0 <= took < 20.0, f"took {took:.1f}s"
        log = worker.log
        errors = [ln for ln in log.splitlines() if "ERROR" in ln and "claim failed" in ln]
        assert len(errors) >= 2, log
        assert all("permission denied" in ln and "(42501)" in ln for ln in errors)
        assert "sagad exits (78) if this lasts" in errors[0]
        last = _lines(log)[-1]
        assert last.startswith("sagad: database ") and "claims failed for" in last, log
        assert "permanent_error_timeout" in last

        async def marked_stopped() -> bool:
            rows = await saga_db.fetch(
                "SELECT stopped_at FROM saga_workers WHERE pid = :p", p=worker.pid
            )
            return bool(rows) and rows[0][0] is not None

        await wait_until(marked_stopped, timeout=5, what="the worker row marked stopped")
    finally:
        await _admin(dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")


async def test_sagactl_permission_denied_is_refused_not_a_crash(
    saga_db: SagaDb, pg_url: str
) -> None:
    role = f"saga_n_{uuid.uuid4().hex[:10]}"
    dsn = plain_dsn(pg_url)
    db = make_url(pg_url).database
    await _admin(
        dsn,
        f"CREATE ROLE {role} LOGIN",
        f'GRANT CONNECT ON DATABASE "{db}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
    )
    try:
        as_role = make_url(pg_url).set(username=role).render_as_string(hide_password=False)
        r = _sagactl("list", "--database-url", as_role, "--table", saga_db.table)
        assert r.returncode == SAGACTL_REFUSED, r.stderr
        assert "permission denied" in r.stderr and "(42501)" in r.stderr
        assert "Security: database roles" in r.stderr
    finally:
        await _admin(dsn, f"DROP OWNED BY {role}", f"DROP ROLE {role}")
