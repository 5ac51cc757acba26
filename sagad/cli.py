"""The ``sagad`` console entry point (``sagad = sagad.cli:main``, and ``python -m sagad``).

Deliberately light: for ``sagad run`` its first act is to handle SIGTERM/SIGINT
(:mod:`sagad.early`), before the seconds of imports and start-up that follow, so a stop at
any point of start-up ends the process cleanly. The commands live in :mod:`sagad.commands`.
"""

from __future__ import annotations

import sys

from sagad import early

__all__ = ["COMMANDS", "main"]

COMMANDS = ("run", "check")


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code. ``sagad`` alone means ``sagad run``.

    For ``run`` this installs process-wide signal handlers: call it as a program's main,
    not from inside another application.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or (args[0] not in COMMANDS and args[0] not in ("--help", "-h", "--version")):
        args = ["run", *args]
    if args[0] == "run":
        early.install()
    from sagad.commands import run_cli

    return run_cli(args)
