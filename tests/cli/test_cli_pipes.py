"""A reader that stops reading (``sagactl -o jsonl list | head -1``): sagactl ends quietly
with exit 0, as command-line tools do, never "database unreachable: Broken pipe"."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from cli_helpers import SAGACTL
from cli_seed import Seeded

COMMANDS = [
    ["-o", "jsonl", "list"],
    ["-o", "json", "list"],
    ["list"],
    ["show", "{failed}"],
    ["-o", "json", "show", "{failed}", "--history"],
    ["stats"],
    ["-o", "json", "stats"],
    ["workers"],
    ["orphans", "-o", "json"],
    ["db", "status"],
    ["-o", "jsonl", "watch", "--count", "3", "--interval", "0.1s"],
    ["watch", "--count", "2", "--interval", "0.1s"],
    ["abort", "--status", "FAILED", "--dry-run"],
    ["purge", "--older-than", "1d", "--dry-run", "-o", "json"],
    ["--help"],
    ["list", "--help"],
]


@pytest.fixture
def closed_pipe() -> Iterator[int]:
    """The write end of a pipe whose read end is already closed: every write fails with
    EPIPE, as when `head -1` has exited."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        yield write_end
    finally:
        os.close(write_end)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a))
def test_output_to_a_closed_pipe_ends_quietly(
    subprocess_env: dict[str, str], seeded: Seeded, closed_pipe: int, args: list[str]
) -> None:
    argv = [a.format(failed=seeded["failed"]) for a in args]
    r = subprocess.run(
        [SAGACTL, *argv],
        env=subprocess_env,
        stdin=subprocess.DEVNULL,
        stdout=closed_pipe,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    # No error and no "Exception ignored ... BrokenPipeError" at interpreter exit.
    assert "unreachable" not in r.stderr and "Broken pipe" not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr


def test_head_reads_one_line_and_the_pipeline_succeeds(
    subprocess_env: dict[str, str], seeded: Seeded
) -> None:
    """The shell pipeline of the report, with pipefail: sagactl's own status counts too.
    `--limit` makes the output larger than a pipe buffer, so sagactl is still writing
    when head exits."""
    script = 'set -o pipefail; "$SAGACTL" -o jsonl watch --count 400 --interval 0.01s | head -1'
    r = subprocess.run(
        ["bash", "-c", script],
        env={**subprocess_env, "SAGACTL": SAGACTL},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 1 and r.stdout.startswith('{"stats"')
    assert r.stderr == ""


def test_a_closed_pipe_does_not_hide_real_errors(
    subprocess_env: dict[str, str], closed_pipe: int
) -> None:
    r = subprocess.run(
        [SAGACTL, "list", "--database-url", "postgresql://postgres@127.0.0.1:1/x"],
        env=subprocess_env,
        stdin=subprocess.DEVNULL,
        stdout=closed_pipe,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
    )
    assert r.returncode == 6 and "database unreachable" in r.stderr
