"""An app whose import stops at a gate, for tests of a stop while sagad imports the app.

Importing it writes its pid to the file ``ACCEPT_IMPORT_MARKER``, then opens the FIFO
``ACCEPT_IMPORT_GATE`` for reading, which blocks until someone opens it for writing; after
that it is :mod:`app_sagas` (``--app app_import_gate:make``).
"""

from __future__ import annotations

import os
from pathlib import Path

Path(os.environ["ACCEPT_IMPORT_MARKER"]).write_text(str(os.getpid()))
with open(os.environ["ACCEPT_IMPORT_GATE"], "rb") as _gate:
    _gate.read()

from app_sagas import make  # noqa: E402

__all__ = ["make"]
