"""Configuration: :class:`CacheConfig`, built on pydantic-settings.

``CacheConfig(...)`` uses only what it is given and the defaults. The environment and a
``.env`` file are read by :meth:`CacheConfig.from_env` alone, under the seed's variable names
(``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_DB``, ``REDIS_PASSWORD``, ``CACHE_ENABLED``), plus
``REDIS_URL``, ``REDIS_USERNAME`` and ``CACHE_<FIELD>`` for every other field
(``CACHE_EMBEDDING_TTL``, ``CACHE_KEY_PREFIX``, ``CACHE_BACKEND`` ...).
"""

from __future__ import annotations

import contextvars
import functools
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from typing_extensions import Self

from gathering_cache.errors import ConfigurationError

__all__ = ["CacheConfig"]

_GLOB_CHARS = frozenset("*?[]\\")
_URL_SCHEMES = ("redis", "rediss", "unix")
# Query parameters a URL may carry. The others redis-py would accept (socket_timeout,
# max_connections, protocol ...) would silently override the settings this library tunes, and
# unknown ones would fail at connect time: both are refused here, naming the field to use.
_URL_QUERY_ALLOWED = frozenset({"db", "password", "username", "ssl_check_hostname"})

# Set only while from_env() builds a config: plain construction never reads the environment.
_READ_ENVIRONMENT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gathering_cache_read_environment", default=False
)


def _env(default: Any, *names: str) -> Any:
    """A field read from the given environment variables (by ``from_env`` only)."""
    return Field(default, validation_alias=AliasChoices(*names))


class CacheConfig(BaseSettings):
    """Cache configuration (the seed's ``CacheConfig``, with connection and policy knobs).

    Construct it with keywords like the seed's dataclass
    (``CacheConfig(host="redis.example.com", port=6380, enabled=False)``) or from the
    environment with :meth:`from_env`. Instances are immutable; use
    ``config.model_copy(update={...})`` for a variant. Invalid values raise
    :class:`~gathering_cache.ConfigurationError` naming the field.

    The password (and any password inside ``url``) never appears in ``repr``/``str``.
    """

    model_config = SettingsConfigDict(
        env_prefix="CACHE_",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    # Connection (the seed's fields and defaults)
    host: str = _env("localhost", "REDIS_HOST", "CACHE_HOST")
    port: int = _env(6379, "REDIS_PORT", "CACHE_PORT")
    db: int = _env(0, "REDIS_DB", "CACHE_DB")
    password: SecretStr | None = _env(None, "REDIS_PASSWORD", "CACHE_PASSWORD")

    # TTL defaults in seconds (the seed's)
    embedding_ttl: int = 86400
    rag_results_ttl: int = 300
    circle_context_ttl: int = 600
    llm_response_ttl: int = 3600
    default_ttl: int = 86400
    """The TTL of a generic ``set`` / ``set_many`` given ``ttl=None``: every key the library
    writes expires, so a shared Redis never accumulates garbage."""

    # Behaviour (the seed's)
    enabled: bool = _env(True, "CACHE_ENABLED")
    key_prefix: str = "gathering:"

    # Connection, beyond the seed
    url: str | None = _env(None, "REDIS_URL", "CACHE_URL")
    """redis://, rediss:// or unix:// URL; wins over host/port/db when set (and over
    ``password`` / ``username`` when it carries them)."""
    username: str | None = _env(None, "REDIS_USERNAME", "CACHE_USERNAME")
    ssl: bool = False
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["none", "optional", "required"] = "required"
    ssl_check_hostname: bool = True
    backend: Literal["redis", "memory"] = "redis"

    # Timeouts and pool: sub-second, because a slow cache is worse than no cache.
    socket_timeout: float = 0.25
    """The longest one read or write on a Redis socket may take (redis-py's socket timeout),
    and the bound on each SCAN / UNLINK step of a bulk operation."""
    connect_timeout: float = 0.25
    operation_timeout: float = 0.5
    """Upper bound on any single cache call, whatever Redis does."""
    bulk_timeout: float = 10.0
    """Upper bound on SCAN-based calls (delete_pattern, clear_all, invalidate_llm_responses,
    total_keys in get_stats)."""
    max_connections: int = 32
    retry_attempts: int = 2
    health_check_interval: float = 0.0
    """redis-py's idle-connection PING (seconds; 0 = off). Off by default: the retry already
    replaces a connection a restart left stale, and the check costs work on every command."""

    # Degradation policy
    failure_threshold: int = 3
    """Consecutive failures after which the cache stops touching Redis for a while."""
    recovery_interval: float = 1.0
    """Seconds to wait, once degraded, before probing Redis again."""

    # In-process memory backend
    memory_max_entries: int = 10_000

    max_value_bytes: int = 8 * 1024 * 1024
    """Encoded values larger than this are not stored (``set`` returns False, one warning):
    one runaway value must not eat the Redis memory every agent shares."""

    # Embeddings
    embedding_lru_size: int = 1000
    """Entries of the in-process embedding LRU that answers while Redis is unavailable
    (0 turns it off)."""
    embedding_precision: Literal["lossless", "float32"] = "lossless"
    """``lossless``: float32 when exact, else float64. ``float32``: always float32 (lossy for
    models that return float64 values)."""

    if not TYPE_CHECKING:
        # Hidden from type checkers so that the pydantic plugin keeps typed keyword arguments.
        def __init__(self, **values: Any) -> None:
            unknown = [
                name
                for name in values
                if name not in type(self).model_fields and not name.startswith("_")
            ]
            if unknown:  # a typo must not pass silently, as with the seed's dataclass
                raise ConfigurationError(unknown[0], "unknown field")
            try:
                super().__init__(**values)
            except ValidationError as exc:
                # ``from None``: the chained ValidationError could echo a secret input.
                raise _configuration_error(exc) from None

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, validated like a new config (pydantic's own
        ``model_copy`` would skip validation)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(update or {})
        return type(self)(**values)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if _READ_ENVIRONMENT.get():
            return (init_settings, env_settings, dotenv_settings)
        return (init_settings,)

    @classmethod
    def from_env(cls, dotenv_path: str | os.PathLike[str] | None = None) -> CacheConfig:
        """Build a config from the environment and a ``.env`` file.

        Args:
            dotenv_path: the ``.env`` file to read. ``None`` reads ``./.env`` when it exists.
                Variables already in the environment win over the file.

        Raises:
            ConfigurationError: a value is invalid, or ``dotenv_path`` does not exist.
        """
        if dotenv_path is not None and not Path(dotenv_path).is_file():
            raise ConfigurationError("dotenv_path", f"no such file: {os.fspath(dotenv_path)!r}")
        env_file = Path(dotenv_path) if dotenv_path is not None else Path(".env")
        token = _READ_ENVIRONMENT.set(True)
        try:
            return cls(_env_file=env_file if env_file.is_file() else None)
        finally:
            _READ_ENVIRONMENT.reset(token)

    # -- validation ---------------------------------------------------------------------------

    @field_validator("password", "url", "username", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and value == "":
            return None
        return value

    @field_validator(
        "port",
        "db",
        "embedding_ttl",
        "rag_results_ttl",
        "circle_context_ttl",
        "llm_response_ttl",
        "default_ttl",
        "max_connections",
        "max_value_bytes",
        "retry_attempts",
        "failure_threshold",
        "memory_max_entries",
        "embedding_lru_size",
        mode="before",
    )
    @classmethod
    def _refuse_bools(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("must be an integer, not a bool")
        return value

    @field_validator("port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("must be between 1 and 65535")
        return value

    @field_validator("db", "retry_attempts", "embedding_lru_size", "health_check_interval")
    @classmethod
    def _check_non_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must be >= 0")
        return value

    @field_validator(
        "embedding_ttl",
        "rag_results_ttl",
        "circle_context_ttl",
        "llm_response_ttl",
        "default_ttl",
        "max_connections",
        "max_value_bytes",
        "failure_threshold",
        "memory_max_entries",
    )
    @classmethod
    def _check_positive_int(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator(
        "socket_timeout",
        "connect_timeout",
        "operation_timeout",
        "bulk_timeout",
        "recovery_interval",
    )
    @classmethod
    def _check_positive_float(cls, value: float) -> float:
        if not value > 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        bad = sorted(_GLOB_CHARS.intersection(value))
        if bad:
            raise ValueError(f"must not contain glob metacharacters {''.join(bad)!r}")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- raises ValueError on a malformed port
        except ValueError:
            raise ValueError("malformed URL") from None
        if parts.scheme not in _URL_SCHEMES:
            raise ValueError(f"scheme must be one of {', '.join(_URL_SCHEMES)}")
        for name, query_value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in _URL_QUERY_ALLOWED:
                hint = f"; set CacheConfig.{name} instead" if name in cls.model_fields else ""
                raise ValueError(f"query parameter {name!r} is not supported{hint}")
            if name == "db" and not query_value.isdigit():
                raise ValueError("query parameter 'db' must be a non-negative integer")
        path_db = parts.path.strip("/")
        if parts.scheme != "unix" and path_db and not path_db.isdigit():
            raise ValueError("the path of a redis:// URL is the db number")
        if parts.scheme == "unix":
            if not parts.path:
                raise ValueError("unix:// URL needs a socket path")
        elif not parts.hostname:
            raise ValueError(f"{parts.scheme}:// URL needs a host")
        return value

    # -- derived values -----------------------------------------------------------------------

    @property
    def redacted_url(self) -> str | None:
        """``url`` with any password replaced by ``***``; safe to log or show."""
        return _redact_url(self.url) if self.url else None

    def endpoint(self) -> dict[str, Any]:
        """Where the cache connects, without secrets: host, port, db (and url if set)."""
        if self.url:
            # As redis-py reads it: ?db= first, then the path; else 0 (the URL wins).
            parts = urlsplit(self.url)
            query_db = dict(parse_qsl(parts.query)).get("db")
            path_db = parts.path.strip("/") if parts.scheme != "unix" else ""
            db = int(query_db) if query_db else int(path_db) if path_db else 0
            if parts.scheme == "unix":
                return {"host": parts.path, "port": None, "db": db, "url": self.redacted_url}
            return {
                "host": parts.hostname,
                "port": parts.port or 6379,
                "db": db,
                "url": self.redacted_url,
            }
        return {"host": self.host, "port": self.port, "db": self.db}

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "url" and isinstance(value, str):
                yield name, _redact_url(value)
            else:
                yield name, value


def _redact_url(url: str) -> str:
    """The URL with every password (``user:pass@`` and ``?password=``) replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None and "password" not in dict(parse_qsl(parts.query)):
        return url  # nothing to hide; urlunsplit would also mangle unix:///path
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@functools.cache
def _field_of_alias() -> dict[str, str]:
    """Environment variable name (upper case) -> field name."""
    mapping: dict[str, str] = {}
    for name, info in CacheConfig.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    mapping[choice.upper()] = name
        mapping[f"CACHE_{name.upper()}"] = name
    return mapping


def _configuration_error(exc: ValidationError) -> ConfigurationError:
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"]) or "config"
    field = _field_of_alias().get(loc.upper(), loc)
    message = str(first["msg"])
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if field != loc:
        message += f" (from {loc})"
    if len(errors) > 1:
        others = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors[1:])
        message += f" (also invalid: {others})"
    return ConfigurationError(field, message)
