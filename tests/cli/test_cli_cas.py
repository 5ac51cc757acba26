"""Repairs act only on the state the operator confirmed: while ``sagactl`` waits at its
confirmation prompt, a second operator (another real ``sagactl`` process) changes a saga;
answering yes then leaves that saga alone and reports it (bulk: exit 5 with the real
``from_status``; one saga: exit 4)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import termios
import time
import uuid
from collections.abc import Callable
from typing import Any

from cli_app import build
from cli_helpers import SAGACTL
from cli_seed import Seeded

from saga_core import SagaAdminSnapshot

GetSaga = Callable[..., SagaAdminSnapshot]


def run_confirmed(
    env: dict[str, str], args: list[str], meanwhile: Callable[[], None]
) -> tuple[int, str, str]:
    """Run sagactl with a terminal on stdin and stderr (so it asks) and stdout on a pipe;
    at the ``[y/n]`` prompt run ``meanwhile()``, then answer ``y``. Returns (exit code,
    stdout, terminal text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    env = {**env, "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [SAGACTL, *args], env=env, stdin=slave, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    seen = b""
    answered = False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
                if not answered and b"[y/n]" in seen:
                    meanwhile()
                    os.write(master, b"y\n")
                    answered = True
            elif proc.poll() is not None:
                break
        assert answered, f"no prompt came: {seen.decode(errors='replace')}"
        out = proc.stdout.read().decode() if proc.stdout else ""
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out, seen.decode(errors="replace")


def other_operator(env: dict[str, str], *args: str) -> Callable[[], None]:
    def act() -> None:
        r = subprocess.run(
            [SAGACTL, *args, "--yes"],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr

    return act


def more_failed(pg_url: str, n: int) -> list[uuid.UUID]:
    async def go() -> list[uuid.UUID]:
        orch = build(pg_url)
        try:
            return [
                await orch.start(
                    saga_name="order_manual",
                    initial_data={"order_id": f"extra-{i}", "fail": True},
                    aggregation_id=f"agg-extra-{i}",
                    inline=True,
                )
                for i in range(n)
            ]
        finally:
            await orch.engine.sql_engine.dispose()

    return asyncio.run(go())


def admin_actions(snap: SagaAdminSnapshot) -> list[tuple[str, str, str]]:
    return [
        (e["status"], e["from_status"], e["to_status"])
        for e in snap.step_history
        if e.get("phase") == "admin"
    ]


def test_bulk_skips_a_saga_another_operator_changed_at_the_prompt(
    subprocess_env: dict[str, str], seeded: Seeded, pg_url: str, get_saga: GetSaga
) -> None:
    env = subprocess_env
    failed = [seeded["failed"], *more_failed(pg_url, 2)]
    changed = failed[1]
    code, out, term = run_confirmed(
        env,
        ["abort", "--status", "FAILED", "--reason", "duplicates", "-o", "json"],
        other_operator(env, "retry", str(changed), "--reason", "operator B"),
    )
    assert code == 5, (out, term)
    data = json.loads(out)
    assert (data["selected"], data["succeeded"], data["failed"]) == (3, 2, 1)
    results: dict[str, dict[str, Any]] = {r["id"]: r for r in data["results"]}
    moved = results[str(changed)]
    assert moved["ok"] is False and moved["status"] is None
    assert moved["from_status"] == "RUNNING", "the real status, not the listed one"
    assert moved["listed_status"] == "FAILED"
    assert moved["error"]["code"] == 4
    assert "changed since you looked: now RUNNING" in moved["error"]["message"]
    for sid in (failed[0], failed[2]):
        assert results[str(sid)]["ok"] is True
        assert results[str(sid)]["from_status"] == "FAILED"
        assert get_saga(sid).status.value == "ABORTED"
    snap = get_saga(changed)
    assert snap.status.value == "RUNNING"
    assert admin_actions(snap) == [("RETRY", "FAILED", "RUNNING")], "never aborted"
    assert "1 of them changed since listed and left alone (exit 5)" in term


def test_bulk_text_shows_the_real_status(
    subprocess_env: dict[str, str], seeded: Seeded, pg_url: str, get_saga: GetSaga
) -> None:
    env = subprocess_env
    changed = more_failed(pg_url, 1)[0]
    code, out, term = run_confirmed(
        env,
        ["retry", "--status", "FAILED", "--reason", "issuer back"],
        other_operator(env, "abort", str(changed), "--reason", "operator B"),
    )
    assert code == 5, (out, term)
    row = next(line for line in out.splitlines() if line.strip().startswith(str(changed)[:8]))
    assert "ABORTED" in row and "changed since you looked" in row
    assert get_saga(seeded["failed"]).status.value == "RUNNING"
    assert admin_actions(get_saga(changed)) == [("ABORT", "FAILED", "ABORTED")]


def test_one_saga_changed_at_the_prompt_is_refused(
    subprocess_env: dict[str, str], seeded: Seeded, get_saga: GetSaga
) -> None:
    env = subprocess_env
    sid = str(seeded["suspended"])
    code, out, term = run_confirmed(
        env,
        ["compensate", sid, "--reason", "customer cancelled"],
        other_operator(env, "abort", sid, "--reason", "operator B"),
    )
    assert code == 4, (out, term)
    assert out == ""
    assert "changed since you looked: now ABORTED" in term and "nothing was changed" in term
    assert admin_actions(get_saga(seeded["suspended"])) == [("ABORT", "SUSPENDED", "ABORTED")]


def test_one_saga_unchanged_at_the_prompt_is_acted_on(
    subprocess_env: dict[str, str], seeded: Seeded, get_saga: GetSaga
) -> None:
    sid = str(seeded["failed"])
    code, out, term = run_confirmed(
        subprocess_env, ["retry", sid, "--reason", "x", "-o", "json"], lambda: None
    )
    assert code == 0, term
    assert json.loads(out)["from_status"] == "FAILED"
    assert get_saga(seeded["failed"]).status.value == "RUNNING"
