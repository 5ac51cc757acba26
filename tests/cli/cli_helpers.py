"""Running sagactl in-process for the tests (global options hoisted as ``main`` does)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from sagactl.argv import hoist_global_options
from sagactl.cli import app

SAGACTL = str(Path(sys.executable).with_name("sagactl"))
"""The installed console script, for subprocess tests."""


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]


CliFn = Callable[..., Run]


def invoke(args: list[str], *, input: str | None = None, env: dict[str, str] | None = None) -> Run:
    runner = CliRunner()
    base = {"COLUMNS": "160", "NO_COLOR": "1", "SAGA_CONFIG": None}
    result = runner.invoke(
        app, hoist_global_options(args), input=input, env={**base, **(env or {})}
    )
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Run(result.exit_code, result.stdout, result.stderr)
