"""A blocking client for an OpenAI-compatible server: JSON calls and streamed chat, with retries.

httpx (already installed with python-telegram-bot) rather than the ``openai`` package: the calls need
server-specific fields (``guided_choice``, ``grammar``), and retries must know whether a streamed reply
was already shown in part, which the SDK's own retries do not.

Retried, with exponential backoff and within the call's deadline: connection refused or reset,
timeouts, HTTP 429 (after its ``Retry-After``), 5xx, bodies that are not the JSON expected, and a
stream that breaks before any text came. A stream that breaks after text was passed on is never sent
again: it raises :class:`~bot.errors.ModelInterruptedError`. Everything leaves this module as one of
:mod:`bot.errors`' exceptions.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx

from bot.errors import (
    ModelError,
    ModelInterruptedError,
    ModelTimeoutError,
    ModelUnavailableError,
    MoodmateError,
)
from bot.model.server.urls import display_url

logger = logging.getLogger(__name__)

T = TypeVar("T")

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failed call is tried again."""

    attempts: int = 4
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 8.0
    max_retry_after_seconds: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0-based): doubling, with jitter."""
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2.0**attempt)
        return base * random.uniform(0.75, 1.25)


#: The retry policy of clients given none.
DEFAULT_RETRY = RetryPolicy()


class ServerRejectedError(ModelError):
    """The server refused the request itself (HTTP 4xx other than 408 and 429); never retried."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class _Transient(Exception):
    """A failure that another attempt may not meet."""

    def __init__(self, kind: str, detail: str, *, retry_after: float | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after

    def translated(self, where: str) -> ModelError:
        if self.kind == "timeout":
            return ModelTimeoutError(f"the inference server at {where} took too long ({self.detail})")
        return ModelUnavailableError(f"the inference server at {where} failed: {self.kind} ({self.detail})")


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The ``data`` of each server-sent event in ``lines`` (multi-line data joined with newlines).

    Comments (``:``) and other fields (``event``, ``id``, ``retry``) are skipped; an event still open
    when the lines end is given too, so a cut-off last event surfaces as bad data rather than vanishing.
    """
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)


def _error_summary(response: httpx.Response) -> str:
    """The status and, for an OpenAI-style error body, its type or code (never its message, which
    may quote the request)."""
    summary = f"HTTP {response.status_code}"
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return summary
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code")
        if isinstance(kind, (str, int)):
            summary += f" {kind}"
    return summary


class ServerClient:
    """Calls one OpenAI-compatible base URL (``.../v1``); thread-safe, one connection pool."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 8,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.where = display_url(self.base_url)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retry = retry or DEFAULT_RETRY
        self._sleep = sleep
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )
        self._closed = threading.Event()

    def close(self) -> None:
        """Close the connection pool."""
        self._closed.set()
        self._http.close()

    # --- requests ------------------------------------------------------------------------------

    def _timeout(self, deadline: float) -> httpx.Timeout:
        remaining = max(0.5, deadline - time.monotonic())
        return httpx.Timeout(
            connect=min(self.connect_timeout, remaining),
            read=min(self.read_timeout, remaining),
            write=min(30.0, remaining),
            pool=remaining,
        )

    def get_json(self, path: str, *, attempts: int | None = None) -> Json:
        """GET ``path`` (relative to the base URL) and return its JSON object."""
        return self._with_retries(lambda deadline: self._json_once("GET", path, None, deadline), attempts)

    def post_json(self, path: str, body: Json, *, attempts: int | None = None) -> Json:
        """POST ``body`` to ``path`` and return the JSON object it answers."""
        return self._with_retries(lambda deadline: self._json_once("POST", path, body, deadline), attempts)

    def _json_once(self, method: str, path: str, body: Json | None, deadline: float) -> Json:
        try:
            response = self._http.request(method, path, json=body, timeout=self._timeout(deadline))
        except httpx.HTTPError as error:
            raise self._transport_failure(error) from error
        self._check(response)
        try:
            payload = response.json()
        except (ValueError, UnicodeDecodeError):
            raise _Transient("bad response", f"{path} answered something that is not JSON") from None
        if not isinstance(payload, dict):
            raise _Transient("bad response", f"{path} answered JSON that is not an object")
        return payload

    def stream_chat(
        self,
        body: Json,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> str:
        """Stream ``/chat/completions`` (``body`` gets ``stream: true``); pass each piece of text to
        ``on_text`` as it arrives and return the whole text. ``should_stop`` ends the stream early."""
        body = {**body, "stream": True}
        shown = [False]

        def deliver(piece: str) -> None:
            shown[0] = True
            if on_text is not None:
                on_text(piece)

        def attempt(deadline: float) -> str:
            if should_stop is not None and should_stop():
                return ""
            try:
                return self._stream_once(body, deadline, deliver, should_stop)
            except _Transient as failure:
                if shown[0]:
                    raise ModelInterruptedError(
                        f"the reply stream from {self.where} broke off after text was shown ({failure})"
                    ) from None
                raise

        return self._with_retries(attempt, None, stop=should_stop)

    def _stream_once(
        self,
        body: Json,
        deadline: float,
        deliver: Callable[[str], None],
        should_stop: Callable[[], bool] | None,
    ) -> str:
        pieces: list[str] = []
        finished = False
        try:
            with self._http.stream(
                "POST", "chat/completions", json=body, timeout=self._timeout(deadline)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for data in iter_sse_data(response.iter_lines()):
                    if data.strip() == "[DONE]":
                        finished = True
                        break
                    try:
                        chunk = json.loads(data)
                    except ValueError:
                        raise _Transient("bad stream", "an event's data is not JSON") from None
                    if not isinstance(chunk, dict):
                        raise _Transient("bad stream", "an event's data is not a JSON object")
                    if "error" in chunk:
                        raise _Transient("server error", "the server reported an error mid-stream")
                    for choice in chunk.get("choices") or ():
                        if not isinstance(choice, dict):
                            raise _Transient("bad stream", "a choice is not a JSON object")
                        content = (choice.get("delta") or {}).get("content")
                        if isinstance(content, str) and content:
                            pieces.append(content)
                            deliver(content)
                        if choice.get("finish_reason"):
                            finished = True
                    if should_stop is not None and should_stop():
                        finished = True
                        break
        except httpx.HTTPError as error:
            raise self._transport_failure(error) from error
        if not finished:
            raise _Transient("cut stream", "the stream ended before it finished")
        return "".join(pieces)

    def _check(self, response: httpx.Response) -> None:
        status = response.status_code
        if status < 400:
            return
        summary = _error_summary(response)
        if status == 429:
            raise _Transient(
                "rate limited", summary, retry_after=parse_retry_after(response.headers.get("retry-after"))
            )
        if status >= 500 or status == 408:
            raise _Transient(
                "server error", summary, retry_after=parse_retry_after(response.headers.get("retry-after"))
            )
        if status in (401, 403):
            raise ServerRejectedError(
                f"the inference server at {self.where} refused the request ({summary}): "
                "check MOODMATE_INFERENCE_API_KEY",
                status,
            )
        if status == 404:
            raise ServerRejectedError(
                f"the inference server at {self.where} has no such endpoint or model ({summary}): "
                "check MOODMATE_INFERENCE_URL and MOODMATE_INFERENCE_MODEL",
                status,
            )
        raise ServerRejectedError(
            f"the inference server at {self.where} rejected the request ({summary})", status
        )

    @staticmethod
    def _transport_failure(error: httpx.HTTPError) -> _Transient:
        if isinstance(error, httpx.TimeoutException):
            return _Transient("timeout", type(error).__name__)
        if isinstance(error, httpx.ConnectError):
            return _Transient("unreachable", "connection refused or failed")
        return _Transient("connection lost", type(error).__name__)

    def _with_retries(
        self,
        attempt: Callable[[float], T],
        attempts: int | None,
        *,
        stop: Callable[[], bool] | None = None,
    ) -> T:
        deadline = time.monotonic() + self.timeout
        tries = max(1, attempts if attempts is not None else self.retry.attempts)
        for index in range(tries):
            try:
                return attempt(deadline)
            except MoodmateError:
                raise
            except _Transient as failure:
                if failure.retry_after is not None:
                    delay = min(failure.retry_after, self.retry.max_retry_after_seconds)
                else:
                    delay = self.retry.backoff(index)
                last_try = index + 1 >= tries or time.monotonic() + delay >= deadline
                stopping = self._closed.is_set() or (stop is not None and stop())
                if last_try or stopping:
                    logger.warning("Inference server %s: %s; giving up", self.where, failure)
                    raise failure.translated(self.where) from None
                logger.warning(
                    "Inference server %s: %s; retrying in %.1f s (attempt %d of %d)",
                    self.where,
                    failure,
                    delay,
                    index + 2,
                    tries,
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
