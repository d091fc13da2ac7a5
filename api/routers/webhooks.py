"""`/v1/webhooks`: subscribe a URL to job and dataset events, list, show, delete, rotate the
signing secret, and see each delivery's status, tries and response."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import select

from api.deps import CursorQuery, ProjectDep, SessionDep
from api.schemas import Page
from api.webhook_schemas import DeliveryOut, WebhookIn, WebhookOut, WebhookSecretOut
from domain import webhooks
from domain.orm import Webhook, WebhookDelivery
from domain.paging import page

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", status_code=201, response_model=WebhookSecretOut)
def create_webhook(body: WebhookIn, project_id: ProjectDep, session: SessionDep) -> Webhook:
    """Subscribe a URL to events; the answer holds the signing secret, shown only here."""
    return webhooks.create(session=session, project_id=project_id, **body.model_dump())


@router.get("", response_model=Page[WebhookOut])
def list_webhooks(
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: CursorQuery = None,
) -> dict[str, Any]:
    """List the project's webhooks, newest first."""
    query = select(Webhook).where(Webhook.project_id == project_id)
    rows, more = page(session, query, Webhook.id, limit=limit, after=after)
    return {"data": rows, "has_more": more}


@router.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, project_id: ProjectDep, session: SessionDep) -> Webhook:
    """Show a webhook (without its secret)."""
    return webhooks.get(session=session, project_id=project_id, webhook_id=webhook_id)


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: str, project_id: ProjectDep, session: SessionDep) -> Response:
    """Delete a webhook; its undelivered events are dropped."""
    webhooks.delete(session=session, project_id=project_id, webhook_id=webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/rotate", response_model=WebhookSecretOut)
def rotate_secret(webhook_id: str, project_id: ProjectDep, session: SessionDep) -> Webhook:
    """Replace the signing secret; the answer holds the new one."""
    return webhooks.rotate(session=session, project_id=project_id, webhook_id=webhook_id)


@router.get("/{webhook_id}/deliveries", response_model=Page[DeliveryOut])
def list_deliveries(
    webhook_id: str,
    project_id: ProjectDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: CursorQuery = None,
) -> dict[str, Any]:
    """The webhook's deliveries, oldest first: status, tries, response code, next retry."""
    hook = webhooks.get(session=session, project_id=project_id, webhook_id=webhook_id)
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    rows, more = page(
        session, query, WebhookDelivery.id, limit=limit, after=after, newest_first=False
    )
    return {"data": rows, "has_more": more}
