"""Setup for the examples' tests: ``examples`` is not installed, so put the checkout root on
``sys.path`` (pytest's default import mode only adds ``tests/``)."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
