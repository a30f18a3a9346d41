"""Value encoding: orjson inside a small versioned envelope. Pure: no I/O. No pickle.

Every stored value starts with two bytes: the envelope version and the payload kind::

    b"\\x01j" + orjson bytes

A value written by another format version, by another program, or planted by someone else
(a pickle stream starts with ``\\x80``) does not carry this header and decodes as a miss.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from gathering_cache.errors import SerializationError

__all__ = ["DecodeError", "decode", "encode"]

VERSION: Final = 1
_JSON: Final = bytes((VERSION,)) + b"j"
_JSON_LEN: Final = len(_JSON)
_OPTIONS: Final = orjson.OPT_SERIALIZE_NUMPY


class DecodeError(ValueError):
    """Bytes under one of our keys are not a value we wrote. Internal: reads turn it into a
    miss (counted as an error in stats); it never reaches a caller."""


def encode(value: Any) -> bytes:
    """Encode a JSON-like value (dict, list, str, int, float, bool, None, numpy array).

    Raises:
        SerializationError: the value (or something inside it) cannot be encoded; the message
            names the type.
    """
    try:
        return _JSON + orjson.dumps(value, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise SerializationError(
            f"cannot encode value of type {type(value).__name__} for the cache: {exc}"
        ) from None


def decode(data: bytes) -> Any:
    """Decode bytes written by :func:`encode`.

    Raises:
        DecodeError: the bytes are not in our envelope, or the payload is corrupt.
    """
    if data[:_JSON_LEN] != _JSON:
        raise DecodeError("unknown envelope")
    try:
        return orjson.loads(memoryview(data)[_JSON_LEN:])
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"corrupt payload: {exc}") from None
