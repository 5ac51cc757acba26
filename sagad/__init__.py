"""sagad: the worker daemon of saga_core.

It imports the application's ``SagaOrchestrator`` (``--app module:attribute``), claims due
sagas in batches with ``FOR UPDATE SKIP LOCKED``, runs them concurrently, wakes up on
PostgreSQL ``NOTIFY``, registers itself in the worker registry, drains on SIGTERM and speaks
the systemd notify protocol. Run ``sagad --help``; see docs/sagad.md.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # Lazily: importing saga_core takes a while, and the console entry point (sagad.cli)
    # must be able to install its signal handlers before anything heavy is imported.
    if name == "__version__":
        from saga_core import __version__

        return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
