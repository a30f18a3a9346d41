"""an asyncio-native Redis cache for AI-agent systems, with graceful
degradation.

Import everything from here::

    from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager
"""

from __future__ import annotations

from gathering_cache.agents.agent_memory import InMemoryVectorStore, MemoryManager, VectorStore
from gathering_cache.agents.cached_embedder import CachedEmbedder, EmbedderStats, EmbeddingService
from gathering_cache.agents.completions import cached_completion
from gathering_cache.agents.providers import (
    EmbeddingProvider,
    OpenAIEmbeddings,
    OpenAISDKEmbeddings,
)
from gathering_cache.agents.warming import WarmProgress, WarmReport, warm_rag_cache
from gathering_cache.backends import REDIS_AVAILABLE
from gathering_cache.caches.llm import is_deterministic
from gathering_cache.config import CacheConfig
from gathering_cache.core.observe import Observer, Operation, Outcome
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
from gathering_cache.events.bridge import RedisEventBridge
from gathering_cache.events.bus import Event, EventBus, EventType
from gathering_cache.events.invalidation import CacheInvalidator
from gathering_cache.integrations.decorators import cached
from gathering_cache.integrations.sync_completion import sync_cached_completion
from gathering_cache.integrations.sync_embedder import SyncCachedEmbedder
from gathering_cache.manager import AsyncCacheManager
from gathering_cache.sync import CacheManager

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
    "Observer",
    "OpenAIEmbeddings",
    "OpenAISDKEmbeddings",
    "Operation",
    "Outcome",
    "PatternError",
    "ProviderError",
    "REDIS_AVAILABLE",
    "RedisEventBridge",
    "SerializationError",
    "SyncCachedEmbedder",
    "VectorStore",
    "WarmProgress",
    "WarmReport",
    "__version__",
    "cached",
    "cached_completion",
    "is_deterministic",
    "sync_cached_completion",
    "warm_rag_cache",
]
