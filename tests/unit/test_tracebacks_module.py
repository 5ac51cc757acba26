"""The traceback history keeps of a failed attempt (``saga_core.tracebacks``): the user's
frames kept, saga_core's and asyncio's folded, the innermost frame always kept, the chain
kept, no local variables; bounded (message, lines, 8 KB in all, the end kept); storable."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from typing import Any

import pytest

import saga_core
from saga_core import tracebacks as tbs
from saga_core.tracebacks import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_BYTES,
    timeout_traceback,
    traceback_text,
)

SAGA_CORE_DIR = os.path.dirname(os.path.abspath(saga_core.__file__))


def caught(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


def in_saga_core(source: str, name: str = "fake_module.py") -> dict[str, Any]:
    """Functions compiled as if they were saga_core's (their frames name a file there)."""
    namespace: dict[str, Any] = {}
    exec(compile(source, os.path.join(SAGA_CORE_DIR, name), "exec"), namespace)
    return namespace


ENGINE = in_saga_core(
    "def run_step(step):\n"
    "    return call(step)\n"
    "def call(step):\n"
    "    return step()\n"
    "def check(value):\n"
    "    raise ValueError('too large: ' + str(value))\n"
)


def frames(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("File ")]


def charge_card() -> None:
    secret_card_number = "4111-1111-1111-1111"  # a local: never in the traceback
    raise RuntimeError(f"card declined ({len(secret_card_number)} digits)")


def user_step() -> None:
    charge_card()


def test_saga_cores_frames_between_the_users_are_folded() -> None:
    text = traceback_text(caught(lambda: ENGINE["run_step"](user_step)))
    lines = text.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "RuntimeError: card declined (19 digits)"
    assert "  [2 frames in saga_core]" in lines
    names = [f.rsplit(", in ", 1)[1] for f in frames(text)]
    assert names == ["caught", "<lambda>", "user_step", "charge_card"]
    assert lines.index("  [2 frames in saga_core]") < lines.index(
        next(line for line in lines if line.strip().endswith("in user_step"))
    )
    assert "4111" not in text, "no local variables"


def test_the_innermost_frame_is_kept_even_when_it_is_saga_cores() -> None:
    text = traceback_text(caught(lambda: ENGINE["run_step"](lambda: ENGINE["check"](5))))
    assert "  [2 frames in saga_core]" in text.splitlines()
    last = frames(text)[-1]
    assert last.startswith(f'File "{SAGA_CORE_DIR}') and last.endswith(", in check")
    assert text.splitlines()[-1] == "ValueError: too large: 5"


def test_unfolded_keeps_every_frame() -> None:
    text = traceback_text(caught(lambda: ENGINE["run_step"](user_step)), fold=False)
    assert "frames in saga_core]" not in text
    names = [f.rsplit(", in ", 1)[1] for f in frames(text)]
    assert names == ["caught", "<lambda>", "run_step", "call", "user_step", "charge_card"]


def test_asyncios_frames_are_folded() -> None:
    async def main() -> None:
        user_step()

    text = traceback_text(caught(lambda: asyncio.run(main())))
    assert re.search(r"^  \[\d+ frames in asyncio\]$", text, re.M), text
    assert not any("asyncio" + os.sep in f for f in frames(text)), text
    assert [f.rsplit(", in ", 1)[1] for f in frames(text)][-3:] == [
        "main",
        "user_step",
        "charge_card",
    ]


def test_the_chain_is_kept() -> None:
    def wrapped() -> None:
        try:
            user_step()
        except RuntimeError as exc:
            raise LookupError("payment failed") from exc

    text = traceback_text(caught(wrapped))
    assert "RuntimeError: card declined (19 digits)" in text
    assert "The above exception was the direct cause of the following exception:" in text
    assert text.splitlines()[-1] == "LookupError: payment failed"


def test_exception_groups_keep_their_members() -> None:
    def group() -> None:
        raise ExceptionGroup("two branches failed", [ValueError("a"), KeyError("b")])

    text = traceback_text(caught(group))
    assert "ExceptionGroup: two branches failed (2 sub-exceptions)" in text
    assert "ValueError: a" in text and "KeyError: 'b'" in text


def test_no_caret_lines_under_source_lines() -> None:
    def nested() -> None:
        data: dict[str, Any] = {"a": {}}
        print(data["a"]["missing"] + 1)

    text = traceback_text(caught(nested))
    assert "print(data" in text
    assert not any(re.fullmatch(r"\s*[\^~]+\s*", line) for line in text.splitlines()), text


def test_a_huge_message_is_cut_but_the_frames_stay() -> None:
    def huge() -> None:
        raise RuntimeError("x" * 100_000)

    text = traceback_text(caught(huge))
    assert len(text.encode()) <= MAX_TRACEBACK_BYTES
    assert frames(text)[-1].endswith(", in huge")
    last = text.splitlines()[-1]
    cut = 100_000 + len("RuntimeError: ") - MAX_MESSAGE_CHARS
    assert last == "RuntimeError: " + "x" * (MAX_MESSAGE_CHARS - 14) + f"… [{cut} more characters]"


# 300 distinct frames (a recursion of one line would be summarised by Python).
_CALLS = "".join(f"def f{i}(exc):\n    f{i + 1}(exc)\n" for i in range(300))
DEEP: dict[str, Any] = {}
exec(compile(_CALLS + "def f300(exc):\n    raise exc\n", "/srv/app/handlers.py", "exec"), DEEP)


@pytest.mark.parametrize("char", ["a", "é", "😀"], ids=["ascii", "two-byte", "four-byte"])
def test_a_long_traceback_keeps_its_end_in_at_most_8_kb(char: str) -> None:
    # 300 frames, then a message of several hundred lines of multi-byte characters.
    message = "\n".join(f"{char * 3} line {i}" for i in range(400))
    text = traceback_text(caught(lambda: DEEP["f0"](RuntimeError(message))))
    data = text.encode("utf-8")  # valid UTF-8: no character cut in half
    assert len(data) <= MAX_TRACEBACK_BYTES
    first, *rest = text.splitlines()
    assert re.fullmatch(r"\[traceback cut: its first \d+ lines are not kept\]", first), first
    assert rest[-1].endswith(" more characters]"), "the message's end (cut) is the last line"
    assert frames(text)[-1] == 'File "/srv/app/handlers.py", line 602, in f300'
    assert len(frames(text)) < 300, "the outer frames are cut"


def test_a_recursion_is_summarised() -> None:
    def forever(n: int) -> int:
        return forever(n + 1)

    text = traceback_text(caught(lambda: forever(0)))
    assert "RecursionError: maximum recursion depth exceeded" in text
    assert re.search(r"\[Previous line repeated \d+ more times\]", text)
    assert len(text.encode()) <= MAX_TRACEBACK_BYTES


def test_storable_text() -> None:
    def bad() -> None:
        raise RuntimeError("nul \x00 and a lone surrogate \udcff")

    text = traceback_text(caught(bad))
    assert "\x00" not in text and "\udcff" not in text
    assert text.splitlines()[-1] == "RuntimeError: nul \\x00 and a lone surrogate \\udcff"
    text.encode("utf-8")  # strict: storable everywhere


def test_an_exception_whose_str_fails() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    def broken() -> None:
        raise Broken()

    text = traceback_text(caught(broken))
    assert frames(text)[-1].endswith(", in broken")
    assert "Broken" in text.splitlines()[-1]


def test_a_timeout_shows_where_the_step_was() -> None:
    async def waits_on_the_network() -> None:
        await asyncio.sleep(10)

    async def main() -> BaseException | None:
        try:
            async with asyncio.timeout(0.01):
                await waits_on_the_network()
        except TimeoutError as exc:
            return exc.__cause__ or exc.__context__
        return None

    cancelled = asyncio.run(main())
    assert isinstance(cancelled, asyncio.CancelledError)
    text = timeout_traceback(cancelled, "TimeoutError: no result within 0.01s")
    assert any(f.endswith(", in waits_on_the_network") for f in frames(text))
    assert frames(text)[-1].endswith(", in sleep"), "the innermost frame (asyncio's) is kept"
    assert text.splitlines()[-2:] == [
        "asyncio.exceptions.CancelledError",
        "TimeoutError: no result within 0.01s (the step was cancelled here by its timeout)",
    ]


def test_a_timeout_without_a_stack() -> None:
    text = timeout_traceback(None, "TimeoutError: no result within 1s")
    assert text == "TimeoutError: no result within 1s\n(no stack: the step's code had not started)"


def test_the_limits() -> None:
    assert tbs.MAX_TRACEBACK_BYTES == 8192
    assert tbs.MAX_LINE_CHARS > tbs.MAX_MESSAGE_CHARS, "a cut message line is not cut again"
