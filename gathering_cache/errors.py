"""Exceptions raised by gathering_cache.

Every exception the library raises on purpose derives from :class:`CacheError`, and each one
also inherits the builtin a caller would naturally catch::

    CacheError
    ├── ConfigurationError        (ValueError)  invalid CacheConfig field or URL
    ├── InvalidArgumentError      (ValueError)  empty key, ttl <= 0, NaN in a vector, ...
    │   └── PatternError                        delete_pattern outside the key prefix
    ├── ArgumentTypeError         (TypeError)   key / id / value of the wrong type
    ├── SerializationError        (TypeError)   value that cannot be encoded
    ├── BackendError              (ConnectionError)  infrastructure fault inside a store
    └── ProviderError             (RuntimeError)  an embedding / LLM provider failed or
                                                  returned something unusable

Programming errors (the first four branches) are raised to the caller before anything is
written. :class:`BackendError` is the opposite: it describes an infrastructure fault (Redis
down, hung, restarting, pool exhausted). It never escapes a cache operation; the manager's
degradation policy turns it into the degraded answer (``None`` / ``False`` / ``0``). It is
public so that code working with a store directly can catch it.
"""

from __future__ import annotations

__all__ = [
    "ArgumentTypeError",
    "BackendError",
    "CacheError",
    "ConfigurationError",
    "InvalidArgumentError",
    "PatternError",
    "ProviderError",
    "SerializationError",
]


class CacheError(Exception):
    """Base class of every exception raised by gathering_cache."""


class ConfigurationError(CacheError, ValueError):
    """A configuration value is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class InvalidArgumentError(CacheError, ValueError):
    """An argument has the right type but an invalid value (empty key, ttl <= 0, NaN, ...)."""


class PatternError(InvalidArgumentError):
    """A deletion pattern is not confined to the configured ``key_prefix``."""


class ArgumentTypeError(CacheError, TypeError):
    """An argument has the wrong type (a key that is not a str, an id that is not an int)."""


class SerializationError(CacheError, TypeError):
    """A value cannot be encoded for the cache; the message names the offending type."""


class BackendError(CacheError, ConnectionError):
    """An infrastructure fault in a store. Never raised out of a cache operation."""


class ProviderError(CacheError, RuntimeError):
    """The embedding or LLM provider failed (after retries) or returned an unusable answer
    (wrong number of vectors, inconsistent dimensions, NaN). Nothing is cached.

    Unlike cache faults, this one is raised: without the provider there is no value to return.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)
