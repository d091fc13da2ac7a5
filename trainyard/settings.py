"""One Settings object for every trainyard process, read from `TRAINYARD_*` variables."""

from __future__ import annotations

import os
import secrets
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The placeholders of docker/trainyard.env.example and of earlier compose files.
PLACEHOLDER_SECRETS = {"change-me", "change-me-node-secret", "change-me-redis", "changeme"}


class Settings(BaseSettings):
    """Configuration shared by the API, the control loop, the workers and the CLI.

    Left alone, everything lives under `data_dir`: a SQLite file, a file-system Celery
    broker and a storage folder, so the platform runs with no service installed.
    Production points `database_url` at PostgreSQL, `broker_url` at Redis and
    `storage_root` at a folder every node shares.
    """

    model_config = SettingsConfigDict(env_prefix="TRAINYARD_", extra="ignore")

    data_dir: Path = Path(".trainyard")
    database_url: str | None = None
    broker_url: str | None = None
    storage_root: Path | None = None

    api_url: str = "http://127.0.0.1:8000"
    # The node workers' endpoints (/internal) get a listener of their own on this port, so
    # public traffic can never starve heartbeats; None serves them beside the public API
    # (embedded runs). Node workers then reach it at `internal_url`.
    internal_port: int | None = None
    internal_url: str | None = None
    node_secret: str | None = None
    node_name: str = Field(default_factory=socket.gethostname)
    node_slots: int | None = None
    # Where the other nodes of a gang reach this node; default: this host's address on the
    # interface that reaches the API (127.0.0.1 when the API is local).
    node_address: str | None = None
    # The timeout of the trainer's process group: a peer that vanished fails the collective
    # after this long instead of the backends' 10 to 30 minutes.
    dist_timeout_seconds: float = Field(300.0, gt=0)
    # Where the API runs model generation: "auto" takes a GPU when the API's host has one.
    generate_device: Literal["auto", "cpu", "cuda"] = "auto"
    queue_prefix: str = ""

    default_gpu_memory_bytes: int = 80 * 1024**3  # assumed when no GPU node has registered
    max_upload_bytes: int = 2 * 1024**3
    max_model_bytes: int = 32 * 1024**3
    upload_chunk_bytes: int = 1024 * 1024
    cancel_grace_seconds: float = 10.0
    exit_grace_seconds: float = 30.0  # after the trainer's final event, before it is stopped
    # One-node jobs fork their ranks from a process that has already imported torch and
    # the trainer; off (TRAINYARD_FORK_SERVER=0), they start under torchrun as multi-node
    # jobs always do.
    fork_server: bool = True
    heartbeat_seconds: float = 2.0
    node_timeout_seconds: float = 30.0
    attempt_timeout_seconds: float = 60.0
    # A run message no node has claimed after this long is sent again (the outbox).
    dispatch_resend_seconds: float = Field(10.0, gt=0)
    prep_timeout_seconds: float = 900.0
    # A prep worker renews its claim on what it prepares every third of this; a claim left
    # unrenewed this long (its worker killed) is taken over by the next delivery.
    prep_claim_seconds: float = Field(30.0, gt=0)
    # Attempts a job may lose to vanished nodes before it fails (trainer failures count
    # against the job's own `resources.max_restarts`; preemption never counts).
    max_lost_attempts: int = 10
    control_interval_seconds: float = 0.5
    # What only time can change (attempts and nodes gone quiet, prep and run messages
    # lost) is looked for this often, not every tick: each look costs queries, and on a
    # machine that also trains they take the CPU from the trainer.
    control_sweep_seconds: float = Field(2.0, gt=0)
    keep_checkpoints: int = 3
    # Webhooks: private, loopback and link-local receivers are refused unless allowed;
    # a failed delivery is retried with exponential backoff and jitter for up to a day.
    webhook_allow_private: bool = False
    webhook_timeout_seconds: float = 5.0
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_max_seconds: float = 3600.0
    webhook_give_up_seconds: float = 86400.0
    webhook_interval_seconds: float = 0.5

    # What one client may ask of a shared service.
    max_json_bytes: int = 1024 * 1024
    max_form_parts: int = 8
    max_line_bytes: int = 16 * 1024 * 1024  # one line of a dataset
    prep_max_deliveries: int = 3  # a prep task redelivered more often fails its job
    model_workers: int = 2  # processes that load models and generate
    model_queue: int = 4  # calls that may wait for a model worker before a 429
    model_calls_per_project: int = 2
    model_worker_memory_bytes: int = 16 * 1024**3
    model_call_seconds: float = 120.0
    # Token buckets per API key: "rate/s:burst" for reads, writes and uploads;
    # `TRAINYARD_RATE_LIMITS=off` turns them off (benchmarks). With a Redis broker, every
    # API process spends the same buckets and counts the same streams (api/limits.py).
    rate_limits: Literal["on", "off"] = "on"
    read_rate: str = "50/s:200"
    write_rate: str = "10/s:50"
    upload_rate: str = "1/s:10"
    event_streams_per_project: int = 16
    # An open stream's slot is renewed while it lasts; one of a dead API process is free
    # again after this long.
    event_stream_lease_seconds: float = Field(30.0, gt=0)
    tmp_max_age_seconds: float = 6 * 3600  # the API sweeps older leftovers at start-up

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'trainyard.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """The Celery broker URL, defaulting to the file-system transport."""
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Where the embedded file-system broker keeps its messages."""
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_storage_root(self) -> Path:
        """The storage root, defaulting to a folder in the data directory."""
        return (self.storage_root or self.data_dir / "storage").resolve()

    def placeholder_secrets(self) -> list[str]:
        """The settings that still hold a placeholder secret from the examples (the node
        secret, or the password in the database or broker URL); the API refuses to start."""
        found = []
        if self.node_secret in PLACEHOLDER_SECRETS:
            found.append("TRAINYARD_NODE_SECRET")
        for name, url in (
            ("TRAINYARD_DATABASE_URL", self.database_url),
            ("TRAINYARD_BROKER_URL", self.broker_url),
        ):
            try:
                password = urlsplit(url).password if url else None
            except ValueError:
                continue  # not a URL at all; its own client says why
            if password in PLACEHOLDER_SECRETS:
                found.append(name)
        return found

    @property
    def resolved_node_secret(self) -> str:
        """The shared secret node workers present; embedded runs keep one in the data dir."""
        if self.node_secret:
            return self.node_secret
        path = self.data_dir / "node-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            # Created readable by its owner alone: never a moment when others can read it.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
            tmp.replace(path)
        return path.read_text().strip()

    @property
    def resolved_internal_url(self) -> str:
        """Where node workers reach the internal endpoints."""
        if self.internal_url:
            return self.internal_url
        if self.internal_port is None:
            return self.api_url
        host = self.api_url.split("://", 1)[-1].rsplit(":", 1)[0]
        return f"http://{host}:{self.internal_port}"

    def queue(self, name: str) -> str:
        """A Celery queue name, prefixed so several deployments can share one broker."""
        return f"{self.queue_prefix}{name}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
