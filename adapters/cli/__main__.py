"""``python -m adapters.cli``: the ``moodmate`` command."""

from adapters.cli import run

run()
