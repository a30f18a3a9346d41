"""LLM response caching: deterministic calls answered once, per tenant, with tokens saved."""

from __future__ import annotations

import asyncio
from typing import Any

from _backend import open_cache

from gathering_cache import cached_completion

llm_calls = 0


async def chat_completion(model: str, messages: list[dict[str, str]], **params: Any) -> dict:  # type: ignore[type-arg]
    """Stands in for an LLM API call."""
    global llm_calls
    llm_calls += 1
    await asyncio.sleep(0.2)
    return {
        "choices": [{"message": {"role": "assistant", "content": "Paris."}}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16},
    }


async def main() -> None:
    cache, where = await open_cache("gathering-example-llm:")
    print(f"running on {where}")
    async with cache:
        await cache.clear_all()
        complete = cached_completion(cache, namespace="agent:1")(chat_completion)
        question = [{"role": "user", "content": "What is the capital of France?"}]

        for _ in range(3):
            answer = await complete("gpt-4o-mini", question, temperature=0)
        print(f"deterministic (temperature=0), 3 calls -> LLM calls: {llm_calls}")

        await complete("gpt-4o-mini", question, temperature=0.9)
        await complete("gpt-4o-mini", question, temperature=0.9)
        print(f"creative (temperature=0.9), 2 calls -> LLM calls: {llm_calls} (not cached)")

        await complete("gpt-4o-mini", question, temperature=0, cache_namespace="agent:2")
        print(f"another tenant (agent:2) -> LLM calls: {llm_calls} (tenants do not share)")

        stats = await cache.get_stats()
        print(f"answer: {answer['choices'][0]['message']['content']}")
        print(
            f"llm hits: {stats['namespaces']['llm']['hits']}, "
            f"tokens saved: {stats['llm_tokens_saved']}, skipped: {stats['llm_skipped']}"
        )
        await cache.clear_all()


if __name__ == "__main__":
    asyncio.run(main())
