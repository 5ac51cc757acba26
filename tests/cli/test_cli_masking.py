"""Passwords in sagactl's messages are masked by URL structure: a one-letter password does
not turn "database unreachable" into "databas*** unr***achabl***"."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from cli_helpers import SAGACTL

ROOT = Path(__file__).resolve().parents[2]
LEAKY_APP = """
from sqlalchemy.engine import make_url


def build(url):
    password = make_url(url).password
    raise RuntimeError(f"cannot open {url} (password {password} refused)")
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "leaky.py").write_text(LEAKY_APP)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SAGA")}
    base["PYTHONPATH"] = str(ROOT)
    return base


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SAGACTL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_one_letter_password_unreachable(tmp_path: Path, env: dict[str, str]) -> None:
    r = run(tmp_path, env, "list", "--database-url", "postgresql://postgres:e@127.0.0.1:1/x")
    assert r.returncode == 6
    assert r.stderr.startswith("error: database unreachable: ")
    assert "***" not in r.stderr, "nothing to mask, nothing mangled"


def test_url_in_a_message_is_masked_and_the_rest_left_alone(
    tmp_path: Path, env: dict[str, str]
) -> None:
    url = "postgresql+asyncpg://postgres:e@127.0.0.1:1/x"
    r = run(tmp_path, env, "--app", "leaky:build", "--database-url", url, "list")
    assert r.returncode == 1
    assert (
        "unexpected error: RuntimeError: cannot open postgresql+asyncpg://postgres:***@"
        "127.0.0.1:1/x (password e refused)" in r.stderr
    ), r.stderr


def test_long_password_is_masked_in_free_text_too(tmp_path: Path, env: dict[str, str]) -> None:
    url = "postgresql+asyncpg://postgres:Tr0ub4dor-and-3@127.0.0.1:1/x"
    r = run(tmp_path, {**env, "SAGA_DATABASE_URL": url}, "--app", "leaky:build", "list")
    assert r.returncode == 1
    assert "Tr0ub4dor" not in r.stderr
    assert "postgres:***@127.0.0.1:1/x (password *** refused)" in r.stderr, r.stderr
