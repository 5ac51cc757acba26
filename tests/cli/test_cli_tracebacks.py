"""``sagactl show`` and the tracebacks of failed attempts: the latest one in full below the
timeline, older ones as a one-line note on their row (``--tracebacks``: all in full);
``-o json`` has them as stored."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cli_helpers import CliFn
from cli_seed import Seeded

from saga_core import SagaAdminSnapshot


def _failed(snap: SagaAdminSnapshot) -> list[tuple[int, dict[str, Any]]]:
    """(timeline number, entry) of the entries carrying a traceback."""
    return [(i, e) for i, e in enumerate(snap.step_history, 1) if e.get("traceback")]


def _row(out: str, number: int) -> str:
    """Row ``number`` of the timeline."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("timeline"))
    return next(line for line in lines[start:] if line.strip().startswith(f"{number} "))


def test_show_prints_the_latest_traceback_and_notes_the_others(
    cli: CliFn, seeded: Seeded, get_saga: Callable[..., SagaAdminSnapshot]
) -> None:
    sid = seeded["compensating"]  # charge failed, then reserve's compensation failed
    (older, charge), (latest, comp) = _failed(get_saga(sid))
    assert (charge["phase"], charge["step_id"]) == ("execute", "charge")
    assert (comp["phase"], comp["step_id"]) == ("compensate", "reserve")
    r = cli("show", str(sid))
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    n_old = charge["traceback"].count("\n") + 1
    n_new = comp["traceback"].count("\n") + 1
    assert f"traceback: {n_old} lines, --tracebacks to show" in _row(out, older)
    assert f"traceback: {n_new} lines, below" in _row(out, latest)
    assert out.count("traceback of #") == 1
    title = f"traceback of #{latest} · compensate reserve attempt 1 ERROR"
    assert title in out
    shown = out[out.index(title) :]
    assert "Traceback (most recent call last):" in shown
    assert "in compensate" in shown and "RuntimeError: warehouse API down" in shown
    assert "card declined by issuer" not in shown, "the older traceback stays folded"
    assert out.index("timeline") < out.index(title), "below the timeline"


def test_show_tracebacks_prints_every_one(
    cli: CliFn, seeded: Seeded, get_saga: Callable[..., SagaAdminSnapshot]
) -> None:
    sid = seeded["compensating"]
    (older, _), (latest, _) = _failed(get_saga(sid))
    out = cli("show", str(sid), "--tracebacks").stdout
    assert "--tracebacks to show" not in out
    first = out.index(f"traceback of #{older} · execute charge attempt 1 ERROR")
    second = out.index(f"traceback of #{latest} · compensate reserve attempt 1 ERROR")
    assert first < second
    assert "RuntimeError: card declined by issuer" in out[first:second]
    assert "RuntimeError: warehouse API down" in out[second:]
    assert "below" in _row(out, older) and "below" in _row(out, latest)


def test_show_of_a_saga_without_failures_has_no_traceback(cli: CliFn, seeded: Seeded) -> None:
    out = cli("show", str(seeded["completed"]), "--tracebacks").stdout
    assert "traceback" not in out.lower()


def test_show_json_has_the_tracebacks_as_stored(
    cli: CliFn, seeded: Seeded, get_saga: Callable[..., SagaAdminSnapshot]
) -> None:
    sid = seeded["compensating"]
    stored = [e["traceback"] for _, e in _failed(get_saga(sid))]
    data = cli("show", str(sid), "-o", "json").json()
    assert [e["traceback"] for e in data["step_history"] if "traceback" in e] == stored
    assert all(
        "traceback" in e for e in data["step_history"] if e["status"] in ("ERROR", "TIMEOUT")
    )
    assert stored[0].splitlines()[-1] == "RuntimeError: card declined by issuer"
