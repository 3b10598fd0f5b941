"""Regenerate and edit on POST /chat: the history shows the final state only, removed messages
leave no trace in the window, summaries or media links, and a rewrite never races a turn."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import requests

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.db import Database
from tests.conftest import (
    ApiClient,
    assert_error,
    dicts,
    stream_events,
    stream_lines,
    unique,
    upload_file,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def turn(
    client: ApiClient,
    model: StandinControl,
    question: str,
    reply: str,
    chat_id: str | None = None,
) -> list[dict[str, Any]]:
    """One send answered with ``reply``; its events."""
    model.script(match=question, reply=reply)
    events = dicts(stream_events(client.send(question, chat_id)))
    assert events[-1]["type"] == "done", events
    return events


def regenerate(client: ApiClient, chat_id: str, **extra: Any) -> requests.Response:
    return client.post("/chat", json={"chatId": chat_id, "regenerate": True, **extra}, stream=True)


def edit(
    client: ApiClient,
    chat_id: str,
    message_id: str,
    text: str,
    media: list[dict[str, Any]] | None = None,
) -> requests.Response:
    parts = [*(media or []), {"type": "text", "text": text}]
    body = {
        "chatId": chat_id,
        "editMessageId": message_id,
        "messages": [{"role": "user", "parts": parts}],
    }
    return client.post("/chat", json=body, stream=True)


def history(client: ApiClient, chat_id: str) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in client.get(f"/api/chats/{chat_id}").json()]


def model_texts(record: dict[str, Any]) -> list[str]:
    return [p.get("text", "") for c in record["body"]["contents"] for p in c["parts"]]


def image_part(upload: dict[str, Any]) -> dict[str, Any]:
    return {"type": "image", "text": upload["gcs_url"], "mimeType": "image/png"}


# --- regenerate --------------------------------------------------------------------------------


def test_regenerate_replaces_the_last_answer_and_keeps_the_question(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    first, second = unique("first"), unique("second")
    chat_id = turn(alice, model, first, "Answer one.")[0]["chat_id"]
    started = turn(alice, model, second, "Answer two.", chat_id)
    old_answer_id = started[-1]["message_id"]

    model.script(match=second, reply="A better answer two.")
    events = dicts(stream_events(regenerate(alice, chat_id)))
    assert events[0] == {
        "type": "start",
        "chat_id": chat_id,
        "message_id": started[0]["message_id"],
        "answer_id": events[-1]["message_id"],
        "event_id": 0,
    }
    assert events[-1]["type"] == "done" and events[-1]["message_id"] != old_answer_id
    assert history(alice, chat_id) == [
        ("user", first),
        ("assistant", "Answer one."),
        ("user", second),
        ("assistant", "A better answer two."),
    ]
    # The model saw the question again, and not the answer it replaces.
    record = [r for r in model.requests(match=second) if r["method"] != "generateContent"][-1]
    assert record["body"]["contents"][-1]["role"] == "user"
    assert "Answer two." not in model_texts(record)
    count = db.fetch_one("SELECT message_count FROM chats WHERE id = :id", id=uuid.UUID(chat_id))
    assert count == {"message_count": 4}

    # The next send follows the new answer.
    third = unique("third")
    turn(alice, model, third, "Answer three.", chat_id)
    assert [text for _, text in history(alice, chat_id)][-3:] == [
        "A better answer two.",
        third,
        "Answer three.",
    ]


def test_regenerate_answers_a_question_whose_answer_failed(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("failed")
    model.script(match=question, http_error={"status": 400}, times=1)
    events = dicts(stream_events(alice.send(question)))
    assert events[-1]["type"] == "error"
    chat_id = events[0]["chat_id"]
    assert history(alice, chat_id) == [("user", question)]
    model.script(match=question, reply="Now it works.")
    assert dicts(stream_events(regenerate(alice, chat_id, messages=[])))[-1]["type"] == "done"
    assert history(alice, chat_id) == [("user", question), ("assistant", "Now it works.")]


def test_regenerate_refusals(alice: ApiClient, bob: ApiClient, model: StandinControl) -> None:
    assert_error(alice.post("/chat", json={"regenerate": True}), 422, "chat_id_required")
    empty = alice.create_chat()["chatId"]
    assert_error(regenerate(alice, empty), 422, "nothing_to_regenerate")
    assert_error(regenerate(alice, str(uuid.uuid4())), 404, "chat_not_found")
    bobs = turn(bob, model, unique("bob"), "Bob's answer.")[0]["chat_id"]
    assert_error(regenerate(alice, bobs), 404, "chat_not_found")  # exactly like a missing one
    assert_error(
        alice.post(
            "/chat",
            json={"chatId": empty, "regenerate": True, "editMessageId": str(uuid.uuid4())},
        ),
        422,
        "conflicting_controls",
    )


# --- edit ---------------------------------------------------------------------------------------


def test_edit_replaces_the_question_and_removes_everything_after_it(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    q1, q2, q3 = unique("q1"), unique("q2"), unique("q3")
    chat_id = turn(alice, model, q1, "A1.")[0]["chat_id"]
    q2_id = turn(alice, model, q2, "A2.", chat_id)[0]["message_id"]
    turn(alice, model, q3, "A3.", chat_id)
    with db.transaction() as tx:  # summaries: one before the edited question, one over it
        for version, cut in ((1, 1), (2, 3)):
            tx.execute(
                "INSERT INTO summaries (id, chat_id, version, covers_through_position, content) "
                "VALUES (:id, :chat, :version, :cut, :content)",
                id=uuid.uuid4(),
                chat=uuid.UUID(chat_id),
                version=version,
                cut=cut,
                content=f"summary through {cut}",
            )

    edited = unique("q2 edited")
    model.script(match=edited, reply="A2 for the edit.")
    events = dicts(stream_events(edit(alice, chat_id, q2_id, edited)))
    assert events[-1]["type"] == "done"
    assert events[0]["message_id"] != q2_id  # a new question
    assert history(alice, chat_id) == [
        ("user", q1),
        ("assistant", "A1."),
        ("user", edited),
        ("assistant", "A2 for the edit."),
    ]
    # No trace in the window: only the summary before the edit point is left and used.
    record = [r for r in model.requests(match=edited) if r["method"] != "generateContent"][-1]
    system = record["body"]["systemInstruction"]["parts"][0]["text"]
    texts = " ".join(model_texts(record)) + system
    for gone in (q2, "A2.", q3, "A3.", "summary through 3"):
        assert gone not in texts
    assert "summary through 1" in system
    left = db.fetch_all(
        "SELECT covers_through_position FROM summaries WHERE chat_id = :id",
        id=uuid.UUID(chat_id),
    )
    assert left == [{"covers_through_position": 1}]


def test_edit_refusals(alice: ApiClient, bob: ApiClient, model: StandinControl) -> None:
    events = turn(alice, model, unique("mine"), "My answer.")
    chat_id, question_id, answer_id = (
        events[0]["chat_id"],
        events[0]["message_id"],
        events[-1]["message_id"],
    )
    bob_events = turn(bob, model, unique("bob's"), "Bob's answer.")
    bobs_chat, bobs_question = bob_events[0]["chat_id"], bob_events[0]["message_id"]

    # Another user's message, in one's own chat or in theirs: 404, like a missing one.
    assert_error(edit(alice, chat_id, bobs_question, "x"), 404, "message_not_found")
    assert_error(edit(alice, bobs_chat, bobs_question, "x"), 404, "chat_not_found")
    assert_error(edit(alice, chat_id, str(uuid.uuid4()), "x"), 404, "message_not_found")
    assert_error(edit(alice, chat_id, "not-an-id", "x"), 404, "message_not_found")
    assert_error(edit(alice, chat_id, answer_id, "x"), 422, "not_a_user_message")
    assert_error(edit(alice, chat_id, question_id, "   "), 422, "empty_message")
    no_chat = {
        "editMessageId": question_id,
        "messages": [{"role": "user", "parts": [{"text": "x"}]}],
    }
    assert_error(alice.post("/chat", json=no_chat), 422, "chat_id_required")
    # Nothing changed.
    assert len(history(alice, chat_id)) == 2
    assert len(history(bob, bobs_chat)) == 2


def test_edit_releases_media_no_message_uses_any_more(
    alice: ApiClient, db: Database, model: StandinControl, storage_client: Any, stack: LocalStack
) -> None:
    dropped, kept = upload_file(alice, PNG), upload_file(alice, PNG + b"k")
    question = unique("two pictures")
    model.script(match=question, reply="Two pictures.")
    events = dicts(
        stream_events(alice.send(question, media=[image_part(dropped), image_part(kept)]))
    )
    chat_id, question_id = events[0]["chat_id"], events[0]["message_id"]
    # Their first use moved both files from incoming/ to their permanent names.
    stored_as = {
        row["id"]: row["name"]
        for row in db.fetch_all(
            "SELECT id::text AS id, permanent_name AS name FROM uploads "
            "WHERE id IN (CAST(:a AS uuid), CAST(:b AS uuid))",
            a=dropped["upload_id"],
            b=kept["upload_id"],
        )
    }
    assert all(name and name.startswith("uploads/") for name in stored_as.values()), stored_as

    edited = unique("only one")
    model.script(match=edited, reply="One picture.")
    assert (
        dicts(stream_events(edit(alice, chat_id, question_id, edited, media=[image_part(kept)])))[
            -1
        ]["type"]
        == "done"
    )

    links = db.fetch_all(
        "SELECT upload_id::text AS id FROM chat_uploads WHERE chat_id = :id", id=uuid.UUID(chat_id)
    )
    assert links == [{"id": kept["upload_id"]}]
    assert (
        db.fetch_one("SELECT id FROM uploads WHERE id = :id", id=uuid.UUID(dropped["upload_id"]))
        is None
    )
    bucket = storage_client.bucket(stack.env["GCS_BUCKET_NAME"])
    deadline = time.monotonic() + 10
    # As on delete: the object is removed off the request path.
    while bucket.blob(stored_as[dropped["upload_id"]]).exists():
        assert time.monotonic() < deadline, "the released object stayed in the bucket"
        time.sleep(0.2)
    assert bucket.blob(stored_as[kept["upload_id"]]).exists()
    [question_row, _] = alice.get(f"/api/chats/{chat_id}").json()
    assert [p["type"] for p in question_row["parts"]] == ["text", "image"]


# --- races ---------------------------------------------------------------------------------------


def test_regenerate_or_edit_during_a_send_is_409_chat_busy(
    alice: ApiClient, model: StandinControl
) -> None:
    first = unique("first")
    chat_id = turn(alice, model, first, "Done.")[0]["chat_id"]
    first_id = alice.get(f"/api/chats/{chat_id}").json()[0]["messageId"]
    slow = unique("slow")
    model.script(match=slow, chunks=[f"w{n} " for n in range(8)], delay_per_chunk=0.25)
    response = alice.send(slow, chat_id)
    lines = stream_lines(response)
    next(line for line in lines if line)  # start: the turn is stored and streaming

    busy = assert_error(regenerate(alice, chat_id), 409, "chat_busy")
    assert "still being written" in busy["detail"]
    assert_error(edit(alice, chat_id, first_id, "changed"), 409, "chat_busy")
    for _ in lines:  # let the answer finish
        pass

    assert [text for _, text in history(alice, chat_id)] == [
        first,
        "Done.",
        slow,
        "".join(f"w{n} " for n in range(8)),
    ]
    model.script(match=slow, reply="Regenerated.")
    assert dicts(stream_events(regenerate(alice, chat_id)))[-1]["type"] == "done"
    assert history(alice, chat_id)[-1] == ("assistant", "Regenerated.")


def test_concurrent_regenerates_one_wins_the_other_is_busy(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("twice")
    chat_id = turn(alice, model, question, "Original.")[0]["chat_id"]
    model.script(match=question, chunks=["New ", "one."], delay_per_chunk=0.5, times=2)
    outcomes: list[int] = []
    barrier = threading.Barrier(2)

    def attempt() -> None:
        barrier.wait()
        response = regenerate(alice, chat_id)
        outcomes.append(response.status_code)
        response.content  # noqa: B018 - read to the end

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [200, 409]
    assert history(alice, chat_id) == [("user", question), ("assistant", "New one.")]


def test_a_summary_built_from_messages_an_edit_removed_is_not_stored(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    marker = unique("summarised")
    # Titled by the user, so no title task's model call can take the summary's script.
    chat_id = alice.create_chat("Titled")["chatId"]
    turn(alice, model, f"{marker} one", "A1.", chat_id)
    second = turn(alice, model, f"{marker} two", "A2.", chat_id)
    model.script(match=marker, method="generateContent", reply="Old summary.", hang=1.0)
    delivery: list[requests.Response] = []

    def deliver() -> None:
        delivery.append(
            requests.post(
                stack.function_urls["summarize"] + "/",
                json={"chat_id": chat_id, "cut": 3},
                headers={"X-CloudTasks-QueueName": "summaries", "X-CloudTasks-TaskName": "t"},
                timeout=30,
            )
        )

    worker = threading.Thread(target=deliver)
    worker.start()
    deadline = time.monotonic() + 10  # edit while the model writes the summary
    while not [r for r in model.requests(match=marker) if r["method"] == "generateContent"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    edited = unique("rewritten")
    model.script(match=edited, reply="New A2.")
    assert (
        dicts(stream_events(edit(alice, chat_id, second[0]["message_id"], edited)))[-1]["type"]
        == "done"
    )
    worker.join()
    assert "changed" in delivery[0].json()["message"]
    assert db.fetch_all("SELECT id FROM summaries WHERE chat_id = :id", id=uuid.UUID(chat_id)) == []
