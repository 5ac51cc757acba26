"""Acceptance-test plumbing: real ``sagad`` processes against the session's PostgreSQL.
Imported by name (``sagad_kit``) by the acceptance and fault tests; ``conftest.py`` exposes
its fixtures.

Fixtures
--------
``sagad``
    A :class:`SagadFactory`: ``sagad.start(*args, env=...)`` spawns ``sagad`` (the installed
    console script, else ``python -m sagad``) with ``tests/acceptance`` on ``PYTHONPATH``, its
    stderr in a file, and its own systemd notify socket (abstract namespace) so tests can
    wait for ``READY=1``. Every process still running at the end is killed.
``saga_db``
    A :class:`SagaDb` on a fresh saga table ``t_<hex>`` (and its ``t_<hex>_runs`` side table)
    in the session database, with helpers to start sagas and read results.

Waiting is always polling with a deadline (:func:`wait_until`), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from signal import SIGTERM
from typing import Any, TypeVar

import app_sagas
import pytest
from sqlalchemy import text

T = TypeVar("T")

ACCEPT_DIR = Path(__file__).resolve().parent
TEST_APP_NAME = "saga-acceptance"
"""application_name of the test process's own connections (never killed by outage tests)."""


async def wait_until(
    probe: Callable[[], Awaitable[T]], *, timeout: float, what: str, interval: float = 0.1
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what} (last: {value!r})"
            )
        await asyncio.sleep(interval)


def sagad_command() -> list[str]:
    script = Path(sys.executable).with_name("sagad")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sagad"]


def base_env(**extra: str) -> dict[str, str]:
    """The environment of a child sagad: ours without SAGA_* / systemd variables."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SAGA_")
        and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ACCEPT_DIR), os.environ.get("PYTHONPATH", "")) if p
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def handles_signal(pid: int, sig: int) -> bool:
    """Whether process ``pid`` catches or ignores ``sig`` (Linux: ``/proc/<pid>/status``);
    False once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    masks = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    bit = 1 << (sig - 1)
    return any(int(masks[key].strip(), 16) & bit for key in ("SigCgt", "SigIgn"))


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if path is None:
            name = f"sagad-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.sock.bind(path)
            self.address = path
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            self.messages.extend(data.decode().splitlines())

    def seen(self, line: str) -> bool:
        return line in self.poll()

    def close(self) -> None:
        self.sock.close()


@dataclass
class Sagad:
    """One running ``sagad`` process."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    notify: NotifySocket | None
    args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    async def wait_message(self, line: str, timeout: float = 30.0) -> None:
        assert self.notify is not None

        async def probe() -> bool:
            if self.notify is not None and self.notify.seen(line):
                return True
            if not self.running():
                raise AssertionError(
                    f"sagad exited with {self.proc.returncode} before {line!r}:\n{self.log}"
                )
            return False

        await wait_until(probe, timeout=timeout, what=f"{line} from sagad {self.pid}")

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await self.wait_message("READY=1", timeout)

    def ready(self) -> bool:
        """Whether it has sent ``READY=1`` (so far)."""
        return self.notify is not None and self.notify.seen("READY=1")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_handles(self, sig: int = SIGTERM, timeout: float = 30.0) -> None:
        """Wait until the process handles ``sig`` (or has exited).

        The interpreter starts (tens of milliseconds) before any code of sagad runs; a
        signal then kills it whatever sagad does. From the first lines of its entry point
        on, sagad catches SIGTERM/SIGINT: this waits for that, read from the kernel's view
        of the process (``/proc/<pid>/status``), not guessed with a sleep."""

        async def probe() -> bool:
            return not self.running() or handles_signal(self.pid, sig)

        await wait_until(
            probe, timeout=timeout, what=f"sagad {self.pid} to handle signal {sig}", interval=0.005
        )

    async def wait_exit(self, timeout: float = 30.0) -> int:
        async def probe() -> bool:
            return self.proc.poll() is not None

        try:
            await wait_until(probe, timeout=timeout, what=f"sagad {self.pid} to exit")
        except AssertionError:
            raise AssertionError(f"sagad {self.pid} did not exit:\n{self.log}") from None
        return int(self.proc.returncode)

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (once sagad handles it, see :meth:`wait_handles`); the exit code."""
        await self.wait_handles(signal.SIGTERM)
        self.signal(signal.SIGTERM)
        return await self.wait_exit(timeout)


class SagadFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Sagad] = []

    def start(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        notify: NotifySocket | bool | None = True,
        cwd: Path | None = None,
        journal: bool = False,
    ) -> Sagad:
        """``journal``: set ``JOURNAL_STREAM`` to the log file's device and inode, as systemd
        does when stderr is the journal."""
        sock = NotifySocket() if notify is True else (notify or None)
        child_env = base_env(**(env or {}))
        if sock is not None:
            child_env["NOTIFY_SOCKET"] = sock.address
        log_path = self.tmp_path / f"sagad-{len(self.started)}.log"
        with log_path.open("wb") as log:
            if journal:
                st = os.fstat(log.fileno())
                child_env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            proc = subprocess.Popen(
                [*sagad_command(), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=cwd or self.tmp_path,
            )
        s = Sagad(proc=proc, log_path=log_path, notify=sock, args=list(args))
        self.started.append(s)
        return s

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run sagad to completion (for commands that exit by themselves)."""
        return subprocess.run(
            [*sagad_command(), *args],
            capture_output=True,
            text=True,
            env=base_env(**(env or {})),
            cwd=self.tmp_path,
            timeout=timeout,
        )

    def cleanup(self) -> None:
        for s in self.started:
            if s.running():
                s.proc.kill()
                s.proc.wait(10)
            if s.notify is not None:
                s.notify.close()


@pytest.fixture
def sagad(tmp_path: Path) -> Iterator[SagadFactory]:
    factory = SagadFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.cleanup()


class SagaDb:
    """A fresh saga table for one test, seen through the test app's orchestrator."""

    def __init__(self, url: str, table: str, lease: float) -> None:
        self.url = url
        self.table = table
        self.orch = app_sagas.build(
            url,
            table=table,
            lease=lease,
            engine_kwargs={
                "connect_args": {"server_settings": {"application_name": TEST_APP_NAME}}
            },
        )
        self.engine = self.orch.engine.sql_engine

    def sagad_args(self, *extra: str) -> list[str]:
        return ["--app", "app_sagas:make", "--database-url", self.url, *extra]

    def sagad_env(self, lease: float, **extra: str) -> dict[str, str]:
        return {"ACCEPT_TABLE": self.table, "ACCEPT_LEASE": str(lease), **extra}

    async def setup(self) -> None:
        await self.orch.create_tables()
        async with self.engine.begin() as conn:
            await conn.execute(text(app_sagas.runs_ddl("postgresql", self.table)))

    async def start(
        self, saga_name: str, n: int, data: dict[str, Any] | None = None
    ) -> list[uuid.UUID]:
        ids: list[uuid.UUID] = []
        sem = asyncio.Semaphore(10)

        async def one(i: int) -> None:
            async with sem:
                ids.append(
                    await self.orch.start(
                        saga_name=saga_name,
                        initial_data=data or {},
                        aggregation_id=f"{saga_name}-{i}-{uuid.uuid4().hex[:8]}",
                    )
                )

        await asyncio.gather(*(one(i) for i in range(n)))
        return ids

    async def fetch(self, sql: str, **params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql.format(t=self.table)), params)).all())

    async def status_counts(self) -> dict[str, int]:
        rows = await self.fetch("SELECT status, count(*) FROM {t} GROUP BY status")
        return {r[0]: int(r[1]) for r in rows}

    async def wait_all(self, statuses: set[str], total: int, timeout: float) -> dict[str, int]:
        async def probe() -> dict[str, int] | None:
            counts = await self.status_counts()
            done = sum(v for k, v in counts.items() if k in statuses)
            return counts if done == total else None

        return await wait_until(
            probe, timeout=timeout, what=f"{total} sagas in {sorted(statuses)}", interval=0.25
        )

    async def runs(self) -> list[Any]:
        return await self.fetch(
            "SELECT saga_id, step_id, phase, attempt, pid, started_at, ended_at, outcome "
            "FROM {t}_runs ORDER BY started_at, id"
        )

    async def db_now(self) -> Any:
        return (await self.fetch("SELECT clock_timestamp()"))[0][0]


@pytest.fixture
async def saga_db(pg_url: str) -> AsyncIterator[SagaDb]:
    db = SagaDb(pg_url, f"t_{uuid.uuid4().hex[:10]}", lease=2.0)
    await db.setup()
    try:
        yield db
    finally:
        await db.engine.dispose()
