"""A fake Discord REST API and gateway on 127.0.0.1, for driving real discord.py in tests.

It follows the real API's shapes (snowflakes as strings, ISO-8601 timestamps, ``application/json``
exactly on JSON responses) closely enough for discord.py 2.x to log in, identify, cache a guild,
receive injected ``MESSAGE_CREATE`` / ``INTERACTION_CREATE`` events and send its answers back.

REST lives under ``/api/v10`` (``api_base_url``); the gateway is a websocket at ``/gateway``
(``gateway_url``) that honours ``encoding=json`` and ``compress=zlib-stream`` (one zlib context
per connection, every payload flushed with ``Z_SYNC_FLUSH``, as Discord does). Every REST call is
recorded as a :class:`RecordedRequest`; tests wait for the ones they expect with :meth:`wait_for`.
Bot messages can be edited (``PATCH /channels/{id}/messages/{id}``: JSON or multipart body, the full
message object back) and deleted; :meth:`sent_messages` and :meth:`message_edits` list the successful
posts and edits. :meth:`rate_limit` and :meth:`fail` make chosen calls answer 429 or another error.

Usage::

    async with FakeDiscordServer() as fake:
        guild = fake.add_guild("Cafe", channels=("general", "random"))
        alice = fake.add_user("alice", guilds=(guild,))
        settings = Settings(discord_token=fake.token, discord_api_base_url=fake.api_base_url,
                            discord_gateway_url=fake.gateway_url, ...)
        ...  # start the bot
        await fake.send_message(guild.channels["general"], alice, f"<@{fake.bot.id}> hi")
        request = await fake.wait_for(lambda r: r.is_message_post)
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
MESSAGE_CONTENT_INTENT = 1 << 15
PRIVILEGED_INTENTS = (1 << 1) | (1 << 8) | MESSAGE_CONTENT_INTENT  # members, presences, content
EPHEMERAL_FLAG = 1 << 6
ZLIB_SUFFIX = b"\x00\x00\xff\xff"

# Gateway opcodes (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME = 0, 1, 2, 6
OP_RECONNECT, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 7, 9, 10, 11

_snowflake_counter = itertools.count()


def snowflake() -> str:
    """A fresh, time-ordered Discord snowflake, as the API sends it: a decimal string."""
    millis = int(time.time() * 1000) - DISCORD_EPOCH_MS
    return str((millis << 22) | (next(_snowflake_counter) % 4096))


def iso_now() -> str:
    return datetime.now(UTC).isoformat()


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response whose Content-Type is exactly ``application/json`` (discord.py checks equality)."""
    merged = {"Content-Type": "application/json"}
    merged.update(headers or {})
    return web.Response(status=status, body=json.dumps(payload).encode(), headers=merged)


def error_response(
    status: int, code: int, message: str, errors: Mapping[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"message": message, "code": code}
    if errors:
        body["errors"] = errors
    return json_response(body, status)


# --------------------------------------------------------------------------------------------
# Model objects


@dataclass
class FakeUser:
    id: str
    username: str
    global_name: str | None = None
    bot: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclass
class FakeRole:
    id: str
    name: str
    permissions: str = "0"
    bot_id: str | None = None

    def to_api(self, position: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": self.permissions,
            "managed": self.bot_id is not None,
            "mentionable": True,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": self.bot_id}
        return data


@dataclass
class FakeGuild:
    id: str
    name: str
    channels: dict[str, str] = field(default_factory=dict)  # name -> channel id
    roles: list[FakeRole] = field(default_factory=list)
    members: dict[str, FakeUser] = field(default_factory=dict)
    member_roles: dict[str, list[str]] = field(default_factory=dict)
    owner_id: str = ""
    joined_at: str = field(default_factory=iso_now)

    def member_api(self, user: FakeUser, *, with_user: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": list(self.member_roles.get(user.id, [])),
            "joined_at": self.joined_at,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        if with_user:
            data["user"] = user.to_api()
        return data

    def channel_api(self, name: str, position: int) -> dict[str, Any]:
        return {
            "id": self.channels[name],
            "type": 0,
            "guild_id": self.id,
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "nsfw": False,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "flags": 0,
        }

    def to_guild_create(self) -> dict[str, Any]:
        """The GUILD_CREATE payload: a full guild plus the gateway-only extra fields."""
        return {
            "id": self.id,
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": self.owner_id,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "roles": [role.to_api(index) for index, role in enumerate(self.roles)],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "max_members": 500000,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "safety_alerts_channel_id": None,
            # GUILD_CREATE extras:
            "joined_at": self.joined_at,
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [self.member_api(user) for user in self.members.values()],
            "channels": [self.channel_api(name, index) for index, name in enumerate(self.channels)],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass
class RecordedRequest:
    """One REST call the client made. ``payload`` is the JSON body or the multipart ``payload_json``."""

    method: str
    path: str  # relative to /api/v10, e.g. "/channels/123/messages"
    query: dict[str, str]
    payload: Any
    files: list[RecordedFile]
    headers: dict[str, str]
    status: int = 0
    response: Any = None  # the JSON the fake answered, if any
    received_at: float = 0.0  # time.monotonic() when the request arrived

    @property
    def is_message_post(self) -> bool:
        return self.method == "POST" and re.fullmatch(r"/channels/\d+/messages", self.path) is not None

    @property
    def is_message_edit(self) -> bool:
        """An edit of a channel message (``PATCH /channels/{channel_id}/messages/{message_id}``)."""
        return self.method == "PATCH" and re.fullmatch(r"/channels/\d+/messages/\d+", self.path) is not None

    @property
    def message_id(self) -> str | None:
        """The message a ``/channels/{channel_id}/messages/{message_id}`` request is about."""
        match = re.fullmatch(r"/channels/\d+/messages/(\d+)", self.path)
        return match.group(1) if match else None

    @property
    def channel_id(self) -> str | None:
        match = re.match(r"/channels/(\d+)", self.path)
        return match.group(1) if match else None

    @property
    def content(self) -> str | None:
        return self.payload.get("content") if isinstance(self.payload, dict) else None


@dataclass
class RecordedFile:
    field_name: str
    filename: str
    content_type: str
    data: bytes


@dataclass
class _FailureRule:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    status: int
    code: int
    message: str


@dataclass
class _RateLimitRule:
    method: str
    pattern: re.Pattern[str]
    remaining: int
    retry_after: float
    is_global: bool
    scope: str


class _GatewayConnection:
    """One websocket client: its compression context and sequence counter."""

    def __init__(self, ws: web.WebSocketResponse, compress: bool) -> None:
        self.ws = ws
        self.compressor = zlib.compressobj() if compress else None
        self.sequence = 0
        self.session_id = secrets.token_hex(16)
        self.identified = False
        self.lock = asyncio.Lock()

    async def send(self, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload)
        async with self.lock:
            if self.compressor is None:
                await self.ws.send_str(raw)
            else:
                data = self.compressor.compress(raw.encode()) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
                assert data.endswith(ZLIB_SUFFIX)
                await self.ws.send_bytes(data)

    async def dispatch(self, event: str, data: Any) -> int:
        async with self.lock:
            self.sequence += 1
            sequence = self.sequence
        await self.send({"op": OP_DISPATCH, "s": sequence, "t": event, "d": data})
        return sequence


# --------------------------------------------------------------------------------------------
# The server


class FakeDiscordServer:
    """Fake Discord: REST under ``/api/v10`` and a gateway websocket, on an ephemeral loopback port."""

    def __init__(
        self,
        *,
        token: str | None = None,
        bot_name: str = "moodmate",
        heartbeat_interval_ms: int = 41250,
        privileged_intents_enabled: bool = True,
    ) -> None:
        self.token = token or f"fake.{secrets.token_urlsafe(12)}.{secrets.token_urlsafe(20)}"
        self.bot = FakeUser(snowflake(), bot_name, None, bot=True)
        self.application_id = self.bot.id  # as for bots created since 2020: application id == bot id
        self.owner = FakeUser(snowflake(), "owner")
        self.heartbeat_interval_ms = heartbeat_interval_ms
        #: False simulates a bot whose Message Content intent is not enabled in the portal (close 4014).
        self.privileged_intents_enabled = privileged_intents_enabled
        #: False answers interaction callbacks with 204 even when ``with_response`` is asked for.
        self.callback_bodies = True
        self.users: dict[str, FakeUser] = {self.bot.id: self.bot, self.owner.id: self.owner}
        self.guilds: dict[str, FakeGuild] = {}
        self.dm_channels: dict[str, str] = {}  # user id -> DM channel id
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[RecordedRequest] = []
        self.messages: dict[str, dict[str, Any]] = {}  # every message by id (sent by anyone)
        self.commands: dict[str | None, list[dict[str, Any]]] = {}  # guild id (None = global) -> commands
        self.interactions: dict[str, dict[str, Any]] = {}  # token -> state
        self.identify_payloads: list[dict[str, Any]] = []
        self.resume_payloads: list[dict[str, Any]] = []
        self.identify_count = 0  # successful IDENTIFYs (READY sent)
        self._sessions: dict[str, int] = {}  # session id -> last sequence sent
        self.heartbeats = 0
        self.connection_queries: list[dict[str, str]] = []
        self._rate_limits: list[_RateLimitRule] = []
        self._failures: list[_FailureRule] = []
        #: (method, path pattern, how many more): requests acted on whose answer is then lost.
        self._lost_answers: list[list[Any]] = []
        #: (channel id, nonce) -> id of the message created with that nonce (for enforce_nonce).
        self._nonces: dict[tuple[str, str], str] = {}
        self._connection: _GatewayConnection | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port = 0

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._connection is not None and not self._connection.ws.closed:
            await self._connection.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscordServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def api_base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}{API_PREFIX}"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self._port}/gateway"

    # -- world building ------------------------------------------------------------------------

    def add_guild(self, name: str, channels: Iterable[str] = ("general",)) -> FakeGuild:
        guild_id = snowflake()
        guild = FakeGuild(id=guild_id, name=name, owner_id=self.owner.id)
        guild.roles.append(FakeRole(guild_id, "@everyone", permissions="1071698660929"))
        bot_role = FakeRole(snowflake(), self.bot.username, permissions="277025770560", bot_id=self.bot.id)
        guild.roles.append(bot_role)
        for channel_name in channels:
            guild.channels[channel_name] = snowflake()
        guild.members[self.bot.id] = self.bot
        guild.member_roles[self.bot.id] = [bot_role.id]
        guild.members[self.owner.id] = self.owner
        self.guilds[guild_id] = guild
        return guild

    def add_user(
        self,
        username: str,
        *,
        guilds: Iterable[FakeGuild] = (),
        bot: bool = False,
        global_name: str | None = None,
    ) -> FakeUser:
        user = FakeUser(snowflake(), username, global_name, bot=bot)
        self.users[user.id] = user
        for guild in guilds:
            guild.members[user.id] = user
        return user

    def dm_channel_id(self, user: FakeUser) -> str:
        if user.id not in self.dm_channels:
            self.dm_channels[user.id] = snowflake()
        return self.dm_channels[user.id]

    def guild_of_channel(self, channel_id: str) -> FakeGuild | None:
        for guild in self.guilds.values():
            if channel_id in guild.channels.values():
                return guild
        return None

    # -- rate limits ---------------------------------------------------------------------------

    def rate_limit(
        self,
        method: str,
        path_pattern: str,
        *,
        times: int = 1,
        retry_after: float = 0.2,
        is_global: bool = False,
        scope: str = "user",
    ) -> None:
        """Answer the next ``times`` matching calls with a real-looking 429."""
        self._rate_limits.append(
            _RateLimitRule(method.upper(), re.compile(path_pattern), times, retry_after, is_global, scope)
        )

    def _take_rate_limit(self, method: str, path: str) -> _RateLimitRule | None:
        for rule in self._rate_limits:
            if rule.remaining > 0 and rule.method == method and rule.pattern.fullmatch(path):
                rule.remaining -= 1
                return rule
        return None

    @staticmethod
    def _rate_limit_response(rule: _RateLimitRule) -> web.Response:
        reset = time.time() + rule.retry_after
        headers = {
            "Retry-After": str(max(1, int(rule.retry_after + 0.999))),
            "X-RateLimit-Scope": "global" if rule.is_global else rule.scope,
            "Via": "1.1 google",
        }
        if rule.is_global:
            headers["X-RateLimit-Global"] = "true"  # sent only for the global limit
        else:
            headers.update(
                {
                    "X-RateLimit-Limit": "5",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{reset:.3f}",
                    "X-RateLimit-Reset-After": f"{rule.retry_after:.3f}",
                    "X-RateLimit-Bucket": "fakebucket" + str(abs(hash(rule.pattern.pattern)) % 10**8),
                }
            )
        body = {
            "message": "You are being rate limited.",
            "retry_after": rule.retry_after,
            "global": rule.is_global,
        }
        if rule.is_global:
            body["code"] = 0
        return json_response(body, 429, headers)

    def fail(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 404,
        code: int = 10008,
        message: str = "Unknown Message",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching calls with a Discord error (default: Unknown Message)."""
        self._failures.append(
            _FailureRule(method.upper(), re.compile(path_pattern), times, status, code, message)
        )

    def lose_answers(self, method: str, path_pattern: str, *, times: int = 1) -> None:
        """Act on the next ``times`` matching calls, then close the connection without answering
        (the client sees a network error, as when Discord's answer is lost on its way back)."""
        self._lost_answers.append([method.upper(), re.compile(path_pattern), times])

    def _take_lost_answer(self, method: str, path: str) -> bool:
        for rule in self._lost_answers:
            if rule[2] > 0 and rule[0] == method and rule[1].fullmatch(path):
                rule[2] -= 1
                return True
        return False

    def _take_failure(self, method: str, path: str) -> web.Response | None:
        for rule in self._failures:
            if rule.remaining > 0 and rule.method == method and rule.pattern.fullmatch(path):
                rule.remaining -= 1
                return error_response(rule.status, rule.code, rule.message)
        return None

    # -- waiting -------------------------------------------------------------------------------

    async def _record(self, request: RecordedRequest) -> None:
        async with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[RecordedRequest], bool], *, count: int = 1, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """Wait until ``count`` recorded successful requests match; returns them in order."""

        def matching() -> list[RecordedRequest]:
            return [r for r in self.requests if r.status < 400 and predicate(r)]

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(matching()) >= count)
        return matching()[:count]

    async def wait_ready(self, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            await self._ready.wait()

    def sent_messages(self, channel_id: str | None = None) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if r.is_message_post and r.status < 400 and (channel_id is None or r.channel_id == channel_id)
        ]

    def message_edits(
        self, channel_id: str | None = None, message_id: str | None = None
    ) -> list[RecordedRequest]:
        """The successful ``PATCH /channels/{channel_id}/messages/{message_id}`` calls, in order."""
        return [
            r
            for r in self.requests
            if r.is_message_edit
            and r.status < 400
            and (channel_id is None or r.channel_id == channel_id)
            and (message_id is None or r.message_id == message_id)
        ]

    # -- gateway ------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        query = dict(request.query)
        self.connection_queries.append(query)
        if query.get("encoding", "json") != "json":
            await ws.close(code=4002, message=b"Only JSON encoding is supported by this fake.")
            return ws
        # zstd-stream is not implemented: Discord then answers uncompressed text frames (discord.py
        # reads those too). zlib-stream is what discord.py asks for when zstandard is not installed.
        connection = _GatewayConnection(ws, compress=query.get("compress") == "zlib-stream")
        self._connection = connection
        await connection.send(
            {"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None}
        )
        async for message in ws:
            if message.type is not WSMsgType.TEXT:
                if message.type is WSMsgType.BINARY:
                    await ws.close(code=4002, message=b"Binary payloads are not expected.")
                break
            try:
                payload = json.loads(message.data)
            except ValueError:
                await ws.close(code=4002, message=b"Error while decoding payload.")
                break
            await self._on_gateway_payload(connection, payload)
        if self._connection is connection:
            self._ready.clear()
        return ws

    async def _on_gateway_payload(self, connection: _GatewayConnection, payload: dict[str, Any]) -> None:
        op = payload.get("op")
        data = payload.get("d")
        if op == OP_HEARTBEAT:
            self.heartbeats += 1
            await connection.send({"op": OP_HEARTBEAT_ACK})
        elif op == OP_IDENTIFY:
            await self._identify(connection, data or {})
        elif op == OP_RESUME:
            await self._resume(connection, data or {})
        elif op in (3, 4, 8, 31):  # presence, voice state, request members, request soundboard
            return
        else:
            await connection.ws.close(code=4001, message=b"Unknown opcode.")

    async def _resume(self, connection: _GatewayConnection, data: dict[str, Any]) -> None:
        """Resume a session this fake knows (events sent while disconnected are not replayed)."""
        self.resume_payloads.append(data)
        if connection.identified:
            await connection.ws.close(code=4005, message=b"Already authenticated.")
            return
        if data.get("token") != self.token:
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        sequence = self._sessions.get(str(data.get("session_id")))
        if sequence is None:
            # An unknown session: Discord answers INVALID_SESSION (d=false: do not resume, identify).
            await connection.send({"op": OP_INVALID_SESSION, "d": False, "s": None, "t": None})
            return
        connection.session_id = str(data["session_id"])
        connection.sequence = sequence
        connection.identified = True
        await connection.dispatch("RESUMED", {})
        self._ready.set()

    async def _identify(self, connection: _GatewayConnection, data: dict[str, Any]) -> None:
        self.identify_payloads.append(data)
        if connection.identified:
            await connection.ws.close(code=4005, message=b"Already authenticated.")
            return
        if data.get("token") != self.token:
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents", 0))
        if intents & PRIVILEGED_INTENTS and not self.privileged_intents_enabled:
            await connection.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        connection.identified = True
        ready = {
            "v": 10,
            "user": {**self.bot.to_api(), "verified": True, "mfa_enabled": False, "email": None},
            "guilds": [{"id": guild_id, "unavailable": True} for guild_id in self.guilds],
            "session_id": connection.session_id,
            "resume_gateway_url": self.gateway_url,
            "session_type": "normal",
            "shard": [0, 1],
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "user_settings": {},
            "relationships": [],
            "presences": [],
            "geo_ordered_rtc_regions": [],
            "guild_join_requests": [],
            "_trace": ['["fake-gateway",{"micros":0}]'],
        }
        await connection.dispatch("READY", ready)
        for guild in self.guilds.values():
            await connection.dispatch("GUILD_CREATE", guild.to_guild_create())
        self._sessions[connection.session_id] = connection.sequence
        self.identify_count += 1
        self._ready.set()

    @property
    def connected(self) -> bool:
        """Whether a client holds an open gateway connection."""
        return self._connection is not None and not self._connection.ws.closed

    async def dispatch(self, event: str, data: Any) -> int:
        """Send a DISPATCH event to the connected client; returns its sequence number."""
        if self._connection is None or not self._connection.identified:
            raise RuntimeError("no identified gateway connection")
        sequence = await self._connection.dispatch(event, data)
        self._sessions[self._connection.session_id] = sequence
        return sequence

    async def close_gateway(self, code: int = 4000, *, forget_sessions: bool = False) -> None:
        """Drop the gateway connection with ``code`` (4000: "unknown error", which clients resume).

        ``forget_sessions`` makes the next RESUME fail with INVALID_SESSION, forcing a new IDENTIFY.
        """
        self._ready.clear()
        if forget_sessions:
            self._sessions.clear()
        if self._connection is not None:
            await self._connection.ws.close(code=code)

    # -- injected events -----------------------------------------------------------------------

    def _mentions(self, content: str, guild: FakeGuild | None) -> tuple[list[dict[str, Any]], list[str]]:
        users: list[dict[str, Any]] = []
        for user_id in dict.fromkeys(re.findall(r"<@!?(\d+)>", content)):
            user = self.users.get(user_id)
            if user is None:
                continue
            data = user.to_api()
            if guild is not None and user_id in guild.members:
                data["member"] = guild.member_api(user, with_user=False)
            users.append(data)
        roles = list(dict.fromkeys(re.findall(r"<@&(\d+)>", content)))
        return users, roles

    def create_message(self, channel_id: str, author: FakeUser, content: str) -> dict[str, Any]:
        """A message already in the channel's history, never announced on the gateway."""
        return self._message_object(
            channel_id=channel_id, author=author, content=content, parse_mentions=False
        )

    def _message_object(
        self,
        *,
        channel_id: str,
        author: FakeUser,
        content: str,
        reply_to: Mapping[str, Any] | None = None,
        components: list[Any] | None = None,
        attachments: list[dict[str, Any]] | None = None,
        flags: int = 0,
        parse_mentions: bool = True,
        webhook_id: str | None = None,
    ) -> dict[str, Any]:
        guild = self.guild_of_channel(channel_id)
        mentions, mention_roles = self._mentions(content, guild) if parse_mentions else ([], [])
        message: dict[str, Any] = {
            "id": snowflake(),
            "channel_id": channel_id,
            "author": author.to_api(),
            "content": content,
            "timestamp": iso_now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": parse_mentions and ("@everyone" in content or "@here" in content),
            "mentions": mentions,
            "mention_roles": mention_roles,
            "attachments": attachments or [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": flags,
            "components": components or [],
        }
        if webhook_id is not None:
            message["webhook_id"] = webhook_id
        if reply_to is not None:
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                **({"guild_id": guild.id} if guild else {}),
            }
            message["referenced_message"] = dict(reply_to)
        self.messages[message["id"]] = message
        return message

    async def send_message(
        self,
        channel_id: str,
        author: FakeUser,
        content: str,
        *,
        reply_to: Mapping[str, Any] | None = None,
        include_referenced_message: bool = True,
    ) -> dict[str, Any]:
        """Inject a MESSAGE_CREATE from ``author`` in a guild channel or a DM channel id.

        Discord may leave ``referenced_message`` out of a reply (when it did not fetch it);
        ``include_referenced_message=False`` does the same.
        """
        message = self._message_object(
            channel_id=channel_id, author=author, content=content, reply_to=reply_to
        )
        event = dict(message)
        if not include_referenced_message:
            event.pop("referenced_message", None)
        guild = self.guild_of_channel(channel_id)
        if guild is not None:
            event["guild_id"] = guild.id
            event["member"] = guild.member_api(author, with_user=False)
        await self.dispatch("MESSAGE_CREATE", event)
        return message

    async def send_dm(self, author: FakeUser, content: str) -> dict[str, Any]:
        return await self.send_message(self.dm_channel_id(author), author, content)

    def _interaction_base(self, kind: int, user: FakeUser, channel_id: str) -> dict[str, Any]:
        guild = self.guild_of_channel(channel_id)
        token = "aW50ZXJhY3Rpb24" + secrets.token_urlsafe(48)
        interaction: dict[str, Any] = {
            "id": snowflake(),
            "application_id": self.application_id,
            "type": kind,
            "token": token,
            "version": 1,
            "channel_id": channel_id,
            "locale": "en-US",
            "app_permissions": "2248473465835073",
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild.id} if guild else {"1": user.id},
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild is not None:
            interaction["guild_id"] = guild.id
            interaction["guild"] = {"id": guild.id, "locale": "en-US", "features": []}
            interaction["guild_locale"] = "en-US"
            name = next(n for n, cid in guild.channels.items() if cid == channel_id)
            interaction["channel"] = guild.channel_api(name, 0)
            member = guild.member_api(user)
            member["permissions"] = "1071698660929"
            interaction["member"] = member
            interaction["context"] = 0
        else:
            interaction["channel"] = {
                "id": channel_id,
                "type": 1,
                "last_message_id": None,
                "flags": 0,
                "recipients": [user.to_api()],
            }
            interaction["user"] = user.to_api()
            interaction["context"] = 1
        self.interactions[token] = {
            "id": interaction["id"],
            "type": kind,
            "channel_id": channel_id,
            "callback": None,
            "original": None,
            "user": user,
        }
        return interaction

    def find_command(self, name: str, guild_id: str | None = None) -> dict[str, Any]:
        for scope in (guild_id, None):
            for command in self.commands.get(scope, []):
                if command["name"] == name:
                    return command
        raise KeyError(f"command /{name} was never synced")

    async def invoke_command(
        self, name: str, user: FakeUser, channel_id: str, options: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Inject an INTERACTION_CREATE for a synced slash command; returns the interaction."""
        guild = self.guild_of_channel(channel_id)
        command = self.find_command(name, guild.id if guild else None)
        declared = {option["name"]: option for option in command.get("options", [])}
        interaction = self._interaction_base(2, user, channel_id)
        data: dict[str, Any] = {"id": command["id"], "name": name, "type": 1}
        if options:
            data["options"] = [
                {"name": key, "type": declared[key]["type"], "value": value} for key, value in options.items()
            ]
        if guild is not None:
            data["guild_id"] = guild.id
        interaction["data"] = data
        await self.dispatch("INTERACTION_CREATE", interaction)
        return interaction

    async def click_button(
        self, message: Mapping[str, Any], custom_id: str, user: FakeUser
    ) -> dict[str, Any]:
        """Inject the component interaction of ``user`` pressing a button on ``message``."""
        buttons = [
            component
            for row in message.get("components", [])
            for component in row.get("components", [])
            if component.get("type") == 2
        ]
        if not any(button.get("custom_id") == custom_id for button in buttons):
            raise KeyError(f"message has no button with custom_id {custom_id!r}")
        interaction = self._interaction_base(3, user, message["channel_id"])
        interaction["data"] = {"custom_id": custom_id, "component_type": 2}
        interaction["message"] = dict(message)
        # For a component interaction, "@original" is the message the button is attached to.
        self.interactions[interaction["token"]]["original"] = self.messages.get(message["id"], dict(message))
        await self.dispatch("INTERACTION_CREATE", interaction)
        return interaction

    # -- REST ----------------------------------------------------------------------------------

    async def _read_body(self, request: web.Request) -> tuple[Any, list[RecordedFile]]:
        content_type = request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/"):
            payload: Any = None
            files: list[RecordedFile] = []
            reader = await request.multipart()
            async for part in reader:
                if part.name == "payload_json":  # type: ignore[union-attr]
                    payload = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    data = await part.read()  # type: ignore[union-attr]
                    files.append(
                        RecordedFile(
                            part.name or "",  # type: ignore[union-attr]
                            part.filename or "",  # type: ignore[union-attr]
                            part.headers.get("Content-Type", ""),
                            bytes(data),
                        )
                    )
            return payload, files
        raw = await request.read()
        if not raw:
            return None, []
        return json.loads(raw), []

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        method = request.method.upper()
        payload, files = await self._read_body(request)
        recorded = RecordedRequest(
            method=method,
            path=path,
            query=dict(request.query),
            payload=payload,
            files=files,
            headers=dict(request.headers),
            received_at=time.monotonic(),
        )
        rule = self._take_rate_limit(method, path)
        failure = self._take_failure(method, path) if rule is None else None
        if rule is not None:
            response = self._rate_limit_response(rule)
        elif failure is not None:
            response = failure
        else:
            response = await self._route(method, path, recorded, request)
            if response.status < 300 and "X-RateLimit-Limit" not in response.headers:
                response.headers.update(self._ratelimit_headers(method, path))
        recorded.status = response.status
        if response.content_type == "application/json" and isinstance(response.body, bytes):
            recorded.response = json.loads(response.body)
        await self._record(recorded)
        if rule is None and failure is None and self._take_lost_answer(method, path):
            assert request.transport is not None
            request.transport.close()  # done, but the answer never arrives
        return response

    @staticmethod
    def _ratelimit_headers(method: str, path: str) -> dict[str, str]:
        route_key = re.sub(r"\d{5,}", "{id}", f"{method} {path}")
        return {
            "X-RateLimit-Limit": "50",
            "X-RateLimit-Remaining": "49",
            "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
            "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": f"{abs(hash(route_key)) % 10**12:x}",
        }

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bot {self.token}"

    async def _route(
        self, method: str, path: str, recorded: RecordedRequest, request: web.Request
    ) -> web.Response:
        # Interaction callbacks and webhook follow-ups authenticate with the interaction token only.
        match = re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path)
        if match and method == "POST":
            return self._interaction_callback(match.group(1), match.group(2), recorded)
        match = re.fullmatch(r"/webhooks/(\d+)/([^/]+)(?:/messages/(@original|\d+))?", path)
        if match:
            return self._webhook(method, match.group(2), match.group(3), recorded)

        if not self._authorized(request):
            return error_response(401, 0, "401: Unauthorized")

        if method == "GET" and path == "/users/@me":
            return json_response({**self.bot.to_api(), "verified": True, "mfa_enabled": False, "email": None})
        if method == "GET" and path == "/oauth2/applications/@me":
            return json_response(self._application())
        if method == "GET" and path == "/gateway":
            return json_response({"url": self.gateway_url})
        if method == "GET" and path == "/gateway/bot":
            return json_response(
                {
                    "url": self.gateway_url,
                    "shards": 1,
                    "session_start_limit": {
                        "total": 1000,
                        "remaining": 999,
                        "reset_after": 86_400_000,
                        "max_concurrency": 1,
                    },
                }
            )
        match = re.fullmatch(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path)
        if match and method == "PUT":
            return self._sync_commands(match.group(1), match.group(2), recorded.payload)
        if match and method == "GET":
            return json_response(self.commands.get(match.group(2), []))
        match = re.fullmatch(r"/channels/(\d+)/messages", path)
        if match and method == "POST":
            return self._create_message(match.group(1), recorded)
        match = re.fullmatch(r"/channels/(\d+)/messages/(\d+)", path)
        if match:
            return self._existing_message(method, match.group(1), match.group(2), recorded)
        match = re.fullmatch(r"/channels/(\d+)/typing", path)
        if match and method == "POST":
            return web.Response(status=204)
        if method == "POST" and path == "/users/@me/channels":
            user = self.users.get(str((recorded.payload or {}).get("recipient_id")))
            if user is None:
                return error_response(400, 50035, "Invalid Form Body")
            return json_response(
                {
                    "id": self.dm_channel_id(user),
                    "type": 1,
                    "last_message_id": None,
                    "flags": 0,
                    "recipients": [user.to_api()],
                }
            )
        match = re.fullmatch(r"/guilds/(\d+)/members/(\d+)", path)
        if match and method == "GET":
            guild = self.guilds.get(match.group(1))
            if guild is None:
                return error_response(404, 10004, "Unknown Guild")
            member = guild.members.get(match.group(2))
            if member is None:
                return error_response(404, 10007, "Unknown Member")
            return json_response(guild.member_api(member))
        self.unknown_routes.append(recorded)
        return error_response(404, 0, "404: Not Found")

    def _application(self) -> dict[str, Any]:
        return {
            "id": self.application_id,
            "name": self.bot.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": secrets.token_hex(32),
            "owner": self.owner.to_api(),
            "team": None,
            "flags": 0,
            "bot": self.bot.to_api(),
            "approximate_guild_count": len(self.guilds),
            "interactions_endpoint_url": None,
            "redirect_uris": [],
            "tags": [],
            "integration_types_config": {"0": {}, "1": {}},
        }

    def _sync_commands(self, application_id: str, guild_id: str | None, payload: Any) -> web.Response:
        if application_id != self.application_id:
            return error_response(403, 50001, "Missing Access")
        if not isinstance(payload, list):
            return error_response(400, 50035, "Invalid Form Body")
        existing = {command["name"]: command for command in self.commands.get(guild_id, [])}
        synced = []
        for command in payload:
            if (
                not re.fullmatch(r"[-_\w]{1,32}", command.get("name", ""))
                or command["name"].lower() != command["name"]
            ):
                return error_response(400, 50035, "Invalid Form Body", {"name": command.get("name")})
            if not 1 <= len(command.get("description", "")) <= 100:
                return error_response(400, 50035, "Invalid Form Body", {"description": command.get("name")})
            previous = existing.get(command["name"])
            stored = {
                "id": previous["id"] if previous else snowflake(),
                "application_id": self.application_id,
                "version": snowflake(),
                "type": command.get("type", 1),
                "name": command["name"],
                "description": command.get("description", ""),
                "options": command.get("options", []),
                "default_member_permissions": command.get("default_member_permissions"),
                "dm_permission": command.get("dm_permission", True),
                "contexts": command.get("contexts"),
                "integration_types": command.get("integration_types", [0]),
                "nsfw": command.get("nsfw", False),
            }
            if guild_id is not None:
                stored["guild_id"] = guild_id
            synced.append(stored)
        self.commands[guild_id] = synced
        return json_response(synced)

    @staticmethod
    def _validate_message(
        payload: Any, files: list[RecordedFile], *, editing: bool = False
    ) -> web.Response | None:
        if not isinstance(payload, dict):
            payload = {}
        content = payload.get("content")
        if content is not None and len(content) > 2000:
            return error_response(
                400,
                50035,
                "Invalid Form Body",
                {
                    "content": {
                        "_errors": [
                            {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
                        ]
                    }
                },
            )
        if (
            not editing
            and not content
            and not files
            and not payload.get("embeds")
            and not payload.get("components")
        ):
            return error_response(400, 50006, "Cannot send an empty message")
        return None

    def _attachments(self, channel_id: str, files: list[RecordedFile]) -> list[dict[str, Any]]:
        result = []
        for file in files:
            attachment_id = snowflake()
            url = f"http://127.0.0.1:{self._port}/attachments/{channel_id}/{attachment_id}/{file.filename}"
            result.append(
                {
                    "id": attachment_id,
                    "filename": file.filename,
                    "size": len(file.data),
                    "url": url,
                    "proxy_url": url,
                    "content_type": file.content_type,
                }
            )
        return result

    def _bot_message(
        self,
        channel_id: str,
        payload: dict[str, Any],
        files: list[RecordedFile],
        *,
        webhook_id: str | None = None,
    ) -> dict[str, Any]:
        reference = payload.get("message_reference")
        reply_to = self.messages.get(str(reference["message_id"])) if reference else None
        message = self._message_object(
            channel_id=channel_id,
            author=self.bot,
            content=payload.get("content") or "",
            reply_to=reply_to,
            components=payload.get("components"),
            attachments=self._attachments(channel_id, files),
            flags=int(payload.get("flags") or 0),
            parse_mentions=False,
            webhook_id=webhook_id,
        )
        guild = self.guild_of_channel(channel_id)
        if guild is not None:
            message["guild_id"] = guild.id
        return message

    def _create_message(self, channel_id: str, recorded: RecordedRequest) -> web.Response:
        known = self.guild_of_channel(channel_id) is not None or channel_id in self.dm_channels.values()
        if not known:
            return error_response(404, 10003, "Unknown Channel")
        invalid = self._validate_message(recorded.payload, recorded.files)
        if invalid is not None:
            return invalid
        payload = recorded.payload or {}
        nonce = payload.get("nonce")
        if nonce is not None and payload.get("enforce_nonce"):
            # Discord: a message with the same nonce from the same author in the past few minutes
            # is returned instead of creating another.
            earlier = self._nonces.get((channel_id, str(nonce)))
            if earlier is not None and earlier in self.messages:
                return json_response(self.messages[earlier])
        message = self._bot_message(channel_id, payload, recorded.files)
        if nonce is not None:
            message["nonce"] = str(nonce)
            self._nonces[(channel_id, str(nonce))] = message["id"]
        return json_response(message)

    def _existing_message(
        self, method: str, channel_id: str, message_id: str, recorded: RecordedRequest
    ) -> web.Response:
        message = self.messages.get(message_id)
        if message is None or message["channel_id"] != channel_id:
            return error_response(404, 10008, "Unknown Message")
        if method == "GET":
            return json_response(message)
        if method == "DELETE":
            del self.messages[message_id]
            return web.Response(status=204)
        if method == "PATCH":
            if message["author"]["id"] != self.bot.id:
                return error_response(403, 50005, "Cannot edit a message authored by another user")
            invalid = self._validate_message(recorded.payload, recorded.files, editing=True)
            if invalid is not None:
                return invalid
            payload = recorded.payload if isinstance(recorded.payload, dict) else {}
            message.update({k: v for k, v in payload.items() if k in ("content", "components")})
            if "attachments" in payload:
                # The listed existing attachments are kept; new ones come as files[n] parts.
                kept = {str(item.get("id")) for item in payload["attachments"] or []}
                message["attachments"] = [
                    item for item in message["attachments"] if item["id"] in kept
                ] + self._attachments(channel_id, recorded.files)
            elif recorded.files:
                message["attachments"] = message["attachments"] + self._attachments(
                    channel_id, recorded.files
                )
            message["edited_timestamp"] = iso_now()
            return json_response(message)
        return error_response(405, 0, "405: Method Not Allowed")

    def _interaction_callback(
        self, interaction_id: str, token: str, recorded: RecordedRequest
    ) -> web.Response:
        state = self.interactions.get(token)
        if state is None or state["id"] != interaction_id:
            return error_response(404, 10062, "Unknown interaction")
        if state["callback"] is not None:
            return error_response(400, 40060, "Interaction has already been acknowledged.")
        payload = recorded.payload or {}
        kind = payload.get("type")
        data = payload.get("data") or {}
        state["callback"] = payload
        flags = int(data.get("flags") or 0)
        if kind in (4, 5):  # a (deferred) message: it becomes the @original response
            content = data.get("content") or ""
            if kind == 4:
                invalid = self._validate_message(data, recorded.files)
                if invalid is not None:
                    return invalid
            original = self._bot_message(
                state["channel_id"],
                {**data, "content": content},
                recorded.files,
                webhook_id=self.application_id,
            )
            original["interaction_metadata"] = {
                "id": interaction_id,
                "type": 2,
                "user": state["user"].to_api(),
            }
            if kind == 5:
                original["flags"] = flags | 128  # LOADING
            state["original"] = original
        elif kind == 7 and state["original"] is not None:  # UPDATE_MESSAGE: edit the button's message now
            invalid = self._validate_message(data, recorded.files, editing=True)
            if invalid is not None:
                return invalid
            for key in ("content", "components"):
                if key in data:
                    state["original"][key] = data[key]
        if not self.callback_bodies or recorded.query.get("with_response") not in ("1", "true", "True"):
            return web.Response(status=204)
        response: dict[str, Any] = {
            "interaction": {
                "id": interaction_id,
                "type": state["type"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(flags & EPHEMERAL_FLAG),
            }
        }
        if state["original"] is not None and kind in (4, 5, 7):
            response["interaction"]["response_message_id"] = state["original"]["id"]
            response["resource"] = {"type": kind, "message": state["original"]}
        elif kind is not None:
            response["resource"] = {"type": kind}
        return json_response(response)

    def _webhook(
        self, method: str, token: str, message_ref: str | None, recorded: RecordedRequest
    ) -> web.Response:
        state = self.interactions.get(token)
        if state is None:
            return error_response(401, 50027, "Invalid Webhook Token")
        if state["callback"] is None:
            return error_response(404, 10015, "Unknown Webhook")
        payload = recorded.payload or {}
        if message_ref is None and method == "POST":
            invalid = self._validate_message(payload, recorded.files)
            if invalid is not None:
                return invalid
            followup = self._bot_message(
                state["channel_id"], payload, recorded.files, webhook_id=self.application_id
            )
            if recorded.query.get("wait") in ("1", "true", "True"):
                return json_response(followup)
            return web.Response(status=204)
        if message_ref == "@original" or (state["original"] and message_ref == state["original"]["id"]):
            target = state["original"]
        else:
            target = self.messages.get(message_ref or "")
        if target is None:
            return error_response(404, 10008, "Unknown Message")
        if method == "GET":
            return json_response(target)
        if method == "DELETE":
            self.messages.pop(target["id"], None)
            return web.Response(status=204)
        if method == "PATCH":
            invalid = self._validate_message(payload, recorded.files, editing=True)
            if invalid is not None:
                return invalid
            for key in ("content", "components"):
                if key in payload:
                    target[key] = payload[key]
            if recorded.files:
                target["attachments"] = self._attachments(state["channel_id"], recorded.files)
            target["flags"] = int(target.get("flags", 0)) & ~128
            target["edited_timestamp"] = iso_now()
            return json_response(target)
        return error_response(405, 0, "405: Method Not Allowed")
