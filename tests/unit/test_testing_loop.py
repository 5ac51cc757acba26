"""Virtual time (``saga_core.testing.VirtualTimeLoop``): timers are jumped to, never slept;
threads are waited for in real time; the run layer reads its clock from the loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from saga_core.errors import SagaError
from saga_core.lease import monotonic
from saga_core.testing import SagaTestKit, VirtualTimeLoop, run, virtual_time


@virtual_time
async def test_timers_are_jumped_to() -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop)
    start = loop.time()
    await asyncio.sleep(3600)
    assert loop.time() - start == pytest.approx(3600)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.sleep(10_000)
    assert loop.time() - start == pytest.approx(3605)
    done, pending = await asyncio.wait({asyncio.ensure_future(asyncio.sleep(50))}, timeout=10)
    assert not done and loop.time() - start == pytest.approx(3615)
    for task in pending:
        task.cancel()
    assert monotonic() == loop.time(), "the run layer's clock is the loop's"


@virtual_time
async def test_code_takes_no_virtual_time() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    sum(range(100_000))
    await asyncio.sleep(0)
    assert loop.time() == start


@virtual_time
async def test_threads_are_waited_for_in_real_time() -> None:
    """A job in a thread is not overtaken by the virtual clock: a timeout far longer than
    the job does not fire while it runs, and the clock moves by the real time it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(30):
        got = await asyncio.to_thread(lambda: (time.sleep(0.05), 7)[1])
    assert got == 7
    assert 0.05 <= loop.time() - start < 30


def test_run_returns_the_result_and_decorated_tests_keep_their_arguments() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(60)
        return 2 * x

    assert run(double(21)) == 42
    assert virtual_time(double)(4) == 8


async def test_the_kit_refuses_a_loop_on_real_time() -> None:
    kit = SagaTestKit()
    with pytest.raises(SagaError, match="virtual time"):
        await kit.run_until_settled()
