"""A configuration or password file that is not UTF-8 text (binary, another encoding, NUL
bytes): ``sagad`` exits 78 and ``sagactl`` exits 2, each with one line naming the file and
the offending byte, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sagad_kit import SagadFactory, base_env

SAGACTL = str(Path(sys.executable).with_name("sagactl"))
EXIT_CONFIG = 78
SAGACTL_USAGE = 2

BAD_CONTENT = {
    "binary": bytes(range(256)) * 4,
    "latin-1": 'app = ["caf\xe9:orch"]\n'.encode("latin-1"),
    "nul": b'app = ["app_sagas:make"]\n\x00\n',
}


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("kind", sorted(BAD_CONTENT))
def test_a_config_file_that_is_not_text(sagad: SagadFactory, tmp_path: Path, kind: str) -> None:
    cfg = tmp_path / "sagad.toml"
    cfg.write_bytes(BAD_CONTENT[kind])
    for cmd in ("run", "check"):
        res = sagad.run(cmd, "--config", str(cfg), "--app", "app_sagas:make")
        assert res.returncode == EXIT_CONFIG, res.stderr
        lines = _lines(res.stderr)
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith(f"sagad: config: {cfg} is not ")
        assert "offset" in lines[0] and "Traceback" not in res.stderr

    r = subprocess.run(
        [SAGACTL, "list", "--config", str(cfg)],
        capture_output=True,
        text=True,
        env=base_env(),
        timeout=60,
    )
    assert r.returncode == SAGACTL_USAGE, r.stderr
    assert f"{cfg} is not " in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind", ["binary", "latin-1", "nul"])
def test_a_password_file_that_is_not_text(
    sagad: SagadFactory, tmp_path: Path, pg_url: str, kind: str
) -> None:
    secret = tmp_path / "db-password"
    secret.write_bytes(BAD_CONTENT[kind])
    env = {"SAGA_DATABASE_PASSWORD_FILE": str(secret)}
    res = sagad.run("--app", "app_sagas:make", "--database-url", pg_url, env=env)
    assert res.returncode == EXIT_CONFIG, res.stderr
    lines = _lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"sagad: database_password_file: {secret} is not ")

    r = subprocess.run(
        [SAGACTL, "list", "--database-url", pg_url],
        capture_output=True,
        text=True,
        env=base_env(**env),
        timeout=60,
    )
    assert r.returncode == SAGACTL_USAGE, r.stderr
    assert "database_password_file" in r.stderr and "Traceback" not in r.stderr

    secret.unlink()  # unreadable (missing): the same one line, and 2 for sagactl
    r = subprocess.run(
        [SAGACTL, "list", "--database-url", pg_url],
        capture_output=True,
        text=True,
        env=base_env(**env),
        timeout=60,
    )
    assert r.returncode == SAGACTL_USAGE and "cannot read" in r.stderr, r.stderr
