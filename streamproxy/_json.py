"""orjson everywhere: bytes in, bytes out, one place to change the codec."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()
