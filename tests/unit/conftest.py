"""Shared setup for the database-free unit tests."""

from __future__ import annotations

import sys
from pathlib import Path

# Make the package importable when pytest is run without the project installed (the
# checkout root is not on sys.path with pytest's default import mode).
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
