"""An optional Prometheus endpoint (``metrics_port``), fed by the engines' listeners, plus
backlog gauges read from the database.

``prometheus_client`` is the ``metrics`` extra (``pip install 'saga-core[metrics]'``); it is
imported only when a port is configured. No ``_created`` series: they double the number of
series and no alert uses them.

The backlog gauges (due now, oldest due age, FAILED, SUSPENDED; label ``table``) cost one
statement per table every ``BACKLOG_EVERY_S`` seconds, over active rows only. Every worker
reports the same table-wide values: aggregate with ``max by (table)``, not ``sum``.
"""

from __future__ import annotations

import asyncio
import platform
import time
from typing import Any

from loguru import logger

from saga_core import SagaEngine
from saga_core.store import SagaRow
from sagad import __version__
from sagad.errors import ConfigError

__all__ = ["Metrics"]

LAG_PROBE_S = 0.5
BACKLOG_EVERY_S = 5.0
"""Seconds between two backlog reads (one indexed statement per table)."""


class Metrics:
    """The collectors, on a private registry (plus process metrics)."""

    def __init__(self) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise ConfigError(
                "metrics_port: is set but prometheus_client is not installed; "
                "install it with `pip install 'saga-core[metrics]'` or unset metrics_port"
            ) from None
        self._prom = prom
        prom.disable_created_metrics()  # type: ignore[no-untyped-call]
        reg = self.registry = prom.CollectorRegistry()
        prom.ProcessCollector(registry=reg)
        prom.PlatformCollector(registry=reg)
        self.started = prom.Counter(
            "sagad_sagas_started_total",
            "Sagas whose first step began on this worker",
            ["saga_name"],
            registry=reg,
        )
        self.finished = prom.Counter(
            "sagad_sagas_finished_total",
            "Sagas that reached COMPLETED, COMPENSATED or FAILED (or ABORTED) on this worker",
            ["saga_name", "status"],
            registry=reg,
        )
        self.step_duration = prom.Histogram(
            "sagad_step_duration_seconds",
            "Duration of step executions and compensations",
            ["saga_name", "step", "phase"],
            registry=reg,
        )
        self.step_failures = prom.Counter(
            "sagad_step_failures_total",
            "Failed step executions and compensations (errors and timeouts)",
            ["saga_name", "step", "phase", "status"],
            registry=reg,
        )
        self.lease_lost = prom.Counter(
            "sagad_lease_lost_total",
            "Sagas this worker stopped because its lease was taken over",
            ["saga_name"],
            registry=reg,
        )
        self.claim_batch = prom.Histogram(
            "sagad_claim_batch_size",
            "Sagas returned by one claim statement",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=reg,
        )
        self.in_flight = prom.Gauge(
            "sagad_in_flight", "Sagas being driven by this worker", registry=reg
        )
        self.concurrency = prom.Gauge(
            "sagad_concurrency", "The worker's concurrency limit", registry=reg
        )
        self.loop_lag = prom.Gauge(
            "sagad_event_loop_lag_seconds",
            "How late the event loop woke a timer, last probe",
            registry=reg,
        )
        self.build = prom.Gauge(
            "sagad_build_info",
            "Always 1; the labels say which sagad runs",
            ["version", "python"],
            registry=reg,
        )
        self.build.labels(__version__, platform.python_version()).set(1)
        self.due = prom.Gauge(
            "sagad_sagas_due",
            "Sagas due now and not yet claimed (table-wide; the same on every worker)",
            ["table"],
            registry=reg,
        )
        self.oldest_due_age = prom.Gauge(
            "sagad_oldest_due_age_seconds",
            "How long the oldest due saga has waited to be claimed (0 when none is due)",
            ["table"],
            registry=reg,
        )
        self.failed = prom.Gauge(
            "sagad_sagas_failed",
            "Sagas FAILED, waiting for an operator (table-wide)",
            ["table"],
            registry=reg,
        )
        self.suspended = prom.Gauge(
            "sagad_sagas_suspended",
            "Sagas SUSPENDED, waiting for a retry or an event (table-wide)",
            ["table"],
            registry=reg,
        )
        self._server: Any = None

    def attach(self, engine: SagaEngine[Any]) -> None:
        engine.listeners.append(self.on_event)

    def on_event(self, event: str, fields: dict[str, Any]) -> None:
        name = str(fields.get("saga_name", ""))
        if event == "step":
            labels = (name, str(fields.get("step_id")), str(fields.get("phase")))
            self.step_duration.labels(*labels).observe(float(fields.get("duration") or 0.0))
            status = str(fields.get("status"))
            if status in ("ERROR", "TIMEOUT"):
                self.step_failures.labels(*labels, status).inc()
        elif event == "finished":
            self.finished.labels(name, str(fields.get("status"))).inc()
        elif event == "lease_lost":
            self.lease_lost.labels(name).inc()

    def on_claim(self, _engine: SagaEngine[Any], rows: list[SagaRow]) -> None:
        self.claim_batch.observe(len(rows))
        for row in rows:
            steps = row.steps_state
            if (
                row.current_step_index == 0
                and row.phase == "execute"
                and row.takeover_count == 0
                and steps
                and not steps[0].get("attempts")
            ):
                self.started.labels(row.saga_name).inc()

    def start(self, host: str, port: int) -> None:
        try:
            result = self._prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"metrics_port: cannot listen on {host}:{port}: {exc}") from None
        self._server = result[0] if isinstance(result, tuple) else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    async def read_backlog(self, engines: list[SagaEngine[Any]]) -> None:
        """One backlog read per distinct table (engines sharing a table count once)."""
        seen: set[tuple[str, str]] = set()
        for eng in engines:
            key = (eng.sql_engine.url.render_as_string(hide_password=True), eng.table_name)
            read = getattr(eng.store, "saga_backlog", None)
            if key in seen or read is None:
                continue
            seen.add(key)
            due, oldest, failed, suspended, now = await read()
            table = eng.table_name
            self.due.labels(table).set(due)
            age = (now - oldest).total_seconds() if oldest is not None else 0.0
            self.oldest_due_age.labels(table).set(max(age, 0.0))
            self.failed.labels(table).set(failed)
            self.suspended.labels(table).set(suspended)

    async def backlog_loop(self, engines: list[SagaEngine[Any]]) -> None:
        """Refresh the backlog gauges every ``BACKLOG_EVERY_S`` until cancelled; a failed read
        keeps the last values (logged once per run of failures)."""
        failing = False
        while True:
            try:
                await self.read_backlog(engines)
                failing = False
            except Exception as exc:
                logger.log("DEBUG" if failing else "WARNING", "backlog metrics: {}", exc)
                failing = True
            await asyncio.sleep(BACKLOG_EVERY_S)

    async def probe_loop_lag(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag.set(max(0.0, time.monotonic() - before - LAG_PROBE_S))
