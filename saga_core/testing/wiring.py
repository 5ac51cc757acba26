"""A ``SagaOrchestrator`` on the in-memory store: the production engine, executor and admin
code, with :class:`MemorySagaStore` under it instead of a SQL database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from saga_core.engine import SagaEngine
from saga_core.errors import SagaError
from saga_core.orchestrator import SagaOrchestrator
from saga_core.payload import DEFAULT_MAX_PAYLOAD_BYTES
from saga_core.testing.memdata import MemoryDatabase
from saga_core.testing.memstore import MemorySagaStore
from saga_core.testing.txmem import MemoryTransactions

__all__ = ["memory_orchestrator"]


def _seconds(value: timedelta | float, name: str) -> timedelta:
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise SagaError(f"{name} must be a timedelta or a number of seconds, got {value!r}")
    return value if isinstance(value, timedelta) else timedelta(seconds=value)


def memory_orchestrator(
    *,
    database: MemoryDatabase | None = None,
    table_name: str = "saga_state",
    execution_lease: timedelta | float = timedelta(minutes=5),
    in_place_retry_max: timedelta | float = timedelta(seconds=1),
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    worker_id: str | None = None,
    max_recoveries: int | None = 5,
    tracer_provider: Any = None,
    session_maker: async_sessionmaker[AsyncSession] | None = None,
) -> SagaOrchestrator[Any]:
    """A ``SagaOrchestrator`` whose sagas live in memory (no SQL database).

    Arguments are those of ``SagaOrchestrator`` except:

    Args:
        database: the data to share with other orchestrators (other "processes"); a new one
            by default. Its clock is the database clock.
        table_name: the saga table in ``database``.
        session_maker: the application's database, for transactional steps (their session);
            ``None``: transactional steps cannot run.

    ``SagaAdmin(engine=orchestrator.engine)`` works on it as on a SQL one;
    ``orchestrator.engine.store`` is its :class:`MemorySagaStore`.
    """
    lease = _seconds(execution_lease, "execution_lease")
    store = MemorySagaStore(lease=lease, table_name=table_name, database=database)

    def transactions(writer: Any) -> MemoryTransactions:
        return MemoryTransactions(store, writer, session_maker)

    engine = SagaEngine.on_store(
        store,
        transactions=transactions,
        execution_lease=lease,
        in_place_retry_max=_seconds(in_place_retry_max, "in_place_retry_max"),
        max_payload_bytes=max_payload_bytes,
        worker_id=worker_id,
        max_recoveries=max_recoveries,
        tracer_provider=tracer_provider,
    )
    return SagaOrchestrator.on_engine(engine)
