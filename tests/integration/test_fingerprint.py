"""Definition fingerprints: a saga whose definition changed while it was in flight is
reported, never silently mis-run."""

from __future__ import annotations

from itkit import Harness, chain, entries

from saga_core import FixedRetry

ALSO_IN_MEMORY = True  # also on saga_core.testing's in-memory store (conftest.py)


async def test_different_steps_fail_the_saga_clearly(h: Harness) -> None:
    p = h.probe
    old = chain(p, ["a", "b", "c"])
    new = chain(p, ["a", "x", "c"])
    assert old.fingerprint != new.fingerprint
    starter = await h.worker(definitions={"flow": old})
    runner = await h.worker(definitions={"flow": new})
    sid = await starter.orch.start(saga_name="flow", initial_data={}, aggregation_id="o")
    assert await runner.orch.run_due() == 1
    row = await h.row(sid)
    assert row.status == "FAILED"
    assert row.deadline_at is None and row.lease_owner is None
    assert row.last_error is not None
    assert "changed incompatibly" in row.last_error
    assert "['a', 'b', 'c']" in row.last_error and "['a', 'x', 'c']" in row.last_error
    assert [e["status"] for e in row.step_history or []] == ["DEFINITION_MISMATCH"]
    assert p.effects == {}, "nothing ran under the wrong definition"
    assert row.definition_fingerprint == old.fingerprint


async def test_changed_schema_same_steps_continues_with_a_note(h: Harness) -> None:
    p = h.probe
    old = chain(p, ["a", "b"])
    new = chain(p, ["a", "b"], v2=["b"])  # b's output model gained a field
    assert old.fingerprint != new.fingerprint
    starter = await h.worker(definitions={"flow": old})
    runner = await h.worker(definitions={"flow": new})
    sid = await starter.orch.start(saga_name="flow", initial_data={}, aggregation_id="o")
    assert await runner.orch.run_due() == 1
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    history = row.step_history or []
    notes = [e for e in history if e["status"] == "DEFINITION_CHANGED"]
    assert len(notes) == 1
    assert old.fingerprint in notes[0]["reason"] and new.fingerprint in notes[0]["reason"]
    assert history.index(notes[0]) == 0, "noted before anything ran"
    assert row.context["step_outputs"]["b"] == {"n": 2, "note": "", "ratio": 0.0}


async def test_definition_change_is_noted_once_per_saga(h: Harness) -> None:
    """A saga that is claimed several times under the new definition (here: a retry after a
    suspension) gets the note once, not at every claim."""
    p = h.probe
    p.fail["b"] = 1
    old = chain(p, ["a", "b"], retry={"b": FixedRetry(2, 3600)})
    new = chain(p, ["a", "b"], retry={"b": FixedRetry(2, 3600)}, v2=["b"])
    starter = await h.worker(definitions={"flow": old})
    runner = await h.worker(definitions={"flow": new})
    sid = await starter.orch.start(saga_name="flow", initial_data={}, aggregation_id="o")
    assert await runner.orch.run_due() == 1
    assert (await h.row(sid)).status == "SUSPENDED"
    await runner.admin.retry_step(sid)
    assert await runner.orch.run_due() == 1
    row = await h.row(sid)
    assert row.status == "COMPLETED"
    history = row.step_history or []
    assert [e["status"] for e in history if e["status"] == "DEFINITION_CHANGED"] == [
        "DEFINITION_CHANGED"
    ], entries(history)
