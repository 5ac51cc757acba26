"""saga_core: an embedded saga orchestrator for asyncio services.

Typed steps with ``execute``/``compensate``, retry policies, timeouts, compensation in
reverse order and crash recovery, with state in the application's own PostgreSQL or SQLite
database. See docs/concepts.md for the guarantees.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from saga_core.version import VERSION

if TYPE_CHECKING:
    from saga_core.admin import SagaAdmin
    from saga_core.context import StepContext, WaitForEvent, current_step
    from saga_core.definition import BaseStep, InputContext, SagaBuilder, SagaDefinition, StepRef
    from saga_core.errors import (
        ActiveSagaAlreadyExistsError,
        SagaConflictError,
        SagaDefinitionError,
        SagaError,
        SagaInputError,
        SagaNotFoundError,
        SagaStateError,
        SagaStoreError,
        TypeValidationError,
    )
    from saga_core.machine import SagaStatus
    from saga_core.orchestrator import SagaEngine, SagaOrchestrator
    from saga_core.reader import SagaReader
    from saga_core.retry import ExponentialRetry, FixedRetry, NoRetry, RetryPolicy
    from saga_core.schema import schema_status, upgrade_schema, upgrade_schema_sql, upgrade_script
    from saga_core.snapshot import SagaAdminSnapshot, SagaSnapshot
    from saga_core.state import SagaState, SagaStateMixin

__version__ = VERSION

# Standard logging, loggers saga_core.*: silent unless the application configures logging
# (a NullHandler, the convention for libraries; see saga_core.logs).
logging.getLogger(__name__).addHandler(logging.NullHandler())

# The public names, imported on first use: ``import saga_core`` (and ``sagactl --help``)
# stays cheap, and ``from saga_core import SagaStatus`` loads only what that name needs.
_WHERE = {
    "SagaAdmin": "admin",
    "StepContext": "context",
    "WaitForEvent": "context",
    "current_step": "context",
    "BaseStep": "definition",
    "InputContext": "definition",
    "SagaBuilder": "definition",
    "SagaDefinition": "definition",
    "StepRef": "definition",
    "ActiveSagaAlreadyExistsError": "errors",
    "SagaConflictError": "errors",
    "SagaDefinitionError": "errors",
    "SagaError": "errors",
    "SagaInputError": "errors",
    "SagaNotFoundError": "errors",
    "SagaStateError": "errors",
    "SagaStoreError": "errors",
    "TypeValidationError": "errors",
    "SagaStatus": "machine",
    "SagaEngine": "engine",
    "SagaOrchestrator": "orchestrator",
    "SagaReader": "reader",
    "ExponentialRetry": "retry",
    "FixedRetry": "retry",
    "NoRetry": "retry",
    "RetryPolicy": "retry",
    "schema_status": "schema",
    "upgrade_schema": "schema",
    "upgrade_schema_sql": "schema",
    "upgrade_script": "schema",
    "SagaAdminSnapshot": "snapshot",
    "SagaSnapshot": "snapshot",
    "SagaState": "state",
    "SagaStateMixin": "state",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'saga_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"saga_core.{where}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ActiveSagaAlreadyExistsError",
    "BaseStep",
    "ExponentialRetry",
    "FixedRetry",
    "InputContext",
    "NoRetry",
    "RetryPolicy",
    "SagaAdmin",
    "SagaAdminSnapshot",
    "SagaBuilder",
    "SagaConflictError",
    "SagaDefinition",
    "SagaDefinitionError",
    "SagaEngine",
    "SagaError",
    "SagaInputError",
    "SagaNotFoundError",
    "SagaOrchestrator",
    "SagaReader",
    "SagaSnapshot",
    "SagaState",
    "SagaStateError",
    "SagaStateMixin",
    "SagaStatus",
    "SagaStoreError",
    "StepContext",
    "StepRef",
    "TypeValidationError",
    "WaitForEvent",
    "__version__",
    "current_step",
    "schema_status",
    "upgrade_schema",
    "upgrade_schema_sql",
    "upgrade_script",
]
