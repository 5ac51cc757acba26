"""Confirmation of repairs: asked on a terminal, refused without one unless ``--yes``."""

from __future__ import annotations

import sys

from rich.prompt import Confirm
from rich.text import Text

from sagactl.errors import CliError
from sagactl.exitcodes import ExitCode
from sagactl.runtime import Runtime

__all__ = ["confirm"]


def confirm(rt: Runtime, question: str, *, yes: bool) -> None:
    """Return when the operator agreed; raise a refusal (exit 2) otherwise."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            "refusing to act without confirmation: standard input is not a terminal; "
            "pass --yes to confirm (nothing was changed)",
            ExitCode.USAGE,
        )
    # A Text prompt: the question names sagas, and a str prompt would be parsed as markup.
    if not Confirm.ask(Text(question), console=rt.err, default=False):
        raise CliError("not confirmed; nothing was changed", ExitCode.USAGE)
