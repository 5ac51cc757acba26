"""Virtual time: an event loop whose clock jumps to the next timer whenever every task waits.

``VirtualTimeLoop.time()`` starts at 0 and moves only when the loop has nothing to do but wait
for a timer (``asyncio.sleep``, ``asyncio.timeout``, ``asyncio.wait(timeout=)``, ``call_later``):
it then jumps straight to that timer instead of sleeping. Code that runs takes no virtual time,
so a one-hour retry delay passes in microseconds and every run of a test sees the same times.

Work the loop waits for in another thread is waited for in real time, and the virtual clock
moves on by the real time it took: ``run_in_executor`` and ``asyncio.to_thread`` jobs, and
whatever holds :meth:`VirtualTimeLoop.real_time` (the test kit's transactional steps, whose
database driver answers from a thread). Other threads the loop does not know of do not stop
the clock: while the loop waits for them, timers keep firing.

The run layer reads its clock from the running loop (``saga_core.lease.monotonic``), so
leases, retries, step and wait timeouts all run on this clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import selectors
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Executor
from typing import Any, ParamSpec, TypeVar

__all__ = ["VirtualTimeLoop", "run", "virtual_time"]

T = TypeVar("T")
P = ParamSpec("P")


class _Selector(selectors.DefaultSelector):
    """The loop's selector: where the loop would block for a timer, the clock jumps."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        loop = self.loop
        if ready or loop is None or (timeout is not None and timeout <= 0):
            return ready
        if loop.waits_for_threads:
            # Real work in progress elsewhere: wait for it in real time, and let the virtual
            # clock follow.
            started = time.monotonic()
            ready = super().select(timeout)
            loop.advance(time.monotonic() - started)
            return ready
        if timeout is None:
            # No timer at all: only I/O or another thread can wake the loop up.
            return super().select(None)
        loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio event loop on virtual time (see the module docstring)."""

    def __init__(self) -> None:
        selector = _Selector()
        super().__init__(selector)
        selector.loop = self
        self._virtual_now = 0.0
        self._holds = 0

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward (timers due by then fire on the next turn)."""
        if seconds > 0:
            self._virtual_now += seconds

    @property
    def waits_for_threads(self) -> bool:
        return self._holds > 0

    @contextlib.contextmanager
    def real_time(self) -> Iterator[None]:
        """While held, the loop waits in real time (for another thread's answer) and the
        virtual clock moves on by the real time that passes."""
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        fut = super().run_in_executor(executor, func, *args)
        self._holds += 1

        def done(_: asyncio.Future[T]) -> None:
            self._holds -= 1

        fut.add_done_callback(done)
        return fut


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """Run ``main`` to completion on a new :class:`VirtualTimeLoop` (``asyncio.run`` on
    virtual time)."""
    with asyncio.Runner(debug=debug, loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main)


def virtual_time(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    """Decorate an ``async def`` test (or any coroutine function) to run it with :func:`run`:
    the decorated function is a plain function that pytest (or anyone) calls as usual."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return run(fn(*args, **kwargs))

    return wrapper
