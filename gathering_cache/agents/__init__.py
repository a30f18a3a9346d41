"""Helpers for agent code built on the caches: ``CachedEmbedder`` and its providers, agent
memory (``MemoryManager`` over a ``VectorStore``), ``cached_completion`` and cache warming."""
