"""The fake Discord server at the wire level (plain aiohttp, no discord.py), so it stays honest."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.fakes.discord_server import ZLIB_SUFFIX, FakeDiscordServer


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscordServer]:
    async with FakeDiscordServer(privileged_intents_enabled=True) as server:
        server.add_guild("Cafe", channels=("general",))
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def auth(fake: FakeDiscordServer) -> dict[str, str]:
    return {"Authorization": f"Bot {fake.token}"}


async def test_rest_answers_with_exact_json_content_type(
    fake: FakeDiscordServer, session: aiohttp.ClientSession
) -> None:
    async with session.get(fake.api_base_url + "/users/@me", headers=auth(fake)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        me = await response.json()
    assert me["id"] == fake.bot.id and isinstance(me["id"], str) and me["bot"] is True
    async with session.get(
        fake.api_base_url + "/users/@me", headers={"Authorization": "Bot nope"}
    ) as response:
        assert response.status == 401
        assert (await response.json())["message"] == "401: Unauthorized"


async def test_injected_rate_limits_look_like_discords(
    fake: FakeDiscordServer, session: aiohttp.ClientSession
) -> None:
    channel = next(iter(fake.guilds.values())).channels["general"]
    url = f"{fake.api_base_url}/channels/{channel}/messages"
    fake.rate_limit("POST", r"/channels/\d+/messages", retry_after=0.25)
    async with session.post(url, json={"content": "hi"}, headers=auth(fake)) as response:
        assert response.status == 429
        body = await response.json()
        assert body == {"message": "You are being rate limited.", "retry_after": 0.25, "global": False}
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert response.headers["X-RateLimit-Scope"] == "user"
        assert float(response.headers["X-RateLimit-Reset-After"]) == 0.25
        assert response.headers["Retry-After"] == "1" and response.headers["Via"]
    async with session.post(url, json={"content": "hi"}, headers=auth(fake)) as response:
        assert response.status == 200
        message = await response.json()
        assert message["content"] == "hi" and message["channel_id"] == channel


async def test_messages_are_validated_and_multipart_is_recorded(
    fake: FakeDiscordServer, session: aiohttp.ClientSession
) -> None:
    channel = next(iter(fake.guilds.values())).channels["general"]
    url = f"{fake.api_base_url}/channels/{channel}/messages"
    async with session.post(url, json={"content": "x" * 2001}, headers=auth(fake)) as response:
        assert response.status == 400 and (await response.json())["code"] == 50035
    async with session.post(url, json={"content": ""}, headers=auth(fake)) as response:
        assert response.status == 400 and (await response.json())["code"] == 50006
    form = aiohttp.FormData(quote_fields=False)
    form.add_field("payload_json", json.dumps({"content": "file!"}), content_type="application/json")
    form.add_field("files[0]", b"a,b\n1,2\n", filename="data.csv", content_type="text/csv")
    async with session.post(url, data=form, headers=auth(fake)) as response:
        assert response.status == 200
        assert (await response.json())["attachments"][0]["filename"] == "data.csv"
    recorded = fake.sent_messages(channel)[-1]
    assert recorded.content == "file!"
    assert [(f.field_name, f.filename, f.data) for f in recorded.files] == [
        ("files[0]", "data.csv", b"a,b\n1,2\n")
    ]


async def test_bot_messages_can_be_edited_like_on_discord(
    fake: FakeDiscordServer, session: aiohttp.ClientSession
) -> None:
    channel = next(iter(fake.guilds.values())).channels["general"]
    async with session.post(
        f"{fake.api_base_url}/channels/{channel}/messages", json={"content": "draft …"}, headers=auth(fake)
    ) as response:
        created = await response.json()
    url = f"{fake.api_base_url}/channels/{channel}/messages/{created['id']}"
    body = {"content": "final", "allowed_mentions": {"parse": []}, "components": []}
    async with session.patch(url, json=body, headers=auth(fake)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        edited = await response.json()
    assert edited["id"] == created["id"] and edited["channel_id"] == channel
    assert edited["content"] == "final" and edited["edited_timestamp"] is not None
    assert edited["author"]["id"] == fake.bot.id and edited["timestamp"] == created["timestamp"]
    [recorded] = fake.message_edits(channel, created["id"])
    assert recorded.payload == body and recorded.response == edited

    async with session.patch(url, json={"content": "x" * 2001}, headers=auth(fake)) as response:
        assert response.status == 400 and (await response.json())["code"] == 50035
    someone = fake.add_user("someone")
    theirs = fake.create_message(channel, someone, "not yours")
    async with session.patch(
        f"{fake.api_base_url}/channels/{channel}/messages/{theirs['id']}", json=body, headers=auth(fake)
    ) as response:
        assert response.status == 403 and (await response.json())["code"] == 50005
    fake.fail("PATCH", r"/channels/\d+/messages/\d+")
    async with session.patch(url, json=body, headers=auth(fake)) as response:
        assert response.status == 404 and (await response.json())["code"] == 10008
    async with session.patch(url + "0", json=body, headers=auth(fake)) as response:
        assert response.status == 404  # no such message
    assert len(fake.message_edits()) == 1  # failed edits are recorded but not counted


class GatewayReader:
    """Reads gateway payloads the way a client does, inflating zlib-stream frames."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.inflater = zlib.decompressobj()
        self.binary_frames = 0

    async def next(self) -> dict[str, Any]:
        message = await self.ws.receive(timeout=5)
        if message.type is aiohttp.WSMsgType.BINARY:
            self.binary_frames += 1
            assert message.data.endswith(ZLIB_SUFFIX)
            return json.loads(self.inflater.decompress(message.data))
        assert message.type is aiohttp.WSMsgType.TEXT, message
        return json.loads(message.data)


@pytest.mark.parametrize("compress", [True, False])
async def test_gateway_handshake(
    fake: FakeDiscordServer, session: aiohttp.ClientSession, compress: bool
) -> None:
    query = "?v=10&encoding=json" + ("&compress=zlib-stream" if compress else "")
    async with session.ws_connect(fake.gateway_url + query) as ws:
        reader = GatewayReader(ws)
        hello = await reader.next()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await ws.send_json({"op": 1, "d": None})
        assert (await reader.next())["op"] == 11
        await ws.send_json(
            {
                "op": 2,
                "d": {
                    "token": fake.token,
                    "intents": 3276799 & ~(1 << 1 | 1 << 8),
                    "properties": {"os": "linux", "browser": "t", "device": "t"},
                },
            }
        )
        ready = await reader.next()
        assert (ready["op"], ready["t"], ready["s"]) == (0, "READY", 1)
        data = ready["d"]
        assert data["v"] == 10 and data["user"]["id"] == fake.bot.id and data["session_id"]
        assert data["resume_gateway_url"] == fake.gateway_url
        assert data["application"] == {"id": fake.application_id, "flags": 0}
        assert data["guilds"] == [{"id": guild_id, "unavailable": True} for guild_id in fake.guilds]
        guild = await reader.next()
        assert (guild["t"], guild["s"]) == ("GUILD_CREATE", 2)
        assert guild["d"]["channels"][0]["name"] == "general" and guild["d"]["members"]
        sequence = await fake.dispatch("TYPING_START", {"channel_id": "1", "user_id": "2", "timestamp": 0})
        event = await reader.next()
        assert sequence == 3 and (event["t"], event["s"]) == ("TYPING_START", 3)
        assert reader.binary_frames == (5 if compress else 0)
    assert fake.connection_queries[-1].get("compress") == ("zlib-stream" if compress else None)


@pytest.mark.parametrize(
    ("token_ok", "intents_enabled", "close_code"), [(False, True, 4004), (True, False, 4014)]
)
async def test_gateway_refusals_use_discords_close_codes(
    fake: FakeDiscordServer,
    session: aiohttp.ClientSession,
    token_ok: bool,
    intents_enabled: bool,
    close_code: int,
) -> None:
    fake.privileged_intents_enabled = intents_enabled
    async with session.ws_connect(fake.gateway_url + "?v=10&encoding=json") as ws:
        await ws.receive_json(timeout=5)  # HELLO
        token = fake.token if token_ok else "wrong"
        await ws.send_json({"op": 2, "d": {"token": token, "intents": 1 << 15, "properties": {}}})
        closing = await ws.receive(timeout=5)
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == close_code
