"""Exit codes of ``sagactl``: fixed, documented in ``--help``, relied on by scripts."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["EXIT_CODES_HELP", "ExitCode"]


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    """Any other error (including ``db status`` finding the schema out of date)."""
    USAGE = 2
    """Bad arguments or configuration, invalid input, or an action refused (no confirmation)."""
    NOT_FOUND = 3
    """No saga with that id (or an ambiguous id prefix)."""
    ILLEGAL = 4
    """The saga's status does not allow the action, or the saga changed since it was read
    (compare-and-set); a stale notify token."""
    PARTIAL = 5
    """A bulk action failed for at least one saga."""
    UNREACHABLE = 6
    """The database cannot be reached (refused or reset connection, unknown host, timeout,
    too many clients, a restarting server): trying again later may work."""
    REFUSED = 7
    """The database refused us for good: authentication failed, no such role or database,
    permission denied, SSL or connection settings rejected. Fix the settings or grants."""


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 usage error or refused, 3 not found, "
    "4 illegal transition, 5 partial bulk failure, 6 database unreachable, "
    "7 database refused access (authentication, unknown database, permission)."
)
