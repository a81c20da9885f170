"""Discord formatting, endpoints and allowlists, without a network."""

from __future__ import annotations

import random

import pytest

from adapters.discord.access import AccessPolicy
from adapters.discord.endpoints import normalize_api_base, normalize_gateway
from adapters.discord.formatting import (
    IN_PROGRESS_MARK,
    MESSAGE_LIMIT,
    fence_state,
    in_progress_text,
    reply_text,
    split_for_discord,
    split_parts,
    strip_bot_mentions,
    utf16_length,
)
from bot.errors import ConfigurationError
from bot.types import Mood, MoodLabel, Reply, ReplyKind


def assert_well_formed(text: str, limit: int) -> None:
    parts = split_parts(text, limit)
    assert "".join(part.body for part in parts) == text
    open_language: str | None = None
    for part in parts:
        assert utf16_length(part.text) <= limit
        assert fence_state(part.text, None) is None, part.text  # balanced on its own
        expected_prefix = "" if open_language is None else f"```{open_language}\n"
        assert part.prefix == expected_prefix
        open_language = fence_state(part.body, open_language)
        assert part.suffix == ("" if open_language is None else part.suffix)
        assert part.suffix in ("", "```", "\n```")


def test_short_text_is_one_part() -> None:
    assert split_for_discord("hello") == ["hello"]
    assert split_for_discord("") == [""]


def test_prose_is_cut_between_words() -> None:
    text = " ".join(f"word{i}" for i in range(1500))
    parts = split_for_discord(text)
    assert len(parts) > 1 and "".join(parts) == text
    assert all(len(part) <= MESSAGE_LIMIT for part in parts)
    assert all(part.endswith(" ") for part in parts[:-1])


def test_a_cut_inside_a_code_block_closes_and_reopens_the_fence() -> None:
    code = "\n".join(f"print({i})  # line {i}" for i in range(200))
    text = f"Here you go:\n```python\n{code}\n```\nDone."
    parts = split_parts(text)
    assert len(parts) >= 3
    assert parts[0].suffix in ("```", "\n```") and parts[0].body.startswith("Here you go:")
    assert all(part.prefix == "```python\n" for part in parts[1:])
    assert parts[-1].suffix == ""
    assert_well_formed(text, MESSAGE_LIMIT)


def test_an_untagged_fence_is_reopened_untagged() -> None:
    text = "```\n" + "x = 1\n" * 600 + "```"
    parts = split_parts(text)
    assert [part.prefix for part in parts[1:]] == ["```\n"] * (len(parts) - 1)
    assert_well_formed(text, MESSAGE_LIMIT)


def test_an_opening_fence_is_not_left_dangling_at_the_end_of_a_part() -> None:
    text = "a" * 60 + "\n```js\n" + "let x = 1;\n" * 10 + "```"
    parts = split_parts(text, 80)
    assert not any(part.body.rstrip("\n").endswith("```js") for part in parts)
    assert_well_formed(text, 80)


def test_cuts_never_split_a_backtick_run() -> None:
    text = "word " * 15 + "```py\nprint(1)\n```" + " tail" * 20
    for limit in range(20, 60):
        for part in split_parts(text, limit):
            assert not part.body.endswith("``") or part.body.endswith("```")
        assert_well_formed(text, limit)


def test_characters_outside_the_bmp_count_twice() -> None:
    text = "😀" * 2500
    parts = split_for_discord(text)
    assert "".join(parts) == text
    assert all(utf16_length(part) <= MESSAGE_LIMIT for part in parts)
    assert utf16_length(parts[0]) >= MESSAGE_LIMIT - 2


@pytest.mark.parametrize("seed", range(30))
def test_random_markdown_is_always_split_well_formed(seed: int) -> None:
    rng = random.Random(seed)
    pieces = []
    for _ in range(rng.randint(5, 40)):
        kind = rng.random()
        if kind < 0.3:
            lines = "\n".join(
                "    " + " ".join(rng.choice("abc xyz q") for _ in range(rng.randint(1, 40)))
                for _ in range(rng.randint(1, 30))
            )
            pieces.append(f"```{rng.choice(['', 'py', 'c++', 'shell'])}\n{lines}\n```")
        elif kind < 0.4:
            pieces.append("inline ```code``` here")
        else:
            pieces.append(
                " ".join(
                    rng.choice(["hello", "world.", "émoji😀", "x" * rng.randint(1, 90)])
                    for _ in range(rng.randint(1, 80))
                )
            )
    text = rng.choice(["\n\n", "\n", " "]).join(pieces)
    limit = rng.choice([60, 150, 700, MESSAGE_LIMIT])
    assert_well_formed(text, limit)


def test_chat_replies_show_their_mood_badge_first() -> None:
    mood = Mood(MoodLabel.NEGATIVE, 0.91)
    assert reply_text(Reply("I'm sorry.", kind=ReplyKind.CHAT, mood=mood)) == "😟 negative 0.91\nI'm sorry."
    assert reply_text(Reply("/help text", kind=ReplyKind.COMMAND)) == "/help text"


def test_a_reply_in_progress_shows_badge_text_so_far_and_a_mark() -> None:
    mood = Mood(MoodLabel.POSITIVE, 0.9)
    assert in_progress_text(mood, "  \n ") is None
    assert in_progress_text(mood, "Hello there, @everyone \n") == "🙂 positive 0.90\nHello there, @everyone …"


def test_a_long_reply_in_progress_fits_one_message_with_fences_balanced() -> None:
    mood = Mood(MoodLabel.NEUTRAL, 0.8)
    code = "\n".join(f"value_{i} = compute({i})" for i in range(400))
    shown = in_progress_text(mood, f"Here you go:\n\n```python\n{code}")
    assert shown is not None
    assert utf16_length(shown) <= MESSAGE_LIMIT and shown.endswith(IN_PROGRESS_MARK)
    assert shown.startswith("😐 neutral 0.80\nHere you go:")
    assert fence_state(shown, None) is None
    final_first = split_for_discord(f"😐 neutral 0.80\nHere you go:\n\n```python\n{code}\n```")[0]
    assert len(shown) > 1500 and final_first.startswith(shown[: len(shown) // 2])


def test_only_the_bots_own_mentions_are_stripped() -> None:
    assert strip_bot_mentions("<@42> hi there <@!42>", 42) == "hi there"
    assert strip_bot_mentions("hey <@7>, meet <@42>", 42) == "hey <@7>, meet"
    assert strip_bot_mentions("<@&99> role call <@&5>", 42, frozenset({99})) == "role call <@&5>"


def test_api_base_urls_are_normalised() -> None:
    assert normalize_api_base("http://127.0.0.1:9000") == "http://127.0.0.1:9000/api/v10"
    assert normalize_api_base("http://127.0.0.1:9000/") == "http://127.0.0.1:9000/api/v10"
    assert normalize_api_base("http://127.0.0.1:9000/api") == "http://127.0.0.1:9000/api/v10"
    assert normalize_api_base("http://127.0.0.1:9000/api/v10/") == "http://127.0.0.1:9000/api/v10"
    assert (
        normalize_api_base("https://proxy.example/discord/api/v10") == "https://proxy.example/discord/api/v10"
    )
    with pytest.raises(ConfigurationError):
        normalize_api_base("127.0.0.1:9000")


def test_gateway_urls_lose_their_query() -> None:
    assert str(normalize_gateway("ws://127.0.0.1:9000/gateway?v=10&encoding=json")) == (
        "ws://127.0.0.1:9000/gateway"
    )
    with pytest.raises(ConfigurationError):
        normalize_gateway("http://127.0.0.1:9000/gateway")


async def test_allowlists() -> None:
    lookups: list[tuple[int, int]] = []

    async def is_member(guild_id: int, user_id: int) -> bool:
        lookups.append((guild_id, user_id))
        return user_id == 1

    open_policy = AccessPolicy(frozenset(), frozenset(), is_member)
    assert open_policy.allows_guild_channel(5, 6) and await open_policy.allows_dm(2, 9)

    guilds = AccessPolicy(frozenset({"5"}), frozenset(), is_member)
    assert guilds.allows_guild_channel(5, 6) and not guilds.allows_guild_channel(8, 6)
    assert await guilds.allows_dm(1, 9) and not await guilds.allows_dm(2, 9)
    assert await guilds.allows_dm(1, 9)
    assert lookups == [(5, 1), (5, 2)]  # remembered

    channels = AccessPolicy(frozenset({"5"}), frozenset({"6", "9"}), is_member)
    assert channels.allows_guild_channel(5, 6) and not channels.allows_guild_channel(5, 7)
    assert channels.allows_guild_channel(5, 70, parent_id=6)  # a thread of an allowed channel
    assert await channels.allows_dm(2, 9) and not await channels.allows_dm(1, 10)
