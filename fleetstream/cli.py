"""The ``fleetstream`` command: one sub-command per stage.

Each stage runs on its own (``fleetstream poll``, ``webhook``, ``process``, ``derive``,
``sink``, ``api``, ``migrate``) so production can scale and restart them
separately; ``fleetstream dev`` runs all of them on the embedded defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
from collections.abc import Callable

from aiokafka.errors import KafkaConnectionError
from pydantic import ValidationError

from fleetstream import logs
from fleetstream.errors import FleetstreamError
from fleetstream.settings import ENV_PREFIX, Settings, get_settings

STAGES: dict[str, tuple[str, str]] = {
    "poll": ("producers.poll", "poll the Tracksolid Open API into raw topics"),
    "webhook": ("producers.webhook", "receive platform pushes into raw topics"),
    "process": ("processors.app", "clean raw topics into clean topics (faust)"),
    "derive": (
        "processors.derived",
        "derive distance, trips and daily mileage from clean positions",
    ),
    "sink": ("sinks.runner", "write clean topics into PostgreSQL"),
    "api": ("api.app", "serve the reporting API and the maps"),
    "fake-platform": ("fakeplatform.server", "run the fake Tracksolid platform"),
    "dev": ("fleetstream.dev", "run the whole pipeline on embedded defaults"),
}


def _stage_main(module: str) -> Callable:
    return importlib.import_module(module).main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleetstream", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in STAGES.items():
        commands.add_parser(name, help=help_text)

    migrate = commands.add_parser("migrate", help="apply database migrations")
    migrate.add_argument("--dry-run", action="store_true", help="print the plan only")

    commands.add_parser("topics", help="create every declared topic")

    backfill = commands.add_parser("backfill", help="pull history from the API")
    backfill.add_argument("--from", dest="start", required=True, help="UTC start")
    backfill.add_argument("--to", dest="end", required=True, help="UTC end")
    backfill.add_argument("--imei", action="append", help="limit to these IMEIs")

    replay = commands.add_parser("replay", help="re-read a topic from the start")
    replay.add_argument("--group", required=True, help="consumer group to rewind")
    replay.add_argument("--topic", required=True, help="topic to rewind")
    replay.add_argument(
        "--follow",
        action="store_true",
        help="after rewinding, show progress until the group has caught up",
    )

    commands.add_parser("lag", help="print consumer lag of every fleetstream group")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "dev":
        os.environ.setdefault("FLEETSTREAM_ENVIRONMENT", "development")
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = ENV_PREFIX + "_".join(str(part) for part in error["loc"]).upper()
            print(f"fleetstream: {name}: {error['msg']}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, stage=args.command)
    try:
        return _run(args, settings)
    except FleetstreamError as exc:
        print(f"fleetstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KafkaConnectionError as exc:
        print(
            f"fleetstream {args.command}: cannot reach Kafka at "
            f"{settings.kafka_bootstrap_servers}: {exc}",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:

    if args.command in STAGES:
        _stage_main(STAGES[args.command][0])(settings)
    elif args.command == "migrate":
        from migrations.runner import main as migrate_main

        migrate_main(settings, dry_run=args.dry_run)
    elif args.command == "topics":
        from fleetstream.kafka import ensure_topics

        for name in asyncio.run(ensure_topics(settings)):
            print(name)
    elif args.command == "backfill":
        from producers.backfill import main as backfill_main

        backfill_main(settings, start=args.start, end=args.end, imeis=args.imei)
    elif args.command == "replay":
        from fleetstream.ops import follow, replay

        asyncio.run(replay(settings, group=args.group, topic=args.topic))
        if args.follow:
            asyncio.run(follow(settings, group=args.group, topic=args.topic))
    elif args.command == "lag":
        from fleetstream.ops import print_lag

        asyncio.run(print_lag(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
