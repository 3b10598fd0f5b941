"""A turn's start and end each stored in one statement (shared.turn, shared.answers): a
refused or misdirected send changes nothing, and storing an ending twice (a retry after a
lost reply) counts the turn's usage once."""

from __future__ import annotations

import uuid
from typing import Any

from dev.gemini_standin import StandinControl
from shared import answers, chats
from shared.db import Database
from tests.conftest import ApiClient, assert_error, stream_events, unique


def counters(db: Database, user_id: str) -> dict[str, Any]:
    row = db.fetch_one(
        """
        SELECT (SELECT COALESCE(SUM(messages), 0) FROM rate_limit_windows
                WHERE user_id = :user_id) AS counted,
               (SELECT COALESCE(SUM(messages), 0) FROM usage_daily
                WHERE user_id = :user_id) AS answered,
               (SELECT COALESCE(SUM(message_count), 0) FROM chats
                WHERE user_id = :user_id) AS positions,
               (SELECT count(*) FROM messages m JOIN chats c ON c.id = m.chat_id
                WHERE c.user_id = :user_id) AS messages,
               (SELECT count(*) FROM chats WHERE user_id = :user_id) AS chats
        """,
        user_id=user_id,
    )
    assert row is not None
    return row


def test_a_send_to_an_unknown_chat_or_over_a_limit_changes_nothing(
    make_user: Any, db: Database, model: StandinControl
) -> None:
    carol: ApiClient = make_user()
    assert carol.user_id is not None
    first = stream_events(carol.send(unique("hello")))
    assert first[-1]["type"] == "done"
    chat_id = first[0]["chat_id"]
    before = counters(db, carol.user_id)
    assert before["counted"] == 1 and before["messages"] == 2 and before["positions"] == 2

    assert_error(carol.send("nowhere", str(uuid.uuid4())), 404, "chat_not_found")
    assert counters(db, carol.user_id) == before  # not counted against the limits either

    with db.transaction() as tx:
        tx.execute(
            "UPDATE usage_daily SET input_tokens = 10000000000 WHERE user_id = :u",
            u=carol.user_id,
        )
    assert_error(carol.send("over", chat_id), 429, "rate_limited_tokens")
    assert_error(carol.send("over, new chat"), 429, "rate_limited_tokens")
    assert counters(db, carol.user_id) == before


def test_the_window_and_the_name_come_with_the_send(
    make_user: Any, db: Database, model: StandinControl
) -> None:
    dave: ApiClient = make_user(given_name="Dave")
    question = unique("first")
    model.script(match=question, reply="One.")
    chat_id = stream_events(dave.send(question))[0]["chat_id"]
    follow_up = unique("second")
    model.script(match=follow_up, reply="Two.")
    assert stream_events(dave.send(follow_up, chat_id))[-1]["type"] == "done"
    [request] = model.requests(match=follow_up)
    texts = [
        (content["role"], part["text"])
        for content in request["body"]["contents"]
        for part in content["parts"]
    ]
    assert texts == [("user", question), ("model", "One."), ("user", follow_up)]
    assert "Dave" in request["body"]["systemInstruction"]["parts"][0]["text"]


def test_storing_an_ending_twice_counts_its_usage_once(make_user: Any, db: Database) -> None:
    erin: ApiClient = make_user()
    assert erin.user_id is not None
    erin.get("/api/chats")  # creates the user row
    with db.transaction() as tx:
        turn = chats.start_turn(tx, erin.user_id, None, "q", [{"type": "text", "text": "q"}], 1)
    answer = chats.finished_answer(
        "an answer",
        finish_reason="stop",
        token_count=3,
        reported=True,
        model="m",
        error_code=None,
    )
    for _ in range(2):  # the reply of the first was lost: the pool runs it again
        answers.store_ending(db, erin.user_id, turn["assistant_message_id"], answer, 10, 3, 9)
    usage = db.fetch_one(
        "SELECT messages, input_tokens, output_tokens FROM usage_daily WHERE user_id = :u",
        u=erin.user_id,
    )
    assert usage == {"messages": 1, "input_tokens": 10, "output_tokens": 3}
    stored = db.fetch_one(
        "SELECT content, status, streaming_until IS NULL AS ended FROM messages WHERE id = :id",
        id=turn["assistant_message_id"],
    )
    assert stored == {"content": "an answer", "status": "complete", "ended": True}
