"""Core commands, parsed and answered here for every platform alike."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot import moodlog
from bot.records import UserRecord
from bot.repository import Repository
from bot.settings import Settings
from bot.types import Action, Attachment, IncomingMessage, Reply, ReplyKind

logger = logging.getLogger(__name__)

_COMMAND = re.compile(r"^/([A-Za-z_]+)(?:@\S+)?(?:\s+(.*))?$", re.DOTALL)

CONFIRM_WINDOW = timedelta(minutes=10)

FORGET_ACTIONS = (
    Action("Yes, delete everything", "/forget confirm"),
    Action("Cancel", "/forget cancel"),
)


@dataclass(frozen=True, slots=True)
class CommandArgument:
    """The one optional argument a command takes: a slash-command option where the platform has
    them. ``choices`` are (label, value) pairs; none: free text."""

    name: str
    description: str
    choices: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One command of the table every platform registers: ``description`` is the short line of a
    slash command, ``menu`` the line of /help and of a command menu (the description by default)."""

    name: str
    description: str
    menu: str = ""
    argument: CommandArgument | None = None

    @property
    def menu_line(self) -> str:
        return self.menu or self.description


PERIODS = (("last 7 days", "7d"), ("last 30 days", "30d"), ("last 90 days", "90d"), ("everything", "all"))
EXPORT_FORMATS = (("CSV and JSON", "csv json"), ("CSV", "csv"), ("JSON", "json"))

#: Every command, in the order /help and the platforms' menus show them.
COMMANDS: tuple[CommandSpec, ...] = (
    CommandSpec("start", "What moodmate does and what it stores"),
    CommandSpec("help", "List the commands"),
    CommandSpec(
        "mood",
        "Your mood summary and chart",
        "Your mood summary and chart: /mood 7d|30d|90d|all",
        CommandArgument("period", "Which days to look at (default: last 7 days)", PERIODS),
    ),
    CommandSpec("reset", "Forget our conversation (keeps your mood log)"),
    CommandSpec("forget", "Delete everything stored about you"),
    CommandSpec(
        "export",
        "Download your messages and mood log",
        "Download your messages and mood log (CSV and JSON)",
        CommandArgument("format", "File format (default: both)", EXPORT_FORMATS),
    ),
    CommandSpec(
        "timezone",
        "Show or set your timezone for mood days",
        "Set your timezone, e.g. /timezone Europe/Berlin",
        CommandArgument("zone", "An IANA timezone such as Europe/Berlin (leave empty to see yours)"),
    ),
    CommandSpec(
        "moodlog",
        "Turn mood logging on or off",
        "Turn mood logging on or off: /moodlog off",
        CommandArgument(
            "state", "on or off (leave empty to see the current setting)", (("on", "on"), ("off", "off"))
        ),
    ),
)

#: Shown by /help and registered as command menus: (name, short description).
COMMAND_MENU: tuple[tuple[str, str], ...] = tuple((spec.name, spec.menu_line) for spec in COMMANDS)

START_TEXT = (
    "Hi {name}, I'm moodmate, a companion you can talk to about anything.\n\n"
    "Every message you send me gets a quick mood read (positive, neutral or negative) and an answer. "
    "What I store: your messages and my replies in this chat (so I remember our conversation), and a "
    "mood log (label, confidence and time) so you can look back at your mood with /mood.\n\n"
    "Mood logging is {logging}. Turn it off any time with /moodlog off. /reset clears our conversation, "
    "/export downloads your data, and /forget deletes everything about you.\n\n"
    "Everything runs on this server's own small language model; nothing is sent to an AI service."
)


@dataclass(frozen=True, slots=True)
class ParsedCommand:
    """``/name@bot args`` split into its name (lower case) and argument text."""

    name: str
    args: str


def parse_command(text: str) -> ParsedCommand | None:
    """The command in ``text``, or None when it is not a command."""
    match = _COMMAND.match(text.strip())
    if match is None:
        return None
    return ParsedCommand(name=match.group(1).lower(), args=(match.group(2) or "").strip())


#: The last line of /help.
NOT_A_CRISIS_SERVICE = (
    "moodmate is not a crisis service: if you are thinking about ending your life or are in danger, "
    "call your local emergency number or a crisis line now (find one at https://findahelpline.com)."
)


def help_text() -> str:
    lines = ["Talk to me about anything; I'll answer and note the mood of each message.", ""]
    lines += [f"/{name} — {description}" for name, description in COMMAND_MENU]
    lines += ["", NOT_A_CRISIS_SERVICE]
    return "\n".join(lines)


Handler = Callable[["CommandContext", UserRecord, IncomingMessage, str], Awaitable[Reply]]


class CommandContext:
    """Answers core commands against the repository."""

    def __init__(self, repository: Repository, settings: Settings, clock: Callable[[], datetime]) -> None:
        self.repository = repository
        self.settings = settings
        self.clock = clock
        self._forget_requests: dict[tuple[str, str], datetime] = {}
        self._handlers: dict[str, Handler] = {
            "start": _start,
            "help": _help,
            "mood": _mood,
            "reset": _reset,
            "forget": _forget,
            "export": _export,
            "timezone": _timezone,
            "moodlog": _moodlog,
            "stats": _stats,
        }

    async def run(self, command: ParsedCommand, message: IncomingMessage) -> Reply:
        handler = self._handlers.get(command.name)
        if handler is None:
            return _command_reply(f"I don't know /{command.name}. " + "Send /help to see what I can do.")
        user = await self.repository.ensure_user(
            message.platform.value, message.user_id, message.display_name
        )
        return await handler(self, user, message, command.args)

    def is_admin(self, message: IncomingMessage) -> bool:
        admins = self.settings.admin_ids
        return f"{message.platform.value}:{message.user_id}" in admins or message.user_id in admins


def _command_reply(
    text: str,
    *,
    attachments: tuple[Attachment, ...] = (),
    actions: tuple[Action, ...] = (),
    private: bool = False,
) -> Reply:
    return Reply(text=text, kind=ReplyKind.COMMAND, attachments=attachments, actions=actions, private=private)


async def _start(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    name = message.display_name or "there"
    return _command_reply(START_TEXT.format(name=name, logging="on" if user.mood_logging else "off"))


async def _help(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    return _command_reply(help_text())


async def _mood(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    try:
        period = moodlog.parse_period(args.split()[0] if args else None)
    except ValueError as error:
        return _command_reply(str(error), private=True)
    tz = moodlog.resolve_timezone(user.timezone)
    now = ctx.clock()
    moods = await ctx.repository.moods(user.id, since=period.fetch_since(now, tz))
    summary = moodlog.summarize(moods, period=period, now=now, tz=tz)
    text = summary.text()
    if not user.mood_logging:
        text += "\n\nMood logging is off for you; send /moodlog on to resume it."
    attachments: tuple[Attachment, ...] = ()
    if not summary.is_empty:
        # Rendering takes about a second: keep it off the event loop.
        png = await asyncio.to_thread(moodlog.render_chart, moods, period=period, now=now, tz=tz)
        if png is not None:
            attachments = (Attachment(f"mood-{period.name}.png", png, "image/png"),)
    return _command_reply(text, attachments=attachments, private=True)


async def _reset(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    chat = await ctx.repository.ensure_chat(
        message.platform.value, message.chat_id, message.chat_is_private, user.id
    )
    await ctx.repository.reset_history(user.id, chat.id)
    return _command_reply("Done: I've forgotten our conversation here. Your mood log is kept (see /mood).")


async def _forget(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    key = (message.platform.value, message.user_id)
    choice = args.lower()
    now = ctx.clock()
    if choice == "cancel":
        ctx._forget_requests.pop(key, None)
        return _command_reply("Okay, nothing was deleted.", private=True)
    if choice == "confirm":
        asked = ctx._forget_requests.pop(key, None)
        if asked is None or now - asked > CONFIRM_WINDOW:
            return _command_reply("Please send /forget first; then confirm within 10 minutes.", private=True)
        deleted = await ctx.repository.forget_user(user.id)
        logger.info("Forgot a user on request (%d rows)", sum(deleted.values()))
        return _command_reply(
            "Everything I stored about you is deleted: your messages, my replies, your mood log "
            "and your settings. If you talk to me again, I'll start fresh.",
            private=True,
        )
    ctx._forget_requests[key] = now
    return _command_reply(
        "This deletes everything I store about you, in every chat: messages, replies, mood log and "
        "settings. It cannot be undone. Are you sure? (You can also send /forget confirm.)",
        actions=FORGET_ACTIONS,
        private=True,
    )


async def _export(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    wanted = args.lower().split()
    formats = [fmt for fmt in ("csv", "json") if not wanted or fmt in wanted]
    if not formats:
        return _command_reply("Use /export, /export csv or /export json.", private=True)
    tz = moodlog.resolve_timezone(user.timezone)
    messages = await ctx.repository.messages_for_user(user.id)
    moods = await ctx.repository.moods(user.id)
    stamp = ctx.clock().strftime("%Y%m%d")
    attachments = []
    if "csv" in formats:
        attachments.append(
            Attachment(
                f"moodmate-export-{stamp}.csv", moodlog.export_csv(user, messages, moods, tz), "text/csv"
            )
        )
    if "json" in formats:
        attachments.append(
            Attachment(
                f"moodmate-export-{stamp}.json",
                moodlog.export_json(user, messages, moods, tz),
                "application/json",
            )
        )
    return _command_reply(
        f"Here is your data: {len(messages)} messages and {len(moods)} mood entries.",
        attachments=tuple(attachments),
        private=True,
    )


async def _timezone(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    if not args:
        return _command_reply(
            f"Your timezone is {user.timezone}. "
            "Change it with /timezone Area/City, e.g. /timezone Europe/Berlin.",
            private=True,
        )
    try:
        zone = moodlog.resolve_timezone(args.split()[0])
    except ValueError as error:
        return _command_reply(str(error), private=True)
    await ctx.repository.set_timezone(user.id, zone.key)
    return _command_reply(f"Timezone set to {zone.key}; your mood days now follow it.", private=True)


async def _moodlog(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    choice = args.lower()
    if choice not in ("on", "off"):
        state = "on" if user.mood_logging else "off"
        return _command_reply(f"Mood logging is {state}. Use /moodlog on or /moodlog off.", private=True)
    await ctx.repository.set_mood_logging(user.id, choice == "on")
    if choice == "off":
        return _command_reply(
            "Mood logging is off: I'll keep chatting, but I won't log moods. /moodlog on resumes it.",
            private=True,
        )
    return _command_reply("Mood logging is on again.", private=True)


async def _stats(ctx: CommandContext, user: UserRecord, message: IncomingMessage, args: str) -> Reply:
    if not ctx.is_admin(message):
        return _command_reply("Sorry, /stats is only for this bot's operators.", private=True)
    stats = await ctx.repository.stats()
    return _command_reply(
        f"users {stats.users}, chats {stats.chats}, messages {stats.messages}, "
        f"mood entries {stats.mood_entries}, crisis replies {stats.crisis_replies}",
        private=True,
    )
