"""Reporting periods ("7d", "30d", "90d", "all") and the user's timezone.

A *day* is a calendar day in the user's timezone: a mood belongs to ``created_at.astimezone(tz).date()``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DEFAULT_PERIOD = "7d"
PERIOD_CHOICES: tuple[str, ...] = ("7d", "30d", "90d", "all")
MAX_PERIOD_DAYS = 3660

_ALIASES: dict[str, str] = {
    "week": "7d",
    "month": "30d",
    "quarter": "90d",
    "everything": "all",
    "alltime": "all",
    "all-time": "all",
    "all time": "all",
}
_DAYS = re.compile(r"(\d{1,5})\s*(?:d|day|days)?")


@dataclass(frozen=True, slots=True)
class Period:
    """A reporting period: the last ``days`` local calendar days including today, or everything.

    ``name`` is canonical ("7d", "30d", "90d", "all"); ``days`` is None for "all".
    """

    name: str
    days: int | None

    @property
    def is_all(self) -> bool:
        return self.days is None

    @property
    def description(self) -> str:
        """``"the last 7 days"``, ``"today"`` or ``"your whole log"``."""
        if self.days is None:
            return "your whole log"
        if self.days == 1:
            return "today"
        return f"the last {self.days} days"

    @property
    def previous_description(self) -> str:
        """How to name the period before this one: ``"the week before"``, ``"the 30 days before"``."""
        if self.days is None:
            return ""
        if self.days == 1:
            return "the day before"
        if self.days == 7:
            return "the week before"
        return f"the {self.days} days before"

    def dates(self, now: datetime, tz: ZoneInfo) -> tuple[date | None, date]:
        """The first and last local calendar day of the period (first is None for "all")."""
        today = local_date(now, tz)
        if self.days is None:
            return None, today
        return today - timedelta(days=self.days - 1), today

    def previous_dates(self, now: datetime, tz: ZoneInfo) -> tuple[date, date] | None:
        """The first and last local day of the equally long period just before this one."""
        first, _ = self.dates(now, tz)
        if first is None or self.days is None:
            return None
        return first - timedelta(days=self.days), first - timedelta(days=1)

    def window(self, now: datetime, tz: ZoneInfo) -> tuple[datetime | None, datetime]:
        """``[start, end)`` in aware UTC: from the local midnight that starts the period to the next
        local midnight after today. ``start`` is None for "all"."""
        first, last = self.dates(now, tz)
        end = local_midnight(last + timedelta(days=1), tz)
        return (None if first is None else local_midnight(first, tz)), end

    def fetch_since(self, now: datetime, tz: ZoneInfo) -> datetime | None:
        """How far back moods must be fetched: the start of the previous period (for the trend)."""
        previous = self.previous_dates(now, tz)
        return None if previous is None else local_midnight(previous[0], tz)


def parse_period(arg: str | None) -> Period:
    """Parse the ``/mood`` argument: "7d" (the default), "30d", "90d", "all".

    Also accepted: "week", "month", "quarter", "everything", and any number of days such as
    "14", "14d" or "14 days" (1 to 3660). Raises ValueError with a one-sentence message otherwise.
    """
    text = " ".join((arg or "").split()).lower()
    if not text:
        text = DEFAULT_PERIOD
    text = _ALIASES.get(text, text)
    if text == "all":
        return Period(name="all", days=None)
    match = _DAYS.fullmatch(text)
    if match:
        days = int(match.group(1))
        if 1 <= days <= MAX_PERIOD_DAYS:
            return Period(name=f"{days}d", days=days)
    shown = (arg or "").strip()[:40]
    raise ValueError(
        f"I don't know the period '{shown}' — choose 7d, 30d, 90d or all "
        f"(or a number of days such as 14d), e.g. /mood 30d."
    )


def resolve_timezone(name: str) -> ZoneInfo:
    """Return the IANA timezone ``name`` (e.g. "Europe/Berlin"); letter case is forgiven.

    Raises ValueError with a message meant for the user when the name is unknown.
    """
    key = (name or "").strip()
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        canonical = _timezones_by_lower_name().get(key.lower())
        if canonical is not None:
            return ZoneInfo(canonical)
    raise ValueError(
        f"Unknown timezone '{key[:60]}'. Use an IANA name such as Europe/Berlin or Asia/Shanghai."
    )


@lru_cache(maxsize=1)
def _timezones_by_lower_name() -> dict[str, str]:
    return {zone.lower(): zone for zone in available_timezones()}


def local_date(moment: datetime, tz: ZoneInfo) -> date:
    """The calendar day in ``tz`` that contains the aware instant ``moment``."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(tz).date()


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant at which ``day`` starts in ``tz`` (the first existing local time if midnight
    falls into a DST gap)."""
    # fold=0 for a midnight in a gap resolves with the pre-transition offset, i.e. the instant the
    # day really begins; for an ambiguous midnight it picks the first occurrence.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
