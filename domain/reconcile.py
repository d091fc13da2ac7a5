"""The control loop's tick: reconcile what went quiet, then prepare and dispatch.

One tick reads the database, decides, and commits; messages are sent after the commit, so
a crash between the two leaves a record the reconciler will find and settle.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from domain.db import utcnow
from domain.dispatch import dispatch, resend_dispatch
from domain.gang import settle
from domain.lease import Leadership, api_alive, fence
from domain.lifecycle import ACTIVE_ATTEMPT, AttemptStatus, JobStatus, transition
from domain.orm import Attempt, Job, Node
from domain.preparation import resend_prep, start_preparing
from trainyard.messaging import Message, send
from trainyard.settings import Settings
from trainyard.storage import Storage

log = logging.getLogger(__name__)


def reconcile(session: Session, settings: Settings, *, sweep: bool = True) -> None:
    """Declare what went quiet lost (on a sweep, while the API can take reports at all),
    and finish cancels whose attempts have all stopped."""
    if sweep and api_alive(session):
        _declare_lost(session, settings)
    for job in session.execute(select(Job).where(Job.status == JobStatus.CANCELLING)).scalars():
        live = session.execute(
            select(Attempt.id).where(Attempt.job_id == job.id, Attempt.status.in_(ACTIVE_ATTEMPT))
        ).first()
        if not live:
            transition(session, job, JobStatus.CANCELLED, "cancelled by the user")


def _declare_lost(session: Session, settings: Settings) -> None:
    """Mark quiet nodes offline, and declare lost the attempts of silent nodes and those
    never started (stopping the rest of their gangs and requeueing their jobs)."""
    now = utcnow()
    quiet = now - timedelta(seconds=settings.node_timeout_seconds)
    session.execute(
        update(Node)
        .where(Node.status == "online", Node.heartbeat_at < quiet)
        .values(status="offline")
    )
    never_started = now - timedelta(seconds=settings.attempt_timeout_seconds)
    lost = (
        session.execute(
            select(Attempt)
            .where(
                ((Attempt.status == AttemptStatus.RUNNING) & (Attempt.heartbeat_at < quiet))
                | (
                    # Minted (or renewed when the API came back) and never started, or
                    # waiting for a node that has gone.
                    (Attempt.status == AttemptStatus.STARTING)
                    & (
                        (Attempt.heartbeat_at < never_started)
                        | Attempt.node_id.in_(select(Node.id).where(Node.status == "offline"))
                    )
                )
            )
            # An attempt whose report is being stored right now holds its row: it is alive.
            .with_for_update(skip_locked=True)
        )
        .scalars()
        .all()
    )
    gangs: set[tuple[str, int]] = set()
    for attempt in lost:
        if attempt.status == AttemptStatus.RUNNING:
            # Its node went silent too, though its agent may have beaten a moment later:
            # place nothing new there until it heartbeats again.
            session.execute(update(Node).where(Node.id == attempt.node_id).values(status="offline"))
        attempt.status, attempt.finished_at = AttemptStatus.LOST.value, now
        gangs.add((attempt.job_id, attempt.number))
    # A gang whose other nodes have all stopped is settled now; else when the last one
    # reports its end (they are told to stop on their next report).
    for job_id, number in sorted(gangs):
        job = session.get(Job, job_id)
        if job is not None:
            settle(session, job, number, max_lost_attempts=settings.max_lost_attempts)


def tick(
    session: Session,
    storage: Storage,
    settings: Settings,
    leadership: Leadership,
    *,
    sweep: bool = True,
) -> int:
    """One pass of the control loop, fenced by its leadership; returns how many messages it
    sent (none when the leadership was lost: a stale leader writes and sends nothing).

    A sweep also looks for what only time changes: attempts and nodes gone quiet, prep
    and run messages that seem lost (the loop sweeps every `control_sweep_seconds`).
    """
    messages: list[Message] = []
    if not fence(session, leadership):
        session.rollback()
        return 0
    reconcile(session, settings, sweep=sweep)
    if sweep:
        resend_prep(session, settings, messages)
        resend_dispatch(session, settings, messages)
    start_preparing(session, settings, messages)
    dispatch(session, storage, settings, messages)
    session.commit()
    for name, payload, queue in messages:
        try:
            send(name, payload, queue)
        except Exception:  # the broker is away: the outbox re-sends it
            log.exception("sending %s to %s failed", name, queue)
    return len(messages)
