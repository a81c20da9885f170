"""Every timing of the reply lifecycle, in one place (platform limits live with each port)."""

from __future__ import annotations

#: Show a reply while it is written only once writing it has taken this long after its mood was
#: read, so that a quick reply arrives as one finished message, never edited. One value for every
#: platform (Telegram used 2.0 s and Discord 1.5 s before; the model writes for 10-60 s on a CPU).
STREAM_DELAY_SECONDS = 1.5
#: At least this long between two requests that show a reply in progress (Discord allows about 5
#: edits per 5 s per channel, Telegram about one a second per chat; each edit redraws the message).
EDIT_INTERVAL_SECONDS = 1.5
#: How long the end of a reply waits for a preview request already on its way, so that it is
#: edited into the reply rather than left behind.
IN_FLIGHT_WAIT_SECONDS = 10.0
#: How long a reply cut off by a stop may take to delete its unfinished preview.
CLEANUP_SECONDS = 5.0

#: Tries in all for a request that failed in a way the platform's SDK does not retry itself, and
#: the backoff between them (1 s, 2 s, 4 s, ... capped).
ATTEMPTS = 4
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 8.0
