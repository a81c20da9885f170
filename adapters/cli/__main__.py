"""``python -m adapters.cli``: the ``moodmate`` command."""

from adapters.cli import main

raise SystemExit(main())
