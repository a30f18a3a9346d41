"""Configuration: :class:`CacheConfig`, built on pydantic-settings.

``CacheConfig(...)`` uses only what it is given and the defaults. The environment and a
``.env`` file are read by :meth:`CacheConfig.from_env` alone, under the names common to Redis
tools (``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_DB``, ``REDIS_PASSWORD``, ``REDIS_URL``,
``REDIS_USERNAME``), ``CACHE_ENABLED``, and ``GATHERING_CACHE_<FIELD>`` for every other field
(``GATHERING_CACHE_EMBEDDING_TTL``, ``GATHERING_CACHE_KEY_PREFIX`` ...). The prefix is not
``CACHE_``: ``CACHE_URL`` belongs to the 12-factor convention (django-cache-url and others)
and is never read. A variable the library does not read is never an error.

A ``url`` is read as redis-py's ``parse_url`` reads it, and the fields show what it says: its
host, port, db, user name, password and TLS scheme, and its query parameters
(``?socket_timeout=``, ``?ssl_cert_reqs=`` ...), each set on the field it maps to. The client
is then built from the fields, never with ``from_url``.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from pydantic import (
    AliasGenerator,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from typing_extensions import Self

from gathering_cache.core.keys import MAX_TTL
from gathering_cache.errors import ConfigurationError

__all__ = ["CacheConfig"]

_ENV_PREFIX = "GATHERING_CACHE_"
# Fields read from a variable of their own (the names common to Redis tools, and
# CACHE_ENABLED), kept exactly; every other field is _ENV_PREFIX + its name in upper case.
_OWN_VARIABLES = {
    "host": "REDIS_HOST",
    "port": "REDIS_PORT",
    "db": "REDIS_DB",
    "password": "REDIS_PASSWORD",
    "enabled": "CACHE_ENABLED",
    "url": "REDIS_URL",
    "username": "REDIS_USERNAME",
    "cluster_nodes": "REDIS_CLUSTER_NODES",
    "sentinel_nodes": "REDIS_SENTINEL_NODES",
    "sentinel_service": "REDIS_SENTINEL_SERVICE",
}

_GLOB_CHARS = frozenset("*?[]\\")
_URL_SCHEMES = ("redis", "rediss", "unix")

# Set only while from_env() builds a config: plain construction never reads the environment.
_READ_ENVIRONMENT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "gathering_cache_read_environment", default=False
)


def _env_variable(field: str) -> str:
    """The environment variable :meth:`CacheConfig.from_env` reads ``field`` from."""
    return _OWN_VARIABLES.get(field, _ENV_PREFIX + field.upper())


def _own_env(default: Any, field: str) -> Any:
    """A field read from a variable of its own (the others get theirs from the alias
    generator)."""
    return Field(default, validation_alias=_OWN_VARIABLES[field])


# -- URL query parameters ------------------------------------------------------------------------
# Values arrive as strings from a URL, and as strings or native values from keywords and the
# environment (to compare the two when both are given), so each parser takes either.

_FALSE_STRINGS = ("0", "F", "FALSE", "N", "NO", "OFF")  # redis-py's to_bool
_TRUE_STRINGS = ("1", "T", "TRUE", "Y", "YES", "ON")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().upper()
    if text in _FALSE_STRINGS:
        return False
    if text in _TRUE_STRINGS:
        return True
    raise ValueError("must be a boolean (true/false, yes/no, on/off, 1/0)")


def _to_int(value: Any, minimum: int) -> int:
    if isinstance(value, bool):
        raise ValueError("must be an integer")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError("must be an integer") from None
    if number < minimum:
        raise ValueError(f"must be >= {minimum}")
    return number


def _to_float(value: Any, *, positive: bool) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ValueError("must be a number") from None
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError("must be > 0" if positive else "must be >= 0")
    return number


def _to_text(value: Any) -> str:
    return str(value)


def _to_cert_reqs(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("none", "optional", "required"):
        raise ValueError("must be one of none, optional, required")
    return text


def _to_protocol(value: Any) -> int:
    return _check_protocol(_to_int(value, 0))


def _check_protocol(value: int) -> int:
    if value != 2:
        raise ValueError(
            "only 2 (RESP2) is supported: the library reads every reply in the RESP2 shape, "
            "and redis-py drops RESP3 push frames on ordinary connections"
        )
    return value


def _check_client_name(value: str) -> str:
    # Redis itself refuses spaces, newlines and other special characters in CLIENT SETNAME
    # (only '!'..'~'); refusing here beats a failure on every connect.
    if not value or any(not "!" <= char <= "~" for char in value):
        raise ValueError("must be printable ASCII without spaces")
    return value


# redis-py URL query parameter -> (CacheConfig field, parser), with redis-py's meaning.
_URL_PARAMETERS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "db": ("db", lambda v: _to_int(v, 0)),
    "username": ("username", _to_text),
    "password": ("password", _to_text),
    "socket_timeout": ("socket_timeout", lambda v: _to_float(v, positive=True)),
    "socket_connect_timeout": ("connect_timeout", lambda v: _to_float(v, positive=True)),
    "health_check_interval": ("health_check_interval", lambda v: _to_float(v, positive=False)),
    "max_connections": ("max_connections", lambda v: _to_int(v, 1)),
    "client_name": ("client_name", lambda v: _check_client_name(str(v))),
    "protocol": ("protocol", _to_protocol),
    "ssl_cert_reqs": ("ssl_cert_reqs", _to_cert_reqs),
    "ssl_ca_certs": ("ssl_ca_certs", _to_text),
    "ssl_certfile": ("ssl_certfile", _to_text),
    "ssl_keyfile": ("ssl_keyfile", _to_text),
    "ssl_check_hostname": ("ssl_check_hostname", _to_bool),
}
# Fields the URL's location and credentials set: they win over the fields silently, as with
# redis-py (a .env with REDIS_HOST=localhost beside REDIS_URL is common and harmless).
_URL_LOCATION_FIELDS = frozenset({"host", "port", "db", "username", "password"})

_USE_OWN_CLIENT = (
    "is not supported by gathering-cache; for it, build a redis.asyncio client yourself "
    "and pass it as client="
)
_RETRIES = "retries are set with retry_attempts (GATHERING_CACHE_RETRY_ATTEMPTS)"
# redis-py URL parameters with no CacheConfig field, and what to use instead.
_URL_PARAMETERS_REFUSED = {
    "retry_on_timeout": _RETRIES,
    "retry_on_error": _RETRIES,
    "timeout": "the wait for a connection is bounded by operation_timeout "
    "(GATHERING_CACHE_OPERATION_TIMEOUT)",
    "connect_timeout": "redis-py's name is socket_connect_timeout (the connect_timeout field, "
    "GATHERING_CACHE_CONNECT_TIMEOUT)",
    "legacy_responses": "replies are always read in the RESP2 shape",
    "ssl": "TLS comes from the scheme: use rediss://",
    "encoding": "values are bytes; the library does no text decoding",
    "encoding_errors": "values are bytes; the library does no text decoding",
    **dict.fromkeys(
        (
            "socket_keepalive",
            "socket_keepalive_options",
            "socket_read_size",
            "socket_type",
            "ssl_ca_path",
            "ssl_ca_data",
            "ssl_password",
            "ssl_ciphers",
            "ssl_min_version",
            "ssl_include_verify_flags",
            "ssl_exclude_verify_flags",
            "lib_name",
            "lib_version",
        ),
        _USE_OWN_CLIENT,
    ),
}


class CacheConfig(BaseSettings):
    """Cache configuration: connection, TTLs, timeouts, degradation policy and backend.

    Construct it with keywords
    (``CacheConfig(host="redis.example.com", port=6380, enabled=False)``), from a URL with
    :meth:`from_url`, or from the environment with :meth:`from_env`. Instances are immutable;
    use ``config.model_copy(update={...})`` for a variant. Invalid values raise
    :class:`~gathering_cache.ConfigurationError` naming the field (and, from the
    environment, the variable).

    The password (and any password inside ``url``) never appears in ``repr``/``str`` or in
    an error message.
    """

    model_config = SettingsConfigDict(
        # Every field without a variable of its own is read from GATHERING_CACHE_<FIELD>. An
        # explicit alias (rather than env_prefix) puts the variable's name in validation errors.
        alias_generator=AliasGenerator(validation_alias=_env_variable),
        extra="ignore",
        frozen=True,
        populate_by_name=True,
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    # Connection
    host: str = _own_env("localhost", "host")
    port: int = _own_env(6379, "port")
    db: int = _own_env(0, "db")
    password: SecretStr | None = _own_env(None, "password")

    # TTL defaults in seconds
    embedding_ttl: int = 86400
    rag_results_ttl: int = 300
    circle_context_ttl: int = 600
    llm_response_ttl: int = 3600
    default_ttl: int = 86400
    """The TTL of a generic ``set`` / ``set_many`` given ``ttl=None``: every key the library
    writes expires, so a shared Redis never accumulates garbage."""

    # Behaviour
    enabled: bool = _own_env(True, "enabled")
    key_prefix: str = "gathering:"
    """Prefix of every domain key. It must end with a separator (``:`` or any character that
    is not a letter, digit or space): ``clear_all`` deletes ``<key_prefix>*``, and without a
    separator ``"gathering"`` would also match another application's ``gatheringX:`` keys."""

    # Connection: URL, ACL user, TLS, client name, protocol, backend
    url: str | None = _own_env(None, "url")
    """redis://, rediss:// or unix:// URL, read as redis-py reads it. Its host, port, db,
    user name and password win over those fields; ``ssl`` must agree with its scheme; its
    query parameters set their fields (``?socket_timeout=2`` sets ``socket_timeout``), and an
    explicit different value for one of them is an error."""
    username: str | None = _own_env(None, "username")
    ssl: bool = False
    """TLS for host/port connections; with a ``url`` it follows the scheme (``rediss://``)."""
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: Literal["none", "optional", "required"] = "required"
    ssl_check_hostname: bool = True
    client_name: str | None = None
    """``CLIENT SETNAME`` for every connection (shows in ``CLIENT LIST``)."""
    protocol: int = 2
    """The Redis protocol version. Only 2 (RESP2): the library reads replies in the RESP2
    shape, and redis-py drops RESP3 push frames on ordinary connections."""
    backend: Literal["redis", "memory"] = "redis"

    # Topology: standalone (neither list set), Redis Cluster or Sentinel
    cluster_nodes: list[str] | str | None = _own_env(None, "cluster_nodes")
    """Seed nodes of a Redis Cluster (``["host:7000", "host:7001"]``; the rest are
    discovered). From the environment: ``REDIS_CLUSTER_NODES="host1:7000,host2:7001"``. Read
    back as a list of ``host:port`` strings. TLS, credentials and timeouts apply to every
    node; ``db`` must be 0."""
    sentinel_nodes: list[str] | str | None = _own_env(None, "sentinel_nodes")
    """Sentinels watching the primary (``["host:26379", ...]``, or
    ``REDIS_SENTINEL_NODES="h1:26379,h2:26379"``): the cache asks them where the primary of
    ``sentinel_service`` is and follows it across failovers. The data nodes use ``username``
    / ``password``; the sentinels ``sentinel_username`` / ``sentinel_password``."""
    sentinel_service: str = _own_env("mymaster", "sentinel_service")
    """The name the sentinels monitor the primary under (``REDIS_SENTINEL_SERVICE``)."""
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None

    # Near cache (L1): values of chosen namespaces kept in this process (docs/scaling.md)
    near_cache: bool = False
    """Keep recently read values of ``near_cache_namespaces`` in this process, kept correct
    by Redis client-side caching (CLIENT TRACKING, broadcast mode on ``key_prefix``)."""
    near_cache_size: int = 10_000
    """Entries the near cache holds (least recently used dropped first)."""
    near_cache_ttl: float = 60.0
    """The longest a value stays in the near cache (seconds): a bound, not the mechanism
    that keeps it correct (that is the invalidation messages)."""
    near_cache_namespaces: list[str] | str = ["embedding", "circle"]
    """Namespaces served from the near cache (``embedding``, ``circle``, ``llm``,
    ``generic``; never ``rag``, whose generation counters must be read from Redis).
    From the environment: comma-separated."""

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
    auto_pipeline: bool = True
    """Send the commands that concurrent callers issue while Redis is busy as one pipeline
    per connection (see docs/benchmarks.md); a single sequential caller is unaffected."""
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

    # Fleet statistics (what the CLI and the dashboard read)
    stats_flush_interval: float = 10.0
    """Seconds between two folds of this process's counters into the store (one more on
    close), so every process's traffic is seen together; 0 turns fleet statistics off."""
    stats_window: int = 86400
    """Seconds of minute-by-minute history (and of a silent process's counters) kept in the
    store: each of those keys expires after it."""

    if not TYPE_CHECKING:
        # Hidden from type checkers so that the pydantic plugin keeps typed keyword arguments.
        def __init__(self, **values: Any) -> None:
            unknown = [
                name
                for name in values
                if name not in type(self).model_fields and not name.startswith("_")
            ]
            try:
                if unknown:  # a typo must not pass silently
                    raise ConfigurationError(unknown[0], "unknown field")
                try:
                    super().__init__(**values)
                except ValidationError as exc:
                    # ``from None``: the chained ValidationError could echo a secret input.
                    raise _configuration_error(exc, values) from None
            except ConfigurationError as exc:
                if _called_by_pydantic():
                    # Validated as a field of another model (an application's own settings):
                    # pydantic would wrap a ValueError with the whole input dict, password
                    # and URL included, and show it unless *that* model hides inputs. A
                    # ValidationError is merged instead, with the input given here.
                    raise _nested_validation_error(exc, values) from None
                raise

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, validated like a new config (pydantic's own
        ``model_copy`` would skip validation). What the ``url`` sets is read again from the
        URL (the new one, if ``update`` has one)."""
        from_url = _url_settings(self.url, "url") if self.url else {}
        new_url = (update or {}).get("url")
        if isinstance(new_url, str) and new_url:
            # What the new URL sets is not carried over to contradict it. (A bad URL: the
            # copy's validation below names what is wrong with it.)
            with contextlib.suppress(ConfigurationError):
                from_url = {**from_url, **_url_settings(new_url, "url")}
        values = {
            name: getattr(self, name) for name in type(self).model_fields if name not in from_url
        }
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

        Variables: ``REDIS_HOST``, ``REDIS_PORT``, ``REDIS_DB``, ``REDIS_PASSWORD``,
        ``CACHE_ENABLED``, ``REDIS_URL``, ``REDIS_USERNAME``, and
        ``GATHERING_CACHE_<FIELD>`` for every other field. Others are ignored.

        Args:
            dotenv_path: the ``.env`` file to read. ``None`` reads ``./.env`` when it exists.
                Variables already in the environment win over the file.

        Raises:
            ConfigurationError: a value is invalid (the message names the variable), or
                ``dotenv_path`` does not exist.
        """
        if dotenv_path is not None and not Path(dotenv_path).is_file():
            raise ConfigurationError("dotenv_path", f"no such file: {os.fspath(dotenv_path)!r}")
        env_file = Path(dotenv_path) if dotenv_path is not None else Path(".env")
        token = _READ_ENVIRONMENT.set(True)
        try:
            return cls(_env_file=env_file if env_file.is_file() else None)
        finally:
            _READ_ENVIRONMENT.reset(token)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> CacheConfig:
        """Build a config from a redis-py URL, like ``redis.asyncio.Redis.from_url``.

        ``CacheConfig.from_url(url, key_prefix="app:")`` is ``CacheConfig(url=url,
        key_prefix="app:")``. The URL's query parameters set the fields they map to
        (``?socket_timeout=2``, ``?ssl_cert_reqs=none``, ``?client_name=agent-1`` ...) and win
        over the tuned defaults.

        Args:
            url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
            overrides: other fields. The URL's host, port, db, user name and password win
                over these keywords, as with redis-py; a field that one of its query
                parameters sets must agree with it.

        Raises:
            ConfigurationError: the URL or a field is invalid, a query parameter is unknown
                (the message names the field to use instead), or an override contradicts
                the URL.
        """
        return cls(url=url, **overrides)

    # -- validation ---------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _apply_url(cls, data: Any) -> Any:
        """Set the fields the URL speaks for, from the URL (redis-py's precedence)."""
        if not isinstance(data, dict):
            return data
        url_key = _key_of(data, "url")
        if url_key is None:
            return data
        raw = data[url_key]
        if not isinstance(raw, str) or not raw.strip():
            return data
        url_source = _source(url_key)
        url = raw.strip()  # a trailing space from a .env line is not part of the URL
        settings = _url_settings(url, url_source)
        data = dict(data)
        data[url_key] = url
        for field, (value, origin) in settings.items():
            key = _key_of(data, field)
            if key is not None:
                if field not in _URL_LOCATION_FIELDS:
                    _check_agreement(field, key, data[key], value, origin, url_source)
                del data[key]
            data[field] = value
        return data

    @field_validator("password", "url", "username", "client_name", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and value == "":
            return None
        return value

    @field_validator("url", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("backend", "ssl_cert_reqs", "embedding_precision", mode="before")
    @classmethod
    def _enum_case_insensitive(cls, value: Any) -> Any:
        # GATHERING_CACHE_BACKEND=Memory is as clear as =memory.
        return value.strip().lower() if isinstance(value, str) else value

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
        "protocol",
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

    @field_validator("protocol")
    @classmethod
    def _validate_protocol(cls, value: int) -> int:
        return _check_protocol(value)

    @field_validator("client_name")
    @classmethod
    def _validate_client_name(cls, value: str | None) -> str | None:
        return None if value is None else _check_client_name(value)

    @field_validator(
        "db",
        "retry_attempts",
        "embedding_lru_size",
        "health_check_interval",
        "stats_flush_interval",
    )
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
        "stats_window",
    )
    @classmethod
    def _check_positive_int(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator(
        "embedding_ttl", "rag_results_ttl", "circle_context_ttl", "llm_response_ttl", "default_ttl"
    )
    @classmethod
    def _check_storable_ttl(cls, value: int) -> int:
        # A default TTL Redis cannot take would fail every write of its domain.
        if value > MAX_TTL:
            raise ValueError(f"must be at most {MAX_TTL} seconds (the longest TTL Redis takes)")
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

    @field_validator("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _check_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        # Checked now, naming the field, rather than failing at connect time as a bare
        # "No such file or directory". Only when TLS is on: otherwise the file is unused.
        if value is not None and info.data.get("ssl") and not Path(value).is_file():
            reason = "is not a file" if Path(value).exists() else "no such file"
            raise ValueError(f"{reason}: {value!r}")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"must be valid text (a lone surrogate at index {exc.start})"
            ) from None
        bad = sorted(_GLOB_CHARS.intersection(value))
        if bad:
            raise ValueError(f"must not contain glob metacharacters {''.join(bad)!r}")
        last = value[-1]
        if last.isalnum() or last.isspace():
            raise ValueError(
                "must end with a separator such as ':' (e.g. 'gathering:'): clear_all "
                "deletes '<key_prefix>*', which without one also matches other prefixes"
                + (" (it ends with whitespace)" if last.isspace() else "")
            )
        return value

    @field_validator("cluster_nodes", "sentinel_nodes", mode="before")
    @classmethod
    def _split_addresses(cls, value: Any, info: ValidationInfo) -> Any:
        # The environment gives "h1:7000,h2:7001"; an empty list or string is "not set".
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            if not value:
                return None
            return [_check_address(item, str(info.field_name)) for item in value]
        return value

    @field_validator("near_cache_namespaces", mode="before")
    @classmethod
    def _check_near_namespaces(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple, set, frozenset)):
            allowed = ("embedding", "circle", "llm", "generic")
            for name in value:
                if name not in allowed:
                    raise ValueError(f"{name!r} is not one of {', '.join(allowed)}")
            return sorted(set(value))
        return value

    @field_validator("near_cache_size")
    @classmethod
    def _check_near_size(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    @field_validator("near_cache_ttl")
    @classmethod
    def _check_near_ttl(cls, value: float) -> float:
        if not value > 0 or not math.isfinite(value):
            raise ValueError("must be > 0")
        return value

    @field_validator("sentinel_service")
    @classmethod
    def _check_service(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("sentinel_username", mode="before")
    @classmethod
    def _empty_username_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_topology(self) -> Self:
        if self.cluster_nodes and self.sentinel_nodes:
            raise ConfigurationError(
                "sentinel_nodes",
                "set either cluster_nodes (Redis Cluster) or sentinel_nodes (Sentinel), not both",
            )
        if self.cluster_nodes or self.sentinel_nodes:
            field = "cluster_nodes" if self.cluster_nodes else "sentinel_nodes"
            if self.socket_path is not None:
                raise ConfigurationError("url", f"a unix:// socket cannot be combined with {field}")
        if self.cluster_nodes and self.db != 0:
            raise ConfigurationError(
                "db",
                f"must be 0 with cluster_nodes (a Redis Cluster has one database), not {self.db}",
            )
        return self

    # -- derived values -----------------------------------------------------------------------

    @property
    def topology(self) -> Literal["standalone", "cluster", "sentinel"]:
        """Which Redis deployment the config names: ``cluster_nodes`` -> ``"cluster"``,
        ``sentinel_nodes`` -> ``"sentinel"``, neither -> ``"standalone"``."""
        if self.cluster_nodes:
            return "cluster"
        return "sentinel" if self.sentinel_nodes else "standalone"

    @staticmethod
    def addresses(nodes: list[str] | str | None) -> list[tuple[str, int]]:
        """``cluster_nodes`` or ``sentinel_nodes`` as (host, port) pairs (validated)."""
        if not nodes:
            return []
        items = [nodes] if isinstance(nodes, str) else nodes
        pairs = []
        for item in items:
            host, _, port = item.rpartition(":")
            pairs.append((host.strip("[]"), int(port)))
        return pairs

    @property
    def redacted_url(self) -> str | None:
        """``url`` with any password replaced by ``***``; safe to log or show."""
        return _redact_url(self.url) if self.url else None

    @property
    def socket_path(self) -> str | None:
        """The Unix socket path of a ``unix://`` URL, else ``None``."""
        if self.url and urlsplit(self.url).scheme == "unix":
            return unquote(urlsplit(self.url).path)
        return None

    def endpoint(self) -> dict[str, Any]:
        """Where the cache connects, without secrets: host, port, db (and url if set); for
        a cluster or sentinel set, its first seed node and ``nodes`` (and ``service``)."""
        nodes = self.cluster_nodes or self.sentinel_nodes
        if nodes:
            (host, port), *_ = self.addresses(nodes)
            where: dict[str, Any] = {"host": host, "port": port, "db": self.db}
            where["nodes"] = list(nodes)
            if self.sentinel_nodes:
                where["service"] = self.sentinel_service
            return where
        if not self.url:
            return {"host": self.host, "port": self.port, "db": self.db}
        if self.socket_path is not None:
            return {"host": self.socket_path, "port": None, "db": self.db, "url": self.redacted_url}
        return {"host": self.host, "port": self.port, "db": self.db, "url": self.redacted_url}

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            if name == "url" and isinstance(value, str):
                yield name, _redact_url(value)
            else:
                yield name, value


def _check_address(item: Any, field: str) -> str:
    """``item`` if it is ``host:port`` (an IPv6 host in brackets), else a ConfigurationError
    naming ``field``."""
    if not isinstance(item, str):
        raise ConfigurationError(field, f"addresses must be 'host:port' strings, not {item!r}")
    text = item.strip()
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigurationError(field, f"{text!r} is not host:port (e.g. 'redis-1:7000')")
    if any(char.isspace() or char in "/@," for char in host):
        raise ConfigurationError(field, f"{text!r} is not host:port (e.g. 'redis-1:7000')")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigurationError(field, f"{text!r}: write an IPv6 host in brackets ([::1]:7000)")
    return text


# -- URL reading -----------------------------------------------------------------------------------


def _url_settings(url: str, source: str) -> dict[str, tuple[Any, str]]:
    """field -> (value, where in the URL it comes from), as redis-py's ``parse_url`` reads
    ``url``. Raises ConfigurationError("url", ...) naming ``source`` when ``url`` is invalid.
    Nothing secret goes into a message."""

    def fail(message: str) -> ConfigurationError:
        return ConfigurationError("url", message + (f" (from {source})" if source != "url" else ""))

    if any(char.isspace() for char in url):
        raise fail("contains whitespace (percent-encode a space as %20)")
    if not url.lower().startswith(tuple(f"{scheme}://" for scheme in _URL_SCHEMES)):
        raise fail("must start with redis://, rediss:// or unix://")
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018 -- raises ValueError on unbalanced IPv6 brackets
    except ValueError:
        raise fail("is not a valid URL (unbalanced [ ] around an IPv6 address?)") from None
    settings: dict[str, tuple[Any, str]] = {}
    if parts.scheme == "unix":
        if not parts.path:
            raise fail("a unix:// URL needs a socket path (unix:///run/redis.sock)")
        settings["ssl"] = (False, "the unix:// scheme")
    else:
        if not parts.hostname:
            raise fail(f"a {parts.scheme}:// URL needs a host")
        settings["host"] = (unquote(parts.hostname), "the URL's host")
        # Like redis-py's from_url: a port or db the URL leaves out comes from the fields
        # (REDIS_PORT / REDIS_DB, or their defaults), not from a default of the URL's own.
        port = _url_port(parts.netloc, fail)
        if port is not None:
            settings["port"] = (port, "the URL's port")
        db_path = unquote(parts.path).replace("/", "")
        if db_path and not db_path.isdigit():
            raise fail(f"the path of a {parts.scheme}:// URL is the db number (/0, /1 ...)")
        if db_path:
            settings["db"] = (int(db_path), "the URL's path")
        settings["ssl"] = (parts.scheme == "rediss", f"the {parts.scheme}:// scheme")
    # Like redis-py: the user info, percent-decoded; an empty user or password is not one.
    if parts.username:
        settings["username"] = (unquote(parts.username), "the URL's user name")
    if parts.password:
        settings["password"] = (unquote(parts.password), "the URL's password")

    seen: set[str] = set()
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in seen:
            raise fail(f"query parameter {name!r} is given more than once")
        seen.add(name)
        if value == "":
            continue  # redis-py's parse_qs drops blank values
        if name == "decode_responses":
            if _decode_responses_off(value):
                continue
            raise fail(
                "query parameter 'decode_responses' must not be true: cached values are bytes"
            )
        if name in ("username", "password") and name in settings:
            continue  # redis-py: the user info (user:password@) wins over the query
        if name in _URL_PARAMETERS:
            field, parse = _URL_PARAMETERS[name]
            try:
                parsed = parse(value)
            except ValueError as exc:
                raise fail(f"query parameter {name!r}: {exc}") from None
            settings[field] = (parsed, f"?{name}=")
        elif name in _URL_PARAMETERS_REFUSED:
            raise fail(f"query parameter {name!r}: {_URL_PARAMETERS_REFUSED[name]}")
        elif name in CacheConfig.model_fields:
            raise fail(
                f"unknown query parameter {name!r}; set the field {name} "
                f"({_env_variable(name)}) instead"
            )
        else:
            raise fail(f"unknown query parameter {name!r}")
    return settings


def _decode_responses_off(value: str) -> bool:
    try:
        return not _to_bool(value)
    except ValueError:
        return False


def _url_port(netloc: str, fail: Callable[[str], ConfigurationError]) -> int | None:
    """The port of ``netloc`` (``None`` when absent), with a message that names it."""
    hostport = netloc.rpartition("@")[2]
    text = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    if ":" not in text:
        return None
    port = text.rpartition(":")[2]
    if port == "":
        return None
    # The text after "host:" is not echoed: in "redis://user:password" (no @host) it is a
    # password.
    if not port.isascii() or not port.isdigit():
        raise fail("the port is not a number (credentials go before @: user:password@host)")
    if not 1 <= int(port) <= 65535:
        raise fail("the port is out of range 1-65535")
    return int(port)


def _key_of(data: Mapping[str, Any], field: str) -> str | None:
    """The key under which ``data`` holds ``field``: its name or its variable."""
    if field in data:
        return field
    variable = _env_variable(field)
    for key in data:
        if key.upper() == variable:
            return key
    return None


def _check_agreement(
    field: str, key: str, given: Any, from_url: Any, origin: str, url_source: str
) -> None:
    """A field set both explicitly and by the URL must agree: which of two explicit values
    was meant cannot be guessed."""
    if field == "ssl":
        try:
            agrees = _to_bool(given) == from_url
        except ValueError:
            agrees = False
        if not agrees:
            raise ConfigurationError(
                "ssl",
                f"{_source(key)}={given!r} contradicts {origin} of {url_source} "
                "(TLS comes from the scheme: rediss:// is TLS, redis:// is not)",
            )
        return
    parse = next(p for f, p in _URL_PARAMETERS.values() if f == field)
    try:
        agrees = parse(given) == from_url
    except ValueError:
        agrees = False
    if not agrees:
        raise ConfigurationError(
            field,
            f"{_source(key)}={given!r} contradicts {origin}{from_url!r} in {url_source}; "
            "set it in one place",
        )


def _source(key: str) -> str:
    """How the user named a value: the field, or the variable it was read from."""
    return key if key in CacheConfig.model_fields else key.upper()


def _redact_url(url: str) -> str:
    """The URL with every password (``user:pass@`` and ``?password=``) replaced by ``***``."""
    parts = urlsplit(url)
    has_password = parts.password is not None
    if not has_password and "password" not in dict(parse_qsl(parts.query)):
        return url  # nothing to hide; urlunsplit would also mangle unix:///path
    netloc = parts.netloc
    if has_password:
        netloc = f"{parts.netloc.rpartition('@')[0].partition(':')[0]}:***@"
        netloc += parts.netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# -- errors ----------------------------------------------------------------------------------------


def _field_of(loc: str) -> str:
    """The field an error location names: a field name, or the variable it was read from."""
    if loc in CacheConfig.model_fields:
        return loc
    for name in CacheConfig.model_fields:
        if _env_variable(name) == loc.upper():
            return name
    return loc


def _configuration_error(exc: ValidationError, given: Mapping[str, Any]) -> ConfigurationError:
    """The first error of ``exc``, naming the field and where its value came from: a variable
    (``from_env``), or the URL for a field that ``given`` (the keywords) does not name."""
    errors = exc.errors(include_input=False, include_url=False)
    first = errors[0]
    cause = (first.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigurationError):  # raised whole by a model validator
        field = cause.field
        message = str(cause)[len(field) + 2 :]
    else:
        loc = ".".join(str(part) for part in first["loc"]) or "config"
        field = _field_of(loc)
        message = str(first["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if field != loc:
            message += f" (from {loc.upper()})"
        elif field in CacheConfig.model_fields and field not in given:
            # Neither a keyword nor a variable: _apply_url set it from the URL.
            message += " (from REDIS_URL)" if _READ_ENVIRONMENT.get() else " (from url)"
    if len(errors) > 1:
        others = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors[1:])
        message += f" (also invalid: {others})"
    return ConfigurationError(field, message)


def _called_by_pydantic() -> bool:
    """Whether ``CacheConfig.__init__`` was called by pydantic validating an outer model
    (``cls(**data)`` from pydantic-core has no Python frame, so the caller seen is pydantic's
    ``validate_python``/``__init__``), not by user code, ``from_env`` or ``model_copy``."""
    caller = sys._getframe(2)  # 0: this, 1: __init__, 2: its caller
    module = str(caller.f_globals.get("__name__", ""))
    return module.split(".")[0] in ("pydantic", "pydantic_settings")


def _nested_validation_error(exc: ConfigurationError, values: Mapping[str, Any]) -> ValidationError:
    """``exc`` as a ValidationError whose input is safe to show."""
    field = exc.field
    value = values.get(field)
    # Not the url: a malformed one may hide a password where redaction cannot find it
    # ("redis://user:password" without @host). Nor an unknown name (a misspelt password?).
    if field in CacheConfig.model_fields and field not in ("password", "url"):
        shown: Any = value
    else:
        shown = "**********"
    return ValidationError.from_exception_data(
        "CacheConfig",
        [
            InitErrorDetails(
                type=PydanticCustomError("configuration_error", "{message}", {"message": str(exc)}),
                loc=(field,),
                input=shown,
            )
        ],
        hide_input=True,
    )
