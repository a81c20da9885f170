"""A fake OpenAI-compatible inference server (aiohttp) on 127.0.0.1, for driving the real HTTP client.

It runs on its own thread and event loop, so blocking clients and async tests can both use it, and
follows the wire format llama.cpp's ``llama-server`` and vLLM send:

* ``GET /v1/models``: ``{"object": "list", "data": [{"id": ..., "object": "model", ...}]}``;
* ``POST /v1/chat/completions`` without ``stream``: a ``chat.completion`` object whose
  ``choices[0].message.content`` is the answer, with ``choices[0].logprobs.content[]`` (``token``,
  ``logprob``, ``bytes``, ``top_logprobs[]``) when ``logprobs`` is true, and ``usage``;
* with ``"stream": true``: server-sent events, each ``data: <chat.completion.chunk JSON>`` and a blank
  line: first a chunk with ``delta.role``, then ``delta.content`` pieces, then one with
  ``finish_reason``, then ``data: [DONE]``;
* errors as ``{"error": {"message", "type", "code"}}`` with the HTTP status (401 wrong key, 400
  unknown constrained field when ``strict`` is set, 404 unknown model).

Its "model" reads moods by keywords (see :data:`POSITIVE_WORDS` and :data:`NEGATIVE_WORDS`) and
answers the label words of the prompt's language. ``logprobs`` (like Ollama before 0.12.11, which
dropped the field silently) and each constrained mode (``json_schema``, ``guided_choice``,
``grammar``) can be switched off. Faults are queued per request: an HTTP status (429 with
``Retry-After``, 500, 503), a delay before answering, a stream cut after N pieces, a malformed event,
a stream that stalls. Every request body is recorded, and the most requests in flight at once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

POSITIVE_WORDS = re.compile(r"\b(love|great|happy|glad|thanks|wonderful|awesome)\b|开心|喜欢|太好了|棒", re.I)
NEGATIVE_WORDS = re.compile(r"\b(sad|angry|tired|hate|awful|terrible|upset)\b|难过|讨厌|生气|失望|累", re.I)
WORDS = {
    "en": {"positive": "positive", "neutral": "neutral", "negative": "negative"},
    "zh": {"positive": "积极", "neutral": "中性", "negative": "消极"},
}
_MESSAGE = re.compile(r'Message: """(.*)"""', re.S)
#: How replies are cut into streamed pieces: a CJK character, or a word with the spaces after it.
_PIECE = re.compile(r"[\u3000-\u9fff\uff00-\uffef]|[^\s\u3000-\u9fff\uff00-\uffef]+\s*|\s+")
_GRAMMAR_CHOICE = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Fault:
    """What the next matching request meets instead of (or during) a normal answer.

    ``kind``: "status" (answer ``status`` with ``headers``), "delay" (wait ``seconds``, then answer
    normally), "garbage" (answer 200 with a body that is not JSON), "cut" (stream ``after`` pieces,
    then drop the connection), "malformed" (stream ``after`` pieces, then an event whose data is not
    JSON, then ``[DONE]``), "stall" (stream ``after`` pieces, then wait ``seconds`` before going on).
    """

    kind: str
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    after: int = 0
    stream: bool | None = None  # only requests with this "stream" value (None: any)


@dataclass
class Request:
    """One request the server received."""

    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    at: float


def _default_reply(messages: list[dict[str, str]]) -> str:
    last = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    if re.search(r"[\u4e00-\u9fff]", last):
        return "我听到了。能多说说吗？"
    return "I hear you. That sounds like a lot. Tell me more?"


class FakeOpenAIServer:
    """Serves the OpenAI API on ``127.0.0.1``; ``start()`` and ``stop()`` are blocking."""

    def __init__(
        self,
        *,
        model: str = "fake-model",
        api_key: str | None = None,
        logprobs: bool = True,
        constrained: tuple[str, ...] = ("json_schema", "guided_choice", "grammar"),
        strict: bool = False,
        piece_delay: float = 0.0,
        mood_delay: float = 0.0,
        reply_fn: Callable[[list[dict[str, str]]], str] = _default_reply,
        port: int = 0,
    ) -> None:
        self.model = model
        self.api_key = api_key
        self.logprobs = logprobs
        self.constrained = constrained
        self.strict = strict
        self.piece_delay = piece_delay
        self.mood_delay = mood_delay
        self.reply_fn = reply_fn
        self.port = port
        self.requests: list[Request] = []
        self.faults: deque[Fault] = deque()
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        """Listen (on the same port as before after a ``stop()``), serving from a thread."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as error:  # report a failed bind to start()
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-openai-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        server = site._server  # the bound port of an ephemeral listen
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _shutdown(self) -> None:
        for task in list(self._connections):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stop(self) -> None:
        """Stop listening and drop every open connection (streams in progress break off)."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test controls -------------------------------------------------------------------------

    def fail_next(self, *faults: Fault) -> None:
        """Queue ``faults`` for the next requests to ``/v1/chat/completions``, one each."""
        with self._lock:
            self.faults.extend(faults)

    def chat_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body or {} for r in self.requests if r.path.endswith("/chat/completions")]

    def _take_fault(self, stream: bool) -> Fault | None:
        with self._lock:
            for fault in list(self.faults):
                if fault.stream is None or fault.stream == stream:
                    self.faults.remove(fault)
                    return fault
        return None

    # --- handlers ------------------------------------------------------------------------------

    def _record(self, request: web.Request, body: dict[str, Any] | None) -> None:
        with self._lock:
            self.requests.append(
                Request(request.method, request.path, body, dict(request.headers), time.monotonic())
            )

    def _unauthorised(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return _error(401, "Incorrect API key provided.", "authentication_error", "invalid_api_key")

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, None)
        refused = self._unauthorised(request)
        if refused is not None:
            return refused
        entry = {"id": self.model, "object": "model", "created": 1_700_000_000, "owned_by": "fake"}
        return web.json_response({"object": "list", "data": [entry]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat_inner(request)
        finally:
            with self._lock:
                self.in_flight -= 1
            self._connections.discard(task)

    async def _chat_inner(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            self._record(request, None)
            return _error(400, "The request body is not valid JSON.", "invalid_request_error")
        self._record(request, body)
        refused = self._unauthorised(request)
        if refused is not None:
            return refused
        if body.get("model") not in (None, self.model):
            return _error(404, "The model does not exist.", "invalid_request_error", "model_not_found")
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            return _error(400, "messages is required.", "invalid_request_error")
        stream = bool(body.get("stream"))
        fault = self._take_fault(stream)
        if fault is not None and fault.kind == "status":
            return _error(fault.status, "Injected failure.", "server_error", headers=fault.headers)
        if fault is not None and fault.kind == "garbage":
            return web.Response(status=200, text="<html>502 Bad Gateway</html>", content_type="text/html")
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.seconds)
        if self.strict:
            for name in ("guided_choice", "grammar", "response_format"):
                if name in body and _mode_of(name) not in self.constrained:
                    return _error(400, f"Unrecognized request argument: {name}", "invalid_request_error")
        if stream:
            return await self._stream(request, body, fault)
        if self.mood_delay:
            await asyncio.sleep(self.mood_delay)
        return web.json_response(self._completion(body))

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        language = "zh" if any("积极" in str(m.get("content", "")) for m in messages[:1]) else "en"
        words = WORDS[language]
        label = _mood_of(messages)
        content = self._constrained_content(body, words[label])
        if content is None:
            content = words[label] if body.get("max_tokens", 16) <= 4 else _default_reply(messages)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "length" if body.get("max_tokens") == 1 else "stop",
        }
        if self.logprobs and body.get("logprobs"):
            top = _top_logprobs(words, label)[: int(body.get("top_logprobs") or 0)]
            first = top[0] if top else {"token": content, "logprob": -0.1, "bytes": list(content.encode())}
            choice["logprobs"] = {"content": [{**first, "top_logprobs": top}]}
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
            "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
        }

    def _constrained_content(self, body: dict[str, Any], word: str) -> str | None:
        choices: list[str] | None = None
        mode = None
        response_format = body.get("response_format")
        if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            choices, mode = schema.get("enum"), "json_schema"
        elif "guided_choice" in body:
            choices, mode = body["guided_choice"], "guided_choice"
        elif "grammar" in body:
            choices = [json.loads(f'"{c}"') for c in _GRAMMAR_CHOICE.findall(body["grammar"])]
            mode = "grammar"
        if mode is None or mode not in self.constrained or not choices:
            return None
        answer = word if word in choices else choices[0]
        return json.dumps(answer, ensure_ascii=False) if mode == "json_schema" else answer

    async def _stream(
        self, request: web.Request, body: dict[str, Any], fault: Fault | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        ident = f"chatcmpl-{next(self._ids)}"
        text = self.reply_fn(body["messages"])
        limit = int(body.get("max_tokens") or 10_000)
        pieces = _PIECE.findall(text)[:limit]

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()

        await response.write(chunk({"role": "assistant", "content": None}))
        for index, piece in enumerate(pieces):
            if fault is not None and index == fault.after:
                if fault.kind == "cut":
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if fault.kind == "malformed":
                    await response.write(b'data: {"choices": [{"delta": {"content": "oops"\n\n')
                    await response.write(b"data: [DONE]\n\n")
                    return response
                if fault.kind == "stall":
                    await asyncio.sleep(fault.seconds)
            if self.piece_delay:
                await asyncio.sleep(self.piece_delay)
            await response.write(chunk({"content": piece}))
        await response.write(chunk({}, "length" if len(pieces) >= limit else "stop"))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _mode_of(field_name: str) -> str:
    return {"response_format": "json_schema"}.get(field_name, field_name)


def _mood_of(messages: list[dict[str, str]]) -> str:
    last = str(messages[-1].get("content", ""))
    found = _MESSAGE.search(last)
    text = found.group(1) if found else last
    positive, negative = len(POSITIVE_WORDS.findall(text)), len(NEGATIVE_WORDS.findall(text))
    if positive > negative:
        return "positive"
    if negative > positive:
        return "negative"
    return "neutral"


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {
        "id": abs(hash(token)) % 150_000,
        "token": token,
        "logprob": logprob,
        "bytes": list(token.encode()),
    }


def _top_logprobs(words: dict[str, str], label: str) -> list[dict[str, Any]]:
    """Top tokens as a real tokenizer splits them: whole words, capitalised and partial spellings, noise."""
    others = [other for other in ("positive", "neutral", "negative") if other != label]
    entries = [
        _entry(words[label], -0.15),
        _entry(words[others[0]], -2.4),
        _entry(words[others[1]], -3.1),
        _entry(words[label].capitalize(), -4.0),
        _entry(words[label][:1] if words is WORDS["zh"] else words[label][:3], -5.5),
        _entry("The", -7.0),
        _entry("\n", -8.0),
        _entry(" ", -9.0),
    ]
    entries.sort(key=lambda entry: -entry["logprob"])
    return entries


def _error(
    status: int, message: str, kind: str, code: str | None = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.json_response(body, status=status, headers=headers or {})
