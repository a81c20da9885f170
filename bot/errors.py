"""The project's own exceptions: SDK, model and storage errors are translated into these."""

from __future__ import annotations


class MoodmateError(Exception):
    """Base class of every error moodmate raises on purpose."""

    user_message = "Sorry, something went wrong on my side. Please try again in a moment."


class ConfigurationError(MoodmateError):
    """A setting is missing or wrong; the message is one sentence meant for the operator."""


class ModelError(MoodmateError):
    """The language model failed to load or to answer."""

    user_message = "Sorry, I couldn't think of an answer just now. Please try again in a moment."


class ModelNotFoundError(ModelError, ConfigurationError):
    """The configured model cannot be found or is corrupt."""


class ModelTimeoutError(ModelError):
    """The model took longer than allowed."""

    user_message = "Sorry, that took me too long. Please try again, maybe with a shorter message."


class ModelUnavailableError(ModelError):
    """The inference server could not be reached, or kept failing, after the retries."""

    user_message = "Sorry, I can't reach my thoughts right now. Please try again in a minute or two."


class ModelInterruptedError(ModelError):
    """A streamed reply broke off after part of it was shown; it is not silently written again."""

    user_message = "Sorry, I lost my train of thought halfway through that answer. Please send it again."


class QueueFullError(MoodmateError):
    """The inference queue (or this user's share of it) is full."""

    user_message = "I'm a little busy right now. Please wait for my answer before sending more."


class StorageError(MoodmateError):
    """The database failed."""


class DuplicateMessageError(StorageError):
    """This platform message is stored already (a platform delivered it twice): it is answered once."""


class PlatformError(MoodmateError):
    """A chat platform refused or failed a request."""
