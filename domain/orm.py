"""ORM models. The schema itself is created only by Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from domain.db import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the scheduler last placed one of its jobs: between projects that use as few
    # slots, the one served longest ago goes next.
    last_placed_at: Mapped[datetime | None] = mapped_column(default=None)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    # An admin key also sees the cluster (nodes) and sets quotas.
    admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str | None] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="validating")
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    records: Mapped[int | None] = mapped_column(BigInteger, default=None)
    errors: Mapped[list[Any]] = mapped_column(default=list)
    prep_deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A cleaned dataset: the dataset it was cleaned from (no foreign key: the source may be
    # deleted and this one kept), the resolved options and the report.
    source_dataset_id: Mapped[str | None] = mapped_column(String(40), default=None)
    cleaning: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    cleaning_report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Tokenizer(Base):
    """A tokenizer trained on a dataset (BPE); the byte tokenizer needs no row."""

    __tablename__ = "tokenizers"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    vocab_size: Mapped[int] = mapped_column(Integer)
    source_dataset_id: Mapped[str | None] = mapped_column(String(40), default=None)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("source_dataset_id", "kind", "vocab_size", name="uq_tokenizer_source"),
    )


class DatasetTokens(Base):
    """A dataset tokenized once under one tokenizer, reused by every job that asks for it."""

    __tablename__ = "dataset_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    tokenizer_key: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    tokens: Mapped[int | None] = mapped_column(BigInteger, default=None)
    dtype: Mapped[str | None] = mapped_column(String(8), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("dataset_id", "tokenizer_key", name="uq_dataset_tokens"),)


class PrepClaim(Base):
    """One prep worker's claim on a piece of preparation: a BPE tokenizer trained on a dataset
    (`tokenizer`), a dataset's token shards (`tokens`) or its chat shards (`sft`), under a
    tokenizer key. At most one claim per piece is `active`; its holder renews `heartbeat_at`
    (the database's clock) while it works, stages into a folder named by the claim, and moves
    the result into place only while it still holds the claim. A claim left unrenewed for
    the claim time is `expired` by the worker that takes over; the rows are its history."""

    __tablename__ = "prep_claims"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    tokenizer_key: Mapped[str] = mapped_column(String(120))
    # The job whose delivery took the claim, and the process holding it (host:pid).
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    worker: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="active")  # domain.claims.Status
    claimed_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    __table_args__ = (
        Index(
            "uq_prep_claims_active",
            "kind",
            "dataset_id",
            "tokenizer_key",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        Index("ix_prep_claims_job", "job_id"),
    )


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # a domain.lifecycle.JobStatus
    spec: Mapped[dict[str, Any]] = mapped_column()
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    tokenizer_key: Mapped[str | None] = mapped_column(String(120), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    prep_deliveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Lower runs first (1 to 99); fair share between projects within one priority.
    priority: Mapped[int] = mapped_column(Integer, default=50, server_default="50")
    # Attempts that ended in a trainer failure; lost nodes and preemption do not count.
    restarts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why a queued job is not running yet ("waiting for 2 nodes with 1 free slot").
    waiting_reason: Mapped[str | None] = mapped_column(Text, default=None)
    prepared: Mapped[bool] = mapped_column(Boolean, default=False)
    # The prep claim (another worker's, still live) that the job's last prep delivery found
    # on what it needed, so it did nothing: the control loop sends it again once that claim
    # has ended or gone quiet.
    prep_waiting_for: Mapped[int | None] = mapped_column(Integer, default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set by the OpenAI-compatible route: the caller's metadata, the name suffix and the
    # base model as the caller named it (a model id or a model's name).
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, default=None)
    suffix: Mapped[str | None] = mapped_column(String(64), default=None)
    base_model: Mapped[str | None] = mapped_column(String(255), default=None)
    error_code: Mapped[str | None] = mapped_column(String(40), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    step: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_per_s: Mapped[float | None] = mapped_column(Float, default=None)
    loss: Mapped[float | None] = mapped_column(Float, default=None)
    val_loss: Mapped[float | None] = mapped_column(Float, default=None)
    params: Mapped[int | None] = mapped_column(BigInteger, default=None)
    flops_per_token: Mapped[float | None] = mapped_column(Float, default=None)
    model_id: Mapped[str | None] = mapped_column(String(40), default=None)
    # A succeeded fine-tuning job's CSV of step metrics (domain.result_files): a dataset.
    result_file_id: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key", name="uq_job_idempotency"),
        # The job list's cursor, with and without a status filter.
        Index("ix_jobs_project_id", "project_id", "id"),
        Index("ix_jobs_project_status_id", "project_id", "status", "id"),
        Index("ix_jobs_status", "status"),
    )


class Node(Base):
    __tablename__ = "nodes"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    # Where the other nodes of a gang reach this one (the rendezvous master's address).
    address: Mapped[str | None] = mapped_column(String(255), default=None)
    queue: Mapped[str] = mapped_column(String(255))
    pool: Mapped[str] = mapped_column(String(64), default="default")
    accelerator: Mapped[str] = mapped_column(String(8))
    slots: Mapped[int] = mapped_column(Integer)
    devices: Mapped[list[Any]] = mapped_column(default=list)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    status: Mapped[str] = mapped_column(String(16), default="online")
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Attempt(Base):
    """One node's part of a job attempt: a gang of `nodes` rows sharing a `number`, one per
    node rank; rank 0 hosts the rendezvous and runs global rank 0 (the one writing events)."""

    __tablename__ = "attempts"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    nodes: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The port rank 0's node reserved for the rendezvous, once it has started.
    master_port: Mapped[int | None] = mapped_column(Integer, default=None)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    slots: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # a domain.lifecycle.AttemptStatus
    token_hash: Mapped[str] = mapped_column(String(64))
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    log_tail: Mapped[str | None] = mapped_column(Text, default=None)
    # The dispatch outbox: the run message, kept until the node claims the attempt (its
    # first `start`) and re-sent while unclaimed, so a broker that lost it loses nothing.
    outbox: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        UniqueConstraint("job_id", "number", "rank", name="uq_attempt_number_rank"),
        Index("ix_attempts_status", "status"),
    )


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    attempt: Mapped[int | None] = mapped_column(Integer, default=None)
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text, default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_events_job", "job_id", "id"),)


class Metric(Base):
    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (Index("ix_metrics_job", "job_id", "name", "step"),)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoint_step"),)


class Model(Base):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    arch: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    files: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quota(Base):
    """A project's limits, set by an admin; a missing row or a null field means no limit."""

    __tablename__ = "quotas"
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    max_running_slots: Mapped[int | None] = mapped_column(Integer, default=None)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    max_storage_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The lowest (best) priority number the project's jobs may use.
    best_priority: Mapped[int | None] = mapped_column(Integer, default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Lease(Base):
    """Leader election: the control loop runs where it holds the `control` lease."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column()
    # Raised each time the lease changes hands: writes that need leadership check it, so a
    # stale leader that wakes up cannot overwrite a newer leader's decisions.
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Webhook(Base):
    """A project's subscription: events of these types are POSTed, signed, to the URL."""

    __tablename__ = "webhooks"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[Any]] = mapped_column()
    description: Mapped[str | None] = mapped_column(String(500), default=None)
    secret: Mapped[str] = mapped_column(String(100))  # needed to sign, so kept as is
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one event for one webhook, written with the change that caused it and
    sent later by the delivery loop until the receiver takes it or a day has passed."""

    __tablename__ = "webhook_deliveries"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), default="pending")
    tries: Mapped[int] = mapped_column(Integer, default=0)
    next_try_at: Mapped[datetime] = mapped_column(default=utcnow)
    response_code: Mapped[int | None] = mapped_column(Integer, default=None)
    response_body: Mapped[str | None] = mapped_column(String(1024), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
    __table_args__ = (
        Index("ix_deliveries_due", "status", "next_try_at"),
        Index("ix_deliveries_webhook", "webhook_id", "id"),
    )
