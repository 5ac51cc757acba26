"""The code under test: the current tree, or a git revision (``--baseline REV``) checked out
into a temporary worktree and installed into its own venv.

Both run the SAME benchmark app and seeding script: copies of this tree's
``benchmarks/app.py`` and ``benchmarks/seed.py`` in a folder of their own (put first on the
worker's ``PYTHONPATH`` and used as its working directory, so nothing of this tree shadows
the revision's installed ``saga_core``). The app uses only the API every revision shares
(``BaseStep``, ``InputContext``, ``SagaBuilder``, ``SagaDefinition``, ``SagaOrchestrator``);
if it does not import with the revision, the revision's own ``benchmarks/app.py`` is used
instead, and the result says so.

The revision is checked out with ``git worktree add --detach`` into
``<work-dir>/trees/<commit>`` for the run and removed when the run ends (also when it fails).
Its venv, ``<work-dir>/venvs/<commit>``, holds an editable install of that path (``pip install
-e``: a regular install would miss subpackages such as ``saga_core.store``, which the
project's ``packages`` list does not name) and is kept, so later runs only re-create the
worktree at the same path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APP_MODULE = "saga_bench_app"
SEED_SCRIPT = "saga_bench_seed.py"
_COMPLETE = ".complete"


class CodeError(RuntimeError):
    """The code under test cannot be set up (unknown revision, failed install, ...)."""


@dataclass
class Code:
    """How to run one version of the code: its interpreter, environment and app."""

    label: str
    commit: str
    python: str
    app_dir: Path
    pythonpath: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def app(self) -> str:
        return f"{APP_MODULE}:make_orchestrator"

    @property
    def seed_script(self) -> str:
        return str(self.app_dir / SEED_SCRIPT)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PYTHONPATH"] = os.pathsep.join(self.pythonpath)
        return {**env, **(extra or {})}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.python, *args],
            env=self.env(),
            cwd=self.app_dir,
            capture_output=True,
            text=True,
            check=check,
            stdin=subprocess.DEVNULL,
        )

    def describe(self) -> dict[str, object]:
        where = self.run("-c", "import saga_core, sagad; print(saga_core.__file__)").stdout
        return {
            "label": self.label,
            "commit": self.commit,
            "saga_core": where.strip(),
            "notes": self.notes,
        }


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise CodeError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def _app_dir(work_dir: Path, name: str) -> Path:
    """A folder holding copies of this tree's app and seeding script."""
    d = work_dir / "apps" / name
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "benchmarks" / "app.py", d / f"{APP_MODULE}.py")
    shutil.copyfile(ROOT / "benchmarks" / "seed.py", d / SEED_SCRIPT)
    return d


def current_code(work_dir: Path) -> Code:
    commit = git("rev-parse", "HEAD")
    # Uncommitted changes to the code under test (not to the benchmark) mark the label.
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "saga_core", "sagad")
    label = f"current {commit[:9]}" + ("+changes" if dirty else "")
    return Code(
        label=label,
        commit=commit,
        python=sys.executable,
        app_dir=_app_dir(work_dir, "current"),
        pythonpath=[str(work_dir / "apps" / "current"), str(ROOT)],
    )


def _build_venv(venv: Path, source: Path) -> None:
    """An editable install of ``source`` (it must exist at the same path on every use)."""
    marker = venv / _COMPLETE
    if marker.exists() and marker.read_text().strip() == str(source):
        return
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"  building {venv} (pip install -e {source}) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-e", str(source)],
    ]
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise CodeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    marker.write_text(f"{source}\n")


def _remove_worktree(tree: Path) -> None:
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True
    )
    shutil.rmtree(tree, ignore_errors=True)


def resolve(rev: str) -> str:
    """The commit hash of ``rev`` (CodeError when there is none)."""
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except CodeError:
        raise CodeError(f"--baseline {rev!r}: no such git revision in {ROOT}") from None


@contextlib.contextmanager
def revision_code(rev: str, work_dir: Path) -> Iterator[Code]:
    """The code of git revision ``rev``, ready to run, for the duration of the block."""
    commit = resolve(rev)
    subject = git("log", "-1", "--format=%h %s", commit)
    tree = (work_dir / "trees" / commit).resolve()
    _remove_worktree(tree)  # a leftover of an interrupted run
    tree.parent.mkdir(parents=True, exist_ok=True)
    git("worktree", "add", "--detach", str(tree), commit)
    try:
        venv = work_dir / "venvs" / commit
        _build_venv(venv, tree)
        code = Code(
            label=f"baseline {rev} ({commit[:9]})",
            commit=commit,
            python=str(venv / "bin" / "python"),
            app_dir=_app_dir(work_dir, commit),
            pythonpath=[str(work_dir / "apps" / commit)],
            notes=[f"revision: {subject}"],
        )
        where = code.run("-c", "import saga_core; print(saga_core.__file__)", check=False)
        if not where.stdout.strip().startswith(str(tree)):
            raise CodeError(
                f"the venv {venv} does not load saga_core from {tree} "
                f"({where.stdout.strip() or where.stderr[-1000:]}); delete it and run again"
            )
        probe = code.run("-c", f"import {APP_MODULE}", check=False)
        own_app = tree / "benchmarks" / "app.py"
        if probe.returncode != 0:
            if not own_app.exists():
                raise CodeError(
                    f"the benchmark app does not import with {rev} and it has no "
                    f"benchmarks/app.py of its own:\n{probe.stderr[-2000:]}"
                )
            shutil.copyfile(own_app, code.app_dir / f"{APP_MODULE}.py")
            code.notes.append("app: the revision's own benchmarks/app.py (ours does not import)")
        else:
            code.notes.append("app: this tree's benchmarks/app.py (the same as the current run)")
        yield code
    finally:
        _remove_worktree(tree)
