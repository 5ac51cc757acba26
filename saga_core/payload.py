"""JSON-only payload handling: everything stored is JSON, checked for size before writing."""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

import orjson
from pydantic import BaseModel

from saga_core.errors import SagaInputError

DEFAULT_MAX_PAYLOAD_BYTES = 1_000_000


_SURROGATE = re.compile("[\ud800-\udfff]")


def _not_unicode(what: str, text: str) -> SagaInputError:
    where = _SURROGATE.search(text)
    at = (
        ""
        if where is None
        else f" (a lone surrogate {where.group()!a} at character {where.start()})"
    )
    return SagaInputError(
        f"{what} contains text that is not valid Unicode{at}, which cannot be stored: decode "
        "bytes with a real encoding (not surrogateescape) or replace such characters"
    )


def check_text(value: Any, what: str, *, max_chars: int = 200) -> str:
    """A short identifier-like string (aggregation id, idempotency key, trace id, event
    name): non-empty, at most ``max_chars`` characters, storable (no NUL, no lone
    surrogates). Raises SagaInputError."""
    if not isinstance(value, str) or not value or len(value) > max_chars or "\x00" in value:
        raise SagaInputError(
            f"{what} must be a non-empty string of at most {max_chars} characters without NUL, "
            f"got {value!r}"
        )
    if _SURROGATE.search(value):
        raise _not_unicode(what, value)
    return value


MAX_JSON_DEPTH = 256
"""How deeply data passed in (start data, events, mock outputs) may nest. Deeper data
cannot be encoded reliably (Python's encoder gives up near 1,000 levels, earlier from a deep
call stack; pydantic at 255) and would fail later, in a store or a worker."""


def _too_deep(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def _nested_too_deep(what: str) -> SagaInputError:
    return SagaInputError(
        f"{what} is nested more than {MAX_JSON_DEPTH} levels deep, which cannot be stored "
        "reliably; flatten it"
    )


def to_json_data(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (pydantic models are dumped); raises SagaInputError."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except RecursionError:
        raise _nested_too_deep(what) from None
    except (TypeError, ValueError) as exc:
        raise SagaInputError(f"{what} is not JSON serialisable: {exc}") from None
    data = json.loads(text)
    # Only data with that many objects and arrays can nest that deep (counted in C).
    many = text.count("{") + text.count("[") > MAX_JSON_DEPTH
    if many and isinstance(data, dict | list) and _too_deep(data, MAX_JSON_DEPTH):
        raise _nested_too_deep(what)
    return data


def _find_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_find_nul(k) or _find_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_find_nul(v) for v in value)
    return False


# orjson turns datetimes, dataclasses and str/int subclasses into JSON on its own; json does
# not: those take the careful path, which refuses them as before.
_PLAIN = (
    orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)


def check_size(value: Any, what: str, limit: int) -> int:
    """Size of ``value`` as UTF-8 JSON; raises SagaInputError above ``limit`` bytes (json's
    compact text), and for what no store can keep: NaN or infinite numbers, NUL characters
    (PostgreSQL JSONB refuses them, SQLite's JSON functions refuse NaN). Well under the limit
    the size returned is orjson's, which may differ from json's by a byte or two per float."""
    # Fast path (orjson, the same compact UTF-8 text): taken when it has nothing to refuse.
    # orjson writes NaN as null and has no NUL check, so any null or \u0000 in its output
    # takes the careful path below, as does whatever orjson refuses.
    try:
        fast = orjson.dumps(value, option=_PLAIN)
    except TypeError:
        fast = None
    # The limit is json's count. orjson writes some floats differently: 1e-7 (json 1e-07, one
    # byte more: each such float holds "e-") and 0.00001 (json 1e-05, shorter). Clearly under
    # the limit, orjson's count will do; near or over it, json's decides (careful path).
    # (bytes.find: ``in`` first tries its operand as an integer, an exception each time.)
    if (
        fast is not None
        and fast.find(b"null") < 0
        and fast.find(b"\\u0000") < 0
        and len(fast) + fast.count(b"e-") <= limit
    ):
        return len(fast)
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise _nested_too_deep(what) from None
    except (TypeError, ValueError) as exc:
        raise SagaInputError(f"{what} is not valid JSON: {exc}") from None
    # json.dumps escapes NUL as \u0000: look for that first, walk the value only on a hit.
    if "\\u0000" in text and _find_nul(value):
        raise SagaInputError(f"{what} contains a NUL character (\\u0000), which cannot be stored")
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise _not_unicode(what, text) from None
    if size > limit:
        _over(what, size, limit)
    return size


def _over(what: str, size: int, limit: int) -> NoReturn:
    raise SagaInputError(
        f"{what} is {size} bytes of JSON, over the limit of {limit} bytes "
        "(max_payload_bytes); store large data elsewhere and pass a reference"
    )


def json_object(value: Any, what: str, limit: int) -> dict[str, Any]:
    """A JSON object (dict) from ``value``, checked for serialisability and size."""
    data = to_json_data(value, what)
    if not isinstance(data, dict):
        raise SagaInputError(
            f"{what} must be a JSON object (a dict or a pydantic model), got {type(value).__name__}"
        )
    check_size(data, what, limit)
    return data


MAX_NOTE_CHARS = 2000


def check_note_text(value: str | None, what: str) -> None:
    """An operator's ``reason`` or ``actor`` (admin actions, ``notify``): recorded in
    history, so it must be storable; raises SagaInputError."""
    if value is None:
        return
    if not isinstance(value, str):
        raise SagaInputError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise SagaInputError(f"{what} must be text without NUL characters (\\x00)")
    if _SURROGATE.search(value):
        raise _not_unicode(what, value)
    if len(value) > MAX_NOTE_CHARS:
        raise SagaInputError(
            f"{what} is {len(value)} characters long; at most {MAX_NOTE_CHARS} are kept"
        )
