"""The `trainyard` command: the platform's processes and administration (db, keys, api,
control, worker, up, demo) here, and the user's commands (login, datasets, jobs, models) in
trainyard.console."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# What the platform's commands need beyond the client install (`pip install trainyard`).
SERVER_PACKAGES = {
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "celery",
    "psycopg",
    "pydantic_settings",
    "torch",
    "tokenizers",
    "numpy",
    "safetensors",
    "prometheus_client",
    "multipart",
}


def _db(args: argparse.Namespace) -> int:
    from domain import migrate

    if args.action == "upgrade":
        migrate.upgrade(revision=args.revision or "head")
    else:
        migrate.downgrade(revision=args.revision or "-1")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from domain.db import session_scope
    from domain.keys import create_key

    with session_scope() as session:
        key = create_key(session=session, project_name=args.project)
    print(f"Created an API key for project {args.project!r}. It is shown only once:")
    print(key)
    return 0


def _api(args: argparse.Namespace) -> int:
    import uvicorn

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        access_log=False,
    )
    return 0


def _control(_: argparse.Namespace) -> int:
    from domain.control import run
    from trainyard.settings import get_settings

    run(get_settings())
    return 0


def _worker(args: argparse.Namespace) -> int:
    from trainyard.settings import get_settings

    settings = get_settings()
    if args.kind == "prep":
        from workers import prep

        argv = [
            "worker",
            "-Q",
            settings.queue("prep"),
            "-c",
            str(args.concurrency),
            "-n",
            f"prep-{os.getpid()}@%h",
            "--loglevel",
            args.loglevel,
        ]
        prep.app.worker_main(argv)
        return 0
    import threading

    from workers import node

    if args.name:
        settings.node_name = args.name
    if args.slots:
        settings.node_slots = args.slots
    agent = node.Agent(settings, args.pool)
    threading.Thread(target=agent.run, name="node-agent", daemon=True).start()
    _, slots, _, _ = node.detect_devices(settings)
    argv = [
        "worker",
        "-Q",
        node.node_queue(settings),
        "--pool",
        "threads",
        "-c",
        str(slots),
        "-n",
        f"node-{settings.node_name}@%h",
        "--loglevel",
        args.loglevel,
    ]
    node.app.worker_main(argv)
    agent.stop.set()
    return 0


def _up(args: argparse.Namespace) -> int:
    from trainyard.up import up

    return up(args.host, args.port)


def _demo(args: argparse.Namespace) -> int:
    from trainyard.demo import main

    return main(steps=args.steps, processes=args.processes)


def parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="trainyard", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations (a one-off step before start-up)")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?")
    db.set_defaults(func=_db)

    keys = sub.add_parser("keys", help="API keys")
    keys.add_argument("action", choices=["create"])
    keys.add_argument("--project", required=True)
    keys.set_defaults(func=_keys)

    api = sub.add_parser("api", help="serve the HTTP API")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1)
    api.set_defaults(func=_api)

    control = sub.add_parser("control", help="run the scheduler and reconciler (one leader)")
    control.set_defaults(func=_control)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("kind", choices=["prep", "node"])
    worker.add_argument("--name", help="node name (default: host name)")
    worker.add_argument("--slots", type=int, help="GPUs or CPU processes to offer")
    worker.add_argument("--pool", default="default", help="node pool")
    worker.add_argument("--concurrency", type=int, default=1, help="prep tasks at once")
    worker.add_argument("--loglevel", default="WARNING")
    worker.set_defaults(func=_worker)

    up = sub.add_parser("up", help="run everything on the embedded default")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.set_defaults(func=_up)

    demo = sub.add_parser("demo", help="train a small model end to end through the API")
    demo.add_argument("--steps", type=int, default=300)
    demo.add_argument("--processes", type=int, default=2)
    demo.set_defaults(func=_demo)
    return p


def _platform_commands(p: argparse.ArgumentParser) -> set[str]:
    actions = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return set(actions[0].choices) if actions else set()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trainyard` console script."""
    argv = sys.argv[1:] if argv is None else argv
    platform = parser()
    if not argv or argv[0] not in _platform_commands(platform):
        from trainyard.console import run

        return run(argv)
    logging.basicConfig(
        level=os.environ.get("TRAINYARD_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "httpcore", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = platform.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] in SERVER_PACKAGES:
            print(
                f"error: `trainyard {args.command}` runs the platform, which needs more than "
                f"the client install ({exc.name} is missing): "
                "pip install 'trainyard[platform,trainer]'",
                file=sys.stderr,
            )
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
