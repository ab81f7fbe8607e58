"""Event times: every unit and format the sources accept, and every implausible value refused with a reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from workers.sources.timestamps import EpochSeconds, LATEST_EVENT_TIME, parse_timestamp, timestamp_error


@pytest.mark.parametrize("value", [1_700_000_000, 1_700_000_000_000, 1_700_000_000_000_000,
                                   1_700_000_000_000_000_000, "1700000000", b"1700000000.0",
                                   "2023-11-14T22:13:20Z", datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc),
                                   EpochSeconds(1_700_000_000.0)])
def test_units_and_formats_give_the_same_unix_seconds(value):
    assert parse_timestamp(value, where="ts") == pytest.approx(1_700_000_000.0)


@pytest.mark.parametrize("value, message", [
    (float("nan"), "must be finite"), (float("inf"), "must be finite"), ("1e400", "must be finite"),
    ("-inf", "must be finite"), (10**400, "out of range"), ("9999-12-31T00:00:00", "outside 1970-01-01..2100"),
    (-5, "outside"), (EpochSeconds(253402300799.0), "outside"), ("yesterday", "neither a number nor an ISO"),
    (None, "missing"), (True, "boolean"),
])
def test_implausible_timestamps_are_a_bad_timestamp_reason_naming_the_field(value, message):
    t, error = timestamp_error(value, where="ts")
    assert t is None and error[0] == "bad_timestamp"
    assert error[1].startswith("ts: ") and message in error[1]


def test_the_upper_bound_is_exclusive():
    assert timestamp_error(EpochSeconds(LATEST_EVENT_TIME - 1), where="t")[1] is None
    assert timestamp_error(EpochSeconds(LATEST_EVENT_TIME), where="t")[1][0] == "bad_timestamp"
