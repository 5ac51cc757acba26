"""Process accounting from Linux ``/proc``: CPU seconds and peak RSS of a process, and the
CPU of PostgreSQL, both the whole server and the part that works for one database."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Server-wide PostgreSQL processes that every commit needs (WAL, checkpoints, dirty pages).
_SHARED_AUX = ("walwriter", "checkpointer", "background writer")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads); 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def _postgres_titles() -> dict[int, str]:
    """pid -> process title (``postgres: [cluster: ]what``) of every PostgreSQL process."""
    titles: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith("postgres"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        titles[int(entry.name)] = cmdline.strip()
    return titles


def _works_for(title: str, database: str) -> bool:
    """Whether a process title is a backend of ``database`` (or an autovacuum worker on it),
    or one of the shared writers every commit needs."""
    what = title.split(": ")[-1]
    if what.startswith(_SHARED_AUX):
        return True
    words = what.split()
    if what.startswith("autovacuum worker"):
        return database in words
    # A backend: "user database host(port) state".
    return len(words) >= 2 and words[1] == database


@dataclass
class PgCpu:
    """PostgreSQL CPU between :meth:`start` and :meth:`stop`.

    ``total``: every process of the server (on a shared server, other tenants' work too);
    ``own``: the backends connected to ``database`` (and autovacuum on it) plus the WAL
    writer, checkpointer and background writer. Both are sums over the processes alive at
    :meth:`stop` (a process started in between counts whole): a backend that disconnected
    in between is missing, so keep the connections open until :meth:`stop`.
    """

    database: str
    _all0: dict[int, float] = field(default_factory=dict)
    _own0: set[int] = field(default_factory=set)
    total: float = 0.0
    own: float = 0.0

    def _sample(self) -> tuple[dict[int, float], set[int]]:
        cpu: dict[int, float] = {}
        own: set[int] = set()
        for pid, title in _postgres_titles().items():
            cpu[pid] = proc_cpu_seconds(pid)
            if _works_for(title, self.database):
                own.add(pid)
        return cpu, own

    def start(self) -> None:
        self._all0, self._own0 = self._sample()

    def stop(self) -> None:
        cpu, own = self._sample()
        delta = {pid: c - self._all0.get(pid, 0.0) for pid, c in cpu.items()}
        self.total = sum(delta.values())
        self.own = sum(delta[pid] for pid in own)


def ms_per(seconds: float, n: int) -> float:
    return round(seconds / n * 1000, 3) if n else float("nan")
