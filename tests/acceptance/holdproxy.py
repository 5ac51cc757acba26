"""A TCP proxy in front of PostgreSQL that can *hold* traffic instead of cutting it: bytes
are kept (in order) and delivered later, connection by connection, so a test decides which
of several statements in flight reaches the server (or whose reply reaches the client) first.
Used by the issue-11 investigation tests of leases (case 11).

Each accepted client connection is a :class:`Link`. ``hold("up")`` keeps what clients send
(statements), ``hold("down")`` what the server answers; ``new=True`` also holds the links
accepted from then on. ``release(link)`` / ``release_all()`` deliver what was kept and let
traffic flow again.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

from tcpproxy import TcpProxy

_NUMBERS = itertools.count(1)


@dataclass(eq=False)
class Link:
    """One client connection through the proxy."""

    number: int
    open_up: asyncio.Event = field(default_factory=asyncio.Event)
    open_down: asyncio.Event = field(default_factory=asyncio.Event)
    held_up_at: float | None = None
    """Monotonic time of the first client bytes kept since the last release (None: none)."""
    held_down_at: float | None = None
    last_up_at: float = 0.0
    """Monotonic time of the latest client bytes seen (a statement being sent)."""
    up_bytes: int = 0
    closed: bool = False
    hold_down_after_up: bool = False
    """Set by :meth:`HoldProxy.hold_reply_to_next`: hold the replies once the client sent
    its next bytes (the answer to that next statement is kept)."""

    def __post_init__(self) -> None:
        self.open_up.set()
        self.open_down.set()

    def __repr__(self) -> str:
        return (
            f"Link#{self.number}(up={'open' if self.open_up.is_set() else 'held'}, "
            f"down={'open' if self.open_down.is_set() else 'held'}, sent={self.up_bytes})"
        )


class HoldProxy(TcpProxy):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.links: list[Link] = []
        self._hold_new: set[str] = set()

    # --- control ------------------------------------------------------------------------

    def hold(self, direction: str = "up", *, new: bool = True) -> None:
        """Keep the bytes of every open link in ``direction`` ("up": client to server,
        "down": server to client, "both"); ``new``: links accepted later too."""
        dirs = {"up", "down"} if direction == "both" else {direction}
        for link in self.open_links():
            if "up" in dirs:
                link.open_up.clear()
            if "down" in dirs:
                link.open_down.clear()
        if new:
            self._hold_new |= dirs

    def hold_reply_to_next(self, link: Link) -> None:
        """Let ``link`` run as it is, but hold the server's answer to the next thing its
        client sends (and everything after it) until released."""
        link.hold_down_after_up = True

    def release(self, link: Link, direction: str = "both") -> None:
        if direction in ("up", "both"):
            link.open_up.set()
            link.held_up_at = None
        if direction in ("down", "both"):
            link.open_down.set()
            link.held_down_at = None
            link.hold_down_after_up = False

    def release_all(self) -> None:
        self._hold_new.clear()
        for link in self.links:
            self.release(link)

    def open_links(self) -> list[Link]:
        return [link for link in self.links if not link.closed]

    def held_up(self) -> list[Link]:
        """Links with client bytes kept, oldest first."""
        held = [link for link in self.open_links() if link.held_up_at is not None]
        return sorted(held, key=lambda link: link.held_up_at or 0.0)

    def held_down(self) -> list[Link]:
        held = [link for link in self.open_links() if link.held_down_at is not None]
        return sorted(held, key=lambda link: link.held_down_at or 0.0)

    # --- plumbing -------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = Link(next(_NUMBERS))
        if "up" in self._hold_new:
            link.open_up.clear()
        if "down" in self._hold_new:
            link.open_down.clear()
        self.links.append(link)
        self.writers |= {writer, up_writer}
        for src, dst, up in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._relay(src, dst, link, up))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _relay(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: Link, up: bool
    ) -> None:
        gate = link.open_up if up else link.open_down
        try:
            while data := await src.read(65536):
                if up:
                    link.last_up_at = time.monotonic()
                    link.up_bytes += len(data)
                if not gate.is_set():
                    if up and link.held_up_at is None:
                        link.held_up_at = time.monotonic()
                    if not up and link.held_down_at is None:
                        link.held_down_at = time.monotonic()
                    await gate.wait()
                dst.write(data)
                if up and link.hold_down_after_up:
                    link.hold_down_after_up = False
                    link.open_down.clear()
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            link.closed = True
            dst.transport.abort()
            self.writers.discard(dst)
