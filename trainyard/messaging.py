"""The Celery app and task names, built from Settings: Redis in production, the file system
when embedded. Everyone who sends or runs a task uses it; it knows nothing of the database."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from trainyard.settings import Settings, get_settings

VALIDATE_DATASET = "trainyard.prep.validate_dataset"
PREPARE_JOB = "trainyard.prep.prepare_job"
CLEAN_DATASET = "trainyard.prep.clean_dataset"
RUN_ATTEMPT = "trainyard.node.run_attempt"

# A task to send once the transaction that decided it has committed: (name, payload, queue).
Message = tuple[str, dict[str, Any], str]


def build_app(settings: Settings) -> Celery:
    """A Celery app configured for trainyard's tasks."""
    embedded = settings.resolved_broker_url.startswith("filesystem")
    app = Celery("trainyard", broker=settings.resolved_broker_url)
    transport_options: dict[str, Any] = {}
    if embedded:
        app.conf.broker_transport = "workers.fs_transport:Transport"
        folder = settings.broker_folder
        # Its messages carry attempt tokens: the folder is its owner's alone.
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(mode=0o700, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            # Exchange tables; kombu's default is a `control` folder in the working directory.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    app.conf.update(
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A prep task is re-delivered if its worker dies mid-way; each task checks the
        # database first, so a second delivery does nothing.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_default_queue=settings.queue("prep"),
        worker_enable_remote_control=not embedded,
        worker_send_task_events=False,
    )
    return app


@lru_cache
def get_app() -> Celery:
    """The process-wide Celery app."""
    return build_app(get_settings())


def send(name: str, payload: dict[str, Any], queue: str) -> None:
    """Send one task message carrying one JSON payload."""
    get_app().send_task(name, args=[payload], queue=queue)
