"""The ``/mood`` chart: daily mood with a rolling average above, messages per day below (PNG)."""

from __future__ import annotations

import io
import logging
import math
import sys
from collections.abc import Sequence
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from bot.moodlog.periods import Period
from bot.moodlog.summary import daily_moods, format_valence, valued_moods
from bot.records import MoodRecord
from bot.types import MOOD_LABELS, MoodLabel

if TYPE_CHECKING:
    from types import ModuleType

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

WIDTH_PX = 1080
HEIGHT_PX = 1080
DPI = 100

LABEL_COLOURS: dict[str, str] = {
    MoodLabel.POSITIVE.value: "#2a9d8f",
    MoodLabel.NEUTRAL.value: "#b8c0c8",
    MoodLabel.NEGATIVE.value: "#e76f51",
}
LINE_COLOUR = "#264653"
TEXT_COLOUR = "#1f2933"
MUTED_COLOUR = "#6b7785"
WEEKLY_BARS_AFTER_DAYS = 120
_MOOD_LIMIT = 1.3
TITLE_SIZE = 30
SUBTITLE_SIZE = 19
LABEL_SIZE = 20
TICK_SIZE = 17
LEGEND_SIZE = 17

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def render_chart(
    moods: Sequence[MoodRecord],
    *,
    period: Period,
    now: datetime,
    tz: ZoneInfo,
    width_px: int = WIDTH_PX,
    height_px: int = HEIGHT_PX,
) -> bytes | None:
    """Render the user's mood over ``period`` (local days in ``tz``) as PNG bytes.

    The top panel shows each day's mean valence (dots) and a trailing rolling average (line, 7 days;
    30 days when the chart spans more than half a year); moods before the period (e.g. the previous
    period the engine fetched for the trend) only feed the rolling average. The bottom panel shows
    messages per day (per week beyond 120 days), stacked by label. Returns None when the period
    holds no moods. Takes about a second on a slow CPU: call it off the event loop.
    """
    first, last = period.dates(now, tz)
    valued = valued_moods(moods, tz)
    in_period = [
        (day, mood, value) for day, mood, value in valued if (first is None or first <= day) and day <= last
    ]
    if not in_period:
        return None
    if first is None:
        first = min(day for day, _, _ in in_period)
    span = (last - first).days + 1
    rolling_days = 7 if span <= 180 else 30

    days = [first + timedelta(days=offset) for offset in range(span)]
    daily = daily_moods((day, value) for day, _, value in in_period)
    counts = {label.value: [0] * span for label in MOOD_LABELS}
    for day, mood, _ in in_period:
        counts[mood.label][(day - first).days] += 1
    rolling = _rolling_average([(day, value) for day, _, value in valued], days, rolling_days)

    figure = _draw(
        period=period,
        tz=tz,
        first=first,
        last=last,
        days=days,
        daily_points=[(day.day, day.average) for day in daily],
        rolling=rolling,
        rolling_days=rolling_days,
        counts=counts,
        total=len(in_period),
        average=sum(value for _, _, value in in_period) / len(in_period),
        width_px=width_px,
        height_px=height_px,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white", metadata={"Software": None})
    logger.debug(
        "Rendered a %s mood chart: %d days, %d moods, %d bytes",
        period.name,
        span,
        len(in_period),
        buffer.tell(),
    )
    return buffer.getvalue()


def _rolling_average(values: Sequence[tuple[date, float]], days: Sequence[date], window: int) -> list[float]:
    """For each day, the mean valence of every mood in the ``window`` days ending that day (NaN if none)."""
    sums: dict[date, tuple[float, int]] = {}
    for day, value in values:
        total, count = sums.get(day, (0.0, 0))
        sums[day] = (total + value, count + 1)
    result: list[float] = []
    for day in days:
        total = 0.0
        count = 0
        for back in range(window):
            day_total, day_count = sums.get(day - timedelta(days=back), (0.0, 0))
            total += day_total
            count += day_count
        result.append(total / count if count else math.nan)
    return result


def _draw(
    *,
    period: Period,
    tz: ZoneInfo,
    first: date,
    last: date,
    days: Sequence[date],
    daily_points: Sequence[tuple[date, float]],
    rolling: Sequence[float],
    rolling_days: int,
    counts: dict[str, list[int]],
    total: int,
    average: float,
    width_px: int,
    height_px: int,
) -> Figure:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        # Switching the backend after pyplot was imported would close its figures; we never use
        # pyplot ourselves (Figure + Agg directly), so only pick Agg when nobody else chose.
        matplotlib.use("Agg")
    from matplotlib import dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

    span = len(days)
    x_days = [_num(day, mdates) for day in days]
    figure = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    figure.subplots_adjust(left=0.12, right=0.94, top=0.8, bottom=0.09, hspace=0.22)
    mood_axes, count_axes = figure.subplots(2, 1, sharex=True, height_ratios=[2.6, 1])

    if period.days is None:
        title = "Your whole mood log"
    elif period.days == 1:
        title = "Your mood today"
    else:
        title = f"Your mood — last {period.days} days"
    messages = "1 message" if total == 1 else f"{total} messages"
    detail = f"{_date_range(first, last)}  ·  {tz.key}\n{messages}  ·  average {format_valence(average)}"
    figure.text(
        0.5, 0.975, title, ha="center", va="top", fontsize=TITLE_SIZE, fontweight="bold", color=TEXT_COLOUR
    )
    figure.text(
        0.5, 0.918, detail, ha="center", va="top", fontsize=SUBTITLE_SIZE, color=MUTED_COLOUR, linespacing=1.4
    )

    # Mood panel.
    mood_axes.axhspan(0, _MOOD_LIMIT, color=LABEL_COLOURS["positive"], alpha=0.07, linewidth=0)
    mood_axes.axhspan(-_MOOD_LIMIT, 0, color=LABEL_COLOURS["negative"], alpha=0.07, linewidth=0)
    mood_axes.axhline(0, color=MUTED_COLOUR, linewidth=1.2, alpha=0.7)
    point_size = 150 if span <= 31 else 80 if span <= 120 else 30
    mood_axes.scatter(
        [_num(day, mdates) for day, _ in daily_points],
        [value for _, value in daily_points],
        s=point_size,
        c=[value for _, value in daily_points],
        cmap="RdYlGn",
        vmin=-1,
        vmax=1,
        edgecolors=TEXT_COLOUR,
        linewidths=0.8,
        zorder=3,
        label="Daily average",
    )
    if span > 1:
        mood_axes.plot(
            x_days, rolling, color=LINE_COLOUR, linewidth=3.5, zorder=2, label=f"{rolling_days}-day average"
        )
    mood_axes.set_ylim(-_MOOD_LIMIT, _MOOD_LIMIT)
    mood_axes.yaxis.set_major_locator(FixedLocator([-1, -0.5, 0, 0.5, 1]))
    mood_axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _pos: _signed(value)))
    mood_axes.set_ylabel("Mood (−1 to +1)", fontsize=LABEL_SIZE, color=TEXT_COLOUR)
    # The hints sit in the strips beyond ±1, where no point or line can be drawn.
    hint_x = mood_axes.get_yaxis_transform()
    mood_axes.text(
        0.015,
        _MOOD_LIMIT - 0.02,
        "↑ brighter",
        transform=hint_x,
        fontsize=LEGEND_SIZE,
        color=MUTED_COLOUR,
        va="top",
    )
    mood_axes.text(
        0.015,
        -_MOOD_LIMIT + 0.02,
        "↓ heavier",
        transform=hint_x,
        fontsize=LEGEND_SIZE,
        color=MUTED_COLOUR,
        va="bottom",
    )
    mood_axes.legend(
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=2,
        frameon=False,
        fontsize=LEGEND_SIZE,
        borderaxespad=0.2,
        handlelength=1.5,
    )

    # Messages panel, stacked by label: per day, or per week (ending on the last day) for long spans.
    bin_days = 1 if span <= WEEKLY_BARS_AFTER_DAYS else 7
    bins = range(span - 1, -1, -bin_days)
    bar_x = [x_days[end] - (bin_days - 1) / 2 for end in bins]
    bottom = [0] * len(bar_x)
    for label in MOOD_LABELS:
        per_day = counts[label.value]
        heights = [sum(per_day[max(0, end - bin_days + 1) : end + 1]) for end in bins]
        count_axes.bar(
            bar_x,
            heights,
            bottom=bottom,
            width=0.8 * bin_days,
            color=LABEL_COLOURS[label.value],
            label=label.value,
            linewidth=0,
        )
        bottom = [below + height for below, height in zip(bottom, heights, strict=True)]
    count_axes.set_ylim(0, max(bottom) * 1.15)
    count_axes.yaxis.set_major_locator(MaxNLocator(nbins=3, integer=True, min_n_ticks=1))
    count_axes.set_ylabel(
        "Messages\nper day" if bin_days == 1 else "Messages\nper week",
        fontsize=LABEL_SIZE,
        color=TEXT_COLOUR,
        linespacing=1.2,
    )
    count_axes.legend(
        loc="lower right",
        bbox_to_anchor=(1.0, 1.0),
        ncols=3,
        frameon=False,
        fontsize=LEGEND_SIZE,
        borderaxespad=0.2,
        handlelength=1.2,
    )

    for axes in (mood_axes, count_axes):
        _style_axes(axes)
    padding = max(0.6, (5 - span) / 2 + 0.6)  # keep a lone day's bar from filling the whole width
    count_axes.set_xlim(x_days[0] - padding, x_days[-1] + padding)
    _set_date_ticks(count_axes, days, mdates)
    return figure


def _date_range(first: date, last: date) -> str:
    """``3 Mar 2026``, ``3 Mar – 9 Mar 2026`` or ``28 Dec 2025 – 3 Jan 2026``."""
    end = f"{last.day} {_MONTHS[last.month - 1]} {last.year}"
    if first == last:
        return end
    start = f"{first.day} {_MONTHS[first.month - 1]}"
    if first.year != last.year:
        start = f"{start} {first.year}"
    return f"{start} – {end}"


def _style_axes(axes: Axes) -> None:
    axes.tick_params(labelsize=TICK_SIZE, colors=TEXT_COLOUR, length=6)
    axes.grid(axis="y", color="#d9dee3", linewidth=1)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color("#9aa5b1")


def _set_date_ticks(axes: Axes, days: Sequence[date], mdates: ModuleType) -> None:
    """At most ~7 non-overlapping date ticks whether the chart spans 1 day or several years."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    span = len(days)
    last = days[-1]
    if span <= 120:
        step = next(step for step in (1, 2, 3, 7, 14, 21) if span / step <= 7.5)
        ticks = [last - timedelta(days=back) for back in range(0, span, step)]
        with_weekday = step == 1

        def label(day: date) -> str:
            text = f"{day.day} {_MONTHS[day.month - 1]}"
            return f"{_WEEKDAYS[day.weekday()]}\n{text}" if with_weekday else text

    else:
        months = next(step for step in (1, 2, 3, 4, 6, 12, 24, 60) if span / (30.4 * step) <= 7)
        ticks = [day for day in days if day.day == 1 and (day.year * 12 + day.month - 1) % months == 0]

        def label(day: date) -> str:
            return f"{_MONTHS[day.month - 1]}\n{day.year}"

    by_num = {_num(day, mdates): label(day) for day in ticks}
    axes.xaxis.set_major_locator(FixedLocator(sorted(by_num)))
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: by_num.get(round(value), "")))
    axes.xaxis.set_minor_locator(FixedLocator([]))


def _num(day: date, mdates: ModuleType) -> float:
    return float(mdates.date2num(datetime.combine(day, time())))


def _signed(value: float) -> str:
    if value == 0:
        return "0"
    text = f"{abs(value):g}"
    return f"+{text}" if value > 0 else f"−{text}"
