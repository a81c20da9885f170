"""A deterministic synthetic mood log and a one-call chart render, for the chart tests."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.moodlog.chart import render_chart
from bot.moodlog.periods import parse_period, resolve_timezone
from bot.records import MoodRecord
from bot.types import MoodLabel

DEMO_NOW = datetime(2026, 3, 31, 18, 0, tzinfo=UTC)
DEMO_TIMEZONE = "Europe/Berlin"


def synthetic_moods(
    days: int = 30, *, now: datetime = DEMO_NOW, seed: int = 6, user_id: int = 1
) -> list[MoodRecord]:
    """``days`` days of made-up moods ending at ``now``: a slow wave with a few quiet days.

    Deterministic for a given ``seed``; 0–6 moods a day between 07:00 and 23:00 UTC, oldest first.
    """
    rng = random.Random(seed)
    moods: list[MoodRecord] = []
    start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    for offset in range(days):
        day_start = start + timedelta(days=offset)
        wave = 0.55 * math.sin(offset / 4.5) + 0.15
        per_day = 0 if rng.random() < 0.1 else rng.randint(1, 6)
        stamps = sorted(rng.uniform(7, 23) for _ in range(per_day))
        for hours in stamps:
            created_at = day_start + timedelta(hours=hours)
            if created_at > now:
                continue
            tone = wave + rng.gauss(0, 0.45)
            if tone > 0.25:
                label = MoodLabel.POSITIVE
            elif tone < -0.25:
                label = MoodLabel.NEGATIVE
            else:
                label = MoodLabel.NEUTRAL
            score = round(min(0.99, 0.45 + abs(tone) * 0.5 + rng.uniform(0, 0.1)), 2)
            moods.append(
                MoodRecord(
                    id=len(moods) + 1,
                    user_id=user_id,
                    chat_id=1,
                    message_id=None,
                    label=label.value,
                    score=score,
                    created_at=created_at,
                )
            )
    return moods


def render_demo(
    path: str | Path, *, period: str = "30d", days: int = 60, timezone: str = DEMO_TIMEZONE
) -> Path:
    """Render the ``/mood`` chart of a synthetic log to ``path`` (a PNG file) and return the path.

    The log is ``days`` long, longer than the period, so the rolling average has history.
    """
    target = Path(path)
    chart = render_chart(
        synthetic_moods(days),
        period=parse_period(period),
        now=DEMO_NOW,
        tz=resolve_timezone(timezone),
    )
    if chart is None:  # pragma: no cover - the synthetic log always has data
        raise RuntimeError("the demo log produced no chart")
    target.write_bytes(chart)
    return target
