"""The ``sagad`` commands: ``sagad run`` (the default) and ``sagad check``.

Settings: flag > ``SAGA_*`` environment > TOML file (``--config`` or ``$SAGA_CONFIG``) >
defaults, validated once; exit codes in :mod:`sagad.errors` (a usage error exits 64, not
click's 2).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from loguru import logger

from saga_core.settings import SagaSettings, SettingsError, load_settings, mask_url
from sagad import __version__
from sagad.errors import EXIT_CONFIG, EXIT_CRASH, EXIT_OK, EXIT_USAGE, SagadError

__all__ = ["run_cli"]

T = TypeVar("T")

CLICK_USAGE_EXIT = 2
"""What typer (click) exits with on a usage error; ``run_cli`` turns it into 64."""

cli = typer.Typer(
    name="sagad",
    add_completion=False,
    no_args_is_help=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="The saga_core worker daemon: runs the sagas of your SagaOrchestrator. "
    "`sagad` alone means `sagad run`.",
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="TOML settings file (default: $SAGA_CONFIG).",
        show_default=False,
    ),
]
AppOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--app",
        metavar="MODULE:ATTR",
        help="module:attribute of a SagaOrchestrator, a list of them, or a factory taking "
        "the database URL. Repeatable or comma-separated.",
        show_default=False,
    ),
]
UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        metavar="URL",
        help="postgresql+asyncpg://... or sqlite+aiosqlite:///file.db (default: the app's "
        "own engine).",
        show_default=False,
    ),
]
# Numbers are taken as text so that bad values are reported by the settings model like
# every other source (exit 78, one line per field), not as a usage error.
ConcurrencyOpt = Annotated[
    str | None,
    typer.Option("--concurrency", metavar="N", help="Sagas run at once.", show_default=False),
]
BatchOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-size", metavar="N", help="Sagas claimed per statement.", show_default=False
    ),
]
LevelOpt = Annotated[
    str | None,
    typer.Option(
        "--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING...", show_default=False
    ),
]
FormatOpt = Annotated[
    str | None,
    typer.Option("--log-format", metavar="text|json", help="Log line format.", show_default=False),
]


def _overrides(
    app: list[str] | None,
    database_url: str | None,
    concurrency: str | None,
    batch_size: str | None,
    log_level: str | None,
    log_format: str | None,
) -> dict[str, Any]:
    apps = [p.strip() for item in app or [] for p in item.split(",") if p.strip()]
    return {
        "app": apps or None,
        "database_url": database_url,
        "concurrency": concurrency,
        "batch_size": batch_size,
        "log_level": log_level,
        "log_format": log_format,
    }


def _settings(config: Path | None, overrides: dict[str, Any]) -> SagaSettings:
    try:
        return load_settings(config, **overrides)
    except SettingsError as exc:
        for line in exc.problems:
            print(f"sagad: {line}", file=sys.stderr)
        raise typer.Exit(EXIT_CONFIG) from None


def _report(exc: SagadError, log_format: str) -> None:
    for line in exc.lines:
        if log_format == "json":
            logger.error(line)
        else:
            print(f"sagad: {line}", file=sys.stderr)


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # not on Windows
        return asyncio.run(coro)
    return uvloop.run(coro)


@cli.command()
def run(
    config: ConfigOpt = None,
    app: AppOpt = None,
    database_url: UrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    batch_size: BatchOpt = None,
    log_level: LevelOpt = None,
    log_format: FormatOpt = None,
    create_schema: Annotated[
        bool,
        typer.Option(
            "--create-schema",
            help="Create or upgrade the saga tables first (handy with SQLite; in production "
            "run `sagactl db upgrade` on deploy).",
        ),
    ] = False,
) -> None:
    """Run the worker until SIGTERM/SIGINT (the default command)."""
    from sagad.daemon import RunOptions, serve
    from sagad.logs import configure_logging

    overrides = _overrides(app, database_url, concurrency, batch_size, log_level, log_format)
    settings = _settings(config, overrides)
    configure_logging(settings.log_level, settings.log_format)
    opts = RunOptions(config=config, overrides=overrides, create_schema=create_schema)
    try:
        code = _run_loop(serve(settings, opts))
    except SagadError as exc:
        _report(exc, settings.log_format)
        code = exc.exit_code
    except Exception as exc:
        logger.opt(exception=exc).critical("sagad crashed: {}", exc)
        code = EXIT_CRASH
    raise typer.Exit(code)


@cli.command()
def check(
    config: ConfigOpt = None,
    app: AppOpt = None,
    database_url: UrlOpt = None,
    concurrency: ConcurrencyOpt = None,
    batch_size: BatchOpt = None,
    log_level: LevelOpt = None,
    log_format: FormatOpt = None,
) -> None:
    """Validate the settings, import the app, connect and verify the schema.

    Exits 0 when `sagad run` would start, 75 when the database is unreachable, 78 for a
    configuration or schema problem or a permanent database error (authentication failed,
    unknown database, missing privilege), with the reason on stderr.
    """
    from sagad.daemon import load_app
    from sagad.logs import configure_logging

    overrides = _overrides(app, database_url, concurrency, batch_size, log_level, log_format)
    settings = _settings(config, overrides)
    configure_logging("WARNING", settings.log_format)

    async def probe() -> list[str]:
        loaded = await load_app(settings)
        try:
            names = sorted({n for e in loaded.engines for n in e.definitions})
            tables = sorted({e.table_name for e in loaded.engines})
            urls = [
                mask_url(d.sql_engine.url.render_as_string(hide_password=False))
                for d in loaded.databases
            ]
            return [
                f"config: ok ({config or 'no config file'})",
                f"app: ok ({len(loaded.engines)} orchestrator(s); sagas: {', '.join(names)})",
                f"database: ok ({', '.join(urls)})",
                f"schema: ok ({', '.join([*tables, 'saga_workers'])})",
            ]
        finally:
            for d in loaded.databases:
                await d.sql_engine.dispose()

    try:
        lines = _run_loop(probe())
    except SagadError as exc:
        _report(exc, settings.log_format)
        raise typer.Exit(exc.exit_code) from None
    except Exception as exc:
        print(f"sagad: check failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_CRASH) from None
    for line in lines:
        print(line)


def _version(value: bool) -> None:
    if value:
        print(f"sagad {__version__}")
        raise typer.Exit(EXIT_OK)


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """The saga_core worker daemon. `sagad` alone means `sagad run`."""


def run_cli(args: list[str]) -> int:
    """Run the command line ``args`` (``sagad.cli.main`` has put the command first); the
    exit code."""
    try:
        cli(args=args, prog_name="sagad", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        if code == CLICK_USAGE_EXIT:
            # A mistyped flag is EX_USAGE, which the unit's RestartPreventExitStatus= lists:
            # restarting cannot fix a command line. (Only usage errors exit 2 here.)
            return EXIT_USAGE
        return code if isinstance(code, int) else (0 if code is None else EXIT_CRASH)
    return EXIT_OK
