"""Who may talk to moodmate on Discord: the optional guild and channel allowlists.

Checked before the engine sees a message, so nothing is stored for anyone else.

* Server messages: the guild must be in ``discord_allowed_guild_ids`` (when set) and the channel,
  or the thread's parent channel, in ``discord_allowed_channel_ids`` (when set).
* DMs have no guild: with no allowlist everyone may DM; otherwise a DM is allowed when its DM
  channel id is listed in ``discord_allowed_channel_ids``, or, when only guilds are listed, when
  the person is a member of one of the allowed guilds (checked with ``GET
  /guilds/{id}/members/{user}``, which needs no privileged intent, and remembered for a while).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

#: Looks up whether a user is a member of a guild: (guild id, user id) -> member or not.
MemberLookup = Callable[[int, int], Awaitable[bool]]

MEMBERSHIP_TTL_SECONDS = 300.0


class AccessPolicy:
    """Applies the Discord allowlists from settings."""

    def __init__(
        self,
        allowed_guild_ids: frozenset[str],
        allowed_channel_ids: frozenset[str],
        is_member: MemberLookup,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allowed_guild_ids = allowed_guild_ids
        self.allowed_channel_ids = allowed_channel_ids
        self._is_member = is_member
        self._clock = clock
        self._memberships: dict[int, tuple[bool, float]] = {}

    @property
    def restricted(self) -> bool:
        return bool(self.allowed_guild_ids or self.allowed_channel_ids)

    def allows_guild_channel(self, guild_id: int, channel_id: int, parent_id: int | None = None) -> bool:
        """Whether moodmate may answer in this server channel (or thread of ``parent_id``)."""
        if self.allowed_guild_ids and str(guild_id) not in self.allowed_guild_ids:
            return False
        if self.allowed_channel_ids:
            listed = {str(channel_id)} | ({str(parent_id)} if parent_id is not None else set())
            return bool(listed & self.allowed_channel_ids)
        return True

    async def allows_dm(self, user_id: int, channel_id: int) -> bool:
        """Whether moodmate may answer this person's DMs."""
        if not self.restricted or str(channel_id) in self.allowed_channel_ids:
            return True
        if self.allowed_channel_ids or not self.allowed_guild_ids:
            return False
        return await self._member_of_allowed_guild(user_id)

    async def _member_of_allowed_guild(self, user_id: int) -> bool:
        now = self._clock()
        cached = self._memberships.get(user_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        member = False
        for guild_id in sorted(self.allowed_guild_ids):
            if not guild_id.isdigit():
                continue
            try:
                member = await self._is_member(int(guild_id), user_id)
            except Exception:
                logger.exception("Could not check membership in guild %s", guild_id)
                member = False
            if member:
                break
        self._memberships[user_id] = (member, now + MEMBERSHIP_TTL_SECONDS)
        return member
