import base64
import hashlib
import hmac
import json

import pytest

from click_api.tokens import MAX_TOKEN_LENGTH, Impression, TokenError, mint, new_impression_id, parse_keys, verify
from tests.conftest import TEST_KEYS

KEYS = parse_keys(TEST_KEYS)
IMPRESSION_ID = "0123456789abcdef0123456789abcdef"
ISSUED_AT = 1_714_564_800


def signed(payload, key_id: str = "k1", secret: bytes = KEYS["k1"], version: str = "v1") -> str:
    """Sign an arbitrary payload the way a token is signed, independently of click_api.tokens."""
    encoded = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    body = f"{version}.{key_id}.{encoded}"
    signature = hmac.new(secret, body.encode(), hashlib.sha256).digest()
    return f"{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def reason_of(token, keys=KEYS) -> str:
    with pytest.raises(TokenError) as caught:
        verify(token, keys)
    return caught.value.reason


def test_round_trip_carries_every_field_including_the_user():
    impression = Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k1", user_id="user-7")

    assert verify(mint(impression, KEYS), KEYS) == impression


def test_round_trip_without_a_user_gives_none():
    impression = Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k1")

    verified = verify(mint(impression, KEYS), KEYS)

    assert verified.user_id is None
    assert verified.ad_id == "ad-1"


def test_token_has_version_key_id_payload_and_signature():
    token = mint(Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k1"), KEYS)

    version, key_id, payload, signature = token.split(".")

    assert (version, key_id) == ("v1", "k1")
    assert json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))) == {
        "i": IMPRESSION_ID, "a": "ad-1", "t": ISSUED_AT}
    expected = hmac.new(KEYS["k1"], f"{version}.{key_id}.{payload}".encode(), hashlib.sha256).digest()
    assert signature == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()


def test_independently_signed_payload_verifies():
    token = signed({"i": IMPRESSION_ID, "a": "ad-2", "t": ISSUED_AT, "u": "u-1"})

    assert verify(token, KEYS) == Impression(IMPRESSION_ID, "ad-2", ISSUED_AT, "k1", "u-1")


def test_token_signed_with_the_previous_key_still_verifies_during_rotation():
    old = mint(Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k0"), KEYS)

    assert verify(old, KEYS).key_id == "k0"


def test_token_of_a_retired_key_is_unknown_key():
    old = mint(Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k0"), KEYS)

    assert reason_of(old, keys={"k1": KEYS["k1"]}) == "unknown_key"


def test_key_id_the_server_never_had_is_unknown_key():
    assert reason_of(signed({"i": IMPRESSION_ID, "a": "ad-1", "t": ISSUED_AT}, key_id="k9")) == "unknown_key"


def test_altered_signature_is_bad_signature():
    token = mint(Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k1"), KEYS)
    flipped = "A" if token[-1] != "A" else "B"

    assert reason_of(token[:-1] + flipped) == "bad_signature"


def test_token_signed_with_a_guessed_secret_is_bad_signature():
    forged = signed({"i": IMPRESSION_ID, "a": "ad-1", "t": ISSUED_AT}, secret=b"guessed")

    assert reason_of(forged) == "bad_signature"


def test_payload_swapped_under_a_genuine_signature_is_bad_signature():
    genuine = mint(Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k1"), KEYS)
    other = mint(Impression(IMPRESSION_ID, "ad-2", ISSUED_AT, "k1"), KEYS)
    version, key_id, _, signature = genuine.split(".")

    assert reason_of(f"{version}.{key_id}.{other.split('.')[2]}.{signature}") == "bad_signature"


def test_signature_of_one_key_presented_under_another_key_id_is_bad_signature():
    token = signed({"i": IMPRESSION_ID, "a": "ad-1", "t": ISSUED_AT}, key_id="k0", secret=KEYS["k1"])

    assert reason_of(token) == "bad_signature"


@pytest.mark.parametrize("token", ["", None])
def test_absent_token_is_missing(token):
    assert reason_of(token) == "missing"


def test_truncated_token_is_malformed():
    token = mint(Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k1"), KEYS)

    assert reason_of(token.rsplit(".", 1)[0]) == "malformed"


@pytest.mark.parametrize("token", ["garbage", "v1.k1", "v1.k1.a.b.c", "....", "v1 k1 payload sig"])
def test_garbled_token_is_malformed(token):
    assert reason_of(token) == "malformed"


def test_other_version_is_malformed_even_with_a_valid_signature():
    token = signed({"i": IMPRESSION_ID, "a": "ad-1", "t": ISSUED_AT}, version="v2")

    assert reason_of(token) == "malformed"


def test_token_longer_than_the_limit_is_malformed():
    token = signed({"i": IMPRESSION_ID, "a": "ad-1", "t": ISSUED_AT, "u": "u" * MAX_TOKEN_LENGTH})

    assert len(token) > MAX_TOKEN_LENGTH
    assert reason_of(token) == "malformed"


@pytest.mark.parametrize(
    "payload",
    [
        {"i": IMPRESSION_ID, "a": "ad-1", "t": str(ISSUED_AT)},
        {"i": IMPRESSION_ID, "a": "ad-1", "t": float(ISSUED_AT)},
        {"i": IMPRESSION_ID, "a": "ad-1", "t": None},
        {"i": IMPRESSION_ID[:-1], "a": "ad-1", "t": ISSUED_AT},
        {"i": IMPRESSION_ID + "0", "a": "ad-1", "t": ISSUED_AT},
        {"i": 12345, "a": "ad-1", "t": ISSUED_AT},
        {"i": IMPRESSION_ID, "a": "", "t": ISSUED_AT},
        {"i": IMPRESSION_ID, "a": ["ad-1"], "t": ISSUED_AT},
        {"i": IMPRESSION_ID, "a": "ad-1", "t": ISSUED_AT, "u": 7},
        {"a": "ad-1", "t": ISSUED_AT},
        {"i": IMPRESSION_ID, "t": ISSUED_AT},
        {"i": IMPRESSION_ID, "a": "ad-1"},
        [IMPRESSION_ID, "ad-1", ISSUED_AT],
        "just a string",
    ],
    ids=[
        "issued_at-string", "issued_at-float", "issued_at-null", "impression-short", "impression-long",
        "impression-number", "ad-empty", "ad-list", "user-number", "no-impression", "no-ad", "no-issued_at",
        "list", "string",
    ],
)
def test_genuinely_signed_payload_of_the_wrong_shape_is_malformed(payload):
    assert reason_of(signed(payload)) == "malformed"


def test_genuinely_signed_payload_that_is_not_json_is_malformed():
    body = "v1.k1." + base64.urlsafe_b64encode(b"\xff not json").rstrip(b"=").decode()
    signature = hmac.new(KEYS["k1"], body.encode(), hashlib.sha256).digest()
    token = f"{body}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"

    assert reason_of(token) == "malformed"


def test_non_ascii_signature_is_rejected_as_a_token_error():
    token = mint(Impression(IMPRESSION_ID, "ad-1", ISSUED_AT, "k1"), KEYS)

    assert reason_of(token[:-1] + "\u00e9") == "malformed"


def test_parse_keys_reads_a_ring_and_keeps_colons_in_secrets():
    assert parse_keys(" k1:secret , k0:old:with:colons ,") == {"k1": b"secret", "k0": b"old:with:colons"}


@pytest.mark.parametrize("spec", ["", " , ", "k1", "k1:", ":secret", "k1:ok,broken"])
def test_parse_keys_rejects_incomplete_specs(spec):
    with pytest.raises(ValueError, match="keyid:secret|at least one"):
        parse_keys(spec)


def test_parse_keys_rejects_a_dot_in_the_key_id():
    with pytest.raises(ValueError, match="must not contain '.'"):
        parse_keys("k.1:secret")


def test_new_impression_ids_are_128_bit_hex_and_distinct():
    ids = {new_impression_id() for _ in range(100)}

    assert len(ids) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
