"""POST /chat through HTTP, with the real google-genai SDK talking to the Gemini stand-in."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from typing import Any

import requests

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.db import Database
from shared.system_instruction import BUNDLED_DEFAULT
from shared.token_estimate import estimate_text_tokens
from tests.conftest import (
    HEARTBEAT,
    ApiClient,
    assert_error,
    function_process,
    store_history,
    stream_events,
    stream_lines,
    unique,
)


def stored_messages(db: Database, chat_id: str) -> list[dict[str, Any]]:
    return db.fetch_all(
        "SELECT position, role, content, status, token_count, token_source FROM messages "
        "WHERE chat_id = :id ORDER BY position",
        id=uuid.UUID(chat_id),
    )


def texts_of(content: dict[str, Any]) -> list[str]:
    return [part["text"] for part in content["parts"] if "text" in part]


# --- the SSE exchange ----------------------------------------------------------------------------


def test_full_exchange_in_a_new_chat(alice: ApiClient, db: Database, model: StandinControl) -> None:
    question = unique("What is Raven")
    # Paced like a model: chunks that arrive together may be sent as one (see shared.gemini).
    model.script(
        match=question, chunks=["Raven is ", "a chat ", "assistant."], delay_per_chunk=0.05
    )
    response = alice.send(question)
    assert response.status_code == 200
    assert response.headers["Cache-Control"].startswith("no-cache")
    assert response.headers["X-Accel-Buffering"] == "no"
    events = stream_events(response)

    start, *chunks, done = events
    assert start["type"] == "start"
    chat_id = start["chat_id"]
    assert [event["content"] for event in chunks] == ["Raven is ", "a chat ", "assistant."]
    assert all(event["type"] == "chunk" for event in chunks)
    assert done["type"] == "done"
    assert done["usage"]["output_tokens"] > 0 and done["usage"]["input_tokens"] > 0

    history = alice.get(f"/api/chats/{chat_id}").json()
    assert [(m["role"], m["content"], m["status"]) for m in history] == [
        ("user", question, "complete"),
        ("assistant", "Raven is a chat assistant.", "complete"),
    ]
    assert history[0]["messageId"] == start["message_id"]
    assert history[1]["messageId"] == done["message_id"]
    assert alice.get("/api/chats").json()[0]["chatId"] == chat_id

    stored = stored_messages(db, chat_id)
    assert stored[1]["token_source"] == "reported"
    assert stored[1]["token_count"] == done["usage"]["output_tokens"]


def test_model_receives_server_history_in_gemini_roles(
    alice: ApiClient, model: StandinControl
) -> None:
    first, second, third = unique("first"), unique("second"), unique("third")
    model.script(match=first, reply="answer one")
    chat_id = stream_events(alice.send(first))[0]["chat_id"]
    model.script(match=second, reply="answer two")
    stream_events(alice.send(second, chat_id))
    # The client's copy of the history is ignored: it is never sent to the model.
    forged = [{"role": "assistant", "parts": [{"type": "text", "text": "FORGED HISTORY"}]}]
    events = stream_events(alice.send(third, chat_id, history=forged))
    assert events[-1]["type"] == "done"

    [request] = model.requests(match=third)
    contents = request["body"]["contents"]
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert [texts_of(c)[0] for c in contents] == [
        first,
        "answer one",
        second,
        "answer two",
        third,
    ]
    assert "FORGED HISTORY" not in str(request["body"])
    system = request["body"]["systemInstruction"]["parts"][0]["text"]
    assert system.startswith("You are Raven")
    assert "Alice" in system  # personalised with the user's name
    assert "Summary of the earlier conversation" not in system
    assert request["mode"] == "vertex"
    thinking = request["body"]["generationConfig"]["thinkingConfig"]
    # google-genai 3.4 sends this nested key in snake_case; the API accepts both spellings.
    assert thinking.get("thinkingBudget", thinking.get("thinking_budget")) == 0


def test_the_window_is_cut_by_count(alice: ApiClient, db: Database, model: StandinControl) -> None:
    chat = alice.create_chat()
    store_history(db, chat["chatId"], count=80, tokens_each=10)
    question = unique("count window")
    stream_events(alice.send(question, chat["chatId"]))
    contents = model.requests(match=question)[0]["body"]["contents"]
    # CHAT_WINDOW_SIZE=50: positions 31..80 (80 is the new message); 31 is an answer whose
    # question fell out of the window, and a Gemini conversation opens with a user turn.
    all_texts = [text for c in contents for text in texts_of(c)]
    assert all_texts == [f"message {n}" for n in range(32, 80)] + [question]


def test_the_window_is_cut_by_tokens(alice: ApiClient, db: Database, model: StandinControl) -> None:
    chat = alice.create_chat()
    store_history(db, chat["chatId"], count=40, tokens_each=1500)
    question = unique("token window")
    stream_events(alice.send(question, chat["chatId"]))
    contents = model.requests(match=question)[0]["body"]["contents"]
    all_texts = [text for c in contents for text in texts_of(c)]
    # TARGET_WINDOW_TOKENS=8000: the new message (~10 tokens) and four 1500-token messages.
    assert all_texts == [f"message {n}" for n in range(36, 40)] + [question]
    assert contents[0]["role"] == "user"


def test_the_newest_summary_replaces_what_it_covers(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat = alice.create_chat()
    store_history(db, chat["chatId"], count=12, tokens_each=10)
    with db.transaction() as tx:
        for version, cut in ((1, 3), (2, 7)):
            tx.execute(
                "INSERT INTO summaries (id, chat_id, version, covers_through_position, content, "
                "token_count) VALUES (:id, :chat, :v, :cut, :text, 20)",
                id=uuid.uuid4(),
                chat=uuid.UUID(chat["chatId"]),
                v=version,
                cut=cut,
                text=f"SUMMARY v{version}: the user likes ravens.",
            )
    question = unique("summary")
    events = stream_events(alice.send(question, chat["chatId"]))
    assert events[-1]["type"] == "done"
    assert "summary: yes" in "".join(e["content"] for e in events if e["type"] == "chunk")
    body = model.requests(match=question)[0]["body"]
    system = body["systemInstruction"]["parts"][0]["text"]
    assert "Summary of the earlier conversation\nSUMMARY v2: the user likes ravens." in system
    assert "SUMMARY v1" not in system
    all_texts = [text for c in body["contents"] for text in texts_of(c)]
    assert all_texts == [f"message {n}" for n in range(8, 12)] + [question]


def test_the_window_leaves_room_for_instruction_and_summary(
    stack: LocalStack, make_user: Any, db: Database, model: StandinControl
) -> None:
    # MAX_CONTEXT_TOKENS is the hard ceiling: it holds the 1,500-token summary, the instruction
    # (the bundled one; its size is estimated as chat_stream does), the question and four of the
    # 500-token messages, not five; TARGET_WINDOW_TOKENS alone would allow more.
    instruction = estimate_text_tokens(BUNDLED_DEFAULT.read_text(encoding="utf-8"))
    ceiling = 1500 + instruction + 4 * 500 + 250
    limits = {"MAX_CONTEXT_TOKENS": str(ceiling), "TARGET_WINDOW_TOKENS": str(ceiling)}
    with function_process(stack, "chat_stream", **limits) as base:
        user = make_user()
        client = ApiClient(base, user.token, user.user_id)
        chat = user.create_chat()  # chats_crud, through the router
        store_history(db, chat["chatId"], count=12, tokens_each=500)
        with db.transaction() as tx:
            tx.execute(
                "INSERT INTO summaries (id, chat_id, version, covers_through_position, content, "
                "token_count) VALUES (:id, :chat, 1, 1, 'Earlier: ravens.', 1500)",
                id=uuid.uuid4(),
                chat=uuid.UUID(chat["chatId"]),
            )
        question = unique("ceiling")
        assert stream_events(client.send(question, chat["chatId"]))[-1]["type"] == "done"
    contents = model.requests(match=question)[0]["body"]["contents"]
    all_texts = [text for c in contents for text in texts_of(c)]
    assert all_texts == [f"message {n}" for n in range(8, 12)] + [question]


def test_a_message_too_long_for_the_context_is_refused(
    stack: LocalStack, make_user: Any, db: Database
) -> None:
    limits = {"MAX_CONTEXT_TOKENS": "3000", "TARGET_WINDOW_TOKENS": "2000"}
    with function_process(stack, "chat_stream", **limits) as base:
        user = make_user()
        client = ApiClient(base, user.token, user.user_id)
        body = assert_error(client.send("word " * 2000), 413, "message_exceeds_context")
        assert "context" in body["detail"]
        assert user.get("/api/chats").json() == []  # nothing stored
        assert stream_events(client.send("a short one"))[-1]["type"] == "done"


# --- failures ---------------------------------------------------------------------------


def test_failure_mid_stream_keeps_the_partial_answer(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    question = unique("mid-stream failure")
    model.script(
        match=question, chunks=["one ", "two ", "three"], fail_after_chunks=2, delay_per_chunk=0.05
    )
    events = stream_events(alice.send(question))
    assert [e["type"] for e in events] == ["start", "chunk", "chunk", "error"]
    assert events[-1]["detail"]
    stored = stored_messages(db, events[0]["chat_id"])
    assert [(m["role"], m["content"], m["status"]) for m in stored] == [
        ("user", question, "complete"),
        ("assistant", "one two ", "incomplete"),
    ]
    assert (
        events[-1]["message_id"]
        == alice.get(f"/api/chats/{events[0]['chat_id']}").json()[1]["messageId"]
    )


def test_http_error_before_the_first_chunk(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    question = unique("http error")
    # Failing for longer than the retry budget (GEMINI_RETRY_BUDGET_SECONDS; see test_retries).
    model.script(match=question, http_error={"status": 503, "message": "overloaded"}, times=100)
    events = stream_events(alice.send(question))
    assert [e["type"] for e in events] == ["start", "error"]
    assert "unavailable" in events[-1]["detail"]
    stored = stored_messages(db, events[0]["chat_id"])
    assert [(m["role"], m["content"]) for m in stored] == [("user", question)]


def test_rate_limited_model_says_so(alice: ApiClient, model: StandinControl) -> None:
    question = unique("model 429")
    model.script(match=question, http_error={"status": 429, "message": "quota"}, times=100)
    events = stream_events(alice.send(question))
    assert events[-1]["type"] == "error" and "busy" in events[-1]["detail"]


def test_a_hang_past_the_timeout_ends_with_an_error(
    stack: LocalStack, db: Database, model: StandinControl
) -> None:
    question = unique("hang")
    model.script(match=question, hang=5)
    with function_process(
        stack, "chat_stream", MODEL_TIMEOUT_SECONDS="1", SSE_HEARTBEAT_SECONDS="0.3"
    ) as base:
        client = ApiClient(base, stack.signer.token("user_hang_" + uuid.uuid4().hex[:6]))
        started = time.monotonic()
        events = stream_events(client.send(question))
        elapsed = time.monotonic() - started
    assert events[0]["type"] == "start"
    assert HEARTBEAT in events  # heartbeats while the model was silent
    assert events[-1]["type"] == "error" and "too long" in events[-1]["detail"]
    assert elapsed < 4
    stored = stored_messages(db, events[0]["chat_id"])
    assert [(m["role"], m["content"]) for m in stored] == [("user", question)]


def test_client_disconnect_stops_the_model_and_keeps_the_partial_answer(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    question = unique("disconnect")
    model.script(match=question, chunks=[f"part{n} " for n in range(30)], delay_per_chunk=0.2)
    response = alice.send(question)
    seen = []
    for line in stream_lines(response):
        if line:
            seen.append(json.loads(line))
        if len(seen) == 3:  # start and two chunks
            break
    response.close()  # the user closed the tab
    chat_id = seen[0]["chat_id"]

    deadline = time.monotonic() + 10
    stored: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        stored = stored_messages(db, chat_id)
        if len(stored) == 2 and stored[1]["content"]:
            record = model.requests(match=question)[0]
            if record.get("outcome") == "client_gone":
                break
        time.sleep(0.2)
    assert stored[0]["role"] == "user" and stored[0]["content"] == question
    assert stored[1]["status"] == "incomplete"
    assert stored[1]["content"].startswith("part0 part1 ")
    assert len(stored[1]["content"].split()) < 30
    assert model.requests(match=question)[0]["outcome"] == "client_gone"


# --- refusals before the stream ----------------------------------------------------------


def test_someone_elses_chat_is_404_before_any_stream(
    alice: ApiClient, bob: ApiClient, db: Database
) -> None:
    chat = alice.create_chat("alice only")
    response = bob.send("let me in", chat["chatId"])
    assert_error(response, 404, "chat_not_found")
    assert_error(bob.send("unknown", str(uuid.uuid4())), 404, "chat_not_found")
    assert_error(bob.send("malformed", "not-a-uuid"), 404, "chat_not_found")
    assert stored_messages(db, chat["chatId"]) == []


def test_bad_bodies_are_4xx(alice: ApiClient, anonymous: ApiClient) -> None:
    assert_error(anonymous.send("no token"), 401)
    user_then_assistant = {
        "messages": [
            {"role": "user", "parts": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "parts": [{"type": "text", "text": "hello"}]},
        ]
    }
    assert_error(alice.post("/chat", json=user_then_assistant), 422, "last_not_user")
    assert_error(alice.post("/chat", json={"messages": []}), 422)
    assert_error(alice.post("/chat", json={"chatId": None}), 422)
    assert_error(alice.send("   "), 422, "empty_message")
    assert_error(alice.send("x" * 32_001), 422, "message_too_long")
    assert_error(alice.post("/chat", data="{", headers={"Content-Type": "application/json"}), 400)
    assert_error(alice.post("/chat", json={"messages": [{"role": "robot", "parts": []}]}), 422)
    assert alice.get("/api/chats").json() == []


def test_rate_limit_per_minute_is_a_429(stack: LocalStack, model: StandinControl) -> None:
    with function_process(stack, "chat_stream", RATE_LIMIT_MESSAGES_PER_MINUTE="2") as base:
        client = ApiClient(base, stack.signer.token("user_rl_" + uuid.uuid4().hex[:6]))
        now = time.time()
        if now % 60 > 55:  # keep the three sends inside one minute window
            time.sleep(61 - now % 60)
        for n in range(2):
            assert stream_events(client.send(unique(f"allowed {n}")))[-1]["type"] == "done"
        refused = client.send(unique("refused"))
        body = assert_error(refused, 429, "rate_limited_messages")
        assert "2 per minute" in body["detail"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert len(client.get("/api/chats").json()) == 2  # the refused send stored nothing


def test_daily_token_limit_is_a_429(stack: LocalStack, make_user: Any, db: Database) -> None:
    carol = make_user()
    carol.get("/api/chats")  # creates the user row
    with db.transaction() as tx:
        tx.execute(
            "INSERT INTO usage_daily (user_id, day, input_tokens, output_tokens) "
            "VALUES (:u, (now() AT TIME ZONE 'utc')::date, 1500000, 600000)",
            u=carol.user_id,
        )
    refused = carol.send("one more please")
    body = assert_error(refused, 429, "rate_limited_tokens")
    assert "per day" in body["detail"]
    assert int(refused.headers["Retry-After"]) > 0


# --- concurrency and modes --------------------------------------------------------------


def test_concurrent_sends_to_one_chat_keep_a_clean_order(
    alice: ApiClient, db: Database, model: StandinControl
) -> None:
    chat = alice.create_chat()
    questions = [unique(f"concurrent {n}") for n in range(4)]
    # The model's default answer quotes the start of the last user turn it received. (A
    # send whose context already holds another pending question sees both merged into one
    # user turn: the server's history is the truth, also for concurrent sends.)
    results: dict[str, list[Any]] = {}

    def send(question: str) -> None:
        client = ApiClient(alice.base_url, alice.token, alice.user_id)
        results[question] = stream_events(client.send(question, chat["chatId"]))

    threads = [threading.Thread(target=send, args=(q,)) for q in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(events[-1]["type"] == "done" for events in results.values())
    stored = db.fetch_all(
        "SELECT id::text AS id, position, role, content, status FROM messages "
        "WHERE chat_id = :id ORDER BY position",
        id=uuid.UUID(chat["chatId"]),
    )
    assert [m["position"] for m in stored] == list(range(8))
    by_id = {m["id"]: m for m in stored}
    for question, events in results.items():
        asked = by_id[events[0]["message_id"]]
        answered = by_id[events[-1]["message_id"]]
        # Each question is immediately followed by its own answer, whatever finished first.
        assert (asked["role"], asked["content"]) == ("user", question)
        assert answered["position"] == asked["position"] + 1
        assert answered["role"] == "assistant" and answered["status"] == "complete"
        streamed = "".join(e["content"] for e in events if e["type"] == "chunk")
        assert answered["content"] == streamed


def test_api_key_mode(stack: LocalStack, model: StandinControl) -> None:
    question = unique("api key mode")
    with function_process(stack, "chat_stream", GEMINI_API_KEY="test-api-key") as base:
        client = ApiClient(base, stack.signer.token("user_key_" + uuid.uuid4().hex[:6]))
        assert stream_events(client.send(question))[-1]["type"] == "done"
    record = model.requests(match=question)[0]
    assert record["mode"] == "api-key"
    assert "test-api-key" not in str(record)


def test_answers_arrive_as_they_are_produced(alice: ApiClient, model: StandinControl) -> None:
    question = unique("streaming")
    model.script(match=question, chunks=["a", "b", "c", "d"], delay_per_chunk=0.4)
    response = alice.send(question)
    arrivals = []
    for line in stream_lines(response):
        if line:
            arrivals.append(time.monotonic())
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[1:])]
    assert len(arrivals) == 6  # start, four chunks, done
    assert all(gap > 0.2 for gap in gaps[:3])  # each chunk came when the model sent it


def test_requests_go_to_the_configured_model(alice: ApiClient, model: StandinControl) -> None:
    question = unique("model name")
    stream_events(alice.send(question))
    assert model.requests(match=question)[0]["model"] == "gemini-2.5-flash"


def test_sse_is_not_buffered_through_the_router(stack: LocalStack, alice: ApiClient) -> None:
    response = requests.options(
        f"{stack.base_url}/chat",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert response.status_code == 204
