"""Embedding cache: (model, dimensions, text) -> vector, 24 h by default.

Keys: ``<prefix>embedding:<16 hex of sha256(text)>`` with no model, else
``<prefix>embedding:<model>[:<dimensions>]:<hash>`` so two models never share an entry.

Vectors are packed floats (see :mod:`gathering_cache.core.encoding`): float32 when every value is
exact in float32, float64 otherwise, so what is read back is exactly what was stored. A
1536-value float32 vector takes 6,146 bytes instead of ~32.6 KB of JSON text. A stored value
that is not a packed vector, or whose length differs from the dimensions the key promises, is
a miss.

The in-process LRU (``embedding_lru_size`` entries) is filled on Redis hits and sets and
answers while Redis is unavailable (a fault, an open breaker, a shed call); a Redis miss evicts
the entry, so data that Redis lost (a restart, a flush) is never served from the LRU once Redis
answers again. A cache disabled in config or closed answers nothing, LRU included: every read
is a miss.
"""

from __future__ import annotations

import functools
import math
from array import array
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from gathering_cache.core import encoding
from gathering_cache.core.engine import UNAVAILABLE, CacheCore, Unavailable
from gathering_cache.core.keys import (
    EMBEDDING,
    check_dimensions,
    check_model,
    check_text,
    check_ttl,
    text_hash,
)
from gathering_cache.core.lru import LRU
from gathering_cache.errors import ArgumentTypeError, InvalidArgumentError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

__all__ = ["EmbeddingCache", "check_vector"]

Vector = Sequence[float]
Source = Literal["store", "lru"] | None


def check_vector(embedding: object, dimensions: int | None = None) -> list[float]:
    """Return the embedding as a list of floats, or raise naming the problem.

    Any array-like of real numbers is taken: a list or tuple, an ``array.array``, a numpy
    array of any layout (strided, transposed, Fortran-order views included).

    Raises:
        ArgumentTypeError: not a sequence of real numbers (a str, a dict, a bool item, ...).
        InvalidArgumentError: empty, NaN or infinity in it, or not ``dimensions`` long.
    """
    if isinstance(embedding, (str, bytes, bytearray)) or not (
        isinstance(embedding, Sequence) or hasattr(embedding, "tolist")
    ):
        raise ArgumentTypeError(
            f"embedding must be a sequence of floats, not {type(embedding).__name__}"
        )
    tolist = getattr(embedding, "tolist", None)  # numpy arrays (views included), memoryview
    items: Sequence[Any] = tolist() if callable(tolist) else embedding  # type: ignore[assignment]
    if not isinstance(items, (list, Sequence)):  # a numpy scalar: tolist() gave a number
        raise ArgumentTypeError(
            f"embedding must be a sequence of floats, not {type(embedding).__name__}"
        )
    if len(items) == 0:
        raise InvalidArgumentError("embedding must not be empty")
    try:
        # Fast path: array() refuses non-numbers; one pass for bools; the sum of finite floats
        # is finite unless it overflows, in which case the slow path below decides.
        packed = array("d", items)
        fast = not any(item is True or item is False for item in items) and math.isfinite(
            sum(packed)
        )
    except (TypeError, OverflowError):
        fast = False
    if not fast:
        for index, item in enumerate(items):
            # Any real number the fast path's float() conversion takes (numpy scalars,
            # Decimal, Fraction ...), so both paths accept the same items.
            if isinstance(item, (bool, str, bytes, bytearray)):
                value = None
            else:
                try:
                    value = float(item)
                except (TypeError, ValueError):
                    value = None
                except OverflowError:  # an int too large for a float
                    value = math.inf
            if value is None:
                raise ArgumentTypeError(
                    f"embedding[{index}] must be a real number, not {type(item).__name__}"
                )
            finite = math.isfinite(value)
            if not finite:
                raise InvalidArgumentError(
                    f"embedding[{index}] is {item!r:.40}; vectors must be finite floats"
                )
        packed = array("d", items)
    if dimensions is not None and len(packed) != dimensions:
        raise InvalidArgumentError(
            f"embedding has {len(packed)} values but dimensions={dimensions} was given"
        )
    return packed.tolist()


def _check_texts(texts: object) -> None:
    if isinstance(texts, str):
        raise ArgumentTypeError("texts must be a sequence of str, not a single str")
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise ArgumentTypeError(f"texts must be a sequence of str, not {type(texts).__name__}")


def _numpy() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy is an optional extra
        raise InvalidArgumentError(
            "as_numpy=True needs numpy: pip install 'gathering-cache[numpy]'"
        ) from None
    return numpy


_HEADS: Final = 256
"""How many models' key heads an :class:`EmbeddingCache` keeps."""


class EmbeddingCache:
    """Get and set embeddings through the core, with the in-process fallback LRU."""

    def __init__(self, core: CacheCore) -> None:
        self._engine = core
        # An in-process store needs no in-process copy in front of it.
        size = core.config.embedding_lru_size if core.store.capabilities.networked else 0
        self.lru = LRU(size)
        core.on_delete(self.lru.forget)
        # Key heads (``<prefix>embedding:<model segment>:``) by model, for :meth:`key`.
        self._heads: dict[str | None, str] = {}

    def key(self, text: str, model: str | None, dimensions: int | None) -> str:
        if dimensions is None and type(text) is str and (model is None or type(model) is str):
            # The common case (every get and set passes here): a model already seen, whose
            # key head is kept; text_hash refuses a text UTF-8 cannot encode.
            head = self._heads.get(model)
            if head is not None:
                return head + text_hash(text)
        keys = self._engine.keys
        key = keys.embedding(check_text(text), check_model(model), check_dimensions(dimensions))
        if dimensions is None and len(self._heads) < _HEADS:
            self._heads[model] = keys.embedding_head(model)
        return key

    @staticmethod
    def _unpack(raw: bytes, dimensions: int | None) -> array[float] | None:
        """The vector packed in ``raw``; ``None`` when it is not one (of ``dimensions``)."""
        try:
            vector = encoding.decode_vector(raw)
        except encoding.DecodeError:
            return None
        if dimensions is not None and len(vector) != dimensions:
            return None
        return vector

    @staticmethod
    def _output(vector: array[float], as_numpy: bool) -> Any:
        if as_numpy:
            return _numpy().array(vector, dtype=vector.typecode)
        return vector.tolist()

    def _resolve(
        self, key: str, raw: bytes | Unavailable | None, dimensions: int | None
    ) -> tuple[array[float] | None, Source, bool]:
        """The vector for one key given what Redis answered (or UNAVAILABLE), where it came
        from, and whether an entry was found but refused."""
        if raw is UNAVAILABLE:
            if not self._engine.policy.may_use_fallbacks:
                return None, None, False  # disabled or closed: every read is a miss
            cached = self.lru.get(key)
            if cached is None:
                return None, None, False
            vector = self._unpack(cached, dimensions)
            return vector, "lru" if vector is not None else None, vector is None
        if raw is None:
            self.lru.discard(key)  # Redis lost or expired it: so must we
            return None, None, False
        vector = self._unpack(raw, dimensions)
        if vector is None:
            return None, None, True
        self.lru.put(key, raw)
        return vector, "store", False

    def _judge(
        self, keys: Sequence[str], dimensions: int | None, answer: Any
    ) -> tuple[list[tuple[array[float] | None, Source]], int, int, int]:
        """Each key's vector and source (see :meth:`_resolve`), hits, refused, bytes."""
        raws: Sequence[bytes | Unavailable | None] = (
            [UNAVAILABLE] * len(keys) if answer is UNAVAILABLE else answer
        )
        out: list[tuple[array[float] | None, Source]] = []
        hits = invalid = nbytes = 0
        for key, raw in zip(keys, raws, strict=True):
            vector, source, refused = self._resolve(key, raw, dimensions)
            out.append((vector, source))
            hits += vector is not None
            invalid += refused
            if isinstance(raw, bytes):
                nbytes += len(raw)
        return out, hits, invalid, nbytes

    def _judge_one(
        self, key: str, dimensions: int | None, as_numpy: bool, raw: Any
    ) -> tuple[Any, int, int, int]:
        """:meth:`get`'s answer (the vector as the caller wants it) given what Redis answered
        (see :meth:`_resolve`), hit, refused, bytes."""
        vector, _, refused = self._resolve(key, raw, dimensions)
        size = len(raw) if type(raw) is bytes else 0  # an LRU answer (Redis down) sent none
        if vector is None:
            return None, 0, refused, size
        return self._output(vector, as_numpy), 1, 0, size

    def get(
        self,
        text: str,
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: bool = False,
    ) -> Coroutine[Any, Any, list[float] | npt.NDArray[np.floating[Any]] | None]:
        """The read of one embedding (see the manager's ``get_embedding``): a plain function
        returning the read's coroutine, the vector converted by the judge, so that no frame
        of its own sits on the path of every hit."""
        key = self.key(text, model, dimensions)
        judge = functools.partial(self._judge_one, key, dimensions, as_numpy)
        read: Coroutine[Any, Any, Any] = self._engine.read(EMBEDDING, key, judge)
        return read

    async def get_many(
        self,
        texts: Sequence[str],
        model: str | None = None,
        dimensions: int | None = None,
        as_numpy: bool = False,
    ) -> list[Any]:
        found = await self.lookup(texts, model, dimensions)
        return [None if v is None else self._output(v, as_numpy) for v, _ in found]

    async def lookup(
        self, texts: Sequence[str], model: str | None = None, dimensions: int | None = None
    ) -> list[tuple[array[float] | None, Source]]:
        """Each text's cached vector (or None) and its source: ``"store"``, ``"lru"`` (Redis
        unavailable) or ``None`` (a miss). One round trip; counted in stats."""
        _check_texts(texts)
        keys = [self.key(text, model, dimensions) for text in texts]
        if not keys:
            return []
        judge = functools.partial(self._judge, keys, dimensions)
        found: list[tuple[array[float] | None, Source]] = await self._engine.read_many(
            EMBEDDING, keys, judge
        )
        return found

    async def acquire_locks(
        self,
        texts: Sequence[str],
        model: str | None,
        dimensions: int | None,
        token: str,
        ttl_ms: int,
    ) -> list[bool] | None:
        """Take the cross-process compute lock of each text's entry; ``None`` when the store
        cannot answer (then nobody can coordinate)."""
        keys = [self._engine.keys.lock(self.key(t, model, dimensions)) for t in texts]
        taken = await self._engine.acquire_locks(keys, token, ttl_ms)
        return None if taken is UNAVAILABLE else taken

    async def release_locks(
        self, texts: Sequence[str], model: str | None, dimensions: int | None, token: str
    ) -> int:
        keys = [self._engine.keys.lock(self.key(t, model, dimensions)) for t in texts]
        return await self._engine.release_locks(keys, token)

    def _pack(self, embedding: object, dimensions: int | None) -> bytes:
        precision = self._engine.config.embedding_precision
        fast = encoding.encode_vector_fast(embedding, dimensions, precision)
        if fast is not None:
            return fast
        return encoding.encode_vector(check_vector(embedding, dimensions), precision)

    async def set(
        self,
        text: str,
        embedding: Vector,
        ttl: int | None = None,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> bool:
        key = self.key(text, model, dimensions)
        data = self._pack(embedding, dimensions)
        expiry = check_ttl(ttl) or self._engine.config.embedding_ttl
        if self._engine.fits([(key, data)]):
            self.lru.put(key, data)  # served during an outage, whatever the write's fate
        return await self._engine.write(EMBEDDING, key, data, expiry)

    async def set_many(
        self,
        texts: Sequence[str],
        embeddings: Sequence[Vector],
        ttl: int | None = None,
        model: str | None = None,
        dimensions: int | None = None,
    ) -> bool:
        _check_texts(texts)
        if isinstance(embeddings, (str, bytes, bytearray)) or not (
            isinstance(embeddings, Sequence) or hasattr(embeddings, "tolist")
        ):
            raise ArgumentTypeError(
                f"embeddings must be a sequence of vectors, not {type(embeddings).__name__}"
            )
        if len(texts) != len(embeddings):
            raise InvalidArgumentError(
                f"{len(texts)} texts but {len(embeddings)} embeddings were given"
            )
        items = [
            (self.key(text, model, dimensions), self._pack(vector, dimensions))
            for text, vector in zip(texts, embeddings, strict=True)
        ]
        expiry = check_ttl(ttl) or self._engine.config.embedding_ttl
        if self._engine.fits(items):
            for key, data in items:
                self.lru.put(key, data)
        return await self._engine.write_many(EMBEDDING, items, expiry)
