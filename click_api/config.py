"""Settings of the click service, read from the environment by create_app only."""

from __future__ import annotations

from collections.abc import Mapping

from click_api.tokens import parse_keys
from click_api.windows import Windows


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None


def _required(environ: Mapping[str, str], name: str, hint: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set: {hint}")
    return value


def from_env(environ: Mapping[str, str]) -> dict:
    """Return the Flask config mapping for the click service."""
    keys = _required(environ, "CLICK_SIGNING_KEYS", "set it to 'keyid:secret[,keyid:secret]'")
    ring = parse_keys(keys)
    key_id = environ.get("CLICK_SIGNING_KEY_ID", "").strip() or next(iter(ring))
    if key_id not in ring:
        raise ValueError(f"CLICK_SIGNING_KEY_ID {key_id!r} is not one of the ids in CLICK_SIGNING_KEYS ({', '.join(ring)})")
    return {
        "CASSANDRA_HOSTS": environ.get("CASSANDRA_HOST", "127.0.0.1").split(","),
        "CASSANDRA_PORT": _int(environ, "CASSANDRA_PORT", 9042),
        "CASSANDRA_KEYSPACE": environ.get("CASSANDRA_KEYSPACE", "clickagg"),
        "CASSANDRA_LOCAL_DC": environ.get("CASSANDRA_LOCAL_DC", "datacenter1"),
        "RAW_CLICK_SHARDS": _int(environ, "RAW_CLICK_SHARDS", 16),
        "REDIS_URL": environ.get("REDIS_URL")
        or f"redis://{environ.get('REDIS_HOST', '127.0.0.1')}:{_int(environ, 'REDIS_PORT', 6379)}/0",
        "SIGNING_KEYS": ring,
        "SIGNING_KEY_ID": key_id,
        "FINGERPRINT_SALT": environ.get("CLICK_FINGERPRINT_SALT", keys).encode(),
        "CLICK_ID_PARAM": environ.get("CLICK_ID_PARAM", "clickagg_cid"),
        "AD_CACHE_SIZE": _int(environ, "AD_CACHE_SIZE", 100_000),
        "AD_CACHE_TTL_S": _int(environ, "AD_CACHE_TTL_S", 30),
        "PUBLIC_BASE_URL": environ.get("CLICK_PUBLIC_BASE_URL", "http://127.0.0.1:18000"),
        "WINDOWS": Windows.from_env(environ),
        "SPOOL_DIR": environ.get("CLICK_SPOOL_DIR", ".local/spool"),
        "SPOOL_REPLAY_INTERVAL_S": _int(environ, "CLICK_SPOOL_REPLAY_INTERVAL_S", 5),
        "MINT_TOKEN": environ.get("CLICK_MINT_TOKEN", ""),
        "LOG_LEVEL": environ.get("LOG_LEVEL", "INFO"),
    }
