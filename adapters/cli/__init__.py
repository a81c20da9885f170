"""The ``moodmate`` command: chat, run, classify, tune-mood, stats, crisis-check, doctor."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bot.errors import ConfigurationError, MoodmateError
from bot.settings import Settings

if TYPE_CHECKING:
    from bot.engine import Engine

logger = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moodmate", description="A chat companion that reads your mood.")
    parser.add_argument("--model", help="override MOODMATE_MODEL for this run")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("chat", help="chat in the terminal (reads stdin; piped input works too)")
    commands.add_parser("run", help="run every chat platform whose token is set")
    # Its own parser (adapters/cli/classify.py) reads every argument after "classify".
    commands.add_parser("classify", help="label messages read one per line", add_help=False)
    from adapters.cli.tune_mood import add_arguments as add_tune_arguments

    add_tune_arguments(
        commands.add_parser("tune-mood", help="fit the mood reads to your community's labelled messages")
    )
    commands.add_parser("stats", help="print usage counts (never message text)")
    from bot.safety.check_cli import add_arguments

    add_arguments(commands.add_parser("crisis-check", help="the crisis detector's figures on labelled files"))
    commands.add_parser("doctor", help="show what is set up and reachable (model or server, database, chats)")
    return parser


def _configure_logging(settings: Settings, level: str, verbose: bool) -> None:
    from bot.logs import configure_logging

    api_key = settings.inference_api_key.get_secret_value() if settings.inference_api_key else None
    secrets = (settings.telegram_token, settings.discord_token, api_key)
    configure_logging("DEBUG" if verbose else level, secrets)


def run() -> None:
    """The ``moodmate`` console script: ``main``, then exit without tearing the interpreter down.

    Everything is finished and flushed by then; what would remain is unloading torch, ~0.7 s of every
    ``moodmate classify`` here.
    """
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moodmate`` console script."""
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "classify":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "classify":
            from adapters.cli.classify import main as classify_main

            if args.model:
                rest = ["--model", args.model, *rest]
            return classify_main(rest)
        if args.command == "tune-mood":
            from adapters.cli.tune_mood import run as tune_run

            return tune_run(args.file, args.language, model=args.model)
        if args.command == "crisis-check":
            from bot.safety.check_cli import run

            return run(args.files, args.errors)
        from bot.bootstrap import load_settings

        overrides = {"model": args.model} if args.model else {}
        settings = load_settings(**overrides)
        if args.command == "chat":
            # The terminal is for the conversation: only warnings unless asked for more.
            _configure_logging(settings, "WARNING", args.verbose)
            return asyncio.run(_chat(settings))
        if args.command == "doctor":
            from adapters.doctor import doctor

            _configure_logging(settings, "WARNING", args.verbose)
            return asyncio.run(doctor(settings))
        _configure_logging(settings, settings.log_level, args.verbose)
        if args.command == "run":
            return asyncio.run(_run(settings))
        if args.command == "stats":
            return asyncio.run(_stats(settings))

    except ConfigurationError as error:
        print(f"moodmate: {error}", file=sys.stderr)
        return 2
    except MoodmateError as error:  # e.g. a platform unreachable at start, or lost while running
        print(f"moodmate: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 1


async def _chat(settings: Settings) -> int:
    """The terminal chat: the prompt shows at once while the model loads in the background."""
    from adapters.console import ConsoleAdapter
    from bot.bootstrap import App, bootstrap

    if settings.uses_inference_server:
        print("Connecting to the inference server...", file=sys.stderr, flush=True)
    else:
        print(
            "Loading the language model in the background (the first start converts it once, which takes "
            "a minute or two)...",
            file=sys.stderr,
            flush=True,
        )

    async def started_app() -> App:
        app = await bootstrap(settings)
        await app.start()
        return app

    loading = asyncio.create_task(started_app(), name="moodmate-load")

    async def engine() -> Engine:
        return (await loading).engine

    engine_ready = asyncio.create_task(engine())
    try:
        await ConsoleAdapter(engine_ready).run()
    finally:
        engine_ready.cancel()
        if loading.done() and not loading.cancelled() and loading.exception() is None:
            await loading.result().stop()
        else:
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await loading
    return 0


async def _run(settings: Settings) -> int:
    from adapters.runner import build_adapters, configured_platforms, install_signal_handlers, serve
    from bot.bootstrap import bootstrap

    configured_platforms(settings)  # fail fast, before loading the model
    app = await bootstrap(settings)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await serve(app, build_adapters(app), stop)
    return 0


async def _stats(settings: Settings) -> int:
    from bot.bootstrap import open_storage

    repository = open_storage(settings.database_url)
    await repository.initialize()
    try:
        stats = await repository.stats()
    finally:
        await repository.close()
    print(f"users\t{stats.users}\nchats\t{stats.chats}\nmessages\t{stats.messages}")
    print(f"mood entries\t{stats.mood_entries}")
    print(f"crisis replies\t{stats.crisis_replies}")
    if stats.moods_per_day:
        print("\nday\tlabel\tcount")
        for day, label, count in stats.moods_per_day:
            print(f"{day}\t{label}\t{count}")
    return 0
