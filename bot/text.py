"""Making arbitrary user text safe to store, show and feed to the model."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline, and the BOM.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff]")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
_INVISIBLE_ONLY = re.compile(r"^[\s\u200b-\u200f\u2028-\u202f\u2060-\u2064\u180e]*$")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


def is_chinese(text: str) -> bool:
    """True when the text is mostly Chinese (more CJK characters than Latin words)."""
    return len(_CJK.findall(text)) >= max(1, len(_LATIN_WORD.findall(text)))


def sanitize(text: str) -> str:
    """Drop control characters and lone surrogates, normalise line endings and Unicode (NFC).

    Right-to-left marks, zero-width joiners and emoji are kept: they are part of real writing.
    """
    text = _LONE_SURROGATE.sub("\ufffd", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    return unicodedata.normalize("NFC", text)


def is_blank(text: str) -> bool:
    """True for empty text, or text made only of whitespace and invisible characters."""
    return _INVISIBLE_ONLY.match(text) is not None


def truncate(text: str, limit: int) -> tuple[str, bool]:
    """At most ``limit`` characters, cut at a space when one is near; and whether it was cut."""
    if len(text) <= limit:
        return text, False
    cut = text.rfind(" ", int(limit * 0.9), limit)
    return text[: cut if cut > 0 else limit], True
