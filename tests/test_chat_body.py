"""The ``POST /chat`` body: read in one pass (shared.turn_request.parse_body), refused alike.

The frontend sends its copy of the whole chat with every message. Only the last message is
new; the earlier ones are checked against the schema but never built into models, so a long
chat's body costs a fraction of what the general reader (shared.web.parse_json) spends on it.
Both readers must accept the same bodies and refuse the others with the same errors: the
table below runs each body through both.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Request
from pydantic import BaseModel, model_validator
from werkzeug.test import EnvironBuilder

from dev.gemini_standin import StandinControl
from shared.db import Database
from shared.errors import ApiError
from shared.schemas import ChatRequest
from shared.text import UNSTORABLE_TEXT
from shared.turn_request import parse_body
from shared.web import MAX_JSON_DEPTH, one_pass_validator, parse_json
from tests.conftest import ApiClient, assert_error, stream_events, unique


def message(text: str, role: str = "user") -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "text": text}]}


def body(*messages: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"chatId": None, **fields, "messages": list(messages)}).encode()


def with_texts(*literals: str) -> bytes:
    """A body of user messages whose texts are the JSON string literals given, as written."""
    listed = ", ".join(f'{{"role": "user", "parts": [{{"text": {text}}}]}}' for text in literals)
    return f'{{"messages": [{listed}]}}'.encode()


def nested(depth: int, opening: str, closing: str, inner: str = "") -> bytes:
    """A body whose unknown field ``x`` nests ``depth`` levels deep, counting the body."""
    value = opening * (depth - 1) + inner + closing * (depth - 1)
    return f'{{"x": {value}, "messages": []}}'.encode()


BODIES: dict[str, bytes] = {
    "one message": body(message("hi")),
    "the frontend's history": body(
        message("a"), message("b", "assistant"), message("c"), chatId="c1", user_id="user_1"
    ),
    "regenerate without messages": b'{"regenerate": true, "chatId": "c1"}',
    "empty": b"",
    "blank": b"  \n",
    "null": b"null",
    "an array": b"[]",
    "a number": b"5",
    "a UTF-8 BOM": b"\xef\xbb\xbf" + body(message("hi")),
    "UTF-16": json.dumps({"messages": [message("hi")]}).encode("utf-16"),
    "invalid UTF-8 in an earlier message": (
        b'{"messages": [{"role": "user", "parts": [{"text": "\xff"}]}, '
        b'{"role": "user", "parts": [{"text": "ok"}]}]}'
    ),
    "NUL in an earlier message": with_texts('"a\\u0000"', '"ok"'),
    "a lone surrogate in an earlier message": with_texts('"a\\ud800"', '"ok"'),
    "NUL in the new message": with_texts('"a"', '"o\\u0000k"'),
    "a lone surrogate in the new message": with_texts('"a"', '"o\\ud800k"'),
    "NUL in chatId": b'{"chatId": "\\u0000", "messages": []}',
    "a duplicate key": b'{"messages": [], "messages": [{"role": "user", "parts": [{"text": "a"}]}]}',  # noqa: E501
    "NaN in an unknown field": b'{"x": NaN, "messages": []}',
    "an unknown field in a message": (
        b'{"messages": [{"role": "user", "id": "m1", "parts": [{"text": "a", "extra": [1]}]}]}'
    ),
    "trailing data": b'{"messages": []} x',
    "a raw control character": b'{"messages": [{"role": "user", "parts": [{"text": "a\x01"}]}]}',
    "a wrong role in an earlier message": body(message("a", "system"), message("c")),
    "a part without text in an earlier message": (
        b'{"messages": [{"role": "user", "parts": [{"type": "text"}]}, '
        b'{"role": "user", "parts": [{"text": "ok"}]}]}'
    ),
    "a message without parts": b'{"messages": [{"role": "user", "parts": []}]}',
    "a boolean as text": b'{"regenerate": "true"}',
    "a part type too long": body({"role": "user", "parts": [{"text": "a", "type": "x" * 33}]}),
    "an integer too long to read": b'{"x": 1' + b"0" * 5000 + b', "messages": []}',
    "a float too large": b'{"x": 1e400, "messages": []}',
    **{
        f"an unknown field nested {depth} deep ({kind})": nested(depth, *brackets)
        for depth in (MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 200, 201, 5_000)
        for kind, brackets in {"arrays": ("[", "]"), "objects": ('{"a": ', "}", "1")}.items()
    },
}


def json_request(raw: bytes) -> Request:
    environ = EnvironBuilder(method="POST", data=raw, content_type="application/json")
    return Request(environ.get_environ())


def outcome(read: Any, raw: bytes) -> tuple[Any, ...]:
    """What a reader makes of a body: the request as the turn sees it, or the error."""
    request = json_request(raw)
    try:
        read_body = read(request)
    except ApiError as error:
        return ("refused", error.status, error.code, error.detail)
    return ("read", read_body.model_copy(update={"messages": read_body.messages[-1:]}))


@pytest.mark.parametrize("raw", BODIES.values(), ids=BODIES.keys())
def test_the_one_pass_reads_every_body_as_parse_json_does(raw: bytes) -> None:
    assert outcome(parse_body, raw) == outcome(lambda r: parse_json(r, ChatRequest), raw)


def test_the_one_pass_keeps_only_the_new_message() -> None:
    raw = body(message("first"), message("an answer", "assistant"), message("new"))
    request = json_request(raw)
    assert parse_body(request).messages[0].parts[0].text == "new"
    assert len(parse_body(request).messages) == 1


def test_a_model_with_its_own_validator_cannot_be_read_in_one_pass() -> None:
    class Checked(BaseModel):
        name: str

        @model_validator(mode="after")
        def named(self) -> Checked:
            return self

    with pytest.raises(TypeError, match="validator"):
        one_pass_validator(Checked)


# --- over HTTP, as the frontend sends it --------------------------------------------------------


def test_a_long_chats_whole_history_is_read_and_only_the_new_message_stored(
    alice: ApiClient, model: StandinControl, db: Database
) -> None:
    question = unique("after a long chat")
    model.script(match=question, reply="still here")
    copy = [message(f"turn {i}", "user" if i % 2 == 0 else "assistant") for i in range(2_000)]
    events = stream_events(alice.send(question, history=copy))
    assert events[-1]["type"] == "done", events[-1]
    chat_id = events[0]["chat_id"]
    stored = db.fetch_all(
        "SELECT role, content FROM messages WHERE chat_id = :id ORDER BY position",
        id=uuid.UUID(chat_id),
    )
    assert [(row["role"], row["content"]) for row in stored] == [
        ("user", question),
        ("assistant", "still here"),
    ]


def test_unstorable_text_in_the_clients_copy_is_ignored_with_it(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("after NUL")
    model.script(match=question, reply="fine")
    copy = [message("a\u0000b"), message("\ud800", "assistant")]  # sent as JSON escapes
    events = stream_events(alice.send(question, history=copy))
    assert events[-1]["type"] == "done", events[-1]


def test_unstorable_text_in_the_new_message_is_422_at_its_index(alice: ApiClient) -> None:
    raw = with_texts('"earlier"', '"x\\u0000"')
    response = alice.post("/chat", data=raw, headers={"Content-Type": "application/json"})
    body_ = assert_error(response, 422, "invalid_text")
    assert body_["detail"] == f"messages.1.parts.0.text: {UNSTORABLE_TEXT}"
    assert alice.get("/api/chats").json() == []


@pytest.mark.parametrize("path", ["/chat", "/api/chats/create"])
def test_a_number_too_long_to_read_is_400_not_500(alice: ApiClient, path: str) -> None:
    raw = b'{"title": "t", "x": 1' + b"0" * 5000 + b', "messages": []}'
    response = alice.post(path, data=raw, headers={"Content-Type": "application/json"})
    body_ = assert_error(response, 400, "invalid_json")
    assert "number" in body_["detail"]
