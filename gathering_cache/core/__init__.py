"""The core: what every domain cache runs on, with no knowledge of any domain.

``engine`` (the cache core: one store behind the degradation policy, encoded and counted
operations), ``policy`` (deadline, circuit breaker, load shedding), ``keys`` (key layout and
argument checks), ``encoding`` (the versioned orjson envelope and packed vectors), ``stats``,
``lru``, ``singleflight`` and ``globmatch`` (Redis's glob rules). Pure modules (``keys``,
``encoding``, ``stats``, ``lru``, ``globmatch``) do no I/O.
"""
