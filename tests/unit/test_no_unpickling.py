"""Security basics: nothing read from the database, the environment or a file is ever
unpickled or evaluated. Stored data is JSON only."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("saga_core", "sagad", "sagactl")
FORBIDDEN = re.compile(
    r"\bimport (pickle|cPickle|dill|marshal|shelve)\b"
    r"|\bfrom (pickle|cPickle|dill|marshal|shelve) import\b"
    r"|\bPickleType\b"
    r"|\byaml\.(load|unsafe_load)\("
    r"|(?<![\w.])(eval|exec)\("
)


def test_no_pickle_eval_or_unsafe_yaml_in_the_packages() -> None:
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for pkg in PACKAGES
        for path in sorted((ROOT / pkg).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert not hits, "\n".join(hits)


def test_the_pattern_catches_what_it_should() -> None:
    for bad in ("import pickle", "from marshal import loads", "x = eval(s)", "yaml.load(f)"):
        assert FORBIDDEN.search(bad), bad
    for fine in ("json.loads(s)", "model_validate(x)", "self.evaluate(x)", "literal_eval"):
        assert not FORBIDDEN.search(fine), fine
