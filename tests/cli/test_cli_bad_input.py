"""Bad input to sagactl and sagad: malformed TOML and environment values (exit 2 / 78),
unknown statuses and malformed durations, SQL-looking strings in every filter (plain
values, nothing executed), ids that do not exist or ambiguous prefixes (exit 3)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from cli_helpers import CliFn, invoke
from cli_seed import LABELS, Seeded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SAGAD = str(Path(sys.executable).with_name("sagad"))
INJECTIONS = (
    "'; DROP TABLE saga_state; --",
    "x' OR '1'='1",
    '"; DELETE FROM saga_workers; --',
    "%' OR 1=1 --",
    "\\' ; TRUNCATE saga_state CASCADE; --",
)


def _total(cli: CliFn) -> int:
    r = cli("list", "-o", "json", "--limit", "1000")
    assert r.exit_code == 0, r.stderr
    return len(r.json())


def test_sql_looking_values_in_every_filter_are_plain_values(cli: CliFn, seeded: Seeded) -> None:
    total = _total(cli)
    for value in INJECTIONS:
        for args in (
            ["list", "--name", value],
            ["list", "--aggregation-id", value],
            ["stats"],
            ["retry", "--name", value, "--dry-run", "--reason", value],
            ["abort", "--aggregation-id", value, "--dry-run", "--reason", value],
        ):
            r = cli(*args)
            assert r.exit_code == 0, (args, r.stdout, r.stderr)
        r = cli("list", "--status", value)
        assert r.exit_code == 2 and "unknown status" in r.stderr
        for cmd in (["show", value], ["retry", value, "--yes", "--reason", "x"]):
            r = cli(*cmd)
            assert r.exit_code in (2, 3), (cmd, r.exit_code, r.stderr)
            assert "Traceback" not in r.stderr
        r = cli("list", "--since", value)
        assert r.exit_code == 2
    assert _total(cli) == total, "nothing was dropped or deleted"
    for label in LABELS:
        assert cli("show", str(seeded[label])).exit_code == 0


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=st.text(min_size=1, max_size=20).filter(lambda s: not s.startswith("-")))
def test_fuzzed_durations_and_statuses_are_accepted_or_exit_2(
    cli: CliFn, seeded: Seeded, value: str
) -> None:
    for option in ("--since", "--until", "--status"):
        r = cli("list", option, value, "-o", "json")
        assert r.exit_code in (0, 2), (option, value, r.exit_code, r.stderr)
        if r.exit_code == 2:
            assert r.stderr.strip(), "a refusal says why"


def test_missing_ids_and_ambiguous_prefixes_exit_3(cli: CliFn, seeded: Seeded) -> None:
    for cmd in ("show", "retry", "abort", "compensate"):
        extra = [] if cmd == "show" else ["--yes", "--reason", "test"]
        r = cli(cmd, str(uuid.uuid4()), *extra)
        assert r.exit_code == 3 and "no saga" in r.stderr.lower(), (cmd, r.stderr)
    # Every id of a uuid4 has "4" at position 14; the 14-character common prefix of two ids
    # is not unique unless they differ before it. A 1-character prefix shared by 2 sagas:
    firsts = [str(seeded[label])[0] for label in LABELS]
    dup = next((c for c in firsts if firsts.count(c) > 1), None)
    if dup is not None:
        r = cli("retry", dup, "--yes", "--reason", "test")
        assert r.exit_code == 3 and "ambiguous" in r.stderr


def test_malformed_toml_and_environment(tmp_path: Path, pg_url: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('database_url = "unterminated\n[broken')
    r = invoke(["list"], env={"SAGA_CONFIG": str(bad)})
    assert r.exit_code == 2 and "not valid TOML" in r.stderr
    r = invoke(["list", "--database-url", pg_url], env={"SAGA_CONCURRENCY": "many"})
    assert r.exit_code == 2 and "concurrency" in r.stderr
    env_base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for env in (
        {"SAGA_CONFIG": str(bad)},
        {"SAGA_CONCURRENCY": "many"},
        {"SAGA_POLL_INTERVAL": "-1"},
        {"SAGA_LOG_LEVEL": "LOUD"},
    ):
        p = subprocess.run(
            [SAGAD, "check", "--app", "nowhere:app", "--database-url", pg_url],
            env={**env_base, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 78, (env, p.returncode, p.stderr)
        assert "Traceback" not in p.stderr
