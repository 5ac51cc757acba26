"""Global options wherever the operator types them.

click only accepts a group's options before the subcommand. ``hoist_global_options`` moves
recognised global options (``--opt value``, ``--opt=value``, ``-o json``, ``-ojson``) to the
front of argv, so ``sagactl list -o json`` and ``sagactl -o json list`` mean the same.

One exception: after the ``skip`` command, ``--output`` is skip's own option (the step's
output); the output format is then given with ``-o``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["GLOBAL_VALUE_OPTIONS", "hoist_global_options"]

GLOBAL_VALUE_OPTIONS = frozenset(
    {"--config", "--database-url", "--app", "--table", "-o", "--output", "--color"}
)
"""Global options that take a value."""

_COMMAND_OWNS = {"skip": frozenset({"--output"})}
"""Options that a command defines itself, so they are not hoisted after it."""


def hoist_global_options(args: Sequence[str]) -> list[str]:
    """Return ``args`` with every global option (and its value) moved before the command."""
    hoisted: list[str] = []
    rest: list[str] = []
    command: str | None = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        owned = _COMMAND_OWNS.get(command or "", frozenset())
        name, eq, _value = arg.partition("=")
        if name in GLOBAL_VALUE_OPTIONS and name not in owned:
            if eq:
                hoisted.append(arg)
                i += 1
            else:
                hoisted.extend(args[i : i + 2])
                i += 2
            continue
        if arg.startswith("-o") and not arg.startswith("--") and len(arg) > 2:
            hoisted.append(arg)  # -ojson
            i += 1
            continue
        if command is None and not arg.startswith("-"):
            command = arg
        rest.append(arg)
        i += 1
    return hoisted + rest
