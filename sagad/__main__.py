"""``python -m sagad``."""

from __future__ import annotations

import sys

from sagad.cli import main

sys.exit(main())
