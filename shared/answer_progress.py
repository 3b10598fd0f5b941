"""A resumable answer's text stored as it grows, so followers on any instance can read it.

A resumable turn (:mod:`shared.turn`) only notes its text here (:meth:`ProgressWriter.note`:
a dict entry, no I/O); one thread per process stores what changed at most every
:data:`PROGRESS_INTERVAL_SECONDS`, every answer in one ``UPDATE`` (:func:`record_progress`)
that appends each answer's new text, ``NOTIFY``s followers (:mod:`shared.answers`) and reads
the rows' stop flags.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from shared.answers import PROGRESS_CHANNEL, LiveAnswer
from shared.db import Database

logger = logging.getLogger("raven.answers")

# A resumable answer is stored at most this often while it grows (a follower on another
# instance sees new text within about this long, plus a notification's round trip).
PROGRESS_INTERVAL_SECONDS = 0.2


@dataclass(frozen=True)
class Written:
    """What one progress write found among its answers (most writes find nothing)."""

    stop: frozenset[uuid.UUID]  # asked to stop (``POST .../stop``, its NOTIFY missed)
    gone: frozenset[uuid.UUID]  # ended or deleted: not written
    # Written, but its stored text is not the length the writer expected (never seen):
    # the next write sends the whole text again.
    partial: frozenset[uuid.UUID]


def record_progress(db: Database, answers: list[dict[str, Any]]) -> Written:
    """Store resumable answers' new text and tell their followers, in one statement.

    ``answers``: ``{"id", "start", "text", "length"}`` each: the answer's first ``start``
    characters are already stored, ``text`` follows them and makes ``length`` characters.
    Only the new text travels (a whole text rewritten every interval costs a long answer
    its square); the stored text is cut at ``start`` before ``text`` is added, so a retry
    of the same write on a fresh connection stores the same text. Only while the answer
    is still streaming (a late write never undoes the final one); followers are notified
    when it commits (on :data:`shared.answers.PROGRESS_CHANNEL`, which only processes with
    a follower hear). One row comes back, naming only the answers that need more than
    their next write (a row per answer cost pg8000 more than the rest of the write).
    """
    row = db.fetch_one(
        """
        WITH updated AS (
            UPDATE messages m SET content = left(m.content, u.start) || u.text
            FROM jsonb_to_recordset(CAST(:answers AS jsonb))
                 AS u(id uuid, start integer, text text, length integer)
            WHERE m.id = u.id AND m.streaming_until IS NOT NULL
            RETURNING m.id, m.stop_requested, char_length(m.content) = u.length AS whole,
                      pg_notify(:channel, 'p ' || m.id::text || ' ' || u.length::text)
        ),
        found AS (
            SELECT array_agg(id) AS written,
                   array_agg(id::text) FILTER (WHERE stop_requested) AS stop,
                   array_agg(id::text) FILTER (WHERE NOT whole) AS partial
            FROM updated
        )
        SELECT stop, partial,
               ARRAY(SELECT asked.id::text
                     FROM jsonb_to_recordset(CAST(:answers AS jsonb)) AS asked(id uuid)
                     WHERE asked.id <> ALL(coalesce(found.written, '{}'))) AS gone
        FROM found
        """,
        answers=answers,
        channel=PROGRESS_CHANNEL,
    )
    assert row is not None  # an aggregate's one row

    def ids(column: str) -> frozenset[uuid.UUID]:
        return frozenset(uuid.UUID(text) for text in row[column] or ())

    return Written(stop=ids("stop"), gone=ids("gone"), partial=ids("partial"))


class ProgressWriter:
    """Stores every resumable answer of this process as it grows, off the turns' threads.

    A turn only notes its text (:meth:`note`: a dict entry, no I/O); one thread writes what
    changed at most every :data:`PROGRESS_INTERVAL_SECONDS`, every answer in one statement,
    so a slow database never delays a chunk and many streams cost one round trip. Each
    write sends only the text after what the last successful one stored. A turn told by the
    row to stop (``POST .../stop`` from an instance that missed the NOTIFY) or whose row is
    gone is stopped.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._pending: dict[uuid.UUID, tuple[LiveAnswer, list[str], int, int]] = {}
        # Per answer noted and not forgotten: (pieces, characters) known to be stored.
        self._stored: dict[uuid.UUID, tuple[int, int]] = {}
        self._changed = threading.Event()
        self._thread: threading.Thread | None = None

    def note(self, live: LiveAnswer, pieces: list[str], length: int) -> None:
        """The answer is ``pieces`` (a list the turn appends to), ``length`` characters."""
        with self._lock:
            self._pending[live.answer_id] = (live, pieces, len(pieces), length)
            if live.answer_id not in self._stored:
                self._stored[live.answer_id] = (0, 0)
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(target=self._run, name="answers-progress")
                    self._thread.daemon = True
                    self._thread.start()
        if not self._changed.is_set():  # set already while the writer sleeps: no wake-up
            self._changed.set()

    def forget(self, live: LiveAnswer) -> None:
        """The turn is storing its answer itself: nothing more to write for it."""
        with self._lock:
            self._pending.pop(live.answer_id, None)
            self._stored.pop(live.answer_id, None)

    def _run(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            with self._lock:
                batch, self._pending = self._pending, {}
                stored = {answer_id: self._stored.get(answer_id, (0, 0)) for answer_id in batch}
            if batch:
                self._write(batch, stored)
            time.sleep(PROGRESS_INTERVAL_SECONDS)

    def _write(
        self,
        batch: dict[uuid.UUID, tuple[LiveAnswer, list[str], int, int]],
        stored: dict[uuid.UUID, tuple[int, int]],
    ) -> None:
        answers = []
        for answer_id, (_, pieces, count, length) in batch.items():
            stored_count, stored_length = stored[answer_id]
            answers.append(
                {
                    "id": str(answer_id),
                    "start": stored_length,
                    "text": "".join(pieces[stored_count:count]),
                    "length": length,
                }
            )
        try:
            written = record_progress(self._db, answers)
        except Exception:  # the next write (from what is known stored), or the turn's own
            logger.warning("could not store progress", exc_info=True)
            return
        with self._lock:
            for answer_id, (live, _, count, length) in batch.items():
                if answer_id in written.stop or answer_id in written.gone:
                    live.stop("stopped")
                elif answer_id in self._stored:
                    partial = answer_id in written.partial
                    self._stored[answer_id] = (0, 0) if partial else (count, length)


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
