"""Command-line flags that carry JSON, parsed the same way by every training command."""
from __future__ import annotations

import json
from typing import Any


def json_object(text: str, flag: str) -> dict[str, Any]:
    """A flag's JSON object (ValueError with the flag's name otherwise)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{flag} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{flag} must be a JSON object, not {text!r}")
    return value
