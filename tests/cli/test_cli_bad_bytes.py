"""Bad input is a usage error (exit 2, a clear message, nothing changed): arguments that are
not valid UTF-8 (raw bytes in argv, as a script in another encoding passes them), event
files that are not UTF-8, and durations too long for the calendar."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import SAGACTL
from cli_seed import Seeded

from saga_core import SagaAdminSnapshot

GetSaga = Callable[..., SagaAdminSnapshot]
BAD = b"caf\xe9"  # Latin-1, not UTF-8


def run(env: dict[str, str], *args: str | bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGACTL.encode(), *(a if isinstance(a, bytes) else a.encode() for a in args)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
    )


def invalid_utf8_cases(s: Seeded) -> list[list[str | bytes]]:
    failed, suspended = str(s["failed"]), str(s["suspended"])
    tok = str(s.tokens["suspended"])
    return [
        ["retry", failed, "--reason", BAD, "--yes"],
        ["retry", failed, b"--reason=" + BAD, "--yes"],
        ["abort", "--aggregation-id", BAD, "--reason", "x", "--yes"],
        ["list", "-a", BAD],
        ["list", "--name", BAD],
        ["notify", suspended, "--token", tok, "--event", b'{"note": "' + BAD + b'"}', "-r", "x"],
        ["notify", "-a", "agg-suspended", "--event-name", BAD, "-r", "x", "-y"],
        ["show", BAD],
        [BAD],
    ]


@pytest.mark.parametrize("case", range(9))
def test_invalid_utf8_argument_is_a_usage_error(
    subprocess_env: dict[str, str], seeded: Seeded, get_saga: GetSaga, case: int
) -> None:
    before = {label: get_saga(seeded[label]) for label in ("failed", "suspended")}
    args = invalid_utf8_cases(seeded)[case]
    r = run(subprocess_env, *args)
    assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert "is not valid UTF-8 (b'" in r.stderr and "caf\\xe9" in r.stderr
    assert "nothing was done" in r.stderr
    assert r.stdout == "" and "Traceback" not in r.stderr
    for label, snap in before.items():
        assert get_saga(seeded[label]) == snap, "nothing changed"


def test_the_message_names_the_argument(subprocess_env: dict[str, str], seeded: Seeded) -> None:
    r = run(subprocess_env, "retry", str(seeded["failed"]), "--reason", BAD, "--yes")
    assert "argument 4 (after --reason)" in r.stderr
    r = run(subprocess_env, "retry", str(seeded["failed"]), b"--reason=" + BAD, "--yes")
    assert "the value of --reason is not valid UTF-8 (b'caf\\xe9')" in r.stderr
    r = run(subprocess_env, "-o", "json", "list", "-a", BAD)
    assert r.returncode == 2
    err = json.loads(r.stderr)["error"]
    assert err["code"] == 2 and err["kind"] == "usage" and "not valid UTF-8" in err["message"]


def test_event_file_not_utf8(
    subprocess_env: dict[str, str], seeded: Seeded, get_saga: GetSaga, tmp_path: Path
) -> None:
    event = tmp_path / "event.json"
    event.write_bytes(b'{"note": "' + BAD + b'"}')
    before = get_saga(seeded["suspended"])
    tok = str(seeded.tokens["suspended"])
    sid = str(seeded["suspended"])
    r = run(subprocess_env, "notify", sid, "--token", tok, "--event-file", str(event), "-r", "x")
    assert r.returncode == 2, r.stderr
    assert "is not valid UTF-8" in r.stderr and "Traceback" not in r.stderr
    assert get_saga(seeded["suspended"]) == before


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--since", "99999999999d"],
        ["list", "--until", "999999999999w"],
        ["list", "--since", "9" * 400 + "s"],
        ["list", "--since", "36501d"],
        ["abort", "--since", "99999999999d", "--reason", "x", "--yes"],
        ["stats", "--window", "99999999999d"],
        ["purge", "--older-than", "99999999999d", "--reason", "x", "--yes"],
        ["watch", "--interval", "99999999999d", "--count", "1"],
    ],
    ids=lambda a: " ".join(a)[:40],
)
def test_overflowing_durations_are_usage_errors(
    subprocess_env: dict[str, str], seeded: Seeded, args: list[str]
) -> None:
    r = run(subprocess_env, *args)
    assert r.returncode == 2, (args, r.stderr)
    assert "too long a duration: at most 36500d" in r.stderr and "Traceback" not in r.stderr


def test_the_longest_duration_is_accepted(subprocess_env: dict[str, str], seeded: Seeded) -> None:
    r = run(subprocess_env, "-o", "json", "list", "--since", "36500d")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"] == 8
    r = run(subprocess_env, "list", "--since", "99999999999d")
    assert "--since: '99999999999d' is too long a duration" in r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--limit", "99999999999999999999"],
        ["list", "--offset", "99999999999999999999"],
        ["list", "--page", "99999999999999999999"],
        ["retry", "--status", "FAILED", "--limit", "99999999999999999999", "--dry-run"],
        ["orphans", "--ids", "--limit", "99999999999999999999"],
        ["purge", "--older-than", "1d", "--batch-size", "99999999999999999999", "--dry-run"],
    ],
    ids=lambda a: " ".join(a)[:40],
)
def test_numbers_past_any_table_are_usage_errors(
    subprocess_env: dict[str, str], seeded: Seeded, args: list[str]
) -> None:
    r = run(subprocess_env, *args)
    assert r.returncode == 2, (args, r.stderr)
    assert "Input should be less than or equal to" in r.stderr
    assert "database error" not in r.stderr
