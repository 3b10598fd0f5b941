"""A resumable answer's text stored as it grows, so followers on any instance can read it.

A resumable turn (:mod:`shared.turn`) only notes its text here (:meth:`ProgressWriter.note`:
a dict entry, no I/O); one thread per process stores what changed at most every
:data:`PROGRESS_INTERVAL_SECONDS`, every answer in one ``UPDATE`` (:func:`record_progress`)
that also ``NOTIFY``s followers (:mod:`shared.answers`) and reads the rows' stop flags.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from shared.answers import PROGRESS_CHANNEL, LiveAnswer
from shared.db import Database

logger = logging.getLogger("raven.answers")

# A resumable answer is stored at most this often while it grows (a follower on another
# instance sees new text within about this long, plus a notification's round trip).
PROGRESS_INTERVAL_SECONDS = 0.2


def record_progress(db: Database, answers: list[dict[str, Any]]) -> dict[uuid.UUID, bool]:
    """Store resumable answers' text so far and tell their followers, in one statement.

    ``answers``: ``{"id", "content", "length"}`` each. The whole text is written (a retry on
    a fresh connection is harmless), only while the answer is still streaming (a late write
    never undoes the final one), and followers are notified when it commits (on
    :data:`shared.answers.PROGRESS_CHANNEL`, which only processes with a follower hear).

    Returns:
        Each updated answer's stop flag; an answer missing from it has ended or is gone.
    """
    rows = db.fetch_all(
        """
        WITH updated AS (
            UPDATE messages m SET content = u.content
            FROM jsonb_to_recordset(CAST(:answers AS jsonb)) AS u(id uuid, content text,
                                                                  length integer)
            WHERE m.id = u.id AND m.streaming_until IS NOT NULL
            RETURNING m.id, m.stop_requested, u.length
        )
        SELECT id, stop_requested,
               pg_notify(:channel, 'p ' || id::text || ' ' || length::text) AS notified
        FROM updated
        """,
        answers=answers,
        channel=PROGRESS_CHANNEL,
    )
    return {uuid.UUID(str(row["id"])): bool(row["stop_requested"]) for row in rows}


class ProgressWriter:
    """Stores every resumable answer of this process as it grows, off the turns' threads.

    A turn only notes its text (:meth:`note`: a dict entry, no I/O); one thread writes what
    changed at most every :data:`PROGRESS_INTERVAL_SECONDS`, every answer in one statement,
    so a slow database never delays a chunk and many streams cost one round trip. A turn
    told by the row to stop (``POST .../stop`` from an instance that missed the NOTIFY) or
    whose row is gone is stopped.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._pending: dict[uuid.UUID, tuple[LiveAnswer, list[str], int, int]] = {}
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, live: LiveAnswer, pieces: list[str], length: int) -> None:
        """The answer is ``pieces`` (a list the turn appends to), ``length`` characters."""
        with self._lock:
            self._pending[live.answer_id] = (live, pieces, len(pieces), length)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="answers-progress")
                self._thread.daemon = True
                self._thread.start()
        self._changed.set()

    def forget(self, live: LiveAnswer) -> None:
        """The turn is storing its answer itself: nothing more to write for it."""
        with self._lock:
            self._pending.pop(live.answer_id, None)

    def _run(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
            if batch:
                self._write(batch)
            time.sleep(PROGRESS_INTERVAL_SECONDS)

    def _write(self, batch: dict[uuid.UUID, tuple[LiveAnswer, list[str], int, int]]) -> None:
        answers = [
            {"id": str(answer_id), "content": "".join(pieces[:count]), "length": length}
            for answer_id, (_, pieces, count, length) in batch.items()
        ]
        try:
            flags = record_progress(self._db, answers)
        except Exception:  # the next write, or the turn's own final one, stores it
            logger.warning("could not store progress", exc_info=True)
            return
        for answer_id, (live, _, _, _) in batch.items():
            if flags.get(answer_id, True):
                live.stop("stopped")


_writer: ProgressWriter | None = None
_writer_lock = threading.Lock()


def progress_writer(db: Database) -> ProgressWriter:
    """This process's progress writer."""
    global _writer
    with _writer_lock:
        if _writer is None:
            _writer = ProgressWriter(db)
        return _writer


def _forget_process_state() -> None:
    global _writer, _writer_lock
    _writer = None
    _writer_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_process_state)
