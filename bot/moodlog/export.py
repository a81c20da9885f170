"""``/export``: one user's messages and mood log as CSV (for spreadsheets) and JSON (for programs).

Every timestamp is written twice, ISO-8601 in UTC and in the user's timezone. The caller passes only
this user's rows; rows of anyone else are refused rather than exported.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.moodlog.summary import mood_value
from bot.records import MessageRecord, MoodRecord, UserRecord

EXPORT_FORMAT = "moodmate-export"
EXPORT_VERSION = 1

CSV_COLUMNS: tuple[str, ...] = (
    "record",  # "message" or "mood"
    "id",
    "created_at_utc",
    "created_at_local",
    "local_date",
    "timezone",
    "chat_id",
    "role",  # messages
    "status",
    "text",
    "text_purged",  # "true" when retention removed the text
    "in_history",
    "reply_to_id",
    "message_id",  # moods: the message that was read
    "label",
    "score",
    "valence",  # -1..+1, see bot.moodlog.mood_value
)

# Spreadsheets run cells starting with these as formulas; such texts get a leading apostrophe.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def export_csv(
    user: UserRecord,
    messages: Sequence[MessageRecord],
    moods: Sequence[MoodRecord],
    tz: ZoneInfo,
) -> bytes:
    """One CSV (UTF-8 with BOM so spreadsheets detect it) with a row per message and per mood, oldest first.

    The ``record`` column says which it is; columns that don't apply are empty. Message texts that a
    spreadsheet would run as a formula (starting with = + - @ or ') get one leading apostrophe, which
    ``read_csv_export`` removes again; purged texts are empty with ``text_purged`` = ``true``.
    """
    _check_owner(user, messages, moods)
    keyed = [((m.created_at, 0, m.id), _message_row(m, tz)) for m in messages]
    keyed += [((m.created_at, 1, m.id), _mood_row(m, tz)) for m in moods]
    keyed.sort(key=lambda item: item[0])
    rows = [row for _, row in keyed]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, restval="", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8-sig")


def _message_row(message: MessageRecord, tz: ZoneInfo) -> dict[str, str]:
    return {
        "record": "message",
        "id": str(message.id),
        **_csv_times(message.created_at, tz),
        "chat_id": str(message.chat_id),
        "role": message.role,
        "status": message.status,
        "text": "" if message.text is None else _guard_formula(message.text),
        "text_purged": _csv_bool(message.text is None),
        "in_history": _csv_bool(message.in_history),
        "reply_to_id": _csv_optional(message.reply_to_id),
    }


def _mood_row(mood: MoodRecord, tz: ZoneInfo) -> dict[str, str]:
    valence = _valence(mood)
    return {
        "record": "mood",
        "id": str(mood.id),
        **_csv_times(mood.created_at, tz),
        "chat_id": _csv_optional(mood.chat_id),
        "message_id": _csv_optional(mood.message_id),
        "label": mood.label,
        "score": repr(float(mood.score)),
        "valence": "" if valence is None else repr(valence),
    }


def read_csv_export(data: bytes) -> list[dict[str, str]]:
    """Parse ``export_csv`` output back into rows (column -> text), undoing the formula guard."""
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    for row in rows:
        text = row.get("text", "")
        if text.startswith("'"):
            row["text"] = text[1:]
    return rows


def export_json(
    user: UserRecord,
    messages: Sequence[MessageRecord],
    moods: Sequence[MoodRecord],
    tz: ZoneInfo,
    *,
    now: datetime | None = None,
) -> bytes:
    """The user's profile, messages and moods as pretty-printed UTF-8 JSON (non-ASCII kept as is).

    Shape: ``{"format", "version", "exported_at", "exported_at_local", "user": {platform, user_id,
    display_name, timezone, mood_logging, created_at_utc, created_at_local}, "messages": [...],
    "moods": [...]}``; purged message texts are ``null``.
    """
    _check_owner(user, messages, moods)
    exported = (now or datetime.now(UTC)).astimezone(UTC)
    document: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": exported.isoformat(),
        "exported_at_local": exported.astimezone(tz).isoformat(),
        "user": {
            "platform": user.platform,
            "user_id": user.platform_user_id,
            "display_name": user.display_name,
            "timezone": tz.key,
            "mood_logging": user.mood_logging,
            **_json_times(user.created_at, tz),
        },
        "messages": [
            {
                "id": message.id,
                **_json_times(message.created_at, tz),
                "chat_id": message.chat_id,
                "role": message.role,
                "status": message.status,
                "text": message.text,
                "in_history": message.in_history,
                "reply_to_id": message.reply_to_id,
            }
            for message in sorted(messages, key=lambda m: (m.created_at, m.id))
        ],
        "moods": [
            {
                "id": mood.id,
                **_json_times(mood.created_at, tz),
                "chat_id": mood.chat_id,
                "message_id": mood.message_id,
                "label": mood.label,
                "score": float(mood.score),
                "valence": _valence(mood),
            }
            for mood in sorted(moods, key=lambda m: (m.created_at, m.id))
        ],
    }
    return (json.dumps(document, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _check_owner(user: UserRecord, messages: Sequence[MessageRecord], moods: Sequence[MoodRecord]) -> None:
    rows: list[MessageRecord | MoodRecord] = [*messages, *moods]
    strangers = sum(1 for row in rows if row.user_id != user.id)
    if strangers:
        raise ValueError(f"refusing to export {strangers} rows that belong to other users")


def _valence(mood: MoodRecord) -> float | None:
    try:
        return mood_value(mood.label, mood.score)
    except ValueError:
        return None


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC)


def _json_times(moment: datetime, tz: ZoneInfo) -> dict[str, str]:
    utc = _utc(moment)
    return {"created_at_utc": utc.isoformat(), "created_at_local": utc.astimezone(tz).isoformat()}


def _csv_times(moment: datetime, tz: ZoneInfo) -> dict[str, str]:
    utc = _utc(moment)
    local = utc.astimezone(tz)
    return {
        "created_at_utc": utc.isoformat(),
        "created_at_local": local.isoformat(),
        "local_date": local.date().isoformat(),
        "timezone": tz.key,
    }


def _guard_formula(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_bool(value: bool) -> str:
    return "true" if value else "false"


def _csv_optional(value: int | None) -> str:
    return "" if value is None else str(value)
