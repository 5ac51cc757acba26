"""saga_core: an embedded saga orchestrator for asyncio services.

Typed steps with ``execute``/``compensate``, retry policies, timeouts, compensation in
reverse order and crash recovery, with state in the application's own PostgreSQL or SQLite
database. See the README for the guarantees.
"""

from __future__ import annotations

from loguru import logger

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
from saga_core.retry import ExponentialRetry, FixedRetry, NoRetry, RetryPolicy
from saga_core.schema import schema_status, upgrade_schema
from saga_core.snapshot import SagaAdminSnapshot, SagaSnapshot
from saga_core.state import SagaState, SagaStateMixin
from saga_core.version import VERSION

__version__ = VERSION

# A library stays silent unless the application asks: logger.enable("saga_core").
logger.disable("saga_core")

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
]
