"""The part of a transformers fast tokenizer moodmate uses, on the ``tokenizers`` library and jinja2 alone.

Importing transformers' tokenizer classes and reading the tokenizer files took ~1.6 s of every start;
:class:`ChatTokenizer` is built from the loaded tokenizer's own backend (its JSON) and chat template,
stored in the start snapshot, in a few hundred milliseconds. :func:`matches` checks it against the
tokenizer it came from (encodings, decodings, rendered chats); the snapshot is written only where it
does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Conversations rendered both ways before a snapshot is written.
PROBE_CHATS: tuple[tuple[dict[str, str], ...], ...] = (
    ({"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}),
    (
        {"role": "system", "content": "You are moodmate.\nReply in Chinese."},
        {"role": "user", "content": "我今天考试没考好，有点难过。"},
        {"role": "assistant", "content": "别难过。"},
        {"role": "user", "content": 'thanks :) <b>ok</b> "quoted" {braces}'},
    ),
    ({"role": "user", "content": "no system turn"},),
)
PROBE_TEXTS: tuple[str, ...] = (
    "hi",
    " positive",
    "Negative",
    "I had a rough day at work, my boss yelled at me in front of everyone.",
    "今天收到了录取通知书，太开心了！🎉",
    "tabs\tand\nnewlines  double  spaces",
    "<|im_start|>user looks special",
)


@dataclass
class ChatTokenizer:
    """Encode, decode and render chats as the transformers tokenizer it was taken from does."""

    backend_json: str
    chat_template: str
    special_tokens: dict[str, str | None]
    special_ids: dict[str, int | None]

    def __post_init__(self) -> None:
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_str(self.backend_json)
        self._template: Any = None
        self.pad_token_id = self.special_ids.get("pad_token_id")
        self.eos_token_id = self.special_ids.get("eos_token_id")
        self.unk_token_id = self.special_ids.get("unk_token_id")
        self.bos_token_id = self.special_ids.get("bos_token_id")

    def __getstate__(self) -> dict[str, Any]:
        return {
            "backend_json": self.backend_json,
            "chat_template": self.chat_template,
            "special_tokens": self.special_tokens,
            "special_ids": self.special_ids,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @classmethod
    def from_transformers(cls, tokenizer) -> ChatTokenizer | None:  # type: ignore[no-untyped-def]
        """Taken from a transformers fast tokenizer with a chat template (None for any other)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        template = getattr(tokenizer, "chat_template", None)
        if backend is None or not isinstance(template, str):
            return None
        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        special = {name: _as_text(getattr(tokenizer, name, None)) for name in names}
        ids = {f"{name}_id": getattr(tokenizer, f"{name}_id", None) for name in names}
        return cls(backend.to_str(), template, special, ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if add_special_tokens:
            raise ValueError("ChatTokenizer encodes without special tokens only")
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def convert_tokens_to_ids(self, token: str) -> int | None:
        found = self._backend.token_to_id(token)
        return self.unk_token_id if found is None else int(found)

    def __len__(self) -> int:
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, str]],
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = True,
    ) -> str:
        if tokenize:
            raise ValueError("ChatTokenizer renders text only")
        if self._template is None:
            self._template = _compile(self.chat_template)
        return str(
            self._template.render(
                messages=list(messages),
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        )


def matches(ours: ChatTokenizer, theirs, extra_texts: Sequence[str] = ()) -> bool:  # type: ignore[no-untyped-def]
    """Whether ``ours`` encodes, decodes and renders as ``theirs`` (a transformers tokenizer) on probes."""
    try:
        for text in (*PROBE_TEXTS, *extra_texts):
            ids = list(theirs.encode(text, add_special_tokens=False))
            if ours.encode(text) != ids:
                return False
            for skip in (True, False):
                if ours.decode(ids, skip_special_tokens=skip) != theirs.decode(ids, skip_special_tokens=skip):
                    return False
        for chat in PROBE_CHATS:
            for cue in (True, False):
                expected = theirs.apply_chat_template(list(chat), tokenize=False, add_generation_prompt=cue)
                if ours.apply_chat_template(chat, add_generation_prompt=cue) != expected:
                    return False
        for token in ("<|im_end|>", "<|endoftext|>", "<|im_start|>", "</s>", "no-such-token"):
            if ours.convert_tokens_to_ids(token) != theirs.convert_tokens_to_ids(token):
                return False
    except Exception:  # any failure to agree means: keep transformers' tokenizer
        return False
    return True


def _as_text(token: object) -> str | None:
    if token is None:
        return None
    return str(getattr(token, "content", token))


def _compile(template: str):  # type: ignore[no-untyped-def]
    """The template compiled as transformers compiles chat templates (sandboxed, same filters)."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: object,
        ensure_ascii: bool = False,
        indent: int | str | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = strftime_now
    return environment.from_string(template)
