"""Claims on preparation work, so a piece of it is done once, by one prep worker.

A piece is a BPE tokenizer trained on a dataset, a dataset's token shards, or its chat
shards, each under one tokenizer key. A worker takes the piece's claim (one `active` row; a
unique index refuses a second), renews its heartbeat on the database's clock while it works,
and builds the result in a staging folder named by the claim, beside the target. It moves
the result into place only while the claim is still its own (`fenced`): the claim row is
locked from that check to the commit, so no takeover can fall in between.

A worker (or a re-delivered message) that finds a live claim does nothing. One that finds
a claim unrenewed for the claim time takes over: the old claim becomes `expired`, its staging
folder is removed, and the work starts again under a new claim in a fresh folder. A holder
that was only paused and wakes up finds its claim gone and moves nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from sqlalchemy import ColumnElement, and_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from domain.db import get_sessionmaker
from domain.lease import db_now
from domain.orm import Job, PrepClaim

log = logging.getLogger(__name__)
T = TypeVar("T")


class Kind(StrEnum):
    TOKENIZER = "tokenizer"
    TOKENS = "tokens"
    SFT = "sft"


class Status(StrEnum):
    ACTIVE = "active"
    DONE = "done"  # the result was moved into place
    EXPIRED = "expired"  # its holder went quiet and another worker took over
    RELEASED = "released"  # its holder stopped (an error, a time limit) and moved nothing


class Busy(Exception):
    """Another worker holds a live claim on this piece."""

    def __init__(self, claim_id: int, worker: str) -> None:
        super().__init__(f"claim {claim_id} of {worker} is live")
        self.claim_id = claim_id
        self.worker = worker


class Lost(Exception):
    """This worker's claim was taken over (it went quiet for longer than the claim time)."""


def worker_name() -> str:
    """Who holds a claim: this process, as host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def staging(target: Path, claim_id: int) -> Path:
    """The folder a claim builds its result in, beside the target."""
    return target.parent / f".{target.name}.claim-{claim_id}"


@dataclass
class Claim:
    """A claim this worker holds; `result` is where to build what moves to `target`."""

    id: int
    target: Path
    ttl: float
    lost: threading.Event = field(default_factory=threading.Event)

    @property
    def folder(self) -> Path:
        return staging(self.target, self.id)

    @property
    def result(self) -> Path:
        return self.folder / "result"

    def check(self) -> None:
        """Raise Lost once the heartbeat found the claim taken over."""
        if self.lost.is_set():
            raise Lost(f"claim {self.id} on {self.target} was taken over")


def _piece(kind: Kind, dataset_id: str, key: str) -> ColumnElement[bool]:
    return and_(
        PrepClaim.kind == kind.value,
        PrepClaim.dataset_id == dataset_id,
        PrepClaim.tokenizer_key == key,
    )


def take(
    session: Session,
    *,
    kind: Kind,
    dataset_id: str,
    key: str,
    target: Path,
    ttl: float,
    job_id: str | None = None,
) -> Claim:
    """Claim a piece of preparation for this worker, taking over a claim unrenewed for `ttl`
    seconds (its staging folder is removed); Busy while another worker's claim is live.
    Commits."""
    now = db_now(session)
    expired = session.execute(
        update(PrepClaim)
        .where(
            _piece(kind, dataset_id, key),
            PrepClaim.status == Status.ACTIVE.value,
            PrepClaim.heartbeat_at < now - timedelta(seconds=ttl),
        )
        .values(status=Status.EXPIRED.value, ended_at=now)
        .returning(PrepClaim.id, PrepClaim.worker)
    ).all()
    row = PrepClaim(
        kind=kind.value,
        dataset_id=dataset_id,
        tokenizer_key=key,
        job_id=job_id,
        worker=worker_name(),
        status=Status.ACTIVE.value,
        claimed_at=now,
        heartbeat_at=now,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        session.rollback()
        live = session.execute(
            select(PrepClaim.id, PrepClaim.worker).where(
                _piece(kind, dataset_id, key), PrepClaim.status == Status.ACTIVE.value
            )
        ).first()
        session.rollback()
        if live is None:  # it ended a moment ago: this delivery can be sent again
            raise Busy(0, "another worker") from None
        raise Busy(int(live[0]), str(live[1])) from None
    if job_id is not None:
        # What the job's preparation now waits for (see domain.preparation.wake_waiting).
        session.execute(update(Job).where(Job.id == job_id).values(prep_waiting_for=row.id))
    session.commit()
    for old_id, old_worker in expired:
        log.warning(
            "claim %s of %s on %s went quiet; claim %s takes over",
            old_id,
            old_worker,
            target,
            row.id,
        )
        shutil.rmtree(staging(target, old_id), ignore_errors=True)
    claim = Claim(id=row.id, target=target, ttl=ttl)
    claim.folder.mkdir(parents=True, exist_ok=True)
    return claim


def renew(session: Session, claim_id: int) -> bool:
    """Renew a claim's heartbeat; False once it is no longer active (taken over). Commits."""
    renewed = session.execute(
        update(PrepClaim)
        .where(PrepClaim.id == claim_id, PrepClaim.status == Status.ACTIVE.value)
        .values(heartbeat_at=db_now(session))
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return bool(renewed)


@contextlib.contextmanager
def kept_alive(claim: Claim, factory: sessionmaker[Session] | None = None) -> Iterator[Claim]:
    """Renew the claim from a thread of its own every third of the claim time while the
    block runs (sessions from `factory`, the process's by default); `claim.lost` is set if
    it was taken over meanwhile."""
    stop = threading.Event()
    sessions = factory or get_sessionmaker()

    def beat() -> None:
        while not stop.wait(claim.ttl / 3):
            try:
                with sessions() as session:
                    if not renew(session, claim.id):
                        claim.lost.set()
                        return
            except Exception:  # the database away for a moment: try again on the next beat
                log.exception("renewing prep claim %s failed", claim.id)

    thread = threading.Thread(target=beat, name=f"prep-claim-{claim.id}", daemon=True)
    thread.start()
    try:
        yield claim
    finally:
        stop.set()
        thread.join()


def _replace(src: Path, dst: Path) -> None:
    """Move src (a file or a folder) to dst; an existing dst folder is moved aside first
    and then deleted (a file is replaced in one rename)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        dst.replace(old)
        src.replace(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        src.replace(dst)


def move_into_place(session: Session, claim: Claim) -> None:
    """Fenced: if the claim is still this worker's, move its result to the target and mark
    the claim done, in the caller's transaction (which the caller commits with what it
    records of the result); else remove the staging folder and raise Lost."""
    claim.check()
    now = db_now(session)
    # The update locks the claim row until the caller commits: a worker taking over waits
    # for that, and then finds the claim done.
    held = session.execute(
        update(PrepClaim)
        .where(PrepClaim.id == claim.id, PrepClaim.status == Status.ACTIVE.value)
        .values(status=Status.DONE.value, heartbeat_at=now, ended_at=now)
    ).rowcount  # type: ignore[attr-defined]
    if not held:
        session.rollback()
        shutil.rmtree(claim.folder, ignore_errors=True)
        raise Lost(f"claim {claim.id} on {claim.target} was taken over")
    _replace(claim.result, claim.target)
    shutil.rmtree(claim.folder, ignore_errors=True)


def release(session: Session, claim: Claim) -> None:
    """Give up a claim whose work stopped (an error, a time limit): its staging folder goes,
    and the next worker may claim the piece at once. Commits."""
    shutil.rmtree(claim.folder, ignore_errors=True)
    now = db_now(session)
    session.execute(
        update(PrepClaim)
        .where(PrepClaim.id == claim.id, PrepClaim.status == Status.ACTIVE.value)
        .values(status=Status.RELEASED.value, ended_at=now)
    )
    session.commit()


def watched(items: Iterable[T], claim: Claim) -> Iterator[T]:
    """The items, stopping with Lost as soon as the claim is found taken over."""
    for item in items:
        claim.check()
        yield item


def build(session: Session, claim: Claim, make: Callable[[Path], T]) -> T:
    """Make the result at `claim.result` while the claim is kept alive, then move it into
    place (fenced; the caller commits what it records of it). On any error, or when the
    claim was taken over, the claim is released and its staging folder removed."""
    try:
        with kept_alive(claim):
            value = make(claim.result)
        move_into_place(session, claim)
    except BaseException:
        with contextlib.suppress(Exception):
            session.rollback()
            release(session, claim)
        raise
    return value
