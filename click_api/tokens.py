"""Signed impression tokens: minted where the ad is shown, verified by /click.

A token is ``v1.<key id>.<payload>.<signature>``: the payload is base64url JSON with the
impression ID (128 random bits), the ad ID, the issue time and, when known, the user ID; the
signature is HMAC-SHA256 over everything before it. Several keys may verify at once, so a key
can be rotated without breaking clicks already in the wild.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping

VERSION = "v1"
MAX_TOKEN_LENGTH = 1024
MAX_ID_LENGTH = 128  # ad and user IDs; keeps every minted token well under MAX_TOKEN_LENGTH


class TokenError(ValueError):
    """The token cannot be trusted; ``reason`` is a short machine-readable label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Impression:
    impression_id: str
    ad_id: str
    issued_at: int  # Unix seconds
    key_id: str
    user_id: str | None = None


def parse_keys(spec: str) -> dict[str, bytes]:
    """Parse ``id:secret,id:secret`` into a key ring."""
    ring: dict[str, bytes] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key_id, sep, secret = item.partition(":")
        key_id = key_id.strip()
        if not sep or not key_id or not secret:
            raise ValueError("signing keys must look like 'keyid:secret[,keyid:secret...]'")
        if "." in key_id:
            raise ValueError(f"signing key id {key_id!r} must not contain '.'")
        ring[key_id] = secret.encode()
    if not ring:
        raise ValueError("at least one signing key is required")
    return ring


def new_impression_id() -> str:
    return secrets.token_hex(16)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, message: str) -> str:
    return _b64(hmac.new(secret, message.encode(), hashlib.sha256).digest())


def mint(impression: Impression, keys: Mapping[str, bytes]) -> str:
    """Return the signed token for an impression, signed with its key ID."""
    payload = {"i": impression.impression_id, "a": impression.ad_id, "t": impression.issued_at}
    if impression.user_id:
        payload["u"] = impression.user_id
    body = f"{VERSION}.{impression.key_id}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
    token = f"{body}.{_sign(keys[impression.key_id], body)}"
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(f"the token would be longer than {MAX_TOKEN_LENGTH} characters: shorten the ad or user ID")
    return token


def verify(token: str | None, keys: Mapping[str, bytes]) -> Impression:
    """Return the impression a genuine token carries; raise TokenError otherwise.

    Expiry is not checked here: an expired but genuine click is still recorded (as expired).
    """
    if not token:
        raise TokenError("missing", "the click link has no token")
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenError("malformed", "the click token is too long")
    if not token.isascii():
        raise TokenError("malformed", "the click token contains characters a token never has")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != VERSION:
        raise TokenError("malformed", "the click token is malformed or truncated")
    _, key_id, payload_b64, signature = parts
    secret = keys.get(key_id)
    if secret is None:
        raise TokenError("unknown_key", "the click token was signed with a key this server does not know")
    if not hmac.compare_digest(_sign(secret, f"{VERSION}.{key_id}.{payload_b64}"), signature):
        raise TokenError("bad_signature", "the click token's signature is not valid")
    try:
        payload = json.loads(_unb64(payload_b64))
        impression = Impression(
            impression_id=payload["i"],
            ad_id=payload["a"],
            issued_at=payload["t"],
            key_id=key_id,
            user_id=payload.get("u"),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TokenError("malformed", "the click token's content is unreadable") from None
    if not (
        isinstance(impression.impression_id, str)
        and len(impression.impression_id) == 32
        and all(ch in "0123456789abcdef" for ch in impression.impression_id)
        and isinstance(impression.ad_id, str)
        and impression.ad_id
        and type(impression.issued_at) is int
        and (impression.user_id is None or isinstance(impression.user_id, str))
    ):
        raise TokenError("malformed", "the click token's content is incomplete")
    return impression
