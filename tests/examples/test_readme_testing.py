"""The "Testing your sagas" example (docs/testing.md) runs as pasted: extracted into a fresh directory
and run by pytest in a subprocess, with no configuration of this project (no database)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "testing.md"
START, END = "<!-- testing-example:start -->", "<!-- testing-example:end -->"


def page_example() -> str:
    text = PAGE.read_text(encoding="utf-8")
    block = text[text.index(START) + len(START) : text.index(END)]
    match = re.fullmatch(r"\s*```python\n(.*)```\s*", block, re.DOTALL)
    assert match, "the example is one python code block between the markers"
    return match.group(1)


def test_the_testing_example_passes_as_pasted(tmp_path: Path) -> None:
    (tmp_path / "test_checkout.py").write_text(page_example(), encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")  # no project config
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_checkout.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 passed" in proc.stdout, proc.stdout
    # The printed matrix names the case that ended otherwise.
    assert "crash after ChargeCard's effect, before its checkpoint" in proc.stdout
    assert "differs: output of ChargeCard" in proc.stdout


def test_the_page_shows_the_report_the_example_prints(tmp_path: Path) -> None:
    """The report quoted under the example is the one it prints (kept in step)."""
    (tmp_path / "test_checkout.py").write_text(page_example(), encoding="utf-8")
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            "test_checkout.py::test_the_crash_matrix_catches_a_non_idempotent_step",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = proc.stdout[proc.stdout.index("crash matrix of") :]
    printed = printed[: printed.index("\n.")] if "\n." in printed else printed
    text = PAGE.read_text(encoding="utf-8")
    shown = text[text.index(END) :]
    shown = shown[shown.index("```text\n") + len("```text\n") :]
    shown = shown[: shown.index("```")]
    assert shown.strip() == printed.strip()
