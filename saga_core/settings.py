"""One settings model for ``sagad`` and ``sagactl``: command-line flags override ``SAGA_*``
environment variables, which override the TOML file, which overrides the defaults.

``load_settings`` validates everything once and raises :class:`SettingsError` whose
``problems`` hold one line per bad field.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from saga_core.dburl import simple_url, with_driver
from saga_core.errors import SagaError

__all__ = ["SagaSettings", "SettingsError", "load_settings", "mask_secrets", "mask_url"]

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///saga.db"


class SettingsError(SagaError):
    """Configuration is invalid; ``problems`` has one line per bad field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(problems))
        self.problems = problems


class SagaSettings(BaseSettings):
    """Settings of ``sagad`` and ``sagactl`` (every field also reads ``SAGA_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="SAGA_", extra="forbid", validate_default=True)

    database_url: str = DEFAULT_DATABASE_URL
    """SQLAlchemy async URL: postgresql+asyncpg://user@host/db or sqlite+aiosqlite:///file.db"""
    database_password_file: Path | None = None
    """Read the database password from this file (systemd credentials); overrides the URL's."""
    # NoDecode: SAGA_APP is "mod:attr,mod2:attr" (or a JSON list), not only JSON.
    app: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """module:attribute of the application's SagaOrchestrator(s), or of a factory that takes
    the database URL and returns one (or a list)."""
    table: str = "saga_state"
    concurrency: int = Field(default=512, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=10_000)
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    drain_timeout: float = Field(default=30.0, ge=0, le=86_400)
    heartbeat_interval: float = Field(default=5.0, gt=0, le=3600)
    worker_stale_after: float = Field(default=30.0, gt=0)
    startup_timeout: float = Field(default=30.0, ge=0, le=3600)
    """How long sagad retries an unreachable database at start before exiting 75."""
    permanent_error_timeout: float = Field(default=300.0, ge=0, le=86_400)
    """While running, how long claims may keep failing with a permanent database error
    (authentication failed, privilege revoked, table dropped) before sagad exits 78."""
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    retention_days: float | None = Field(default=None, gt=0)
    """Delete finished sagas (COMPLETED, COMPENSATED, ABORTED) this many days after they
    finished; ``None``: keep them forever."""
    retention_interval: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    """Seconds between retention runs (each deletes in batches of ``retention_batch_size``)."""
    retention_batch_size: int = Field(default=500, ge=1, le=100_000)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: Any) -> Any:
        return v.upper() if isinstance(v, str) else v

    @field_validator("app", mode="before")
    @classmethod
    def _split_app(cls, v: Any) -> Any:
        if isinstance(v, str):
            if v.lstrip().startswith("["):
                import json

                try:
                    return json.loads(v)
                except ValueError:
                    raise ValueError(f"{v!r} is not a JSON list") from None
            return [part.strip() for part in v.split(",") if part.strip()]
        return v

    @field_validator("app")
    @classmethod
    def _check_app(cls, v: list[str]) -> list[str]:
        for item in v:
            module, _, attr = item.partition(":")
            if not module or not attr:
                raise ValueError(f"{item!r} is not module:attribute")
        return v

    @field_validator("database_url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        simple = simple_url(v)
        if simple is not None:  # the common shapes, read without importing SQLAlchemy
            return with_driver(v, simple)
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(v)
        except ArgumentError:
            raise ValueError(f"{mask_url(v)!r} is not a database URL") from None
        if url.drivername in ("postgresql", "postgres"):
            return str(
                url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
            )
        if url.drivername == "sqlite":
            return str(url.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False))
        if url.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
            raise ValueError(
                f"unsupported driver {url.drivername!r}: use postgresql+asyncpg:// or sqlite+aiosqlite://"
            )
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings)

    def effective_database_url(self) -> str:
        """The URL with the password from ``database_password_file`` applied.

        Raises:
            SettingsError: the file cannot be read, or is not UTF-8 text.
        """
        if self.database_password_file is None:
            return self.database_url
        from sqlalchemy.engine import make_url

        password = _read_password(self.database_password_file)
        return str(
            make_url(self.database_url).set(password=password).render_as_string(hide_password=False)
        )


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:
        return "<unparseable URL>"


# The userinfo of a URL inside free text, by SQLAlchemy's own URL grammar (make_url: the
# username is ``[^:/]*``, the password ``[^@]*`` up to the ``@``), kept within one token.
_URL_PASSWORD = re.compile(r"(?<![\w+])(?P<head>[\w+]+://[^:/@\s]*:)(?P<password>[^@\s]*)@")

MIN_FREE_TEXT_PASSWORD = 8
"""Shorter passwords are masked only where they stand in a URL (see :func:`mask_secrets`)."""


def mask_secrets(text: str, urls: Iterable[str | None] = ()) -> str:
    """``text`` (an error message, a log line) with database passwords masked as ``***``,
    by the structure of URLs rather than by blind substring replacement:

    1. in every URL in ``text`` (``scheme://user:password@host...``, SQLAlchemy's URL
       grammar), the password component is replaced, the rest left as it was;
    2. the password of each of ``urls`` (the URLs in use) is masked where it stands as a
       URL's password component, ``:password@`` (as typed or percent-encoded);
    3. elsewhere in free text (a driver message quoting it), that password is masked only
       when it is at least ``MIN_FREE_TEXT_PASSWORD`` (8) characters long and stands as a
       whole token (no letter or digit right before or after it). A short password, such
       as ``e``, would otherwise turn "database unreachable" into "databas*** unr***achabl***";
       a long one does not occur in a message by chance.
    """
    from urllib.parse import quote

    text = _URL_PASSWORD.sub(
        lambda m: f"{m.group('head')}***@" if m.group("password") else m.group(0), text
    )
    for raw in urls:
        if not raw:
            continue
        password = _password_of(raw)
        if not password:
            continue
        secret = str(password)
        for form in {secret, quote(secret, safe=""), quote(secret, safe=" +")}:
            text = text.replace(f":{form}@", ":***@")
        if len(secret) >= MIN_FREE_TEXT_PASSWORD:
            token = re.compile(r"(?<![A-Za-z0-9])" + re.escape(secret) + r"(?![A-Za-z0-9])")
            text = token.sub("***", text)
    return text


def _password_of(url: str) -> str | None:
    simple = simple_url(url)
    if simple is not None:  # read without importing SQLAlchemy
        return simple.password
    try:
        from sqlalchemy.engine import make_url

        password = make_url(url).password
    except Exception:
        return None
    return None if password is None else str(password)


def _not_text(path: Path, raw: bytes) -> str | None:
    """Why ``raw`` (the content of ``path``) is not UTF-8 text, or ``None`` when it is."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
    nul = raw.find(b"\0")
    if nul >= 0:
        return f"{path} is not text (a NUL byte at offset {nul})"
    return None


def _read_password(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SettingsError(
            [f"database_password_file: cannot read {path}: {exc.strerror or exc}"]
        ) from None
    problem = _not_text(path, raw)
    if problem is not None:
        raise SettingsError([f"database_password_file: {problem}"])
    return raw.decode("utf-8").strip()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SettingsError([f"config: file {path} not found"]) from None
    except OSError as exc:
        raise SettingsError([f"config: cannot read {path}: {exc.strerror or exc}"]) from None
    problem = _not_text(path, raw)
    if problem is not None:
        raise SettingsError([f"config: {problem}"])
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"config: {path} is not valid TOML: {exc}"]) from None
    # Accept the settings at top level or under [sagad] / [saga].
    section: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("sagad", "saga", "sagactl") and isinstance(value, dict):
            section.update(value)
        else:
            section[key] = value
    return section


def load_settings(config: Path | str | None = None, **overrides: Any) -> SagaSettings:
    """Settings from flags (``overrides``; ``None`` values ignored) > ``SAGA_*`` environment
    > the TOML file ``config`` (or ``$SAGA_CONFIG``) > defaults.

    Raises:
        SettingsError: one line per bad field.
    """
    path = config or os.environ.get("SAGA_CONFIG")
    file_values = _read_toml(Path(path)) if path else {}
    flags = {k: v for k, v in overrides.items() if v is not None}
    env_names = {f"SAGA_{name.upper()}" for name in SagaSettings.model_fields}
    env_present = {n[5:].lower() for n in env_names if n in os.environ}
    # TOML is the lowest source: keep only what neither flags nor the environment set.
    merged_file = {k: v for k, v in file_values.items() if k not in flags and k not in env_present}
    try:
        return SagaSettings(**merged_file, **flags)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            source = (
                "flag"
                if field.split(".")[0] in flags
                else "environment"
                if field.split(".")[0] in env_present
                else "config file"
                if field.split(".")[0] in file_values
                else "settings"
            )
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown setting"
            problems.append(f"{field}: {msg} (from {source})")
        raise SettingsError(problems) from None
