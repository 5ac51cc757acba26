"""The documentation is tested like code: README.md and docs/*.md.

- Every Python block marked runnable (an HTML comment ``<!-- runnable -->`` on the line
  before its fence) runs as pasted, in a fresh directory, and must exit 0.
- Every ``sagactl``/``sagad`` option the pages mention exists in that command's ``--help``.
- Every link between pages points to a page that exists, and to a heading of it.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
RUNNABLE = "<!-- runnable -->"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    runnable: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3)
        runnable = i > 0 and lines[i - 1].strip() == RUNNABLE
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", runnable))
        i += 1
    return out


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in blocks(page)]


def test_there_are_pages_and_runnable_blocks() -> None:
    assert (ROOT / "README.md").is_file()
    assert any(b.runnable for b in all_blocks()), "no block marked runnable"


# --------------------------------------------------------------------------- runnable code


@pytest.mark.parametrize("block", [b for b in all_blocks() if b.runnable], ids=str)
def test_runnable_blocks_run_as_pasted(block: Block, tmp_path: Path) -> None:
    assert block.lang in ("python", "bash", "sh"), f"{block}: runnable {block.lang!r} block"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAGA_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if block.lang == "python":
        script = tmp_path / "snippet.py"
        script.write_text(block.code, encoding="utf-8")
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", block.code]
    done = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, (
        f"{block} exited {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n"
        f"--- stderr\n{done.stderr[-3000:]}"
    )


# --------------------------------------------------------------------------- CLI options

_COMMAND = re.compile(
    r"(?:^|[\s`(])(?:\.venv/bin/|/usr/bin/)?(sagactl|sagad)((?:[ \t]+[^\s`|;&)]+)*)"
)


def mentions() -> list[tuple[str, list[str], str, str]]:
    """(program, words after it, option, where) for every option given to sagactl/sagad in
    a code block or an inline code span of the pages."""
    found: list[tuple[str, list[str], str, str]] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        spans: list[tuple[int, str]] = []
        for b in blocks(page):
            if b.lang in ("", "bash", "sh", "console", "shell", "text"):
                for k, line in enumerate(b.code.splitlines()):
                    spans.append((b.line + 1 + k, line))
        for m in re.finditer(r"`([^`\n]+)`", text):
            spans.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
        for line_no, line in spans:
            for m in _COMMAND.finditer(line):
                words = m.group(2).split()
                for w in words:
                    opt = w.split("=", 1)[0]
                    if re.fullmatch(r"--[a-z][a-z0-9-]*", opt):
                        found.append(
                            (m.group(1), words, opt, f"{page.relative_to(ROOT)}:{line_no}")
                        )
    return found


@functools.cache
def help_text(program: str, path: tuple[str, ...]) -> str | None:
    done = subprocess.run(
        [str(BIN / program), *path, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    return done.stdout if done.returncode == 0 else None


def command_path(program: str, words: list[str]) -> tuple[str, ...]:
    """The longest run of leading words that names a (sub)command with its own help."""
    path: tuple[str, ...] = ()
    for w in words:
        if w.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", w):
            break
        if help_text(program, (*path, w)) is None:
            break
        path = (*path, w)
    return path


def test_every_option_the_pages_mention_exists() -> None:
    missing: list[str] = []
    for program, words, opt, where in mentions():
        path = command_path(program, words)
        text = (help_text(program, path) or "") + (help_text(program, ()) or "")
        if program == "sagad" and not path:  # `sagad` alone means `sagad run`
            text += help_text(program, ("run",)) or ""
        if opt not in text:
            missing.append(f"{where}: {program} {' '.join(path)} {opt}")
    assert missing == [], "options the docs mention that --help does not know:\n" + "\n".join(
        missing
    )


# --------------------------------------------------------------------------- links


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    out: set[str] = set()
    seen: dict[str, int] = {}
    inside = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if re.match(r"^\s*(```|~~~)", line):
            inside = not inside
            continue
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m and not inside:
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_links_between_pages_resolve() -> None:
    broken: list[str] = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"^[a-z]+:", target):
                continue  # http:, mailto:, ...
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            line = text.count("\n", 0, m.start()) + 1
            where = f"{page.relative_to(ROOT)}:{line}"
            if not dest.exists():
                broken.append(f"{where}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: {target} (no such heading)")
    assert broken == [], "broken links:\n" + "\n".join(broken)
