"""Honest endings: done says why the answer ended, cut answers are stored incomplete with their
reason, and a blocked answer ends with an error event coded ``blocked``."""

from __future__ import annotations

from typing import Any

import pytest

from dev.gemini_standin import StandinControl
from shared.model_events import finish_reason_of
from tests.conftest import ApiClient, dicts, stream_events, unique


def history(client: ApiClient, chat_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/chats/{chat_id}")
    assert response.status_code == 200
    return list(response.json())


def test_a_natural_end_is_stop_and_complete(alice: ApiClient, model: StandinControl) -> None:
    question = unique("natural")
    model.script(match=question, reply="All said.")
    events = dicts(stream_events(alice.send(question)))
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop"
    question_row, answer = history(alice, events[0]["chat_id"])
    assert question_row["finish_reason"] is None
    assert (answer["status"], answer["finish_reason"]) == ("complete", "stop")


def test_an_answer_cut_at_the_length_limit_is_kept_incomplete(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("long answer")
    model.script(match=question, reply="This goes on and on and", finish_reason="MAX_TOKENS")
    events = dicts(stream_events(alice.send(question)))
    done = events[-1]
    assert done["type"] == "done" and done["finish_reason"] == "max_tokens"
    answer = history(alice, events[0]["chat_id"])[-1]
    assert answer["messageId"] == done["message_id"]
    assert answer["content"] == "This goes on and on and"
    assert (answer["status"], answer["finish_reason"]) == ("incomplete", "max_tokens")


@pytest.mark.parametrize(
    ("api_reason", "reason", "says"),
    [("SAFETY", "safety", "safety"), ("RECITATION", "recitation", "repeated")],
)
def test_a_blocked_answer_ends_with_an_error_and_keeps_the_partial(
    alice: ApiClient, model: StandinControl, api_reason: str, reason: str, says: str
) -> None:
    question = unique(f"blocked {reason}")
    model.script(match=question, chunks=["Well, ", "the first "], finish_reason=api_reason)
    events = dicts(stream_events(alice.send(question)))
    error = events[-1]
    assert [e["type"] for e in events][-1] == "error" and "done" not in [e["type"] for e in events]
    assert error["code"] == "blocked" and says in error["detail"]
    assert "SAFETY" not in error["detail"] and "finish" not in error["detail"].lower()
    answer = history(alice, events[0]["chat_id"])[-1]
    assert error["message_id"] == answer["messageId"]
    assert answer["content"] == "Well, the first "
    assert (answer["status"], answer["finish_reason"]) == ("incomplete", reason)


def test_a_blocked_prompt_ends_with_an_error_and_stores_no_answer(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("blocked prompt")
    model.script(match=question, block_reason="PROHIBITED_CONTENT")
    events = dicts(stream_events(alice.send(question)))
    assert [e["type"] for e in events] == ["start", "error"]
    assert events[-1]["code"] == "blocked" and "message_id" not in events[-1]
    [only] = history(alice, events[0]["chat_id"])
    assert only["role"] == "user"  # the question stays; there is no answer to show


def test_other_endings_are_other_and_incomplete(alice: ApiClient, model: StandinControl) -> None:
    question = unique("language")
    model.script(match=question, reply="Je ne", finish_reason="LANGUAGE")
    events = dicts(stream_events(alice.send(question)))
    assert events[-1]["finish_reason"] == "other"
    answer = history(alice, events[0]["chat_id"])[-1]
    assert (answer["status"], answer["finish_reason"]) == ("incomplete", "other")


def test_a_failed_answer_has_no_finish_reason(alice: ApiClient, model: StandinControl) -> None:
    question = unique("cut")
    model.script(match=question, chunks=["one ", "two ", "three"], fail_after_chunks=2)
    events = dicts(stream_events(alice.send(question)))
    assert events[-1]["type"] == "error" and events[-1]["code"] != "blocked"
    answer = history(alice, events[0]["chat_id"])[-1]
    assert (answer["status"], answer["finish_reason"]) == ("incomplete", None)


def test_gemini_reasons_fold_into_five() -> None:
    assert finish_reason_of("STOP") == "stop"
    assert finish_reason_of("MAX_TOKENS") == "max_tokens"
    for api in ("SAFETY", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"):
        assert finish_reason_of(api) == "safety"
    assert finish_reason_of("RECITATION") == "recitation"
    for other in ("LANGUAGE", "OTHER", "MALFORMED_FUNCTION_CALL", None, "SOMETHING_NEW"):
        assert finish_reason_of(other) == "other"
