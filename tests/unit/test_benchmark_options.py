"""The benchmark suite's options and the pure parts of its accounting (python -m benchmarks
itself is run by hand: it is no test)."""

from __future__ import annotations

import subprocess

import pytest

from benchmarks.harness import sagad_flags
from benchmarks.procs import _works_for
from benchmarks.revisions import ROOT, CodeError, resolve
from benchmarks.run import parse_args


def test_defaults_run_the_classic_scenarios_with_both_settings() -> None:
    args = parse_args([])
    assert args.only == ["burn-down", "open-loop", "table-size", "memory", "sqlite"]
    assert args.settings == ["default", "tuned"]
    assert args.peers is None and args.baseline is None


def test_baseline_and_peers_add_their_scenarios() -> None:
    args = parse_args(["--baseline", "ed38817", "--peers", "--skip-memory"])
    assert "baseline" in args.only and "peers" in args.only and "memory" not in args.only
    assert args.peers == ["dbos", "pgqueuer"]
    assert parse_args(["--peers", "pgqueuer", "--only", "peers"]).peers == ["pgqueuer"]
    assert parse_args(["--only", "peers"]).peers == ["dbos", "pgqueuer"]


@pytest.mark.parametrize(
    "argv",
    [
        ["--only", "baseline"],  # no revision
        ["--only", "nonsense"],
        ["--peers", "temporal"],
        ["--settings", "fast"],
        ["--sagas", "0"],
        ["--peer-sagas", "-1"],
        ["--baseline-rounds", "0"],
    ],
)
def test_bad_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_default_settings_pass_no_tuning_flag() -> None:
    assert sagad_flags("default", 1024, 256) == []
    assert sagad_flags("tuned", 1024, 256) == ["--concurrency", "1024", "--batch-size", "256"]


@pytest.mark.parametrize(
    ("title", "works"),
    [
        ("postgres: 15/main: postgres saga_bench 127.0.0.1(40292) idle", True),
        ("postgres: postgres saga_bench [local] UPDATE", True),
        ("postgres: 15/main: postgres saga_test_x 127.0.0.1(40292) idle", False),
        ("postgres: 15/main: postgres saga_bench_dbos 127.0.0.1(1) idle", False),
        ("postgres: 15/main: walwriter", False),  # server-wide: in the "all" figure only
        ("postgres: 15/main: checkpointer", False),
        ("postgres: 15/main: background writer", False),
        ("postgres: 15/main: autovacuum worker saga_bench", True),
        ("postgres: 15/main: autovacuum worker other", False),
        ("postgres: 15/main: logical replication launcher", False),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", False),
    ],
)
def test_postgres_cpu_of_the_benchmark_database(title: str, works: bool) -> None:
    assert _works_for(title, "saga_bench") is works


def test_a_baseline_revision_is_resolved_or_refused() -> None:
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert resolve("HEAD") == head
    with pytest.raises(CodeError, match="no such git revision"):
        resolve("no-such-revision-anywhere")
