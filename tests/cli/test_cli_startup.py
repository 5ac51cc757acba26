"""``sagactl list`` starts fast: it reads through ``SagaReader`` (the bare driver) and never
imports SQLAlchemy, on PostgreSQL and on SQLite; with ``SAGA_LITE_READS=0`` it goes through
SQLAlchemy and prints the same thing. (The start-up time itself is measured in the notes and
docs, never asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_seed import Seeded

PROBE = """
import atexit, sys
atexit.register(lambda: sys.stderr.write(
    "\\nSQLALCHEMY_LOADED=" + str("sqlalchemy" in sys.modules) + "\\n"))
sys.argv = ["sagactl", *sys.argv[1:]]
from sagactl.cli import main
main()
"""


def _list(env: dict[str, str], *args: str) -> tuple[dict[str, object], bool]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, "-o", "json", "list", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stderr.strip().splitlines()[-1]
    assert loaded.startswith("SQLALCHEMY_LOADED="), proc.stderr
    return json.loads(proc.stdout), loaded.endswith("True")


def test_list_on_postgresql_does_not_import_sqlalchemy(
    subprocess_env: dict[str, str], seeded: Seeded
) -> None:
    fast, loaded = _list(subprocess_env)
    assert not loaded
    assert fast["total"] == len(seeded.ids)
    assert {s["id"] for s in fast["sagas"]} == {str(i) for i in seeded.ids.values()}  # type: ignore[attr-defined,index]
    for args in ([], ["--status", "failed,suspended"], ["--limit", "3", "--page", "2"]):
        fast, loaded = _list(subprocess_env, *args)
        assert not loaded
        slow, loaded = _list({**subprocess_env, "SAGA_LITE_READS": "0"}, *args)
        assert loaded
        assert fast == slow, args


def test_list_on_sqlite_does_not_import_sqlalchemy(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**subprocess_env, "SAGA_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"}
    up = subprocess.run(
        [sys.executable, "-m", "sagactl.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 0, up.stderr
    out, loaded = _list(env)
    assert not loaded
    assert out["total"] == 0
