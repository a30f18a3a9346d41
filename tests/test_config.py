"""CacheConfig: the seed's defaults, keyword construction, environment, validation, secrets."""

from __future__ import annotations

import logging
import os
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


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith(("REDIS_", "CACHE_", "GATHERING_CACHE_")):
            monkeypatch.delenv(name)
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
    monkeypatch.setenv("GATHERING_CACHE_EMBEDDING_TTL", "120")
    monkeypatch.setenv("GATHERING_CACHE_KEY_PREFIX", "agents:")
    monkeypatch.setenv("GATHERING_CACHE_BACKEND", "memory")
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


# -- Environment names (issue 9, item 10) ------------------------------------------------------


def test_the_old_cache_prefix_is_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # CACHE_URL belongs to the 12-factor convention (django-cache-url): it is not ours.
    monkeypatch.setenv("CACHE_URL", "rediscache://cache.example:6379/1?key_prefix=site")
    monkeypatch.setenv("CACHE_KEY_PREFIX", "old:")
    monkeypatch.setenv("CACHE_BACKEND", "not-a-backend")
    monkeypatch.setenv("CACHE_HOST", "old-host")
    monkeypatch.setenv("GATHERING_CACHE_HOST", "not-read-either")
    config = CacheConfig.from_env()
    assert config.url is None
    assert config.key_prefix == "gathering:"
    assert config.backend == "redis"
    assert config.host == "localhost"


def test_unrelated_variables_are_never_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATHERING_CACHE_NOT_A_FIELD", "whatever")
    monkeypatch.setenv("REDIS_SENTINELS", "a,b,c")
    monkeypatch.setenv("CACHE_TIMEOUT", "-1")
    assert CacheConfig.from_env() == CacheConfig()


def test_every_field_has_one_documented_variable() -> None:
    seed = {
        "host": "REDIS_HOST",
        "port": "REDIS_PORT",
        "db": "REDIS_DB",
        "password": "REDIS_PASSWORD",
        "enabled": "CACHE_ENABLED",
        "url": "REDIS_URL",
        "username": "REDIS_USERNAME",
        "cluster_nodes": "REDIS_CLUSTER_NODES",
        "sentinel_nodes": "REDIS_SENTINEL_NODES",
        "sentinel_service": "REDIS_SENTINEL_SERVICE",
    }
    for name, info in CacheConfig.model_fields.items():
        expected = seed.get(name, f"GATHERING_CACHE_{name.upper()}")
        assert info.validation_alias == expected, name


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("GATHERING_CACHE_BACKEND", "memcached", "backend"),
        ("GATHERING_CACHE_SOCKET_TIMEOUT", "0", "socket_timeout"),
        ("GATHERING_CACHE_KEY_PREFIX", "app*", "key_prefix"),
        ("GATHERING_CACHE_MAX_CONNECTIONS", "many", "max_connections"),
        ("REDIS_PORT", "99999", "port"),
        ("REDIS_DB", "-1", "db"),
        ("CACHE_ENABLED", "perhaps", "enabled"),
        ("REDIS_URL", "http://cache.example", "url"),
        ("REDIS_URL", "redis://cache.example?nope=1", "url"),
    ],
)
def test_environment_errors_name_the_variable_that_was_set(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as info:
        CacheConfig.from_env()
    assert info.value.field == field
    assert f"(from {variable})" in str(info.value)


def test_dotenv_errors_name_the_variable_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("gathering_cache_bulk_timeout=-3\n")
    with pytest.raises(ConfigurationError, match=r"\(from GATHERING_CACHE_BULK_TIMEOUT\)"):
        CacheConfig.from_env()


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("GATHERING_CACHE_BACKEND", "Memory", "backend", "memory"),
        ("GATHERING_CACHE_BACKEND", "REDIS", "backend", "redis"),
        ("GATHERING_CACHE_SSL_CERT_REQS", "None", "ssl_cert_reqs", "none"),
        ("GATHERING_CACHE_EMBEDDING_PRECISION", "Float32", "embedding_precision", "float32"),
    ],
)
def test_enum_like_values_are_case_insensitive(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(CacheConfig.from_env(), field) == expected
    kwargs: dict[str, Any] = {field: value}
    assert getattr(CacheConfig(**kwargs), field) == expected


# -- URLs as redis-py reads them (issue 9, item 9) -----------------------------------------------

CLOUD_URL = "rediss://default:secret@cache.example.com:6380/0?ssl_cert_reqs=none"


def test_the_cloud_providers_url_form_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", CLOUD_URL)
    for config in (
        CacheConfig.from_env(),
        CacheConfig(url=CLOUD_URL),
        CacheConfig.from_url(CLOUD_URL),
    ):
        assert (config.host, config.port, config.db) == ("cache.example.com", 6380, 0)
        assert config.username == "default"
        assert config.password is not None
        assert config.password.get_secret_value() == "secret"
        assert config.ssl is True
        assert config.ssl_cert_reqs == "none"
        assert "secret" not in repr(config)


@pytest.mark.parametrize(
    ("query", "field", "expected"),
    [
        ("db=3", "db", 3),
        ("username=app", "username", "app"),
        ("socket_timeout=2.5", "socket_timeout", 2.5),
        ("socket_connect_timeout=1.5", "connect_timeout", 1.5),
        ("health_check_interval=30", "health_check_interval", 30.0),
        ("max_connections=8", "max_connections", 8),
        ("client_name=agent-7", "client_name", "agent-7"),
        ("protocol=2", "protocol", 2),
        ("ssl_cert_reqs=optional", "ssl_cert_reqs", "optional"),
        ("ssl_cert_reqs=NONE", "ssl_cert_reqs", "none"),
        ("ssl_check_hostname=false", "ssl_check_hostname", False),
        ("ssl_check_hostname=No", "ssl_check_hostname", False),
        ("ssl_check_hostname=1", "ssl_check_hostname", True),
    ],
)
def test_query_parameters_set_their_fields(query: str, field: str, expected: object) -> None:
    config = CacheConfig.from_url(f"redis://cache.example:6379/0?{query}")
    assert getattr(config, field) == expected


def test_query_password_and_file_parameters(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked for content here")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    cert.write_text("x")
    key.write_text("x")
    config = CacheConfig.from_url(
        f"rediss://cache.example/1?password={SECRET}&ssl_ca_certs={ca}"
        f"&ssl_certfile={cert}&ssl_keyfile={key}"
    )
    assert config.password is not None
    assert config.password.get_secret_value() == SECRET
    assert (config.ssl_ca_certs, config.ssl_certfile, config.ssl_keyfile) == (
        str(ca),
        str(cert),
        str(key),
    )
    assert config.db == 1
    assert SECRET not in repr(config)
    assert config.redacted_url is not None
    assert SECRET not in config.redacted_url


def test_a_query_parameter_wins_over_the_tuned_default() -> None:
    config = CacheConfig(url="redis://h?socket_timeout=3&socket_connect_timeout=2")
    assert config.socket_timeout == 3.0
    assert config.connect_timeout == 2.0
    # An explicit value that agrees is fine; one that disagrees is a contradiction.
    assert CacheConfig(url="redis://h?socket_timeout=3", socket_timeout=3).socket_timeout == 3
    with pytest.raises(ConfigurationError) as info:
        CacheConfig(url="redis://h?socket_timeout=3", socket_timeout=1)
    assert info.value.field == "socket_timeout"
    assert "?socket_timeout=" in str(info.value)


def test_a_contradiction_with_the_environment_names_both_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://h?client_name=a")
    monkeypatch.setenv("GATHERING_CACHE_CLIENT_NAME", "b")
    with pytest.raises(ConfigurationError) as info:
        CacheConfig.from_env()
    assert info.value.field == "client_name"
    assert "GATHERING_CACHE_CLIENT_NAME" in str(info.value)
    assert "REDIS_URL" in str(info.value)


def test_the_url_location_wins_over_the_seed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # The seed's .env has REDIS_HOST/REDIS_PORT/REDIS_DB; a REDIS_URL added beside them wins.
    monkeypatch.setenv("REDIS_HOST", "localhost")
    monkeypatch.setenv("REDIS_PORT", "6379")
    monkeypatch.setenv("REDIS_DB", "0")
    monkeypatch.setenv("REDIS_PASSWORD", "from-env")
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6390/4")
    config = CacheConfig.from_env()
    assert (config.host, config.port, config.db) == ("cache.example", 6390, 4)
    assert config.password is not None
    assert config.password.get_secret_value() == "from-env"  # the URL has none
    assert config.endpoint()["port"] == 6390


@pytest.mark.parametrize(
    ("url", "db"),
    [
        ("redis://h", 9),  # as redis-py's from_url(url, db=9): the URL names no db
        ("redis://h/5", 5),
        ("redis://h/5?db=6", 6),  # redis-py: ?db= before the path
        ("unix:///run/redis.sock?db=2", 2),
        ("unix:///run/redis.sock", 9),
    ],
)
def test_the_url_db(url: str, db: int) -> None:
    assert CacheConfig(url=url, db=9).db == db
    if db == 9:  # the URL names no db: the field's default
        assert CacheConfig(url=url).db == 0


def test_a_port_or_db_the_url_leaves_out_comes_from_the_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The reviewer's reproduction: the cache would have written to (and clear_all deleted
    # from) another database than the one configured.
    assert CacheConfig(url="redis://h", db=3, port=6380).db == 3
    assert CacheConfig(url="redis://h", port=6380).port == 6380
    assert CacheConfig(url="redis://h:7000/1", port=6380, db=3).port == 7000
    monkeypatch.setenv("REDIS_URL", "redis://h")
    monkeypatch.setenv("REDIS_DB", "3")
    assert CacheConfig.from_env().db == 3


def test_ssl_follows_the_scheme() -> None:
    assert CacheConfig(url="rediss://h").ssl is True
    assert CacheConfig(url="redis://h").ssl is False
    assert CacheConfig(url="rediss://h", ssl=True).ssl is True
    with pytest.raises(ConfigurationError) as info:
        CacheConfig(url="redis://h", ssl=True)  # was silently plaintext
    assert info.value.field == "ssl"
    assert "rediss://" in str(info.value)


def test_unix_socket_url() -> None:
    config = CacheConfig(url="unix:///run/redis%20x.sock?db=1&client_name=w")
    assert config.socket_path == "/run/redis x.sock"
    assert config.endpoint() == {
        "host": "/run/redis x.sock",
        "port": None,
        "db": 1,
        "url": "unix:///run/redis%20x.sock?db=1&client_name=w",
    }
    assert CacheConfig(url="redis://h").socket_path is None


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("nope=1", "unknown query parameter 'nope'"),
        ("DB=1", "unknown query parameter 'DB'"),
        ("key_prefix=x:", "GATHERING_CACHE_KEY_PREFIX"),
        ("operation_timeout=1", "GATHERING_CACHE_OPERATION_TIMEOUT"),
        ("connect_timeout=1", "socket_connect_timeout"),
        ("ssl=true", "rediss://"),
        ("retry_on_timeout=yes", "retry_attempts"),
        ("retry_on_error=TimeoutError", "GATHERING_CACHE_RETRY_ATTEMPTS"),
        ("timeout=3", "operation_timeout"),
        ("socket_keepalive=true", "client="),
        ("ssl_password=x", "client="),
        ("decode_responses=true", "values are bytes"),
        ("decode_responses=yes", "values are bytes"),
        ("protocol=3", "RESP2"),
        ("socket_timeout=0", "must be > 0"),
        ("socket_timeout=soon", "must be a number"),
        ("db=-1", "must be >= 0"),
        ("max_connections=0", "must be >= 1"),
        ("ssl_cert_reqs=maybe", "none, optional, required"),
        ("ssl_check_hostname=perhaps", "must be a boolean"),
        ("client_name=two%20words", "without spaces"),
        ("db=1&db=2", "more than once"),
    ],
)
def test_refused_query_parameters_say_what_to_use(query: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        CacheConfig(url=f"redis://user:{SECRET}@h/0?{query}")
    assert info.value.field == "url"
    assert expected in str(info.value)
    name = query.partition("=")[0]
    assert repr(name) in str(info.value) or "query parameter" not in str(info.value)
    assert SECRET not in str(info.value)


def test_harmless_query_forms_are_accepted() -> None:
    assert (
        CacheConfig(url="redis://h?decode_responses=false").url
        == "redis://h?decode_responses=false"
    )
    assert CacheConfig(url="redis://h?socket_timeout=").socket_timeout == 0.25  # blank: ignored


def test_protocol_3_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigurationError, match="RESP3 push frames") as info:
        CacheConfig(protocol=3)
    assert info.value.field == "protocol"


def test_client_name_is_checked() -> None:
    assert CacheConfig(client_name="worker-1").client_name == "worker-1"
    assert CacheConfig(client_name="").client_name is None
    with pytest.raises(ConfigurationError, match="client_name"):
        CacheConfig(client_name="two words")


def test_from_url_with_overrides() -> None:
    config = CacheConfig.from_url("redis://cache.example:6390/2", key_prefix="app:", db=7)
    assert (config.host, config.port, config.db, config.key_prefix) == (
        "cache.example",
        6390,
        2,
        "app:",
    )
    with pytest.raises(ConfigurationError, match="unknown field"):
        CacheConfig.from_url("redis://h", socket_timout=1)


def test_model_copy_reads_a_new_url_afresh() -> None:
    config = CacheConfig(url="rediss://a:6380/3?socket_timeout=4&client_name=x")
    moved = config.model_copy(update={"url": "redis://b/1"})
    assert (moved.host, moved.port, moved.db, moved.ssl) == ("b", 6379, 1, False)
    assert moved.socket_timeout == 0.25
    assert moved.client_name is None
    assert config.model_copy(update={"key_prefix": "x:"}).socket_timeout == 4
    with pytest.raises(ConfigurationError, match="socket_timeout"):
        config.model_copy(update={"socket_timeout": 1})


# -- Messages that point the right way (issue 9, item 11) ----------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:99999/0", "the port is out of range 1-65535"),
        ("redis://h:0", "the port is out of range"),
        ("redis://user:pw@[::1]:70000", "the port is out of range"),
        ("redis://h:six/0", "the port is not a number"),
        ("redis://default:Pa55word", "the port is not a number"),
        ("redis://h:6379/zero", "is the db number"),
        ("redis://h:6379/0 x", "whitespace"),
        ("redis:/h", "must start with"),
        ("redis://[::1:6379", "IPv6"),
        ("http://h", "must start with"),
    ],
)
def test_url_errors_name_the_problem(url: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        CacheConfig(url=url)
    assert info.value.field == "url"
    assert expected in str(info.value)
    assert "malformed" not in str(info.value)
    assert "Pa55word" not in str(info.value)


def test_surrounding_whitespace_in_a_url_is_stripped(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REDIS_URL='redis://cache.example:6379/2 '\n")
    config = CacheConfig.from_env()
    assert config.url == "redis://cache.example:6379/2"
    assert config.db == 2
    assert CacheConfig(url=" redis://h/1\n").db == 1
    assert CacheConfig(url="  ").url is None


@pytest.mark.parametrize("field", ["ssl_ca_certs", "ssl_certfile", "ssl_keyfile"])
def test_missing_tls_files_are_refused_at_construction(field: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    named: dict[str, Any] = {field: missing}
    with pytest.raises(ConfigurationError, match="no such file") as info:
        CacheConfig(host="h", ssl=True, **named)
    assert info.value.field == field
    with pytest.raises(ConfigurationError, match="no such file") as info:
        CacheConfig(url=f"rediss://h?{field}={missing}")
    assert info.value.field == field
    with pytest.raises(ConfigurationError, match="not a file"):
        CacheConfig(host="h", ssl=True, **{**named, field: str(tmp_path)})
    # Without TLS the file is not used, so it is not looked for.
    assert getattr(CacheConfig(**named), field) == missing


def test_a_missing_tls_file_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://cache.example:6380")
    monkeypatch.setenv("GATHERING_CACHE_SSL_CA_CERTS", str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigurationError, match="GATHERING_CACHE_SSL_CA_CERTS") as info:
        CacheConfig.from_env()
    assert info.value.field == "ssl_ca_certs"
    monkeypatch.setenv("GATHERING_CACHE_SSL_CA_CERTS", "")  # empty: not set
    assert CacheConfig.from_env().ssl_ca_certs is None


def test_a_config_nested_in_application_settings_hides_secrets() -> None:
    from pydantic import BaseModel, ValidationError
    from pydantic_settings import BaseSettings

    class AppSettings(BaseSettings):
        cache: CacheConfig = CacheConfig()

    class Plain(BaseModel):
        cache: CacheConfig

    bad_inputs: list[dict[str, Any]] = [
        {"url": f"rediss://default:{SECRET}@h:6380?nope=1"},
        {"url": f"redis://default:{SECRET}@h:99999"},
        {"url": f"http://u:{SECRET}@h"},
        {"url": f"redis://default:{SECRET}"},
        {"password": SECRET, "port": 0},
        {"pasword": SECRET},
    ]
    for data in bad_inputs:
        for model in (AppSettings, Plain):
            with pytest.raises(ValidationError) as info:
                model.model_validate({"cache": data})
            assert SECRET not in str(info.value), (model, data)
            assert SECRET not in repr(info.value.errors())
            assert info.value.errors()[0]["loc"][0] == "cache"
    with pytest.raises(ValidationError, match="the port is out of range"):
        AppSettings.model_validate({"cache": {"url": "redis://h:99999"}})
    assert AppSettings.model_validate({"cache": {"url": CLOUD_URL}}).cache.port == 6380


# -- Hostile input (issue 10, item 12) -----------------------------------------------------------


def test_a_lone_surrogate_in_the_prefix_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="surrogate") as info:
        CacheConfig(key_prefix="app\ud800:")
    assert info.value.field == "key_prefix"


@pytest.mark.parametrize("prefix", ["gathering", "app1", "é", "app: ", "app:\t"])
def test_a_prefix_must_end_with_a_separator(prefix: str) -> None:
    with pytest.raises(ConfigurationError, match="separator") as info:
        CacheConfig(key_prefix=prefix)
    assert info.value.field == "key_prefix"


@pytest.mark.parametrize("prefix", ["gathering:", "app/", "app-", "app_", "app.", "a|", "日本:"])
def test_prefixes_with_a_separator_are_accepted(prefix: str) -> None:
    assert CacheConfig(key_prefix=prefix).key_prefix == prefix


def test_a_nested_config_read_from_the_application_environment_hides_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pydantic import ValidationError
    from pydantic_settings import BaseSettings, SettingsConfigDict

    class AppSettings(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="APP_", env_nested_delimiter="__")
        cache: CacheConfig = CacheConfig()

    monkeypatch.setenv("APP_CACHE__URL", f"redis://default:{SECRET}@h:6379?socket_timeout=-1")
    with pytest.raises(ValidationError) as info:
        AppSettings()
    assert "socket_timeout" in str(info.value)
    assert SECRET not in str(info.value)
    monkeypatch.setenv("APP_CACHE__URL", f"redis://default:{SECRET}@h:6379?socket_timeout=2")
    assert AppSettings().cache.socket_timeout == 2


def test_the_user_info_wins_over_query_credentials_as_in_redis_py() -> None:
    config = CacheConfig(url=f"redis://app:{SECRET}@h/0?username=other&password=other")
    assert config.username == "app"
    assert config.password is not None
    assert config.password.get_secret_value() == SECRET
    config = CacheConfig(url=f"redis://h/0?username=app&password={SECRET}")
    assert config.username == "app"
    assert config.password is not None
    assert config.password.get_secret_value() == SECRET


def test_an_error_in_a_value_the_url_set_names_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ConfigurationError, match=r"no such file.*\(from url\)") as info:
        CacheConfig(url=f"rediss://h?ssl_ca_certs={missing}")
    assert info.value.field == "ssl_ca_certs"
    monkeypatch.setenv("REDIS_URL", f"rediss://h?ssl_ca_certs={missing}")
    with pytest.raises(ConfigurationError, match=r"\(from REDIS_URL\)") as info:
        CacheConfig.from_env()
    assert info.value.field == "ssl_ca_certs"
    with pytest.raises(ConfigurationError) as info:  # a keyword is named as it was given
        CacheConfig(host="h", ssl=True, ssl_ca_certs=str(missing))
    assert "(from" not in str(info.value)


@pytest.mark.parametrize(
    "field",
    ["embedding_ttl", "rag_results_ttl", "circle_context_ttl", "llm_response_ttl", "default_ttl"],
)
def test_default_ttls_are_ones_redis_takes(field: str) -> None:
    from gathering_cache.core.keys import MAX_TTL

    longest: dict[str, Any] = {field: MAX_TTL}
    assert getattr(CacheConfig(**longest), field) == MAX_TTL
    with pytest.raises(ConfigurationError, match=field):
        CacheConfig(**{**longest, field: MAX_TTL + 1})
