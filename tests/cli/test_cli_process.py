"""The real ``sagactl`` script as a subprocess: exit codes, stdout/stderr separation, the
no-terminal refusal, and a pseudo-terminal for the prompt, colours and ``watch``."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
import uuid
from collections.abc import Callable

from cli_helpers import SAGACTL
from cli_seed import Seeded

from saga_core import SagaAdminSnapshot

ESC = "\x1b["
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGACTL, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_pty(env: dict[str, str], *args: str, answer: str | None = None) -> tuple[int, str]:
    """Run under a pseudo-terminal (140x50); type ``answer`` at the first prompt."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 140, 0, 0))
    env = {**env, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([SAGACTL, *args], env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    answered = answer is None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if not answered and b"[y/n]" in out:
                os.write(master, (answer or "").encode() + b"\n")
                answered = True
        elif proc.poll() is not None:
            break
    os.close(master)
    code = proc.wait(timeout=30)
    return code, out.decode(errors="replace")


def test_exit_codes_and_streams(subprocess_env: dict[str, str], seeded: Seeded) -> None:
    env = subprocess_env
    r = run(env, "list", "-o", "json", "--status", "FAILED")
    assert r.returncode == 0, r.stderr
    assert [s["id"] for s in json.loads(r.stdout)["sagas"]] == [str(seeded["failed"])]
    r = run(env, "-o", "jsonl", "list")
    assert len(r.stdout.splitlines()) == 8 and r.stderr == ""
    r = run(env, "show", str(uuid.uuid4()))
    assert r.returncode == 3 and r.stdout == "" and "no saga" in r.stderr
    r = run(env, "abort", str(seeded["completed"]), "--reason", "x", "--yes")
    assert r.returncode == 4
    r = run(env, "list", "--since", "soon")
    assert r.returncode == 2
    r = run(env, "list", "--database-url", "postgresql://postgres@127.0.0.1:1/x")
    assert r.returncode == 6 and "database unreachable" in r.stderr
    r = run(env, "--help")
    assert (
        r.returncode == 0
        and "4 illegal transition" in r.stdout
        and "6 database unreachable" in r.stdout
    )


def test_no_terminal_refuses_without_yes(
    subprocess_env: dict[str, str], seeded: Seeded, get_saga: Callable[..., SagaAdminSnapshot]
) -> None:
    r = run(subprocess_env, "retry", str(seeded["failed"]), "--reason", "x")
    assert r.returncode == 2 and "pass --yes" in r.stderr
    r = run(subprocess_env, "abort", "--status", "SUSPENDED", "--reason", "x")
    assert r.returncode == 2
    assert get_saga(seeded["failed"]).status.value == "FAILED"
    assert get_saga(seeded["suspended"]).status.value == "SUSPENDED"
    r = run(subprocess_env, "retry", "--status", "FAILED", "--status", "COMPLETED", "-r", "x", "-y")
    assert r.returncode == 5


def test_terminal_prompt_confirms(
    subprocess_env: dict[str, str], seeded: Seeded, get_saga: Callable[..., SagaAdminSnapshot]
) -> None:
    code, out = run_pty(subprocess_env, "retry", str(seeded["failed"]), "-r", "x", answer="n")
    assert code == 2 and "not confirmed" in out
    assert get_saga(seeded["failed"]).status.value == "FAILED"
    code, out = run_pty(subprocess_env, "retry", str(seeded["failed"]), "-r", "x", answer="y")
    assert code == 0, out
    assert "Retry saga" in out and "retried" in out
    assert get_saga(seeded["failed"]).status.value == "RUNNING"
    # Bulk on a terminal: progress bar on stderr, per-saga results on stdout.
    code, out = run_pty(subprocess_env, "abort", "--status", "SUSPENDED,RUNNING", "-r", "x", "-y")
    assert code == 0, out
    assert "aborted 4 of 4 saga(s)" in ANSI.sub("", out) and "━━━" in out


def test_show_and_watch_on_a_terminal(subprocess_env: dict[str, str], seeded: Seeded) -> None:
    code, out = run_pty(subprocess_env, "show", str(seeded["failed"])[:8])
    assert code == 0, out
    assert ESC in out  # coloured on a terminal
    assert "╭─ saga " + str(seeded["failed"]) in ANSI.sub("", out) and "timeline" in out
    code, plain = run_pty({**subprocess_env, "NO_COLOR": "1"}, "show", str(seeded["failed"]))
    assert code == 0 and "\x1b[31m" not in plain and "\x1b[1;31m" not in plain
    code, out = run_pty(subprocess_env, "watch", "--count", "2", "--interval", "0.2s")
    assert code == 0, out
    for text in ("sagactl watch", "sagas", "workers", "failures", "order_manual"):
        assert text in out
    code, out = run_pty(subprocess_env, "--color", "never", "watch", "-c", "1")
    assert code == 0 and ESC + "3" not in out


def test_watch_json_lines(subprocess_env: dict[str, str], seeded: Seeded) -> None:
    r = run(subprocess_env, "watch", "-o", "jsonl", "--count", "2", "--interval", "0.1s")
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(frames) == 2
    assert frames[0]["stats"]["total"] == 8
    assert frames[0]["failures"][0]["id"] == str(seeded["failed"])


def test_standard_logging_reaches_stderr_through_loguru(
    subprocess_env: dict[str, str], seeded: Seeded
) -> None:
    """Records of standard logging (here an application's, under ``saga_core.``) from
    WARNING up are printed on stderr, as text, markup and braces kept; stdout stays the
    command's output."""
    out = run(subprocess_env, "--app", "log_app:orch", "-o", "json", "list")
    assert out.returncode == 0, out.stderr
    assert "sagactl: WARNING: careful: {braces} <b>[red]markup[/]</b> 42" in out.stderr
    assert "info line" not in out.stderr
    assert "careful" not in out.stdout
    json.loads(out.stdout)
