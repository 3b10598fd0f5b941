"""Retries and fallback before the first token: the stand-in fails N times, then answers."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.db import Database
from shared.gemini import BACKOFF_CAP_SECONDS, backoff_seconds
from tests.conftest import ApiClient, function_process, stream_events, unique

FALLBACK = "gemini-fallback-test"


@pytest.fixture(scope="module")
def with_fallback(stack: LocalStack) -> Iterator[ApiClient]:
    """chat_stream with no retry budget (one try) and a fallback model."""
    with function_process(
        stack, "chat_stream", GEMINI_RETRY_BUDGET_SECONDS="0", GEMINI_FALLBACK_MODEL=FALLBACK
    ) as base:
        yield ApiClient(base, stack.signer.token("user_fallback_" + uuid.uuid4().hex[:8]))


def turn_event(stack: LocalStack, chat_id: str) -> dict[str, Any]:
    """The chat_turn log line of a chat's turn, from any chat_stream instance's log."""
    assert stack.log_dir is not None
    deadline = time.monotonic() + 10
    while True:
        for path in stack.log_dir.glob("chat_stream*.log"):
            for line in path.read_text().splitlines():
                if chat_id in line and '"chat_turn"' in line:
                    return dict(json.loads(line))
        assert time.monotonic() < deadline, "no chat_turn line for the chat"
        time.sleep(0.1)


def streamed(model: StandinControl, question: str) -> list[dict[str, Any]]:
    """The turn's own model requests (a new chat's title request, made before its response
    ends, names the question too)."""
    return [r for r in model.requests(match=question) if r["method"] == "streamGenerateContent"]


def answers(db: Database, chat_id: str) -> list[dict[str, Any]]:
    return db.fetch_all(
        "SELECT content, status, model FROM messages WHERE chat_id = :id AND role = 'assistant'",
        id=uuid.UUID(chat_id),
    )


@pytest.mark.parametrize("status", [503, 429, 500])
def test_a_busy_or_unavailable_model_is_retried_until_it_answers(
    stack: LocalStack, alice: ApiClient, db: Database, model: StandinControl, status: int
) -> None:
    question = unique(f"flaky {status}")
    model.script(match=question, http_error={"status": status}, times=2)
    model.script(match=question, reply="Third time lucky.")
    events = stream_events(alice.send(question))
    start, *chunks, done = [e for e in events if isinstance(e, dict)]
    assert start["type"] == "start" and done["type"] == "done"
    assert "".join(chunk["content"] for chunk in chunks) == "Third time lucky."
    outcomes = [r["outcome"] for r in streamed(model, question)]
    assert outcomes == ["http_error", "http_error", "ok"]
    assert answers(db, events[0]["chat_id"]) == [
        {"content": "Third time lucky.", "status": "complete", "model": "gemini-2.5-flash"}
    ]
    logged = turn_event(stack, events[0]["chat_id"])
    assert (logged["outcome"], logged["retries"], logged["model"]) == ("ok", 2, "gemini-2.5-flash")


def test_a_refusal_is_not_retried(alice: ApiClient, model: StandinControl) -> None:
    question = unique("refused")
    model.script(match=question, http_error={"status": 400, "message": "bad request"}, times=5)
    events = stream_events(alice.send(question))
    assert events[-1]["type"] == "error"
    assert len(streamed(model, question)) == 1


def test_never_retried_after_the_first_chunk(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    question = unique("mid-stream")
    model.script(
        match=question,
        chunks=["Half ", "an ", "answer"],
        stream_error={"after_chunks": 1, "status": 503},
    )
    events = stream_events(alice.send(question))
    assert [e["type"] for e in events if isinstance(e, dict)] == ["start", "chunk", "error"]
    assert len(streamed(model, question)) == 1  # the user saw "Half ": no second answer
    assert answers(db, events[0]["chat_id"])[0]["status"] == "incomplete"


def test_after_the_budget_the_fallback_model_answers(
    stack: LocalStack, with_fallback: ApiClient, db: Database, model: StandinControl
) -> None:
    question = unique("fallback")
    model.script(match=question, http_error={"status": 503}, times=1)
    events = stream_events(with_fallback.send(question))
    assert events[-1]["type"] == "done"
    records = streamed(model, question)
    assert [(r["model"], r["outcome"]) for r in records] == [
        ("gemini-2.5-flash", "http_error"),
        (FALLBACK, "ok"),
    ]
    assert answers(db, events[0]["chat_id"])[0]["model"] == FALLBACK
    logged = turn_event(stack, events[0]["chat_id"])
    assert (logged["outcome"], logged["retries"], logged["model"]) == ("ok", 1, FALLBACK)


def test_when_the_fallback_fails_too_the_turn_ends_with_an_error(
    stack: LocalStack, with_fallback: ApiClient, model: StandinControl
) -> None:
    question = unique("both down")
    model.script(match=question, http_error={"status": 503}, times=5)
    events = stream_events(with_fallback.send(question))
    assert events[-1]["type"] == "error" and "unavailable" in events[-1]["detail"]
    assert [r["model"] for r in streamed(model, question)] == ["gemini-2.5-flash", FALLBACK]
    logged = turn_event(stack, events[0]["chat_id"])
    assert (logged["outcome"], logged["retries"]) == ("model_error:unavailable", 1)


def test_backoff_is_jittered_doubling_and_capped() -> None:
    for attempt in range(1, 10):
        ceiling = min(BACKOFF_CAP_SECONDS, 0.25 * 2 ** (attempt - 1))
        waits = {backoff_seconds(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(waits) > 1  # jittered, not one fixed value
