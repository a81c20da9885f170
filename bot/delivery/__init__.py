"""Delivery: what happens to a reply after the engine has it, the same on every platform.

:mod:`~bot.delivery.lifecycle` drives a small per-platform :class:`~bot.delivery.port.ReplyPort`
(post, edit, delete, typing, open-private, limits, split rules); :mod:`~bot.delivery.retry` is the
one retry helper; :mod:`~bot.delivery.timing` holds every timing.
"""

from bot.delivery.lifecycle import Answering, Delivery, queue_notice
from bot.delivery.port import (
    Outgoing,
    Place,
    PortLimits,
    Posted,
    PrivateNotes,
    RefusedError,
    ReplyPort,
    TransientError,
)
from bot.delivery.retry import with_backoff

__all__ = [
    "Answering",
    "Delivery",
    "Outgoing",
    "Place",
    "PortLimits",
    "Posted",
    "PrivateNotes",
    "RefusedError",
    "ReplyPort",
    "TransientError",
    "queue_notice",
    "with_backoff",
]
