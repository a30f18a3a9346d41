"""Integrations: the cache in front of what agent code already uses.

``decorators`` (the generic ``@cached``) needs nothing beyond the library. Each framework
adapter lives in a module of its own that imports its framework at the top: import it only
when that framework is installed (``gathering_cache.integrations.openai`` with the
``[openai]`` extra, ``.langchain`` with ``[langchain]``, ``.llama_index`` with
``[llama-index]``, ``.litellm`` with ``[litellm]``). Importing ``gathering_cache`` imports
none of them.
"""
