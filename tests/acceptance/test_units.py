"""The shipped systemd units (``config/sagad.service`` and the template
``config/sagad@.service``) fit the daemon, pass ``systemd-analyze verify`` and have the
``systemd-analyze security`` exposure docs/sagad.md states; a usage error exits 64, which the
units do not restart.

The two systemd-analyze tests need systemd-analyze 250 or later (``--offline=yes``); where it
is missing they are skipped with that reason — only because the tool is absent."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sagad_kit import SagadFactory

from saga_core.settings import SagaSettings

ROOT = Path(__file__).resolve().parents[2]
UNITS = ("sagad.service", "sagad@.service")
EXIT_USAGE = 64


def _directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (ROOT / "config" / unit).read_text().splitlines():
        if re.match(r"^[A-Z]\w+=", line):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed on this machine: units not verified")
    version = subprocess.run([tool, "--version"], capture_output=True, text=True).stdout
    found = re.search(r"systemd (\d+)", version)
    if found is None or int(found.group(1)) < 250:
        pytest.skip(f"systemd-analyze too old for --offline=yes: {version.splitlines()[:1]}")
    return tool


def _installed_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with its ADJUST paths pointing at this checkout's sagad."""
    sagad = Path(sys.executable).with_name("sagad")
    text = (ROOT / "config" / unit).read_text()
    text = text.replace("/srv/myapp/.venv/bin/sagad", str(sagad))
    text = text.replace("WorkingDirectory=/srv/myapp", f"WorkingDirectory={tmp_path}")
    path = tmp_path / unit
    path.write_text(text)
    return path


@pytest.mark.parametrize("unit", UNITS)
def test_units_fit_the_daemon(unit: str) -> None:
    d = _directives(unit)
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify" and "WatchdogSec" in one
    assert one["RestartPreventExitStatus"].split() == ["64", "78"]
    assert one["DynamicUser"] == "yes", "no user to create by hand"
    assert "ProcSubset" not in one, "it hides /proc/stat from the process metrics"
    assert all(not doc.startswith("man:systemd") for doc in d["Documentation"])
    assert "README" in one["Documentation"] and "docs/sagad.md" in one["Documentation"]
    assert "SAGA_DATABASE_PASSWORD_FILE=%d/db-password" in d["Environment"]
    defaults = SagaSettings()
    assert int(one["TimeoutStopSec"].rstrip("s")) > defaults.drain_timeout
    assert int(one["TimeoutStartSec"].rstrip("s")) > defaults.startup_timeout


def test_the_template_differs_only_where_instances_must() -> None:
    single, template = _directives("sagad.service"), _directives("sagad@.service")
    assert single["StateDirectory"] == ["sagad"] and "StateDirectory" not in template
    assert template["EnvironmentFile"] == ["-/etc/sagad/sagad-%i.env"]
    assert "%i" in template["Description"][0]
    allowed = {"Description", "StateDirectory", "StateDirectoryMode", "EnvironmentFile"}
    for key in set(single) | set(template):
        if key not in allowed:
            assert single.get(key) == template.get(key), key


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    tool = _analyze()
    path = _installed_copy(unit, tmp_path)
    done = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    # verify exits 0 even on unknown keys: any output is a finding.
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
        done.stdout + done.stderr
    )


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_is_the_one_the_docs_state(unit: str, tmp_path: Path) -> None:
    tool = _analyze()
    path = _installed_copy(unit, tmp_path)
    done = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d) (\w+)", done.stdout)
    assert found is not None, done.stdout + done.stderr
    measured = f"{found.group(1)} {found.group(2)}"
    page = (ROOT / "docs" / "sagad.md").read_text()
    stated = re.search(r"`systemd-analyze security`: (\d+\.\d \w+)", page)
    assert stated is not None and stated.group(1) == measured, (stated, measured)


@pytest.mark.parametrize("args", [["--no-such-flag"], ["run", "--concurrency"], ["nope", "-x"]])
def test_usage_errors_exit_64(sagad: SagadFactory, args: list[str]) -> None:
    res = sagad.run(*args)
    assert res.returncode == EXIT_USAGE, (res.returncode, res.stderr)
    assert "Error" in res.stderr
