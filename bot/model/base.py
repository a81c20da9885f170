"""The one interface every language model behind moodmate implements."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from bot.types import Mood

Role = Literal["user", "assistant"]

#: Called with each new piece of reply text as it is generated.
TextCallback = Callable[[str], None]
#: Polled between generated tokens; returning True stops generation early.
StopCheck = Callable[[], bool]


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One turn of a conversation, as the reply prompt sees it."""

    role: Role
    content: str


@runtime_checkable
class LanguageModel(Protocol):
    """A loaded model that can read moods and write replies.

    Both methods are blocking and CPU-heavy: the inference worker calls them from its own thread,
    never from the event loop.
    """

    @property
    def name(self) -> str:
        """What the model is, for logs (e.g. its path or the server's model id)."""
        ...

    def classify(self, texts: Sequence[str]) -> list[Mood]:
        """Read the mood of each text on its own (history-free); one ``Mood`` per text, in order."""
        ...

    def generate(
        self,
        system: str,
        history: Sequence[ChatTurn],
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> str:
        """Write the assistant's next turn after ``history`` (which ends with the user's turn)."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes, for trimming history to a budget."""
        ...
