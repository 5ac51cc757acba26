"""What every command shares: the global options, settings, the two consoles (data on
stdout, messages on stderr), the database session and the error-to-exit-code boundary."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from saga_core.admin import SagaAdmin
from saga_core.orchestrator import SagaOrchestrator
from saga_core.settings import SagaSettings, SettingsError, load_settings
from sagactl.appload import bare_orchestrator, load_app, make_engine, pick_orchestrator
from sagactl.errors import classify
from sagactl.exitcodes import ExitCode

__all__ = ["ColorMode", "GlobalOptions", "OutputFormat", "Runtime", "Session", "to_json"]


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    JSONL = "jsonl"


class ColorMode(StrEnum):
    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


@dataclass
class GlobalOptions:
    config: Path | None = None
    database_url: str | None = None
    app: list[str] = field(default_factory=list)
    table: str | None = None
    output: OutputFormat = OutputFormat.TEXT
    color: ColorMode = ColorMode.AUTO


@dataclass
class Session:
    """An open connection to one saga table."""

    settings: SagaSettings
    orchestrator: SagaOrchestrator[Any]
    admin: SagaAdmin[Any]
    orchestrators: list[SagaOrchestrator[Any]]
    """Every orchestrator of ``--app`` (empty without one)."""

    async def now(self) -> datetime:
        """The database clock (ages and ``--since 2h`` are measured against it)."""
        return _utc(await self.admin.db_now())


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a ``Z``, as every JSON time of sagactl."""
    if value is None:
        return None
    return _utc(value).isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, StrEnum):
        return value.value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def to_json(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(value, default=_default, indent=indent, ensure_ascii=False)


class Runtime:
    """Built once per invocation from the global options."""

    def __init__(self, options: GlobalOptions) -> None:
        self.options = options
        self.output = options.output
        self._settings: SagaSettings | None = None
        self.out = self._console(stderr=False)
        self.err = self._console(stderr=True)

    # --- consoles and output -----------------------------------------------------------

    def _console(self, *, stderr: bool) -> Console:
        stream = sys.stderr if stderr else sys.stdout
        kw: dict[str, Any] = {"stderr": stderr, "highlight": False}
        if self.options.color is ColorMode.ALWAYS:
            kw.update(force_terminal=True, no_color=False)
        elif self.options.color is ColorMode.NEVER:
            kw.update(no_color=True, color_system=None)
        is_tty = bool(getattr(stream, "isatty", lambda: False)())
        if not is_tty:
            # Piped text output is still for people: do not squeeze tables into 80 columns.
            kw["width"] = int(os.environ.get("COLUMNS") or 160)
        return Console(**kw)

    @property
    def text(self) -> bool:
        return self.output is OutputFormat.TEXT

    @property
    def interactive(self) -> bool:
        """Progress bars and prompts only on a terminal."""
        return self.err.is_terminal and self.text

    def emit(self, data: Any) -> None:
        """One JSON document on stdout (``json``: indented; ``jsonl``: one line)."""
        indent = 2 if self.output is OutputFormat.JSON else None
        sys.stdout.write(to_json(data, indent=indent) + "\n")
        sys.stdout.flush()

    def emit_lines(self, items: Iterable[Any]) -> None:
        for item in items:
            sys.stdout.write(to_json(item) + "\n")
        sys.stdout.flush()

    def info(self, message: str) -> None:
        """A message for people on stderr (never in JSON modes' stdout)."""
        self.err.print(
            escape(self.scrub(message)), style="dim" if self.text else None, soft_wrap=True
        )

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/] {escape(self.scrub(message))}", soft_wrap=True)

    def error(self, message: str, code: ExitCode) -> None:
        message = self.scrub(message)
        if self.text:
            self.err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        else:
            err = {"error": {"code": int(code), "kind": code.name.lower(), "message": message}}
            sys.stderr.write(to_json(err) + "\n")
            sys.stderr.flush()

    # --- settings and secrets --------------------------------------------------------------

    @property
    def settings(self) -> SagaSettings:
        if self._settings is None:
            o = self.options
            self._settings = load_settings(
                o.config, database_url=o.database_url, app=o.app or None, table=o.table
            )
        return self._settings

    def scrub(self, text: str) -> str:
        """``text`` with every database password we know of replaced by ``***``."""
        from sqlalchemy.engine import make_url

        urls = [self.options.database_url, os.environ.get("SAGA_DATABASE_URL")]
        if self._settings is not None:
            urls.append(self._settings.database_url)
            with suppress(SettingsError):
                urls.append(self._settings.effective_database_url())
        for url in urls:
            if not url:
                continue
            try:
                password = make_url(url).password
            except Exception:
                continue
            if password:
                text = text.replace(str(password), "***")
        return text

    # --- database --------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Session]:
        settings = self.settings
        url = settings.effective_database_url()
        engine = make_engine(url)
        apps: list[SagaOrchestrator[Any]] = []
        try:
            if settings.app:
                apps = await load_app(settings.app, url)
                orch = pick_orchestrator(apps, settings.table, "table" in settings.model_fields_set)
            else:
                orch = bare_orchestrator(engine, settings.table)
            yield Session(settings, orch, SagaAdmin(engine=orch.engine), apps)
        finally:
            engines = {id(engine): engine}
            for o in apps:
                engines[id(o.engine.sql_engine)] = o.engine.sql_engine
            for e in engines.values():
                await e.dispose()

    def run(
        self, work: Callable[[], Awaitable[int | None]], *, on_interrupt: int = 130
    ) -> NoReturn:
        """Run ``work`` and exit with its code; every error becomes a message and a code."""
        try:
            code = int(asyncio.run(_call(work)) or 0)
        except KeyboardInterrupt:
            if on_interrupt:
                self.err.print("interrupted")
            code = on_interrupt
        except Exception as exc:
            exit_code, message = classify(exc)
            self.error(message, exit_code)
            if os.environ.get("SAGACTL_TRACEBACK"):
                raise
            code = int(exit_code)
        raise typer.Exit(code)


async def _call(work: Callable[[], Awaitable[int | None]]) -> int | None:
    return await work()
