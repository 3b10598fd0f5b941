"""clerk_webhook: Clerk's user lifecycle through Svix (the contract's "Clerk webhook" section).

| call                 | handler |
|----------------------|---------|
| POST /clerk-webhook  | receive |

Every delivery goes through four steps:

1. **Verify** the Svix signature over the raw body with svix's own code: an HMAC-SHA256 of
   ``<svix-id>.<svix-timestamp>.<body>`` under ``CLERK_WEBHOOK_SECRET``. Any one of the
   space-separated ``v1,<signature>`` items in ``svix-signature`` may match (that is how a
   rotated secret overlaps the old one), and ``svix-timestamp`` must lie within svix's
   5 minutes of now, which bounds how long a captured delivery can be replayed. Anything
   unverified is a 400 and nothing is written. The body is then parsed
   (``shared.clerk_events``).
2. **Record** the ``svix-id`` in ``webhook_events`` in the transaction that applies the event.
   A redelivery finds the id and answers "already processed"; one racing on another instance
   blocks on the unique index until the first transaction commits, then sees the conflict.
   So each delivery is applied exactly once, and never half-applied.
3. **Apply** (``shared.users``): ``user.created`` and ``user.updated`` save the profile
   unless the stored one is newer; ``user.deleted`` deletes the user and everything the user
   owns, and queues the user's bucket folders. Other event types are acknowledged with a
   200, neither applied nor recorded.
4. After the commit: the bucket cleanup starts off the request path (``shared.deletions``),
   and now and then ``webhook_events`` older than Svix could still redeliver are pruned.

Only Postgres is called while a request waits, so Svix gets its answer well inside its 15 s.
Logs name the event type and svix id only: never the payload, whose emails and names are
personal data.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import functions_framework
from flask import Request, Response

# svix is imported here and nowhere in shared/: it costs ~0.8 s of import, which only this
# function, whose every request needs it, should pay.
from svix.webhooks import Webhook, WebhookVerificationError

from shared import users
from shared.clerk_events import HANDLED_EVENTS, Delivery, parse_delivery, payload
from shared.errors import BadRequest
from shared.runtime import database, make_api, start_function
from shared.schemas import WebhookAck
from shared.settings import get_settings
from shared.storage import schedule_storage_cleanup
from shared.web import json_response

settings = start_function("CLERK_WEBHOOK_SECRET", "GCS_BUCKET_NAME")

logger = logging.getLogger("raven.clerk_webhook")

SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")


@lru_cache(maxsize=1)
def signature_verifier() -> Webhook:
    secret = get_settings().clerk_webhook_secret
    assert secret is not None  # start_function required it
    return Webhook(secret)


def verified_delivery(request: Request) -> Delivery:
    """The delivery in a request whose Svix signature is valid.

    Raises:
        BadRequest: a Svix header is missing; the signature, timestamp or header is invalid;
            or the verified body is not a JSON event with a ``type`` and a ``data`` object.
    """
    headers = {name: request.headers.get(name, "").strip() for name in SVIX_HEADERS}
    missing = [name for name, value in headers.items() if not value]
    if missing:
        raise BadRequest(
            f"Missing webhook header(s): {', '.join(missing)}", code="missing_webhook_headers"
        )
    body = request.get_data(cache=True)
    try:
        signature_verifier().verify(body, headers)
    except WebhookVerificationError as error:
        logger.warning("webhook verification failed", extra={"reason": str(error)})
        raise BadRequest(
            f"Webhook verification failed: {error}", code="invalid_signature"
        ) from None
    except ValueError:
        # svix 2.9.1 lets a signature item without a comma, bad base64 or a non-UTF-8 body
        # escape as ValueError (binascii.Error, UnicodeDecodeError) instead of its own error.
        logger.warning("webhook verification failed", extra={"reason": "malformed"})
        raise BadRequest(
            "Webhook verification failed: malformed svix-signature header or body",
            code="invalid_signature",
        ) from None

    # Webhook.verify() returns nothing in svix 2.9.1: the body is parsed here, once verified.
    return parse_delivery(headers["svix-id"], body)


def receive(request: Request) -> Response:
    delivery = verified_delivery(request)
    log_fields = {"svix_id": delivery.svix_id, "event_type": delivery.event_type}
    model = HANDLED_EVENTS.get(delivery.event_type)
    if model is None:
        # Not recorded either: an ignored event changes nothing however often it comes, and
        # the endpoint may be subscribed to event types we have no use for.
        logger.info(f"webhook {delivery.event_type}: ignored", extra=log_fields)
        return json_response(WebhookAck(message="ignored: event type not handled"))
    data = payload(model, delivery)
    db = database()
    assert settings.gcs_bucket_name is not None  # start_function required it
    with db.transaction() as tx:
        if users.record_delivery(tx, delivery):
            outcome = users.apply_event(
                tx,
                data,
                bucket=settings.gcs_bucket_name,
                upload_url_ttl_seconds=settings.upload_url_ttl_seconds,
            )
        else:
            outcome = users.Outcome("already processed")
    if outcome.queued_storage_deletion:
        schedule_storage_cleanup()  # a background thread: the bucket is never awaited here
    logger.info(f"webhook {delivery.event_type}: {outcome.message}", extra=log_fields)
    users.event_log_pruner().maybe_prune(db)
    return json_response(WebhookAck(message=outcome.message))


# Built at start: a secret svix cannot use fails the instance now, not Clerk's first delivery.
signature_verifier()

API = make_api("clerk_webhook", {"clerkWebhook": receive})


@functions_framework.http
def clerk_webhook(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to ``receive``."""
    return API.handle(request)
