"""The inference server's base URL: checked and normalised once, and shown without secrets."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def normalise_base_url(value: str) -> str:
    """``value`` as an OpenAI-compatible base URL ending in ``/v1`` (appended when the path is empty).

    Raises ``ValueError`` with one sentence for anything that is not an http(s) URL.
    """
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{display_url(text)!r} is not an http(s) URL: set MOODMATE_INFERENCE_URL to the server's "
            "OpenAI-compatible base, e.g. http://127.0.0.1:8000/v1"
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(
            "MOODMATE_INFERENCE_URL has an invalid port: use e.g. http://127.0.0.1:8000/v1"
        ) from None
    path = parts.path.rstrip("/")
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def display_url(url: str) -> str:
    """``url`` without user name, password or query (which may hold keys), for logs and ``doctor``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
