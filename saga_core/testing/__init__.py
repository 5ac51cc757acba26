"""Test your sagas: in memory, on virtual time, with simulated worker crashes.

- :class:`SagaTestKit` runs registered sagas on the in-memory store, deterministically:
  retry delays, timeouts and ``run_at`` are fast-forwarded on a virtual clock; events are
  delivered by token or by correlation; operator actions go through ``kit.admin``; a
  :class:`SagaResult` gives status, outputs, history and how many times each step ran.
- :func:`crash_matrix` runs one saga again and again with a worker crash at each boundary
  and compares every ending with the crash-free one (:meth:`CrashMatrix.assert_all_match_crash_free`).
- :class:`MemorySagaStore` is the store seam in memory (it passes the store conformance
  suite), and :func:`memory_orchestrator` a ``SagaOrchestrator`` on it.
- The kit runs on a :class:`VirtualTimeLoop`: call :func:`run` (``asyncio.run`` on virtual
  time) or decorate an ``async def`` test with :func:`virtual_time`.

No PostgreSQL or SQLite is needed (except, for transactional steps, a database for your own
tables: see ``SagaTestKit(session_maker=...)``).
"""

from __future__ import annotations

from saga_core.testing.calls import Boundary, CrashPoint, StepCalls
from saga_core.testing.crash import CrashCase, CrashMatrix, crash_matrix
from saga_core.testing.kit import START, SagaTestKit
from saga_core.testing.loop import VirtualTimeLoop, run, virtual_time
from saga_core.testing.memdata import MemoryDatabase, StoreCrashed
from saga_core.testing.memstore import MemorySagaStore
from saga_core.testing.result import SagaResult
from saga_core.testing.wiring import memory_orchestrator

__all__ = [
    "START",
    "Boundary",
    "CrashCase",
    "CrashMatrix",
    "CrashPoint",
    "MemoryDatabase",
    "MemorySagaStore",
    "SagaResult",
    "SagaTestKit",
    "StepCalls",
    "StoreCrashed",
    "VirtualTimeLoop",
    "crash_matrix",
    "memory_orchestrator",
    "run",
    "virtual_time",
]
