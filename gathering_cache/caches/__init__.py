"""The domain caches, one module each, built the same way on the core: embeddings (24 h),
RAG results per agent (5 min), circle context (10 min), LLM responses (1 h)."""
