"""Rolling summaries: chat_stream asks, the Cloud Tasks emulator delivers, summarize builds.

Everything runs as deployed: chat_stream enqueues with google-cloud-tasks over gRPC, the
emulator POSTs the task to the summarize function with the X-CloudTasks-* headers, and the
summary model call goes through google-genai to the Gemini stand-in.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.db import Database
from tests.conftest import ApiClient, function_process, store_history, stream_events, wait_for

# Low thresholds so a few turns are a "long" chat.
SUMMARY_ENV = {
    "SUMMARY_TRIGGER_TOKENS": "60",
    "SUMMARY_MIN_MESSAGES": "4",
    "SUMMARY_KEEP_RECENT": "2",
}


@pytest.fixture(scope="module")
def summarizing_chat_stream(stack: LocalStack) -> Iterator[str]:
    with function_process(stack, "chat_stream", **SUMMARY_ENV) as base:
        yield base


def summaries(db: Database, chat_id: str) -> list[dict[str, Any]]:
    return db.fetch_all(
        "SELECT version, covers_through_position, content, token_count FROM summaries "
        "WHERE chat_id = :id ORDER BY version",
        id=uuid.UUID(chat_id),
    )


def deliver(stack: LocalStack, payload: Any, task_name: str = "t") -> requests.Response:
    """A delivery the way Cloud Tasks makes it (used for duplicates and late deliveries)."""
    return requests.post(
        stack.function_urls["summarize"] + "/",
        json=payload,
        headers={
            "X-CloudTasks-QueueName": "summaries",
            "X-CloudTasks-TaskName": task_name,
            "X-CloudTasks-TaskRetryCount": "0",
        },
        timeout=30,
    )


def long_turn(client: ApiClient, marker: str, n: int, chat_id: str | None = None) -> list[Any]:
    text = f"{marker} turn {n}: " + "tell me more about ravens and their habits " * 3
    events = stream_events(client.send(text, chat_id))
    assert events[-1]["type"] == "done", events
    return events


def test_a_long_chat_gets_a_summary_a_title_and_uses_it(
    stack: LocalStack, summarizing_chat_stream: str, db: Database, model: StandinControl
) -> None:
    client = ApiClient(
        summarizing_chat_stream, stack.signer.token("user_sum_" + uuid.uuid4().hex[:6])
    )
    marker = "m" + uuid.uuid4().hex[:8]
    chat_id = long_turn(client, marker, 1)[0]["chat_id"]
    assert summaries(db, chat_id) == []  # one turn is below SUMMARY_MIN_MESSAGES
    long_turn(client, marker, 2, chat_id)

    [summary] = wait_for(lambda: summaries(db, chat_id))
    # Through the answer before the SUMMARY_KEEP_RECENT (2) newest messages.
    assert summary["version"] == 1 and summary["covers_through_position"] == 1
    assert summary["content"] and summary["token_count"] > 0
    title = wait_for(
        lambda: (
            (
                row := db.fetch_one(
                    "SELECT title, title_source FROM chats WHERE id = :id", id=uuid.UUID(chat_id)
                )
            )
            and row["title_source"] == "generated"
            and row
        )
    )
    assert title["title"] != "New Chat" and len(title["title"]) <= 60

    summary_requests = [
        r
        for r in model.requests(match=marker)
        if "generateContent" in r["path"]
        and ":stream" not in r["path"]
        # the first answer also asked for a title: that call has its own instruction
        and "running summary" in r["body"]["systemInstruction"]["parts"][0]["text"]
    ]
    assert summary_requests, "the summary was built by the model"
    prompt = summary_requests[0]["body"]["contents"][0]["parts"][0]["text"]
    assert f"{marker} turn 1" in prompt and f"{marker} turn 2" not in prompt
    assert summary_requests[0]["body"]["generationConfig"]["maxOutputTokens"] == 1000

    events = long_turn(client, marker, 3, chat_id)
    reply = "".join(e["content"] for e in events if e["type"] == "chunk")
    assert "summary: yes" in reply
    turn3 = next(r for r in model.requests(match=f"{marker} turn 3") if ":stream" in r["path"])
    system = turn3["body"]["systemInstruction"]["parts"][0]["text"]
    assert summary["content"] in system
    texts = [p.get("text", "") for c in turn3["body"]["contents"] for p in c["parts"]]
    assert not any(f"{marker} turn 1" in text for text in texts)  # covered by the summary
    assert any(f"{marker} turn 2" in text for text in texts)


def make_chat_with_messages(client: ApiClient, db: Database, count: int) -> str:
    chat_id = str(client.create_chat()["chatId"])
    store_history(db, chat_id, count)
    return chat_id


def test_duplicate_concurrent_deliveries_leave_one_summary(
    stack: LocalStack, alice: ApiClient, db: Database
) -> None:
    chat_id = make_chat_with_messages(alice, db, 10)
    results: list[int] = []

    def send() -> None:
        results.append(deliver(stack, {"chat_id": chat_id, "cut": 7}).status_code)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 6
    rows = summaries(db, chat_id)
    assert [(r["version"], r["covers_through_position"]) for r in rows] == [(1, 7)]


def test_late_and_repeated_deliveries_are_no_ops(
    stack: LocalStack, alice: ApiClient, db: Database
) -> None:
    chat_id = make_chat_with_messages(alice, db, 12)
    assert deliver(stack, {"chat_id": chat_id, "cut": 9}).json()["message"] == "summary stored"
    late = deliver(stack, {"chat_id": chat_id, "cut": 5})
    assert late.status_code == 200 and "already" in late.json()["message"]
    again = deliver(stack, {"chat_id": chat_id, "cut": 9})
    assert again.status_code == 200 and "already" in again.json()["message"]
    assert [(r["version"], r["covers_through_position"]) for r in summaries(db, chat_id)] == [
        (1, 9)
    ]
    # The next cut folds the previous summary in and becomes version 2.
    assert deliver(stack, {"chat_id": chat_id, "cut": 11}).json()["version"] == 2


def test_the_next_summary_folds_in_the_previous_one(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat_id = make_chat_with_messages(alice, db, 8)
    marker = "fold" + uuid.uuid4().hex[:6]
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO summaries (id, chat_id, version, covers_through_position, content) "
            "VALUES (:id, :chat, 1, 3, :content)",
            id=uuid.uuid4(),
            chat=uuid.UUID(chat_id),
            content=f"Earlier: {marker}",
        )
    assert deliver(stack, {"chat_id": chat_id, "cut": 6}).json()["version"] == 2
    prompt = model.requests(match=marker)[-1]["body"]["contents"][0]["parts"][0]["text"]
    assert prompt.startswith(f"Current summary:\nEarlier: {marker}")
    assert "message 4" in prompt and "message 6" in prompt
    assert "message 3" not in prompt and "message 7" not in prompt


def test_a_deleted_chat_is_a_2xx_no_op(stack: LocalStack, alice: ApiClient, db: Database) -> None:
    chat_id = make_chat_with_messages(alice, db, 6)
    assert alice.delete(f"/api/chats/{chat_id}").status_code == 200
    response = deliver(stack, {"chat_id": chat_id, "cut": 3})
    assert response.status_code == 200 and "deleted" in response.json()["message"]
    assert summaries(db, chat_id) == []


def test_a_malformed_task_is_dropped_not_retried(stack: LocalStack) -> None:
    for payload in ({}, {"chat_id": "nope", "cut": 1}, {"chat_id": str(uuid.uuid4()), "cut": -1}):
        response = deliver(stack, payload)
        assert response.status_code == 200 and response.json()["message"].startswith("dropped")


def test_a_passing_model_failure_is_retried_by_the_queue_and_then_succeeds(
    stack: LocalStack, summarizing_chat_stream: str, db: Database, model: StandinControl
) -> None:
    marker = "retry" + uuid.uuid4().hex[:6]
    model.script(
        match=marker, method="generateContent", http_error={"status": 503, "message": "try later"}
    )
    client = ApiClient(
        summarizing_chat_stream, stack.signer.token("user_rt_" + uuid.uuid4().hex[:6])
    )
    chat_id = long_turn(client, marker, 1)[0]["chat_id"]
    long_turn(client, marker, 2, chat_id)
    [summary] = wait_for(lambda: summaries(db, chat_id), timeout=30)
    assert summary["covers_through_position"] == 1
    attempts = [
        r
        for r in model.requests(match=marker)
        if r["path"].endswith(":generateContent") and "turn 1" in str(r["body"])
    ]
    assert [r["outcome"] for r in attempts[:2]] == ["http_error", "ok"]


def test_a_model_that_is_busy_gets_a_429_for_backoff(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat_id = make_chat_with_messages(alice, db, 6)
    model.script(
        match="message 3", method="generateContent", http_error={"status": 429, "message": "quota"}
    )
    response = deliver(stack, {"chat_id": chat_id, "cut": 3})
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert summaries(db, chat_id) == []


def test_a_rename_by_the_user_wins_over_the_generated_title(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat_id = make_chat_with_messages(alice, db, 6)
    # The summary call takes a second; the user renames the chat meanwhile.
    model.script(
        match="message 3",
        method="generateContent",
        reply="A summary.",
        delay_per_chunk=0.5,
        times=2,
    )
    delivery: list[requests.Response] = []
    worker = threading.Thread(
        target=lambda: delivery.append(deliver(stack, {"chat_id": chat_id, "cut": 3}))
    )
    worker.start()
    time.sleep(0.3)
    assert alice.patch(f"/api/chats/{chat_id}", json={"title": "Mine"}).status_code == 200
    worker.join()
    assert delivery[0].status_code == 200
    row = db.fetch_one(
        "SELECT title, title_source FROM chats WHERE id = :id", id=uuid.UUID(chat_id)
    )
    assert row == {"title": "Mine", "title_source": "user"}
    assert len(summaries(db, chat_id)) == 1
