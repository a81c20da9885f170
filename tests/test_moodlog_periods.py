"""Period parsing, period windows across DST, and timezone names."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.moodlog import Period, parse_period, resolve_timezone
from bot.moodlog.periods import local_midnight

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@pytest.mark.parametrize(
    ("arg", "name", "days"),
    [
        (None, "7d", 7),
        ("", "7d", 7),
        ("   ", "7d", 7),
        ("7d", "7d", 7),
        ("30d", "30d", 30),
        (" 90D ", "90d", 90),
        ("all", "all", None),
        ("ALL", "all", None),
        ("week", "7d", 7),
        ("Month", "30d", 30),
        ("quarter", "90d", 90),
        ("14", "14d", 14),
        ("14 days", "14d", 14),
        ("1d", "1d", 1),
    ],
)
def test_parse_period_accepts_names_aliases_and_day_counts(
    arg: str | None, name: str, days: int | None
) -> None:
    period = parse_period(arg)
    assert period == Period(name=name, days=days)


@pytest.mark.parametrize("arg", ["foo", "0d", "-5d", "7w", "99999d", "7d 30d", "last week"])
def test_parse_period_rejects_other_input_with_the_choices(arg: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_period(arg)
    message = str(caught.value)
    assert "7d, 30d, 90d or all" in message
    assert arg.strip() in message
    assert message.count(".") >= 1 and "\n" not in message


def test_period_is_frozen() -> None:
    period = parse_period("30d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        period.days = 3  # type: ignore[misc]


def test_window_is_aligned_to_local_midnights() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # Tue 10 Mar, Berlin is UTC+1 (CET)
    period = parse_period("7d")
    start, end = period.window(now, BERLIN)
    assert start == datetime(2026, 3, 3, 23, 0, tzinfo=UTC)  # Wed 4 Mar 00:00 CET
    assert end == datetime(2026, 3, 10, 23, 0, tzinfo=UTC)  # Wed 11 Mar 00:00 CET
    assert period.fetch_since(now, BERLIN) == datetime(
        2026, 2, 24, 23, 0, tzinfo=UTC
    )  # 25 Feb, previous week
    assert period.dates(now, BERLIN) == (date(2026, 3, 4), date(2026, 3, 10))
    assert period.previous_dates(now, BERLIN) == (date(2026, 2, 25), date(2026, 3, 3))


def test_window_uses_the_local_day_not_the_utc_day() -> None:
    # 23:30 UTC on 9 Mar is already 10 Mar in Berlin, so "today" is the 10th.
    now = datetime(2026, 3, 9, 23, 30, tzinfo=UTC)
    start, end = parse_period("1d").window(now, BERLIN)
    assert (start, end) == (datetime(2026, 3, 9, 23, 0, tzinfo=UTC), datetime(2026, 3, 10, 23, 0, tzinfo=UTC))


def test_window_across_a_dst_change_has_different_offsets_at_each_end() -> None:
    # New York switches from EST (-5) to EDT (-4) on Sun 8 Mar 2026.
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    start, end = parse_period("7d").window(now, NEW_YORK)
    assert start == datetime(2026, 3, 4, 5, 0, tzinfo=UTC)  # 4 Mar 00:00 EST
    assert end == datetime(2026, 3, 11, 4, 0, tzinfo=UTC)  # 11 Mar 00:00 EDT
    assert end - start == timedelta(days=7, hours=-1)


def test_all_period_has_no_start_and_fetches_everything() -> None:
    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    period = parse_period("all")
    start, end = period.window(now, BERLIN)
    assert start is None
    assert end == datetime(2026, 3, 10, 23, 0, tzinfo=UTC)
    assert period.fetch_since(now, BERLIN) is None
    assert period.previous_dates(now, BERLIN) is None


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("America/New_York", date(2026, 3, 8)),
        ("America/New_York", date(2026, 11, 1)),
        ("Europe/Berlin", date(2026, 3, 29)),
        ("Europe/Berlin", date(2026, 10, 25)),
        ("America/Santiago", date(2026, 9, 6)),  # midnight itself is skipped: clocks jump 00:00 -> 01:00
        ("America/Santiago", date(2026, 4, 5)),
        ("Asia/Kolkata", date(2026, 1, 1)),
    ],
)
def test_local_midnight_is_the_first_instant_of_the_local_day(zone: str, day: date) -> None:
    tz = ZoneInfo(zone)
    midnight = local_midnight(day, tz)
    assert midnight.tzinfo is UTC
    assert midnight.astimezone(tz).date() == day
    assert (midnight - timedelta(seconds=1)).astimezone(tz).date() == day - timedelta(days=1)


def test_santiago_gap_midnight_starts_the_day_at_one_oclock() -> None:
    midnight = local_midnight(date(2026, 9, 6), ZoneInfo("America/Santiago"))
    assert midnight == datetime(2026, 9, 6, 4, 0, tzinfo=UTC)
    assert midnight.astimezone(ZoneInfo("America/Santiago")).hour == 1


def test_resolve_timezone_accepts_iana_names_and_forgives_case() -> None:
    assert resolve_timezone("Europe/Berlin").key == "Europe/Berlin"
    assert resolve_timezone("  asia/shanghai ").key == "Asia/Shanghai"
    assert resolve_timezone("UTC").key == "UTC"


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe", "", "../etc/passwd", "Berlin", "GMT+25"])
def test_resolve_timezone_rejects_unknown_names_helpfully(name: str) -> None:
    with pytest.raises(ValueError) as caught:
        resolve_timezone(name)
    assert str(caught.value) == (
        f"Unknown timezone '{name.strip()}'. Use an IANA name such as Europe/Berlin or Asia/Shanghai."
    )
