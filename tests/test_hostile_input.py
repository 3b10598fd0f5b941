"""The hostile-input corpus: every answer an outside probe found breaking the contract's "never
a 500 for bad input, JSON errors always" (issue 12), each now a regression test over HTTP.

Most go through the router, as the frontend does; the ones about what the server answers
before any of our code runs (odd paths, big headers, stalled bodies) also go straight to a
function process, as they would deployed. docs/hostile-input.md lists what is attacked here.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from dev.stack import LocalStack, pg_ctl, start_postgres, stop_postgres
from shared.db import Database
from shared.schemas import MAX_POSITION
from shared.text import UNSTORABLE_TEXT
from tests.conftest import ApiClient, assert_error, function_process
from tests.helpers import (
    Svix,
    assert_acknowledged,
    clerk_event,
    clerk_user,
    deleted_event,
    new_user_id,
    now_ms,
    user_row,
)

JSON_HEADERS = {"Content-Type": "application/json"}


def raw_json(text: str) -> dict[str, Any]:
    """Request kwargs that send ``text`` as the body byte for byte (escapes kept as written)."""
    return {"data": text.encode(), "headers": JSON_HEADERS}


def chat_body(text_json: str) -> str:
    """A POST /chat body whose one message's text is the JSON string literal given."""
    return (
        '{"chatId": null, "messages": [{"role": "user", "parts": '
        f'[{{"type": "text", "text": {text_json}}}]}}]}}'
    )


def assert_detail(response: requests.Response, status: int, code: str, *needles: str) -> None:
    body = assert_error(response, status, code)
    for needle in needles:
        assert needle in body["detail"], body


# --- 1. a deleted user -------------------------------------------------------------------------


def test_deleted_user_then_post_chat_is_401_user_deleted(
    make_user: Any,
    svix: Svix,
    db: Database,
) -> None:
    client: ApiClient = make_user(email="soon-gone@example.com")
    with client.send("first") as first:  # chat_stream verifies and remembers the token
        assert first.status_code == 200
        first.content  # noqa: B018 - read the whole stream
    assert client.user_id is not None
    assert_acknowledged(svix.deliver(deleted_event(client.user_id)), "user deleted")
    refused = client.send("after the deletion")
    assert_detail(refused, 401, "user_deleted", "deleted")
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert user_row(db, client.user_id) is None


# --- 2. text PostgreSQL cannot store -----------------------------------------------------------

UNSTORABLE = {"nul": '"a\\u0000b"', "lone_surrogate": '"a\\ud800b"', "low_surrogate": '"\\udc00"'}


@pytest.mark.parametrize("literal", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_unstorable_title_on_create_is_422_naming_the_field(alice: ApiClient, literal: str) -> None:
    response = alice.post("/api/chats/create", **raw_json(f'{{"title": {literal}}}'))
    assert_detail(response, 422, "invalid_text", f"title: {UNSTORABLE_TEXT}")
    assert alice.get("/api/chats").json() == []


@pytest.mark.parametrize("literal", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_unstorable_title_on_rename_is_422_and_keeps_the_old_title(
    alice: ApiClient, literal: str
) -> None:
    chat = alice.create_chat("kept")
    response = alice.patch(f"/api/chats/{chat['chatId']}", **raw_json(f'{{"title": {literal}}}'))
    assert_detail(response, 422, "invalid_text", "title:")
    assert [c["title"] for c in alice.get("/api/chats").json()] == ["kept"]


@pytest.mark.parametrize("literal", UNSTORABLE.values(), ids=UNSTORABLE.keys())
def test_unstorable_message_text_is_422_naming_the_part(alice: ApiClient, literal: str) -> None:
    response = alice.post("/chat", **raw_json(chat_body(literal)))
    assert_detail(response, 422, "invalid_text", "messages.0.parts.0.text:")
    assert alice.get("/api/chats").json() == []  # nothing stored, no chat created


def test_unstorable_upload_filename_is_422(alice: ApiClient) -> None:
    body = '{"filename": "a\\u0000.png", "contentType": "image/png"}'
    assert_detail(alice.post("/api/upload-url", **raw_json(body)), 422, "invalid_text", "filename:")


def test_unstorable_text_in_fields_never_stored_is_ignored_with_them(alice: ApiClient) -> None:
    body = '{"title": "kept", "user_id": "a\\u0000b", "x\\ud800": "\\u0000"}'
    response = alice.post("/api/chats/create", **raw_json(body))
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "kept"


def test_ordinary_unicode_is_stored_as_sent(alice: ApiClient) -> None:
    title = "Čaj 🍵 — 日本語 \u200b\u2028 \\ \" '"
    created = alice.create_chat(title)
    assert created["title"] == title.strip()
    assert alice.get("/api/chats").json()[0]["title"] == title.strip()


# --- 3. deeply nested JSON ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [33, 1_000, 20_000])
def test_deeply_nested_json_is_400_invalid_json(alice: ApiClient, depth: int) -> None:
    body = '{"title": ' + "[" * depth + "]" * depth + "}"
    response = alice.post("/api/chats/create", **raw_json(body))
    assert_detail(response, 400, "invalid_json", "nested too deeply")
    nested_chat = '{"messages": ' + "[" * depth + "]" * depth + "}"
    assert_detail(alice.post("/chat", **raw_json(nested_chat)), 400, "invalid_json", "nested")


def test_nesting_within_the_bound_is_validated_normally(alice: ApiClient) -> None:
    body = '{"title": ' + "[" * 30 + "]" * 30 + "}"
    assert_detail(
        alice.post("/api/chats/create", **raw_json(body)), 422, "validation_error", "title"
    )


def test_malformed_json_is_400_invalid_json(alice: ApiClient) -> None:
    for body in ('{"title": "x"', "\xff\xfe", '{"title": NaN', "[" * 10):
        response = alice.post(
            "/api/chats/create", data=body.encode("latin-1"), headers=JSON_HEADERS
        )
        assert_detail(response, 400, "invalid_json", "not valid JSON")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/chats/create", '{"title": 5}', "title"),
        ("/api/chats/create", '{"title": ["x"]}', "title"),
        (
            "/api/upload-url",
            '{"filename": "a.png", "contentType": "image/png", "size": true}',
            "size",
        ),
        (
            "/api/upload-url",
            '{"filename": "a.png", "contentType": "image/png", "size": "5"}',
            "size",
        ),
        (
            "/api/upload-url",
            '{"filename": "a.png", "contentType": "image/png", "size": 1.5}',
            "size",
        ),
        ("/chat", '{"messages": [{"role": "user", "parts": [{"text": 1}]}]}', "text"),
    ],
)
def test_json_values_of_the_wrong_type_are_422(
    alice: ApiClient, path: str, body: str, field: str
) -> None:
    assert_detail(alice.post(path, **raw_json(body)), 422, "validation_error", field)


# --- 4. numbers out of range -------------------------------------------------------------------


@pytest.mark.parametrize("before", [str(MAX_POSITION + 1), "9" * 40, "-1"])
def test_before_out_of_range_is_422(alice: ApiClient, before: str) -> None:
    chat = alice.create_chat()
    response = alice.get(f"/api/chats/{chat['chatId']}", params={"before": before})
    assert_detail(response, 422, "validation_error", "query.before")


def test_before_at_the_top_of_the_range_pages_normally(alice: ApiClient) -> None:
    chat = alice.create_chat()
    response = alice.get(f"/api/chats/{chat['chatId']}", params={"before": str(MAX_POSITION)})
    assert response.status_code == 200 and response.json() == []


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "micros", ["9" * 30, str(2**63), str(2**63 - 1), "-1", "-" + "9" * 25, "253402300800000000"]
)
def test_cursor_with_an_out_of_range_time_is_400_invalid_cursor(
    alice: ApiClient, micros: str
) -> None:
    response = alice.get("/api/chats", params={"cursor": cursor_of(f"{micros}:{uuid.uuid4()}")})
    assert_detail(response, 400, "invalid_cursor", "cursor")


def test_an_empty_cursor_or_before_is_the_first_page(alice: ApiClient) -> None:
    chat = alice.create_chat("only")
    listed = alice.get("/api/chats?cursor=&limit=")
    assert listed.status_code == 200 and [c["title"] for c in listed.json()] == ["only"]
    read = alice.get(f"/api/chats/{chat['chatId']}?before=")
    assert read.status_code == 200 and read.json() == []


@pytest.mark.parametrize(
    "query", ["limit=&limit=x", "limit=5&limit=6", "cursor=a&cursor=", "q=x&q=y"]
)
def test_a_query_parameter_given_twice_is_422_naming_it(alice: ApiClient, query: str) -> None:
    # Using one of the values silently would accept what the API description calls invalid.
    name = query.split("=")[0]
    assert_detail(alice.get(f"/api/chats?{query}"), 422, "validation_error", name)
    chat = alice.create_chat("twice")
    assert_detail(
        alice.get(f"/api/chats/{chat['chatId']}?before=&before=9"),
        422,
        "validation_error",
        "before",
    )


@pytest.mark.parametrize("limit", ["0", "201", "1e3", "9" * 30, "-5", "x"])
def test_limit_out_of_range_is_422(alice: ApiClient, limit: str) -> None:
    assert_detail(
        alice.get("/api/chats", params={"limit": limit}), 422, "validation_error", "limit"
    )


# --- 5. signed Clerk events with unstorable text or numbers ---------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [("Ada\u0000Lovelace", "AdaLovelace"), ("Ada\ud800", "Ada\ufffd"), ("\udfff", "\ufffd")],
    ids=["nul", "lone_high_surrogate", "lone_low_surrogate"],
)
def test_clerk_names_postgres_cannot_store_are_normalised_and_applied(
    svix: Svix,
    db: Database,
    sent: str,
    stored: str,
) -> None:
    user_id = new_user_id()
    user = clerk_user(user_id, updated_at=now_ms(), first_name=sent, last_name=sent)
    assert_acknowledged(svix.deliver(clerk_event("user.created", user)), "user saved")
    row = user_row(db, user_id)
    assert row is not None and row["first_name"] == stored and row["last_name"] == stored


@pytest.mark.parametrize("updated_at", [2**63, 2**80, -1])
def test_clerk_event_with_an_out_of_range_updated_at_is_400_invalid_event(
    svix: Svix,
    db: Database,
    updated_at: int,
) -> None:
    user_id = new_user_id()
    response = svix.deliver(clerk_event("user.updated", clerk_user(user_id, updated_at=updated_at)))
    assert_detail(response, 400, "invalid_event", "data.updated_at")
    assert user_row(db, user_id) is None


def test_deeply_nested_clerk_event_is_400_invalid_json(svix: Svix) -> None:
    body = '{"type": "user.created", "data": ' + "[" * 5000 + "]" * 5000 + "}"
    response = svix.post(body, svix.headers(body, "msg_" + uuid.uuid4().hex[:27]))
    assert_detail(response, 400, "invalid_json", "nested too deeply")


# --- 6. the local router: percent-encoded characters in /api/* paths --------------------------


@pytest.mark.parametrize(
    "encoded", ["%20", "%00", "%22", "%C3%A9", "%E2%80%8B", "%FF", "%0D", "%7F", "%3F", "%23"]
)
def test_router_forwards_percent_encoded_paths_and_answers_json(
    stack: LocalStack, alice: ApiClient, encoded: str
) -> None:
    response = requests.get(
        f"{stack.base_url}/api/chats/x{encoded}y",
        headers={"Authorization": f"Bearer {alice.token}"},
        timeout=30,
    )
    assert_detail(response, 404, "chat_not_found", "Chat not found")


def test_router_answers_json_for_paths_it_does_not_serve(stack: LocalStack) -> None:
    # A newline ends werkzeug's path match, so the router answers these itself; and an
    # encoded slash is a slash by the time the function routes it.
    for path in ("/nope", "/api/%0D%0Aevil", "/%0A", "/api/chats/x%0Ay", "/api/chats/x%2Fy"):
        response = requests.get(stack.base_url + path, timeout=30)
        assert_error(response, 404, "not_found")


# --- 7. errors raised before our code runs, deployed too -----------------------------------------


@pytest.fixture(scope="module")
def chats_crud_instance(stack: LocalStack) -> Any:
    """A chats_crud process reached directly, as Cloud Run reaches it (no router in front)."""
    with function_process(stack, "chats_crud") as base:
        yield base


@pytest.mark.parametrize(
    "path", ["/%0A", "/api%0A/chats", "/api/chats%0D%0A/x/y", "/robots.txt", "/favicon.ico", "/"]
)
def test_odd_paths_are_json_404(chats_crud_instance: str, path: str) -> None:
    response = requests.get(chats_crud_instance + path, timeout=30)
    assert_detail(response, 404, "not_found", "No such endpoint")


@pytest.mark.parametrize("encoded", ["%0A", "%0D%0A", "%00", "%20", "%C3%A9"])
def test_odd_chat_ids_are_json_404_chat_not_found(
    chats_crud_instance: str, alice: ApiClient, encoded: str
) -> None:
    response = requests.get(
        f"{chats_crud_instance}/api/chats/{encoded}",
        headers={"Authorization": f"Bearer {alice.token}"},
        timeout=30,
    )
    assert_detail(response, 404, "chat_not_found", "Chat not found")


def test_405_names_the_allowed_methods(stack: LocalStack, alice: ApiClient) -> None:
    chat = alice.create_chat()
    response = alice.request("PUT", f"/api/chats/{chat['chatId']}")
    assert_detail(response, 405, "method_not_allowed", "PUT")
    assert response.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH"
    listed = alice.request("POST", "/api/chats")
    assert_error(listed, 405, "method_not_allowed")
    assert listed.headers["Allow"] == "GET, HEAD, OPTIONS"
    for method in ("GET", "PATCH", "DELETE"):  # "create" is no chat id
        on_create = alice.request(method, "/api/chats/create", json={"title": "x"})
        assert_error(on_create, 405, "method_not_allowed")
        assert on_create.headers["Allow"] == "OPTIONS, POST"
    chat_get = alice.get("/chat")
    assert_error(chat_get, 405, "method_not_allowed")
    assert chat_get.headers["Allow"] == "OPTIONS, POST"


@pytest.mark.parametrize("size", [8 * 1024, 64 * 1024])
def test_headers_too_large_are_json_431(
    stack: LocalStack, chats_crud_instance: str, size: int
) -> None:
    headers = {"X-Big": "a" * size}
    direct = requests.get(chats_crud_instance + "/api/chats", headers=headers, timeout=30)
    assert_detail(direct, 431, "request_header_fields_too_large", "headers are too large")
    # The router hands headers under 64 KiB on to the function, and refuses longer ones itself.
    routed = requests.get(stack.base_url + "/api/chats", headers=headers, timeout=30)
    assert_error(routed, 431, "request_header_fields_too_large")


def test_too_many_headers_are_json_too(chats_crud_instance: str) -> None:
    headers = {f"X-H{i}": "1" for i in range(150)}
    response = requests.get(chats_crud_instance + "/api/chats", headers=headers, timeout=30)
    assert response.status_code in (400, 431)
    assert_error(response, response.status_code)


def test_body_over_the_limit_is_json_413(stack: LocalStack, alice: ApiClient) -> None:
    big = b'{"title": "' + b"a" * 70_000 + b'"}'
    assert_detail(
        alice.post("/api/chats/create", data=big, headers=JSON_HEADERS), 413, "payload_too_large"
    )

    def chunks() -> Any:
        for _ in range(8):
            yield b"a" * 10_000

    chunked = alice.post("/api/chats/create", data=chunks(), headers=JSON_HEADERS)
    assert_detail(chunked, 413, "payload_too_large", "larger than")


def test_malformed_request_lines_get_json(chats_crud_instance: str) -> None:
    host, port = chats_crud_instance.removeprefix("http://").split(":")
    for request_line in (
        b"GET /api/chats HTTP/9.9",
        b"G\x00T / HTTP/1.1",
        b"GET / HTTP/1.1\r\nBad Header\r\n",
    ):
        with socket.create_connection((host, int(port)), timeout=30) as conn:
            conn.sendall(request_line + b"\r\n\r\n")
            answer = read_http_response(conn)
        status, headers, body = answer
        assert 400 <= status < 500, answer
        assert headers["content-type"].startswith("application/json"), answer
        assert json.loads(body)["detail"]


# --- 8. stalled bodies -------------------------------------------------------------------------


def read_http_response(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read off a raw socket: status, headers (lower-cased), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


STALLED = 100
BODY_TIMEOUT = 10  # the default: a slow, loaded machine must not answer the stalled first


@pytest.mark.slow
def test_stalled_bodies_get_408_and_do_not_hold_up_other_requests(
    stack: LocalStack, alice: ApiClient
) -> None:
    with function_process(
        stack, "chats_crud", THREADS="16", REQUEST_BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT)
    ) as base:
        host, port = base.removeprefix("http://").split(":")
        stalled = []
        for index in range(STALLED):
            conn = socket.create_connection((host, int(port)), timeout=60)
            head = (
                f"POST /api/chats/create HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {alice.token}\r\nContent-Type: application/json\r\n"
                f"Content-Length: 100\r\n\r\n"
            )
            conn.sendall(head.encode() + b'{"title": "stalled ' + str(index).encode())
            stalled.append(conn)
        # One trickling client too: a byte every half second is still a stalled body.
        trickler = socket.create_connection((host, int(port)), timeout=60)
        trickler.sendall(
            b"POST /api/chats/create HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        )
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.5):
                try:
                    trickler.sendall(b" ")
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
        try:
            time.sleep(0.5)  # every stalled request is in, waiting for its body
            # A normal request on the same instance is answered while they all wait.
            normal = requests.post(
                base + "/api/chats/create",
                json={"title": "normal"},
                headers={"Authorization": f"Bearer {alice.token}"},
                timeout=BODY_TIMEOUT * 10,
            )
            assert normal.status_code == 200, normal.text
            # Answered while every stalled request still waits for its body: none has its
            # 408 yet, so the normal one was not queued behind them.
            for conn in stalled:
                conn.setblocking(False)
                with pytest.raises(BlockingIOError):
                    conn.recv(1)
                conn.setblocking(True)
            for conn in [*stalled, trickler]:
                status, headers, body = read_http_response(conn)
                assert status == 408, (status, body)
                assert headers["content-type"].startswith("application/json")
                assert json.loads(body)["code"] == "request_body_timeout"
                assert headers["connection"].lower() == "close"
        finally:
            stop.set()
            for conn in [*stalled, trickler]:
                conn.close()
        titles = [chat["title"] for chat in alice.get("/api/chats").json()]
        assert titles == ["normal"]  # no stalled request stored anything


# --- 10. a JWT whose exp is a string -------------------------------------------------------------


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
def test_numeric_date_given_as_a_string_is_401(stack: LocalStack, claim: str) -> None:
    now = int(time.time())
    value = {"exp": now + 3600, "nbf": now - 10, "iat": now - 10}[claim]
    token = stack.signer.token("user_" + uuid.uuid4().hex[:12], extra_claims={claim: str(value)})
    client = ApiClient(stack.base_url, token)
    assert_detail(client.get("/api/chats"), 401, "invalid_token", claim)


# --- 11. the local stack's PostgreSQL, restarted under it ----------------------------------------


def test_stopping_the_stack_stops_a_postgres_restarted_under_it(tmp_path: Path) -> None:
    server = start_postgres(tmp_path / "pg")
    pg_ctl(server, "restart", "-m", "immediate")
    restarted = int((tmp_path / "pg" / "postmaster.pid").read_text().split()[0])
    stop_postgres(server)
    assert not (tmp_path / "pg" / "postmaster.pid").exists()
    if psutil.pid_exists(restarted):
        assert psutil.Process(restarted).status() == psutil.STATUS_ZOMBIE
