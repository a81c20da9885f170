"""The SQLAlchemy 2.0 implementation of the storage port, :class:`bot.repository.Repository`.

SQLite by default (WAL mode, foreign keys on, a busy timeout) through aiosqlite, or PostgreSQL
through asyncpg. This module is the only code that opens sessions. Statement parameters (message
texts) never reach logs or error messages: the engines hide them, and the drivers' own loggers are
kept at WARNING unless configured explicitly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import and_, delete, event, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, CursorResult, Result
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from bot.errors import ConfigurationError, DuplicateMessageError, StorageError
from bot.records import (
    UNFINISHED,
    ChatRecord,
    MessageRecord,
    MessageStatus,
    MoodRecord,
    PendingMessage,
    Stats,
    UserRecord,
)
from storage.tables import ChatRow, MessageRow, MoodRow, SafetyEventRow, UserRow, utcnow
from storage.urls import database_url as parse_database_url
from storage.urls import describe, is_sqlite_memory, sqlite_path

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

LOCK_RETRIES = 5
LOCK_BACKOFF_SECONDS = 0.05
#: Driver loggers that print statements and their parameters (message texts) at DEBUG.
DRIVER_LOGGERS = ("aiosqlite", "asyncpg")
#: Alembic reports every plugin and step at INFO; moodmate logs one line per migration itself.
QUIET_LOGGERS = (*DRIVER_LOGGERS, "alembic")
#: How long a first start waits for another process that is migrating the same SQLite file.
MIGRATION_LOCK_TIMEOUT_SECONDS = 120.0
_FINISHED = tuple(status.value for status in MessageStatus if status not in UNFINISHED)


def _is_locked(error: OperationalError) -> bool:
    text = str(error.orig).lower() if error.orig is not None else str(error).lower()
    return "locked" in text or "busy" in text


def _get_or_create(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run a get-or-create again when a concurrent caller created the same row first."""

    @wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except IntegrityError:
            return await method(*args, **kwargs)

    return wrapper


def _translated(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Retry briefly when SQLite says the database is locked; turn other failures into StorageError."""

    @wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(LOCK_RETRIES + 1):
            try:
                return await method(*args, **kwargs)
            except OperationalError as error:
                if not _is_locked(error) or attempt == LOCK_RETRIES:
                    raise StorageError(f"database error in {method.__name__}") from error
                delay = LOCK_BACKOFF_SECONDS * 2**attempt
                logger.warning("Database locked in %s; retrying in %.2f s", method.__name__, delay)
                await asyncio.sleep(delay)
            except SQLAlchemyError as error:
                raise StorageError(f"database error in {method.__name__}") from error
        raise AssertionError("unreachable")

    return wrapper


def _rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched (its result is a ``CursorResult``, typed as a plain one)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount or 0)


def quiet_driver_loggers() -> None:
    """Keep the drivers' loggers (which print every statement with its texts at DEBUG) at WARNING."""
    for name in QUIET_LOGGERS:
        driver_logger = logging.getLogger(name)
        if driver_logger.level == logging.NOTSET:
            driver_logger.setLevel(logging.WARNING)


def create_engine(database_url: str | URL) -> AsyncEngine:
    """An async engine; for SQLite, WAL journal, foreign keys and a busy timeout on every connection."""
    url = parse_database_url(database_url) if isinstance(database_url, str) else database_url
    is_sqlite = url.get_backend_name() == "sqlite"
    in_memory = is_sqlite_memory(url)
    kwargs: dict[str, Any] = {"hide_parameters": True}
    if in_memory:
        kwargs["poolclass"] = StaticPool
        kwargs["connect_args"] = {"check_same_thread": False}
    quiet_driver_loggers()
    engine = create_async_engine(url, **kwargs)
    if is_sqlite:

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


def _claimable(now: datetime) -> Any:
    """Unclaimed, or claimed with a lease that expired before ``now``."""
    return or_(
        MessageRow.claimed_by.is_(None),
        MessageRow.lease_until.is_(None),
        and_(MessageRow.lease_until.is_not(None), MessageRow.lease_until < now),
    )


def _user(row: UserRow) -> UserRecord:
    return UserRecord(
        id=row.id,
        platform=row.platform,
        platform_user_id=row.platform_user_id,
        display_name=row.display_name,
        timezone=row.timezone,
        mood_logging=row.mood_logging,
        created_at=row.created_at,
    )


def _chat(row: ChatRow) -> ChatRecord:
    return ChatRecord(
        id=row.id, platform=row.platform, platform_chat_id=row.platform_chat_id, is_private=row.is_private
    )


def _message(row: MessageRow) -> MessageRecord:
    return MessageRecord(
        id=row.id,
        user_id=row.user_id,
        chat_id=row.chat_id,
        role=row.role,
        text=row.text,
        status=row.status,
        created_at=row.created_at,
        in_history=row.in_history,
        reply_to_id=row.reply_to_id,
        platform_message_id=row.platform_message_id,
        claimed_by=row.claimed_by,
        lease_until=row.lease_until,
    )


def _mood(row: MoodRow) -> MoodRecord:
    return MoodRecord(
        id=row.id,
        user_id=row.user_id,
        chat_id=row.chat_id,
        message_id=row.message_id,
        label=row.label,
        score=row.score,
        created_at=row.created_at,
    )


class SqlAlchemyRepository:
    """Stores users, chats, messages and mood entries through SQLAlchemy's async ORM."""

    def __init__(self, database_url: str | URL) -> None:
        self._url = parse_database_url(database_url) if isinstance(database_url, str) else database_url
        self._engine = create_engine(self._url)
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False, class_=AsyncSession)

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, for an operator's or a test's own read-only queries."""
        return self._engine

    async def initialize(self) -> None:
        """Create or migrate the schema, one process at a time; a database that cannot be opened
        raises :class:`ConfigurationError` naming what to fix."""
        path = sqlite_path(self._url)
        if path is None:
            await self._check_reachable()
            await self._migrate()
            return
        from filelock import FileLock, Timeout

        lock = FileLock(f"{path}.lock", timeout=MIGRATION_LOCK_TIMEOUT_SECONDS)
        try:
            await asyncio.to_thread(lock.acquire)
        except Timeout:
            raise ConfigurationError(
                f"Another process has been migrating {describe(self._url)} for "
                f"{MIGRATION_LOCK_TIMEOUT_SECONDS:.0f} s; stop it, or delete {path}.lock if no process runs."
            ) from None
        except OSError as error:
            raise ConfigurationError(self._unreachable(error)) from None
        try:
            await self._check_reachable()  # its first connection turns on WAL, which two at once can fail
            await self._migrate()
        finally:
            lock.release()

    async def _check_reachable(self) -> None:
        try:
            async with self._engine.connect():
                pass
        except (OSError, SQLAlchemyError) as error:
            raise ConfigurationError(self._unreachable(error)) from None

    @_translated
    async def _migrate(self) -> None:
        from storage.migrations import migrate  # Alembic is imported only to migrate

        async with self._engine.begin() as connection:
            await connection.run_sync(migrate)

    def _unreachable(self, error: BaseException) -> str:
        cause: BaseException = getattr(error, "orig", None) or error
        while cause.__cause__ is not None and type(cause).__name__ == "Error":
            cause = cause.__cause__  # SQLAlchemy's asyncpg adapter wraps asyncpg's own error
        text = str(cause).lower()
        if "password" in text or "authentication" in text:
            hint = "the server refused the user name or password in DATABASE_URL"
        elif "role" in text and "does not exist" in text:
            hint = "the server has no such user; fix the user name in DATABASE_URL"
        elif "does not exist" in text:
            hint = "that database does not exist on the server; create it (createdb) or fix DATABASE_URL"
        elif type(cause).__name__ == "gaierror":
            hint = "the host name in DATABASE_URL does not resolve; fix it"
        elif isinstance(cause, ConnectionRefusedError):
            hint = (
                "nothing accepts connections there; start the server or fix the host and port in DATABASE_URL"
            )
        elif isinstance(cause, TimeoutError):
            hint = "the server did not answer in time; check the host and port in DATABASE_URL"
        elif self._url.get_backend_name() == "sqlite":
            hint = f"check that the file can be created and written there ({type(cause).__name__})"
        else:
            hint = f"{type(cause).__name__}; check the server and DATABASE_URL"
        return f"Could not open {describe(self._url)}: {hint}."

    async def close(self) -> None:
        await self._engine.dispose()

    # --- users and chats -----------------------------------------------------------------------

    @_translated
    @_get_or_create
    async def ensure_user(self, platform: str, platform_user_id: str, display_name: str) -> UserRecord:
        async with self._sessions.begin() as session:
            row = await session.scalar(
                select(UserRow).where(
                    UserRow.platform == platform, UserRow.platform_user_id == platform_user_id
                )
            )
            if row is None:
                row = UserRow(platform=platform, platform_user_id=platform_user_id, display_name=display_name)
                session.add(row)
                await session.flush()
            elif display_name and row.display_name != display_name:
                row.display_name = display_name
            return _user(row)

    @_translated
    async def get_user(self, platform: str, platform_user_id: str) -> UserRecord | None:
        async with self._sessions() as session:
            row = await session.scalar(
                select(UserRow).where(
                    UserRow.platform == platform, UserRow.platform_user_id == platform_user_id
                )
            )
            return None if row is None else _user(row)

    @_translated
    @_get_or_create
    async def ensure_chat(
        self, platform: str, platform_chat_id: str, is_private: bool, owner_user_id: int | None = None
    ) -> ChatRecord:
        async with self._sessions.begin() as session:
            row = await session.scalar(
                select(ChatRow).where(
                    ChatRow.platform == platform, ChatRow.platform_chat_id == platform_chat_id
                )
            )
            if row is None:
                row = ChatRow(
                    platform=platform,
                    platform_chat_id=platform_chat_id,
                    is_private=is_private,
                    owner_user_id=owner_user_id if is_private else None,
                )
                session.add(row)
                await session.flush()
            elif is_private and row.owner_user_id is None and owner_user_id is not None:
                row.owner_user_id = owner_user_id
            return _chat(row)

    # --- messages ------------------------------------------------------------------------------

    @_translated
    async def add_message(
        self,
        user_id: int,
        chat_id: int,
        role: str,
        text: str,
        *,
        status: MessageStatus = MessageStatus.PENDING,
        reply_to_id: int | None = None,
        created_at: datetime | None = None,
        platform_message_id: str | None = None,
        claimed_by: str | None = None,
        lease_until: datetime | None = None,
    ) -> MessageRecord:
        async with self._sessions.begin() as session:
            row = MessageRow(
                platform_message_id=platform_message_id,
                claimed_by=claimed_by,
                lease_until=lease_until,
                user_id=user_id,
                chat_id=chat_id,
                role=role,
                text=text,
                status=status.value,
                reply_to_id=reply_to_id,
                created_at=created_at or utcnow(),
            )
            session.add(row)
            try:
                await session.flush()
            except IntegrityError:
                if platform_message_id is None:
                    raise
                raise DuplicateMessageError(
                    f"platform message {platform_message_id} is stored already"
                ) from None
            return _message(row)

    @_translated
    async def set_message_status(self, message_id: int, status: MessageStatus) -> None:
        values: dict[str, object] = {"status": status.value}
        if status not in UNFINISHED:
            values.update(claimed_by=None, lease_until=None)
        async with self._sessions.begin() as session:
            await session.execute(update(MessageRow).where(MessageRow.id == message_id).values(**values))

    # --- claims and the reply unit of work -----------------------------------------------------

    @_translated
    async def claim_message(
        self, message_id: int, instance_id: str, lease_until: datetime, now: datetime
    ) -> bool:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(MessageRow)
                .where(
                    MessageRow.id == message_id,
                    MessageRow.status.in_([status.value for status in UNFINISHED]),
                    _claimable(now),
                )
                .values(claimed_by=instance_id, lease_until=lease_until)
            )
            return _rowcount(result) == 1

    @_translated
    async def renew_claims(self, instance_id: str, message_ids: Sequence[int], lease_until: datetime) -> int:
        if not message_ids:
            return 0
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(MessageRow)
                .where(MessageRow.id.in_(list(message_ids)), MessageRow.claimed_by == instance_id)
                .values(lease_until=lease_until)
            )
            return _rowcount(result)

    @_translated
    async def release_claims(self, instance_id: str) -> int:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(MessageRow)
                .where(MessageRow.claimed_by == instance_id)
                .values(claimed_by=None, lease_until=None)
            )
            return _rowcount(result)

    @_translated
    async def finish_reply(
        self,
        message_id: int,
        instance_id: str,
        reply_text: str,
        *,
        user_id: int,
        chat_id: int,
        mood: tuple[str, float] | None,
    ) -> MessageRecord | None:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(MessageRow)
                .where(
                    MessageRow.id == message_id,
                    MessageRow.status == MessageStatus.PENDING.value,
                    MessageRow.claimed_by == instance_id,
                )
                .values(status=MessageStatus.REPLIED.value)
            )
            if _rowcount(result) != 1:
                return None
            now = utcnow()
            row = MessageRow(
                user_id=user_id,
                chat_id=chat_id,
                role="assistant",
                text=reply_text,
                status=MessageStatus.ANSWERED.value,
                reply_to_id=message_id,
                created_at=now,
            )
            session.add(row)
            await session.flush()
            if mood is not None:
                await session.execute(self._mood_upsert(user_id, chat_id, message_id, mood[0], mood[1], now))
            return _message(row)

    @_translated
    async def unfinished_before(self, message_id: int, instance_id: str, now: datetime) -> bool:
        async with self._sessions() as session:
            message = await session.get(MessageRow, message_id)
            if message is None:
                return False
            earlier = await session.scalar(
                select(func.count())
                .select_from(MessageRow)
                .where(
                    MessageRow.user_id == message.user_id,
                    MessageRow.chat_id == message.chat_id,
                    MessageRow.role == "user",
                    MessageRow.id < message_id,
                    MessageRow.status.in_([status.value for status in UNFINISHED]),
                    MessageRow.claimed_by.is_not(None),
                    MessageRow.claimed_by != instance_id,
                    MessageRow.lease_until >= now,
                )
            )
            return bool(earlier)

    @_translated
    async def history(self, user_id: int, chat_id: int, limit: int) -> list[MessageRecord]:
        if limit <= 0:
            return []
        async with self._sessions() as session:
            rows = await session.scalars(
                select(MessageRow)
                .where(
                    MessageRow.user_id == user_id,
                    MessageRow.chat_id == chat_id,
                    MessageRow.in_history.is_(True),
                    MessageRow.text.is_not(None),
                    or_(
                        MessageRow.role == "assistant",
                        MessageRow.status.in_([MessageStatus.ANSWERED.value, MessageStatus.REPLIED.value]),
                    ),
                )
                .order_by(MessageRow.id.desc())
                .limit(limit)
            )
            return [_message(row) for row in reversed(rows.all())]

    @_translated
    async def reset_history(self, user_id: int, chat_id: int) -> int:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(MessageRow)
                .where(
                    MessageRow.user_id == user_id,
                    MessageRow.chat_id == chat_id,
                    MessageRow.in_history.is_(True),
                )
                .values(in_history=False)
            )
            return _rowcount(result)

    @_translated
    async def messages_for_user(self, user_id: int) -> list[MessageRecord]:
        async with self._sessions() as session:
            rows = await session.scalars(
                select(MessageRow).where(MessageRow.user_id == user_id).order_by(MessageRow.id)
            )
            return [_message(row) for row in rows.all()]

    @_translated
    async def pending_messages(self, claimable_at: datetime | None = None) -> list[PendingMessage]:
        query = (
            select(MessageRow, UserRow, ChatRow)
            .join(UserRow, MessageRow.user_id == UserRow.id)
            .join(ChatRow, MessageRow.chat_id == ChatRow.id)
            .where(
                MessageRow.role == "user",
                MessageRow.status.in_([status.value for status in UNFINISHED]),
            )
            .order_by(MessageRow.id)
        )
        if claimable_at is not None:
            query = query.where(_claimable(claimable_at))
        async with self._sessions() as session:
            rows = (await session.execute(query)).all()
            replied = [message.id for message, _, _ in rows if message.status == MessageStatus.REPLIED.value]
            replies: dict[int, MessageRow] = {}
            moods: dict[int, MoodRow] = {}
            if replied:
                for reply in await session.scalars(
                    select(MessageRow)
                    .where(MessageRow.reply_to_id.in_(replied), MessageRow.role == "assistant")
                    .order_by(MessageRow.id)
                ):
                    replies.setdefault(reply.reply_to_id or 0, reply)
                for mood in await session.scalars(select(MoodRow).where(MoodRow.message_id.in_(replied))):
                    moods[mood.message_id or 0] = mood
            return [
                PendingMessage(
                    message=_message(message),
                    user=_user(user),
                    chat=_chat(chat),
                    reply=_message(replies[message.id]) if message.id in replies else None,
                    mood=_mood(moods[message.id]) if message.id in moods else None,
                )
                for message, user, chat in rows
            ]

    @_translated
    async def purge_message_texts(self, older_than: datetime) -> int:
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(MessageRow)
                .where(MessageRow.created_at < older_than, MessageRow.text.is_not(None))
                .values(text=None)
            )
            return _rowcount(result)

    # --- moods ---------------------------------------------------------------------------------

    @_translated
    async def add_mood(
        self,
        user_id: int,
        chat_id: int | None,
        message_id: int | None,
        label: str,
        score: float,
        *,
        created_at: datetime | None = None,
    ) -> MoodRecord:
        async with self._sessions.begin() as session:
            if message_id is not None:
                await session.execute(
                    self._mood_upsert(user_id, chat_id, message_id, label, score, created_at or utcnow())
                )
                row = await session.scalar(select(MoodRow).where(MoodRow.message_id == message_id))
                assert row is not None
                return _mood(row)
            row = MoodRow(
                user_id=user_id,
                chat_id=chat_id,
                message_id=message_id,
                label=label,
                score=float(score),
                created_at=created_at or utcnow(),
            )
            session.add(row)
            await session.flush()
            return _mood(row)

    def _mood_upsert(
        self, user_id: int, chat_id: int | None, message_id: int, label: str, score: float, at: datetime
    ) -> Any:
        """INSERT … ON CONFLICT (message_id) DO NOTHING: a message keeps its first mood entry."""
        insert = postgresql.insert if self._engine.dialect.name == "postgresql" else sqlite.insert
        return (
            insert(MoodRow)
            .values(
                user_id=user_id,
                chat_id=chat_id,
                message_id=message_id,
                label=label,
                score=float(score),
                created_at=at,
            )
            .on_conflict_do_nothing(index_elements=[MoodRow.message_id])
        )

    @_translated
    async def moods(
        self, user_id: int, since: datetime | None = None, until: datetime | None = None
    ) -> list[MoodRecord]:
        query = select(MoodRow).where(MoodRow.user_id == user_id)
        if since is not None:
            query = query.where(MoodRow.created_at >= since)
        if until is not None:
            query = query.where(MoodRow.created_at < until)
        async with self._sessions() as session:
            rows = await session.scalars(query.order_by(MoodRow.created_at, MoodRow.id))
            return [_mood(row) for row in rows.all()]

    # --- user settings and deletion ------------------------------------------------------------

    @_translated
    async def set_timezone(self, user_id: int, timezone: str) -> None:
        async with self._sessions.begin() as session:
            await session.execute(update(UserRow).where(UserRow.id == user_id).values(timezone=timezone))

    @_translated
    async def set_mood_logging(self, user_id: int, enabled: bool) -> None:
        async with self._sessions.begin() as session:
            await session.execute(update(UserRow).where(UserRow.id == user_id).values(mood_logging=enabled))

    @_translated
    async def forget_user(self, user_id: int) -> dict[str, int]:
        async with self._sessions.begin() as session:
            deleted: dict[str, int] = {}
            for name, table, condition in (
                ("mood_entries", MoodRow, MoodRow.user_id == user_id),
                ("messages", MessageRow, MessageRow.user_id == user_id),
                ("chats", ChatRow, ChatRow.owner_user_id == user_id),
                ("users", UserRow, UserRow.id == user_id),
            ):
                result = await session.execute(delete(table).where(condition))
                deleted[name] = _rowcount(result)
            return deleted

    # --- operators -----------------------------------------------------------------------------

    @_translated
    async def stats(self) -> Stats:
        async with self._sessions() as session:
            users = await session.scalar(select(func.count()).select_from(UserRow))
            chats = await session.scalar(select(func.count()).select_from(ChatRow))
            messages = await session.scalar(select(func.count()).select_from(MessageRow))
            moods = await session.scalar(select(func.count()).select_from(MoodRow))
            crisis = await session.scalar(select(func.count()).select_from(SafetyEventRow))
            day = func.date(MoodRow.created_at)
            per_day = await session.execute(
                select(day, MoodRow.label, func.count())
                .group_by(day, MoodRow.label)
                .order_by(day, MoodRow.label)
            )
            return Stats(
                users=int(users or 0),
                chats=int(chats or 0),
                messages=int(messages or 0),
                mood_entries=int(moods or 0),
                moods_per_day=tuple((str(d), str(label), int(n)) for d, label, n in per_day.all()),
                crisis_replies=int(crisis or 0),
            )

    @_translated
    async def add_safety_event(self, platform: str) -> None:
        async with self._sessions.begin() as session:
            session.add(SafetyEventRow(platform=platform, created_at=utcnow()))
