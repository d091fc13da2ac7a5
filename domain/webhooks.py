"""Signed webhooks: subscriptions, the delivery outbox, and the loop that empties it.

An event is written to `webhook_deliveries` in the same transaction as the change that
caused it (a job's status, a dataset's verdict), never sent from the request itself. The
delivery loop POSTs each one signed by the Standard Webhooks scheme (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`), so `openai`'s
`client.webhooks.unwrap` and any Standard Webhooks library verify it. Delivery is at least
once, in order per job or dataset, retried with exponential backoff and jitter until a day
(settings) has passed; `webhook-id` is the delivery's id, for receivers to deduplicate.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import random
import secrets
import socket
import threading
from datetime import UTC, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from domain import wake
from domain.access import owned
from domain.db import get_sessionmaker, utcnow
from domain.errors import Invalid
from domain.orm import Dataset, Job, Webhook, WebhookDelivery
from trainyard.ids import new_id
from trainyard.settings import Settings
from trainyard.specs import FINE_TUNING

log = logging.getLogger(__name__)

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled", "paused")
EVENT_TYPES = (
    *(f"fine_tuning.job.{s}" for s in JOB_STATUSES),
    *(f"job.{s}" for s in JOB_STATUSES),
    "dataset.ready",
    "dataset.invalid",
)
RESPONSE_KEEP = 1024
CLAIM_SECONDS = 60.0  # a claimed delivery is not picked again while its send is in flight
# Idle and listening, the delivery loop looks at the outbox at least this often anyway.
IDLE_WAIT_S = 60.0


def new_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(
            "invalid_request",
            f"url: must be an http or https URL with a host, got {url[:100]!r}",
            [{"field": "url", "message": "an http(s) URL with a host"}],
        )


def _check_types(event_types: list[str]) -> None:
    unknown = [t for t in event_types if t not in EVENT_TYPES]
    if unknown or not event_types:
        raise Invalid(
            "invalid_request",
            f"event_types: unknown {unknown[0]!r}" if unknown else "event_types: name one",
            [{"field": "event_types", "message": f"known: {', '.join(EVENT_TYPES)}"}],
        )


def create(
    *, session: Session, project_id: str, url: str, event_types: list[str], description: str | None
) -> Webhook:
    """Subscribe a URL to events; the answer is the only time the secret is shown."""
    _check_url(url)
    _check_types(event_types)
    hook = Webhook(
        id=new_id("wh"),
        project_id=project_id,
        url=url,
        event_types=list(dict.fromkeys(event_types)),
        description=description,
        secret=new_secret(),
    )
    session.add(hook)
    session.commit()
    return hook


def get(*, session: Session, project_id: str, webhook_id: str) -> Webhook:
    """A webhook of the caller's project, or a 404."""
    return owned(session, Webhook, webhook_id, project_id, "webhook")


def delete(*, session: Session, project_id: str, webhook_id: str) -> None:
    """Remove a webhook and its undelivered events."""
    session.delete(get(session=session, project_id=project_id, webhook_id=webhook_id))
    session.commit()


def rotate(*, session: Session, project_id: str, webhook_id: str) -> Webhook:
    """Replace the signing secret; deliveries from now on are signed with the new one."""
    hook = get(session=session, project_id=project_id, webhook_id=webhook_id)
    hook.secret = new_secret()
    session.commit()
    return hook


def enqueue(
    session: Session, project_id: str, event_type: str, subject_id: str, data: dict[str, Any]
) -> None:
    """Write the event to the outbox for every webhook of the project that wants it (the
    caller commits, with the change the event reports)."""
    hooks = session.execute(select(Webhook).where(Webhook.project_id == project_id)).scalars()
    now = utcnow()
    for hook in hooks:
        if event_type not in hook.event_types or _already(session, hook.id, subject_id, event_type):
            continue
        delivery_id = new_id("msg")
        payload = {
            "id": delivery_id,
            "object": "event",
            "type": event_type,
            "created_at": int(now.timestamp()),
            "data": data,
        }
        session.add(
            WebhookDelivery(
                id=delivery_id,
                webhook_id=hook.id,
                event_type=event_type,
                subject_id=subject_id,
                payload=payload,
                next_try_at=now,
                created_at=now,
            )
        )


FINAL = ("succeeded", "failed", "cancelled", "invalid", "ready")


def _already(session: Session, webhook_id: str, subject_id: str, event_type: str) -> bool:
    """Whether a final event (a job's end, a dataset's verdict) is already in the outbox:
    two writers that settle the same job (a node's report and the reconciler) send it once."""
    if not event_type.endswith(FINAL):
        return False
    found = session.execute(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.webhook_id == webhook_id,
            WebhookDelivery.subject_id == subject_id,
            WebhookDelivery.event_type == event_type,
        )
        .limit(1)
    ).first()
    return found is not None


def job_changed(session: Session, job: Job, status: str) -> None:
    """Outbox the event of a job's new status, under OpenAI's names for fine-tuning jobs."""
    if status not in JOB_STATUSES:
        return
    prefix = "fine_tuning.job" if job.type in FINE_TUNING else "job"
    data: dict[str, Any] = {"id": job.id, "status": status}
    if job.error_code:
        data["error"] = {"code": job.error_code, "message": job.error_message}
    if job.model_id:
        data["model_id"] = job.model_id
    enqueue(session, job.project_id, f"{prefix}.{status}", job.id, data)


def dataset_checked(session: Session, dataset: Dataset) -> None:
    """Outbox a dataset's verdict: `dataset.ready` or `dataset.invalid`."""
    if dataset.status in ("ready", "invalid"):
        data = {"id": dataset.id, "status": dataset.status, "errors": dataset.errors[:5]}
        enqueue(session, dataset.project_id, f"dataset.{dataset.status}", dataset.id, data)


def private_address(host: str, port: int) -> str | None:
    """The first private, loopback, link-local or otherwise non-public address the host
    resolves to, or None if every one is public."""
    for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP):
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            return str(address)
    return None


def _claim(session: Session, limit: int) -> list[str]:
    """Take due deliveries that are first in line for their webhook and subject."""
    now = utcnow()
    due = (
        session.execute(
            select(WebhookDelivery)
            .where(WebhookDelivery.status == "pending", WebhookDelivery.next_try_at <= now)
            .order_by(WebhookDelivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    claimed = []
    for row in due:
        earlier = session.execute(
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.webhook_id == row.webhook_id,
                WebhookDelivery.subject_id == row.subject_id,
                WebhookDelivery.status == "pending",
                WebhookDelivery.id < row.id,
            )
            .limit(1)
        ).first()
        if earlier is None:  # in order per job: a later event waits for the one before
            row.next_try_at = now + timedelta(seconds=CLAIM_SECONDS)
            claimed.append(row.id)
    session.commit()
    return claimed


def _send(hook: Webhook, delivery: WebhookDelivery, settings: Settings) -> tuple[int, str]:
    """POST one signed delivery; (status code, first KB of the body). Raises on failure to
    connect, a refused address, or a timeout."""
    from standardwebhooks.webhooks import Webhook as Signer

    parts = urlsplit(hook.url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not settings.webhook_allow_private:
        private = private_address(str(parts.hostname), port)
        if private is not None:
            raise ValueError(f"{parts.hostname} resolves to non-public address {private}")
    body = json.dumps(delivery.payload, separators=(",", ":"))
    sent_at = utcnow()
    signature = Signer(hook.secret).sign(delivery.id, sent_at, body)
    headers = {
        "content-type": "application/json",
        "user-agent": "trainyard-webhooks",
        "webhook-id": delivery.id,
        "webhook-timestamp": str(int(sent_at.timestamp())),
        "webhook-signature": signature,
    }
    with (
        httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client,
        client.stream("POST", hook.url, content=body, headers=headers) as response,
    ):
        kept = b""
        for chunk in response.iter_bytes():
            kept += chunk
            if len(kept) >= RESPONSE_KEEP:
                break
        return response.status_code, kept[:RESPONSE_KEEP].decode("utf-8", "replace")


def _settle(
    session: Session,
    delivery: WebhookDelivery,
    settings: Settings,
    code: int | None,
    body: str | None,
    error: str | None,
) -> None:
    now = utcnow()
    delivery.tries += 1
    delivery.response_code, delivery.response_body = code, body
    delivery.last_error = error
    if code is not None and 200 <= code < 300:
        delivery.status, delivery.delivered_at = "delivered", now
    elif (now - delivery.created_at).total_seconds() > settings.webhook_give_up_seconds:
        delivery.status = "failed"
    else:
        backoff = settings.webhook_retry_base_seconds * 2 ** (delivery.tries - 1)
        wait = min(settings.webhook_retry_max_seconds, backoff) * random.uniform(0.5, 1.0)
        delivery.next_try_at = now + timedelta(seconds=wait)
    session.commit()


def deliver_due(settings: Settings, limit: int = 50) -> int:
    """Send what is due, one delivery at a time; how many were attempted."""
    factory = get_sessionmaker()
    with factory() as session:
        claimed = _claim(session, limit)
    for delivery_id in claimed:
        with factory() as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            hook = session.get(Webhook, delivery.webhook_id) if delivery else None
            if delivery is None or hook is None:
                continue
            code: int | None = None
            body: str | None = None
            error: str | None = None
            try:
                code, body = _send(hook, delivery, settings)
            except (httpx.HTTPError, OSError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:1000]
            _settle(session, delivery, settings, code, body, error)
    return len(claimed)


def next_due_in(settings: Settings) -> float:
    """Seconds until the earliest pending delivery is due (a retry's backoff, or a claim
    that ran out), at most a minute: how long the loop may sleep when nothing wakes it."""
    with get_sessionmaker()() as session:
        due = session.execute(
            select(func.min(WebhookDelivery.next_try_at)).where(WebhookDelivery.status == "pending")
        ).scalar()
    if due is None:
        return IDLE_WAIT_S
    if due.tzinfo is None:  # SQLite keeps no zone; every time here is UTC
        due = due.replace(tzinfo=UTC)
    return min(IDLE_WAIT_S, max(0.0, (due - utcnow()).total_seconds()))


def run(settings: Settings, stop: threading.Event) -> None:
    """The delivery loop: empty the outbox until stopped (any number of processes may run
    it; a delivery is claimed by one at a time). Idle, it sleeps until a new delivery is
    written (PostgreSQL) or the next retry is due; beside SQLite it polls."""
    waiter = wake.Waiter(settings.resolved_database_url, wake.WEBHOOKS)
    waiter.listening  # noqa: B018 - connects
    while not stop.is_set():
        timeout = settings.webhook_interval_seconds
        try:
            if deliver_due(settings):
                continue
            if waiter.listening:
                timeout = next_due_in(settings)
        except Exception:
            log.exception("webhook delivery pass failed")
        waiter.wait(timeout, settings.webhook_interval_seconds, stop)
    waiter.close()
