import pytest

from click_api.config import from_env
from click_api.windows import Windows

KEYS = {"CLICK_SIGNING_KEYS": "k1:secret,k0:old"}


@pytest.mark.parametrize("environ", [{}, {"CLICK_SIGNING_KEYS": ""}])
def test_missing_signing_keys_names_the_variable(environ):
    with pytest.raises(RuntimeError, match="CLICK_SIGNING_KEYS is not set"):
        from_env(environ)


def test_defaults():
    cfg = from_env(KEYS)

    assert cfg["CASSANDRA_HOSTS"] == ["127.0.0.1"]
    assert cfg["CASSANDRA_PORT"] == 9042
    assert cfg["CASSANDRA_KEYSPACE"] == "clickagg"
    assert cfg["REDIS_URL"] == "redis://127.0.0.1:6379/0"
    assert cfg["SIGNING_KEYS"] == {"k1": b"secret", "k0": b"old"}
    assert cfg["SIGNING_KEY_ID"] == "k1"
    assert cfg["CLICK_ID_PARAM"] == "clickagg_cid"
    assert (cfg["AD_CACHE_SIZE"], cfg["AD_CACHE_TTL_S"]) == (100_000, 30)
    assert cfg["WINDOWS"] == Windows()
    assert cfg["SPOOL_REPLAY_INTERVAL_S"] == 5
    assert cfg["MINT_TOKEN"] == ""


def test_redis_url_is_built_from_host_and_port():
    cfg = from_env({**KEYS, "REDIS_HOST": "redis.internal", "REDIS_PORT": "6380"})

    assert cfg["REDIS_URL"] == "redis://redis.internal:6380/0"


def test_redis_url_wins_over_host_and_port():
    cfg = from_env({**KEYS, "REDIS_URL": "redis://cache:7000/2", "REDIS_HOST": "ignored"})

    assert cfg["REDIS_URL"] == "redis://cache:7000/2"


def test_overrides_are_read_and_typed():
    cfg = from_env(
        {
            **KEYS,
            "CASSANDRA_HOST": "c1,c2",
            "CASSANDRA_PORT": "19042",
            "CLICK_SIGNING_KEY_ID": "k0",
            "CLICK_TOKEN_LIFETIME_S": "600",
            "AD_CACHE_SIZE": "10",
        }
    )

    assert cfg["CASSANDRA_HOSTS"] == ["c1", "c2"]
    assert cfg["CASSANDRA_PORT"] == 19042
    assert cfg["SIGNING_KEY_ID"] == "k0"
    assert cfg["WINDOWS"].token_lifetime == 600
    assert cfg["AD_CACHE_SIZE"] == 10


def test_non_integer_setting_names_the_variable():
    with pytest.raises(ValueError, match="CASSANDRA_PORT must be a whole number"):
        from_env({**KEYS, "CASSANDRA_PORT": "ninety"})


def test_malformed_signing_keys_are_rejected():
    with pytest.raises(ValueError, match="keyid:secret"):
        from_env({"CLICK_SIGNING_KEYS": "no-secret-here"})


def test_signing_key_id_must_be_in_the_ring():
    with pytest.raises((ValueError, RuntimeError), match="CLICK_SIGNING_KEY_ID"):
        from_env({**KEYS, "CLICK_SIGNING_KEY_ID": "k9"})
