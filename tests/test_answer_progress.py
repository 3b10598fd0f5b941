"""A resumable answer's text stored as it grows (shared.answer_progress), against PostgreSQL.

Each write sends only the text after what the last successful one stored; these check that
the stored text is always the answer's first characters: a write repeated (a retry on a
fresh connection) stores the same text, a write after a failed one sends everything from
what is known stored, and an unexpected stored length makes the next write send it all.
"""

from __future__ import annotations

import uuid

import pytest

from shared import answer_progress
from shared.answer_progress import ProgressWriter, record_progress
from shared.answers import LiveAnswer
from shared.db import Database
from tests.conftest import wait_for


@pytest.fixture
def answer_id(db: Database) -> uuid.UUID:
    """An answer placeholder that is streaming (an empty row with a live lease)."""
    user, chat, answer = f"user_progress_{uuid.uuid4().hex[:8]}", uuid.uuid4(), uuid.uuid4()
    with db.transaction() as tx:
        tx.execute("INSERT INTO users (id) VALUES (:id)", id=user)
        tx.execute(
            "INSERT INTO chats (id, user_id, message_count) VALUES (:id, :user, 1)",
            id=chat,
            user=user,
        )
        tx.execute(
            """
            INSERT INTO messages (id, chat_id, position, role, streaming_until)
            VALUES (:id, :chat, 0, 'assistant', now() + interval '1 minute')
            """,
            id=answer,
            chat=chat,
        )
    return answer


def stored(db: Database, answer_id: uuid.UUID) -> str:
    row = db.fetch_one("SELECT content FROM messages WHERE id = :id", id=answer_id)
    assert row is not None
    return str(row["content"])


def write(db: Database, answer_id: uuid.UUID, start: int, text: str, length: int) -> bool:
    """One answer's progress write; whether its stored text has the expected length."""
    answers = [{"id": str(answer_id), "start": start, "text": text, "length": length}]
    written = record_progress(db, answers)
    assert answer_id not in written.gone and answer_id not in written.stop
    return answer_id not in written.partial


def test_new_text_is_appended_and_a_repeated_write_stores_the_same(
    db: Database, answer_id: uuid.UUID
) -> None:
    assert write(db, answer_id, 0, "Héllo ", 6)
    assert write(db, answer_id, 6, "wörld 😀", 13)
    assert write(db, answer_id, 6, "wörld 😀", 13)  # the same write, retried
    assert stored(db, answer_id) == "Héllo wörld 😀"
    # A write that re-sends from an earlier point (the one before it failed on our side).
    assert write(db, answer_id, 6, "wörld 😀!", 14)
    assert stored(db, answer_id) == "Héllo wörld 😀!"


def test_a_stored_length_not_the_expected_one_is_reported(
    db: Database, answer_id: uuid.UUID
) -> None:
    write(db, answer_id, 0, "abc", 3)
    assert not write(db, answer_id, 5, "fg", 7)  # the writer believed 5 were stored
    assert write(db, answer_id, 0, "abcdefg", 7)
    assert stored(db, answer_id) == "abcdefg"


def test_an_ended_answer_is_not_written_and_reads_as_gone(
    db: Database, answer_id: uuid.UUID
) -> None:
    write(db, answer_id, 0, "partial", 7)
    db.write(
        "UPDATE messages SET content = 'final', streaming_until = NULL WHERE id = :id",
        id=answer_id,
    )
    other = uuid.uuid4()  # an answer that never was (deleted with its chat)
    answers = [
        {"id": str(answer_id), "start": 7, "text": " more", "length": 12},
        {"id": str(other), "start": 0, "text": "x", "length": 1},
    ]
    written = record_progress(db, answers)
    assert written.gone == {answer_id, other}
    assert not written.stop and not written.partial
    assert stored(db, answer_id) == "final"


def test_a_stop_asked_in_the_row_is_reported(db: Database, answer_id: uuid.UUID) -> None:
    db.write("UPDATE messages SET stop_requested = true WHERE id = :id", id=answer_id)
    written = record_progress(db, [{"id": str(answer_id), "start": 0, "text": "a", "length": 1}])
    assert written.stop == {answer_id}
    assert not written.gone and not written.partial


def test_the_writer_stores_the_growing_answer_in_pieces(
    db: Database, answer_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(answer_progress, "PROGRESS_INTERVAL_SECONDS", 0.01)
    writer = ProgressWriter(db)
    live = LiveAnswer(answer_id, deadline=float("inf"))
    pieces: list[str] = []
    length = 0
    for piece in ["one ", "two ", "three ", "four"]:
        pieces.append(piece)
        length += len(piece)
        writer.note(live, pieces, length)
        wait_for(lambda: stored(db, answer_id) == "".join(pieces))
    # A stored text the writer did not expect (changed behind its back): it sends it all.
    db.write("UPDATE messages SET content = 'one' WHERE id = :id", id=answer_id)
    pieces.append(" five")
    writer.note(live, pieces, length + 5)
    wait_for(lambda: stored(db, answer_id) == "one five")  # appended where it expected 18
    writer.note(live, pieces, length + 5)  # the next write sends the whole text
    wait_for(lambda: stored(db, answer_id) == "one two three four five")
    pieces.append("!")
    writer.note(live, pieces, length + 6)
    wait_for(lambda: stored(db, answer_id) == "one two three four five!")
    assert live.stop_reason is None
    writer.forget(live)


def test_the_writer_stops_a_turn_whose_row_asks_it_to(
    db: Database, answer_id: uuid.UUID, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(answer_progress, "PROGRESS_INTERVAL_SECONDS", 0.01)
    writer = ProgressWriter(db)
    live = LiveAnswer(answer_id, deadline=float("inf"))
    db.write("UPDATE messages SET stop_requested = true WHERE id = :id", id=answer_id)
    writer.note(live, ["text"], 4)
    wait_for(lambda: live.stop_reason == "stopped")
    writer.forget(live)
