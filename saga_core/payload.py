"""JSON-only payload handling: everything stored is JSON, checked for size before writing."""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import BaseModel

from saga_core.errors import SagaInputError

DEFAULT_MAX_PAYLOAD_BYTES = 1_000_000


def _reject_nan(obj: Any) -> None:
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ValueError(f"{obj!r} is not valid JSON")


def to_json_data(value: Any, what: str) -> Any:
    """``value`` as plain JSON data (pydantic models are dumped); raises SagaInputError."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise SagaInputError(f"{what} is not JSON serialisable: {exc}") from None
    return json.loads(text)


def check_size(value: Any, what: str, limit: int) -> int:
    """Size of ``value`` as UTF-8 JSON; raises SagaInputError above ``limit`` bytes."""
    size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
    if size > limit:
        raise SagaInputError(
            f"{what} is {size} bytes of JSON, over the limit of {limit} bytes "
            "(max_payload_bytes); store large data elsewhere and pass a reference"
        )
    return size


def json_object(value: Any, what: str, limit: int) -> dict[str, Any]:
    """A JSON object (dict) from ``value``, checked for serialisability and size."""
    data = to_json_data(value, what)
    if not isinstance(data, dict):
        raise SagaInputError(
            f"{what} must be a JSON object (a dict or a pydantic model), got {type(value).__name__}"
        )
    check_size(data, what, limit)
    return data
