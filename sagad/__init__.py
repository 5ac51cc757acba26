"""sagad: the worker daemon of saga_core.

It imports the application's ``SagaOrchestrator`` (``--app module:attribute``), claims due
sagas in batches with ``FOR UPDATE SKIP LOCKED``, runs them concurrently, wakes up on
PostgreSQL ``NOTIFY``, registers itself in the worker registry, drains on SIGTERM and speaks
the systemd notify protocol. Run ``sagad --help``; see the README.
"""

from __future__ import annotations

from saga_core import __version__

__all__ = ["__version__"]
