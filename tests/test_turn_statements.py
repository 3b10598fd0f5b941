"""A turn's start and end each stored in one statement (shared.turn, shared.answers): a
refused or misdirected send changes nothing, storing an ending twice (a retry after a
lost reply) counts the turn's usage once, and a send whose reply was lost after its commit
carries on with the turn it stored (tests/postgres_proxy.py loses the reply)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pg8000.dbapi
import pytest

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared import answers, chats, turn, turn_request
from shared.db import Database, connect_kwargs_from_url
from shared.schemas import ChatRequest
from shared.settings import load_settings
from tests.conftest import ApiClient, assert_error, function_process, stream_events, unique
from tests.postgres_proxy import PostgresProxy

# Only the send's statement allocates the chat's positions (shared.turn._begin_send).
SEND_STATEMENT = "allocated AS ("


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


@pytest.fixture(scope="module")
def lossy_database(stack: LocalStack) -> Iterator[PostgresProxy]:
    """The stack's PostgreSQL behind a proxy that can lose a statement's reply."""
    with PostgresProxy(connect_kwargs_from_url(stack.env["DATABASE_URL"])["unix_sock"]) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def lossy_chat_stream(stack: LocalStack, lossy_database: PostgresProxy) -> Iterator[str]:
    """A chat_stream instance whose database connections go through the proxy."""
    url = lossy_database.url(stack.env["DATABASE_URL"])
    with function_process(stack, "chat_stream", DATABASE_URL=url) as base:
        yield base


def chat_rows(db: Database, chat_id: str) -> list[dict[str, Any]]:
    return db.fetch_all(
        "SELECT id::text, position, role, content, status, streaming_until IS NOT NULL AS busy "
        "FROM messages WHERE chat_id = :id ORDER BY position",
        id=uuid.UUID(chat_id),
    )


@pytest.mark.parametrize("in_new_chat", [False, True])
def test_a_send_whose_reply_was_lost_after_its_commit_carries_on_with_its_turn(
    stack: LocalStack,
    lossy_database: PostgresProxy,
    lossy_chat_stream: str,
    db: Database,
    model: StandinControl,
    in_new_chat: bool,
) -> None:
    """The pool runs the send again on a fresh connection (the pooled one broke): the
    repeat meets the ids its first run stored, and the turn goes on with that run's rows
    (it used to answer 503 and leave the chat busy until the 900 s lease lapsed)."""
    user_id = "user_" + uuid.uuid4().hex[:20]
    client = ApiClient(lossy_chat_stream, stack.signer.token(user_id), user_id)
    first = stream_events(client.send(unique("before the cut")))
    assert first[-1]["type"] == "done"  # the pool now holds a used connection
    chat_id = None if in_new_chat else first[0]["chat_id"]
    before = counters(db, user_id)

    question = unique("reply lost")
    model.script(match=question, reply="Still here.")
    lossy_database.lose_reply_after_commit(SEND_STATEMENT)
    response = client.send(question, chat_id)
    assert lossy_database.lost.is_set()  # the first run committed, its reply never came
    assert response.status_code == 200, response.text
    events = stream_events(response)
    start, done = events[0], events[-1]
    assert done["type"] == "done" and done["message_id"] == start["answer_id"]
    assert "".join(e["content"] for e in events if e["type"] == "chunk") == "Still here."
    assert len(model.requests(match=question)) == 1

    rows = chat_rows(db, start["chat_id"])
    assert [(r["role"], r["content"], r["busy"]) for r in rows[-2:]] == [
        ("user", question, False),
        ("assistant", "Still here.", False),
    ]
    assert [r["id"] for r in rows[-2:]] == [start["message_id"], start["answer_id"]]
    after = counters(db, user_id)
    assert after["counted"] == before["counted"] + 1  # counted once, not per run
    assert after["answered"] == before["answered"] + 1
    assert after["messages"] == before["messages"] + 2
    assert after["chats"] == before["chats"] + in_new_chat
    # The chat is not left busy: a regenerate is taken at once.
    model.script(match=question, reply="Again.")
    regenerated = client.post("/chat", json={"chatId": start["chat_id"], "regenerate": True})
    assert stream_events(regenerated)[-1]["type"] == "done"


def test_a_send_not_repeated_after_its_reply_was_lost_carries_on_with_its_turn(
    stack: LocalStack, lossy_database: PostgresProxy, make_user: Any, db: Database
) -> None:
    """A fresh connection that breaks is not retried by the pool (shared.db): the send
    still finds the turn its statement stored, rather than answering 503 over it."""
    frank: ApiClient = make_user()
    assert frank.user_id is not None
    chat_id = stream_events(frank.send(unique("hello")))[0]["chat_id"]
    before = counters(db, frank.user_id)
    settings = load_settings(stack.env)
    kwargs = connect_kwargs_from_url(lossy_database.url(stack.env["DATABASE_URL"]))
    lossy = Database(lambda: pg8000.dbapi.connect(**kwargs), 2)
    try:
        message = {"role": "user", "parts": [{"type": "text", "text": "q"}]}
        body = ChatRequest.model_validate({"chatId": chat_id, "messages": [message]})
        asked = turn_request.read_request(body, settings)
        assert asked.message is not None
        question = turn_request.question(asked.message, [], 10, settings)
        lossy_database.lose_reply_after_commit(SEND_STATEMENT)
        begun = turn.begin(lossy, settings, frank.user_id, None, asked, question, 10)
    finally:
        lossy.close()
    assert lossy_database.lost.is_set()
    rows = chat_rows(db, chat_id)
    assert [(r["id"], r["role"], r["busy"]) for r in rows[-2:]] == [
        (str(begun.user_message_id), "user", False),
        (str(begun.assistant_message_id), "assistant", True),  # its turn streams next
    ]
    assert begun.user_position == rows[-2]["position"]
    window = sorted(begun.model_context.window_positions)
    assert window == [r["position"] for r in rows[:-1]]  # the chat before it, and the question
    assert counters(db, frank.user_id)["counted"] == before["counted"] + 1


@pytest.mark.parametrize("rewrite", ["regenerate", "edit"])
def test_a_rewrite_whose_commit_reply_was_lost_carries_on_with_its_turn(
    stack: LocalStack,
    lossy_database: PostgresProxy,
    lossy_chat_stream: str,
    db: Database,
    model: StandinControl,
    rewrite: str,
) -> None:
    """A regenerate or an edit starts in a transaction (shared.turn.begin): when the reply
    to its COMMIT is lost, the turn it stored is found by the answer id chosen before it,
    rather than answering 503 over a chat its turn's lease keeps busy (409 to the retry)."""
    user_id = "user_" + uuid.uuid4().hex[:20]
    token = stack.signer.token(user_id)
    client = ApiClient(lossy_chat_stream, token, user_id)
    # A chat with a title of its own: no title task reads the first answer meanwhile (its
    # model call would take this test's scripted reply).
    chat_id = ApiClient(stack.base_url, token, user_id).create_chat("titled")["chatId"]
    asked = unique("asked")
    first = stream_events(client.send(asked, chat_id))
    question_id = first[0]["message_id"]
    before = counters(db, user_id)

    text = unique("rewritten") if rewrite == "edit" else asked
    model.script(match=text, reply="Rewritten.")
    body: dict[str, Any] = {"chatId": chat_id, "regenerate": True}
    if rewrite == "edit":
        message = {"role": "user", "parts": [{"type": "text", "text": text}]}
        body = {"chatId": chat_id, "editMessageId": question_id, "messages": [message]}
    lossy_database.lose_reply_after_commit("COMMIT")
    response = client.post("/chat", json=body, stream=True)
    assert lossy_database.lost.is_set()
    assert response.status_code == 200, response.text
    events = stream_events(response)
    start, done = events[0], events[-1]
    assert done["type"] == "done" and done["message_id"] == start["answer_id"]
    rows = chat_rows(db, chat_id)
    assert [(r["role"], r["content"], r["busy"]) for r in rows] == [
        ("user", text, False),
        ("assistant", "Rewritten.", False),
    ]
    assert rows[1]["id"] == start["answer_id"]
    assert counters(db, user_id)["counted"] == before["counted"] + 1
    # Not busy: the next regenerate is taken at once.
    model.script(match=text, reply="Again.")
    again = client.post("/chat", json={"chatId": chat_id, "regenerate": True}, stream=True)
    assert stream_events(again)[-1]["type"] == "done"
