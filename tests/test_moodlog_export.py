"""/export files parse back into exactly the records that went in, with local times."""

from __future__ import annotations

import codecs
import csv
import io
import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from bot.moodlog import export_csv, export_json, read_csv_export
from bot.moodlog.export import CSV_COLUMNS
from bot.records import MessageRecord, MoodRecord, UserRecord

NEW_YORK = ZoneInfo("America/New_York")
USER = UserRecord(
    id=7,
    platform="telegram",
    platform_user_id="424242",
    display_name="Zoë 小明",
    timezone="America/New_York",
    mood_logging=True,
    created_at=datetime(2026, 3, 1, 9, 0, tzinfo=UTC),
)
EXPORTED_AT = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def utc(*when: int, microsecond: int = 0) -> datetime:
    return datetime(*when, microsecond=microsecond, tzinfo=UTC)


MESSAGES = [
    # Sat 7 Mar 23:30 EST, UTC day 8 Mar.
    MessageRecord(
        11,
        7,
        3,
        "user",
        'Long day, "tired", but ok 😊\nsecond line',
        "answered",
        utc(2026, 3, 8, 4, 30),
        True,
    ),
    MessageRecord(12, 7, 3, "assistant", "Rest well, Zoë.", "answered", utc(2026, 3, 8, 4, 30, 5), True, 11),
    # Sun 8 Mar 03:30 EDT: after the DST jump.
    MessageRecord(13, 7, 3, "user", "=SUM(A1:A9) haha", "answered", utc(2026, 3, 8, 7, 30), True),
    MessageRecord(14, 7, 3, "user", "@moodmate 今天很好", "answered", utc(2026, 3, 8, 7, 31), False),
    MessageRecord(15, 7, 3, "user", "'quoted' and -dash", "failed", utc(2026, 3, 8, 7, 32), True),
    MessageRecord(
        16, 7, 4, "user", None, "answered", utc(2026, 1, 2, 3, 4, microsecond=123456), False
    ),  # purged
    MessageRecord(17, 7, 4, "user", "", "pending", utc(2026, 3, 9, 4, 30), True),  # empty, not purged
]
MOODS = [
    MoodRecord(21, 7, 3, 11, "positive", 0.61, utc(2026, 3, 8, 4, 30)),
    MoodRecord(22, 7, 3, 13, "neutral", 0.5, utc(2026, 3, 8, 7, 30)),
    MoodRecord(23, 7, 3, 14, "negative", 0.9123456789, utc(2026, 3, 8, 7, 31)),
    MoodRecord(24, 7, None, None, "negative", 1.0, utc(2026, 1, 2, 3, 4, microsecond=123456)),
]


def message_from_csv(row: dict[str, str]) -> MessageRecord:
    purged = row["text_purged"] == "true"
    return MessageRecord(
        id=int(row["id"]),
        user_id=USER.id,
        chat_id=int(row["chat_id"]),
        role=row["role"],
        text=None if purged else row["text"],
        status=row["status"],
        created_at=datetime.fromisoformat(row["created_at_utc"]),
        in_history=row["in_history"] == "true",
        reply_to_id=int(row["reply_to_id"]) if row["reply_to_id"] else None,
    )


def mood_from_csv(row: dict[str, str]) -> MoodRecord:
    return MoodRecord(
        id=int(row["id"]),
        user_id=USER.id,
        chat_id=int(row["chat_id"]) if row["chat_id"] else None,
        message_id=int(row["message_id"]) if row["message_id"] else None,
        label=row["label"],
        score=float(row["score"]),
        created_at=datetime.fromisoformat(row["created_at_utc"]),
    )


def assert_local_time(utc_text: str, local_text: str, local_date: str | None = None) -> None:
    instant = datetime.fromisoformat(utc_text)
    local = datetime.fromisoformat(local_text)
    assert instant.utcoffset() is not None and instant.utcoffset().total_seconds() == 0
    assert local == instant  # the same instant...
    assert local.utcoffset() == instant.astimezone(NEW_YORK).utcoffset()  # ...with New York's offset then
    if local_date is not None:
        assert local_date == local.date().isoformat()


def test_csv_round_trips_to_the_input_records() -> None:
    data = export_csv(USER, MESSAGES, MOODS, NEW_YORK)
    assert data.startswith(codecs.BOM_UTF8)
    rows = read_csv_export(data)
    assert list(rows[0].keys()) == list(CSV_COLUMNS)
    assert len(rows) == len(MESSAGES) + len(MOODS)
    messages = [message_from_csv(row) for row in rows if row["record"] == "message"]
    moods = [mood_from_csv(row) for row in rows if row["record"] == "mood"]
    assert sorted(messages, key=lambda m: m.id) == MESSAGES
    assert sorted(moods, key=lambda m: m.id) == MOODS
    for row in rows:
        assert row["timezone"] == "America/New_York"
        assert_local_time(row["created_at_utc"], row["created_at_local"], row["local_date"])
    # Oldest first, each mood right after the message it read.
    assert [(row["record"], row["id"]) for row in rows[:3]] == [
        ("message", "16"),
        ("mood", "24"),
        ("message", "11"),
    ]
    by_id = {(row["record"], row["id"]): row for row in rows}
    assert (
        by_id[("message", "11")]["local_date"] == "2026-03-07"
    )  # 04:30 UTC on the 8th is the 7th in New York
    assert by_id[("message", "11")]["created_at_local"] == "2026-03-07T23:30:00-05:00"
    assert by_id[("message", "13")]["created_at_local"] == "2026-03-08T03:30:00-04:00"
    assert by_id[("mood", "23")]["valence"] == repr(-0.9123456789)
    assert by_id[("mood", "22")]["valence"] == "0.0"


def test_csv_guards_spreadsheet_formulas_in_the_raw_cells() -> None:
    raw = list(csv.DictReader(io.StringIO(export_csv(USER, MESSAGES, MOODS, NEW_YORK).decode("utf-8-sig"))))
    texts = {row["id"]: row["text"] for row in raw if row["record"] == "message"}
    assert texts["13"] == "'=SUM(A1:A9) haha"
    assert texts["14"] == "'@moodmate 今天很好"
    assert texts["15"] == "''quoted' and -dash"
    assert texts["11"] == 'Long day, "tired", but ok 😊\nsecond line'
    assert texts["16"] == "" and texts["17"] == ""
    purged = {row["id"]: row["text_purged"] for row in raw if row["record"] == "message"}
    assert purged["16"] == "true" and purged["17"] == "false"


def test_json_round_trips_to_the_input_records() -> None:
    data = export_json(USER, MESSAGES, MOODS, NEW_YORK, now=EXPORTED_AT)
    assert "😊".encode() in data and "小明".encode() in data  # UTF-8, not \\u escapes
    document = json.loads(data.decode("utf-8"))
    assert set(document) == {
        "format",
        "version",
        "exported_at",
        "exported_at_local",
        "user",
        "messages",
        "moods",
    }
    assert document["exported_at"] == "2026-03-10T12:00:00+00:00"
    assert document["exported_at_local"] == "2026-03-10T08:00:00-04:00"
    assert document["user"] == {
        "platform": "telegram",
        "user_id": "424242",
        "display_name": "Zoë 小明",
        "timezone": "America/New_York",
        "mood_logging": True,
        "created_at_utc": "2026-03-01T09:00:00+00:00",
        "created_at_local": "2026-03-01T04:00:00-05:00",
    }
    messages = [
        MessageRecord(
            id=item["id"],
            user_id=USER.id,
            chat_id=item["chat_id"],
            role=item["role"],
            text=item["text"],
            status=item["status"],
            created_at=datetime.fromisoformat(item["created_at_utc"]),
            in_history=item["in_history"],
            reply_to_id=item["reply_to_id"],
        )
        for item in document["messages"]
    ]
    assert sorted(messages, key=lambda m: m.id) == MESSAGES
    assert next(item for item in document["messages"] if item["id"] == 16)["text"] is None
    moods = [
        MoodRecord(
            id=item["id"],
            user_id=USER.id,
            chat_id=item["chat_id"],
            message_id=item["message_id"],
            label=item["label"],
            score=item["score"],
            created_at=datetime.fromisoformat(item["created_at_utc"]),
        )
        for item in document["moods"]
    ]
    assert sorted(moods, key=lambda m: m.id) == MOODS
    for item in (*document["messages"], *document["moods"]):
        assert_local_time(item["created_at_utc"], item["created_at_local"])
    assert [item["valence"] for item in document["moods"]] == [pytest.approx(-1.0), 0.61, 0.0, -0.9123456789]


def test_exports_never_include_internal_or_other_users_ids() -> None:
    document = json.loads(export_json(USER, MESSAGES, MOODS, NEW_YORK, now=EXPORTED_AT))
    assert "id" not in document["user"]
    assert all("user_id" not in item for item in (*document["messages"], *document["moods"]))


def test_rows_of_another_user_are_refused() -> None:
    stranger = MoodRecord(99, 8, 3, None, "positive", 0.9, utc(2026, 3, 8, 1, 0))
    with pytest.raises(ValueError, match="other users"):
        export_json(USER, MESSAGES, [*MOODS, stranger], NEW_YORK)
    with pytest.raises(ValueError, match="other users"):
        export_csv(USER, MESSAGES, [*MOODS, stranger], NEW_YORK)


def test_empty_export_is_still_valid() -> None:
    rows = read_csv_export(export_csv(USER, [], [], NEW_YORK))
    assert rows == []
    assert export_csv(USER, [], [], NEW_YORK).decode("utf-8-sig").splitlines() == [",".join(CSV_COLUMNS)]
    document = json.loads(export_json(USER, [], [], NEW_YORK))
    assert document["messages"] == [] and document["moods"] == []
    assert datetime.fromisoformat(document["exported_at"]).tzinfo is not None
