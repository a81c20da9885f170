"""The mood log's presentation: periods, summaries, charts and exports (platform-neutral).

Matplotlib is imported lazily, only when a chart is rendered.
"""

from bot.moodlog.chart import render_chart
from bot.moodlog.export import export_csv, export_json, read_csv_export
from bot.moodlog.periods import Period, parse_period, resolve_timezone
from bot.moodlog.summary import DayMood, MoodSummary, mood_value, summarize

__all__ = [
    "DayMood",
    "MoodSummary",
    "Period",
    "export_csv",
    "export_json",
    "mood_value",
    "parse_period",
    "read_csv_export",
    "render_chart",
    "resolve_timezone",
    "summarize",
]
