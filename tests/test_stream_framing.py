"""POST /chat's two framings of one event stream: SSE and NDJSON, chosen by Accept or setting.

The existing Raven frontend sends no ``Accept`` and reads NDJSON: it splits the body on
``\\n``, ``JSON.parse``s every non-empty line (skipping what does not parse), appends each
line's ``response`` and stops at a line with ``error``. :func:`frontend_reader` does exactly
that, so these tests hold the wire to what that reader needs.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.settings import load_settings
from shared.stream_framing import NDJSON_MEDIA_TYPE, SSE_MEDIA_TYPE, choose_framing
from tests.conftest import (
    HEARTBEAT,
    ApiClient,
    assert_error,
    function_process,
    stream_events,
    unique,
)


def frontend_reader(body: bytes) -> tuple[str, str | None]:
    """The existing frontend's stream reader: (the answer it shows, the error it stopped at)."""
    answer = ""
    for line in body.decode().split("\n"):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("response") is not None:
            answer += data["response"]
        if isinstance(data, dict) and data.get("error") is not None:
            return answer, data["error"]
    return answer, None


def history(client: ApiClient, chat_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/api/chats/{chat_id}")
    assert response.status_code == 200, response.text
    return list(response.json())


# --- choosing the framing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "default", "expected"),
    [
        (None, "ndjson", NDJSON_MEDIA_TYPE),
        (None, "sse", SSE_MEDIA_TYPE),
        ("", "ndjson", NDJSON_MEDIA_TYPE),
        ("*/*", "ndjson", NDJSON_MEDIA_TYPE),
        ("*/*", "sse", SSE_MEDIA_TYPE),
        ("application/json, text/plain, */*", "ndjson", NDJSON_MEDIA_TYPE),
        ("text/event-stream", "ndjson", SSE_MEDIA_TYPE),
        ("Text/Event-Stream", "ndjson", SSE_MEDIA_TYPE),
        ("application/x-ndjson", "sse", NDJSON_MEDIA_TYPE),
        ("text/event-stream, application/x-ndjson;q=0.5", "ndjson", SSE_MEDIA_TYPE),
        ("text/event-stream;q=0.4, application/x-ndjson", "sse", NDJSON_MEDIA_TYPE),
        ("text/event-stream;q=0", "ndjson", NDJSON_MEDIA_TYPE),
        ("text/*", "ndjson", NDJSON_MEDIA_TYPE),
    ],
)
def test_accept_chooses_the_framing_else_the_setting(
    accept: str | None, default: Any, expected: str
) -> None:
    assert choose_framing(accept, default).media_type == expected


def test_the_setting_defaults_to_sse_and_refuses_other_values() -> None:
    base = {"DATABASE_URL": "postgresql://postgres@/postgres?host=/tmp/pg"}
    assert load_settings(base).chat_stream_format == "sse"
    assert load_settings({**base, "CHAT_STREAM_FORMAT": "ndjson"}).chat_stream_format == "ndjson"
    with pytest.raises(Exception, match="CHAT_STREAM_FORMAT"):
        load_settings({**base, "CHAT_STREAM_FORMAT": "websocket"})


# --- NDJSON, as the existing frontend reads it ---------------------------------------------------


def test_frontend_without_accept_gets_ndjson_it_can_read(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("ndjson")
    model.script(match=question, chunks=["Hello", " there", ", friend."], delay_per_chunk=0.05)
    response = alice.send(question)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == NDJSON_MEDIA_TYPE
    assert "Accept" in response.headers["Vary"]
    body = response.content

    lines = [json.loads(line) for line in body.decode().split("\n") if line]
    assert body.endswith(b"\n")
    start, *chunks, done = lines
    assert start["type"] == "start" and start["message_id"]
    assert all(c["type"] == "chunk" and c["response"] == c["content"] for c in chunks)
    assert done["type"] == "done" and done["usage"]["output_tokens"] > 0
    answer, error = frontend_reader(body)
    assert error is None
    stored = history(alice, start["chat_id"])
    assert [m["content"] for m in stored] == [question, "Hello there, friend."]
    assert answer == stored[1]["content"]
    assert stored[1]["messageId"] == done["message_id"]


def test_text_with_newlines_and_any_script_stays_one_line_per_event(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("newlines")
    tricky = ["line one\nline two\r\n", 'naïve 日本語 🐦 \u2028 \\ " ', "{not json}\n\n"]
    model.script(match=question, chunks=tricky, delay_per_chunk=0.05)
    response = alice.send(question)
    answer, error = frontend_reader(response.content)
    assert error is None
    assert answer == "".join(tricky)


def test_a_failure_mid_stream_stops_the_reader_and_keeps_the_partial_answer(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("fails midway")
    model.script(match=question, chunks=["Part one. ", "Part two. ", "never"], fail_after_chunks=2)
    response = alice.send(question)
    body = response.content
    answer, error = frontend_reader(body)
    assert answer == "Part one. Part two. "
    events = [json.loads(line) for line in body.decode().split("\n") if line]
    last = events[-1]
    assert last["type"] == "error" and last["error"] == last["detail"] == error
    assert last["code"] == "model_unavailable"
    stored = history(alice, events[0]["chat_id"])
    assert stored[0]["content"] == question
    assert stored[1]["content"] == answer and stored[1]["status"] == "incomplete"
    assert last["message_id"] == stored[1]["messageId"]


def test_a_model_refusal_before_any_text_is_an_error_line(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("busy")
    # Busy for longer than the retry budget (GEMINI_RETRY_BUDGET_SECONDS).
    model.script(match=question, http_error={"status": 429, "message": "quota"}, times=100)
    answer, error = frontend_reader(alice.send(question).content)
    assert answer == ""
    assert error is not None and "busy" in error


def test_ndjson_heartbeats_are_json_lines_the_reader_ignores(
    stack: LocalStack, model: StandinControl
) -> None:
    question = unique("slow model")
    model.script(match=question, chunks=["late ", "answer"], hang=1.2)
    with function_process(stack, "chat_stream", SSE_HEARTBEAT_SECONDS="0.3") as base:
        client = ApiClient(base, stack.signer.token("user_hb_" + uuid.uuid4().hex[:6]))
        body = client.send(question).content
    lines = [line for line in body.decode().split("\n") if line]
    heartbeats = [line for line in lines if json.loads(line) == {"type": "heartbeat"}]
    assert heartbeats, lines
    assert frontend_reader(body) == ("late answer", None)


# --- SSE, for clients that ask for it -----------------------------------------------------------


def test_a_client_asking_for_sse_gets_the_same_events_as_sse(
    alice: ApiClient, model: StandinControl
) -> None:
    question = unique("sse")
    model.script(match=question, chunks=["Hello", " there"], delay_per_chunk=0.05)
    response = alice.send(question, headers={"Accept": "text/event-stream"})
    assert response.headers["Content-Type"].startswith(SSE_MEDIA_TYPE)
    body = response.content.decode()
    assert '"response"' not in body  # the NDJSON-only field stays out of SSE
    blocks = [block for block in body.split("\n\n") if block]
    # Each event: its id (the answer's length once applied, for Last-Event-ID), its data.
    ids, data = zip(*(block.split("\n") for block in blocks), strict=True)
    assert all(line.startswith("data: ") for line in data)
    events = [json.loads(line[len("data: ") :]) for line in data]
    assert [e["type"] for e in events] == ["start", "chunk", "chunk", "done"]
    assert "".join(e["content"] for e in events[1:3]) == "Hello there"
    assert list(ids) == ["id: 0", "id: 5", "id: 11", "id: 11"]
    assert [e["event_id"] for e in events] == [0, 5, 11, 11]
    stored = history(alice, events[0]["chat_id"])
    assert stored[1]["content"] == "Hello there"


def test_sse_errors_and_heartbeats(stack: LocalStack, model: StandinControl) -> None:
    question = unique("sse hang")
    model.script(match=question, hang=5)
    with function_process(
        stack, "chat_stream", MODEL_TIMEOUT_SECONDS="1", SSE_HEARTBEAT_SECONDS="0.3"
    ) as base:
        client = ApiClient(base, stack.signer.token("user_sse_" + uuid.uuid4().hex[:6]))
        response = client.send(question, headers={"Accept": "text/event-stream"})
        raw = response.content.decode()
    assert ": keep-alive\n\n" in raw
    assert '"error"' not in raw.replace('"type":"error"', "")  # no NDJSON-only field
    events = stream_events_from_text(raw)
    assert events[-1]["type"] == "error" and events[-1]["code"] == "model_unavailable"


def stream_events_from_text(raw: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :]) for line in raw.split("\n") if line.startswith("data")
    ]


def test_an_sse_default_deployment_serves_sse_without_accept(
    stack: LocalStack, model: StandinControl
) -> None:
    question = unique("sse default")
    model.script(match=question, reply="ok")
    with function_process(stack, "chat_stream", CHAT_STREAM_FORMAT="sse") as base:
        client = ApiClient(base, stack.signer.token("user_sd_" + uuid.uuid4().hex[:6]))
        response = client.send(question)
        assert response.headers["Content-Type"].startswith(SSE_MEDIA_TYPE)
        events = stream_events(response)
        assert [e["type"] for e in events] == ["start", "chunk", "done"]
        explicit = client.send(unique("asks ndjson"), headers={"Accept": NDJSON_MEDIA_TYPE})
        assert explicit.headers["Content-Type"] == NDJSON_MEDIA_TYPE
        assert [e["type"] for e in stream_events(explicit)][-1] == "done"


@pytest.mark.parametrize("accept", [None, SSE_MEDIA_TYPE, NDJSON_MEDIA_TYPE])
def test_refusals_before_the_stream_are_json_in_every_framing(
    alice: ApiClient, accept: str | None
) -> None:
    headers = {"Accept": accept} if accept else {}
    response = alice.send("hello", str(uuid.uuid4()), headers=headers)
    assert_error(response, 404, "chat_not_found")
    assert HEARTBEAT not in response.text


def test_the_router_passes_ndjson_through_unbuffered(
    stack: LocalStack, alice: ApiClient, model: StandinControl
) -> None:
    question = unique("incremental")
    model.script(match=question, chunks=["a", "b", "c"], delay_per_chunk=0.5)
    response = requests.post(
        stack.base_url + "/chat",
        json={"chatId": None, "messages": [{"role": "user", "parts": [{"text": question}]}]},
        headers={"Authorization": f"Bearer {alice.token}"},
        stream=True,
        timeout=30,
    )
    seen: list[str] = []
    for line in response.iter_lines():
        if line:
            seen.append(json.loads(line)["type"])
        if seen == ["start", "chunk"]:
            # The first chunk is readable while the model is still producing the rest.
            assert not model.requests(match=question)[0].get("settled_at")
    assert seen == ["start", "chunk", "chunk", "chunk", "done"]


# Texts a model may send that JSON must escape, or must not: quotes, backslashes, every
# control character, line and paragraph separators, any script, emoji, a NUL.
TRICKY_TEXTS = [
    "",
    "plain",
    'say "hi" \\ and \\"',
    "\n\r\t\b\f",
    "".join(chr(code) for code in range(32)) + "\x7f",
    "\u2028\u2029 <script>alert(1)</script> </",
    "héllo wörld ✓ 日本語 עברית 🦜👩‍👩‍👧",
    "\x00 null inside",
    '{"type":"error","error":"x"}\n{"response":"y"}',
]


@pytest.mark.parametrize("event_id", [None, 0, 1234567])
@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_the_hand_written_chunk_is_the_models_serialisation(
    text: str, event_id: int | None
) -> None:
    """The chunk fast path writes exactly what the models would, byte for byte, with or
    without the event id (resumable offsets)."""
    from shared.stream_events import ChunkEvent, NdjsonChunkEvent
    from shared.stream_framing import NDJSON, SSE

    sse_event = ChunkEvent(content=text, event_id=event_id).model_dump_json(exclude_none=True)
    sse_line = (
        f"data: {sse_event}\n\n" if event_id is None else f"id: {event_id}\ndata: {sse_event}\n\n"
    )
    ndjson_line = (
        NdjsonChunkEvent(content=text, response=text, event_id=event_id).model_dump_json(
            exclude_none=True
        )
        + "\n"
    )
    assert SSE.chunk(text, event_id) == sse_line
    assert NDJSON.chunk(text, event_id) == ndjson_line
    # And the generic path, which builds the model, agrees.
    assert SSE.encode(ChunkEvent(content=text, event_id=event_id)) == sse_line
    assert NDJSON.encode(ChunkEvent(content=text, event_id=event_id)) == ndjson_line


def test_a_lone_surrogate_cannot_go_on_the_wire_either_way() -> None:
    """No UTF-8 form: the model refuses to serialise it and the hand-written line cannot be
    encoded, so both paths fail alike (the stream breaks rather than sending invalid UTF-8)."""
    from pydantic_core import PydanticSerializationError

    from shared.stream_events import NdjsonChunkEvent
    from shared.stream_framing import NDJSON

    with pytest.raises(PydanticSerializationError):
        NdjsonChunkEvent(content="\ud800", response="\ud800").model_dump_json()
    with pytest.raises(UnicodeEncodeError):
        NDJSON.chunk("\ud800").encode()
