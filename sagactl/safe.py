"""Stored text made safe for a terminal (no imports beyond the standard library: the JSON
writer of ``runtime`` uses it too).

Saga names, aggregation ids, step ids, errors, reasons, actors, event names, worker ids and
payloads come from applications and operators: a terminal must show them, not obey them.
Rich markup in them is handled by showing them as ``rich.text.Text`` (``fmt.lit``), never
as markup; this module deals with the characters a terminal itself interprets.
"""

from __future__ import annotations

import re

__all__ = ["clean", "json_escape"]

_CONTROL = "\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f"
"""C0 controls but tab and newline, DEL and the C1 controls: ESC (and the one-byte CSI)
start colour, cursor, title and OSC 8 hyperlink sequences; CR overwrites a line."""
_BIDI = "\\u061c\\u200e\\u200f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069"
"""Bidirectional marks, embeddings, overrides and isolates, which reorder what a terminal
displays ("Trojan Source"), and the Unicode line and paragraph separators."""

_UNSAFE = re.compile(f"[{_CONTROL}{_BIDI}]")
# In JSON text: what json.dumps leaves raw (it already escapes every control below 0x20).
_UNSAFE_IN_JSON = re.compile(f"[\\x7f-\\x9f{_BIDI}]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: object) -> str:
    """``value`` as text with every control and bidirectional character written as a visible
    escape (``\\x1b``, ``\\u202e``); tabs and newlines are kept."""
    return _UNSAFE.sub(_escaped, str(value))


def json_escape(text: str) -> str:
    """JSON text (from ``json.dumps``) with DEL, C1 and bidirectional characters written as
    ``\\uXXXX``: the same JSON once parsed, harmless when printed to a terminal."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
