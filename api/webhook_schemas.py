"""Request and response schemas of `/v1/webhooks`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2048)
    event_types: list[str] = Field(min_length=1, max_length=64)
    description: str | None = Field(None, max_length=500)


class WebhookOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    event_types: list[str]
    description: str | None
    created_at: datetime


class WebhookSecretOut(WebhookOut):
    """A webhook with its signing secret: answered on create and rotate only."""

    secret: str


class DeliveryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    event_type: str
    subject_id: str
    status: str
    tries: int
    response_code: int | None
    response_body: str | None
    last_error: str | None
    next_try_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
