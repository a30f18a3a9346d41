"""The OpenAI SDK with the cache in front (the ``[openai]`` extra; imports ``openai``).

::

    client = CachedAsyncOpenAI(openai.AsyncOpenAI(), cache)
    answer = await client.chat.completions.create(model=..., messages=..., temperature=0)
    vectors = await client.embeddings.create(model="text-embedding-3-small", input=texts)

What is cached:

* ``chat.completions.create``: deterministic calls (``temperature=0`` or a ``seed``; see
  :func:`gathering_cache.cached_completion` for the key, the output-neutral parameters and
  reasoning models). A hit is a ``ChatCompletion`` like a miss, with the ``usage`` of the
  call that paid for it; ``cache.get_stats()["llm_tokens_saved"]`` adds it up. ``stream=True``
  calls go to the API every time.
* ``embeddings.create`` with a ``str`` or a list of ``str``: each text's vector, packed as
  float32 (4 bytes per dimension), keyed by text, model and ``dimensions``; only the texts
  not cached are sent. A hit is a ``CreateEmbeddingResponse`` like a miss (base64 strings when
  ``encoding_format="base64"`` was asked); its ``usage`` counts only the tokens of the texts
  sent, so a full hit reports 0. Token-id inputs go to the API uncached.

SDK errors are the SDK's own (``except openai.RateLimitError`` works); nothing is cached for
them. Every other attribute is the wrapped client's.
"""

from __future__ import annotations

import base64
import struct
from array import array
from collections.abc import Sequence
from typing import Any

import openai
from openai.types import CreateEmbeddingResponse, Embedding
from openai.types.chat import ChatCompletion
from openai.types.create_embedding_response import Usage

from gathering_cache.agents.completions import cached_completion
from gathering_cache.agents.providers import OpenAISDKEmbeddings
from gathering_cache.errors import ArgumentTypeError
from gathering_cache.manager import AsyncCacheManager

__all__ = ["CachedAsyncOpenAI", "OpenAISDKEmbeddings"]


class _Completions:
    def __init__(self, client: openai.AsyncOpenAI, cache: AsyncCacheManager, **options: Any):
        self.create = cached_completion(cache, decode=ChatCompletion.model_validate, **options)(
            client.chat.completions.create
        )


class _Chat:
    def __init__(self, client: openai.AsyncOpenAI, cache: AsyncCacheManager, **options: Any):
        self.completions = _Completions(client, cache, **options)


class _Embeddings:
    def __init__(self, client: openai.AsyncOpenAI, cache: AsyncCacheManager) -> None:
        self._client = client
        self._cache = cache

    async def create(
        self,
        *,
        input: Any,
        model: str,
        dimensions: int | openai.Omit = openai.omit,
        encoding_format: str | openai.Omit = openai.omit,
        **rest: Any,
    ) -> CreateEmbeddingResponse:
        """``client.embeddings.create`` with each text's vector cached (module docstring)."""
        texts = [input] if isinstance(input, str) else input
        if not (
            isinstance(texts, Sequence) and texts and all(isinstance(t, str) and t for t in texts)
        ):
            return await self._client.embeddings.create(
                input=input,
                model=model,
                dimensions=dimensions,
                encoding_format=encoding_format,  # type: ignore[arg-type]
                **rest,
            )
        size = dimensions if isinstance(dimensions, int) else None
        found = await self._cache.get_embeddings(texts, model=model, dimensions=size)
        missing = list(dict.fromkeys(t for t, v in zip(texts, found, strict=True) if v is None))
        vectors = {t: v for t, v in zip(texts, found, strict=True) if v is not None}
        usage = Usage(prompt_tokens=0, total_tokens=0)
        served_model = model
        if missing:
            response = await self._client.embeddings.create(
                input=missing,
                model=model,
                dimensions=dimensions,
                encoding_format="base64",
                **rest,
            )
            fresh = [_floats(item.embedding) for item in sorted(response.data, key=_index)]
            await self._cache.set_embeddings(missing, fresh, model=model, dimensions=size)
            vectors.update(zip(missing, fresh, strict=True))
            usage = response.usage or usage
            served_model = response.model
        as_base64 = encoding_format == "base64"
        # Built as the SDK builds its own responses (without validation): a base64 string is
        # what the SDK hands back when base64 was asked for, though the type says list[float].
        data = [
            Embedding.model_construct(
                object="embedding",
                index=index,
                embedding=_base64(vectors[text]) if as_base64 else list(vectors[text]),  # type: ignore[arg-type]
            )
            for index, text in enumerate(texts)
        ]
        return CreateEmbeddingResponse(object="list", data=data, model=served_model, usage=usage)


def _index(item: Embedding) -> int:
    return item.index


def _floats(value: Any) -> list[float]:
    if isinstance(value, str):
        packed = array("f")
        packed.frombytes(base64.b64decode(value))
        return packed.tolist()
    return list(value)


def _base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


class CachedAsyncOpenAI:
    """An ``openai.AsyncOpenAI`` (or ``AsyncAzureOpenAI``) with the cache in front of
    ``chat.completions.create`` and ``embeddings.create`` (see the module docstring); every
    other attribute is the wrapped client's.

    Args:
        client: the SDK client.
        cache: the manager.
        namespace / force / ttl: as for :func:`gathering_cache.cached_completion`.

    Raises:
        ArgumentTypeError: ``client`` is not an ``openai.AsyncOpenAI``, or ``cache`` not an
            ``AsyncCacheManager``.
    """

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        cache: AsyncCacheManager,
        *,
        namespace: str | None = None,
        force: bool = False,
        ttl: int | None = None,
    ) -> None:
        if not isinstance(client, openai.AsyncOpenAI):
            raise ArgumentTypeError(
                f"client must be an openai.AsyncOpenAI, not {type(client).__name__}"
            )
        self.client = client
        self.chat = _Chat(client, cache, namespace=namespace, force=force, ttl=ttl)
        self.embeddings = _Embeddings(client, cache)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)
