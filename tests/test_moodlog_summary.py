"""Mood summaries checked against figures worked out by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest

from bot.moodlog import MoodSummary, mood_value, parse_period, summarize
from bot.moodlog.summary import DayMood, format_valence
from bot.records import MoodRecord
from bot.types import MoodLabel

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)  # Tue 10 Mar 2026, 13:00 in Berlin


def mood(label: str, score: float, *when: int, mood_id: int = 0) -> MoodRecord:
    """A mood at ``datetime(*when)`` UTC."""
    return MoodRecord(
        id=mood_id,
        user_id=1,
        chat_id=1,
        message_id=None,
        label=label,
        score=score,
        created_at=datetime(*when, tzinfo=UTC),
    )


def test_mood_value_is_signed_score() -> None:
    assert mood_value("positive", 0.7) == pytest.approx(0.7)
    assert mood_value(MoodLabel.NEGATIVE, 0.6) == pytest.approx(-0.6)
    assert mood_value("neutral", 0.9) == 0.0
    assert mood_value("positive", 1.7) == 1.0  # clamped
    assert mood_value("negative", -0.2) == 0.0
    with pytest.raises(ValueError):
        mood_value("ecstatic", 0.9)


# Berlin is UTC+1 in early March. The 7-day period ending Tue 10 Mar is 4–10 Mar;
# the week before is 25 Feb–3 Mar.
WEEK = [
    mood("negative", 0.5, 2026, 3, 3, 22, 59),  # 3 Mar 23:59 local -> previous week: -0.5
    mood("neutral", 0.7, 2026, 2, 26, 12, 0),  # previous week: 0
    mood("positive", 1.0, 2026, 2, 24, 12, 0),  # 24 Feb: before both periods, ignored
    mood("neutral", 0.5, 2026, 3, 3, 23, 0),  # 4 Mar 00:00 local -> current: 0
    mood("positive", 0.8, 2026, 3, 4, 9, 0),  # 4 Mar: +0.8
    mood("negative", 0.4, 2026, 3, 4, 15, 0),  # 4 Mar: -0.4   => 4 Mar average 0.4/3 = 0.1333
    mood("neutral", 0.9, 2026, 3, 6, 10, 0),  # 6 Mar: 0
    mood("positive", 0.6, 2026, 3, 6, 11, 0),  # 6 Mar: +0.6   => 6 Mar average 0.3
    mood("negative", 0.9, 2026, 3, 9, 22, 30),  # 9 Mar 23:30 local: -0.9
    mood("positive", 1.0, 2026, 3, 9, 23, 30),  # 10 Mar 00:30 local (9 Mar in UTC): +1.0
    mood("positive", 0.9, 2026, 3, 10, 23, 30),  # 11 Mar local: in the future of NOW's local day, ignored
]


def test_week_summary_matches_hand_computed_figures() -> None:
    summary = summarize(WEEK, period=parse_period("7d"), now=NOW, tz=BERLIN)
    assert summary.counts == {"positive": 3, "neutral": 2, "negative": 2}
    assert summary.total == 7
    # (0 + 0.8 - 0.4 + 0 + 0.6 - 0.9 + 1.0) / 7 = 1.1 / 7
    assert summary.average == pytest.approx(1.1 / 7)
    assert summary.previous_average == pytest.approx(-0.25)  # (-0.5 + 0) / 2
    assert summary.previous_total == 2
    assert summary.trend == "improving"
    assert summary.days_with_data == 4
    assert [(d.day, d.count) for d in summary.daily] == [
        (date(2026, 3, 4), 3),
        (date(2026, 3, 6), 2),
        (date(2026, 3, 9), 1),
        (date(2026, 3, 10), 1),
    ]
    assert summary.daily[0].average == pytest.approx(0.4 / 3)
    assert summary.daily[1].average == pytest.approx(0.3)
    assert summary.best_day == DayMood(date(2026, 3, 10), 1.0, 1)
    assert summary.worst_day == DayMood(date(2026, 3, 9), pytest.approx(-0.9), 1)
    assert summary.first_day == date(2026, 3, 4)
    assert summary.last_day == date(2026, 3, 10)
    assert summary.timezone == "Europe/Berlin"
    assert not summary.is_empty


def test_week_summary_text() -> None:
    text = summarize(WEEK, period=parse_period("7d"), now=NOW, tz=BERLIN).text()
    lines = text.splitlines()
    assert lines[0] == (
        "Your mood over the last 7 days (Europe/Berlin): 7 messages — "
        "🙂 3 positive, 😐 2 neutral, 😟 2 negative."
    )
    assert lines[1] == "Average mood +0.16 (−1 to +1), improving from −0.25 the week before."
    assert lines[2] == "Best day: Tue 10 Mar (+1.00); hardest day: Mon 9 Mar (−0.90)."
    assert 3 <= len(lines) <= 5


def test_same_moods_group_differently_in_another_timezone() -> None:
    # In New York (UTC-5) the 3 Mar 23:00 UTC mood is 3 Mar 18:00 local: previous week, not this one.
    summary = summarize(WEEK, period=parse_period("7d"), now=NOW, tz=NEW_YORK)
    assert summary.total == 7  # loses 3 Mar 23:00 UTC, gains 10 Mar 23:30 UTC (= 10 Mar 19:30 local)
    assert summary.counts == {"positive": 4, "neutral": 1, "negative": 2}
    assert [d.day for d in summary.daily] == [
        date(2026, 3, 4),
        date(2026, 3, 6),
        date(2026, 3, 9),
        date(2026, 3, 10),
    ]
    # 9 Mar local: -0.9 and +1.0 (22:30 and 23:30 UTC are 18:30 and 19:30 EDT) => 0.05
    assert summary.daily[2].average == pytest.approx(0.05)


def test_grouping_across_new_york_spring_forward() -> None:
    # Sun 8 Mar 2026, 02:00 EST -> 03:00 EDT. UTC days and local days differ around midnight.
    moods = [
        mood("positive", 0.6, 2026, 3, 8, 4, 30),  # Sat 7 Mar 23:30 EST
        mood("negative", 0.8, 2026, 3, 8, 5, 30),  # Sun 8 Mar 00:30 EST
        mood("positive", 0.4, 2026, 3, 8, 7, 30),  # Sun 8 Mar 03:30 EDT (after the jump)
        mood("negative", 0.2, 2026, 3, 9, 3, 30),  # Sun 8 Mar 23:30 EDT (9 Mar in UTC)
        mood("neutral", 0.9, 2026, 3, 9, 4, 30),  # Mon 9 Mar 00:30 EDT (a fixed -5 offset would say 8 Mar)
    ]
    summary = summarize(moods, period=parse_period("7d"), now=NOW, tz=NEW_YORK)
    assert [(d.day, d.count) for d in summary.daily] == [
        (date(2026, 3, 7), 1),
        (date(2026, 3, 8), 3),
        (date(2026, 3, 9), 1),
    ]
    assert summary.daily[1].average == pytest.approx((-0.8 + 0.4 - 0.2) / 3)
    assert summary.best_day is not None and summary.best_day.day == date(2026, 3, 7)
    assert summary.worst_day is not None and summary.worst_day.day == date(2026, 3, 8)


def test_grouping_across_berlin_spring_forward() -> None:
    # Sun 29 Mar 2026, 02:00 CET -> 03:00 CEST.
    now = datetime(2026, 3, 31, 10, 0, tzinfo=UTC)
    moods = [
        mood("positive", 0.5, 2026, 3, 28, 23, 30),  # Sun 29 Mar 00:30 CET (28 Mar in UTC)
        mood("negative", 0.5, 2026, 3, 29, 21, 30),  # Sun 29 Mar 23:30 CEST
        mood("positive", 0.9, 2026, 3, 29, 22, 30),  # Mon 30 Mar 00:30 CEST (CET would still say 29 Mar)
    ]
    summary = summarize(moods, period=parse_period("7d"), now=now, tz=BERLIN)
    assert [(d.day, d.count, d.average) for d in summary.daily] == [
        (date(2026, 3, 29), 2, 0.0),
        (date(2026, 3, 30), 1, 0.9),
    ]


def test_trend_steady_and_declining() -> None:
    previous = [mood("positive", 0.3, 2026, 3, 1, 12, 0)]
    steady = summarize(
        [*previous, mood("positive", 0.25, 2026, 3, 8, 12, 0)], period=parse_period("7d"), now=NOW, tz=BERLIN
    )
    assert steady.trend == "steady"
    assert "steady compared with +0.30 the week before" in steady.text()
    declining = summarize(
        [*previous, mood("neutral", 0.8, 2026, 3, 8, 12, 0)], period=parse_period("7d"), now=NOW, tz=BERLIN
    )
    assert declining.trend == "declining"
    assert declining.average == 0.0
    assert "Average mood 0.00 (−1 to +1), down from +0.30 the week before." in declining.text()


def test_no_previous_data_means_no_trend() -> None:
    summary = summarize(
        [mood("negative", 0.7, 2026, 3, 9, 12, 0)], period=parse_period("7d"), now=NOW, tz=BERLIN
    )
    assert summary.trend is None
    assert summary.previous_average is None
    assert summary.best_day is None and summary.worst_day is None  # a single day has no best or worst
    assert "Average mood −0.70 (−1 to +1); nothing logged the week before to compare with." in summary.text()
    assert "1 message —" in summary.text()
    assert "Best day" not in summary.text()


def test_ties_go_to_the_earliest_day() -> None:
    moods = [
        mood("positive", 0.5, 2026, 3, 5, 12, 0),
        mood("positive", 0.5, 2026, 3, 6, 12, 0),
        mood("negative", 0.2, 2026, 3, 7, 12, 0),
        mood("negative", 0.2, 2026, 3, 8, 12, 0),
    ]
    summary = summarize(moods, period=parse_period("7d"), now=NOW, tz=BERLIN)
    assert summary.best_day is not None and summary.best_day.day == date(2026, 3, 5)
    assert summary.worst_day is not None and summary.worst_day.day == date(2026, 3, 7)
    assert "Best day: Thu 5 Mar (+0.50); hardest day: Sat 7 Mar (−0.20)." in summary.text()


def test_all_period_has_no_trend_and_says_since_when() -> None:
    moods = [
        mood("positive", 0.8, 2025, 12, 30, 12, 0),
        mood("negative", 0.4, 2026, 3, 9, 12, 0),
    ]
    summary = summarize(moods, period=parse_period("all"), now=NOW, tz=BERLIN)
    assert summary.total == 2
    assert summary.average == pytest.approx(0.2)
    assert summary.trend is None and summary.previous_average is None
    assert summary.first_day == date(2025, 12, 30)
    lines = summary.text().splitlines()
    assert lines[0].startswith("Your mood since 30 Dec 2025 (Europe/Berlin): 2 messages")
    assert lines[1] == "Average mood +0.20 (−1 to +1)."
    assert lines[2] == "Best day: Tue 30 Dec 2025 (+0.80); hardest day: Mon 9 Mar (−0.40)."


def test_empty_log_gets_a_friendly_sentence() -> None:
    old = [mood("positive", 0.9, 2025, 1, 1, 12, 0)]
    summary = summarize(old, period=parse_period("30d"), now=NOW, tz=BERLIN)
    assert isinstance(summary, MoodSummary)
    assert summary.is_empty
    assert summary.total == 0 and summary.average is None and summary.trend is None
    assert summary.counts == {"positive": 0, "neutral": 0, "negative": 0}
    assert (
        summary.text() == "No moods logged in the last 30 days yet — just chat with me and I'll keep track."
    )
    assert summarize([], period=parse_period("all"), now=NOW, tz=BERLIN).text() == (
        "No moods logged yet — just chat with me and I'll keep track."
    )


def test_unknown_labels_are_skipped_not_fatal() -> None:
    summary = summarize(
        [mood("ecstatic", 0.9, 2026, 3, 9, 12, 0), mood("positive", 0.4, 2026, 3, 9, 13, 0)],
        period=parse_period("7d"),
        now=NOW,
        tz=BERLIN,
    )
    assert summary.total == 1
    assert summary.average == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("value", "text"), [(0.184, "+0.18"), (-0.05, "−0.05"), (0.004, "0.00"), (-0.004, "0.00"), (1.0, "+1.00")]
)
def test_format_valence(value: float, text: str) -> None:
    assert format_valence(value) == text
