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
   unverified is a 400 and nothing is written.
2. **Record** the ``svix-id`` in ``webhook_events`` in the transaction that applies the event.
   A redelivery finds the id and answers "already processed"; one racing on another instance
   blocks on the unique index until the first transaction commits, then sees the conflict.
   So each delivery is applied exactly once, and never half-applied.
3. **Apply**: ``user.created`` and ``user.updated`` upsert the profile unless the stored one
   is newer (Clerk's ``updated_at``, compared in SQL under the row lock); ``user.deleted``
   deletes the user row, which cascades to everything the user owns, and queues the user's
   two bucket folders (``incoming/<user>/``, where files are PUT, and ``uploads/<user>/``,
   where checked ones live) in ``storage_deletions`` twice: swept at once, and again once
   every upload URL signed before the deletion has expired. Other event types are
   acknowledged with a 200, neither applied nor recorded.
4. After the commit: the bucket cleanup starts off the request path (``shared.storage``), and
   now and then ``webhook_events`` older than Svix could still redeliver are pruned.

After a deletion nothing keeps the user id except the queued folder rows, until the late
sweep has run (``UPLOAD_URL_TTL_SECONDS`` + 2 minutes after the deletion, or later). While
they are queued, a profile event for the user (a Svix retry of one sent before
``user.deleted``) is ignored, and ``shared.auth.KnownUsers`` answers the user's remaining
session tokens (Clerk's live up to a minute) with 401 ``user_deleted`` instead of creating
the row again.

Only Postgres is called while a request waits, so Svix gets its answer well inside its 15 s.
Logs name the event type and svix id only: never the payload, whose emails and names are
personal data.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Annotated, Any, NamedTuple, TypeVar

import functions_framework
from flask import Request, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

# svix is imported here and nowhere in shared/: it costs ~0.8 s of import, which only this
# function, whose every request needs it, should pay.
from svix.webhooks import Webhook, WebhookVerificationError

from shared.db import Database, Transaction
from shared.errors import BadRequest
from shared.media import user_prefix, user_prefixes
from shared.runtime import database, make_api, start_function
from shared.schemas import WebhookAck
from shared.settings import get_settings
from shared.storage import schedule_storage_cleanup
from shared.text import storable_json
from shared.web import describe_validation_error, json_response, load_json

start_function("CLERK_WEBHOOK_SECRET", "GCS_BUCKET_NAME")

logger = logging.getLogger("raven.clerk_webhook")

SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
MAX_EVENT_TYPE_CHARS = 100
MAX_BIGINT = 2**63 - 1  # users.clerk_updated_at
MAX_USER_ID_CHARS = 255  # as shared.auth.MAX_SUB_LENGTH (not imported: it would load pyjwt)

# A user's folder is swept twice: at once, and again once every signed upload URL issued
# before the deletion has expired (UPLOAD_URL_TTL_SECONDS), plus this margin for clock skew
# and a PUT still in flight, so a file uploaded after the first sweep is deleted too.
LATE_SWEEP_MARGIN_SECONDS = 120

# Svix retries a failed delivery for about 3 days; a month of ids covers that and manual
# replays from Clerk's dashboard with a wide margin, and keeps the table small.
WEBHOOK_EVENTS_KEPT_DAYS = 30
PRUNE_EVERY_SECONDS = 3600.0  # per instance: one indexed DELETE an hour is all it costs
PRUNE_BATCH = 5000


# --- Clerk's payloads --------------------------------------------------------------------
# Only the fields used are declared; Clerk's user object has many more (ignored).

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


# --- verification ------------------------------------------------------------------------


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
    return Delivery(headers["svix-id"], event_type[:MAX_EVENT_TYPE_CHARS], data)


def payload(model: type[ClerkPayloadT], delivery: Delivery) -> ClerkPayloadT:
    """The event's ``data`` as a model; a 400 naming the bad fields (never their values)."""
    try:
        return model.model_validate(delivery.data)
    except ValidationError as error:
        raise BadRequest(
            f"{delivery.event_type}: {describe_validation_error(error, 'data.')}",
            code="invalid_event",
        ) from None


# --- applying events -----------------------------------------------------------------------


def record_delivery(tx: Transaction, delivery: Delivery) -> bool:
    """Record the svix id; False when it was already recorded (the event was applied).

    A concurrent transaction that inserted the same id first makes this statement wait until
    it commits (then: conflict, False) or rolls back (then: inserted, True).
    """
    row = tx.fetch_one(
        "INSERT INTO webhook_events (svix_id, event_type) VALUES (:svix_id, :event_type) "
        "ON CONFLICT (svix_id) DO NOTHING RETURNING svix_id",
        svix_id=delivery.svix_id,
        event_type=delivery.event_type,
    )
    return row is not None


def upsert_user(tx: Transaction, user: ClerkUser) -> str:
    """Create or update the user from Clerk's data.

    The comparison is in the statement: ``ON CONFLICT DO UPDATE`` locks the row and checks
    the ``WHERE`` against its latest committed version, so two events for one user racing
    on two instances still end with the newer one's data. A row first created from a token
    (``KnownUsers.ensure``) has no Clerk version yet and takes Clerk's data whole.

    Returns:
        ``"saved"``; ``"stale"`` when the stored profile is newer; ``"deleted"`` while the
        user's deletion is pending in ``storage_deletions``: a Svix retry of an event sent
        before ``user.deleted`` must not bring the profile back (Clerk never reuses ids).
    """
    row = tx.fetch_one(
        """
        WITH deletion AS (
            SELECT EXISTS (SELECT 1 FROM storage_deletions WHERE prefix = :prefix) AS pending
        ), saved AS (
            INSERT INTO users (id, email, first_name, last_name, image_url, clerk_updated_at)
            SELECT :id, :email, :first_name, :last_name, :image_url, :clerk_updated_at
            FROM deletion WHERE NOT deletion.pending
            ON CONFLICT (id) DO UPDATE SET
                email = EXCLUDED.email,
                first_name = EXCLUDED.first_name,
                last_name = EXCLUDED.last_name,
                image_url = EXCLUDED.image_url,
                clerk_updated_at = EXCLUDED.clerk_updated_at,
                updated_at = now()
            WHERE users.clerk_updated_at IS NULL
               OR users.clerk_updated_at < EXCLUDED.clerk_updated_at
            RETURNING id
        )
        SELECT (SELECT pending FROM deletion) AS deleted, EXISTS (SELECT 1 FROM saved) AS saved
        """,
        prefix=user_prefix(user.id),
        id=user.id,
        email=user.primary_email,
        first_name=user.first_name,
        last_name=user.last_name,
        image_url=user.image_url,
        clerk_updated_at=user.updated_at,
    )
    assert row is not None
    if row["deleted"]:
        return "deleted"
    return "saved" if row["saved"] else "stale"


def delete_user(tx: Transaction, user_id: str, bucket: str, late_sweep_seconds: int) -> bool:
    """Delete the user and everything the user owns; False when there was no such user.

    The row's ``ON DELETE CASCADE`` foreign keys remove the chats (and with them messages,
    summaries and media links), uploads, usage and rate-limit rows. The bucket objects are
    queued for the storage worker in this same transaction, so a crash cannot lose them:
    the user's two folders (incoming and checked uploads), each due at once and again after
    ``late_sweep_seconds`` (files PUT through URLs signed before the deletion), plus any
    upload recorded outside them (another bucket or naming), which the folders would miss.
    The queued folders are the only trace of the user id left, and only until the late
    sweep has run.
    """
    incoming, prefix = user_prefixes(user_id)
    tx.execute(
        """
        INSERT INTO storage_deletions (bucket, object_name)
        SELECT bucket, name FROM uploads,
            LATERAL (VALUES (object_name), (permanent_name)) AS names (name)
        WHERE user_id = :user_id AND name IS NOT NULL
          AND NOT (bucket = :bucket
                   AND (starts_with(name, :incoming) OR starts_with(name, :prefix)))
        """,
        user_id=user_id,
        bucket=bucket,
        incoming=incoming,
        prefix=prefix,
    )
    queued = tx.fetch_all(
        """
        WITH gone AS (DELETE FROM users WHERE id = :user_id RETURNING id)
        INSERT INTO storage_deletions (bucket, prefix, not_before)
        SELECT :bucket, folders.prefix, sweeps.due
        FROM gone,
            (VALUES (CAST(:incoming AS text)), (CAST(:prefix AS text))) AS folders (prefix),
            (VALUES
                (now()),
                (now() + CAST(:late_sweep_seconds AS integer) * INTERVAL '1 second')
            ) AS sweeps (due)
        RETURNING id
        """,
        user_id=user_id,
        bucket=bucket,
        incoming=incoming,
        prefix=prefix,
        late_sweep_seconds=late_sweep_seconds,
    )
    return bool(queued)


# --- housekeeping ------------------------------------------------------------------------------


class EventLogPruner:
    """Deletes ``webhook_events`` rows past their use, at most once per interval per instance.

    Runs after a delivery's commit rather than on a schedule: no extra infrastructure, and
    the ``processed_at`` index makes it one cheap statement. A failure is logged and the
    next interval retries; the delivery it follows has already succeeded.
    """

    def __init__(self, interval: float = PRUNE_EVERY_SECONDS) -> None:
        self._interval = interval
        self._next_at = 0.0
        self._lock = threading.Lock()

    def maybe_prune(self, db: Database) -> None:
        with self._lock:
            now = time.monotonic()
            if now < self._next_at:
                return
            self._next_at = now + self._interval  # claimed: concurrent requests skip
        try:
            with db.transaction() as tx:
                tx.execute(
                    """
                    DELETE FROM webhook_events WHERE svix_id IN (
                        SELECT svix_id FROM webhook_events
                        WHERE processed_at < now() - make_interval(days => :days)
                        ORDER BY processed_at
                        LIMIT :batch)
                    """,
                    days=WEBHOOK_EVENTS_KEPT_DAYS,
                    batch=PRUNE_BATCH,
                )
        except Exception as error:  # noqa: BLE001 - housekeeping must not fail a delivery
            logger.warning("pruning webhook_events failed", extra={"error": type(error).__name__})


@lru_cache(maxsize=1)
def event_log_pruner() -> EventLogPruner:
    return EventLogPruner()


# --- the endpoint ------------------------------------------------------------------------------


class Outcome(NamedTuple):
    """What a delivery did: the answer's message, and whether bucket work was queued."""

    message: str
    queued_storage_deletion: bool = False


# The event types applied, and the model of each one's ``data``.
HANDLED_EVENTS: dict[str, type[ClerkPayload]] = {
    "user.created": ClerkUser,
    "user.updated": ClerkUser,
    "user.deleted": ClerkDeletedUser,
}


def apply_event(tx: Transaction, data: ClerkPayload) -> Outcome:
    """Apply an event whose svix id this transaction has just recorded."""
    if isinstance(data, ClerkUser):
        result = upsert_user(tx, data)
        if result == "saved":
            return Outcome("user saved")
        if result == "stale":
            return Outcome("ignored: a newer profile is already stored")
        return Outcome("ignored: the user was deleted")
    assert isinstance(data, ClerkDeletedUser)
    settings = get_settings()
    assert settings.gcs_bucket_name is not None  # start_function required it
    late_sweep = settings.upload_url_ttl_seconds + LATE_SWEEP_MARGIN_SECONDS
    if delete_user(tx, data.id, settings.gcs_bucket_name, late_sweep):
        return Outcome("user deleted", queued_storage_deletion=True)
    return Outcome("no such user")


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
    with db.transaction() as tx:
        if record_delivery(tx, delivery):
            outcome = apply_event(tx, data)
        else:
            outcome = Outcome("already processed")
    if outcome.queued_storage_deletion:
        schedule_storage_cleanup()  # a background thread: the bucket is never awaited here
    logger.info(f"webhook {delivery.event_type}: {outcome.message}", extra=log_fields)
    event_log_pruner().maybe_prune(db)
    return json_response(WebhookAck(message=outcome.message))


# Built at start: a secret svix cannot use fails the instance now, not Clerk's first delivery.
signature_verifier()

API = make_api("clerk_webhook", {"clerkWebhook": receive})


@functions_framework.http
def clerk_webhook(request: Request) -> Response:
    """Entry point: every request goes through the shared HTTP pipeline to ``receive``."""
    return API.handle(request)
