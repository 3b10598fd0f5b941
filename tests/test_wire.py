"""What the running stack sends, byte for byte, against the OpenAPI description it serves.

Every public operation is called over HTTP through the router (and, for what needs other
settings, a chat_stream instance of its own); each answer is checked against
``/dev/openapi.json`` as served: the status must be one the operation describes, the media
type one it describes for that status, and the body (every NDJSON line; every SSE event and
the JSON in its ``data``) must validate against that schema, ``$ref``s resolved in the
document (JSON Schema 2020-12, which OpenAPI 3.1 uses).

Stricter than a client needs: every object is checked *closed* (``additionalProperties:
false`` added to each object schema here), so a field sent but not described fails as much
as a field described but not sent. Because the OpenAPI is generated from the same models the
functions serialise, this is what catches a wire object built by hand (or by SQL) that drifts
from its model, a field renamed in one place only, or an undescribed status. The contract's
fixed names are pinned separately (tests/test_openapi.py), so renaming a field in a model
(and so in both) fails there.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
import requests
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012
from svix.webhooks import Webhook

from dev.gemini_standin import StandinControl
from dev.stack import LocalStack
from shared.routes import public_endpoints
from tests.conftest import ApiClient, function_process, unique, upload_file

DOCUMENT_URI = "https://raven.test/openapi.json"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def closed(schema: Any) -> Any:
    """A copy of ``schema`` in which every object schema that lists its properties allows
    no others (unless it says otherwise)."""
    if isinstance(schema, dict):
        copy = {key: closed(value) for key, value in schema.items()}
        if isinstance(copy.get("properties"), dict) and "additionalProperties" not in copy:
            copy["additionalProperties"] = False
        return copy
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def pointer(*parts: str) -> str:
    """A JSON pointer (RFC 6901) to ``parts``, percent-encoded for a URI fragment."""
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return quote("/" + "/".join(escaped), safe="/~")


class WireCheck:
    """Checks responses against the served OpenAPI document; remembers what it checked."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = closed(document)
        resource = DRAFT202012.create_resource(self.document)
        self.registry: Registry[Any] = Registry().with_resource(DOCUMENT_URI, resource)
        self.paths = [
            (re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(path)) + "$"), path)
            for path in self.document["paths"]
        ]
        # (operationId, status, media type) and, for streams, (operationId, media, event type)
        self.seen: set[tuple[str, ...]] = set()

    def validate(self, location: str, instance: Any, what: str) -> None:
        validator = Draft202012Validator(
            {"$ref": f"{DOCUMENT_URI}#{location}"}, registry=self.registry
        )
        error = best_match(validator.iter_errors(instance))
        if error is not None:
            raise AssertionError(
                f"{what} does not match the OpenAPI ({location}): {error.message} "
                f"at {list(error.absolute_path)}\n{json.dumps(instance)[:2000]}"
            )

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        for pattern, template in self.paths:
            if pattern.match(path):
                item = self.document["paths"][template]
                if method.lower() in item:
                    return template, item[method.lower()]
        return None

    def __call__(self, response: requests.Response) -> Any:
        """Check one response; returns its body (JSON, or the list of stream events)."""
        request = response.request
        assert request.method is not None and request.url is not None
        path = urlsplit(request.url).path
        status = str(response.status_code)
        media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        what = f"{request.method} {path} -> {status} {media_type}"
        found = self.operation(request.method, path)
        if found is None:
            # No such operation (an unknown path, a method the path lacks): the contract's
            # error body all the same.
            assert response.status_code >= 400, what
            assert media_type == "application/json", what
            self.validate(pointer("components", "schemas", "ErrorBody"), response.json(), what)
            self.seen.add(("-", status, media_type))
            return response.json()
        template, operation = found
        responses = operation["responses"]
        assert status in responses, f"{what}: status not described (only {sorted(responses)})"
        content = responses[status].get("content", {})
        assert media_type in content, f"{what}: media type not described ({sorted(content)})"
        schema_at = pointer(
            "paths", template, request.method.lower(), "responses", status, "content", media_type
        )
        self.seen.add((operation["operationId"], status, media_type))
        if media_type == "application/x-ndjson":
            return self._ndjson(response, schema_at, what, operation["operationId"])
        if media_type == "text/event-stream":
            return self._sse(response, schema_at, what, operation["operationId"])
        body = response.json()
        self.validate(schema_at + "/schema", body, what)
        return body

    def _ndjson(
        self, response: requests.Response, schema_at: str, what: str, operation_id: str
    ) -> list[dict[str, Any]]:
        raw = response.content.decode()
        assert raw.endswith("\n"), f"{what}: the last line is not terminated"
        events = []
        for line in raw.split("\n")[:-1]:
            event = json.loads(line)  # every line is one JSON document, none empty
            self.validate(schema_at + "/schema", event, f"{what} line {line!r}")
            self.seen.add((operation_id, "ndjson", event["type"]))
            events.append(event)
        return events

    def _sse(
        self, response: requests.Response, schema_at: str, what: str, operation_id: str
    ) -> list[dict[str, Any]]:
        raw = response.content.decode()
        assert raw.endswith("\n\n"), f"{what}: the last event is not terminated"
        events = []
        for block in raw[:-2].split("\n\n"):
            fields: dict[str, list[str]] = {}
            for line in block.split("\n"):
                if line.startswith(":"):
                    continue  # a comment: the heartbeat
                name, _, value = line.partition(":")
                fields.setdefault(name, []).append(value.removeprefix(" "))
            if not fields:
                self.seen.add((operation_id, "sse", "heartbeat"))
                continue
            event = {name: "\n".join(values) for name, values in fields.items()}
            self.validate(schema_at + "/schema", event, f"{what} event {block!r}")
            data = json.loads(event["data"])
            self.validate(
                schema_at + "/schema/properties/data/contentSchema", data, f"{what} data {block!r}"
            )
            self.seen.add((operation_id, "sse", data["type"]))
            events.append(data)
        return events


@pytest.fixture(scope="module")
def wire(stack: LocalStack) -> WireCheck:
    document = requests.get(f"{stack.base_url}/dev/openapi.json", timeout=30).json()
    return WireCheck(document)


@pytest.fixture(scope="module")
def slow_chat_stream(stack: LocalStack) -> Iterator[str]:
    """A chat_stream with quick heartbeats and a plan allowing one message a minute."""
    plans = {"one_a_minute": {"messages_per_minute": 1}}
    with function_process(
        stack, "chat_stream", SSE_HEARTBEAT_SECONDS="0.3", PLAN_LIMITS=json.dumps(plans)
    ) as base:
        yield base


def webhook_delivery(stack: LocalStack, event: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """A body and the svix-* headers Svix would sign it with."""
    from datetime import UTC, datetime

    body = json.dumps(event)
    msg_id = "msg_" + uuid.uuid4().hex[:27]
    now = datetime.now(tz=UTC)
    signature = Webhook(stack.env["CLERK_WEBHOOK_SECRET"]).sign(msg_id, now, body)
    return body, {
        "Content-Type": "application/json",
        "svix-id": msg_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": signature,
    }


def test_every_success_body_matches_the_openapi(
    wire: WireCheck, stack: LocalStack, alice: ApiClient, model: StandinControl
) -> None:
    word = "zebra" + uuid.uuid4().hex[:8]
    first = wire(alice.post("/api/chats/create", json={"title": f"wire {word}"}))
    untitled = wire(alice.post("/api/chats/create", json={}))
    chat_id = first["chat_id"]

    upload = upload_file(alice, PNG)  # POST /api/upload-url, then the PUT as the browser does
    wire(alice.post("/api/upload-url", json={"filename": "b.png", "contentType": "image/png"}))
    wire(
        alice.post(
            "/api/upload-url",
            json={"filename": "c.png", "contentType": "image/png", "size": 68, "bindSize": True},
        )
    )

    question = unique(f"{word} question")
    model.script(match=question, chunks=['An "answer"\n', "with ünïcode ✓"], delay_per_chunk=0.02)
    media = [{"type": "image", "text": upload["gcs_url"], "mimeType": "image/png"}]
    ndjson = wire(alice.send(question, chat_id, media=media))  # no Accept: the default
    assert [event["type"] for event in ndjson] == ["start", "chunk", "chunk", "done"]

    question = unique(f"{word} again")
    model.script(match=question, chunks=["Second", " answer"], delay_per_chunk=0.02)
    sse = wire(alice.send(question, chat_id, headers={"Accept": "text/event-stream"}))
    assert [event["type"] for event in sse] == ["start", "chunk", "chunk", "done"]

    # The answer's stream again (resumeAnswer), in both framings, and a stop that finds it
    # already ended (stopAnswer).
    answer = f"/api/chats/{chat_id}/messages/{sse[-1]['message_id']}"
    replayed = wire(alice.get(f"{answer}/stream", params={"after": 0}))
    assert [event["type"] for event in replayed] == ["chunk", "done"]
    sse_headers = {"Accept": "text/event-stream", "Last-Event-ID": "3"}
    wire(alice.get(f"{answer}/stream", headers=sse_headers))
    assert wire(alice.post(f"{answer}/stop"))["stopping"] is False

    messages = wire(alice.get(f"/api/chats/{chat_id}"))
    assert messages[0]["media_url"] and {part["type"] for part in messages[0]["parts"]} == {
        "text",
        "image",
    }
    wire(alice.get(f"/api/chats/{chat_id}", params={"limit": 1}))  # paged

    page = wire(alice.get("/api/chats", params={"limit": 1}))  # Postgres-built JSON
    assert [chat["chatId"] for chat in page] == [chat_id]
    cursor = alice.get("/api/chats", params={"limit": 1}).headers["X-Next-Cursor"]
    older = wire(alice.get("/api/chats", params={"limit": 1, "cursor": cursor}))
    assert [chat["chatId"] for chat in older] == [untitled["chatId"]]
    wire(alice.get("/api/chats"))
    hits = wire(alice.get("/api/chats", params={"q": word}))
    assert hits and all(hit["chatId"] == chat_id for hit in hits)

    wire(alice.patch(f"/api/chats/{chat_id}", json={"title": "renamed"}))
    wire(alice.get("/api/usage"))
    wire(alice.delete(f"/api/chats/{chat_id}"))

    body, headers = webhook_delivery(stack, {"type": "session.created", "data": {}})
    wire(requests.post(f"{stack.base_url}/clerk-webhook", data=body, headers=headers, timeout=30))

    successes = {(op, status) for op, status, *_ in wire.seen if status == "200"}
    assert successes == {(endpoint.operation_id, "200") for endpoint in public_endpoints()}
    for framing in ("ndjson", "sse"):
        for event in ("start", "chunk", "done"):
            assert ("sendMessage", framing, event) in wire.seen


def test_every_error_body_matches_the_openapi(
    wire: WireCheck, stack: LocalStack, alice: ApiClient, anonymous: ApiClient
) -> None:
    missing = str(uuid.uuid4())
    chat_id = alice.create_chat("errors")["chatId"]
    checked = [
        wire(anonymous.get("/api/chats")),  # 401
        wire(alice.get("/api/chats", headers={"Authorization": "Bearer not.a.jwt"})),  # 401
        wire(alice.get("/api/chats", params={"limit": 0})),  # 422
        wire(alice.get("/api/chats", params={"cursor": "bogus!"})),  # 400
        wire(alice.post("/api/chats/create", data=b"{not json", headers=json_type())),  # 400
        wire(alice.post("/api/chats/create", json={"title": "x" * 70_000})),  # 413
        wire(alice.post("/api/chats/create", json={"title": "x" * 201})),  # 422
        wire(alice.get(f"/api/chats/{missing}")),  # 404
        wire(alice.get(f"/api/chats/{chat_id}", params={"before": -1})),  # 422
        wire(alice.patch(f"/api/chats/{missing}", json={"title": "t"})),  # 404
        wire(alice.patch(f"/api/chats/{chat_id}", json={"title": "   "})),  # 422
        wire(alice.delete(f"/api/chats/{missing}")),  # 404
        wire(anonymous.get("/api/usage")),  # 401
        wire(alice.post("/api/upload-url", json={"filename": "x.exe", "contentType": "app/x"})),
        wire(
            alice.post(
                "/api/upload-url",
                json={"filename": "big.png", "contentType": "image/png", "size": 10**12},
            )
        ),  # 413
        wire(alice.send("hello", missing)),  # 404 before any stream
        wire(alice.post("/chat", json={"messages": []})),  # 422
        wire(alice.post("/chat", json={"messages": [{"role": "user", "parts": []}]})),  # 422
        wire(anonymous.send("hello")),  # 401
        wire(requests.post(f"{stack.base_url}/clerk-webhook", json={}, timeout=30)),  # 400
        wire(alice.request("PUT", "/api/chats/create")),  # 405: not an operation
        wire(alice.get("/api/nothing-here")),  # 404: not an operation
    ]
    assert all(isinstance(body, dict) and body["detail"] for body in checked)
    errors = {(op, status) for op, status, *_ in wire.seen if status >= "400"}
    assert {status for _, status in errors} >= {"400", "401", "404", "405", "413", "422"}


def test_busy_and_rate_limited_answers_match_the_openapi(
    wire: WireCheck,
    alice: ApiClient,
    model: StandinControl,
    slow_chat_stream: str,
    stack: LocalStack,
) -> None:
    # 409: a chat whose answer is still streaming refuses a regenerate.
    question = unique("busy")
    model.script(match=question, chunks=["slow"], hang=3)
    first = alice.send(question)
    events = first.iter_lines()
    start = json.loads(next(events))
    busy = alice.post("/chat", json={"chatId": start["chat_id"], "regenerate": True})
    wire(busy)
    assert busy.status_code == 409
    first.close()

    # 429: the plan allows one message a minute.
    token = stack.signer.token(
        "user_wire_" + uuid.uuid4().hex[:8], extra_claims={"plan": "one_a_minute"}
    )
    client = ApiClient(slow_chat_stream, token)
    wire(client.send("one"))
    limited = client.send("two")
    body = wire(limited)
    assert limited.status_code == 429 and body["retry_after"] >= 1
    assert limited.headers["Retry-After"] == str(body["retry_after"])


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
def test_heartbeats_and_error_events_match_the_openapi(
    wire: WireCheck, model: StandinControl, slow_chat_stream: str, stack: LocalStack, accept: str
) -> None:
    framing = "ndjson" if accept == "application/x-ndjson" else "sse"
    client = ApiClient(slow_chat_stream, stack.signer.token("user_hb_" + uuid.uuid4().hex[:8]))
    question = unique("slow then fails")
    model.script(match=question, chunks=["Part one. ", "never"], hang=1.0, fail_after_chunks=1)
    events = wire(client.send(question, headers={"Accept": accept}))
    assert events[-1]["type"] == "error" and events[-1]["message_id"]
    assert ("sendMessage", framing, "heartbeat") in wire.seen, "no heartbeat was sent"
    assert ("sendMessage", framing, "error") in wire.seen

    question = unique("blocked")
    model.script(match=question, block_reason="SAFETY")
    blocked = wire(client.send(question, headers={"Accept": accept}))
    assert blocked[-1]["type"] == "error" and blocked[-1]["code"] == "blocked"


def json_type() -> dict[str, str]:
    return {"Content-Type": "application/json"}


def test_the_checker_refuses_what_the_openapi_does_not_describe(wire: WireCheck) -> None:
    """The check itself: a renamed, missing or surplus field fails, as an undescribed status."""
    chat = {"chatId": "c", "userId": "u", "title": "t", "createdAt": 1.0, "updatedAt": 2.0}
    at = pointer("components", "schemas", "Chat")
    wire.validate(at, chat, "a chat")
    renamed = {("chatID" if key == "chatId" else key): value for key, value in chat.items()}
    for bad in (renamed, {**chat, "extra": 1}, {k: v for k, v in chat.items() if k != "title"}):
        with pytest.raises(AssertionError, match="does not match the OpenAPI"):
            wire.validate(at, bad, "a bad chat")
    done = {"type": "done", "message_id": "m", "finishReason": "stop"}  # optional, misspelt
    with pytest.raises(AssertionError):
        wire.validate(pointer("components", "schemas", "DoneEvent"), done, "a done event")
