"""Embedding providers: the protocol :class:`~gathering_cache.CachedEmbedder` calls, and an
OpenAI-compatible HTTP provider (OpenAI, and compatible servers: vLLM, Ollama, LM Studio ...).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
from array import array
from collections.abc import Sequence
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

import httpx
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gathering_cache.core.keys import (
    check_count,
    check_dimensions,
    check_model,
    check_number,
    check_text,
)
from gathering_cache.errors import ArgumentTypeError, ConfigurationError, ProviderError

__all__ = ["EmbeddingProvider", "OpenAIEmbeddings", "OpenAISDKEmbeddings", "openai_installed"]

logger = logging.getLogger(__name__)


@runtime_checkable
class EmbeddingProvider(Protocol):
    """Anything that embeds a batch of texts: one vector per text, in order."""

    model: str
    dimensions: int | None

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class _OpenAISettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    api_key: SecretStr | None = Field(None, validation_alias="OPENAI_API_KEY")
    base_url: str = Field("https://api.openai.com/v1", validation_alias="OPENAI_BASE_URL")
    model: str = Field("text-embedding-3-small", validation_alias="OPENAI_EMBEDDING_MODEL")
    dimensions: int | None = Field(None, validation_alias="OPENAI_EMBEDDING_DIMENSIONS")


def _needs_key(base_url: str) -> bool:
    """Whether ``base_url`` is OpenAI's own API, which refuses requests without a key."""
    host = (urlsplit(base_url).hostname or "").rstrip(".").lower()
    return host == "api.openai.com"


class OpenAIEmbeddings:
    """``POST {base_url}/embeddings`` of the OpenAI API and the servers that copy it.

    429 and 5xx answers and transport errors are retried with jittered exponential backoff
    (``Retry-After`` honoured, capped); other errors raise :class:`ProviderError` at once.

    Args:
        model: the embedding model name.
        api_key: sent as a bearer token when given. Required for ``api.openai.com``
            (refused at construction without one); local servers often need none.
        base_url: the API root, ``https://api.openai.com/v1`` by default.
        dimensions: ask the model for vectors of this size (models that support it).
        encoding_format: ``"base64"`` (float32, compact; what the OpenAI SDK uses) or
            ``"float"`` (JSON numbers; the most widely supported).
        timeout: seconds per HTTP request.
        max_retries: retries after the first attempt for retryable failures.
        client: an ``httpx.AsyncClient`` to use (not closed by :meth:`aclose`).

    Raises:
        ConfigurationError: no ``api_key`` for OpenAI's own API, an empty model, a base_url
            that is not http(s), an unknown encoding_format.
        ArgumentTypeError / InvalidArgumentError: an argument of the wrong type or value
            (``client`` not an ``httpx.AsyncClient``, ``max_retries`` negative, ...).
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        api_key: str | None = None,
        base_url: str = "https://api.openai.com/v1",
        dimensions: int | None = None,
        encoding_format: Literal["float", "base64"] = "float",
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if model is None or model == "":
            raise ConfigurationError("model", "must not be empty")
        model = check_model(model) or model  # a str that can be a key segment
        if api_key is not None and not isinstance(api_key, str):
            raise ArgumentTypeError(f"api_key must be a str, not {type(api_key).__name__}")
        if not isinstance(base_url, str):
            raise ArgumentTypeError(f"base_url must be a str, not {type(base_url).__name__}")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigurationError("base_url", "must be an http:// or https:// URL")
        if not api_key and _needs_key(base_url):
            # OpenAI answers 401 to a request without a key, after the retries; say so now.
            # Local OpenAI-compatible servers (vLLM, Ollama ...) need none: their URL differs.
            raise ConfigurationError(
                "api_key",
                "no API key for api.openai.com: set OPENAI_API_KEY (or pass api_key=); for a "
                "local OpenAI-compatible server that needs none, set OPENAI_BASE_URL to it",
            )
        if encoding_format not in ("float", "base64"):
            raise ConfigurationError(
                "encoding_format", f"must be 'float' or 'base64', not {encoding_format!r}"
            )
        if client is not None and not isinstance(client, httpx.AsyncClient):
            hint = (
                " (for an openai client, use OpenAISDKEmbeddings(client))"
                if type(client).__module__.startswith("openai")
                else ""
            )
            raise ArgumentTypeError(
                f"client must be an httpx.AsyncClient, not {type(client).__name__}{hint}"
            )
        self.model = model
        self.dimensions = check_dimensions(dimensions)
        self.encoding_format = encoding_format
        self.max_retries = check_count(max_retries, "max_retries")
        self._backoff = (
            check_number(backoff_base, "backoff_base"),
            check_number(backoff_cap, "backoff_cap"),
        )
        timeout = check_number(timeout, "timeout", minimum=0.001)
        self._url = base_url.rstrip("/") + "/embeddings"
        self._api_key = SecretStr(api_key) if api_key else None
        self._owned = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout)

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> OpenAIEmbeddings:
        """Configure from OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_EMBEDDING_MODEL and
        OPENAI_EMBEDDING_DIMENSIONS (environment first, then the ``.env`` file).

        Raises:
            ConfigurationError: OPENAI_API_KEY is not set while OPENAI_BASE_URL is OpenAI's
                own API (the default); a local server's URL needs no key.
        """
        env_file = os.fspath(dotenv_path) if dotenv_path is not None else ".env"
        if dotenv_path is not None and not os.path.isfile(env_file):
            raise ConfigurationError("dotenv_path", f"no such file: {env_file!r}")
        settings = _OpenAISettings(_env_file=env_file if os.path.isfile(env_file) else None)
        return cls(
            settings.model,
            api_key=settings.api_key.get_secret_value() if settings.api_key else None,
            base_url=settings.base_url,
            dimensions=settings.dimensions,
        )

    def __repr__(self) -> str:
        return f"OpenAIEmbeddings(model={self.model!r}, url={self._url!r})"

    async def aclose(self) -> None:
        if self._owned:
            await self._client.aclose()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed a batch; one vector per text, in order.

        Raises:
            ArgumentTypeError / InvalidArgumentError: ``texts`` is not a list of str (a
                single str included), or holds a lone surrogate.
            ProviderError: a non-retryable HTTP error, retries exhausted, or a malformed
                answer.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ArgumentTypeError(f"texts must be a list of str, not {type(texts).__name__}")
        for index, text in enumerate(texts):
            check_text(text, f"texts[{index}]")
        payload: dict[str, Any] = {
            "model": self.model,
            "input": list(texts),
            "encoding_format": self.encoding_format,
        }
        if self.dimensions is not None:
            payload["dimensions"] = self.dimensions
        headers = {}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        attempt = 0
        while True:
            try:
                response = await self._client.post(self._url, json=payload, headers=headers)
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise ProviderError(
                        f"embedding request to {self._url} failed: {type(exc).__name__}: {exc}"
                    ) from None
                delay = self._delay(attempt, None)
            else:
                if response.status_code < 400:
                    return self._parse(response, len(texts))
                retryable = response.status_code == 429 or response.status_code >= 500
                if not retryable or attempt >= self.max_retries:
                    raise ProviderError(
                        f"embedding request failed with HTTP {response.status_code}: "
                        f"{response.text[:200]}",
                        status=response.status_code,
                    )
                delay = self._delay(attempt, response.headers.get("retry-after"))
            attempt += 1
            logger.debug("embedding provider retry %d in %.2f s", attempt, delay)
            await asyncio.sleep(delay)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        base, cap = self._backoff
        if retry_after is not None:
            try:
                return min(cap, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return random.uniform(0, min(cap, base * 2**attempt))

    def _parse(self, response: httpx.Response, expected: int) -> list[list[float]]:
        try:
            data = response.json()["data"]
            items = sorted(data, key=lambda item: item["index"])
            vectors = [self._vector(item["embedding"]) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"malformed embedding response: {exc!r}") from None
        if len(vectors) != expected:
            raise ProviderError(f"provider returned {len(vectors)} vectors for {expected} texts")
        return vectors

    @staticmethod
    def _vector(value: Any) -> list[float]:
        if isinstance(value, str):  # base64 little-endian float32
            packed = array("f")
            packed.frombytes(base64.b64decode(value))
            return packed.tolist()
        if not isinstance(value, list):
            raise TypeError(f"embedding is a {type(value).__name__}")
        return value


class OpenAISDKEmbeddings:
    """Embeddings through the official ``openai`` SDK (the ``[openai]`` extra): an
    ``AsyncOpenAI`` or ``AsyncAzureOpenAI`` client, with its retries (``Retry-After``,
    408/409/429/5xx, ``x-should-retry``), timeouts, proxies and Azure authentication.

    Vectors are requested as base64 float32 and decoded here, so they are exact float32 values
    and the cache stores them at float32 size (4 bytes per dimension) losslessly.

    Args:
        client: an ``openai.AsyncOpenAI`` (or ``AsyncAzureOpenAI``) client; not closed by
            :meth:`aclose` unless this provider built it (``from_env``).
        model: the embedding model (for Azure: the deployment name).
        dimensions: ask the model for vectors of this size (models that support it).

    Raises:
        ArgumentTypeError: ``client`` is not an ``openai.AsyncOpenAI`` (a sync ``OpenAI``
            client included). ConfigurationError: the ``openai`` package is not installed.
    """

    def __init__(
        self,
        client: Any,
        model: str = "text-embedding-3-small",
        *,
        dimensions: int | None = None,
    ) -> None:
        openai = _import_openai()
        if not isinstance(client, openai.AsyncOpenAI):
            raise ArgumentTypeError(
                f"client must be an openai.AsyncOpenAI (or AsyncAzureOpenAI), "
                f"not {type(client).__name__}"
            )
        if model is None or model == "":
            raise ConfigurationError("model", "must not be empty")
        self.model = check_model(model) or model
        self.dimensions = check_dimensions(dimensions)
        self.client = client
        self._owned = False
        self._extra: dict[str, Any] = {}

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> OpenAISDKEmbeddings:
        """Configure from the same variables as :meth:`OpenAIEmbeddings.from_env` (the SDK
        reads OPENAI_API_KEY itself too); the client it builds is closed by :meth:`aclose`.

        Raises:
            ConfigurationError: as :meth:`OpenAIEmbeddings.from_env`.
        """
        openai = _import_openai()
        env_file = os.fspath(dotenv_path) if dotenv_path is not None else ".env"
        if dotenv_path is not None and not os.path.isfile(env_file):
            raise ConfigurationError("dotenv_path", f"no such file: {env_file!r}")
        settings = _OpenAISettings(_env_file=env_file if os.path.isfile(env_file) else None)
        key = settings.api_key.get_secret_value() if settings.api_key else None
        if not key and _needs_key(settings.base_url):
            raise ConfigurationError(
                "api_key",
                "no API key for api.openai.com: set OPENAI_API_KEY (or pass api_key=); for a "
                "local OpenAI-compatible server that needs none, set OPENAI_BASE_URL to it",
            )
        client = openai.AsyncOpenAI(api_key=key or "unused", base_url=settings.base_url)
        provider = cls(client, settings.model, dimensions=settings.dimensions)
        provider._owned = True
        if not key:  # the SDK insists on a key: for a local server, send no Authorization
            provider._extra["extra_headers"] = {"Authorization": openai.Omit()}
        return provider

    def __repr__(self) -> str:
        return f"OpenAISDKEmbeddings(model={self.model!r}, url={str(self.client.base_url)!r})"

    async def aclose(self) -> None:
        if self._owned:
            await self.client.close()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Embed a batch; one vector per text, in order.

        Raises:
            ArgumentTypeError / InvalidArgumentError: ``texts`` is not a list of str.
            openai.APIError and its subclasses: the SDK's own errors, unchanged.
            ProviderError: a malformed answer.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise ArgumentTypeError(f"texts must be a list of str, not {type(texts).__name__}")
        for index, text in enumerate(texts):
            check_text(text, f"texts[{index}]")
        extra: dict[str, Any] = dict(self._extra)
        if self.dimensions is not None:
            extra["dimensions"] = self.dimensions
        response = await self.client.embeddings.create(
            model=self.model, input=list(texts), encoding_format="base64", **extra
        )
        try:
            items = sorted(response.data, key=lambda item: item.index)
            vectors = [OpenAIEmbeddings._vector(item.embedding) for item in items]
        except (ValueError, TypeError, AttributeError) as exc:
            raise ProviderError(f"malformed embedding response: {exc!r}") from None
        if len(vectors) != len(texts):
            raise ProviderError(f"provider returned {len(vectors)} vectors for {len(texts)} texts")
        return vectors


def openai_installed() -> bool:
    """Whether the ``openai`` SDK can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("openai") is not None


def _import_openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ConfigurationError(
            "openai", "the openai package is not installed: pip install 'gathering-cache[openai]'"
        ) from None
    return openai
