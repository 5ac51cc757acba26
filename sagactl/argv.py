"""Global options wherever the operator types them.

click only accepts a group's options before the subcommand. ``hoist_global_options`` moves
recognised global options (``--opt value``, ``--opt=value``, ``-o json``, ``-ojson``) to the
front of argv, so ``sagactl list -o json`` and ``sagactl -o json list`` mean the same.

One exception: after the ``skip`` command, ``--output`` is skip's own option (the step's
output); the output format is then given with ``-o``.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["GLOBAL_VALUE_OPTIONS", "hoist_global_options", "output_format", "undecodable"]

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


def undecodable(args: Sequence[str]) -> str | None:
    """What is wrong with the first argument that is not valid UTF-8, else ``None``.

    Python hands such bytes over as lone surrogates (``surrogateescape``); nothing that
    stores or prints text can take them, so they are refused before anything runs.
    """
    for i, arg in enumerate(args):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raw = arg.encode("utf-8", "surrogateescape")
            name, eq, value = arg.partition("=")
            if eq and name.startswith("--"):
                where = f"the value of {name}"
                raw = value.encode("utf-8", "surrogateescape")
            elif i > 0 and args[i - 1].startswith("-"):
                where = f"argument {i + 1} (after {args[i - 1]})"
            else:
                where = f"argument {i + 1}"
            where = where.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            return (
                f"{where} is not valid UTF-8 ({raw!r}); give text in UTF-8 (check the locale "
                "or the encoding of the script that calls sagactl); nothing was done"
            )
    return None


def output_format(args: Sequence[str]) -> str:
    """The ``-o``/``--output`` format among hoisted global options (``text`` if none)."""
    fmt = "text"
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if arg in GLOBAL_VALUE_OPTIONS:
            if arg in ("-o", "--output") and i + 1 < len(args):
                fmt = args[i + 1]
            i += 2
            continue
        if eq and name == "--output":
            fmt = value
        elif arg.startswith("-o") and not arg.startswith("--") and len(arg) > 2:
            fmt = arg[2:]
        elif not arg.startswith("-"):
            break  # the command: what follows is its own
        i += 1
    return fmt
