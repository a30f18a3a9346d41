"""CacheConfig: the seed's defaults, keyword construction, environment, validation, secrets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gathering_cache import AsyncCacheManager, CacheConfig, CacheManager, ConfigurationError

SEED_DEFAULTS = {
    "host": "localhost",
    "port": 6379,
    "db": 0,
    "password": None,
    "embedding_ttl": 86400,
    "rag_results_ttl": 300,
    "circle_context_ttl": 600,
    "llm_response_ttl": 3600,
    "enabled": True,
    "key_prefix": "gathering:",
}

ENV_NAMES = [
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_DB",
    "REDIS_PASSWORD",
    "REDIS_URL",
    "REDIS_USERNAME",
    "CACHE_ENABLED",
    "CACHE_EMBEDDING_TTL",
    "CACHE_KEY_PREFIX",
    "CACHE_BACKEND",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ./.env


def test_seed_defaults() -> None:
    config = CacheConfig()
    for field, expected in SEED_DEFAULTS.items():
        assert getattr(config, field) == expected, field


def test_defaults_fit_a_cache() -> None:
    config = CacheConfig()
    assert config.backend == "redis"
    assert config.url is None
    assert config.socket_timeout < 1
    assert config.connect_timeout < 1
    assert config.operation_timeout < 1
    assert config.max_connections > 0


def test_keyword_construction_like_the_seed_dataclass() -> None:
    config = CacheConfig(
        host="redis.example.com",
        port=6380,
        db=1,
        password="secret",
        embedding_ttl=7200,
        rag_results_ttl=600,
        circle_context_ttl=1200,
        key_prefix="myapp:",
    )
    assert (config.host, config.port, config.db) == ("redis.example.com", 6380, 1)
    assert config.password is not None
    assert config.password.get_secret_value() == "secret"
    assert (config.embedding_ttl, config.rag_results_ttl, config.circle_context_ttl) == (
        7200,
        600,
        1200,
    )
    assert config.key_prefix == "myapp:"
    assert CacheConfig(enabled=False).enabled is False


def test_plain_construction_ignores_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REDIS_HOST", "from-env")
    monkeypatch.setenv("CACHE_ENABLED", "false")
    (tmp_path / ".env").write_text("REDIS_PORT=7000\n")
    config = CacheConfig()
    assert config.host == "localhost"
    assert config.enabled is True
    assert config.port == 6379


def test_from_env_reads_seed_and_extra_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_HOST", "cache.internal")
    monkeypatch.setenv("REDIS_PORT", "6390")
    monkeypatch.setenv("REDIS_DB", "3")
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2")
    monkeypatch.setenv("REDIS_USERNAME", "app")
    monkeypatch.setenv("CACHE_ENABLED", "false")
    monkeypatch.setenv("CACHE_EMBEDDING_TTL", "120")
    monkeypatch.setenv("CACHE_KEY_PREFIX", "agents:")
    monkeypatch.setenv("CACHE_BACKEND", "memory")
    monkeypatch.setenv("HOST", "must-not-be-read")
    config = CacheConfig.from_env()
    assert (config.host, config.port, config.db) == ("cache.internal", 6390, 3)
    assert config.password is not None
    assert config.password.get_secret_value() == "hunter2"
    assert config.username == "app"
    assert config.enabled is False
    assert config.embedding_ttl == 120
    assert config.key_prefix == "agents:"
    assert config.backend == "memory"


def test_from_env_reads_dotenv_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    dotenv = tmp_path / "settings.env"
    dotenv.write_text(
        "REDIS_HOST=from-file\nREDIS_PORT=6391\nREDIS_PASSWORD=\n"
        "CACHE_ENABLED=true\nOPENAI_API_KEY=unrelated\n"
    )
    monkeypatch.setenv("REDIS_PORT", "6392")
    config = CacheConfig.from_env(dotenv)
    assert config.host == "from-file"
    assert config.port == 6392
    assert config.password is None  # empty REDIS_PASSWORD means no password


def test_from_env_reads_dot_env_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://cache.example:6500/2\n")
    config = CacheConfig.from_env()
    assert config.url == "redis://cache.example:6500/2"
    assert config.endpoint() == {
        "host": "cache.example",
        "port": 6500,
        "db": 2,
        "url": "redis://cache.example:6500/2",
    }


def test_from_env_missing_dotenv_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="dotenv_path"):
        CacheConfig.from_env(tmp_path / "nope.env")


def test_managers_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHE_ENABLED", "false")
    assert AsyncCacheManager.from_env().config.enabled is False
    with CacheManager.from_env() as cache:
        assert cache.config.enabled is False
        assert cache.is_enabled() is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"port": 0}, "port"),
        ({"port": 65536}, "port"),
        ({"port": "abc"}, "port"),
        ({"db": -1}, "db"),
        ({"embedding_ttl": 0}, "embedding_ttl"),
        ({"rag_results_ttl": -1}, "rag_results_ttl"),
        ({"circle_context_ttl": 0}, "circle_context_ttl"),
        ({"llm_response_ttl": 0}, "llm_response_ttl"),
        ({"key_prefix": ""}, "key_prefix"),
        ({"key_prefix": "app*"}, "key_prefix"),
        ({"key_prefix": "a[b]:"}, "key_prefix"),
        ({"key_prefix": "a?"}, "key_prefix"),
        ({"key_prefix": "a\\b"}, "key_prefix"),
        ({"backend": "memcached"}, "backend"),
        ({"url": "http://localhost:6379"}, "url"),
        ({"url": "redis://"}, "url"),
        ({"url": "redis://localhost:notaport"}, "url"),
        ({"url": "unix://"}, "url"),
        ({"socket_timeout": 0}, "socket_timeout"),
        ({"operation_timeout": -1}, "operation_timeout"),
        ({"max_connections": 0}, "max_connections"),
        ({"retry_attempts": -1}, "retry_attempts"),
        ({"ssl_cert_reqs": "maybe"}, "ssl_cert_reqs"),
    ],
)
def test_invalid_values_raise_configuration_error_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        CacheConfig(**kwargs)
    assert isinstance(info.value, ValueError)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_invalid_environment_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PORT", "99999")
    with pytest.raises(ConfigurationError, match="REDIS_PORT") as info:
        CacheConfig.from_env()
    assert info.value.field == "port"


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://:pw@127.0.0.1:6380/1",
        "rediss://user:pw@cache.example.com:6380",
        "unix:///var/run/redis.sock?db=2",
        "redis://[::1]:6379",
    ],
)
def test_url_forms_are_accepted(url: str) -> None:
    assert CacheConfig(url=url).url == url


def test_config_is_immutable() -> None:
    config = CacheConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1  # type: ignore[misc]
    assert config.model_copy(update={"port": 6380}).port == 6380


SECRET = "s3cr3t-Pa55"


def test_password_never_in_repr_or_str() -> None:
    for config in (
        CacheConfig(password=SECRET),
        CacheConfig(url=f"redis://user:{SECRET}@localhost:6379/0"),
        CacheConfig(url=f"rediss://:{SECRET}@[::1]:6380"),
    ):
        assert SECRET not in repr(config)
        assert SECRET not in str(config)
        assert SECRET not in str(config.endpoint())
        assert config.redacted_url is None or "***" in config.redacted_url


def test_password_never_in_validation_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        CacheConfig(password=SECRET, port=0)
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None
    with pytest.raises(ConfigurationError) as info:
        CacheConfig(url=f"http://user:{SECRET}@host")
    assert SECRET not in str(info.value)


async def test_password_never_in_stats_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    from tests.servers import free_port

    config = CacheConfig(url=f"redis://user:{SECRET}@127.0.0.1:{free_port()}/0", password=SECRET)
    async with AsyncCacheManager(config) as cache:
        assert await cache.get("x") is None
        stats = await cache.get_stats()
    assert stats["enabled"] is False
    assert SECRET not in str(stats)
    assert SECRET not in caplog.text
    assert "degraded" in caplog.text
