"""Resumable answers: a dropped stream loses nothing and any instance picks it up.

The stack's chat_stream (behind the router) starts the turns; a second chat_stream process,
started for this module, resumes, follows and stops them, so every cross-instance path goes
through PostgreSQL (stored progress, NOTIFY/LISTEN) exactly as between two Cloud Run
instances. The Gemini stand-in is deterministic: a scripted answer is the text a
never-interrupted stream yields.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack, free_port, function_command
from shared.db import Database
from tests.conftest import (
    ApiClient,
    assert_error,
    dicts,
    function_process,
    stream_events,
    unique,
    wait_for,
)

pytestmark = pytest.mark.slow

CHUNKS = [f"part {index:02d} of a long answer. " for index in range(24)]
WHOLE = "".join(CHUNKS)


@pytest.fixture(scope="module")
def second_instance(stack: LocalStack) -> Iterator[str]:
    """Another chat_stream process on the same database: another Cloud Run instance."""
    with function_process(stack, "chat_stream") as base:
        yield base


def on(client: ApiClient, base: str) -> ApiClient:
    """The same user, calling another instance directly."""
    return ApiClient(base, client.token, client.user_id)


def send_resumable(client: ApiClient, text: str, **kwargs: Any) -> requests.Response:
    body = {
        "chatId": None,
        "messages": [{"role": "user", "parts": [{"type": "text", "text": text}]}],
        "resumable": True,
    }
    return client.post("/chat", json=body, stream=True, **kwargs)


def read_ndjson(response: requests.Response, until: int) -> list[dict[str, Any]]:
    """The first events of an NDJSON stream, up to ``until`` chunks (heartbeats left out)."""
    events: list[dict[str, Any]] = []
    chunks = 0
    for line in response.iter_lines():
        if not line:
            continue
        event = json.loads(line)
        if event["type"] == "heartbeat":
            continue
        events.append(event)
        if event["type"] == "chunk":
            chunks += 1
            if chunks == until:
                break
    return events


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["content"] for event in events if event["type"] == "chunk")


def answer_path(chat_id: str, answer_id: str, action: str) -> str:
    return f"/api/chats/{chat_id}/messages/{answer_id}/{action}"


def stored_answer(db: Database, answer_id: str) -> dict[str, Any]:
    row = db.fetch_one(
        "SELECT content, status, finish_reason, error_code, streaming_until IS NULL AS ended "
        "FROM messages WHERE id = :id",
        id=uuid.UUID(answer_id),
    )
    assert row is not None
    return row


def check_ids(events: list[dict[str, Any]], start: int) -> None:
    """Every event's id is the answer's length once it is applied."""
    length = start
    for event in events:
        if event["type"] == "chunk":
            length += len(event["content"])
        assert event["event_id"] == length, (event, length)


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
def test_a_dropped_stream_resumes_on_another_instance_with_exactly_the_answer(
    alice: ApiClient,
    model: StandinControl,
    db: Database,
    second_instance: str,
    accept: str,
) -> None:
    question = unique("resume me")
    model.script(match=question, chunks=CHUNKS, delay_per_chunk=0.1)
    first = send_resumable(alice, question)
    assert first.status_code == 200
    seen = read_ndjson(first, until=3)
    first.close()  # the connection drops mid-answer
    start, *chunks = seen
    assert start["type"] == "start" and start["event_id"] == 0
    chat_id, answer_id = start["chat_id"], start["answer_id"]
    check_ids(chunks, 0)
    offset = chunks[-1]["event_id"]

    # Resume from another instance, as EventSource would (Last-Event-ID) or with ?after=.
    other = on(alice, second_instance)
    if accept == "text/event-stream":
        resumed = other.get(
            answer_path(chat_id, answer_id, "stream"),
            headers={"Accept": accept, "Last-Event-ID": str(offset)},
            stream=True,
        )
    else:
        resumed = other.get(
            answer_path(chat_id, answer_id, "stream"),
            params={"after": offset},
            headers={"Accept": accept},
            stream=True,
        )
    assert resumed.status_code == 200, resumed.text
    rest = dicts(stream_events(resumed))
    assert rest[-1]["type"] == "done" and rest[-1]["message_id"] == answer_id
    assert rest[-1]["finish_reason"] == "stop"
    check_ids(rest, offset)
    # No gap, no duplicate: the two halves are the never-interrupted answer.
    assert text_of(chunks) + text_of(rest) == WHOLE

    stored = stored_answer(db, answer_id)
    assert stored["content"] == WHOLE and stored["status"] == "complete" and stored["ended"]
    # The model was never cancelled: it ran to the end off the dropped request.
    assert wait_for(lambda: model.requests(match=question)[0]["outcome"] == "ok")


def test_resume_after_the_answer_has_ended(
    alice: ApiClient, model: StandinControl, second_instance: str
) -> None:
    question = unique("resume after")
    model.script(match=question, reply="A short complete answer.")
    events = dicts(stream_events(send_resumable(alice, question)))
    start, done = events[0], events[-1]
    assert done["type"] == "done" and done["event_id"] == len("A short complete answer.")
    path = answer_path(start["chat_id"], start["answer_id"], "stream")
    other = on(alice, second_instance)

    whole = dicts(stream_events(other.get(path, stream=True)))
    assert [(e["type"], e.get("content")) for e in whole] == [
        ("chunk", "A short complete answer."),
        ("done", None),
    ]
    assert whole[-1]["finish_reason"] == "stop" and whole[-1]["message_id"] == done["message_id"]
    # From the end: only the ending; past the end: refused before any stream.
    tail = dicts(stream_events(other.get(path, params={"after": done["event_id"]}, stream=True)))
    assert [e["type"] for e in tail] == ["done"]
    assert_error(other.get(path, params={"after": done["event_id"] + 1}), 422, "invalid_offset")
    assert_error(other.get(path, headers={"Last-Event-ID": "x"}), 422, "invalid_offset")
    # A question is not an answer to follow.
    question_path = answer_path(start["chat_id"], start["message_id"], "stream")
    assert_error(other.get(question_path), 404, "message_not_found")


def test_another_users_answer_is_not_found(
    alice: ApiClient, bob: ApiClient, model: StandinControl, second_instance: str
) -> None:
    question = unique("private")
    model.script(match=question, reply="Only for Alice.")
    start = dicts(stream_events(send_resumable(alice, question)))[0]
    for client in (bob, on(bob, second_instance)):
        for action, method in (("stream", "GET"), ("stop", "POST")):
            theirs = client.request(
                method, answer_path(start["chat_id"], start["answer_id"], action)
            )
            missing = client.request(
                method, answer_path(start["chat_id"], str(uuid.uuid4()), action)
            )
            assert assert_error(theirs, 404) == assert_error(missing, 404)
            assert_error(client.request(method, answer_path("x", "y", action)), 404)


@pytest.mark.parametrize("resumable", [True, False])
def test_stop_from_another_instance_keeps_the_answer(
    alice: ApiClient,
    model: StandinControl,
    db: Database,
    second_instance: str,
    resumable: bool,
) -> None:
    question = unique("stop me")
    model.script(match=question, chunks=CHUNKS * 3, delay_per_chunk=0.1)
    response = send_resumable(alice, question) if resumable else alice.send(question)
    lines = response.iter_lines()
    start = json.loads(next(lines))
    chat_id, answer_id = start["chat_id"], start["answer_id"]
    wait_for(lambda: json.loads(next(lines))["type"] == "chunk")

    stopped = on(alice, second_instance).post(answer_path(chat_id, answer_id, "stop"))
    assert stopped.status_code == 200, stopped.text
    assert stopped.json() == {"message_id": answer_id, "stopping": True}
    rest = [json.loads(line) for line in lines if line]
    rest = [event for event in rest if event["type"] != "heartbeat"]
    done = rest[-1]
    assert done["type"] == "done" and done["finish_reason"] == "stopped"
    assert done["message_id"] == answer_id

    stored = stored_answer(db, answer_id)
    assert stored["status"] == "incomplete" and stored["finish_reason"] == "stopped"
    assert stored["ended"] and (WHOLE * 3).startswith(stored["content"])
    assert len(stored["content"]) == done["event_id"] < len(WHOLE) * 3
    # The model call was cancelled, not read to its end.
    assert wait_for(lambda: model.requests(match=question)[0]["outcome"] == "client_gone")
    # A follower of the stopped answer gets what was kept and the same ending.
    followed = dicts(
        stream_events(alice.get(answer_path(chat_id, answer_id, "stream"), stream=True))
    )
    assert text_of(followed) == stored["content"]
    assert followed[-1] == {key: value for key, value in done.items() if key != "usage"}
    # Stopping again: it has ended already.
    again = alice.post(answer_path(chat_id, answer_id, "stop"))
    assert again.json() == {"message_id": answer_id, "stopping": False}


def test_a_follower_sees_the_answer_grow(
    alice: ApiClient, model: StandinControl, second_instance: str
) -> None:
    question = unique("follow live")
    model.script(match=question, chunks=CHUNKS, delay_per_chunk=0.1)
    lines = send_resumable(alice, question).iter_lines()
    start = json.loads(next(lines))
    path = answer_path(start["chat_id"], start["answer_id"], "stream")
    # A second client follows from the start while the first keeps reading.
    follower = on(alice, second_instance).get(path, stream=True)
    following: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: following.update(events=dicts(stream_events(follower)))
    )
    thread.start()
    rest = [json.loads(line) for line in lines if line]
    thread.join(timeout=60)
    followed = following["events"]
    # It saw the answer in several pieces as it was stored, not in one at the end.
    assert len([e for e in followed if e["type"] == "chunk"]) > 1
    assert text_of(followed) == text_of(rest) == WHOLE
    assert followed[-1]["type"] == rest[-1]["type"] == "done"


# --- SIGTERM ---------------------------------------------------------------------------------


@contextmanager
def own_instance(stack: LocalStack) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A chat_stream process this test may signal, with threads for 20 open streams."""
    port = free_port()
    assert stack.log_dir is not None
    log = (stack.log_dir / f"chat_stream-sigterm-{port}.log").open("ab")
    process = subprocess.Popen(
        function_command("chat_stream", port),
        env={**stack.env, "PORT": str(port), "THREADS": "48", "DB_POOL_SIZE": "8"},
        stdout=log,
        stderr=log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, "chat_stream exited during start"
            try:
                requests.get(base + "/", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "chat_stream did not start"
                time.sleep(0.1)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_sigterm_stores_every_partial_answer_and_ends_every_stream(
    stack: LocalStack, make_user: Any, model: StandinControl, db: Database
) -> None:
    label = unique("sigterm")
    streams = 20
    with own_instance(stack) as (base, process):
        received: list[dict[str, Any]] = [{} for _ in range(streams)]
        underway = threading.Barrier(streams + 1, timeout=60)

        def converse(index: int) -> None:
            client = on(make_user(), base)
            # Zero-padded: the stand-in matches scripts by substring, and "question 1" is in
            # "question 12" (a request could take another stream's script, and get the
            # stand-in's short default answer, done before the SIGTERM).
            question = f"{label} question {index:02d}"
            model.script(match=question, chunks=CHUNKS * 4, delay_per_chunk=0.25)
            resumable = index % 2 == 1
            response = send_resumable(client, question) if resumable else client.send(question)
            events: list[dict[str, Any]] = []
            waiting = True
            for line in response.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                if event["type"] != "heartbeat":
                    events.append(event)
                if waiting and event["type"] == "chunk":
                    waiting = False
                    underway.wait()
            received[index] = {"question": question, "events": events}

        threads = [threading.Thread(target=converse, args=(i,)) for i in range(streams)]
        for thread in threads:
            thread.start()
        underway.wait()  # every stream has text
        process.send_signal(signal.SIGTERM)
        # Cloud Run kills 10 s after SIGTERM: the process must be gone by then.
        process.wait(timeout=10)
        for thread in threads:
            thread.join(timeout=30)

    for entry in received:
        events = entry["events"]
        start, ending = events[0], events[-1]
        assert ending["type"] == "error", ending
        assert ending["code"] == "server_restarting" and ending["retryable"] is True
        # The question is stored, and so is every word the client received, marked incomplete.
        question = db.fetch_one(
            "SELECT content FROM messages WHERE id = :id", id=uuid.UUID(start["message_id"])
        )
        assert question is not None and question["content"] == entry["question"]
        stored = stored_answer(db, start["answer_id"])
        assert stored["content"] == text_of(events) and text_of(events)
        assert stored["status"] == "incomplete" and stored["ended"]
        assert stored["error_code"] == "server_restarting"
        assert ending["event_id"] == len(stored["content"])
