"""What every command shares: the global options, settings, the two consoles (data on
stdout, messages on stderr), the database session and the error-to-exit-code boundary.

Start-up time matters for a console (``sagactl --help`` should be instant): this module and
every ``cmd_*`` module import only typer, rich and the standard library at import time;
SQLAlchemy, pydantic and ``saga_core`` are imported when a command runs (``connect``)."""

from __future__ import annotations

import gc
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
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from sagactl.exitcodes import ExitCode
from sagactl.safe import clean, json_escape

if TYPE_CHECKING:
    from saga_core import SagaAdmin, SagaOrchestrator
    from saga_core.settings import SagaSettings

__all__ = [
    "ColorMode",
    "GlobalOptions",
    "Listing",
    "OutputFormat",
    "Runtime",
    "Session",
    "StdoutClosed",
    "to_json",
]


class StdoutClosed(Exception):
    """Standard output was closed by its reader (``sagactl list | head -1``)."""


class _Stdout:
    """Standard output, with a write to a closed pipe raised as :class:`StdoutClosed`, so
    that it is never mistaken for a lost database connection (asyncpg reports those as
    BrokenPipeError too). It wraps the stream itself, not ``sys.stdout`` at each call:
    rich's Live replaces ``sys.stdout`` with a proxy that writes back to the console."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return int(self._stream.write(text))
        except BrokenPipeError as exc:
            raise StdoutClosed from exc

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError as exc:
            raise StdoutClosed from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _stdout_closed(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, StdoutClosed):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null: the interpreter's last flush must not fail again."""
    with suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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


class Listing:
    """What ``list`` reads: the database clock, a page of sagas and their count, through
    ``SagaReader`` (no SQLAlchemy: ``list`` starts fast) or a ``Session``'s ``SagaAdmin``."""

    def __init__(self, source: Any, now: Callable[[], Awaitable[datetime]]) -> None:
        self.list_sagas = source.list_sagas
        self.count_sagas = source.count_sagas
        self._now = now

    async def now(self) -> datetime:
        return _utc(await self._now())


_gc_paused = False


def pause_gc() -> None:
    """Turn the garbage collector off while sagactl starts (``main`` only): importing
    SQLAlchemy, pydantic and saga_core creates many objects and triggers collections that
    find no garbage, a large part of the start-up time."""
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True


def resume_gc() -> None:
    """Once the heavy modules are imported: move what exists out of the collector's sight
    (it lives until exit anyway) and turn the collector back on for the command's work."""
    global _gc_paused
    if _gc_paused:
        gc.freeze()
        gc.enable()
        _gc_paused = False


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: datetime | None) -> str | None:
    """ISO-8601 UTC with microseconds and a ``Z`` (``2026-12-01T17:38:46.123456Z``), as
    every JSON time of sagactl."""
    if value is None:
        return None
    return _utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


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
    """JSON for stdout and stderr: UTF-8 text, with the characters a terminal interprets
    escaped (``safe.json_escape``), so stored text cannot act on the terminal it is shown on."""
    text = json.dumps(value, default=_default, indent=indent, ensure_ascii=False)
    return json_escape(text)


class Runtime:
    """Built once per invocation from the global options."""

    def __init__(self, options: GlobalOptions) -> None:
        self.options = options
        self.output = options.output
        self._settings: SagaSettings | None = None
        self.stdout = _Stdout(sys.stdout)
        self.out = self._console(stderr=False)
        self.err = self._console(stderr=True)

    # --- consoles and output -----------------------------------------------------------

    def _console(self, *, stderr: bool) -> Console:
        stream = sys.stderr if stderr else sys.stdout
        # No markup and no emoji codes: nothing printed is parsed, stored text stays literal
        # (render with rich Text objects for style).
        kw: dict[str, Any] = {
            "stderr": stderr,
            "highlight": False,
            "markup": False,
            "emoji": False,
        }
        if not stderr:
            kw["file"] = self.stdout
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
        self.stdout.write(to_json(data, indent=indent) + "\n")
        self.stdout.flush()

    def emit_lines(self, items: Iterable[Any]) -> None:
        for item in items:
            self.stdout.write(to_json(item) + "\n")
        self.stdout.flush()

    def info(self, message: str) -> None:
        """A message for people on stderr (never in JSON modes' stdout)."""
        text = Text(clean(self.scrub(message)), style="dim" if self.text else "")
        self.err.print(text, soft_wrap=True)

    def warn(self, message: str) -> None:
        text = Text.assemble(("warning:", "yellow"), " ", clean(self.scrub(message)))
        self.err.print(text, soft_wrap=True)

    def error(self, message: str, code: ExitCode) -> None:
        message = self.scrub(message)
        if self.text:
            text = Text.assemble(("error:", "bold red"), " ", clean(message))
            self.err.print(text, soft_wrap=True)
        else:
            err = {"error": {"code": int(code), "kind": code.name.lower(), "message": message}}
            sys.stderr.write(to_json(err) + "\n")
            sys.stderr.flush()

    # --- settings and secrets --------------------------------------------------------------

    @property
    def settings(self) -> SagaSettings:
        if self._settings is None:
            from saga_core.settings import load_settings

            o = self.options
            self._settings = load_settings(
                o.config, database_url=o.database_url, app=o.app or None, table=o.table
            )
        return self._settings

    def scrub(self, text: str) -> str:
        """``text`` with the database passwords we know of masked (``***``) by URL
        structure (see ``saga_core.settings.mask_secrets``)."""
        from saga_core.settings import SettingsError, mask_secrets

        urls = [self.options.database_url, os.environ.get("SAGA_DATABASE_URL")]
        if self._settings is not None:
            urls.append(self._settings.database_url)
            with suppress(SettingsError, OSError, UnicodeDecodeError):
                urls.append(self._settings.effective_database_url())
        return mask_secrets(text, urls)

    # --- database --------------------------------------------------------------------------

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Session]:
        from saga_core import SagaAdmin
        from sagactl.appload import bare_orchestrator, load_app, make_engine, pick_orchestrator
        from sagactl.errors import NO_URL_MESSAGE, CliError

        settings = self.settings
        # Only a URL someone gave: the settings' default (./saga.db) would be created empty
        # in whatever directory sagactl runs from. An --app orchestrator object names its
        # own database; a factory needs the URL (load_app says so).
        url = (
            settings.effective_database_url()
            if "database_url" in settings.model_fields_set
            else None
        )
        if url is None and not settings.app:
            raise CliError(NO_URL_MESSAGE, ExitCode.USAGE)
        engines: dict[int, Any] = {}
        apps: list[SagaOrchestrator[Any]] = []
        try:
            if settings.app:
                apps = await load_app(settings.app, url)
                resume_gc()
                orch = pick_orchestrator(apps, settings.table, "table" in settings.model_fields_set)
            else:
                assert url is not None
                engine = make_engine(url)
                resume_gc()
                engines[id(engine)] = engine
                orch = bare_orchestrator(engine, settings.table)
            yield Session(settings, orch, SagaAdmin(engine=orch.engine), apps)
        finally:
            for o in apps:
                engines[id(o.engine.sql_engine)] = o.engine.sql_engine
            for e in engines.values():
                await e.dispose()

    @asynccontextmanager
    async def listing(self) -> AsyncIterator[Listing]:
        """Listing reads: through ``SagaReader`` where it serves this configuration (no
        ``--app``, no password file, a plain URL), else through :meth:`connect`."""
        settings = self.settings
        if (
            not settings.app
            and settings.database_password_file is None
            and "database_url" in settings.model_fields_set
        ):
            from saga_core import SagaReader

            timeout = float(os.environ.get("SAGACTL_CONNECT_TIMEOUT", "10"))
            reader = await SagaReader.open(settings.database_url, settings.table, timeout=timeout)
            if reader is not None:
                resume_gc()
                async with reader:
                    yield Listing(reader, reader.db_now)
                return
        async with self.connect() as s:
            yield Listing(s.admin, s.admin.db_now)

    def run(
        self,
        work: Callable[[], Awaitable[int | None]],
        *,
        on_interrupt: int = 130,
        quiet_interrupt: bool = False,
    ) -> NoReturn:
        """Run ``work`` and exit with its code; every error becomes a message and a code.
        Ctrl-C exits ``on_interrupt``, saying so unless that is 0 or ``quiet_interrupt``."""
        import asyncio

        try:
            code = int(asyncio.run(_call(work)) or 0)
        except KeyboardInterrupt:
            if on_interrupt and not quiet_interrupt:
                self.err.print("interrupted")
            code = on_interrupt
        except Exception as exc:
            if _stdout_closed(exc):
                # The reader of our output has gone (`| head -1`): nothing left to say,
                # and no error, as for any command-line tool whose output was cut short.
                _silence_stdout()
                raise typer.Exit(0) from None
            from sagactl.errors import classify

            exit_code, message = classify(exc)
            self.error(message, exit_code)
            if os.environ.get("SAGACTL_TRACEBACK"):
                raise
            code = int(exit_code)
        raise typer.Exit(code)


async def _call(work: Callable[[], Awaitable[int | None]]) -> int | None:
    return await work()
