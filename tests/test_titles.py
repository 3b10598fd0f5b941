"""Titles after the first answer: chat_stream asks once per chat, summarize titles the chat
with one small model call, and a rename by the user always wins."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack, free_port
from shared.db import Database
from tests.conftest import (
    ApiClient,
    function_process,
    read_logs,
    store_history,
    stream_events,
    unique,
    wait_for,
)


def deliver(stack: LocalStack, payload: Any) -> requests.Response:
    """A delivery the way Cloud Tasks makes it."""
    return requests.post(
        stack.function_urls["summarize"] + "/",
        json=payload,
        headers={"X-CloudTasks-QueueName": "summaries", "X-CloudTasks-TaskName": "t"},
        timeout=30,
    )


def title_of(db: Database, chat_id: str) -> dict[str, Any] | None:
    return db.fetch_one(
        "SELECT title, title_source FROM chats WHERE id = :id", id=uuid.UUID(chat_id)
    )


def chat_with_history(alice: ApiClient, db: Database, title: str | None = None) -> str:
    chat_id = str(alice.create_chat(title)["chatId"])
    store_history(db, chat_id, 2)
    return chat_id


def test_a_title_task_titles_the_chat_from_its_first_exchange(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat_id = chat_with_history(alice, db)
    marker = uuid.uuid4().hex[:8]
    with db.transaction() as tx:  # the first exchange, recognisable among other tests' chats
        tx.execute(
            "UPDATE messages SET content = content || ' ' || :marker WHERE chat_id = :id",
            marker=marker,
            id=uuid.UUID(chat_id),
        )
    model.script(match=marker, method="generateContent", reply='"Ravens at dawn."')
    response = deliver(stack, {"chat_id": chat_id, "task": "title"})
    assert response.status_code == 200 and response.json()["message"] == "title stored"
    assert title_of(db, chat_id) == {"title": "Ravens at dawn.", "title_source": "generated"}
    [listed] = [c for c in alice.get("/api/chats").json() if c["chatId"] == chat_id]
    assert listed["title"] == "Ravens at dawn."
    [call] = [r for r in model.requests(match=marker) if r["method"] == "generateContent"]
    assert call["body"]["generationConfig"]["maxOutputTokens"] == 32
    prompt = call["body"]["contents"][0]["parts"][0]["text"]
    assert f"User: message 0 {marker}" in prompt and f"Raven: message 1 {marker}" in prompt

    # Delivered again (at least once): the chat has its title, no second model call.
    again = deliver(stack, {"chat_id": chat_id, "task": "title"})
    assert again.status_code == 200 and "already" in again.json()["message"]
    assert len([r for r in model.requests(match=marker) if r["method"] == "generateContent"]) == 1


def test_a_rename_during_titling_wins(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat_id = chat_with_history(alice, db)
    marker = uuid.uuid4().hex[:8]
    with db.transaction() as tx:
        tx.execute(
            "UPDATE messages SET content = :text WHERE chat_id = :id AND position = 0",
            text=f"question {marker}",
            id=uuid.UUID(chat_id),
        )
    model.script(match=marker, method="generateContent", reply="Generated", hang=1.0)
    delivery: list[requests.Response] = []
    worker = threading.Thread(
        target=lambda: delivery.append(deliver(stack, {"chat_id": chat_id, "task": "title"}))
    )
    worker.start()
    # Rename while the model is answering: once the stand-in holds the title request.
    wait_for(lambda: model.requests(match=marker))
    assert alice.patch(f"/api/chats/{chat_id}", json={"title": "Mine"}).status_code == 200
    worker.join()
    assert delivery[0].status_code == 200 and "renamed" in delivery[0].json()["message"]
    assert model.requests(match=marker)[0]["outcome"] == "ok"
    assert title_of(db, chat_id) == {"title": "Mine", "title_source": "user"}


def test_a_title_task_for_a_titled_deleted_or_empty_chat_does_nothing(
    stack: LocalStack, alice: ApiClient, db: Database
) -> None:
    titled = chat_with_history(alice, db, "My own title")
    assert "already" in deliver(stack, {"chat_id": titled, "task": "title"}).json()["message"]
    assert title_of(db, titled) == {"title": "My own title", "title_source": "user"}

    empty = str(alice.create_chat()["chatId"])
    assert "no messages" in deliver(stack, {"chat_id": empty, "task": "title"}).json()["message"]

    gone = str(uuid.uuid4())
    assert "deleted" in deliver(stack, {"chat_id": gone, "task": "title"}).json()["message"]

    malformed = deliver(stack, {"chat_id": "nope", "task": "title"})
    assert malformed.status_code == 200 and "malformed" in malformed.json()["message"]


def test_a_busy_model_makes_cloud_tasks_retry_the_title(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat_id = chat_with_history(alice, db)
    with db.transaction() as tx:
        tx.execute(
            "UPDATE messages SET content = 'busy title' WHERE chat_id = :id AND position = 0",
            id=uuid.UUID(chat_id),
        )
    model.script(match="busy title", method="generateContent", http_error={"status": 429})
    response = deliver(stack, {"chat_id": chat_id, "task": "title"})
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert title_of(db, chat_id) == {"title": "New Chat", "title_source": "default"}


@pytest.fixture
def task_settings(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process enqueues as chat_stream does, on the stack's Cloud Tasks emulator."""
    from shared.settings import get_settings

    for name in ("TASKS_QUEUE", "TASKS_EMULATOR_HOST", "SUMMARIZE_URL", "DATABASE_URL"):
        monkeypatch.setenv(name, stack.env[name])
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_one_title_task_per_chat_however_often_asked(
    task_settings: None, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    from shared import tasks

    chat_id = chat_with_history(alice, db)
    with db.transaction() as tx:
        tx.execute(
            "UPDATE messages SET content = 'dedup title' WHERE chat_id = :id AND position = 0",
            id=uuid.UUID(chat_id),
        )
    model.script(match="dedup title", method="generateContent", reply="Once", hang=0.5)
    assert tasks.request_title(uuid.UUID(chat_id)) is True
    # ALREADY_EXISTS from Cloud Tasks counts as success: the same task, asked for twice.
    assert tasks.request_title(uuid.UUID(chat_id)) is False
    wait_for(lambda: (title_of(db, chat_id) or {}).get("title") == "Once")
    assert len(model.requests(match="dedup title")) == 1


def test_the_client_is_created_ahead_once_and_then_used(
    task_settings: None, alice: ApiClient, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new chat's turn has the client created once its first chunk is out (the import is
    ~0.7 s): in the background, once however many turns ask meanwhile, and the enqueue then
    uses it."""
    from shared import tasks

    monkeypatch.setattr(tasks, "_client", None)
    monkeypatch.setattr(tasks, "_warming", False)
    warming = tasks.warm_client()
    assert warming is not None
    assert tasks.warm_client() is None  # already being created: nothing more started
    warming.join(timeout=60)
    client = tasks._client
    assert client is not None
    assert tasks.warm_client() is None  # created: nothing to start
    assert tasks.request_title(uuid.UUID(chat_with_history(alice, db))) is True
    assert tasks._client is client


# --- asked for by chat_stream after the first complete answer ---------------------------------


def title_requested(stack: LocalStack, chat_id: str) -> bool:
    """Whether chat_stream asked for this chat's title (it logs each task it creates)."""
    return any(
        entry.get("message") == "title requested" and entry.get("chat") == chat_id
        for entry in read_logs(stack, "chat_stream")
    )


def test_the_first_answer_titles_a_new_chat_within_seconds(
    stack: LocalStack, alice: ApiClient, model: StandinControl
) -> None:
    question = unique("How do ravens talk")
    model.script(match=question, reply="They croak.")
    model.script(match=question, method="generateContent", reply="How ravens talk")
    events = stream_events(alice.send(question))
    assert events[-1]["type"] == "done"
    chat_id = events[0]["chat_id"]
    # Asked for after done, before the response ended (Cloud Run's CPU is there while it is open).
    assert title_requested(stack, chat_id)

    def listed_title() -> str | None:
        chats = alice.get("/api/chats").json()
        title = next(c["title"] for c in chats if c["chatId"] == chat_id)
        return title if title != "New Chat" else None

    assert wait_for(listed_title, timeout=15) == "How ravens talk"
    [call] = [r for r in model.requests(match=question) if r["method"] == "generateContent"]
    assert "User: " + question in call["body"]["contents"][0]["parts"][0]["text"]


def test_a_title_that_cannot_be_queued_is_logged_and_the_stream_still_ends_with_done(
    stack: LocalStack, alice: ApiClient, model: StandinControl
) -> None:
    with function_process(
        stack, "chat_stream", TASKS_EMULATOR_HOST=f"127.0.0.1:{free_port()}"
    ) as base:
        question = unique("a title nobody can queue")
        model.script(match=question, reply="Fine.")
        events = stream_events(ApiClient(base, alice.token, alice.user_id).send(question))
        assert events[-1]["type"] == "done"
        chat_id = events[0]["chat_id"]
        assert stack.log_dir is not None
        log = stack.log_dir / f"chat_stream-{base.rsplit(':', 1)[1]}.log"
        entries = [
            json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")
        ]
        # Logged before the response ended: the task is asked for inside it.
        assert any(
            entry.get("message") == "could not ask for a title" and entry.get("chat") == chat_id
            for entry in entries
        )


def test_no_title_task_for_a_titled_chat_or_a_cut_answer(
    stack: LocalStack, alice: ApiClient, model: StandinControl
) -> None:
    titled = alice.create_chat("Chosen by me")["chatId"]
    assert stream_events(alice.send(unique("hello"), titled))[-1]["type"] == "done"

    question = unique("long")
    model.script(match=question, reply="Cut", finish_reason="MAX_TOKENS")
    events = stream_events(alice.send(question))
    chat_id = events[0]["chat_id"]
    assert events[-1]["finish_reason"] == "max_tokens"
    # Tasks are asked for after the response, in order: once a later turn's is, the turns
    # above would have asked for theirs too.
    other = stream_events(alice.send(unique("another chat")))
    wait_for(lambda: title_requested(stack, other[0]["chat_id"]))
    assert not title_requested(stack, titled)
    assert not title_requested(stack, chat_id)
    # The first complete answer asks.
    assert stream_events(alice.send(unique("again"), chat_id))[-1]["finish_reason"] == "stop"
    wait_for(lambda: title_requested(stack, chat_id))
