"""retry, skip, compensate, abort and notify: one saga and in bulk, with exit codes."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Any

from cli_helpers import CliFn
from cli_seed import Seeded

from saga_core import SagaAdminSnapshot

GetSaga = Callable[..., SagaAdminSnapshot]
APP = ["--app", "cli_app:build"]


def test_retry_failed_records_reason_and_user(
    cli: CliFn, seeded: Seeded, get_saga: GetSaga
) -> None:
    sid = seeded["failed"]
    r = cli("retry", str(sid)[:8], "--reason", "card limit raised", "--yes")
    assert r.exit_code == 0, r.stderr
    assert "retried" in r.stdout and "FAILED → RUNNING" in r.stdout
    after = get_saga(sid)
    assert after.status.value == "RUNNING" and after.retry_counter == 0
    entry = after.step_history[-1]
    assert entry["phase"] == "admin" and entry["status"] == "RETRY"
    assert entry["reason"] == "card limit raised" and entry["actor"] == getpass.getuser()


def test_action_json_output(cli: CliFn, seeded: Seeded) -> None:
    r = cli("abort", str(seeded["suspended"]), "-r", "customer cancelled", "-y", "-o", "json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["action"] == "abort" and data["ok"] is True
    assert data["from_status"] == "SUSPENDED" and data["status"] == "ABORTED"
    assert data["saga"]["id"] == str(seeded["suspended"])


def test_illegal_actions_explain_and_exit_4(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    before = get_saga(seeded["completed"])
    r = cli("retry", str(seeded["completed"]), "-r", "x", "-y")
    assert r.exit_code == 4
    assert "COMPLETED" in r.stderr and "allowed from SUSPENDED, FAILED" in r.stderr
    assert get_saga(seeded["completed"]).updated_at == before.updated_at
    r = cli("abort", str(seeded["aborted"]), "-r", "x", "-y")
    assert r.exit_code == 4 and "ABORTED" in r.stderr
    # The state machine decides for real: a RUNNING saga under a live lease.
    r = cli("compensate", str(seeded["held"]), "-r", "x", "-y")
    assert r.exit_code == 4 and "live lease" in r.stderr
    assert get_saga(seeded["held"]).status.value == "RUNNING"


def test_compensate_unheld_running_and_abort(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    r = cli("compensate", str(seeded["running"]), "-r", "stuck", "-y")
    assert r.exit_code == 0, r.stderr
    # Nothing completed yet: the rollback has nothing to undo.
    assert get_saga(seeded["running"]).status.value == "COMPENSATED"
    r = cli("abort", str(seeded["held"]), "-r", "runaway", "-y")
    assert r.exit_code == 0
    assert get_saga(seeded["held"]).status.value == "ABORTED"


def test_reason_is_required_and_confirmation_refused_without_terminal(
    cli: CliFn, seeded: Seeded, get_saga: GetSaga
) -> None:
    sid = str(seeded["failed"])
    r = cli("retry", sid, "-y")
    assert r.exit_code == 2 and "--reason is required" in r.stderr
    r = cli("retry", sid, "-r", "   ", "-y")
    assert r.exit_code == 2
    r = cli("retry", sid, "-r", "try again")
    assert r.exit_code == 2 and "pass --yes" in r.stderr
    assert get_saga(seeded["failed"]).status.value == "FAILED"


def test_not_found_exit_3(cli: CliFn, seeded: Seeded) -> None:
    r = cli("retry", "00000000-0000-4000-8000-000000000000", "-r", "x", "-y")
    assert r.exit_code == 3


def test_skip_with_valid_output(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    sid = seeded["suspended"]
    r = cli(
        *APP,
        "skip",
        str(sid),
        "--output",
        '{"charge_id": "manual-1", "amount": 42}',
        "-r",
        "charged by phone",
        "-y",
    )
    assert r.exit_code == 0, r.stderr
    after = get_saga(sid)
    assert after.status.value == "RUNNING" and after.current_step_id == "ship"
    assert after.context["step_outputs"]["charge"] == {"charge_id": "manual-1", "amount": 42}
    assert after.step_history[-1]["status"] == "SKIP"
    assert after.step_history[-1]["mock_output"]["charge_id"] == "manual-1"


def test_skip_output_file(cli: CliFn, seeded: Seeded, get_saga: GetSaga, tmp_path: Any) -> None:
    f = tmp_path / "out.json"
    f.write_text('{"charge_id": "f-1", "amount": 1}')
    r = cli("skip", str(seeded["failed"]), "--output-file", str(f), "-r", "x", "-y", *APP)
    assert r.exit_code == 0, r.stderr
    assert get_saga(seeded["failed"]).context["step_outputs"]["charge"]["charge_id"] == "f-1"


def test_skip_invalid_output_changes_nothing(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    sid = seeded["suspended"]
    before = get_saga(sid)
    r = cli(*APP, "skip", str(sid), "--output", '{"amount": "lots"}', "-r", "x", "-y")
    assert r.exit_code == 2
    assert "does not fit ChargeOut" in r.stderr and "charge_id" in r.stderr
    r = cli(*APP, "skip", str(sid), "--output", "{not json", "-r", "x", "-y")
    assert r.exit_code == 2 and "not valid JSON" in r.stderr
    # Without the application the output cannot be validated: refused, with the fix.
    r = cli("skip", str(sid), "--output", '{"charge_id": "x", "amount": 1}', "-r", "x", "-y")
    assert r.exit_code == 2 and "--app" in r.stderr
    after = get_saga(sid)
    assert after.updated_at == before.updated_at
    assert after.step_execution_token == before.step_execution_token
    assert after.step_history == before.step_history


def test_compensating_saga_refuses_skip_and_retry(
    cli: CliFn, seeded: Seeded, get_saga: GetSaga
) -> None:
    r = cli("skip", str(seeded["compensating"]), "-r", "undone by hand", "-y")
    assert r.exit_code == 4  # COMPENSATING waits for its retry time: not skippable
    r = cli("retry", str(seeded["compensating"]), "-r", "x", "-y")
    assert r.exit_code == 4


def test_notify_delivers_and_records(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    sid = seeded["suspended"]
    token = str(seeded.tokens["suspended"])
    r = cli(
        "notify",
        str(sid),
        "--token",
        token,
        "--event",
        '{"approved": true}',
        "-r",
        "approved by ops",
        "-y",
    )
    assert r.exit_code == 0, r.stderr
    after = get_saga(sid)
    assert after.status.value == "RUNNING"
    assert after.context["latest_event"] == {"approved": True}
    entry = after.step_history[-1]
    assert entry["phase"] == "event" and entry["status"] == "RECEIVED"
    assert entry["reason"] == "approved by ops" and entry["actor"] == getpass.getuser()
    # The wait consumed the event: its token is spent.
    r = cli("notify", str(sid), "--token", token, "-r", "again", "-y")
    assert r.exit_code == 4 and "stale token" in r.stderr


def test_notify_stale_token_exit_4(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    sid = seeded["suspended"]
    before = get_saga(sid)
    r = cli("notify", str(sid), "--token", "00000000-0000-4000-8000-000000000000", "-r", "x", "-y")
    assert r.exit_code == 4 and "stale" in r.stderr
    after = get_saga(sid)
    assert after.step_history[:-1] == before.step_history, "only the refusal is recorded"
    refusal = after.step_history[-1]
    assert (refusal["status"], refusal["reason"], refusal["note"]) == (
        "REFUSED",
        "stale token",
        "x",
    )
    assert after.step_execution_token == before.step_execution_token
    assert after.updated_at == before.updated_at
    r = cli("notify", str(sid), "--token", "nope", "-r", "x", "-y")
    assert r.exit_code == 2


def test_bulk_dry_run_changes_nothing(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    before = {label: get_saga(seeded[label]) for label in ("failed", "suspended", "completed")}
    r = cli("retry", "--status", "FAILED,SUSPENDED,COMPLETED", "--since", "1h", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "would act on 3 saga(s)" in r.stdout and "1 would be refused" in r.stdout
    assert str(seeded["failed"])[:8] in r.stdout
    data = cli("abort", "--name", "order", "--dry-run", "-o", "json").json()
    assert data["dry_run"] is True and data["matched"] == 5 and data["would_refuse"] == 2
    assert len(data["sample"]) == 5
    for label, snap in before.items():
        assert get_saga(seeded[label]).updated_at == snap.updated_at


def test_bulk_partial_failure_exits_5(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    r = cli(
        "retry",
        "--status",
        "FAILED",
        "--status",
        "SUSPENDED",
        "--status",
        "COMPLETED",
        "-r",
        "bulk retry",
        "-y",
    )
    assert r.exit_code == 5
    assert "retried 2 of 3 saga(s); 1 failed" in r.stderr
    lines = r.stdout.splitlines()
    assert "cannot retry" in next(ln for ln in lines if str(seeded["completed"])[:8] in ln)
    assert get_saga(seeded["failed"]).status.value == "RUNNING"
    assert get_saga(seeded["suspended"]).status.value == "RUNNING"


def test_bulk_json_results(cli: CliFn, seeded: Seeded) -> None:
    r = cli("abort", "--name", "order_fast", "-r", "cleanup", "-y", "-o", "json")
    assert r.exit_code == 5
    data = r.json()
    assert data["selected"] == 2 and data["succeeded"] == 1 and data["failed"] == 1
    by_id = {x["id"]: x for x in data["results"]}
    assert by_id[str(seeded["compensating"])]["status"] == "ABORTED"
    refused = by_id[str(seeded["compensated"])]
    assert refused["ok"] is False and refused["error"]["code"] == 4
    r = cli("abort", "-a", "agg-running", "-r", "cleanup", "-y", "-o", "jsonl")
    assert r.exit_code == 0
    assert [x["status"] for x in r.lines()] == ["ABORTED"]


def test_bulk_usage_errors(cli: CliFn, seeded: Seeded) -> None:
    r = cli("retry", "-r", "x", "-y")
    assert r.exit_code == 2 and "give a saga ID, or filters" in r.stderr
    r = cli("retry", str(seeded["failed"]), "--status", "FAILED", "-r", "x", "-y")
    assert r.exit_code == 2 and "not both" in r.stderr
    r = cli("retry", "--status", "FAILED", "-r", "x")
    assert r.exit_code == 2 and "pass --yes" in r.stderr
    r = cli("retry", "--status", "FAILED", "--limit", "1", "--since", "nonsense", "-r", "x", "-y")
    assert r.exit_code == 2


def test_bulk_limit_acts_on_oldest(cli: CliFn, seeded: Seeded, get_saga: GetSaga) -> None:
    r = cli("abort", "--status", "RUNNING", "--limit", "1", "-r", "x", "-y", "-o", "json")
    assert r.exit_code == 0
    data = r.json()
    assert data["matched"] == 2 and data["selected"] == 1
    assert data["results"][0]["id"] == str(seeded["running"])  # started before "held"
