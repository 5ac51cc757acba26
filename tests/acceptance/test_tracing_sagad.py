"""Tracing across processes: the application starts sagas under its request span; a real
``sagad`` (whose ``--app`` factory passes its own TracerProvider, nothing configured in
sagad) runs them, and every span it exports continues the request's trace."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import app_sagas
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sagad_kit import SagaDb, SagadFactory, wait_until


async def test_sagad_spans_continue_the_trace_of_start(
    sagad: SagadFactory, saga_db: SagaDb, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = app_sagas.build(saga_db.url, table=saga_db.table, tracer_provider=provider)
    tracer = provider.get_tracer("shop")
    try:
        with tracer.start_as_current_span("POST /orders") as request:
            ok = await app.start(saga_name="steps", initial_data={}, aggregation_id="o-1")
        with tracer.start_as_current_span("POST /returns") as request2:
            rolled = await app.start(saga_name="rollback", initial_data={}, aggregation_id="o-2")
    finally:
        await app.engine.sql_engine.dispose()

    trace_file = tmp_path / "spans.jsonl"
    worker = sagad.start(
        *saga_db.sagad_args(),
        env=saga_db.sagad_env(lease=5, ACCEPT_TRACE_FILE=str(trace_file)),
    )
    await worker.wait_ready()
    await saga_db.wait_all({"COMPLETED", "COMPENSATED"}, 2, timeout=30)

    def spans() -> list[dict[str, Any]]:
        if not trace_file.exists():
            return []
        return [json.loads(line) for line in trace_file.read_text().splitlines() if line]

    async def both_runs_exported() -> list[dict[str, Any]]:
        found = spans()
        return found if sum(s["name"].startswith("saga.run") for s in found) == 2 else []

    exported = await wait_until(both_runs_exported, timeout=30, what="the run spans")
    assert await worker.stop() == 0
    assert {s["pid"] for s in exported} == {worker.pid}

    def of(saga_id: uuid.UUID) -> list[dict[str, Any]]:
        return [s for s in exported if s["attributes"].get("saga.id") == str(saga_id)]

    for saga_id, req, names in (
        (ok, request, ["saga.step a", "saga.step b", "saga.step c", "saga.run steps"]),
        (
            rolled,
            request2,
            [
                "saga.step a",
                "saga.step b",
                "saga.step c",
                "saga.compensate b",
                "saga.compensate a",
                "saga.run rollback",
            ],
        ),
    ):
        mine = of(saga_id)
        assert [s["name"] for s in mine] == names
        ctx = req.get_span_context()
        assert {s["trace_id"] for s in mine} == {f"{ctx.trace_id:032x}"}
        (run,) = [s for s in mine if s["name"].startswith("saga.run")]
        assert run["parent_id"] == f"{ctx.span_id:016x}"
        assert all(s["parent_id"] == run["span_id"] for s in mine if s is not run)
    statuses = {s["name"]: (s["attributes"]["saga.status"], s["status"]) for s in of(rolled)}
    assert statuses["saga.step c"] == ("ERROR", "ERROR")
    assert statuses["saga.run rollback"] == ("COMPENSATED", "UNSET")
    assert [s.name for s in exporter.get_finished_spans()] == ["POST /orders", "POST /returns"]
