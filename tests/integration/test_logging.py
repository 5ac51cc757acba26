"""saga_core logs through the standard ``logging`` module (loggers ``saga_core.*``): an
application's own logging configuration receives its records, with the saga's fields as
record attributes; without any configuration nothing is printed. Levels: a failed attempt
that will be retried at INFO, retries exhausted and the rollback at WARNING, the saga
compensated at INFO, a failed attempt's traceback at DEBUG."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from itkit import Harness, chain

from saga_core import FixedRetry

LOG_APP = Path(__file__).resolve().parent / "log_app.py"


def _about(records: list[logging.LogRecord], saga_id: str) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "saga_id", None) == saga_id]


async def test_an_applications_logging_gets_saga_cores_records(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="saga_core")
    p = h.probe
    p.fail["b"] = -1
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 0)}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    assert (await h.row(sid)).status == "COMPENSATED"
    records = _about(caplog.records, str(sid))
    assert records and all(r.name.startswith("saga_core.") for r in records)
    assert all((r.saga_name, r.worker) == ("flow", w.id) for r in records)  # type: ignore[attr-defined]

    def lines(level: int) -> list[tuple[str | None, int | None, str]]:
        return [
            (getattr(r, "step", None), getattr(r, "attempt", None), r.getMessage())
            for r in records
            if r.levelno == level
        ]

    assert lines(logging.INFO)[:1] == [
        ("b", 1, "step b failed (attempt 1): RuntimeError: injected failure of b")
    ]
    assert lines(logging.WARNING)[:2] == [
        (
            "b",
            2,
            "step b failed (attempt 2), retries exhausted: RuntimeError: injected failure of b",
        ),
        (None, None, "saga rolls back: compensating its completed steps, newest first"),
    ]
    tracebacks = lines(logging.DEBUG)
    assert [(step, attempt) for step, attempt, _ in tracebacks] == [("b", 1), ("b", 2)]
    for _, attempt, message in tracebacks:
        assert message.startswith(f"traceback of execute attempt {attempt} of step b:\n")
        assert "Traceback (most recent call last):" in message
        assert message.endswith("RuntimeError: injected failure of b")
    done = [r for r in records if r.getMessage() == "saga compensated (rolled back)"]
    assert [(r.levelno, r.status) for r in done] == [(logging.INFO, "COMPENSATED")]  # type: ignore[attr-defined]
    assert not [r for r in records if r.levelno >= logging.ERROR], "nothing for an operator"


async def test_no_traceback_record_below_debug(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="saga_core")
    p = h.probe
    p.fail["b"] = -1
    h.define("flow", chain(p, retry={"b": FixedRetry(2, 0)}))
    w = await h.worker()
    sid = await w.orch.start(saga_name="flow", initial_data={}, aggregation_id="x", inline=True)
    records = _about(caplog.records, str(sid))
    assert any("retries exhausted" in r.getMessage() for r in records)
    assert not any(r.levelno < logging.INFO for r in records)
    assert not any("Traceback" in r.getMessage() for r in records)


def _run_app(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(LOG_APP), str(tmp_path / "app.db"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_nothing_is_printed_without_logging_configured(tmp_path: Path) -> None:
    quiet = _run_app(tmp_path)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "COMPENSATED\n", "")
    # The same run, with the application configuring logging: saga_core's records appear.
    (tmp_path / "app.db").unlink()
    told = _run_app(tmp_path, "--configure")
    assert (told.returncode, told.stdout) == (0, "COMPENSATED\n")
    assert (
        "WARNING saga_core.executor: step charge failed (attempt 2), retries exhausted: "
        "RuntimeError: card declined" in told.stderr.splitlines()
    ), told.stderr
    assert "INFO saga_core.executor: saga compensated (rolled back)" in told.stderr.splitlines()
