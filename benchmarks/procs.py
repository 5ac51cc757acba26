"""Process accounting from Linux ``/proc``: CPU seconds and peak RSS of a process, and the
CPU of PostgreSQL, both the whole server and the part that works for one database."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads); 0 when it is gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK if fields else 0.0


def reaped_children_cpu_seconds(pid: int) -> float:
    """CPU seconds of the children ``pid`` has waited for (they exited)."""
    fields = _stat(pid)
    return (int(fields[13]) + int(fields[14])) / CLK_TCK if fields else 0.0


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
    """Whether a process title is a backend of ``database`` or an autovacuum worker on it."""
    words = title.split(": ")[-1].split()
    if words[:2] == ["autovacuum", "worker"]:
        return database in words[2:]
    # A backend: "user database host(port) state".
    return len(words) >= 2 and words[1] == database


def _postmasters(pids: set[int]) -> list[int]:
    """The PostgreSQL processes whose parent is not one: the servers' postmasters."""
    return [pid for pid in pids if (f := _stat(pid)) and int(f[1]) not in pids]


def _reaped(pids: list[int]) -> float:
    return sum(reaped_children_cpu_seconds(pid) for pid in pids)


@dataclass
class PgCpu:
    """PostgreSQL CPU seconds between :meth:`start` and :meth:`stop`.

    ``own``: the backends connected to ``database`` and autovacuum workers on it; a thread
    samples them every ``interval`` seconds, so one that exits in between still counts (up
    to its last sample). ``total``: every PostgreSQL process of the machine, the exited ones
    included (from the postmasters' reaped-children times): on a shared server, other
    people's work too, and the server-wide WAL writer, checkpointer and background writer,
    whose work for one run may fall into the next.
    """

    database: str
    interval: float = 0.5
    total: float = 0.0
    own: float = 0.0
    _cpu0: dict[int, float] = field(default_factory=dict)
    _last: dict[int, float] = field(default_factory=dict)
    _reaped0: float = 0.0
    _postmasters: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> dict[int, float]:
        cpu: dict[int, float] = {}
        for pid, title in _postgres_titles().items():
            cpu[pid] = proc_cpu_seconds(pid)
            if _works_for(title, self.database):
                self._last[pid] = cpu[pid]
        return cpu

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._last = {}
        self._cpu0 = self._sample()
        self._postmasters = _postmasters(set(self._cpu0))
        self._reaped0 = _reaped(self._postmasters)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        cpu = self._sample()
        self.own = sum(c - self._cpu0.get(pid, 0.0) for pid, c in self._last.items())
        self.total = sum(c - self._cpu0.get(pid, 0.0) for pid, c in cpu.items())
        # Processes gone since start: their whole CPU is in their postmaster's reaped
        # times, their CPU before start was already in _cpu0.
        gone = sum(c for pid, c in self._cpu0.items() if pid not in cpu)
        self.total += _reaped(self._postmasters) - self._reaped0 - gone


def ms_per(seconds: float, n: int) -> float:
    return round(seconds / n * 1000, 3) if n else float("nan")
