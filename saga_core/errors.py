"""Exceptions raised by saga_core.

Every expected error derives from :class:`SagaError`::

    SagaError
    ├── SagaDefinitionError          a saga definition is wrong (caught at build/register time)
    │   └── TypeValidationError      an input_map annotation does not fit the steps it joins
    ├── SagaInputError               bad input: unknown saga name, non-JSON data, oversize
    │                                payload, invalid mock_output
    ├── SagaNotFoundError            no saga with that id (or an ambiguous id prefix)
    ├── ActiveSagaAlreadyExistsError another saga for the aggregation_id is still active
    ├── SagaStateError               the saga's current status does not allow the action
    │   └── SagaConflictError        the saga changed while an action was applied, or since
    │                                the caller looked (admin compare-and-set); look again
    └── SagaStoreError               the database is unreachable or the schema is missing
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from saga_core import dberrors


class SagaError(Exception):
    """Root of every error saga_core raises on purpose."""


class SagaDefinitionError(SagaError):
    """A saga definition is invalid; raised by ``SagaBuilder.build`` or ``register``."""


class TypeValidationError(SagaDefinitionError):
    """An ``input_map`` annotation does not fit the models it connects."""


class SagaInputError(SagaError):
    """Input to start, notify or an admin action is invalid; nothing was written."""


class SagaNotFoundError(SagaError):
    """No saga matches the given id."""

    def __init__(self, message: str, saga_id: UUID | str | None = None) -> None:
        super().__init__(message)
        self.saga_id = saga_id


class ActiveSagaAlreadyExistsError(SagaError):
    """A saga for this aggregation_id is still active (running, suspended, compensating or
    failed); settle it before starting another."""

    def __init__(self, aggregation_id: str) -> None:
        super().__init__(
            f"an active saga already exists for aggregation_id {aggregation_id!r}; "
            "wait for it to finish or settle it with an operator action first"
        )
        self.aggregation_id = aggregation_id


class SagaStateError(SagaError):
    """The action is not allowed in the saga's current status; nothing was changed."""

    def __init__(self, message: str, *, status: str | None = None) -> None:
        super().__init__(message)
        self.status = status


class SagaStoreError(SagaError):
    """The database could not be used: unreachable, or the schema is missing or outdated."""


class SagaConflictError(SagaStateError):
    """The saga changed between reading and writing it; nothing was changed, look again.

    Also raised by an admin action given ``expected_status`` / ``expected_updated_at`` when
    the saga is no longer as the caller saw it. ``status`` and ``updated_at`` are the
    saga's as found, when known.
    """

    def __init__(
        self, message: str, *, status: str | None = None, updated_at: datetime | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.updated_at = updated_at


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a database error that may go away by itself (a lost connection,
    a server restarting or refusing more clients, a timeout), as saga_core's workers
    classify it: worth retrying later, unlike a missing table or a constraint violation."""
    return dberrors.is_transient(exc)


# How a database error is classified (``saga_core.dberrors``), for tools that report them.
classify_db_error = dberrors.classify_db_error
DbProblem = dberrors.DbProblem
DbErrorInfo = dberrors.DbErrorInfo
