"""Embedding cache: text -> vector, 24 h by default (embeddings are deterministic).

Key: ``<prefix>embedding:<16 hex of sha256(text)>``. Vectors are checked before anything is
written: a non-empty sequence of finite real numbers. A value read back that is not such a
vector (written by someone else under our key) is a miss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from gathering_cache.core import CacheCore
from gathering_cache.errors import ArgumentTypeError, InvalidArgumentError
from gathering_cache.keys import EMBEDDING, check_text, check_ttl

__all__ = ["EmbeddingCache", "check_vector"]


def check_vector(embedding: object) -> list[float]:
    """Return the embedding as a list of floats, or raise naming the problem.

    Raises:
        ArgumentTypeError: not a sequence of real numbers (a str, a dict, a bool item, ...).
        InvalidArgumentError: empty, or holds NaN or infinity.
    """
    if isinstance(embedding, (str, bytes, bytearray, dict)) or not hasattr(embedding, "__len__"):
        raise ArgumentTypeError(
            f"embedding must be a sequence of floats, not {type(embedding).__name__}"
        )
    tolist = getattr(embedding, "tolist", None)  # numpy arrays
    items: Sequence[Any] = tolist() if callable(tolist) else embedding  # type: ignore[assignment]
    if len(items) == 0:
        raise InvalidArgumentError("embedding must not be empty")
    vector: list[float] = []
    for index, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ArgumentTypeError(
                f"embedding[{index}] must be a real number, not {type(item).__name__}"
            )
        value = float(item)
        if not math.isfinite(value):
            raise InvalidArgumentError(f"embedding[{index}] is {value!r}; vectors must be finite")
        vector.append(value)
    return vector


def _is_vector(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


class EmbeddingCache:
    """Get and set embeddings through the core."""

    def __init__(self, core: CacheCore) -> None:
        self._core = core

    async def get(self, text: str) -> list[float] | None:
        key = self._core.keys.embedding(check_text(text))
        value = await self._core.get(key, EMBEDDING, _is_vector)
        return None if value is None else [float(v) for v in value]

    async def set(self, text: str, embedding: Sequence[float], ttl: int | None) -> bool:
        key = self._core.keys.embedding(check_text(text))
        vector = check_vector(embedding)
        expiry = check_ttl(ttl) or self._core.config.embedding_ttl
        return await self._core.set(key, vector, expiry)
