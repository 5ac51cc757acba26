"""The systemd notify protocol with the standard library only (``sd_notify(3)``).

Datagrams of ``KEY=value`` lines to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). Without the variable every call is a
no-op, so ``sagad`` runs the same outside systemd.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

from loguru import logger

__all__ = ["Notifier"]


class Notifier:
    """Sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``.

    Like ``sd_notify(unset_environment=1)`` it removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC``
    and ``WATCHDOG_PID`` from ``environ``, so processes the application starts do not talk to
    systemd in our name.
    """

    def __init__(self, environ: MutableMapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.pop("NOTIFY_SOCKET", "")
        usec = env.pop("WATCHDOG_USEC", "")
        pid = env.pop("WATCHDOG_PID", "")
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if address.startswith("@"):
            self.address = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        elif address:
            logger.warning("NOTIFY_SOCKET={!r} is not a socket path; not notifying", address)
        if self.address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)
        self.watchdog_interval: float | None = None
        """Seconds between ``WATCHDOG=1`` pings (half of ``WatchdogSec``), or ``None``."""
        try:
            watchdog_usec = int(usec) if usec else 0
            watchdog_pid = int(pid) if pid else os.getpid()
        except ValueError:
            logger.warning("ignoring malformed WATCHDOG_USEC/WATCHDOG_PID")
            watchdog_usec, watchdog_pid = 0, 0
        if watchdog_usec > 0 and watchdog_pid == os.getpid() and self._sock is not None:
            self.watchdog_interval = watchdog_usec / 1_000_000 / 2

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram; ``False`` (logged at debug) when it could not be sent."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self.address)
        except OSError as exc:
            logger.debug("sd_notify {} failed: {}", lines, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
