"""What both peer scripts share: the completion tally and the line protocol with the harness."""

from __future__ import annotations

import json
import sys
import threading
import time


class Tally:
    """Counts sagas whose third step has run; thread-safe (DBOS runs sync workflows on
    threads). ``finished`` is set when ``target`` is reached."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.first_step = 0.0
        self.last_done = 0.0
        self.finished = threading.Event()
        self._lock = threading.Lock()

    def step_begins(self) -> None:
        if not self.first_step:
            self.first_step = time.time()

    def saga_done(self) -> None:
        with self._lock:
            self.count += 1
            if self.count == self.target:
                self.last_done = time.time()
                self.finished.set()


def say(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def report(tally: Tally) -> None:
    say(done=tally.count, first_step=tally.first_step, last_done=tally.last_done)


def wait_for_eof() -> None:
    """Block until the harness closes our standard input."""
    sys.stdin.read()
