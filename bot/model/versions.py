"""Installed library versions, read without importing the libraries."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def transformers_version() -> str:
    """The installed transformers version ("unknown" when it cannot be read)."""
    try:
        return version("transformers")
    except PackageNotFoundError:
        return "unknown"
