"""Value encoding: orjson inside a small versioned envelope. Pure: no I/O. No pickle.

Every stored value starts with two bytes: the envelope version and the payload kind::

    b"\\x01j" + orjson bytes                 a JSON-like value
    b"\\x01f" + little-endian float32 array  a vector whose values are exact in float32
    b"\\x01d" + little-endian float64 array  any other vector (lossless)

A value written by another format version, by another program, or planted by someone else
(a pickle stream starts with ``\\x80``) does not carry this header and decodes as a miss.
"""

from __future__ import annotations

import math
import sys
from array import array
from typing import Any, Final, Literal

import orjson

from gathering_cache.errors import SerializationError

__all__ = [
    "DecodeError",
    "Precision",
    "decode",
    "decode_vector",
    "encode",
    "encode_vector",
]

Precision = Literal["lossless", "float32"]
"""How vectors are packed: ``lossless`` picks float32 when every value survives it exactly,
float64 otherwise; ``float32`` always packs float32 (rounding float64 values)."""

VERSION: Final = 1
_JSON: Final = bytes((VERSION,)) + b"j"
_JSON_LEN: Final = len(_JSON)
_OPTIONS: Final = (
    orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
)
_F32: Final = bytes((VERSION,)) + b"f"
_F64: Final = bytes((VERSION,)) + b"d"
_BIG_ENDIAN: Final = sys.byteorder == "big"


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
        payload = orjson.dumps(value, default=_refuse, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        raise SerializationError(
            f"cannot encode value of type {type(value).__name__} for the cache: {exc}"
        ) from None
    # orjson writes NaN and infinity as null: the value read back would differ from the one
    # stored. Only a payload holding "null" can hide one, so only then is the value walked.
    if b"null" in payload:
        where = _non_finite(value, "value")
        if where is not None:
            raise SerializationError(f"{where} is not a finite number; JSON cannot hold it")
    return _JSON + payload


def _refuse(value: Any) -> Any:
    # Dataclasses and datetimes would come back as dicts and strings: not what was stored.
    raise TypeError(f"Type is not JSON-like: {type(value).__name__}")


def _non_finite(value: Any, path: str) -> str | None:
    """The path of the first NaN or infinity inside ``value``, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} ({value!r})"
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{path}[{key!r}]")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{path}[{index}]")
            if found:
                return found
    elif hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy array or scalar
        return _non_finite(value.tolist(), path)
    return None


def decode(data: bytes) -> Any:
    """Decode bytes written by :func:`encode`.

    Raises:
        DecodeError: the bytes are not in our envelope, or the payload is corrupt.
    """
    if not data.startswith(_JSON):
        raise DecodeError("unknown envelope")
    try:
        return orjson.loads(data[_JSON_LEN:])
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"corrupt payload: {exc}") from None


def encode_vector(vector: list[float], precision: Precision = "lossless") -> bytes:
    """Pack a checked vector (finite floats) as float32 or float64 bytes in the envelope.

    ``lossless``: float32 when every value is exactly representable in float32 (as the
    vectors of APIs that ship float32, such as OpenAI's), else float64. ``float32``: always
    float32, rounding values that need more precision.
    """
    packed = array("f", vector)
    if precision == "lossless" and packed.tolist() != vector:
        packed = array("d", vector)
    if _BIG_ENDIAN:  # pragma: no cover - stored little-endian on every machine
        packed.byteswap()
    return (_F32 if packed.typecode == "f" else _F64) + packed.tobytes()


def decode_vector(data: bytes) -> array[float]:
    """Unpack bytes written by :func:`encode_vector`.

    Raises:
        DecodeError: not a packed vector of ours (a JSON value, foreign bytes, a payload whose
            length is not a whole number of floats, or an empty vector).
    """
    header = data[:_JSON_LEN]
    if header == _F32:
        typecode, size = "f", 4
    elif header == _F64:
        typecode, size = "d", 8
    else:
        raise DecodeError("not a packed vector")
    body = memoryview(data)[_JSON_LEN:]
    if not body or len(body) % size:
        raise DecodeError("truncated vector")
    vector: array[float] = array(typecode)
    vector.frombytes(body)
    if _BIG_ENDIAN:  # pragma: no cover
        vector.byteswap()
    return vector
