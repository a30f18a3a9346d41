"""an asyncio-native Redis cache for AI-agent systems, with graceful
degradation.

Import everything from here::

    from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager
"""

from __future__ import annotations

from gathering_cache.backends import REDIS_AVAILABLE
from gathering_cache.config import CacheConfig
from gathering_cache.embedder import CachedEmbedder, EmbedderStats, EmbeddingService
from gathering_cache.errors import (
    ArgumentTypeError,
    BackendError,
    CacheError,
    ConfigurationError,
    InvalidArgumentError,
    PatternError,
    ProviderError,
    SerializationError,
)
from gathering_cache.events import Event, EventBus, EventType, RedisEventBridge
from gathering_cache.invalidation import CacheInvalidator
from gathering_cache.llm import cached_completion, is_deterministic
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.memory import InMemoryVectorStore, MemoryManager, VectorStore
from gathering_cache.providers import EmbeddingProvider, OpenAIEmbeddings
from gathering_cache.sync import CacheManager
from gathering_cache.warming import WarmProgress, WarmReport, warm_rag_cache

__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "AsyncCacheManager",
    "BackendError",
    "CacheConfig",
    "CacheError",
    "CacheInvalidator",
    "CacheManager",
    "CachedEmbedder",
    "ConfigurationError",
    "EmbedderStats",
    "EmbeddingProvider",
    "EmbeddingService",
    "Event",
    "EventBus",
    "EventType",
    "InMemoryVectorStore",
    "InvalidArgumentError",
    "MemoryManager",
    "OpenAIEmbeddings",
    "PatternError",
    "ProviderError",
    "REDIS_AVAILABLE",
    "RedisEventBridge",
    "SerializationError",
    "VectorStore",
    "WarmProgress",
    "WarmReport",
    "__version__",
    "cached_completion",
    "is_deterministic",
    "warm_rag_cache",
]
