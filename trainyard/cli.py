"""The `trainyard` command: the platform's processes and administration (db, keys, api,
control, worker, up, demo) here, and the user's commands (login, datasets, jobs, models) in
trainyard.console."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
from typing import Any

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


def _duration(text: str) -> datetime.timedelta:
    """Read "90d", "12h", "30m" or "3600s" (a number alone is seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: give a number with s, m, h, d or w (e.g. 90d)"
        ) from None
    if not 0 < value < 1e6 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be positive")
    return datetime.timedelta(seconds=value * units[unit])


def _keys(args: argparse.Namespace) -> int:
    from domain.db import session_scope
    from domain.errors import DomainError
    from domain.keys import Role, create_key, list_keys, revoke_key
    from trainyard.settings import get_settings

    try:
        if args.action == "revoke":
            if not args.key:
                raise SystemExit("trainyard keys revoke needs --key (its id, prefix or the key)")
            with session_scope() as session:
                row = revoke_key(session=session, key=args.key, data_dir=get_settings().data_dir)
            print(f"Revoked key {row.id} ({row.prefix}...) of project {row.project_id}.")
            return 0
        if args.action == "list":
            with session_scope() as session:
                rows = list_keys(session=session, project_name=args.project)
            print(f"{'ID':26} {'PREFIX':12} {'PROJECT':20} {'ROLE':7} {'CREATED':17} STATE")
            for k in rows:
                state = (
                    f"revoked {k['revoked_at']:%Y-%m-%d %H:%M}"
                    if k["revoked_at"]
                    else f"expires {k['expires_at']:%Y-%m-%d %H:%M}"
                    if k["expires_at"]
                    else "live"
                )
                print(
                    f"{k['id']:26} {k['prefix'] + '...':12} {k['project']:20} {k['role']:7} "
                    f"{k['created_at']:%Y-%m-%d %H:%M} {state}"
                )
            return 0
        if not args.project:
            raise SystemExit("trainyard keys create needs --project")
        admin = args.admin or args.role == Role.ADMIN
        with session_scope() as session:
            key = create_key(
                session=session, project_name=args.project, admin=admin, expires_in=args.expires_in
            )
    except DomainError as exc:
        raise SystemExit(f"trainyard keys {args.action}: {exc.message}") from None
    kind = "an admin API key" if admin else "an API key"
    until = ""
    if args.expires_in:
        ends = datetime.datetime.now(datetime.UTC) + args.expires_in
        until = f", expiring {ends:%Y-%m-%d %H:%M:%S} UTC"
    print(f"Created {kind} for project {args.project!r}{until}. It is shown only once:")
    print(key)
    return 0


def _api(args: argparse.Namespace) -> int:
    import threading

    import uvicorn

    from trainyard.settings import get_settings

    port = get_settings().internal_port
    if port is not None:
        # Its own thread, event loop and thread pool: public traffic cannot starve it.
        internal = uvicorn.Server(
            uvicorn.Config(
                "api.app:create_internal_app",
                factory=True,
                host=args.host,
                port=port,
                log_level="warning",
                access_log=False,
            )
        )
        threading.Thread(target=internal.run, name="internal-api", daemon=True).start()
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


def _admin_client(args: argparse.Namespace) -> Any:
    from trainyard.client import Client
    from trainyard.settings import get_settings

    key = args.key or os.environ.get("TRAINYARD_API_KEY")
    if not key:
        raise SystemExit("trainyard: give an admin key with --key or TRAINYARD_API_KEY")
    return Client(args.url or get_settings().api_url, key)


def _nodes(args: argparse.Namespace) -> int:
    with _admin_client(args) as client:
        nodes = client.nodes()
    print(f"{'NAME':<20} {'STATUS':<8} {'ADDRESS':<16} {'SLOTS':>5} {'FREE':>5}  RUNNING")
    for n in nodes:
        running = ", ".join(
            f"{a['job_id']}#{a['attempt']}" + (f" rank {a['rank']}" if a["nodes"] > 1 else "")
            for a in n["attempts"]
        )
        print(
            f"{n['name']:<20} {n['status']:<8} {n['address'] or '-':<16} "
            f"{n['slots']:>5} {n['free_slots']:>5}  {running or '-'}"
        )
    return 0


def _quotas(args: argparse.Namespace) -> int:
    with _admin_client(args) as client:
        if args.action == "set":
            quota = client.set_quota(
                args.project,
                max_running_slots=args.max_running_slots,
                max_queued_jobs=args.max_queued_jobs,
                max_storage_bytes=args.max_storage_bytes,
                best_priority=args.best_priority,
            )
        else:
            quota = client.quota(args.project)
    for name in ("running_slots", "queued_jobs", "storage_bytes"):
        limit = quota[f"max_{name}"]
        print(f"{name:<14} {quota[name]} of {'unlimited' if limit is None else limit}")
    best = quota["best_priority"]
    print(f"{'best_priority':<14} {'any (1)' if best is None else best}")
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
    keys.add_argument("action", choices=["create", "list", "revoke"])
    keys.add_argument(
        "--project", help="create: the project the key belongs to; list: only this project's"
    )
    keys.add_argument(
        "--role",
        choices=["member", "admin"],
        default="member",
        help="create: member (its project) or admin (also nodes, queue, quotas, keys)",
    )
    keys.add_argument("--admin", action="store_true", help="create: the same as --role admin")
    keys.add_argument(
        "--expires-in", type=_duration, help="create: the key stops working after this (90d)"
    )
    keys.add_argument("--key", help="revoke: the key's id, its prefix, or the key itself")
    keys.set_defaults(func=_keys)

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--url", help="API URL (default: TRAINYARD_API_URL)")
    admin.add_argument("--key", help="admin API key (default: TRAINYARD_API_KEY)")
    nodes = sub.add_parser("nodes", parents=[admin], help="the cluster's nodes (admin key)")
    nodes.set_defaults(func=_nodes)

    quotas = sub.add_parser("quotas", parents=[admin], help="project quotas (admin key)")
    quotas.add_argument("action", choices=["show", "set"])
    quotas.add_argument("--project", required=True)
    quotas.add_argument("--max-running-slots", type=int)
    quotas.add_argument("--max-queued-jobs", type=int)
    quotas.add_argument("--max-storage-bytes", type=int)
    quotas.add_argument(
        "--best-priority",
        type=int,
        help="the lowest resources.priority the project may ask for (1 to 99); a job that "
        "gives none gets the default or this, whichever is worse",
    )
    quotas.set_defaults(func=_quotas)

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
