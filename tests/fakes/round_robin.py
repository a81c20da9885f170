"""A round-robin HTTP load balancer for tests: each request goes to the next backend; a backend
that refuses the connection is skipped for that request (the next one gets it); none: 502."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import aiohttp
from aiohttp import web


class RoundRobin:
    """``async with RoundRobin(["http://127.0.0.1:A", ...]) as balancer: balancer.url``"""

    def __init__(self, backends: Sequence[str]) -> None:
        self.backends = list(backends)
        self._next = itertools.cycle(range(len(self.backends)))
        #: (backend index, HTTP status or 0 when it refused the connection) per attempt.
        self.attempts: list[tuple[int, int]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> RoundRobin:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        for _ in range(len(self.backends)):
            index = next(self._next)
            try:
                async with self._session.request(
                    request.method, self.backends[index] + request.path_qs, data=body, headers=headers
                ) as response:
                    payload = await response.read()
                    self.attempts.append((index, response.status))
                    return web.Response(status=response.status, body=payload)
            except (aiohttp.ClientConnectionError, OSError):
                self.attempts.append((index, 0))
        return web.Response(status=502, text="no backend answered")
