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
import secrets
import struct
import sys
from array import array
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Final, Literal

import orjson

from gathering_cache.errors import InvalidArgumentError, SerializationError

__all__ = [
    "COUNTER_DIGITS",
    "DecodeError",
    "Precision",
    "decode",
    "decode_vector",
    "encode",
    "encode_vector",
    "encode_vector_fast",
    "fresh_counter",
    "json_parts",
    "parse_counter",
    "prepend",
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


def prepend(numbers: tuple[int, ...], encoded: bytes) -> bytes:
    """``encode([*numbers, value])`` from ``encoded``, which is ``encode(value)``: a value
    checked and encoded once is wrapped without being encoded again (RAG entries carry
    their generation in front of the results)."""
    head = b"".join(b"%d," % number for number in numbers)
    return _JSON + b"[" + head + encoded[_JSON_LEN:] + b"]"


def _refuse(value: Any) -> Any:
    # orjson serialises C-contiguous numpy arrays only; views (strided, transposed,
    # Fortran-order) land here and are taken as the nested lists they hold. What those lists
    # contain is checked again by orjson (and lands here again if it is not JSON-like).
    if _is_numpy_array(value):
        return value.tolist()
    # Dataclasses and datetimes would come back as dicts and strings: not what was stored.
    raise TypeError(f"Type is not JSON-like: {type(value).__name__}")


def _is_numpy_array(value: Any) -> bool:
    return type(value).__module__ == "numpy" and type(value).__name__ == "ndarray"


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


def json_parts() -> tuple[bytes, Callable[[bytes], Any], type[Exception]]:
    """The pieces of :func:`decode`, for a hot path that inlines it (the near cache's hits):
    the envelope every JSON value starts with, the parser of what follows it (raising the
    error returned third on a corrupt payload). ``decode(data)`` is
    ``parse(data[len(head):])`` when ``data`` starts with ``head``."""
    return _JSON, orjson.loads, orjson.JSONDecodeError


def encode_vector(vector: list[float], precision: Precision = "lossless") -> bytes:
    """Pack a checked vector (finite floats) as float32 or float64 bytes in the envelope.

    ``lossless``: float32 when every value is exactly representable in float32 (as the
    vectors of APIs that ship float32, such as OpenAI's), else float64. ``float32``: always
    float32, rounding values that need more precision.

    Raises:
        InvalidArgumentError: with ``float32``, a value beyond float32's range (it would
            become infinity).
    """
    packed = array("f", vector)
    if precision == "lossless" and packed.tolist() != vector:
        packed = array("d", vector)
    if _BIG_ENDIAN:  # pragma: no cover - stored little-endian on every machine
        packed.byteswap()
    body = packed.tobytes()
    if packed.typecode == "f" and _maybe_non_finite(body, 0, 4) and not _finite(packed):
        # The input is finite (checked by the caller): an infinity here is a value beyond
        # float32's range (about 3.4e38) that array("f") silently turned into inf.
        index = next(i for i, v in enumerate(packed) if not math.isfinite(v))
        raise InvalidArgumentError(
            f"embedding[{index}] is {vector[index]!r}, beyond the float32 range "
            "(embedding_precision='float32' stores float32)"
        )
    return (_F32 if packed.typecode == "f" else _F64) + body


def encode_vector_fast(
    embedding: object, dimensions: int | None, precision: Precision = "lossless"
) -> bytes | None:
    """:func:`encode_vector` of an embedding not yet checked, with numpy, when numpy is
    installed and the embedding is plainly a flat list or 1-d array of real numbers of the
    right length, all finite; ``None`` otherwise (numpy absent, or anything unusual: the
    precise, pure-Python check then runs and names the problem). Checks and packs 1,536
    floats in ~15 us instead of ~150 (docs/benchmarks.md, W2)."""
    np = _numpy()
    if np is None:
        return None
    if type(embedding) is list:
        if not embedding:
            return None
        try:
            # struct's "d" takes what float() takes (a str, None or a huge int raises), in
            # half the time array("d", ...) needs for a list of floats.
            packed = _doubles(len(embedding)).pack(*embedding)
        except (struct.error, TypeError, ValueError, OverflowError):
            return None
        values = np.frombuffer(packed, dtype="<f8")
        # A bool became 1.0 or 0.0, and the precise path refuses bools: the items equal to
        # either are looked at (rare in real embeddings; cheap when there are few).
        suspects = np.flatnonzero((values == 1.0) | (values == 0.0))
        if suspects.size and (
            suspects.size > 64 or any(type(embedding[i]) is bool for i in suspects.tolist())
        ):
            return None
    elif isinstance(embedding, np.ndarray):
        values = embedding
    else:
        return None
    # Strings, objects (None, Decimal, huge ints) and bools leave the fast path.
    if values.ndim != 1 or values.dtype.kind not in "fiu" or values.size == 0:
        return None
    if dimensions is not None and values.shape[0] != dimensions:
        return None
    wide = values.astype("<f8", copy=False)
    largest = np.abs(wide).max()
    if not largest <= _F32_MAX:  # NaN or infinity somewhere, or beyond float32
        if not np.isfinite(wide).all() or precision == "float32":
            return None  # the precise path raises, naming the value
        wide_body: bytes = wide.tobytes()
        return _F64 + wide_body
    narrow = wide.astype("<f4")
    if precision == "lossless" and not (narrow == wide).all():
        wide_body = wide.tobytes()
        return _F64 + wide_body
    body: bytes = narrow.tobytes()
    return _F32 + body


@lru_cache(maxsize=64)
def _doubles(count: int) -> struct.Struct:
    """The packer of ``count`` little-endian doubles."""
    return struct.Struct(f"<{count}d")


_F32_MAX: Final = 3.4028234663852886e38
_NUMPY: list[Any] = []


def _numpy() -> Any:
    """numpy, or None when it is not installed (imported once, on first use)."""
    if not _NUMPY:
        try:
            import numpy

            _NUMPY.append(numpy)
        except ImportError:  # pragma: no cover - numpy is an optional extra
            _NUMPY.append(None)
    return _NUMPY[0]


# The most significant byte of a little-endian float32 or float64 holds the sign and the top
# 7 bits of the exponent. Infinity and NaN have an exponent of all ones, so their top byte is
# 0x7f or 0xff; a finite value with that top byte is above 1.7e38 (float32) or 2.7e303
# (float64). Looking for those two bytes (memchr) costs a few microseconds for 1536 values,
# against ~15 for math.isfinite on each; the exact test runs only when one is there.


def _maybe_non_finite(data: bytes, start: int, size: int) -> bool:
    """Whether the little-endian floats of ``size`` bytes from ``start`` may hold an infinity
    or a NaN (no false negatives)."""
    top = data[start + size - 1 :: size]
    return b"\x7f" in top or b"\xff" in top


def _finite(values: array[float]) -> bool:
    return all(math.isfinite(v) for v in values)


def decode_vector(data: bytes) -> array[float]:
    """Unpack bytes written by :func:`encode_vector`.

    Raises:
        DecodeError: not a packed vector of ours (a JSON value, foreign bytes, a payload whose
            length is not a whole number of floats, an empty vector, or one holding NaN or
            infinity, which the write side refuses).
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
    if _maybe_non_finite(data, _JSON_LEN, size) and not _finite(vector):
        # Never written by encode_vector (its input is checked finite): planted or corrupt.
        raise DecodeError("non-finite value in vector")
    return vector


# -- counters -------------------------------------------------------------------------------

COUNTER_DIGITS = 15
"""A counter is stored as at most this many decimal digits: below 2**53, so Lua (whose
numbers are doubles) and Python read the same value."""


def fresh_counter() -> int:
    """The value a counter is created (or repaired) at: random 48 bits, so a counter that
    disappears (expiry, eviction, a restart that lost data, a deletion) and comes back never
    repeats a value it held before, with overwhelming probability (~n/2**48 after n
    increments)."""
    return secrets.randbits(48)


def parse_counter(raw: object) -> int | None:
    """The value of a stored counter; ``None`` when ``raw`` is not one (absent, or bytes
    that are not 1 to :data:`COUNTER_DIGITS` ASCII digits without a leading zero)."""
    if not isinstance(raw, bytes) or not 0 < len(raw) <= COUNTER_DIGITS or not raw.isdigit():
        return None
    if raw[0] == 0x30 and len(raw) > 1:  # "007": Redis's INCRBY refuses leading zeros
        return None
    return int(raw)
