"""`/internal`: spoken by node workers only, with the node secret or an attempt token."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Header

from api.deps import SessionDep, SettingsDep, StorageDep, bearer
from api.errors import ApiError
from api.schemas import AttemptState, EventsIn, FinishIn, NodeOut, NodeRegisterIn, StartIn
from domain import attempts, nodes
from domain.orm import Attempt

router = APIRouter(prefix="/internal", tags=["internal"], include_in_schema=False)


def node_auth(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Require the cluster's node secret."""
    if not hmac.compare_digest(bearer(authorization), settings.resolved_node_secret):
        raise ApiError(401, "unauthorized", "invalid node secret")


def attempt_auth(
    attempt_id: str, session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Attempt:
    """The attempt whose token signed the request."""
    return attempts.authorize(session=session, attempt_id=attempt_id, token=bearer(authorization))


NodeAuth = Depends(node_auth)
AttemptDep = Annotated[Attempt, Depends(attempt_auth)]


@router.post("/nodes", response_model=NodeOut, dependencies=[NodeAuth])
def register_node(node_in: NodeRegisterIn, session: SessionDep) -> object:
    """Register (or re-register) a node worker."""
    return nodes.register(session=session, **node_in.model_dump())


@router.post("/nodes/{node_id}/heartbeat", response_model=NodeOut, dependencies=[NodeAuth])
def node_heartbeat(node_id: str, session: SessionDep) -> object:
    """Renew a node's lease."""
    return nodes.heartbeat(session=session, node_id=node_id)


@router.post("/nodes/{node_id}/leave", response_model=NodeOut, dependencies=[NodeAuth])
def node_leave(node_id: str, session: SessionDep) -> object:
    """A node shutting down: nothing new is placed on it."""
    return nodes.leave(session=session, node_id=node_id)


@router.post("/attempts/{attempt_id}/start", response_model=AttemptState)
def start_attempt(
    attempt: AttemptDep, session: SessionDep, body: StartIn | None = None
) -> attempts.AttemptState:
    """Claim an attempt before launching it; a second claim is a 409. Rank 0 of a gang
    brings its rendezvous port; the other ranks ask until rank 0 has started."""
    port = body.master_port if body else None
    return attempts.start(session=session, attempt=attempt, master_port=port)


@router.post("/attempts/{attempt_id}/events", response_model=AttemptState)
def attempt_events(
    attempt: AttemptDep, body: EventsIn, session: SessionDep
) -> attempts.AttemptState:
    """Store trainer events and renew the attempt's lease; answers whether to cancel."""
    events = [(e.seq, e.event) for e in body.events]
    return attempts.ingest(session=session, attempt=attempt, events=events)


@router.post("/attempts/{attempt_id}/finish", response_model=AttemptState)
def finish_attempt(
    attempt: AttemptDep,
    body: FinishIn,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> attempts.AttemptState:
    """Report the trainer's exit; settles the job."""
    return attempts.finish(
        session=session,
        storage=storage,
        attempt=attempt,
        exit_code=body.exit_code,
        log_tail=body.log_tail,
        reason=body.reason,
        preempted=body.preempted,
        max_lost_attempts=settings.max_lost_attempts,
    )
