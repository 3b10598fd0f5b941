"""The users table: one row per Clerk user, and everything that writes it.

A row is created the first time a token names its ``sub`` (:func:`ensure_user`, from
``shared.auth.KnownUsers``: Clerk's webhook may lag) and kept current from Clerk's
``user.created`` and ``user.updated`` events, the newest version winning
(:func:`upsert_user`). ``user.deleted`` deletes the row, which cascades to everything the
user owns, and queues the user's two bucket folders (``incoming/<user>/``, where files are
PUT, and ``uploads/<user>/``, where checked ones live) in ``storage_deletions`` twice: swept
at once, and again once every upload URL signed before the deletion has expired
(:func:`delete_user`).

After a deletion nothing keeps the user id except the queued folder rows, until the late
sweep has run (``UPLOAD_URL_TTL_SECONDS`` + :data:`LATE_SWEEP_MARGIN_SECONDS` after the
deletion, or later). While they are queued, a profile event for the user (a Svix retry of
one sent before ``user.deleted``) is ignored, and the user's remaining session tokens
(Clerk's live up to a minute) are answered 401 ``user_deleted`` instead of creating the row
again: both read :data:`shared.deletions.FOLDER_QUEUED`.

Clerk's deliveries are applied once each: :func:`record_delivery` records the svix id in
``webhook_events`` in the transaction that applies the event, and :class:`EventLogPruner`
removes ids older than Svix could still redeliver.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import NamedTuple

from shared import deletions
from shared.clerk_events import ClerkDeletedUser, ClerkPayload, ClerkUser, Delivery
from shared.db import Database, Transaction
from shared.object_names import user_prefix, user_prefixes

logger = logging.getLogger(__name__)

# A user's folder is swept twice: at once, and again once every signed upload URL issued
# before the deletion has expired (UPLOAD_URL_TTL_SECONDS), plus this margin for clock skew
# and a PUT still in flight, so a file uploaded after the first sweep is deleted too.
LATE_SWEEP_MARGIN_SECONDS = 120

# Svix retries a failed delivery for about 3 days; a month of ids covers that and manual
# replays from Clerk's dashboard with a wide margin, and keeps the table small.
WEBHOOK_EVENTS_KEPT_DAYS = 30
PRUNE_EVERY_SECONDS = 3600.0  # per instance: one indexed DELETE an hour is all it costs
PRUNE_BATCH = 5000


# --- names -----------------------------------------------------------------------------------


def display_name(first_name: str | None, last_name: str | None) -> str | None:
    """How the system prompt names a user: first and last name, whichever are known."""
    name = " ".join(part for part in (first_name, last_name) if part)
    return name or None


# The user's name columns (``:user_id``), for a statement that joins them in.
USER_NAME = "SELECT first_name, last_name FROM users WHERE id = :user_id"


def user_display_name(tx: Transaction, user_id: str) -> str | None:
    row = tx.fetch_one("SELECT first_name, last_name FROM users WHERE id = :id", id=user_id)
    if row is None:
        return None
    return display_name(row["first_name"], row["last_name"])


# --- a token's user --------------------------------------------------------------------------


# The existence check as an expression a handler's own query selects (named ``user_known``,
# the user's id bound as ``:user_id``), in place of :func:`user_exists`'s round trip of its
# own: see shared.auth.KnownUsers and shared.web.checks_user_itself.
USER_KNOWN = "EXISTS (SELECT 1 FROM users WHERE id = :user_id)"


def user_exists(db: Database, user_id: str) -> bool:
    row = db.fetch_one("SELECT EXISTS (SELECT 1 FROM users WHERE id = :id) AS known", id=user_id)
    return row is not None and bool(row["known"])


def ensure_user(
    db: Database,
    user_id: str,
    *,
    email: str | None,
    first_name: str | None,
    last_name: str | None,
) -> bool:
    """Create the user's row if missing, or fill in what its profile lacks; False (and
    nothing written) while the user's deletion is pending.

    Only what is missing is filled in: profile data from Clerk's webhook wins over claims.
    One statement, its own transaction (one round trip); repeating it changes nothing more.
    A row that lacks nothing the claims could give is not touched at all: no row lock, no
    transaction id, so its commit waits for no WAL flush. That is every user's first request
    on each instance (``KnownUsers``), at every scale-out; ``INSERT ... ON CONFLICT DO
    UPDATE ... WHERE`` would lock the row, and so write and flush, even when the ``WHERE``
    leaves it unchanged.
    """
    rows = db.write(
        f"""
        WITH deletion AS ({deletions.FOLDER_QUEUED}), created AS (
            INSERT INTO users (id, email, first_name, last_name)
            SELECT :id, :email, :first_name, :last_name FROM deletion
            WHERE NOT deletion.pending
            ON CONFLICT (id) DO NOTHING
        ), completed AS (
            UPDATE users SET
                email = COALESCE(users.email, claims.email),
                first_name = COALESCE(users.first_name, claims.first_name),
                last_name = COALESCE(users.last_name, claims.last_name)
            FROM deletion, (
                SELECT CAST(:email AS text) AS email,
                       CAST(:first_name AS text) AS first_name,
                       CAST(:last_name AS text) AS last_name
            ) AS claims
            WHERE users.id = :id AND NOT deletion.pending
              AND (users.email IS NULL AND claims.email IS NOT NULL
                   OR users.first_name IS NULL AND claims.first_name IS NOT NULL
                   OR users.last_name IS NULL AND claims.last_name IS NOT NULL)
        )
        SELECT pending FROM deletion
        """,
        folder=user_prefix(user_id),
        id=user_id,
        email=email,
        first_name=first_name,
        last_name=last_name,
    )
    return not (rows and rows[0]["pending"])


# --- Clerk's events --------------------------------------------------------------------------


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
    (:func:`ensure_user`) has no Clerk version yet and takes Clerk's data whole.

    Returns:
        ``"saved"``; ``"stale"`` when the stored profile is newer; ``"deleted"`` while the
        user's deletion is pending in ``storage_deletions``: a Svix retry of an event sent
        before ``user.deleted`` must not bring the profile back (Clerk never reuses ids).
    """
    row = tx.fetch_one(
        f"""
        WITH deletion AS ({deletions.FOLDER_QUEUED}), saved AS (
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
        folder=user_prefix(user.id),
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
    folders = user_prefixes(user_id)
    deletions.queue_uploads_outside_folders(tx, user_id, bucket, folders)
    gone = tx.fetch_one("DELETE FROM users WHERE id = :user_id RETURNING id", user_id=user_id)
    if gone is None:
        return False
    deletions.queue_folders(tx, bucket, folders, late_sweep_seconds)
    return True


class Outcome(NamedTuple):
    """What a delivery did: the answer's message, and whether bucket work was queued."""

    message: str
    queued_storage_deletion: bool = False


def apply_event(
    tx: Transaction, data: ClerkPayload, *, bucket: str, upload_url_ttl_seconds: int
) -> Outcome:
    """Apply an event whose svix id this transaction has just recorded.

    Args:
        bucket: the uploads bucket (GCS_BUCKET_NAME), where a deleted user's folders are.
        upload_url_ttl_seconds: how long a signed upload URL lives (UPLOAD_URL_TTL_SECONDS):
            a deleted user's folders are swept again once the last one has expired.
    """
    if isinstance(data, ClerkUser):
        result = upsert_user(tx, data)
        if result == "saved":
            return Outcome("user saved")
        if result == "stale":
            return Outcome("ignored: a newer profile is already stored")
        return Outcome("ignored: the user was deleted")
    assert isinstance(data, ClerkDeletedUser)
    late_sweep = upload_url_ttl_seconds + LATE_SWEEP_MARGIN_SECONDS
    if delete_user(tx, data.id, bucket, late_sweep):
        return Outcome("user deleted", queued_storage_deletion=True)
    return Outcome("no such user")


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
