"""Shared fixtures: PostgreSQL discovery for the integration and acceptance tests.

Fixtures
--------
``pg_url`` (session)
    SQLAlchemy async URL (``postgresql+asyncpg://...``) of a FRESH database named
    ``saga_test_<hex>``, created for this test session and dropped at its end.
``pg_admin_dsn`` (session)
    The same database as a plain ``postgresql://`` DSN, for asyncpg.connect(),
    psql and subprocesses.  ``dbutil.plain_dsn`` / ``dbutil.async_url`` convert
    between the two forms.

Which server is used, first match wins
--------------------------------------
(a) ``TEST_DATABASE_URL`` when set (``postgresql://``, ``postgres://`` or
    ``postgresql+asyncpg://``).  The fresh database is created from the database
    named in that URL (``postgres`` when it names none), so the user needs the
    CREATEDB privilege.  If that server cannot be reached the run stops: an
    explicit URL never falls back to anything else.
(b) The local server on 127.0.0.1:5432 as user ``postgres`` (2 s probe).
(c) A throwaway server started from the installed PostgreSQL binaries
    (pg_ctl on PATH, or /usr/lib/postgresql/*/bin/pg_ctl) with pytest-postgresql's
    ``PostgreSQLExecutor``, in a temporary data directory on a free port; stopped
    and removed at session end.  When running as root it is run as the
    ``postgres`` (or ``nobody``) system user, since PostgreSQL refuses root.
(d) Otherwise the run stops with a message saying what to install.
PostgreSQL tests are never skipped silently.

The server is chosen, and the fresh database created, once collection is done and only when
a collected test needs PostgreSQL; any failure there stops the run with one plain message
(never a fixture traceback). The suite needs about ``CONNECTIONS_NEEDED`` (50) connections
at once: a server that refuses with "too many clients" (SQLSTATE 53300), at the start or
in the middle of the run, stops the run with a message saying so and how to point
``TEST_DATABASE_URL`` at another server.

Environment variables
---------------------
TEST_DATABASE_URL=postgresql://user[:pw]@host:port/db
    Use that server (path a).
SAGA_TEST_NO_LOCAL_PG=1
    Do not probe 127.0.0.1:5432 (skips path b).  Use it to exercise path (c) on a
    machine whose local server is running:
    ``SAGA_TEST_NO_LOCAL_PG=1 pytest tests/integration/test_pg_plumbing.py``.
SAGA_TEST_PG_CTL=/path/to/pg_ctl
    pg_ctl to use for path (c) instead of searching for one; ``none``: never start a
    throwaway server (path c is skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import pytest
from dbutil import async_url, database_name, plain_dsn

T = TypeVar("T")

LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PROBE_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 10.0
DB_PREFIX = "saga_test_"
CONNECTIONS_NEEDED = 50

INSTALL_HINT = (
    "install PostgreSQL server binaries (Debian/Ubuntu: `apt-get install postgresql`; "
    "Fedora: `dnf install postgresql-server`; macOS: `brew install postgresql@16`), "
    "or start a server on 127.0.0.1:5432 accepting user postgres, "
    "or set TEST_DATABASE_URL=postgresql://user@host:port/db"
)


# --------------------------------------------------------------------------- helpers


def _run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in a helper thread.

    Session fixtures here are synchronous; running their asyncpg calls in a
    thread keeps them independent of whatever loop pytest-asyncio has set up.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        async def main() -> T:
            return await factory()

        try:
            result.append(asyncio.run(main()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="pg-fixture", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _probe(dsn: str, timeout: float) -> Exception | None:
    """Return None when ``dsn`` accepts a connection, else the error."""

    async def attempt() -> None:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        await conn.close()

    try:
        _run_async(attempt)
    except Exception as exc:
        return exc
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def _redact(dsn: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


def too_many_clients(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain saying the server refuses more connections (SQLSTATE
    53300: "too many clients already", or a role's or database's connection limit)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur).lower()
        if getattr(cur, "sqlstate", None) == "53300" or "too many clients" in text:
            return cur
        if isinstance(cur, BaseExceptionGroup):
            for inner in cur.exceptions:
                found = too_many_clients(inner)
                if found is not None:
                    return found
        orig = getattr(cur, "orig", None)
        cur = orig if isinstance(orig, BaseException) else (cur.__cause__ or cur.__context__)
    return None


def too_many_message(where: str, exc: BaseException) -> str:
    return (
        f"{where} refuses more connections ({_describe(exc)}). The test suite needs about "
        f"{CONNECTIONS_NEEDED} PostgreSQL connections at once (the fresh test database, and "
        "the pools of the workers and of the sagad and sagactl processes the tests start). "
        "Free some (other clients of that server, or raise its max_connections), or point "
        "TEST_DATABASE_URL=postgresql://user@host:port/db at a server with room (the user "
        "needs the CREATEDB privilege)."
    )


def _stop_session(message: str) -> NoReturn:
    # pytest.exit ends the whole run with a non-zero status (never a skip). It is only
    # called before any fixture is set up (see pytest_collection_finish): raised from a
    # fixture, pytest would bury it under a teardown traceback of tmp_path.
    pytest.exit(f"PostgreSQL test setup failed: {message}")


# ----------------------------------------------------------- (c) throwaway server


def _pg_ctl_version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"(\d+(?:\.\d+)?)/bin/pg_ctl$", path)
    return tuple(int(p) for p in match.group(1).split(".")) if match else (0,)


def find_pg_ctl() -> str | None:
    """Locate a pg_ctl binary: $SAGA_TEST_PG_CTL, PATH, then well-known dirs."""
    override = os.environ.get("SAGA_TEST_PG_CTL")
    if override == "none":
        return None
    if override:
        if not os.access(override, os.X_OK):
            _stop_session(f"SAGA_TEST_PG_CTL={override} is not an executable pg_ctl")
        return override
    on_path = shutil.which("pg_ctl")
    if on_path:
        return on_path
    candidates: list[str] = []
    for pattern in (
        "/usr/lib/postgresql/*/bin/pg_ctl",  # Debian, Ubuntu
        "/usr/pgsql-*/bin/pg_ctl",  # RHEL (PGDG)
        "/usr/local/pgsql/bin/pg_ctl",  # source builds
        "/opt/homebrew/opt/postgresql*/bin/pg_ctl",  # macOS Homebrew
        "/usr/local/opt/postgresql*/bin/pg_ctl",
    ):
        candidates.extend(p for p in glob.glob(pattern) if os.access(p, os.X_OK))
    if not candidates:
        return None
    return max(candidates, key=_pg_ctl_version_key)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_account() -> pwd.struct_passwd | None:
    """Account to run the server as: None when not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(
        "running as root, and neither a 'postgres' nor a 'nobody' account exists "
        "to run the throwaway PostgreSQL server as (PostgreSQL refuses to run as root)"
    )


def _drop_root_wrapper(bindir: Path, pg_ctl: str, account: pwd.struct_passwd) -> str:
    """Write an executable that runs ``pg_ctl`` as ``account``; return its path."""
    if shutil.which("setpriv"):
        switch = f"setpriv --reuid={account.pw_uid} --regid={account.pw_gid} --clear-groups --"
    elif shutil.which("runuser"):
        switch = f"runuser -u {account.pw_name} --"
    else:
        raise RuntimeError(
            "running as root but neither setpriv nor runuser (util-linux) is available "
            "to start PostgreSQL as an unprivileged user"
        )
    wrapper = bindir / "pg_ctl"
    wrapper.write_text(
        f'#!/bin/sh\ncd /\nexec {switch} "{pg_ctl}" "$@"\n',
        encoding="utf-8",
    )
    wrapper.chmod(0o755)
    return str(wrapper)


@dataclass
class _ThrowawayServer:
    executor: Any
    basedir: Path

    def stop(self) -> None:
        try:
            self.executor.stop()
        except Exception as exc:
            print(f"\nwarning: stopping throwaway PostgreSQL failed: {exc}", file=sys.stderr)
        shutil.rmtree(self.basedir, ignore_errors=True)


def _start_throwaway(pg_ctl: str) -> tuple[str, _ThrowawayServer]:
    """Start a private server; return its maintenance DSN and a handle to stop it."""
    from pytest_postgresql.executors import PostgreSQLExecutor

    account = _unprivileged_account()
    # As root, stay out of a TMPDIR the server's account may not be able to enter.
    tmp_parent = "/tmp" if account is not None and os.path.isdir("/tmp") else None
    basedir = Path(tempfile.mkdtemp(prefix="saga-test-pg-", dir=tmp_parent))
    basedir.chmod(0o755)
    rundir = basedir / "run"  # owned by the server's account: data, socket, log
    rundir.mkdir()
    bindir = basedir / "bin"  # stays ours
    bindir.mkdir()
    executable = pg_ctl
    if account is not None:
        os.chown(rundir, account.pw_uid, account.pw_gid)
        executable = _drop_root_wrapper(bindir, pg_ctl, account)

    last_error: Exception | None = None
    for attempt in range(3):
        port = _free_port()
        logfile = rundir / f"postgresql-{port}.log"
        executor = PostgreSQLExecutor(
            executable=executable,
            host="127.0.0.1",
            port=port,
            datadir=str(rundir / f"data-{port}"),
            unixsocketdir=str(rundir),
            logfile=str(logfile),
            startparams="-w",
            dbname="postgres",
            user="postgres",
            timeout=60,
            postgres_options=(
                "-c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
            ),
        )
        try:
            executor.start()
        except Exception as exc:
            last_error = exc
            log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            print(
                f"\nthrowaway PostgreSQL start attempt {attempt + 1} on port {port} failed: "
                f"{type(exc).__name__}: {exc}\n{log}",
                file=sys.stderr,
            )
            with contextlib.suppress(Exception):
                executor.stop()
            continue
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        return dsn, _ThrowawayServer(executor=executor, basedir=basedir)

    shutil.rmtree(basedir, ignore_errors=True)
    raise RuntimeError(f"could not start a throwaway server with {pg_ctl}: {last_error}")


# ------------------------------------------------------------ server selection


@dataclass
class PgServer:
    """A reachable server: ``maintenance_dsn`` is where CREATE DATABASE runs."""

    maintenance_dsn: str
    source: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


def _discover_server() -> PgServer:
    # (a) explicit URL
    env_url = os.environ.get("TEST_DATABASE_URL", "").strip()
    if env_url:
        try:
            maintenance = plain_dsn(env_url, database=database_name(env_url) or "postgres")
        except Exception as exc:
            _stop_session(f"TEST_DATABASE_URL is not a usable PostgreSQL URL: {exc}")
        error = _probe(maintenance, CONNECT_TIMEOUT_S)
        if error is not None:
            crowded = too_many_clients(error)
            if crowded is not None:
                _stop_session(
                    too_many_message(f"TEST_DATABASE_URL {_redact(maintenance)}", crowded)
                )
            _stop_session(
                f"TEST_DATABASE_URL is set but {_redact(maintenance)} does not accept "
                f"connections: {_describe(error)}. Fix or unset TEST_DATABASE_URL."
            )
        return PgServer(maintenance, "TEST_DATABASE_URL")

    # (b) local server
    if os.environ.get("SAGA_TEST_NO_LOCAL_PG", "") in ("", "0"):
        probe_error = _probe(LOCAL_DSN, PROBE_TIMEOUT_S)
        if probe_error is None:
            return PgServer(LOCAL_DSN, "local server 127.0.0.1:5432")
        crowded = too_many_clients(probe_error)
        if crowded is not None:
            # Reachable but full: starting another server behind the user's back would hide
            # that; say so instead.
            _stop_session(
                too_many_message(f"the local server {LOCAL_DSN}", crowded)
                + " SAGA_TEST_NO_LOCAL_PG=1 uses a throwaway server instead."
            )
        local_error = _describe(probe_error)
    else:
        local_error = "probe disabled by SAGA_TEST_NO_LOCAL_PG"

    # (c) throwaway server from installed binaries
    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        # (d) nothing usable
        no_pg_ctl = (
            "SAGA_TEST_PG_CTL=none rules out a throwaway server"
            if os.environ.get("SAGA_TEST_PG_CTL") == "none"
            else "no pg_ctl was found on PATH or in /usr/lib/postgresql/*/bin to start a "
            "throwaway server"
        )
        _stop_session(
            "no PostgreSQL server available: TEST_DATABASE_URL is unset, "
            f"{LOCAL_DSN} is not reachable ({local_error}), and {no_pg_ctl}. "
            f"To fix: {INSTALL_HINT}."
        )
    try:
        dsn, server = _start_throwaway(pg_ctl)
    except Exception as exc:
        _stop_session(
            f"{LOCAL_DSN} is not reachable ({local_error}) and starting a throwaway "
            f"server failed: {str(exc).rstrip('.')}. To fix: {INSTALL_HINT}."
        )
    return PgServer(dsn, f"throwaway server via {pg_ctl}", server.stop)


# ------------------------------------------------------------ database lifecycle


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_database(maintenance_dsn: str, name: str) -> None:
    async def work() -> None:
        conn = await asyncpg.connect(maintenance_dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
        finally:
            await conn.close()

    _run_async(work)


def drop_database(maintenance_dsn: str, name: str) -> None:
    async def work() -> None:
        conn = await asyncpg.connect(maintenance_dsn, timeout=CONNECT_TIMEOUT_S)
        try:
            for attempt in range(5):
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
                try:
                    await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)}")
                    return
                except asyncpg.ObjectInUseError:
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))
        finally:
            await conn.close()

    _run_async(work)


# --------------------------------------------------------------------- fixtures


@dataclass
class _PgSession:
    server: PgServer | None = None
    url: str | None = None
    database: str | None = None


_PG = _PgSession()
_USED_SERVERS: list[str] = []


def _prepare_pg() -> _PgSession:
    """Choose the server and create the session's fresh database (once)."""
    if _PG.url is not None:
        return _PG
    server = _discover_server()
    _PG.server = server
    _USED_SERVERS.append(f"{server.source}: {_redact(server.maintenance_dsn)}")
    name = f"{DB_PREFIX}{uuid.uuid4().hex[:16]}"
    try:
        create_database(server.maintenance_dsn, name)
    except Exception as exc:
        crowded = too_many_clients(exc)
        if crowded is not None:
            _stop_session(
                too_many_message(f"{_redact(server.maintenance_dsn)} ({server.source})", crowded)
            )
        _stop_session(
            f"could not CREATE DATABASE {name} on {_redact(server.maintenance_dsn)} "
            f"({server.source}): {_describe(exc)}. The user needs the CREATEDB privilege; "
            "or point TEST_DATABASE_URL=postgresql://user@host:port/db at a server where it has it."
        )
    _PG.database = name
    _PG.url = async_url(server.maintenance_dsn, database=name)
    return _PG


def _release_pg() -> None:
    server, name = _PG.server, _PG.database
    if server is None:
        return
    try:
        if name is not None:
            try:
                drop_database(server.maintenance_dsn, name)
            except Exception as exc:
                print(f"\nwarning: could not drop test database {name}: {exc}", file=sys.stderr)
    finally:
        server.stop()
        _PG.server = _PG.url = _PG.database = None


def _needs_pg(item: pytest.Item) -> bool:
    return item.get_closest_marker("postgres") is not None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Set PostgreSQL up before the first test when any collected test needs it: a failure
    stops the run here, with its message alone."""
    if session.config.option.collectonly:
        return
    if any(_needs_pg(item) for item in session.items):
        _prepare_pg()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    # trylast: after pytest has torn the session's fixtures down (they may use the database).
    _release_pg()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test that failed because the server refused more connections stops the run with a
    plain message (the suite would only fail on, test after test, with deep tracebacks)."""
    report = yield
    if call.excinfo is not None and report.failed:
        crowded = too_many_clients(call.excinfo.value)
        if crowded is not None:
            server = _PG.server
            where = (
                f"the PostgreSQL server {_redact(server.maintenance_dsn)} ({server.source})"
                if server is not None
                else "the PostgreSQL server"
            )
            message = f"stopped, PostgreSQL is full: {too_many_message(where, crowded)}"
            report.longrepr = message
            item.session.shouldstop = message
    return report


@pytest.fixture(scope="session")
def pg_server() -> PgServer:
    """The PostgreSQL server chosen for this session (see module docstring)."""
    server = _prepare_pg().server
    assert server is not None
    return server


@pytest.fixture(scope="session")
def pg_url(pg_server: PgServer) -> str:
    """SQLAlchemy async URL of a fresh ``saga_test_<hex>`` database for this session."""
    url = _prepare_pg().url
    assert url is not None
    return url


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_url: str) -> str:
    """Plain ``postgresql://`` DSN of the session's fresh database."""
    return plain_dsn(pg_url)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tag every test that uses PostgreSQL with the ``postgres`` marker."""
    pg_fixtures = {"pg_url", "pg_admin_dsn", "pg_server"}
    for item in items:
        if pg_fixtures.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which PostgreSQL server the session used, if any."""
    for line in _USED_SERVERS:
        terminalreporter.write_line(f"PostgreSQL for tests: {line}")
