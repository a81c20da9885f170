"""The /mood chart: a real, readable PNG for one day or more than a year, None without data."""

from __future__ import annotations

import io
import math
import os
import struct
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bot.moodlog import parse_period, render_chart
from bot.moodlog.chart import _rolling_average
from bot.records import MoodRecord
from tests.moodlog_demo import DEMO_NOW, render_demo, synthetic_moods

BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must come first."""
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def decoded(data: bytes):
    """Decode the whole PNG (catches truncated or corrupt files) into an RGBA array."""
    from matplotlib import image

    return image.imread(io.BytesIO(data), format="png")


def assert_readable_png(data: bytes | None) -> None:
    assert data is not None
    width, height = png_size(data)
    assert 800 <= width <= 2000 and 800 <= height <= 2000
    assert 20_000 < len(data) < 2_000_000
    pixels = decoded(data)
    assert pixels.shape[:2] == (height, width)
    colours = {tuple(pixel) for pixel in pixels[::7, ::7].reshape(-1, pixels.shape[2]).tolist()}
    assert len(colours) > 50  # text, points, bars: not a blank canvas


def moods_every_day(days: int, *, end: datetime = NOW) -> list[MoodRecord]:
    records = []
    for offset in range(days):
        created_at = end - timedelta(days=offset)
        label = ("positive", "neutral", "negative")[offset % 3]
        records.append(MoodRecord(offset + 1, 1, 1, None, label, 0.5 + (offset % 5) / 10, created_at))
    return records


def test_no_data_gives_no_chart() -> None:
    assert render_chart([], period=parse_period("7d"), now=NOW, tz=BERLIN) is None
    old = moods_every_day(3, end=NOW - timedelta(days=60))
    assert render_chart(old, period=parse_period("30d"), now=NOW, tz=BERLIN) is None


def test_one_day_of_data() -> None:
    one = [MoodRecord(1, 1, 1, None, "negative", 0.8, NOW)]
    assert_readable_png(render_chart(one, period=parse_period("7d"), now=NOW, tz=BERLIN))
    assert_readable_png(render_chart(one, period=parse_period("all"), now=NOW, tz=BERLIN))


def test_four_hundred_days_of_data() -> None:
    data = render_chart(moods_every_day(400), period=parse_period("all"), now=NOW, tz=BERLIN)
    assert_readable_png(data)
    assert png_size(data or b"") == (1080, 1080)


def test_size_can_be_chosen() -> None:
    data = render_chart(
        moods_every_day(30), period=parse_period("30d"), now=NOW, tz=BERLIN, width_px=1200, height_px=900
    )
    assert png_size(data or b"") == (1200, 900)


def test_matplotlib_is_lazy_and_pyplot_unused() -> None:
    # A fresh interpreter: importing the package must not load matplotlib, rendering must not need pyplot.
    code = (
        "import sys, datetime\n"
        "import bot.moodlog as m\n"
        "assert 'matplotlib' not in sys.modules\n"
        "from tests.moodlog_demo import synthetic_moods, DEMO_NOW\n"
        "png = m.render_chart(synthetic_moods(5), period=m.parse_period('7d'), now=DEMO_NOW,\n"
        "                     tz=m.resolve_timezone('UTC'))\n"
        "assert png and 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
        "import matplotlib; assert matplotlib.get_backend().lower() == 'agg', matplotlib.get_backend()\n"
    )
    env = {**os.environ, "MPLBACKEND": "", "DISPLAY": ""}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_rolling_average_is_message_weighted_over_trailing_days() -> None:
    values = [(date(2026, 3, 1), 1.0), (date(2026, 3, 3), -0.5), (date(2026, 3, 3), -0.5)]
    days = [date(2026, 3, 1) + timedelta(days=n) for n in range(12)]
    rolling = _rolling_average(values, days, 7)
    assert rolling[0] == 1.0
    assert rolling[1] == 1.0  # 2 Mar: only 1 Mar in its window
    assert rolling[2] == pytest.approx(0.0)  # 3 Mar: (1 - 0.5 - 0.5) / 3
    assert rolling[6] == pytest.approx(0.0)  # 7 Mar: window 1..7 Mar
    assert rolling[7] == pytest.approx(-0.5)  # 8 Mar: window 2..8 Mar drops 1 Mar
    assert rolling[8] == pytest.approx(-0.5)
    assert math.isnan(rolling[9])  # 10 Mar: window 4..10 Mar is empty


def test_demo_is_deterministic_and_renders(tmp_path: Path) -> None:
    assert synthetic_moods(30) == synthetic_moods(30)
    assert all(m.created_at <= DEMO_NOW for m in synthetic_moods(30))
    path = render_demo(tmp_path / "demo.png")
    assert_readable_png(path.read_bytes())
