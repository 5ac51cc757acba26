"""How saga_core logs: through the standard :mod:`logging` module, as SQLAlchemy, asyncpg
and httpx do, under the logger hierarchy ``saga_core.*`` (``saga_core.executor``,
``saga_core.checkpoint`` ...). The library adds only a ``NullHandler`` to ``saga_core``: it
prints nothing unless the application configures logging, and then its records go wherever
the application's go.

Records about a saga carry fields as record attributes (``extra=``), for formatters,
filters and structured handlers: ``saga_id``, ``saga_name``, ``worker``, and where they
apply ``step``, ``attempt`` and ``status``. :class:`SagaLog` binds them once per run.

Levels: ERROR for what needs an operator (a saga ending FAILED, a quarantine, a run stopped
by an unexpected error); WARNING for what was handled or heals (retries exhausted and the
rollback starting, a failed compensation attempt, a lost lease, a database outage being
retried); INFO for the life of sagas (a failed attempt that will be retried, a step waiting
for an event, a saga completed or compensated); DEBUG for the traceback of a failed attempt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any

__all__ = ["FIELDS", "SagaLog", "log_traceback"]

FIELDS = ("saga_id", "saga_name", "step", "attempt", "status", "worker")
"""The ``extra`` fields records about a saga may carry."""


class SagaLog(logging.LoggerAdapter[logging.Logger]):
    """A logger with fields bound to every record it makes (passed as ``extra``); the
    ``extra`` of one call adds to them."""

    def __init__(self, logger: logging.Logger, fields: Mapping[str, object] | None = None):
        super().__init__(logger, dict(fields or {}))

    @property
    def fields(self) -> dict[str, object]:
        return dict(self.extra or {})

    def bind(self, **fields: object) -> SagaLog:
        """The same logger with more fields bound."""
        return SagaLog(self.logger, {**self.fields, **fields})

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**self.fields, **(kwargs.get("extra") or {})}
        return msg, kwargs


def log_traceback(log: SagaLog, entry: Mapping[str, Any]) -> None:
    """The traceback a failed attempt's history ``entry`` carries, at DEBUG (after the line
    that reports the failure at its own level)."""
    text = entry.get("traceback")
    if text and log.isEnabledFor(logging.DEBUG):
        log.debug(
            "traceback of %s attempt %s of step %s:\n%s",
            entry.get("phase"),
            entry.get("attempt"),
            entry.get("step_id"),
            text,
        )
