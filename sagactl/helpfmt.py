"""How ``sagactl --help`` shows options and arguments: a flag shows no type label (typer
would print ``<bool>``), a value option a metavar saying what to give (``--since WHEN``, not
``<str>``; ``--status STATUS``, not ``<list[str]>``), an argument its name in capitals
(``SAGA_ID``), the way the help texts refer to them. Every command and group of the app is
built with these classes (``cls=``)."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

__all__ = ["METAVARS", "Command", "Group"]

METAVARS = {
    "--config": "FILE",
    "--database-url": "URL",
    "--app": "MODULE:ATTR",
    "--table": "TABLE",
    "--status": "STATUS",
    "--name": "NAME",
    "--aggregation-id": "ID",
    "--since": "WHEN",
    "--until": "WHEN",
    "--limit": "N",
    "--offset": "N",
    "--page": "N",
    "--count": "N",
    "--batch-size": "N",
    "--reason": "TEXT",
    "--interval": "DURATION",
    "--window": "DURATION",
    "--older-than": "AGE",
    "--token": "TOKEN",
    "--event-name": "NAME",
    "--event": "JSON",
    "--event-file": "FILE",
    "--output": "JSON",  # skip's (the global --output is a choice, shown as its choices)
    "--output-file": "FILE",
}
"""Metavars by option name; an option not listed shows its name in capitals."""


def _is_choice(p: Any) -> bool:
    desc = getattr(p, "type_descriptor", None)  # typer >= 0.2x; click's type before that
    return (
        bool(desc.is_choice) if desc is not None else hasattr(getattr(p, "type", None), "choices")
    )


def _tidy(params: list[Any]) -> list[Any]:
    for p in params:
        if p.metavar is not None:
            continue
        if getattr(p, "param_type_name", "") == "argument":
            p.metavar = str(p.name).upper()
        elif getattr(p, "is_flag", False) and not getattr(p, "count", False):
            p.metavar = ""  # a flag takes no value: no label
        elif not _is_choice(p):  # a choice shows its choices
            long = next((o for o in p.opts if o.startswith("--")), "")
            p.metavar = METAVARS.get(long, str(p.name).upper())
    return params


class Command(TyperCommand):
    """A sagactl command (see the module docstring)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(list(super().get_params(ctx)))


class Group(TyperGroup):
    """The ``sagactl`` and ``sagactl db`` groups (see the module docstring)."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _tidy(list(super().get_params(ctx)))
