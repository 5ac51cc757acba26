"""Test your sagas: an in-memory store, virtual time and a crash matrix."""

from __future__ import annotations

from saga_core.testing.loop import VirtualTimeLoop, run, virtual_time
from saga_core.testing.memdata import MemoryDatabase, StoreCrashed
from saga_core.testing.memstore import MemorySagaStore
from saga_core.testing.wiring import memory_orchestrator

__all__ = [
    "MemoryDatabase",
    "MemorySagaStore",
    "StoreCrashed",
    "VirtualTimeLoop",
    "memory_orchestrator",
    "run",
    "virtual_time",
]
