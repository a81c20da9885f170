"""Turn a user's mood log into numbers and a short, warm text for ``/mood``."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from bot.moodlog.periods import Period, local_date
from bot.presentation import MOOD_EMOJI
from bot.records import MoodRecord
from bot.types import MOOD_LABELS, MoodLabel

logger = logging.getLogger(__name__)

Trend = Literal["improving", "steady", "declining"]

# The change in mean valence (on the -1..+1 scale) below which two periods count as "steady".
TREND_THRESHOLD = 0.1

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def mood_value(label: str, score: float) -> float:
    """The valence of one mood read, in [-1, 1].

    ``score`` is the classifier's probability of ``label`` (0..1): a positive read counts
    ``+score``, a negative one ``-score`` and a neutral one ``0``, so a confident "negative 0.9"
    weighs more than a hesitant "negative 0.4". Scores outside 0..1 are clamped.
    Raises ValueError for a label other than positive/neutral/negative.
    """
    try:
        mood = MoodLabel(label)
    except ValueError:
        raise ValueError(f"unknown mood label {label!r}") from None
    strength = min(1.0, max(0.0, float(score)))
    if mood is MoodLabel.POSITIVE:
        return strength
    if mood is MoodLabel.NEGATIVE:
        return -strength
    return 0.0


@dataclass(frozen=True, slots=True)
class DayMood:
    """One local calendar day: its mean valence and how many moods were logged."""

    day: date
    average: float
    count: int


@dataclass(frozen=True, slots=True)
class MoodSummary:
    """The figures behind ``/mood``; ``text()`` words them for the user.

    ``average`` is the mean valence of every mood in the period (see ``mood_value``);
    ``previous_average`` the same for the equally long period before (None when it has no data or
    the period is "all"); ``trend`` compares the two (None without previous data).
    ``best_day``/``worst_day`` are the local days with the highest/lowest mean valence, set only
    when at least two days have data (ties go to the earliest day).
    """

    period: Period
    timezone: str
    first_day: date | None
    last_day: date
    counts: Mapping[str, int] = field(hash=False)
    total: int
    average: float | None
    previous_average: float | None
    previous_total: int
    trend: Trend | None
    best_day: DayMood | None
    worst_day: DayMood | None
    days_with_data: int
    daily: tuple[DayMood, ...] = ()

    @property
    def is_empty(self) -> bool:
        return self.total == 0

    def text(self) -> str:
        """A few friendly lines such as "Your mood over the last 7 days (Europe/Berlin): 12 messages — …"."""
        if self.is_empty:
            if self.period.is_all:
                return "No moods logged yet — just chat with me and I'll keep track."
            return (
                f"No moods logged in {self.period.description} yet — just chat with me and I'll keep track."
            )
        counts = ", ".join(
            f"{MOOD_EMOJI[label]} {self.counts.get(label.value, 0)} {label.value}" for label in MOOD_LABELS
        )
        if self.period.days is None and self.first_day is not None:
            heading = f"Your mood since {format_day(self.first_day, self.last_day, weekday=False)}"
        elif self.period.days == 1:
            heading = "Your mood today"
        else:
            heading = f"Your mood over {self.period.description}"
        lines = [f"{heading} ({self.timezone}): {_plural(self.total, 'message')} — {counts}."]
        average = f"Average mood {format_valence(self.average or 0.0)} (−1 to +1)"
        if self.trend is not None and self.previous_average is not None:
            before = f"{format_valence(self.previous_average)} {self.period.previous_description}"
            phrase = {
                "improving": f"improving from {before}",
                "declining": f"down from {before}",
                "steady": f"steady compared with {before}",
            }[self.trend]
            average = f"{average}, {phrase}"
        elif not self.period.is_all:
            average = f"{average}; nothing logged {self.period.previous_description} to compare with"
        lines.append(average + ".")
        if self.best_day is not None and self.worst_day is not None:
            if self.best_day.average > self.worst_day.average:
                best, worst = self._describe_day(self.best_day), self._describe_day(self.worst_day)
                lines.append(f"Best day: {best}; hardest day: {worst}.")
            else:
                lines.append(f"Every day with a mood averaged {format_valence(self.best_day.average)}.")
        closing = self._closing()
        if closing:
            lines.append(closing)
        return "\n".join(lines)

    def _describe_day(self, day: DayMood) -> str:
        return f"{format_day(day.day, self.last_day)} ({format_valence(day.average)})"

    def _closing(self) -> str:
        if self.trend == "improving":
            return "Lovely to see things looking up. 🌱"
        if self.trend == "declining" or (self.average is not None and self.average <= -0.3):
            return "It's been a tougher stretch — I'm here whenever you want to talk. 💛"
        return ""


def summarize(moods: Sequence[MoodRecord], *, period: Period, now: datetime, tz: ZoneInfo) -> MoodSummary:
    """Summarise ``moods`` over ``period`` ending today (in ``tz``); moods outside it are ignored,
    except those in the previous period, which feed ``previous_average`` and ``trend``."""
    first, last = period.dates(now, tz)
    previous = period.previous_dates(now, tz)
    current: list[tuple[date, MoodRecord, float]] = []
    previous_values: list[float] = []
    for day, mood, value in _valued(moods, tz):
        if (first is None or first <= day) and day <= last:
            current.append((day, mood, value))
        elif previous is not None and previous[0] <= day <= previous[1]:
            previous_values.append(value)

    counts = {label.value: 0 for label in MOOD_LABELS}
    for _, mood, _ in current:
        counts[mood.label] += 1
    daily = daily_moods((day, value) for day, _, value in current)
    average = _mean(value for _, _, value in current)
    previous_average = _mean(previous_values)
    trend: Trend | None = None
    if average is not None and previous_average is not None:
        change = average - previous_average
        trend = (
            "improving"
            if change >= TREND_THRESHOLD
            else "declining"
            if change <= -TREND_THRESHOLD
            else "steady"
        )
    best = worst = None
    if len(daily) >= 2:
        best = min(daily, key=lambda d: (-d.average, d.day))
        worst = min(daily, key=lambda d: (d.average, d.day))
    if first is None and daily:
        first = daily[0].day
    return MoodSummary(
        period=period,
        timezone=tz.key,
        first_day=first,
        last_day=last,
        counts=counts,
        total=len(current),
        average=average,
        previous_average=previous_average,
        previous_total=len(previous_values),
        trend=trend,
        best_day=best,
        worst_day=worst,
        days_with_data=len(daily),
        daily=tuple(daily),
    )


def daily_moods(values: Iterable[tuple[date, float]]) -> list[DayMood]:
    """Group (local day, valence) pairs into one ``DayMood`` per day, oldest first."""
    sums: dict[date, tuple[float, int]] = {}
    for day, value in values:
        total, count = sums.get(day, (0.0, 0))
        sums[day] = (total + value, count + 1)
    return [
        DayMood(day=day, average=total / count, count=count) for day, (total, count) in sorted(sums.items())
    ]


def valued_moods(moods: Iterable[MoodRecord], tz: ZoneInfo) -> list[tuple[date, MoodRecord, float]]:
    """Each mood with its local day and valence; moods with an unknown label are skipped (and logged)."""
    return list(_valued(moods, tz))


def _valued(moods: Iterable[MoodRecord], tz: ZoneInfo) -> Iterable[tuple[date, MoodRecord, float]]:
    skipped = 0
    for mood in moods:
        try:
            value = mood_value(mood.label, mood.score)
        except ValueError:
            skipped += 1
            continue
        yield local_date(mood.created_at, tz), mood, value
    if skipped:
        logger.warning("Skipped %d mood entries with an unknown label", skipped)


def _mean(values: Iterable[float]) -> float | None:
    total = 0.0
    count = 0
    for value in values:
        total += value
        count += 1
    return total / count if count else None


def format_valence(value: float) -> str:
    """``+0.18``, ``−0.05`` (a real minus sign) or ``0.00``."""
    rounded = round(value, 2)
    if rounded == 0:
        return "0.00"
    return f"+{rounded:.2f}" if rounded > 0 else f"−{-rounded:.2f}"


def format_day(day: date, today: date, *, weekday: bool = True) -> str:
    """``Tue 3 Mar`` (locale-independent), with the year when it differs from ``today``'s."""
    text = f"{day.day} {_MONTHS[day.month - 1]}"
    if weekday:
        text = f"{_WEEKDAYS[day.weekday()]} {text}"
    if day.year != today.year:
        text = f"{text} {day.year}"
    return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
