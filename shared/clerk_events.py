"""Clerk's webhook events as pydantic models: the payloads clerk_webhook applies.

Only the fields used are declared; Clerk's user object has many more (ignored). Parsing a
verified body lives here; verifying its Svix signature stays in the function, the only one
that pays for importing svix.
"""

from __future__ import annotations

from typing import Annotated, Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from shared.errors import BadRequest
from shared.text import storable_json
from shared.web import describe_validation_error, load_json

MAX_EVENT_TYPE_CHARS = 100
MAX_BIGINT = 2**63 - 1  # users.clerk_updated_at
MAX_USER_ID_CHARS = 255  # as shared.auth.MAX_SUB_LENGTH (not imported: it would load pyjwt)

ClerkUserId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_USER_ID_CHARS)]


class ClerkPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ClerkEmailAddress(ClerkPayload):
    id: str
    email_address: str


class ClerkUser(ClerkPayload):
    """``data`` of ``user.created`` and ``user.updated``: Clerk's User object."""

    id: ClerkUserId
    email_addresses: list[ClerkEmailAddress] = Field(default_factory=list)
    primary_email_address_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    image_url: str | None = None
    # Milliseconds since the epoch of Clerk's latest change to the user: the version of the
    # profile, so an event that arrives late never overwrites a newer one.
    updated_at: int = Field(ge=0, le=MAX_BIGINT)

    @property
    def primary_email(self) -> str | None:
        for address in self.email_addresses:
            if address.id == self.primary_email_address_id:
                return address.email_address
        return None


class ClerkDeletedUser(ClerkPayload):
    """``data`` of ``user.deleted``: ``{"id": ..., "deleted": true, "object": "user"}``."""

    id: ClerkUserId


ClerkPayloadT = TypeVar("ClerkPayloadT", bound=ClerkPayload)


class Delivery(NamedTuple):
    """A verified delivery: Svix's message id and the event it carries."""

    svix_id: str
    event_type: str
    data: dict[str, Any]


# The event types applied, and the model of each one's ``data``.
HANDLED_EVENTS: dict[str, type[ClerkPayload]] = {
    "user.created": ClerkUser,
    "user.updated": ClerkUser,
    "user.deleted": ClerkDeletedUser,
}


def parse_delivery(svix_id: str, body: bytes) -> Delivery:
    """The event in a body whose signature was verified.

    Raises:
        BadRequest: the body is not a JSON event with a ``type`` and a ``data`` object.
    """
    # Clerk's text is stored as sent, except what PostgreSQL cannot hold (shared.text):
    # refusing it would only make Svix retry the same event for days.
    event = storable_json(load_json(body))
    if not isinstance(event, dict):
        raise BadRequest("Webhook body must be a JSON object", code="invalid_event")
    event_type, data = event.get("type"), event.get("data")
    if not isinstance(event_type, str) or not event_type or not isinstance(data, dict):
        raise BadRequest(
            "Webhook event must have a string type and an object data", code="invalid_event"
        )
    return Delivery(svix_id, event_type[:MAX_EVENT_TYPE_CHARS], data)


def payload(model: type[ClerkPayloadT], delivery: Delivery) -> ClerkPayloadT:
    """The event's ``data`` as a model; a 400 naming the bad fields (never their values)."""
    try:
        return model.model_validate(delivery.data)
    except ValidationError as error:
        raise BadRequest(
            f"{delivery.event_type}: {describe_validation_error(error, 'data.')}",
            code="invalid_event",
        ) from None
