"""The storage deletion queue: rows of ``storage_deletions``, and the worker that empties it.

**Rows.** Each row names one object, or every object under a user's folder, of a bucket.
They are queued in the transaction that removed their database rows, so a crash between the
two cannot leave an orphaned object unrecorded. Every writer goes through this module:
deleting a chat or releasing media an edit no longer uses (:func:`queue_unshared_uploads`,
from ``shared.chats``), deleting a user (:func:`queue_uploads_outside_folders` and
:func:`queue_folders`, from ``shared.users``). A queued folder is also the one trace of a
deleted user, which the deleted-user check reads (:data:`FOLDER_QUEUED`).

**The worker.** :func:`process_storage_deletions` claims due rows with ``FOR UPDATE SKIP
LOCKED`` and a lease (so two instances never work on one row, and a crashed worker's rows
come due again when its lease ends), deletes from the bucket outside any transaction, then
deletes the row, or on failure pushes ``not_before`` back with exponential backoff. Nothing
is ever dropped. The bucket itself is an :class:`ObjectStore` passed in
(``shared.storage.CloudObjectStore`` in production), so this module never imports the Cloud
Storage adapter.

Who runs it: :func:`schedule_storage_cleanup`, after a request committed a deletion (a
background thread, off the request path), and the ``storage_sweep`` function, which a
periodic trigger (Cloud Scheduler) calls so that leftovers are retried even when no further
deletion happens (:func:`run_storage_sweep`). Each run also takes every due leftover, not
only its own request's rows.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple, Protocol

from shared.db import Database, Row, Transaction

logger = logging.getLogger(__name__)

DELETION_LEASE_SECONDS = 600  # longer than any one row's bucket work takes
DELETION_BACKOFF_BASE_SECONDS = 60
DELETION_BACKOFF_MAX_SECONDS = 6 * 3600
DELETION_ATTEMPTS_BEFORE_ERROR_LOG = 5
PREFIX_OBJECTS_PER_PASS = 1000
DELETION_BATCH = 50
# Only a user's own folder (of checked uploads, or of uploads not yet checked) may ever be
# deleted as a prefix: a bug that queued "" or "uploads/" must not be able to empty the bucket.
DELETABLE_PREFIX = re.compile(r"(?:uploads|incoming)/[^/]+/")


class ObjectStore(Protocol):
    """The bucket work the worker needs (``shared.storage.CloudObjectStore`` deployed)."""

    def delete(self, bucket: str, object_name: str) -> None:
        """Delete one object; one already gone is fine."""

    def names_under(self, bucket: str, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` names of objects under ``prefix``."""


# --- writing rows --------------------------------------------------------------------------

# Whether a folder is queued: while a deleted user's folders are, that user must not come
# back (the deleted-user check and Clerk's profile events read it as ``pending``).
FOLDER_QUEUED = "SELECT EXISTS (SELECT 1 FROM storage_deletions WHERE prefix = :folder) AS pending"

# Candidates for queue_unshared_uploads: every upload the chat links (the chat is deleted).
EVERY_LINK_OF_THE_CHAT = "SELECT upload_id FROM chat_uploads WHERE chat_id = :chat_id"


def queue_unshared_uploads(tx: Transaction, chat_id: uuid.UUID, candidates: str) -> int:
    """Delete the uploads among ``candidates`` that no other chat links, and queue their
    objects, in the caller's transaction.

    Args:
        candidates: a statement returning ``upload_id`` rows of the chat's links, such as
            :data:`EVERY_LINK_OF_THE_CHAT`, or a ``DELETE ... RETURNING`` of links.

    Returns:
        How many objects were queued for deletion.
    """
    queued = tx.fetch_all(
        f"""
        WITH candidates AS ({candidates}),
        doomed AS (
            DELETE FROM uploads u
            USING candidates c
            WHERE u.id = c.upload_id AND NOT EXISTS (
                SELECT 1 FROM chat_uploads other
                WHERE other.upload_id = c.upload_id AND other.chat_id <> :chat_id)
            RETURNING u.bucket, coalesce(u.permanent_name, u.object_name) AS object_name
        )
        INSERT INTO storage_deletions (bucket, object_name)
        SELECT bucket, object_name FROM doomed
        RETURNING id
        """,
        chat_id=chat_id,
    )
    return len(queued)


def queue_uploads_outside_folders(
    tx: Transaction, user_id: str, bucket: str, folders: Sequence[str]
) -> None:
    """Queue every object of the user's uploads that the user's folders would miss (another
    bucket or naming); before the user's row, and with it the uploads, is deleted."""
    incoming, prefix = folders
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


def queue_folders(
    tx: Transaction, bucket: str, folders: Sequence[str], late_sweep_seconds: int
) -> None:
    """Queue each folder twice: due at once, and again after ``late_sweep_seconds`` (files
    PUT through URLs signed before the deletion)."""
    incoming, prefix = folders
    tx.execute(
        """
        INSERT INTO storage_deletions (bucket, prefix, not_before)
        SELECT :bucket, folders.prefix, sweeps.due
        FROM (VALUES (CAST(:incoming AS text)), (CAST(:prefix AS text))) AS folders (prefix),
            (VALUES
                (now()),
                (now() + CAST(:late_sweep_seconds AS integer) * INTERVAL '1 second')
            ) AS sweeps (due)
        """,
        bucket=bucket,
        incoming=incoming,
        prefix=prefix,
        late_sweep_seconds=late_sweep_seconds,
    )


# --- the worker ----------------------------------------------------------------------------


def backoff_seconds(attempts: int) -> int:
    """Wait before the next attempt after ``attempts`` failed ones: 1 min, 2, 4 ... 6 h."""
    return int(
        min(DELETION_BACKOFF_BASE_SECONDS * 2 ** max(attempts - 1, 0), DELETION_BACKOFF_MAX_SECONDS)
    )


def claim_storage_deletions(
    db: Database, limit: int, lease_seconds: int = DELETION_LEASE_SECONDS
) -> list[Row]:
    """Take up to ``limit`` due rows for this worker alone, for ``lease_seconds``.

    One statement: rows another worker holds locked are skipped, and the claimed rows' due
    time moves to the end of the lease, so no other worker takes them meanwhile. A worker
    that dies holding them leaves them to come due again when the lease ends.
    """
    with db.transaction() as tx:
        return tx.fetch_all(
            """
            UPDATE storage_deletions
            SET attempts = attempts + 1,
                not_before = now() + CAST(:lease AS integer) * INTERVAL '1 second'
            WHERE id IN (
                SELECT id FROM storage_deletions
                WHERE not_before <= now()
                ORDER BY not_before, id
                LIMIT :limit
                FOR UPDATE SKIP LOCKED)
            RETURNING id, bucket, object_name, prefix, attempts
            """,
            lease=lease_seconds,
            limit=limit,
        )


def _delete_row_objects(store: ObjectStore, row: Row) -> bool:
    """Delete what one queue row names; True when nothing of it is left in the bucket."""
    if row["object_name"] is not None:
        if not row["object_name"]:
            raise ValueError("empty object name")
        store.delete(row["bucket"], row["object_name"])
        return True
    prefix = row["prefix"]
    if not isinstance(prefix, str) or not DELETABLE_PREFIX.fullmatch(prefix):
        raise ValueError(f"refusing to delete prefix {prefix!r}: not a user's uploads folder")
    names = store.names_under(row["bucket"], prefix, PREFIX_OBJECTS_PER_PASS)
    for name in names:
        store.delete(row["bucket"], name)
    return len(names) < PREFIX_OBJECTS_PER_PASS


class DeletionPass(NamedTuple):
    claimed: int  # rows this pass took (0: nothing was due)
    finished: int  # rows whose objects are gone and whose row was deleted


def process_storage_deletions(
    db: Database,
    store: ObjectStore,
    limit: int = DELETION_BATCH,
    *,
    lease_seconds: int = DELETION_LEASE_SECONDS,
) -> DeletionPass:
    """Claim up to ``limit`` due queue rows and do their bucket work: one pass.

    Safe to run on any number of instances at once. Rows whose deletion fails are retried
    later with exponential backoff, never dropped; a prefix larger than one pass is left due
    again for the next call.
    """
    rows = claim_storage_deletions(db, limit, lease_seconds)
    finished = 0
    for row in rows:
        try:
            complete = _delete_row_objects(store, row)
        except Exception as error:  # noqa: BLE001 - every failure is retried later
            delay = backoff_seconds(row["attempts"])
            level = (
                logging.ERROR
                if row["attempts"] >= DELETION_ATTEMPTS_BEFORE_ERROR_LOG
                else logging.WARNING
            )
            logger.log(
                level,
                "storage deletion failed; retrying later",
                extra={
                    "error": f"{type(error).__name__}: {error}"[:300],
                    "attempts": row["attempts"],
                    "retry_in_seconds": delay,
                },
            )
            with db.transaction() as tx:
                tx.execute(
                    "UPDATE storage_deletions SET not_before = now() + "
                    "CAST(:delay AS integer) * INTERVAL '1 second' WHERE id = :id",
                    delay=delay,
                    id=row["id"],
                )
            continue
        with db.transaction() as tx:
            if complete:
                tx.execute("DELETE FROM storage_deletions WHERE id = :id", id=row["id"])
                finished += 1
            else:
                # A big prefix, deleted in passes: progress, not failure, so due again at once.
                tx.execute(
                    "UPDATE storage_deletions SET not_before = now(), attempts = 0 WHERE id = :id",
                    id=row["id"],
                )
    return DeletionPass(len(rows), finished)


@dataclass(frozen=True)
class SweepResult:
    finished: int
    due: int  # rows still due when the sweep stopped (0 unless it ran out of time)


def due_storage_deletions(db: Database) -> int:
    row = db.fetch_one("SELECT count(*) AS n FROM storage_deletions WHERE not_before <= now()")
    return int(row["n"]) if row else 0


def storage_deletions_backlog(db: Database) -> tuple[int, float | None]:
    """Rows queued in ``storage_deletions`` and the oldest one's age in seconds (None if empty)."""
    row = db.fetch_one(
        "SELECT count(*) AS n, EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest "
        "FROM storage_deletions"
    )
    if row is None or not row["n"]:
        return 0, None
    return int(row["n"]), float(row["oldest"])


def run_storage_sweep(
    db: Database, store_factory: Callable[[], ObjectStore], budget_seconds: float
) -> SweepResult:
    """Work through due rows until none is left or ``budget_seconds`` have passed.

    The store is only created when there is work (its storage client is costly to import).
    """
    deadline = time.monotonic() + budget_seconds
    finished = 0
    if due_storage_deletions(db) == 0:
        return SweepResult(0, 0)
    store = store_factory()
    while time.monotonic() < deadline:
        claimed, done = process_storage_deletions(db, store, DELETION_BATCH)
        finished += done
        if claimed == 0:
            return SweepResult(finished, 0)
    return SweepResult(finished, due_storage_deletions(db))


class _BackgroundCleaner:
    """One thread per instance that sweeps the queue whenever woken."""

    def __init__(
        self,
        db: Database,
        store_factory: Callable[[], ObjectStore],
        budget_seconds: float = 120.0,
    ) -> None:
        self._db = db
        self._store_factory = store_factory
        self._budget = budget_seconds
        self._lock = threading.Lock()
        self._wanted = False
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        with self._lock:
            self._wanted = True
            if self._thread is not None:
                return  # the running sweep looks again before it stops
            self._thread = threading.Thread(target=self._run, name="storage-cleanup", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    self._thread = None
                    return
                self._wanted = False
            try:
                result = run_storage_sweep(self._db, self._store_factory, self._budget)
                if result.finished:
                    logger.info(
                        "storage cleanup", extra={"finished": result.finished, "due": result.due}
                    )
            except Exception:  # the queue keeps the work for the next sweep
                logger.exception("storage cleanup failed; the queue keeps the work")


@lru_cache(maxsize=1)
def _cleaner(db: Database, store_factory: Callable[[], ObjectStore]) -> _BackgroundCleaner:
    return _BackgroundCleaner(db, store_factory)


def schedule_storage_cleanup(db: Database, store_factory: Callable[[], ObjectStore]) -> None:
    """Delete queued objects in a background thread; call after committing a deletion.

    Returns at once: the bucket work runs off the request path. On Cloud Run with the
    default request-based CPU allocation the instance's CPU is throttled once no request is
    active, so the thread may only progress during later requests, or be lost when the
    instance stops. That costs time, never data: the rows stay queued (and a claimed row's
    lease runs out) until a worker finishes them, and the ``storage_sweep`` function, called
    periodically by Cloud Scheduler, guarantees that worker runs.
    """
    _cleaner(db, store_factory).wake()
