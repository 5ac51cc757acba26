"""``--help`` of every command: clean metavars, no RST markup, quick to start (nothing
heavy imported: checked by module, never timed); shell completion."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from cli_helpers import SAGACTL, invoke

from sagactl.cli import app

HEAVY = ("sqlalchemy", "pydantic_settings", "saga_core", "asyncpg", "loguru", "asyncio")
"""What ``--help`` must not import (the bulk of a command's start-up time). pydantic is
not listed: typer itself imports it to parse a subcommand's options."""


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_every_command_is_walked() -> None:
    names = {" ".join(p) for p in COMMANDS}
    assert {"", "list", "show", "watch", "retry", "notify", "purge", "db status"} <= names
    assert len(COMMANDS) == 16


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "sagactl")
def test_help_is_clean(path: tuple[str, ...]) -> None:
    r = invoke([*path, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.stdout
    assert "Usage: sagactl" in out
    for bad in ("<bool>", "<list[", "``"):
        assert bad not in out, (bad, out)
    options = [ln for ln in out.splitlines() if ln.lstrip("│ ").startswith("-")]
    for bad in ("<str>", "<path>", "<int"):  # options say what to give: WHEN, FILE, N
        assert not [ln for ln in options if bad in ln], (bad, out)
    if path in (("show",), ("retry",), ("notify",)):
        assert "[SAGA_ID]" in out  # the name the help texts use


def test_help_names_the_metavars() -> None:
    out = invoke(["list", "--help"], env={"COLUMNS": "200"}).stdout
    for option, metavar in (("--status", "STATUS"), ("--since", "WHEN"), ("--limit", "N")):
        line = next(ln for ln in out.splitlines() if option in ln)
        assert metavar in line.split(), line
    out = invoke(["purge", "--help"], env={"COLUMNS": "200"}).stdout
    assert "[default: 500]" in out


def test_purge_batch_default_is_saga_cores() -> None:
    from saga_core import SagaAdmin
    from sagactl.cmd_purge import PURGE_BATCH

    assert SagaAdmin.DEFAULT_PURGE_BATCH == PURGE_BATCH


PROBE = """
import contextlib, io, json, sys
from sagactl.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
print(json.dumps({"code": code, "heavy": heavy, "help": "Usage: sagactl" in out.getvalue()}))
"""


@pytest.mark.parametrize("args", [["--help"], ["list", "--help"], ["show", "--help"]])
def test_help_imports_nothing_heavy(args: list[str]) -> None:
    """SQLAlchemy, saga_core and asyncio are imported when a command runs, not for help
    (a deterministic stand-in for a start-up time measurement); the top-level help does
    without pydantic too."""
    heavy = HEAVY if args != ["--help"] else (*HEAVY, "pydantic")
    code = PROBE.replace("HEAVY", repr(json.dumps(heavy)))
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout.splitlines()[-1])
    assert result == {"code": 0, "heavy": [], "help": True}


def test_shell_completion() -> None:
    env = {"_SAGACTL_COMPLETE": "complete_bash", "COMP_WORDS": "sagactl sh", "COMP_CWORD": "1"}
    r = subprocess.run([SAGACTL], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split() == ["show"], r.stdout + r.stderr
    env = {**env, "COMP_WORDS": "sagactl list --sta", "COMP_CWORD": "2"}
    r = subprocess.run([SAGACTL], env=env, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["--status"], r.stdout + r.stderr
    r = subprocess.run(
        [SAGACTL, "--show-completion", "bash"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "_sagactl_completion" in r.stdout, r.stderr
