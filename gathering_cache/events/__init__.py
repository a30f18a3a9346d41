"""Event-driven invalidation: the in-process ``EventBus``, the ``RedisEventBridge`` that
carries events between processes, and the ``CacheInvalidator`` that maps events to
invalidations."""
