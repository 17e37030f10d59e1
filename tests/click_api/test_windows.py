from datetime import timedelta

import pytest

from click_api.windows import DAY, HOUR, Windows


def test_defaults_are_in_order():
    windows = Windows()

    windows.check()

    assert windows.token_lifetime <= windows.redis_dedup_ttl <= windows.duplicate_horizon
    assert windows.duplicate_horizon <= windows.raw_click_ttl <= windows.dump_retention


def test_empty_environment_gives_the_defaults():
    assert Windows.from_env({}) == Windows()


def test_environment_overrides_only_the_variables_set():
    windows = Windows.from_env({"CLICK_TOKEN_LIFETIME_S": "600", "CLICK_DEDUP_TTL_S": "", "ROLLUP_LATENESS_S": "0"})

    assert windows.token_lifetime == 600
    assert windows.redis_dedup_ttl == 2 * HOUR
    assert windows.rollup_lateness == 0
    assert windows.raw_click_ttl == 30 * DAY


@pytest.mark.parametrize(
    ("env", "shorter", "longer"),
    [
        ({"CLICK_TOKEN_LIFETIME_S": str(3 * HOUR)}, "CLICK_TOKEN_LIFETIME_S", "CLICK_DEDUP_TTL_S"),
        ({"CLICK_DEDUP_TTL_S": str(2 * DAY)}, "CLICK_DEDUP_TTL_S", "RECONCILE_DUPLICATE_HORIZON_S"),
        ({"RECONCILE_DUPLICATE_HORIZON_S": str(31 * DAY)}, "RECONCILE_DUPLICATE_HORIZON_S", "RAW_CLICK_TTL_S"),
        ({"RAW_CLICK_TTL_S": str(401 * DAY)}, "RAW_CLICK_TTL_S", "DUMP_RETENTION_S"),
    ],
)
def test_windows_out_of_order_name_both_variables(env, shorter, longer):
    with pytest.raises(ValueError) as caught:
        Windows.from_env(env)

    assert shorter in str(caught.value)
    assert longer in str(caught.value)


def test_equal_windows_are_allowed():
    windows = Windows.from_env({"CLICK_TOKEN_LIFETIME_S": "7200", "CLICK_DEDUP_TTL_S": "7200"})

    assert windows.token_lifetime == windows.redis_dedup_ttl == 7200


@pytest.mark.parametrize("raw", ["1h", "1.5", "ten"])
def test_non_integer_names_the_variable(raw):
    with pytest.raises(ValueError, match="CLICK_DEDUP_TTL_S must be a whole number"):
        Windows.from_env({"CLICK_DEDUP_TTL_S": raw})


@pytest.mark.parametrize(("var", "raw"), [("CLICK_TOKEN_LIFETIME_S", "0"), ("ROLLUP_LATENESS_S", "-1")])
def test_zero_or_negative_windows_name_the_variable(var, raw):
    with pytest.raises(ValueError, match=f"{var} must be positive"):
        Windows.from_env({var: raw})


def test_lookback_must_be_shorter_than_the_raw_click_ttl():
    with pytest.raises(ValueError, match="ROLLUP_LOOKBACK_S"):
        Windows(rollup_lookback=30 * DAY).check()


def test_as_timedelta():
    assert Windows().as_timedelta("token_lifetime") == timedelta(hours=1)


def test_a_click_is_late_once_every_minute_rollup_has_passed_its_minute():
    assert Windows().late_after == 60 + 600 + 20
    assert Windows(rollup_lookback=120, rollup_lateness=5).late_after == 185
