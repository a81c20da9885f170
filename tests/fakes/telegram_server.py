"""A fake Telegram Bot API server (aiohttp) for driving a real client library over HTTP.

It listens on an ephemeral port on 127.0.0.1 and serves ``/bot<token>/<method>`` with the Bot API's
real request and response shapes:

* requests may be GET with a query string, or POST with ``application/x-www-form-urlencoded``,
  ``application/json`` or ``multipart/form-data`` bodies; in form bodies nested values
  (``reply_markup``, ``commands``, ``entities``, ...) are JSON strings; files are multipart parts,
  referenced directly by the parameter name or through ``attach://<part>``;
* method names are case-insensitive;
* answers are ``{"ok": true, "result": ...}`` with real ``Message``/``User``/``Chat`` objects, or
  ``{"ok": false, "error_code": N, "description": "..."}`` with HTTP status N (400 bad request,
  401 wrong token, 403 forbidden, 404 unknown method or malformed token, 409 conflict, 429 flood
  control with ``parameters.retry_after``).

Tests inject updates (text, stickers, photos, voice, documents, edits, button presses), optionally
make the next N calls of a method fail (e.g. with 429) or lose their connection (a network failure,
before or after the server acted on the request), and assert on :attr:`FakeTelegramServer.calls`
(method, decoded parameters and uploaded files). Only the Bot API surface a chat bot needs is
implemented; unknown methods answer 404 like the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

DEFAULT_TOKEN = "123456789:AAFakeTokenForTests_abcdefghijklmnop"
_TOKEN_SHAPE = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>[A-Za-z]+)/?$")

#: Parameters whose values are JSON-serialized objects or arrays when sent as form fields.
JSON_FIELDS = frozenset(
    {
        "reply_markup",
        "commands",
        "scope",
        "entities",
        "caption_entities",
        "allowed_updates",
        "reply_parameters",
        "link_preview_options",
        "media",
        "results",
        "permissions",
        "options",
        "menu_button",
    }
)
FILE_FIELDS = ("document", "photo", "audio", "video", "voice", "animation", "sticker", "video_note")
CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)
# getUpdates with an empty allowed_updates list: everything except these.
_OPT_IN_UPDATES = frozenset({"chat_member", "message_reaction", "message_reaction_count"})
MAX_TEXT = 4096
MAX_CAPTION = 1024
NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a current content and reply markup of the message"
)


class ApiError(Exception):
    """Raised inside a method handler to answer with a Bot API error."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters


@dataclass(frozen=True, slots=True)
class UploadedFile:
    """A multipart file part the bot uploaded."""

    field: str
    filename: str | None
    content: bytes
    content_type: str | None


@dataclass(slots=True)
class ApiCall:
    """One request the server received, and how it answered."""

    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile]
    at: float
    #: The HTTP status answered; 0 if the connection was dropped instead; None while pending.
    status: int | None = None
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Answered successfully (False while a long poll is still pending)."""
        return self.status == 200

    def upload(self, name: str) -> UploadedFile | None:
        """The file sent for parameter ``name``, directly or through ``attach://``."""
        value = self.params.get(name)
        if isinstance(value, str) and value.startswith("attach://"):
            return self.files.get(value.removeprefix("attach://"))
        return self.files.get(name)


@dataclass(slots=True)
class _Failure:
    remaining: int
    code: int
    description: str
    parameters: dict[str, Any] | None


@dataclass(slots=True)
class _Drop:
    remaining: int
    after_processing: bool


@dataclass(slots=True)
class _CallbackQuery:
    id: str
    answered: bool = False
    answer: dict[str, Any] = field(default_factory=dict)


class FakeTelegramServer:
    """An in-process Bot API server. Use ``async with FakeTelegramServer() as server: ...``."""

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        bot_username: str = "moodmate_test_bot",
        bot_first_name: str = "Moodmate",
        can_read_all_group_messages: bool = False,
    ) -> None:
        self.token = token
        self.bot_id = int(token.split(":", 1)[0])
        self.bot_user: dict[str, Any] = {
            "id": self.bot_id,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
        }
        self._can_read_all = can_read_all_group_messages
        self.calls: list[ApiCall] = []
        self.commands: dict[str, list[dict[str, str]]] = {}
        self.webhook_url = ""
        self.webhook_secret: str | None = None
        #: Every webhook POST: (update id, HTTP status or 0 for no connection, the address posted to).
        self.webhook_posts: list[tuple[int, int, str]] = []
        self._webhook_routes: dict[str, str] = {}
        self._pusher: asyncio.Task[None] | None = None
        self.webhook_retry_seconds = 0.2
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1000)
        self._allowed_updates: list[str] = []
        self._confirmed_through = 0
        self._poll_generation = 0
        self._changed = asyncio.Condition()
        self._closing = False
        self._failures: dict[str, list[_Failure]] = {}
        self._drops: dict[str, list[_Drop]] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._callback_queries: dict[str, _CallbackQuery] = {}
        self._files: dict[str, UploadedFile] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> FakeTelegramServer:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server  # the asyncio server, to learn the ephemeral port
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self._closing = True
        async with self._changed:
            self._changed.notify_all()
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegramServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:PORT`` (a self-hosted Bot API server's address)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/bot``: what client libraries append the token to."""
        return f"{self.root_url}/bot"

    # ------------------------------------------------------------------ webhooks

    def route_webhook(self, public_url: str, local_url: str) -> None:
        """Post updates meant for ``public_url`` (the https:// address a bot sets) to ``local_url``
        instead: what the TLS-terminating load balancer in front of the bot would receive."""
        self._webhook_routes[public_url] = local_url

    async def _push_updates(self) -> None:
        """Like the Bot API with a webhook set: POST each update, in order, as JSON with the secret in
        ``X-Telegram-Bot-Api-Secret-Token``; an update is done once answered 2xx, else retried."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while self.webhook_url and not self._closing:
                async with self._changed:
                    while not self._deliverable() and self.webhook_url and not self._closing:
                        await self._changed.wait()
                if not self.webhook_url or self._closing:
                    return
                update = self._updates[0]
                target = self._webhook_routes.get(self.webhook_url, self.webhook_url)
                headers = {"Content-Type": "application/json"}
                if self.webhook_secret:
                    headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook_secret
                try:
                    async with session.post(target, data=json.dumps(update), headers=headers) as response:
                        status = response.status
                        await response.read()
                except (aiohttp.ClientError, OSError, TimeoutError):
                    status = 0
                self.webhook_posts.append((update["update_id"], status, target))
                if 200 <= status < 300:
                    if self._updates and self._updates[0] is update:
                        self._updates.pop(0)
                    self._confirmed_through = max(self._confirmed_through, update["update_id"])
                    await self._notify()
                else:
                    await asyncio.sleep(self.webhook_retry_seconds)

    # ------------------------------------------------------------------ people and chats

    @staticmethod
    def user(user_id: int, first_name: str = "Alice", username: str | None = None) -> dict[str, Any]:
        """A ``User`` object for a person."""
        user: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        if username:
            user["username"] = username
        user["language_code"] = "en"
        return user

    def private_chat(self, user: dict[str, Any]) -> dict[str, Any]:
        """The private ``Chat`` between ``user`` and the bot."""
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        if "username" in user:
            chat["username"] = user["username"]
        return chat

    @staticmethod
    def group_chat(
        chat_id: int, title: str = "Friends", *, supergroup: bool = True, forum: bool = False
    ) -> dict[str, Any]:
        """A group or supergroup ``Chat`` (ids are negative); ``forum``: a supergroup with topics."""
        if chat_id >= 0:
            raise ValueError("group chat ids are negative")
        chat = {"id": chat_id, "type": "supergroup" if supergroup or forum else "group", "title": title}
        if forum:
            chat["is_forum"] = True
        return chat

    def register_chat(self, chat: dict[str, Any]) -> None:
        """Make a chat known, as if its people had talked to the bot before."""
        self._chats[chat["id"]] = chat

    # ------------------------------------------------------------------ injecting updates

    def inject_update(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Queue a raw update of type ``kind`` (``"message"``, ``"callback_query"``, ...)."""
        update = {"update_id": next(self._update_ids), kind: payload}
        self._updates.append(update)
        self._notify_soon()
        return update

    def send_text(
        self,
        chat: dict[str, Any],
        user: dict[str, Any],
        text: str,
        *,
        entities: list[dict[str, Any]] | None = None,
        reply_to: dict[str, Any] | None = None,
        topic: int | None = None,
        deliver: bool = True,
    ) -> dict[str, Any]:
        """A person sends ``text`` (in forum topic ``topic``, a thread id); entities are detected like
        Telegram does unless given. ``deliver=False``: the message is only in the chat, as one whose
        update the bot already fetched before it crashed."""
        message = self._new_message(chat, user)
        if topic is not None:
            if not chat.get("is_forum"):
                raise ValueError("topics exist only in forum supergroups")
            message["message_thread_id"] = topic
            message["is_topic_message"] = True
        message["text"] = text
        found = detect_entities(text) if entities is None else entities
        if found:
            message["entities"] = found
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        self._store(message)
        if deliver:
            self.inject_update("message", message)
        return message

    def send_sticker(self, chat: dict[str, Any], user: dict[str, Any], emoji: str = "😀") -> dict[str, Any]:
        message = self._new_message(chat, user)
        message["sticker"] = {
            "file_id": _file_id(),
            "file_unique_id": _unique_id(),
            "type": "regular",
            "width": 512,
            "height": 512,
            "is_animated": False,
            "is_video": False,
            "emoji": emoji,
            "file_size": 20480,
        }
        self._store(message)
        self.inject_update("message", message)
        return message

    def send_photo(
        self, chat: dict[str, Any], user: dict[str, Any], caption: str | None = None
    ) -> dict[str, Any]:
        message = self._new_message(chat, user)
        message["photo"] = _photo_sizes(1280, 960, 120000)
        if caption:
            message["caption"] = caption
        self._store(message)
        self.inject_update("message", message)
        return message

    def send_voice(self, chat: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        message = self._new_message(chat, user)
        message["voice"] = {
            "file_id": _file_id(),
            "file_unique_id": _unique_id(),
            "duration": 3,
            "mime_type": "audio/ogg",
            "file_size": 9000,
        }
        self._store(message)
        self.inject_update("message", message)
        return message

    def send_document(
        self, chat: dict[str, Any], user: dict[str, Any], file_name: str = "notes.txt"
    ) -> dict[str, Any]:
        message = self._new_message(chat, user)
        message["document"] = {
            "file_id": _file_id(),
            "file_unique_id": _unique_id(),
            "file_name": file_name,
            "mime_type": "text/plain",
            "file_size": 42,
        }
        self._store(message)
        self.inject_update("message", message)
        return message

    def edit_text(self, message: dict[str, Any], new_text: str) -> dict[str, Any]:
        """The author edits one of their text messages (an ``edited_message`` update)."""
        edited = dict(message)
        edited["text"] = new_text
        edited["edit_date"] = int(time.time())
        found = detect_entities(new_text)
        if found:
            edited["entities"] = found
        else:
            edited.pop("entities", None)
        self._store(edited)
        self.inject_update("edited_message", edited)
        return edited

    def press_button(
        self,
        message: dict[str, Any],
        user: dict[str, Any],
        *,
        data: str | None = None,
        label: str | None = None,
    ) -> str:
        """``user`` presses an inline button (chosen by callback data or label) under a bot message.

        Uses the message's current state, so pressing a button that was removed fails loudly.
        Returns the callback query id.
        """
        current = self._messages.get((message["chat"]["id"], message["message_id"]))
        if current is None:
            raise LookupError("no such message")
        rows = current.get("reply_markup", {}).get("inline_keyboard", [])
        for row in rows:
            for button in row:
                if (data is not None and button.get("callback_data") == data) or (
                    label is not None and button.get("text") == label
                ):
                    query_id = str(secrets.randbits(63))
                    self._callback_queries[query_id] = _CallbackQuery(query_id)
                    self.inject_update(
                        "callback_query",
                        {
                            "id": query_id,
                            "from": user,
                            "message": current,
                            "chat_instance": str(abs(hash(current["chat"]["id"]))),
                            "data": button["callback_data"],
                        },
                    )
                    return query_id
        raise LookupError("no such button on the message")

    def callback_answer(self, query_id: str) -> dict[str, Any] | None:
        """How the bot answered a callback query, or None if it did not (yet)."""
        query = self._callback_queries.get(query_id)
        return query.answer if query is not None and query.answered else None

    # ------------------------------------------------------------------ failure injection

    def fail_next(
        self,
        method: str,
        times: int = 1,
        *,
        retry_after: int | None = None,
        code: int | None = None,
        description: str | None = None,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail (a 429 with ``retry_after`` by default)."""
        if retry_after is not None:
            failure = _Failure(
                times,
                code or 429,
                description or f"Too Many Requests: retry after {retry_after}",
                {"retry_after": retry_after},
            )
        else:
            failure = _Failure(times, code or 400, description or "Bad Request: injected failure", None)
        self._failures.setdefault(method.lower(), []).append(failure)

    def drop_next(self, method: str, times: int = 1, *, after_processing: bool = False) -> None:
        """Close the connection of the next ``times`` calls of ``method`` without answering.

        The client sees a network error. With ``after_processing`` the server first acts on the
        request (the message is sent or edited), as when an answer is lost on its way back.
        """
        self._drops.setdefault(method.lower(), []).append(_Drop(times, after_processing))

    # ------------------------------------------------------------------ inspection

    def calls_to(self, method: str, *, ok_only: bool = False) -> list[ApiCall]:
        wanted = method.lower()
        return [c for c in self.calls if c.method.lower() == wanted and (c.ok or not ok_only)]

    def sent_messages(self, chat_id: int | None = None) -> list[dict[str, Any]]:
        """Messages the bot sent (current state, after edits), oldest first."""
        return [
            m
            for (cid, _), m in sorted(self._messages.items(), key=lambda kv: (kv[1]["date"], kv[0][1]))
            if m.get("from", {}).get("id") == self.bot_id and (chat_id is None or cid == chat_id)
        ]

    def message(self, chat_id: int, message_id: int) -> dict[str, Any] | None:
        return self._messages.get((chat_id, message_id))

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        *,
        timeout: float = 5.0,
        where: Callable[[ApiCall], bool] | None = None,
        ok_only: bool = True,
    ) -> list[ApiCall]:
        """Wait until at least ``count`` matching calls of ``method`` were answered."""

        def matching() -> list[ApiCall]:
            found = self.calls_to(method, ok_only=ok_only)
            return [c for c in found if where is None or where(c)]

        async def until_enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(matching()) >= count)

        try:
            await asyncio.wait_for(until_enough(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"expected {count} {method} call(s) within {timeout}s, got {len(matching())}; "
                f"calls so far: {[c.method for c in self.calls]}"
            ) from None
        return matching()

    async def wait_consumed(self, timeout: float = 5.0) -> None:
        """Wait until the bot confirmed (polled past) every update injected so far."""
        last = max((u["update_id"] for u in self._deliverable()), default=None)
        if last is None:
            return

        async def until_confirmed() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: self._confirmed_through >= last)

        try:
            await asyncio.wait_for(until_confirmed(), timeout)
        except TimeoutError:
            raise AssertionError(f"the bot did not fetch update {last} within {timeout}s") from None

    async def quiet(self, seconds: float = 0.3) -> None:
        """Wait until no call but getUpdates arrived for ``seconds`` (the bot has settled)."""
        while True:
            before = len([c for c in self.calls if c.method.lower() != "getupdates"])
            await asyncio.sleep(seconds)
            if len([c for c in self.calls if c.method.lower() != "getupdates"]) == before:
                return

    # ------------------------------------------------------------------ HTTP plumbing

    async def _dispatch(self, request: web.Request) -> web.Response:
        match = _PATH.match(request.path)
        if match is None:
            return _error_response(404, "Not Found")
        token, method = match.group("token"), match.group("method")
        if token != self.token:
            if _TOKEN_SHAPE.match(token):
                return _error_response(401, "Unauthorized")
            return _error_response(404, "Not Found")
        handler = self._handlers().get(method.lower())
        try:
            params, files = await _read_params(request)
        except ApiError as exc:
            return _error_response(exc.code, exc.description)
        call = ApiCall(method=method, params=params, files=files, at=time.monotonic())
        self.calls.append(call)
        drop = self._take_drop(method)
        if drop is not None and not drop.after_processing:
            return await self._drop_connection(request, call)
        try:
            if handler is None:
                raise ApiError(404, "Not Found")
            self._maybe_fail(method)
            result = await handler(params, files)
        except ApiError as exc:
            call.status, call.error = exc.code, exc.description
            await self._notify()
            return _error_response(exc.code, exc.description, exc.parameters)
        if drop is not None:
            call.result = result
            return await self._drop_connection(request, call)
        call.status, call.result = 200, result
        await self._notify()
        return web.json_response({"ok": True, "result": result})

    def _take_drop(self, method: str) -> _Drop | None:
        queue = self._drops.get(method.lower())
        if not queue:
            return None
        drop = queue[0]
        drop.remaining -= 1
        if drop.remaining <= 0:
            queue.pop(0)
        return drop

    async def _drop_connection(self, request: web.Request, call: ApiCall) -> web.Response:
        call.status, call.error = 0, "connection dropped"
        if request.transport is not None:
            request.transport.close()
        await self._notify()
        return web.Response(status=500)  # never written: the connection is already closed

    def _handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "getme": self._get_me,
            "logout": self._true,
            "close": self._true,
            "getupdates": self._get_updates,
            "deletewebhook": self._delete_webhook,
            "setwebhook": self._set_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "sendmessage": self._send_message,
            "sendchataction": self._send_chat_action,
            "senddocument": self._send_document,
            "sendphoto": self._send_photo,
            "editmessagetext": self._edit_message_text,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "deletemessage": self._delete_message,
            "answercallbackquery": self._answer_callback_query,
            "getchat": self._get_chat,
        }

    def _maybe_fail(self, method: str) -> None:
        queue = self._failures.get(method.lower())
        if not queue:
            return
        failure = queue[0]
        failure.remaining -= 1
        if failure.remaining <= 0:
            queue.pop(0)
        raise ApiError(failure.code, failure.description, failure.parameters)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _notify_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ state helpers

    def _new_message(self, chat: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
        self._chats[chat["id"]] = chat
        counter = self._message_ids.setdefault(chat["id"], itertools.count(1))
        return {"message_id": next(counter), "from": user, "chat": chat, "date": int(time.time())}

    def _store(self, message: dict[str, Any]) -> None:
        self._messages[(message["chat"]["id"], message["message_id"])] = message

    def _chat_for(self, params: dict[str, Any]) -> dict[str, Any]:
        raw = params.get("chat_id")
        if raw is None or raw == "":
            raise ApiError(400, "Bad Request: chat_id is empty")
        try:
            chat_id = int(raw)
        except (TypeError, ValueError):
            for chat in self._chats.values():
                if "username" in chat and f"@{chat['username']}" == raw:
                    return chat
            raise ApiError(400, "Bad Request: chat not found") from None
        chat = self._chats.get(chat_id)
        if chat is None:
            if chat_id > 0:
                raise ApiError(403, "Forbidden: bot can't initiate conversation with a user")
            raise ApiError(400, "Bad Request: chat not found")
        return chat

    def _bot_message(self, chat: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        topic = self._topic_for(chat, params)
        message = self._new_message(chat, self.bot_user)
        reply_to = _reply_target(params)
        if reply_to is not None:
            target = self._messages.get((chat["id"], reply_to[0]))
            if target is not None:
                message["reply_to_message"] = {k: v for k, v in target.items() if k != "reply_to_message"}
                if topic is None and target.get("is_topic_message"):
                    topic = target["message_thread_id"]  # a reply goes to its target's topic
            elif not reply_to[1]:
                raise ApiError(400, "Bad Request: message to be replied not found")
        if topic is not None:  # otherwise, in a forum, the message lands in General
            message["message_thread_id"] = topic
            message["is_topic_message"] = True
        markup = params.get("reply_markup")
        if markup is not None:
            _check_markup(markup)
            if markup.get("inline_keyboard"):
                message["reply_markup"] = {"inline_keyboard": markup["inline_keyboard"]}
        return message

    @staticmethod
    def _topic_for(chat: dict[str, Any], params: dict[str, Any]) -> int | None:
        """The ``message_thread_id`` a send names: only forum supergroups have topics."""
        if params.get("message_thread_id") in (None, ""):
            return None
        if not chat.get("is_forum"):
            raise ApiError(400, "Bad Request: message thread not found")
        return _as_int(params["message_thread_id"], "message_thread_id")

    def _edit_target(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("inline_message_id"):
            raise ApiError(400, "Bad Request: MESSAGE_ID_INVALID")
        if params.get("chat_id") in (None, "") or params.get("message_id") in (None, ""):
            raise ApiError(400, "Bad Request: message identifier is not specified")
        chat = self._chat_for(params)
        message = self._messages.get((chat["id"], _as_int(params["message_id"], "message_id")))
        if message is None:
            raise ApiError(400, "Bad Request: message to edit not found")
        if message.get("from", {}).get("id") != self.bot_id:
            raise ApiError(400, "Bad Request: message can't be edited")
        return message

    # ------------------------------------------------------------------ methods

    async def _true(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        return True

    async def _get_me(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": self._can_read_all,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    async def _get_updates(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> list[Any]:
        if self.webhook_url:
            raise ApiError(
                409,
                "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook "
                "to delete the webhook first",
            )
        offset = _as_int(params.get("offset", 0), "offset")
        limit = _as_int(params.get("limit", 100), "limit")
        timeout = float(params.get("timeout", 0) or 0)
        if not 1 <= limit <= 100:
            limit = 100
        if "allowed_updates" in params and params["allowed_updates"] is not None:
            allowed = params["allowed_updates"]
            if not isinstance(allowed, list):
                raise ApiError(400, "Bad Request: can't parse allowed updates")
            self._allowed_updates = [str(kind) for kind in allowed]
        self._confirm(offset)
        self._poll_generation += 1
        generation = self._poll_generation
        deadline = time.monotonic() + max(0.0, timeout)
        async with self._changed:
            self._changed.notify_all()  # an older pending long poll is terminated with 409
            while True:
                if generation != self._poll_generation:
                    raise ApiError(
                        409,
                        "Conflict: terminated by other getUpdates request; make sure that only one "
                        "bot instance is running",
                    )
                ready = self._deliverable()
                remaining = deadline - time.monotonic()
                if ready or remaining <= 0 or self._closing:
                    return ready[:limit]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    def _confirm(self, offset: int) -> None:
        if offset < 0:
            self._updates = self._updates[offset:]
        elif offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            self._confirmed_through = max(self._confirmed_through, offset - 1)

    def _deliverable(self) -> list[dict[str, Any]]:
        def wanted(update: dict[str, Any]) -> bool:
            kind = next(k for k in update if k != "update_id")
            if self._allowed_updates:
                return kind in self._allowed_updates
            return kind not in _OPT_IN_UPDATES

        # Updates of unwanted types are never created by Telegram; drop them.
        self._updates = [u for u in self._updates if wanted(u)]
        return list(self._updates)

    async def _delete_webhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        self.webhook_url = ""
        if _as_bool(params.get("drop_pending_updates")):
            self._updates.clear()
        return True

    async def _set_webhook(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        url = str(params.get("url", ""))
        if url and not url.startswith("https://"):
            raise ApiError(400, "Bad Request: bad webhook: An HTTPS URL must be provided for webhook")
        secret = params.get("secret_token")
        if secret is not None and not re.match(r"^[A-Za-z0-9_-]{1,256}$", str(secret)):
            raise ApiError(400, "Bad Request: secret token contains unallowed characters")
        if "allowed_updates" in params and isinstance(params["allowed_updates"], list):
            self._allowed_updates = [str(kind) for kind in params["allowed_updates"]]
        if _as_bool(params.get("drop_pending_updates")):
            self._updates.clear()
        self.webhook_url = url
        self.webhook_secret = None if secret is None else str(secret)
        self._poll_generation += 1  # a pending getUpdates ends
        await self._notify()
        if url and (self._pusher is None or self._pusher.done()):
            self._pusher = asyncio.get_running_loop().create_task(self._push_updates())
        return True

    async def _get_webhook_info(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        return {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    @staticmethod
    def _commands_key(params: dict[str, Any]) -> str:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps([scope, params.get("language_code") or ""], sort_keys=True)

    async def _set_my_commands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        commands = params.get("commands")
        if not isinstance(commands, list):
            raise ApiError(400, "Bad Request: can't parse commands JSON object")
        if len(commands) > 100:
            raise ApiError(400, "Bad Request: too many commands")
        cleaned: list[dict[str, str]] = []
        for command in commands:
            if not isinstance(command, dict):
                raise ApiError(400, "Bad Request: can't parse BotCommand")
            name, description = command.get("command"), command.get("description")
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise ApiError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not isinstance(description, str) or not 1 <= len(description.strip()) <= 256:
                raise ApiError(400, "Bad Request: command description is empty or too long")
            cleaned.append({"command": name, "description": description})
        self.commands[self._commands_key(params)] = cleaned
        return True

    async def _get_my_commands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> list[Any]:
        return self.commands.get(self._commands_key(params), [])

    async def _delete_my_commands(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        self.commands.pop(self._commands_key(params), None)
        return True

    async def _send_message(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._chat_for(params)
        raw = params.get("text")
        if raw is None or str(raw) == "":
            raise ApiError(400, "Bad Request: message text is empty")
        text, entities = parse_formatted(str(raw), params.get("parse_mode"), params.get("entities"))
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if len(text) > MAX_TEXT:
            raise ApiError(400, "Bad Request: message is too long")
        message = self._bot_message(chat, params)
        message["text"] = text
        if entities:
            message["entities"] = entities
        self._store(message)
        return message

    async def _send_chat_action(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        self._topic_for(self._chat_for(params), params)
        if params.get("action") not in CHAT_ACTIONS:
            raise ApiError(400, "Bad Request: wrong parameter action in request")
        return True

    def _resolve_file(
        self, name: str, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> UploadedFile:
        value = params.get(name)
        if name in files and value in (None, ""):
            return files[name]
        if isinstance(value, str) and value.startswith("attach://"):
            part = files.get(value.removeprefix("attach://"))
            if part is None:
                raise ApiError(400, f"Bad Request: file {value!r} not found in the request")
            return part
        if isinstance(value, str) and value in self._files:
            return self._files[value]
        if value in (None, ""):
            raise ApiError(400, f"Bad Request: there is no {name} in the request")
        raise ApiError(400, "Bad Request: wrong file identifier/HTTP URL specified")

    def _caption(self, message: dict[str, Any], params: dict[str, Any]) -> None:
        raw = params.get("caption")
        if raw in (None, ""):
            return
        caption, entities = parse_formatted(
            str(raw), params.get("parse_mode"), params.get("caption_entities")
        )
        if len(caption) > MAX_CAPTION:
            raise ApiError(400, "Bad Request: message caption is too long")
        message["caption"] = caption
        if entities:
            message["caption_entities"] = entities

    async def _send_document(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._chat_for(params)
        upload = self._resolve_file("document", params, files)
        if not upload.content:
            raise ApiError(400, "Bad Request: file must be non-empty")
        message = self._bot_message(chat, params)
        file_id = _file_id()
        self._files[file_id] = upload
        document: dict[str, Any] = {
            "file_id": file_id,
            "file_unique_id": _unique_id(),
            "file_size": len(upload.content),
        }
        if upload.filename:
            document["file_name"] = upload.filename
        if upload.content_type:
            document["mime_type"] = upload.content_type
        message["document"] = document
        self._caption(message, params)
        self._store(message)
        return message

    async def _send_photo(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._chat_for(params)
        upload = self._resolve_file("photo", params, files)
        size = image_size(upload.content)
        if size is None:
            raise ApiError(400, "Bad Request: IMAGE_PROCESS_FAILED")
        message = self._bot_message(chat, params)
        sizes = _photo_sizes(size[0], size[1], len(upload.content))
        for photo in sizes:
            self._files[photo["file_id"]] = upload
        message["photo"] = sizes
        self._caption(message, params)
        self._store(message)
        return message

    async def _edit_message_text(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        message = self._edit_target(params)
        raw = params.get("text")
        if raw is None or str(raw) == "":
            raise ApiError(400, "Bad Request: message text is empty")
        if "text" not in message:
            raise ApiError(400, "Bad Request: there is no text in the message to edit")
        text, entities = parse_formatted(str(raw), params.get("parse_mode"), params.get("entities"))
        if len(text) > MAX_TEXT:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        markup = params.get("reply_markup")
        if markup is not None:
            _check_markup(markup)
        new_markup = markup if markup and markup.get("inline_keyboard") else None
        if (
            text == message["text"]
            and entities == message.get("entities", [])
            and new_markup == message.get("reply_markup")
        ):
            raise ApiError(400, NOT_MODIFIED)
        edited = {k: v for k, v in message.items() if k not in ("entities", "reply_markup")}
        edited["text"] = text
        edited["edit_date"] = int(time.time())
        if entities:
            edited["entities"] = entities
        if new_markup:  # editing text without reply_markup removes the inline keyboard
            edited["reply_markup"] = {"inline_keyboard": new_markup["inline_keyboard"]}
        self._store(edited)
        return edited

    async def _edit_message_reply_markup(
        self, params: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        message = self._edit_target(params)
        markup = params.get("reply_markup")
        if markup is not None:
            _check_markup(markup)
        new_markup = markup if markup and markup.get("inline_keyboard") else None
        if new_markup == message.get("reply_markup"):
            raise ApiError(400, NOT_MODIFIED)
        edited = {k: v for k, v in message.items() if k != "reply_markup"}
        edited["edit_date"] = int(time.time())
        if new_markup:
            edited["reply_markup"] = {"inline_keyboard": new_markup["inline_keyboard"]}
        self._store(edited)
        return edited

    async def _delete_message(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        chat = self._chat_for(params)
        key = (chat["id"], _as_int(params.get("message_id"), "message_id"))
        if key not in self._messages:
            raise ApiError(400, "Bad Request: message to delete not found")
        del self._messages[key]
        return True

    async def _answer_callback_query(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> bool:
        query = self._callback_queries.get(str(params.get("callback_query_id", "")))
        if query is None or query.answered:
            raise ApiError(
                400, "Bad Request: query is too old and response timeout expired or query ID is invalid"
            )
        text = params.get("text")
        if text is not None and len(str(text)) > 200:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        query.answered = True
        query.answer = {k: v for k, v in params.items() if k != "callback_query_id"}
        return True

    async def _get_chat(self, params: dict[str, Any], files: dict[str, UploadedFile]) -> dict[str, Any]:
        chat = self._chat_for(params)
        return {
            **chat,
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": False,
                "limited_gifts": False,
                "unique_gifts": False,
                "premium_subscription": False,
            },
        }


# ---------------------------------------------------------------------- request decoding


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
    params: dict[str, Any] = dict(request.query.items())
    files: dict[str, UploadedFile] = {}
    typed: dict[str, Any] = {}
    if request.can_read_body:
        ctype = request.content_type
        if ctype == "application/json":
            try:
                body = await request.json()
            except ValueError:
                raise ApiError(400, "Bad Request: can't parse JSON request body") from None
            if not isinstance(body, dict):
                raise ApiError(400, "Bad Request: JSON request body must be an object")
            typed = body
        elif ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files[key] = UploadedFile(key, value.filename, value.file.read(), value.content_type)
                else:
                    params[key] = value
    for key in JSON_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str):
            try:
                params[key] = json.loads(value)
            except ValueError:
                raise ApiError(400, f"Bad Request: can't parse {key} JSON object") from None
    params.update(typed)
    return params, files


def _error_response(code: int, description: str, parameters: dict[str, Any] | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return web.json_response(body, status=code)


def _as_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"Bad Request: invalid {name} specified") from None


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("true", "1")


def _reply_target(params: dict[str, Any]) -> tuple[int, bool] | None:
    reply = params.get("reply_parameters")
    if isinstance(reply, dict) and "message_id" in reply:
        return _as_int(reply["message_id"], "message_id"), bool(reply.get("allow_sending_without_reply"))
    if params.get("reply_to_message_id") not in (None, ""):
        allow = _as_bool(params.get("allow_sending_without_reply", False))
        return _as_int(params["reply_to_message_id"], "reply_to_message_id"), allow
    return None


def _check_markup(markup: Any) -> None:
    if not isinstance(markup, dict):
        raise ApiError(400, "Bad Request: object expected as reply markup")
    if "inline_keyboard" not in markup:
        return  # reply keyboards / remove keyboard / force reply: accepted, not modelled
    rows = markup["inline_keyboard"]
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ApiError(
            400, "Bad Request: can't parse inline keyboard button: InlineKeyboardButton must be an Object"
        )
    for row in rows:
        for button in row:
            if not isinstance(button, dict) or not button.get("text"):
                raise ApiError(
                    400,
                    "Bad Request: can't parse inline keyboard button: "
                    "Text buttons are unallowed in the inline keyboard",
                )
            kinds = [k for k in button if k != "text"]
            if len(kinds) != 1:
                raise ApiError(
                    400,
                    "Bad Request: can't parse inline keyboard button: exactly one optional field expected",
                )
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")


# ---------------------------------------------------------------------- entities and formatting


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram entity offsets."""
    return len(text.encode("utf-16-le")) // 2


_COMMAND = re.compile(r"(?<![\w/@])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![\w/])")
_MENTION = re.compile(r"(?<![\w@/])@[A-Za-z0-9_]{4,32}(?!\w)")


def detect_entities(text: str) -> list[dict[str, Any]]:
    """``bot_command`` and ``mention`` entities, as Telegram adds them to incoming messages."""
    spans: list[tuple[int, int, str]] = []
    for match in _COMMAND.finditer(text):
        spans.append((match.start(), match.end(), "bot_command"))
    for match in _MENTION.finditer(text):
        if not any(start <= match.start() < end for start, end, _ in spans):
            spans.append((match.start(), match.end(), "mention"))
    spans.sort()
    return [
        {"type": kind, "offset": utf16_len(text[:start]), "length": utf16_len(text[start:end])}
        for start, end, kind in spans
    ]


_HTML_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
        "tg-time",
    }
)
_HTML_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")


def parse_formatted(text: str, parse_mode: Any, entities: Any) -> tuple[str, list[dict[str, Any]]]:
    """Validate ``text`` like Telegram does for ``parse_mode``; return the plain text and entities.

    Raises ``ApiError(400, "Bad Request: can't parse entities: ...")`` on malformed markup.
    Entities produced by HTML/Markdown are not reconstructed; only the plain text matters here.
    """
    if parse_mode in (None, ""):
        return text, entities if isinstance(entities, list) else []
    if parse_mode == "HTML":
        return _parse_html(text), []
    if parse_mode == "MarkdownV2":
        return _parse_markdown_v2(text), []
    if parse_mode == "Markdown":
        return _parse_markdown(text), []
    raise ApiError(400, f"Bad Request: unsupported parse_mode {parse_mode}")


def _cant_parse(reason: str, text: str, index: int) -> ApiError:
    offset = len(text[:index].encode())
    return ApiError(400, f"Bad Request: can't parse entities: {reason} at byte offset {offset}")


def _parse_html(text: str) -> str:
    plain: list[str] = []
    stack: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "<":
            end = text.find(">", i)
            if end < 0:
                raise _cant_parse("Unclosed start tag", text, i)
            inner = text[i + 1 : end].strip()
            closing = inner.startswith("/")
            name = inner.lstrip("/").split(None, 1)[0].lower() if inner.lstrip("/") else ""
            if name not in _HTML_TAGS:
                kind = "end" if closing else "start"
                raise _cant_parse(f'Unsupported {kind} tag "{name}"', text, i)
            if closing:
                if not stack or stack[-1] != name:
                    raise _cant_parse(f'Unmatched end tag "{name}"', text, i)
                stack.pop()
            else:
                stack.append(name)
            i = end + 1
        elif char == "&":
            match = _HTML_ENTITY.match(text, i)
            if match is None:
                end = text.find(";", i)
                raise _cant_parse(
                    "Can't find end of the entity" if end < 0 else "Unsupported HTML entity", text, i
                )
            plain.append({"lt": "<", "gt": ">", "amp": "&", "quot": '"'}.get(match.group(1), "?"))
            i = match.end()
        elif char == ">":
            raise _cant_parse('Unexpected ">"', text, i)
        else:
            plain.append(char)
            i += 1
    if stack:
        raise _cant_parse(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"', text, len(text))
    return "".join(plain)


def _parse_markdown_v2(text: str) -> str:
    plain: list[str] = []
    open_marks: list[tuple[str, int]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 < len(text):
                plain.append(text[i + 1])
            i += 2
            continue
        mark = "__" if text.startswith("__", i) else "||" if text.startswith("||", i) else char
        if mark in ("*", "_", "__", "~", "||", "`"):
            if open_marks and open_marks[-1][0] == mark:
                open_marks.pop()
            else:
                open_marks.append((mark, i))
            i += len(mark)
            continue
        if char in _MDV2_RESERVED:
            raise _cant_parse(
                f"Character '{char}' is reserved and must be escaped with the preceding '\\'", text, i
            )
        plain.append(char)
        i += 1
    if open_marks:
        mark, index = open_marks[-1]
        raise _cant_parse(f"Can't find end of {mark} entity", text, index)
    return "".join(plain)


def _parse_markdown(text: str) -> str:
    plain: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in "*_`[":
            closer = "]" if char == "[" else char
            end = text.find(closer, i + 1)
            if end < 0:
                raise _cant_parse("Can't find end of the entity starting", text, i)
            plain.append(text[i + 1 : end])
            i = end + 1
            if char == "[" and text.startswith("(", i):
                close = text.find(")", i)
                i = len(text) if close < 0 else close + 1
            continue
        plain.append(char)
        i += 1
    return "".join(plain)


# ---------------------------------------------------------------------- files


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, JPEG or GIF image; None if ``data`` is not one."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            length = struct.unpack(">H", data[i + 2 : i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
    return None


def _file_id() -> str:
    return "BQACAgIAAxk" + secrets.token_urlsafe(24)


def _unique_id() -> str:
    return "AgAD" + secrets.token_urlsafe(8)


def _photo_sizes(width: int, height: int, size: int) -> list[dict[str, Any]]:
    sizes: list[dict[str, Any]] = []
    for limit in (90, 320, 800, 1280):
        scale = min(1.0, limit / max(width, height, 1))
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        if sizes and (w, h) == (sizes[-1]["width"], sizes[-1]["height"]):
            continue
        sizes.append(
            {
                "file_id": _file_id(),
                "file_unique_id": _unique_id(),
                "width": w,
                "height": h,
                "file_size": max(1, int(size * scale * scale)),
            }
        )
    return sizes
