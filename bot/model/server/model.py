"""``LanguageModel`` on an OpenAI-compatible server (vLLM, llama.cpp's server, Ollama).

* Replies stream from ``/chat/completions`` (server-sent events) into ``on_text``; ``should_stop``
  closes the stream. The prompt is the local model's: the cleaned system prompt, then the
  turns the engine chose.
* Mood reads use the local model's history-free prompt, scored as :mod:`bot.model.server.mood`
  describes; how (log-probabilities or a constrained answer) is detected once, at start, or at the
  first read when the server was down then.
* Up to ``concurrency`` requests are in flight at once (the server batches them); a batch of mood reads
  is sent as parallel requests.
* ``count_tokens`` is an estimate, not the server's ``/tokenize``: the engine counts every history
  row before each reply, where a network call each would delay every reply. One CJK character
  or 3.5 other characters count as a token: against the bundled Qwen tokenizer that overcounts
  1,000 TweetEval tweets by 10 % and 1,000 waimai reviews by 41 %, so trimmed history stays within
  its budget.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from bot.errors import ConfigurationError, ModelError, ModelTimeoutError, ModelUnavailableError, MoodmateError
from bot.model.base import ChatTurn, StopCheck, TextCallback
from bot.model.mood_prompt import clean_message
from bot.model.options import ServerOptions
from bot.model.server.client import Json, ServerClient, ServerRejectedError
from bot.model.server.mood import (
    CONSTRAINED_MODES,
    MoodMode,
    answer_text,
    constrained_answer,
    constrained_request,
    first_top_logprobs,
    logprobs_request,
    mood_from_top_logprobs,
    mood_from_word,
    mood_prompt,
    one_hot,
)
from bot.types import Mood, MoodLabel

logger = logging.getLogger(__name__)

#: The message the mood mode is detected with.
PROBE_MESSAGE = "Thanks so much, that really made my day!"
#: What a server answers a field it does not know (or a value it cannot honour).
UNKNOWN_FIELD_STATUSES = frozenset({400, 422, 501})
#: Answers no model gives unprompted: a constrained probe that returns one proves the constraint works.
PROBE_CHOICES = ("Q7", "Z9")

_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


@dataclass(frozen=True, slots=True)
class ServerSampling:
    """How replies are sampled (the local model's defaults; other knobs are not portable)."""

    temperature: float = 0.7
    top_p: float = 0.9


def estimate_tokens(text: str) -> int:
    """About how many tokens ``text`` takes (see the module's docstring)."""
    cjk = len(_CJK.findall(text))
    return cjk + math.ceil((len(text) - cjk) / 3.5)


class ServerModel:
    """A model served over the OpenAI API, implementing ``LanguageModel``."""

    def __init__(
        self,
        client: ServerClient,
        *,
        model: str | None = None,
        concurrency: int = 4,
        max_input_chars: int = 4000,
        sampling: ServerSampling | None = None,
        mood_mode: MoodMode | None = None,
    ) -> None:
        self.client = client
        self.model_id = model
        self.concurrency = max(1, concurrency)
        self.max_input_chars = max_input_chars
        self.sampling = sampling or ServerSampling()
        self.mood_mode = mood_mode
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._ready = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="moodmate-server-mood"
        )

    @property
    def name(self) -> str:
        return self.model_id or "server"

    @classmethod
    def connect(cls, options: ServerOptions) -> ServerModel:
        """The server ``options`` name, with its model and mood mode found now where it answers."""
        if not options.url:
            raise ConfigurationError("MOODMATE_INFERENCE_URL is not set.")
        client = ServerClient(
            options.url,
            api_key=options.api_key,
            timeout=options.timeout,
            read_timeout=options.timeout,
            max_connections=options.concurrency + 2,
        )
        model = cls(
            client,
            model=options.model,
            concurrency=options.concurrency,
            max_input_chars=options.max_input_chars,
        )
        try:
            model.prepare(attempts=1)
        except (ModelUnavailableError, ModelTimeoutError) as error:
            logger.warning("%s; mood reads are set up when it answers", error)
        except ModelError as error:
            raise ConfigurationError(f"Cannot use the inference server: {error}.") from error
        return model

    def close(self) -> None:
        """Close the connection pool and the mood-read threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # --- set-up --------------------------------------------------------------------------------

    def prepare(self, *, attempts: int | None = None) -> None:
        """Find the served model (when none is configured) and how mood reads are scored, once."""
        with self._ready:
            if self.model_id is None:
                self.model_id = self._first_model(attempts)
            if self.mood_mode is None:
                self.mood_mode = self._detect_mood_mode(attempts)
                logger.info(
                    "Inference server %s, model %s: mood reads by %s",
                    self.client.where,
                    self.model_id,
                    self.mood_mode.value,
                )

    def _first_model(self, attempts: int | None) -> str | None:
        listing = self.client.get_json("models", attempts=attempts)
        for entry in listing.get("data") or ():
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                return str(entry["id"])
        logger.warning("Inference server %s lists no model; requests name none", self.client.where)
        return None

    def _detect_mood_mode(self, attempts: int | None) -> MoodMode:
        messages, words = mood_prompt(PROBE_MESSAGE)
        try:
            response = self._post(logprobs_request(self.model_id, messages), attempts)
        except ServerRejectedError as error:
            if error.status not in UNKNOWN_FIELD_STATUSES:
                raise
            logger.info("Inference server %s refused log-probabilities: %s", self.client.where, error)
            response = {}
        top = first_top_logprobs(response)
        if top is not None and mood_from_top_logprobs(top, words) is not None:
            return MoodMode.LOGPROBS
        for mode in CONSTRAINED_MODES:
            try:
                body = constrained_request(self.model_id, messages, mode, PROBE_CHOICES)
                answer = self._post(body, attempts)
            except ServerRejectedError as error:
                if error.status not in UNKNOWN_FIELD_STATUSES:
                    raise
                continue  # this server does not know the field
            if constrained_answer(answer, mode, PROBE_CHOICES) is not None:
                return mode
        logger.warning(
            "Inference server %s gives neither log-probabilities nor constrained answers: mood reads "
            "take the first word of a free answer (neutral when it is no label)",
            self.client.where,
        )
        return MoodMode.PLAIN

    def describe(self) -> dict[str, str]:
        """What ``moodmate doctor`` shows: where, which model, how moods are read (no secrets)."""
        return {
            "url": self.client.where,
            "model": self.model_id or "(none listed)",
            "mood reads": self.mood_mode.value if self.mood_mode else "(not detected)",
            "concurrency": str(self.concurrency),
        }

    def _post(self, body: Json, attempts: int | None = None) -> Json:
        with self._slots:
            return self.client.post_json("chat/completions", body, attempts=attempts)

    def _ensure_ready(self) -> None:
        if self.mood_mode is None or self.model_id is None:
            self.prepare()

    # --- LanguageModel -------------------------------------------------------------------------

    def classify(self, texts: Sequence[str]) -> list[Mood]:
        """Read each text's mood on its own; the texts go to the server as parallel requests."""
        if not texts:
            return []
        self._ensure_ready()
        if len(texts) == 1:
            return [self._read_mood(texts[0])]
        futures = [self._pool.submit(self._read_mood, text) for text in texts]
        try:
            return [future.result() for future in futures]
        except MoodmateError:
            for future in futures:
                future.cancel()
            raise

    def _read_mood(self, text: str) -> Mood:
        messages, words = mood_prompt(text, max_chars=self.max_input_chars)
        mode = self.mood_mode or MoodMode.PLAIN
        if mode is MoodMode.LOGPROBS:
            response = self._post(logprobs_request(self.model_id, messages))
            top = first_top_logprobs(response)
            mood = mood_from_top_logprobs(top, words) if top is not None else None
            if mood is not None:
                return mood
            logger.debug("No label among the top tokens; reading the answer word instead")
            return mood_from_word(answer_text(response), words)
        choices = [words[label] for label in (MoodLabel.POSITIVE, MoodLabel.NEUTRAL, MoodLabel.NEGATIVE)]
        response = self._post(constrained_request(self.model_id, messages, mode, choices))
        if mode is MoodMode.PLAIN:
            return mood_from_word(answer_text(response), words)
        answer = constrained_answer(response, mode, choices)
        if answer is None:
            return mood_from_word(answer_text(response), words)
        return one_hot(next(label for label, word in words.items() if word == answer))

    def generate(
        self,
        system: str,
        history: Sequence[ChatTurn],
        *,
        max_new_tokens: int,
        on_text: TextCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> str:
        """Stream the assistant's next turn from the server through ``on_text``."""
        if self.model_id is None:
            self._ensure_ready()
        limit = self.max_input_chars * 4
        turns = [ChatTurn(turn.role, clean_message(turn.content, max_chars=limit)) for turn in history]
        system_clean = clean_message(system, max_chars=limit)
        messages = [{"role": "system", "content": system_clean}]
        messages += [{"role": turn.role, "content": turn.content} for turn in turns]
        body: Json = {
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
        }
        if self.model_id:
            body["model"] = self.model_id
        with self._slots:
            text = self.client.stream_chat(body, on_text=on_text, should_stop=should_stop)
        return text.strip()

    def count_tokens(self, text: str) -> int:
        """An estimate of the tokens ``text`` takes (see the module's docstring)."""
        return estimate_tokens(text)
