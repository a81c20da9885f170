"""``moodmate run`` with the fake model: the real command line, settings, runner and adapters, only
the model loader replaced (``FAKE_MODEL_MOOD_SECONDS`` / ``FAKE_MODEL_REPLY_SECONDS`` set its pace).

    python -m tests.fakes.fake_model_run run
"""

from __future__ import annotations

import os
import sys

from adapters import cli
from bot.model import loader
from bot.model.fake import FakeModel


def _fake_model(options, progress=False):  # type: ignore[no-untyped-def]
    return FakeModel(
        mood_delay=float(os.environ.get("FAKE_MODEL_MOOD_SECONDS", "0")),
        reply_delay=float(os.environ.get("FAKE_MODEL_REPLY_SECONDS", "0")),
    )


if __name__ == "__main__":
    loader.load_model = _fake_model  # type: ignore[assignment]
    raise SystemExit(cli.main(sys.argv[1:]))
